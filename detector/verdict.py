"""``foliowatch verdict --fleet F --kernel K``: the rollout gate, a pure read.

Exit 0: safe to proceed. Exit 1: a regression of K is confirmed in the fleet. Exit 2: not
enough evidence yet, with what is missing (hosts, hours, fragmentation coverage). The
decision is ``gate.decide``; this command reads the regression state (never writes or
creates it: only ``foliowatch detect`` does) and evaluates the dataset for the evidence
figures, so that a rollout playbook may call it between waves as often as it likes.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from typing import List, Sequence, Tuple

from .gate import add_gate_arguments, decide, policy_from
from .run import add_common


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common(parser)
    parser.add_argument("--fleet", required=True)
    parser.add_argument("--kernel", required=True,
                        help="the kernel being rolled out (release string, or its version prefix)")
    add_gate_arguments(parser)


def render(d, as_of, as_json: bool) -> str:
    """The gate's decision ``d`` as ``verdict`` prints it (text, or JSON with ``as_json``)."""
    if as_json:
        return json.dumps({"fleet": d.fleet, "kernel": d.kernel, "exit_code": d.code,
                           "verdict": d.word, "missing": d.missing(), "as_of": as_of.isoformat(),
                           "notes": d.notes, "groups": [asdict(v) for v in d.groups]}, indent=1)
    lines = [f"{d.fleet} {d.kernel}: {d.word}"]
    if d.missing():
        lines.append(f"  {d.missing()}")
    lines += [f"  {n}" for n in d.notes]
    for v in d.groups:
        lines.append(f"  {v.group} {v.kernel_from} -> {v.kernel_to}: exit {v.decision}, "
                     f"{v.hosts_new} vs {v.hosts_base} hosts, {v.hours_observed} h")
        lines += [f"    - {r}" for r in v.reasons]
    return "\n".join(lines)


def decide_gates(args, gates: Sequence[Tuple[str, str]]) -> Tuple[object, List[object]]:
    """The gate for each (fleet, kernel) of ``gates`` from one evaluation of the dataset
    (``args``: the parsed arguments of this command, without --fleet/--kernel mattering):
    the analysis and a decision per gate, in order. Nothing is written."""
    from .records import RegressionState
    from .run import evaluate
    state = RegressionState.read_only(args.state)
    analysis = evaluate(args)
    policy = policy_from(args)
    return analysis, [decide(analysis, state, fleet, kernel, policy, fdr=args.fdr)
                      for fleet, kernel in gates]


def run(args) -> int:
    analysis, (d,) = decide_gates(args, [(args.fleet, args.kernel)])
    print(render(d, analysis.as_of, args.json))
    return d.code
