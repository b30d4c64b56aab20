"""The rollout gate's decision for one fleet and new kernel: 0 safe to proceed, 1 a
regression is confirmed, 2 not enough evidence yet (with what is missing: hosts, hours,
fragmentation coverage). ``foliowatch verdict`` prints it and exits with it; ``foliowatch
detect`` exports it on /metrics as ``foliowatch_rollout_verdict``; both call ``decide``.

"Safe" needs more than "nothing significant": the comparison must be able to see the
target effect (a power calculation on the observed host-to-host spread), the new kernel
must have run long enough, and it must have been observed at the fragmentation the fleet
runs at (the seed regression only appears on fragmented memory, and canaries have just
rebooted).

The decision reads the regression state and the analysis; it changes neither. The open
regressions it weighs are the state's as this analysis would leave them
(``RegressionState.preview``): a gate never says "safe" about a regression the data in
hand shows, whether or not ``detect`` has announced it yet.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, field, fields
from typing import Dict, List, Optional, Tuple

EXIT_SAFE, EXIT_REGRESSION, EXIT_WAIT = 0, 1, 2
WORDS = {EXIT_SAFE: "SAFE to proceed", EXIT_REGRESSION: "REGRESSION confirmed",
         EXIT_WAIT: "NOT ENOUGH EVIDENCE yet"}


@dataclass(frozen=True)
class GatePolicy:
    """What "enough evidence" means."""
    target_effect: float = 0.05     # smallest write-throughput regression to be able to see
    power: float = 0.8
    min_hours: float = 6.0          # hours the new kernel must have run
    min_frag_hosts: int = 5         # new-kernel hosts at the fleet's median fragmentation


_HELP = {
    "target_effect": "smallest write-throughput regression the gate must be able to see",
    "power": "power to see --target-effect",
    "min_hours": "hours the new kernel must have run",
    "min_frag_hosts": "new-kernel hosts that must have reached the fleet's median fragmentation",
}


def add_gate_arguments(parser: argparse.ArgumentParser) -> None:
    """The gate's thresholds, the same flags for ``verdict`` and for ``detect``'s
    /metrics, so that a dashboard shows what the rollout playbook is told."""
    g = parser.add_argument_group("rollout gate")
    for f in fields(GatePolicy):
        g.add_argument("--" + f.name.replace("_", "-"), type=type(f.default), default=f.default,
                       help=f"{_HELP[f.name]} (default {f.default:g})")


def policy_from(args) -> GatePolicy:
    return GatePolicy(**{f.name: getattr(args, f.name) for f in fields(GatePolicy)})


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
    # new-kernel hosts that reached the fleet's median fragmentation, and how many needed
    frag_hosts: int = 0
    frag_hosts_needed: int = 0
    # what differs between the new-kernel and the baseline hosts besides the kernel, so
    # that the comparison cannot tell them apart (``Comparison.confounds``)
    confounds: List[str] = field(default_factory=list)


@dataclass
class Decision:
    fleet: str
    kernel: str
    code: int
    groups: List[GroupVerdict]
    notes: List[str]

    @property
    def word(self) -> str:
        return WORDS[self.code]

    def missing(self) -> str:
        """What is missing before the gate can say safe, in one line a rollout engineer
        can act on (empty unless the decision is "not enough evidence")."""
        if self.code != EXIT_WAIT:
            return ""
        if not self.groups:
            return "missing: " + "; ".join(self.notes)
        wait = [v for v in self.groups if v.decision == EXIT_WAIT]
        parts = []
        hosts = [v.more_hosts_needed for v in wait if v.more_hosts_needed]
        if any(h < 0 for h in hosts):
            parts.append("more hosts than the baseline can resolve")
        elif hosts:
            parts.append(f"{max(hosts)} more comparable new-kernel hosts")
        hours = max((v.more_hours_needed for v in wait), default=0.0)
        if hours > 0:
            parts.append(f"{math.ceil(hours * 10) / 10:.1f} more hours")    # never "0.0 more"
        frag = [v for v in wait if v.frag_hosts < v.frag_hosts_needed]
        if frag:
            v = min(frag, key=lambda v: v.frag_hosts)
            parts.append(f"fragmentation reached on {v.frag_hosts}/{v.frag_hosts_needed} hosts")
        confounds = sorted({c for v in wait for c in v.confounds})
        if confounds:
            parts.append("confound: " + "; ".join(confounds))
        suspected = [v.group for v in wait if any(r.startswith("suspected") for r in v.reasons)]
        if suspected:
            parts.append(f"a suspected regression awaiting joint evidence ({', '.join(suspected)})")
        return "missing: " + (", ".join(parts) if parts else "see the groups below")


def matches(kernel: str, wanted: str) -> bool:
    """``wanted`` is the kernel's release string or a version prefix of it."""
    return kernel == wanted or kernel.startswith(wanted + ".") or kernel.startswith(wanted + "-")


