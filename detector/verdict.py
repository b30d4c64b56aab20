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

from .gate import add_gate_arguments, decide, policy_from
from .run import add_common


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common(parser)
    parser.add_argument("--fleet", required=True)
    parser.add_argument("--kernel", required=True,
                        help="the kernel being rolled out (release string, or its version prefix)")
    add_gate_arguments(parser)


def run(args) -> int:
    from .records import RegressionState
    from .run import evaluate
    state = RegressionState.read_only(args.state)
    analysis = evaluate(args)
    d = decide(analysis, state, args.fleet, args.kernel, policy_from(args), fdr=args.fdr)
    if args.json:
        print(json.dumps({"fleet": args.fleet, "kernel": args.kernel, "exit_code": d.code,
                          "verdict": d.word, "missing": d.missing(), "as_of": analysis.as_of.isoformat(),
                          "notes": d.notes, "groups": [asdict(v) for v in d.groups]}, indent=1))
    else:
        print(f"{args.fleet} {args.kernel}: {d.word}")
        if d.missing():
            print(f"  {d.missing()}")
        for n in d.notes:
            print(f"  {n}")
        for v in d.groups:
            print(f"  {v.group} {v.kernel_from} -> {v.kernel_to}: exit {v.decision}, "
                  f"{v.hosts_new} vs {v.hosts_base} hosts, {v.hours_observed} h")
            for r in v.reasons:
                print(f"    - {r}")
    return d.code
