"""From per-metric tests to regression candidates: Benjamini-Hochberg across every
cohort x metric x statistic tested in a run, joint evidence (throughput down together
with compaction / direct reclaim up on the same cohort), mechanism evidence (costly-order
direct compaction on the new kernel that its baseline never shows, ``mechanism``:
suspected on that alone, confirmed with a throughput drop that corroborates it), and
ranking by impact.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, List, Optional, Sequence, Tuple

import numpy as np

from .before_after import STATISTIC as BEFORE_AFTER
from .before_after import BeforeAfterPolicy
from .cohort import Comparison, MetricTest
from .fresh_reference import STATISTIC as FRESH_MATCHED
from .fresh_reference import FreshReferencePolicy
from .frames import MECHANISM_METRICS, THROUGHPUT_METRICS
from .mechanism import METRIC as COSTLY_METRIC
from .mechanism import CostlyCompaction, MechanismPolicy


@dataclass(frozen=True)
class EvidencePolicy:
    # false discovery rate controlled across all tests of one run
    fdr: float = 0.001
    # smallest effect worth an alert (Intel's robot uses 1% on perf metrics)
    min_ratio_effect: float = 0.01
    min_share_effect: float = 0.05
    # no flag from fewer new-kernel hosts than this (one or two hosts in the tail are
    # a noisy neighbour or a failing disk as often as a kernel)
    min_hosts: int = 3
    # confirmation: joint evidence on enough hosts over enough windows
    confirm_min_hosts: int = 3
    confirm_min_windows: int = 15
    # a mechanism metric corroborates a significant throughput drop on the same cohort
    # when it is worse at this nominal one-sided level (the other way round, a drop
    # corroborating the tracepoints' mechanism evidence: MechanismPolicy.corroborating_p)
    corroborate_p: float = 0.01
    # Compaction or reclaim worse with throughput unchanged raises a suspicion only when
    # it is worse by at least this much (ratio 1.5x; bad-interval share +0.25). These
    # counts depend steeply on memory state, load and hardware, and their dependence
    # differs between fleets: what is left of it after the memory-state model and the
    # covariates is tens of percent (PSI 1.06-1.18x, bad share +0.06-0.10 on rollouts
    # without any kernel effect), a kernel regression of the kind the gate is for is
    # several-fold (compaction 4-8x, reclaim 2-3x on the seed's regression).
    mechanism_alone_min_ratio: float = 0.5
    mechanism_alone_min_share: float = 0.25
    # Pressure (PSI) is the consequence of stalls and reclaim and of load: it supports a
    # regression and never raises one alone.
    supporting_only: Tuple[str, ...] = ("psi_memory_some_share",)
    # costly-order direct compaction on the new kernel that its baseline never shows
    # (tracepoint counters): suspects a cohort on its own and stands for the mechanism
    # beside a throughput drop; its thresholds are explained in MechanismPolicy
    mechanism: MechanismPolicy = field(default_factory=MechanismPolicy)
    # each host's own before and after under the monotone assumption (fresher memory on
    # the new kernel doing worse than the same host on the old kernel, more fragmented,
    # at the same time of day): its thresholds are explained in BeforeAfterPolicy
    before_after: BeforeAfterPolicy = field(default_factory=BeforeAfterPolicy)
    # against the few baseline hosts rebooted into the same fresh-memory states as the
    # canaries (FreshReferencePolicy explains its thresholds)
    fresh_reference: FreshReferencePolicy = field(default_factory=FreshReferencePolicy)
    # Statistics that corroborate a throughput drop (at corroborate_p) and never raise
    # or decide anything themselves: ``fresh_matched`` rests on a handful of reference
    # hosts whose hardware mix is whatever happened to reboot.
    corroborating_only: Tuple[str, ...] = (FRESH_MATCHED,)


def benjamini_hochberg(p_values: Sequence[float]) -> np.ndarray:
    """Step-up BH adjusted p-values (q-values), in the input order."""
    p = np.asarray(p_values, dtype=float)
    m = p.size
    if m == 0:
        return p
    order = np.argsort(p)
    ranked = p[order] * m / np.arange(1, m + 1)
    q_sorted = np.minimum.accumulate(ranked[::-1])[::-1]
    q = np.empty(m)
    q[order] = np.minimum(q_sorted, 1.0)
    return q


def apply_fdr(comparisons: Iterable[Comparison]) -> None:
    tests = [t for c in comparisons for t in c.tests]
    for t, q in zip(tests, benjamini_hochberg([t.p_value for t in tests])):
        t.q_value = float(q)


def is_significant(t: MetricTest, policy: EvidencePolicy) -> bool:
    return t.q_value <= policy.fdr and worth_an_alert(t, policy) and t.n_new >= policy.min_hosts


def worth_an_alert(t: MetricTest, policy: EvidencePolicy) -> bool:
    """Worse by at least the smallest effect worth an alert (ratio or share)."""
    floor = policy.min_share_effect if t.effect_kind == "share_diff" else policy.min_ratio_effect
    return t.worse_by() >= floor


# the statistics that compare each host with itself (a confound between hosts leaves these)
OWN_BEFORE_AFTER = ("within_host", BEFORE_AFTER)


@dataclass
class Judgement:
    comparison: Comparison
    status: Optional[str]            # None, "suspected" or "confirmed"
    significant: List[MetricTest]
    primary: Optional[MetricTest]
    impact: float                    # relative effect x hosts in the group
    reasons: List[str]
    costly_compaction: bool = False  # the mechanism evidence (tracepoints) took part


def strong_alone(t: MetricTest, policy: EvidencePolicy) -> bool:
    """A mechanism test large enough to raise a suspicion without throughput."""
    if t.metric in policy.supporting_only:
        return False
    floor = (policy.mechanism_alone_min_share if t.effect_kind == "share_diff"
             else policy.mechanism_alone_min_ratio)
    return t.worse_by() >= floor


def judge(c: Comparison, policy: EvidencePolicy, hosts_in_group: int) -> Judgement:
    sig = sorted((t for t in c.tests if is_significant(t, policy)
                  and t.statistic not in policy.corroborating_only), key=lambda t: t.q_value)
    if c.confounds:
        # not like with like between hosts: only each host's own before/after counts
        sig = [t for t in sig if t.statistic in OWN_BEFORE_AFTER]
    costly = policy.mechanism.shows(c.costly_compaction)
    if not sig:
        if costly:
            return _mechanism_first(c, policy, hosts_in_group)
        return Judgement(c, None, [], None, 0.0, [])
    throughput = [t for t in sig if t.metric in THROUGHPUT_METRICS]
    mechanism = [t for t in sig if t.metric in MECHANISM_METRICS]
    if not throughput and not any(strong_alone(t, policy) for t in mechanism):
        if costly:
            return _mechanism_first(c, policy, hosts_in_group)
        return Judgement(c, None, [], None, 0.0, [])
    if throughput and not mechanism:
        mechanism = sorted((t for t in c.tests if t.metric in MECHANISM_METRICS
                            and t.p_value <= policy.corroborate_p and t.n_new >= policy.min_hosts
                            and worth_an_alert(t, policy)), key=lambda t: t.p_value)
    primary = (throughput or mechanism)[0]
    # impact: the typical-interval effect when it is significant, else the primary's
    level = [t for t in (throughput or mechanism) if t.statistic == "level"]
    eff = abs((level or [primary])[0].worse_by())
    reasons = []
    joint = bool(throughput) and (bool(mechanism) or costly)
    # new-kernel hosts the evidence rests on: the comparison between hosts', or a
    # significant own before-and-after test's
    hosts = max([c.n_new_compared] + [t.n_new for t in sig if t.statistic == BEFORE_AFTER])
    enough = (hosts >= policy.confirm_min_hosts and c.windows >= policy.confirm_min_windows)
    if costly:
        reasons.append(c.costly_compaction.reason())
    if joint and enough:
        status = "confirmed"
        with_metric = mechanism[0].metric if mechanism else COSTLY_METRIC
        reasons.append(f"{primary.metric} worse together with {with_metric} "
                       f"on {hosts} new-kernel hosts over {c.windows} windows")
    else:
        status = "suspected"
        if not joint:
            reasons.append("only " + ("throughput" if throughput else "compaction/reclaim")
                           + " metrics are worse; joint evidence missing")
        if not enough:
            reasons.append(f"{hosts} of {c.n_new} new-kernel hosts in comparable "
                           f"memory states over {c.windows} windows; confirmation "
                           f"needs {policy.confirm_min_hosts} hosts and {policy.confirm_min_windows} windows")
    evidence = sig + ([costly_test(c.costly_compaction)] if costly else [])
    return Judgement(c, status, evidence, primary,
                     eff * max(hosts_in_group, c.n_new + c.n_base), reasons, costly)


def costly_test(e: CostlyCompaction) -> MetricTest:
    """The mechanism evidence as a test in the record: the share of hosts attempting
    costly direct compaction, new minus baseline, with Fisher's exact p-value (outside
    the FDR family: a presence rule with named thresholds, not a level test)."""
    return MetricTest(COSTLY_METRIC, "hosts_showing", e.new_reporting, e.base_reporting,
                      e.p_value, e.share_diff, e.share_diff, e.share_diff, "share_diff",
                      adjusted=False, q_value=e.p_value)


def corroborating_throughput(c: Comparison, policy: EvidencePolicy) -> List[MetricTest]:
    """Throughput tests that corroborate the mechanism evidence, most significant first:
    each host's own before and after (``OWN_BEFORE_AFTER``), worse at
    ``MechanismPolicy.corroborating_p`` nominal and by an effect worth an alert, on at
    least ``MechanismPolicy.corroborating_min_hosts`` new-kernel hosts. Not the
    comparisons between hosts: two or three new-kernel hosts against the baseline are a
    draw from the fleet's host-to-host spread, and with heavy-tailed hosts that draw
    alone gave 0.66x writes at p 0.005 on 3 canaries of a kernel without any cost
    (``benchmarks/detector_replay.py --only costless``, seed 301); a host compared
    with itself leaves that spread out."""
    m = policy.mechanism
    return sorted((t for t in c.tests if t.metric in THROUGHPUT_METRICS
                   and t.statistic in OWN_BEFORE_AFTER and t.p_value <= m.corroborating_p
                   and t.n_new >= m.corroborating_min_hosts and worth_an_alert(t, policy)),
                  key=lambda t: t.p_value)


def _mechanism_first(c: Comparison, policy: EvidencePolicy, hosts_in_group: int) -> Judgement:
    """The mechanism shows and no throughput test is significant across the run: confirmed
    when a throughput drop corroborates it over enough windows, else suspected on the
    mechanism alone."""
    drops = corroborating_throughput(c, policy)
    if not drops or c.windows < policy.confirm_min_windows:
        return _mechanism_alone(c, policy, hosts_in_group)
    t, m = drops[0], policy.mechanism
    reasons = [c.costly_compaction.reason(),
               f"{t.metric} ({t.statistic}) worse at p {t.p_value:.1g} on {t.n_new} new-kernel "
               f"hosts over {c.windows} windows, corroborating the mechanism "
               f"(p <= {m.corroborating_p:g} on at least {m.corroborating_min_hosts} hosts)"]
    return Judgement(c, "confirmed", [t, costly_test(c.costly_compaction)], t,
                     abs(t.worse_by()) * max(hosts_in_group, c.n_new + c.n_base), reasons, True)


def _mechanism_alone(c: Comparison, policy: EvidencePolicy, hosts_in_group: int) -> Judgement:
    """Suspected on the mechanism evidence alone: no test is significant yet, but the new
    kernel's hosts attempt costly-order direct compaction and the baseline's never do.
    Never confirmed from this alone: confirmation needs the throughput effect. The
    deciding test is ``costly_test``; the impact ranks below any measured effect (the
    smallest effect worth an alert)."""
    e = c.costly_compaction
    t = costly_test(e)
    m = policy.mechanism
    reasons = [e.reason() + "; suspected on the mechanism alone",
               f"no throughput effect is significant yet, nor worse at p <= {m.corroborating_p:g} "
               f"on {m.corroborating_min_hosts} or more hosts; confirmation needs it"]
    impact = policy.min_ratio_effect * max(hosts_in_group, c.n_new + c.n_base)
    return Judgement(c, "suspected", [t], t, impact, reasons, True)


def rank(judgements: Iterable[Judgement]) -> List[Judgement]:
    return sorted((j for j in judgements if j.status), key=lambda j: -j.impact)