def judge_group(c, fdr: float, policy: GatePolicy) -> GroupVerdict:
    from scipy import stats as sstats

    from .cohort import MIN_TYPE_HOSTS
    gv = GroupVerdict("/".join(map(str, c.group)), c.kernel_from, c.kernel_to, EXIT_SAFE,
                      hosts_new=c.n_new, hosts_base=c.n_base)
    hours = ((c.last_window - c.new_first_seen).total_seconds() / 3600.0
             if c.new_first_seen and c.last_window else 0.0)
    gv.hours_observed = round(hours, 2)
    # power: one-sided test at the run's FDR level on the host-level spread of the write
    # metric (Mann-Whitney is ~95% as efficient as the t test on normal data)
    sd = c.level_sd.get("write_mib_s") or c.level_sd.get("probe_mib_s")
    if sd and sd > 0 and c.n_base > 1:
        z = sstats.norm.ppf(1 - fdr) + sstats.norm.ppf(policy.power)
        se_unit = z * sd / math.sqrt(0.95)
        mde = se_unit * math.sqrt(1 / max(c.n_new_compared, 1) + 1 / c.n_base)
        gv.detectable_effect = round(1 - math.exp(-mde), 4)
        target = -math.log(1 - policy.target_effect)
        if mde > target:
            room = (target / se_unit) ** 2 - 1 / c.n_base
            need = math.ceil(1 / room) if room > 0 else None
            if need is None:
                gv.reasons.append(f"even all {c.n_base} baseline hosts cannot resolve a "
                                  f"{policy.target_effect:.0%} effect (host spread {sd:.3f} log)")
                gv.more_hosts_needed = -1
            else:
                gv.more_hosts_needed = max(need - c.n_new_compared, 1)
                gv.reasons.append(f"{c.n_new_compared} comparable new-kernel hosts can only see a "
                                  f"{gv.detectable_effect:.1%} regression; {gv.more_hosts_needed} more "
                                  f"hosts to see {policy.target_effect:.0%}")
            gv.decision = EXIT_WAIT
    else:
        gv.reasons.append("no write-throughput spread measured yet")
        gv.decision = EXIT_WAIT
    if c.n_new_unmatched:
        gv.reasons.append(f"{c.n_new_unmatched} new-kernel hosts run instance types that fewer "
                          f"than {MIN_TYPE_HOSTS} baseline hosts share "
                          f"({', '.join(c.unmatched_instance_types)}): "
                          "not compared")
    if hours < policy.min_hours:
        gv.more_hours_needed = round(policy.min_hours - hours, 2)
        # rounded down: 5.98 h must not read as the 6 h needed
        gv.reasons.append(f"new kernel observed for {math.floor(hours * 10) / 10:.1f} h; "
                          f"{policy.min_hours:g} h needed")
        gv.decision = EXIT_WAIT
    if c.confounds:
        gv.confounds = list(c.confounds)
        gv.reasons.extend(f"not like with like: {x}" for x in c.confounds)
        gv.decision = EXIT_WAIT
    gv.frag_hosts = c.new_hosts_at_fleet_frag
    if c.frag_base_median is not None:
        gv.frag_hosts_needed = policy.min_frag_hosts
    if c.frag_base_median is not None and c.new_hosts_at_fleet_frag < policy.min_frag_hosts:
        gap = None
        if c.uptime_h_at_fleet_frag is not None:
            gap = max(c.uptime_h_at_fleet_frag - c.new_max_uptime_h, 0.0)
            gv.more_hours_needed = round(max(gv.more_hours_needed, gap), 2)
        gv.reasons.append(
            f"only {c.new_hosts_at_fleet_frag} new-kernel hosts reached the fleet's median "
            f"fragmentation ({c.frag_base_median:.2f} unusable for 1 MiB); "
            f"{policy.min_frag_hosts} needed" + (f", about {gap:.1f} more hours of uptime" if gap
                                                 else ", hours unknown (no host seen crossing it)"
                                                 if c.uptime_h_at_fleet_frag is None else ""))
        gv.decision = EXIT_WAIT
    return gv


def open_regressions(analysis, state) -> list:
    """The open regressions as of ``analysis``, without changing ``state``."""
    return state.preview(analysis.candidates, analysis.rolled_back, analysis.as_of)


def decide(analysis, state, fleet: str, kernel: str, policy: GatePolicy = GatePolicy(),
           fdr: Optional[float] = None, open_records: Optional[list] = None) -> Decision:
    """The gate for ``fleet`` rolling out ``kernel`` (a release or a version prefix).
    ``fdr``: the evaluation's false discovery rate (default: the evidence policy's);
    ``open_records``: ``open_regressions(analysis, state)`` when the caller has it."""
    from .evidence import EvidencePolicy
    fdr = fdr if fdr is not None else EvidencePolicy().fdr
    if open_records is None:
        open_records = open_regressions(analysis, state)
    verdicts: List[GroupVerdict] = [judge_group(c, fdr, policy) for c in analysis.comparisons
                                    if c.group[0] == fleet and matches(c.kernel_to, kernel)]
    for rec in open_records:
        if rec.fleet != fleet or not matches(rec.kernel_to, kernel):
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
        return Decision(fleet, kernel, EXIT_WAIT, [],
                        [f"no host of fleet {fleet} runs kernel {kernel} beside a baseline "
                         "kernel in the evaluated windows"])
    code = (EXIT_REGRESSION if any(v.decision == EXIT_REGRESSION for v in verdicts)
            else EXIT_WAIT if any(v.decision == EXIT_WAIT for v in verdicts) else EXIT_SAFE)
    return Decision(fleet, kernel, code, verdicts, [])


def decide_all(analysis, state, policy: GatePolicy = GatePolicy(),
               fdr: Optional[float] = None) -> Dict[Tuple[str, str], int]:
    """The gate's code for every (fleet, new kernel) the analysis compares or the state
    holds an open regression for."""
    open_records = open_regressions(analysis, state)
    pairs = ({(c.group[0], c.kernel_to) for c in analysis.comparisons}
             | {(r.fleet, r.kernel_to) for r in open_records})
    return {(fleet, kernel): decide(analysis, state, fleet, kernel, policy, fdr,
                                    open_records=open_records).code
            for fleet, kernel in sorted(pairs)}
