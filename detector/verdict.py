"""``foliowatch verdict --fleet F --kernel K``: the rollout gate.

Exit 0: safe to proceed. Exit 1: a regression of K is confirmed in the fleet. Exit 2: not
enough evidence yet, with what is missing (hosts, hours, fragmentation coverage).

"Safe" needs more than "nothing significant": the comparison must be able to see the
target effect (a power calculation on the observed host-to-host spread), the new kernel
must have run long enough, and it must have been observed at the fragmentation the fleet
runs at (the seed regression only appears on fragmented memory, and canaries have just
rebooted).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from typing import List, Optional

from scipy import stats as sstats

from .main import add_common, evaluate

EXIT_SAFE, EXIT_REGRESSION, EXIT_WAIT = 0, 1, 2


@dataclass
class GroupVerdict:
    group: str
    kernel_from: str
    kernel_to: str
    decision: int
    reasons: List[str] = field(default_factory=list)
    hosts_new: int = 0
    hosts_base: int = 0
    hours_observed: float = 0.0
    more_hosts_needed: int = 0
    more_hours_needed: float = 0.0
    detectable_effect: Optional[float] = None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common(parser)
    parser.add_argument("--fleet", required=True)
    parser.add_argument("--kernel", required=True,
                        help="the kernel being rolled out (release string, or its version prefix)")
    parser.add_argument("--target-effect", type=float, default=0.05,
                        help="smallest write-throughput regression the gate must be able to see (default 0.05)")
    parser.add_argument("--power", type=float, default=0.8)
    parser.add_argument("--min-hours", type=float, default=6.0,
                        help="hours the new kernel must have run (default 6)")
    parser.add_argument("--min-frag-hosts", type=int, default=5,
                        help="new-kernel hosts that must have reached the fleet's median fragmentation")


def _matches(kernel: str, wanted: str) -> bool:
    return kernel == wanted or kernel.startswith(wanted + ".") or kernel.startswith(wanted + "-")


def judge_group(c, policy_fdr: float, args) -> GroupVerdict:
    gv = GroupVerdict("/".join(map(str, c.group)), c.kernel_from, c.kernel_to, EXIT_SAFE,
                      hosts_new=c.n_new, hosts_base=c.n_base)
    hours = ((c.last_window - c.new_first_seen).total_seconds() / 3600.0
             if c.new_first_seen and c.last_window else 0.0)
    gv.hours_observed = round(hours, 2)
    # power: one-sided test at the run's FDR level on the host-level spread of the write
    # metric (Mann-Whitney is ~95% as efficient as the t test on normal data)
    sd = c.level_sd.get("write_mib_s") or c.level_sd.get("probe_mib_s")
    if sd and sd > 0 and c.n_base > 1:
        z = sstats.norm.ppf(1 - policy_fdr) + sstats.norm.ppf(args.power)
        se_unit = z * sd / math.sqrt(0.95)
        mde = se_unit * math.sqrt(1 / max(c.n_new_compared, 1) + 1 / c.n_base)
        gv.detectable_effect = round(1 - math.exp(-mde), 4)
        target = -math.log(1 - args.target_effect)
        if mde > target:
            room = (target / se_unit) ** 2 - 1 / c.n_base
            need = math.ceil(1 / room) if room > 0 else None
            if need is None:
                gv.reasons.append(f"even all {c.n_base} baseline hosts cannot resolve a "
                                  f"{args.target_effect:.0%} effect (host spread {sd:.3f} log)")
                gv.more_hosts_needed = -1
            else:
                gv.more_hosts_needed = max(need - c.n_new_compared, 1)
                gv.reasons.append(f"{c.n_new_compared} comparable new-kernel hosts can only see a "
                                  f"{gv.detectable_effect:.1%} regression; {gv.more_hosts_needed} more "
                                  f"hosts to see {args.target_effect:.0%}")
            gv.decision = EXIT_WAIT
    else:
        gv.reasons.append("no write-throughput spread measured yet")
        gv.decision = EXIT_WAIT
    from .cohort import MIN_TYPE_HOSTS
    if c.n_new_unmatched:
        gv.reasons.append(f"{c.n_new_unmatched} new-kernel hosts run instance types that fewer "
                          f"than {MIN_TYPE_HOSTS} baseline hosts share "
                          f"({', '.join(c.unmatched_instance_types)}): "
                          "not compared")
    if hours < args.min_hours:
        gv.more_hours_needed = round(args.min_hours - hours, 2)
        gv.reasons.append(f"new kernel observed for {hours:.1f} h; {args.min_hours:g} h needed")
        gv.decision = EXIT_WAIT
    if c.frag_base_median is not None and c.new_hosts_at_fleet_frag < args.min_frag_hosts:
        gap = None
        if c.uptime_h_at_fleet_frag is not None:
            gap = max(c.uptime_h_at_fleet_frag - c.new_max_uptime_h, 0.0)
            gv.more_hours_needed = round(max(gv.more_hours_needed, gap), 2)
        gv.reasons.append(
            f"only {c.new_hosts_at_fleet_frag} new-kernel hosts reached the fleet's median "
            f"fragmentation ({c.frag_base_median:.2f} unusable for 1 MiB); "
            f"{args.min_frag_hosts} needed" + (f", about {gap:.1f} more hours of uptime" if gap
                                               else ", hours unknown (no host seen crossing it)"
                                               if c.uptime_h_at_fleet_frag is None else ""))
        gv.decision = EXIT_WAIT
    return gv


def decide(args):
    from .records import RegressionState
    state = RegressionState(args.state)
    analysis, _transitions = evaluate(args, state)
    from .evidence import EvidencePolicy
    fdr = args.fdr or EvidencePolicy().fdr
    verdicts: List[GroupVerdict] = []
    for c in analysis.comparisons:
        if c.group[0] != args.fleet or not _matches(c.kernel_to, args.kernel):
            continue
        verdicts.append(judge_group(c, fdr, args))
    for rec in state.open_records():
        if rec.fleet != args.fleet or not _matches(rec.kernel_to, args.kernel):
            continue
        gid = rec.id.rsplit("/", 1)[0]
        gv = next((v for v in verdicts if v.group == gid and v.kernel_to == rec.kernel_to), None)
        if gv is None:
            gv = GroupVerdict(gid, rec.kernel_from, rec.kernel_to, EXIT_WAIT,
                              hosts_new=rec.hosts_new, hosts_base=rec.hosts_base)
            verdicts.append(gv)
        eff = f"x{rec.effect:.3f} [{rec.ci_low:.3f}, {rec.ci_high:.3f}]" if rec.effect_kind == "ratio" else f"{rec.effect:+.3f}"
        if rec.status == "confirmed":
            gv.decision = EXIT_REGRESSION
            gv.reasons.insert(0, f"confirmed regression since {rec.first_detected_at}: "
                                 f"{rec.headline} (evidence: {rec.metric} ({rec.statistic}) "
                                 f"{eff}, q={rec.q_value:.2g})")
        else:
            gv.decision = max(gv.decision, EXIT_WAIT) if gv.decision != EXIT_REGRESSION else gv.decision
            gv.reasons.insert(0, f"suspected regression: {rec.headline} (evidence: {rec.metric} "
                                 f"({rec.statistic}) {eff}); waiting for joint evidence")
    if not verdicts:
        return EXIT_WAIT, [], analysis, [f"no host of fleet {args.fleet} runs kernel {args.kernel} "
                                         "beside a baseline kernel in the evaluated windows"]
    code = (EXIT_REGRESSION if any(v.decision == EXIT_REGRESSION for v in verdicts)
            else EXIT_WAIT if any(v.decision == EXIT_WAIT for v in verdicts) else EXIT_SAFE)
    return code, verdicts, analysis, []


def run(args) -> int:
    code, verdicts, analysis, notes = decide(args)
    word = {0: "SAFE to proceed", 1: "REGRESSION confirmed", 2: "NOT ENOUGH EVIDENCE yet"}[code]
    if args.json:
        print(json.dumps({"fleet": args.fleet, "kernel": args.kernel, "exit_code": code,
                          "verdict": word, "as_of": analysis.as_of.isoformat() if analysis else None,
                          "notes": notes, "groups": [asdict(v) for v in verdicts]}, indent=1))
    else:
        print(f"{args.fleet} {args.kernel}: {word}")
        for n in notes:
            print(f"  {n}")
        for v in verdicts:
            print(f"  {v.group} {v.kernel_from} -> {v.kernel_to}: exit {v.decision}, "
                  f"{v.hosts_new} vs {v.hosts_base} hosts, {v.hours_observed} h")
            for r in v.reasons:
                print(f"    - {r}")
    return code
