"""Cohort comparison: new-kernel hosts against baseline-kernel hosts of the same group
(fleet, role, arch, page size, filesystem) over the same windows (``compare``), and its
output types. The steps live beside it, one module each: ``centring``,
``state_support``, ``memory_state``, ``reference_state``, ``covariates``,
``host_statistics``, ``rank_test``, ``coverage``.

Per metric, each host-window value is put on a log scale and centred on the baseline
hosts' median in the same window, so load, time of day and traffic shifts that hit
both kernels cancel. Each host then contributes one value per statistic (not one per
window: windows of one host are not independent):

- ``level``: the host's median centred value (the typical interval),
- ``tail``: its 90th percentile in the worse direction (compaction stalls are tail
  events; a median test passes when only a few intervals get 100x worse),
- ``bad_share``: the share of its windows worse than the baseline's own 90th percentile
  of that window (10% expected on an unchanged kernel),
- ``within_host``: its level minus its own level on the baseline kernel before the
  rollout (canaries' pre-reboot windows; baseline hosts' same period): a host-level
  difference in differences that removes the large host-to-host spread. Tested on the
  probe only (``frames.WITHIN_HOST_METRICS`` says why).

Two statistics do not wait for that (each tested as its own family member, unadjusted):

- ``before_after`` (``before_after``): a new-kernel host on fresher memory than it had on
  the old kernel, against its own old-kernel level at the same time of day; for one
  kernel writes do not improve as memory fragments, so worse is evidence against the
  new kernel without any model (the probe and the mechanism metrics),
- ``fresh_matched`` (``fresh_reference``): the mechanism metrics against the few baseline
  hosts rebooted into the same fresh-memory states; it only corroborates.

Like is compared with like. Windows count only in memory states the baseline hosts
occupy (fragmentation bins seen on at least ``MIN_STATE_HOSTS`` baseline hosts): a
canary minutes after its reboot is not compared until its memory is in a state the
fleet is seen in. New-kernel hosts of an instance type fewer than ``min_type_hosts``
baseline hosts share are left out (and named).

Host values are adjusted for covariates with a ridge regression fitted on baseline hosts
only (instance type, cpus, memory, and for the mechanism metrics the write load), and
window values for memory state (``MemoryStateModel``, fragmentation), the latter only in
the direction the monotone premise backs (``host_statistics.state_adjusted``): a
new-kernel host in more fragmented memory than the baseline's is given its penalty back;
one in fresher memory keeps its reboot bonus (removing it would rest on the model's
slope extrapolated between the two kernels' states; ``before_after`` sees through the
bonus without a model). Baseline residuals are out-of-fold so the baseline spread is
not understated. The test is a one-sided Mann-Whitney U (new worse),
the effect a Hodges-Lehmann shift with its distribution-free interval, reported as a
ratio (level, tail) or a difference of shares (bad_share).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import polars as pl

from .before_after import BeforeAfterPolicy, before_after
from .fresh_reference import STATISTIC as FRESH_MATCHED
from .fresh_reference import FreshReferencePolicy, fresh_matched
from .covariates import BASE_COVARIATES, CovariateAdjuster, host_covariates
from .confounds import find_confounds
from .coverage import memory_coverage
from .frames import MECHANISM_METRICS, TESTED_METRICS, WITHIN_HOST_METRICS, worse_direction
from .host_statistics import STATISTICS, host_statistics
from .before_after import STATISTIC as BEFORE_AFTER
from .mechanism import CostlyCompaction
from .rank_test import hodges_lehmann, mann_whitney_worse
from .reference_state import ReferenceState, reference_state

# New-kernel hosts are compared only on instance types this many baseline hosts share.
MIN_TYPE_HOSTS = 10


@dataclass
class MetricTest:
    metric: str
    statistic: str                 # level | tail | bad_share
    n_new: int
    n_base: int
    p_value: float                 # one-sided: new kernel worse
    effect: float                  # ratio new/base (level, tail) or share difference
    ci_low: float
    ci_high: float
    effect_kind: str               # "ratio" or "share_diff"
    adjusted: bool
    q_value: float = 1.0           # filled by evidence.benjamini_hochberg

    def worse_by(self) -> float:
        """How much worse the new kernel is, >0 worse: relative for ratios."""
        d = worse_direction(self.metric)
        if self.effect_kind == "ratio":
            return (self.effect - 1.0) if d > 0 else (1.0 - self.effect)
        return self.effect


@dataclass
class Comparison:
    group: Tuple                   # fleet, role, arch, page_size, fs
    kernel_from: str
    kernel_to: str
    n_new: int
    n_base: int
    windows: int
    first_window: Optional[datetime]
    last_window: Optional[datetime]
    new_first_seen: Optional[datetime]
    tests: List[MetricTest] = field(default_factory=list)
    # memory-state coverage for the verdict (``coverage.MemoryCoverage``)
    frag_base_median: Optional[float] = None
    new_hosts_at_fleet_frag: int = 0
    new_max_uptime_h: float = 0.0
    uptime_h_at_fleet_frag: Optional[float] = None
    unmatched_instance_types: List[str] = field(default_factory=list)
    level_sd: Dict[str, float] = field(default_factory=dict)   # host-level spread (log)
    # new-kernel hosts with windows in comparable memory states (the tests' hosts)
    n_new_compared: int = 0
    # new-kernel hosts left out: their instance type is (nearly) absent on the baseline
    n_new_unmatched: int = 0
    # what besides the kernel separates the compared hosts (``confounds``): while any is
    # named, only a host's own before/after can raise a suspicion
    confounds: List[str] = field(default_factory=list)
    # who attempts costly-order direct compaction on each kernel (tracepoint counters;
    # None when no host reports them): ``mechanism.costly_compaction``
    costly_compaction: Optional[CostlyCompaction] = None


def compare(df: pl.DataFrame, group: Tuple, base_kernel: str, new_kernel: str,
            metrics: Sequence[str] = TESTED_METRICS, min_base_hosts: int = 3,
            adjust: bool = True, alpha_ci: float = 0.05,
            reference: Optional[pl.DataFrame] = None,
            rollout_start: Optional[datetime] = None,
            reference_states: Optional[Dict[str, ReferenceState]] = None,
            min_type_hosts: int = MIN_TYPE_HOSTS,
            before_after_policy: Optional[BeforeAfterPolicy] = None,
            fresh_policy: Optional[FreshReferencePolicy] = None) -> Optional[Comparison]:
    """Compare ``new_kernel`` with ``base_kernel`` on one group's host windows ``df``.

    Only windows where both kernels report are used. Returns None when the new kernel
    has no host in such a window. ``reference``: the group's baseline-kernel host
    windows over a longer history, for the memory-state (fragmentation) adjustment and
    each host's level before ``rollout_start`` (default: the new kernel's first window).
    ``reference_states``: per-metric states already built from that reference (a cache:
    filled here for the metrics missing from it). ``before_after_policy``: also test each
    host's own before and after (``before_after``) on that policy's metrics;
    ``fresh_policy``: against baseline hosts in the same fresh-memory states
    (``fresh_matched``)."""
    df = _shared_windows(df, base_kernel, new_kernel, min_base_hosts)
    if df.is_empty():
        return None
    cov = host_covariates(df)
    is_new_k = pl.col("kernel") == new_kernel
    n_new = cov.filter(is_new_k).height
    windows = df["window_start"].unique()
    comp = Comparison(group=tuple(group), kernel_from=base_kernel, kernel_to=new_kernel,
                      n_new=n_new, n_base=cov.height - n_new, windows=windows.len(),
                      first_window=windows.min(), last_window=windows.max(),
                      new_first_seen=df.filter(is_new_k)["window_start"].min(),
                      **asdict(memory_coverage(df, cov, new_kernel)))
    rollout_start = rollout_start or comp.new_first_seen
    if reference_states is None:
        reference_states = {}
    df, cov = _matched_instance_types(comp, df, cov, min_type_hosts)
    comp.confounds = find_confounds(cov, new_kernel)
    for metric in metrics:
        if metric not in df.columns or df[metric].null_count() == df.height:
            continue
        ref_state = None
        if adjust and (reference is not None or metric in reference_states):
            if metric not in reference_states:
                reference_states[metric] = reference_state(reference, metric, base_kernel,
                                                           rollout_start, before_after_policy,
                                                           fresh_policy)
            ref_state = reference_states[metric]
        columns = list(BASE_COVARIATES)
        if metric in MECHANISM_METRICS and "log_dirtied_per_s" in cov.columns:
            columns.append("log_dirtied_per_s")
        hosts, cov_adjusted = host_statistics(df, metric, base_kernel, ref_state, cov,
                                              CovariateAdjuster(columns) if adjust else None)
        _test_metric(comp, metric, hosts, cov_adjusted, min_base_hosts, alpha_ci)
        if ref_state is not None and before_after_policy is not None \
                and metric in before_after_policy.metrics:
            own = before_after(df, metric, base_kernel, new_kernel, ref_state.before,
                               before_after_policy)
            if own is not None:
                _test_metric(comp, metric, own, False, min_base_hosts, alpha_ci,
                             statistics=(BEFORE_AFTER,))
        if ref_state is not None and fresh_policy is not None and metric in fresh_policy.metrics:
            matched = fresh_matched(df, metric, base_kernel, new_kernel, ref_state.bins,
                                    fresh_policy)
            if matched is not None:
                _test_metric(comp, metric, matched, False, fresh_policy.min_hosts, alpha_ci,
                             statistics=(FRESH_MATCHED,))
    # the hosts of the comparison between hosts (the gate's power rests on them); a
    # host's own before and after counts its hosts itself
    comp.n_new_compared = max((t.n_new for t in comp.tests
                               if t.statistic not in (BEFORE_AFTER, FRESH_MATCHED)), default=0)
    return comp


def _shared_windows(df: pl.DataFrame, base_kernel: str, new_kernel: str,
                    min_base_hosts: int) -> pl.DataFrame:
    """The two kernels' host windows, in windows where the new kernel reports and at
    least ``min_base_hosts`` baseline hosts do (empty: nothing to compare)."""
    df = df.filter(pl.col("kernel").is_in([base_kernel, new_kernel]))
    per_window = (df.group_by("window_start")
                  .agg((pl.col("kernel") == new_kernel).any().alias("has_new"),
                       pl.col("host_id").filter(pl.col("kernel") == base_kernel).n_unique().alias("nb")))
    shared = per_window.filter(pl.col("has_new") & (pl.col("nb") >= min_base_hosts))["window_start"]
    return df.filter(pl.col("window_start").is_in(shared.implode()))


def _matched_instance_types(comp: Comparison, df: pl.DataFrame, cov: pl.DataFrame,
                            min_type_hosts: int) -> Tuple[pl.DataFrame, pl.DataFrame]:
    """Like with like: new-kernel hosts of an instance type that too few baseline hosts
    share are left out of the tests (and named in ``comp``). A regression model cannot
    adjust for hardware it has barely seen on the baseline kernel (ridge shrinks a
    3-host type's coefficient towards zero), and waves often go to the newest hardware
    first."""
    is_new_k = pl.col("kernel") == comp.kernel_to
    counts = cov.filter(~is_new_k).group_by("instance_type").len()
    matched = counts.filter(pl.col("len") >= min_type_hosts)["instance_type"]
    unmatched = cov.filter(is_new_k & ~pl.col("instance_type").is_in(matched.implode()))
    comp.unmatched_instance_types = sorted(set(unmatched["instance_type"].drop_nulls().to_list()))
    comp.n_new_unmatched = unmatched.height
    if unmatched.height:
        gone = unmatched["host_id"].implode()
        df = df.filter(~(is_new_k & pl.col("host_id").is_in(gone)))
        cov = cov.filter(~(is_new_k & pl.col("host_id").is_in(gone)))
    return df, cov


def _test_metric(comp: Comparison, metric: str, hosts: pl.DataFrame, cov_adjusted: bool,
                 min_base_hosts: int, alpha_ci: float,
                 statistics: Sequence[str] = STATISTICS) -> None:
    """Test each host statistic of ``metric`` (new kernel worse?) and add the tests to
    ``comp``; the effect is a ratio new/base (level, tail, within_host) or a difference of
    shares (bad_share)."""
    if hosts.is_empty():
        return
    is_new = (hosts["kernel"] == comp.kernel_to).to_numpy()
    if is_new.sum() == 0 or (~is_new).sum() < min_base_hosts:
        return
    d = worse_direction(metric)
    for statistic in statistics:
        if statistic not in hosts.columns or (statistic == "within_host"
                                              and metric not in WITHIN_HOST_METRICS):
            continue
        y = hosts[statistic].to_numpy().astype(float)
        # oriented so that larger = worse
        r = y * d if statistic != "bad_share" else y
        # covariates were removed at the window level (within_host: they cancel)
        adjusted = cov_adjusted and statistic != "within_host"
        ok = np.isfinite(r)
        a, b = r[is_new & ok], r[~is_new & ok]
        if a.size == 0 or b.size < min_base_hosts:
            continue
        if statistic in ("level", "within_host") and b.size > 1:
            # the most precise host-level statistic sets the comparison's power
            sd = float(np.std(b, ddof=1))
            comp.level_sd[metric] = min(sd, comp.level_sd.get(metric, sd))
        p = mann_whitney_worse(a, b, tie_heavy=statistic == "bad_share")
        est, lo, hi = hodges_lehmann(a, b, alpha_ci)
        if statistic == "bad_share":
            effect, ci = est, (lo, hi)
            kind = "share_diff"
        else:
            # back from "oriented log shift" to a ratio new/base on the metric's scale
            effect = float(np.exp(est * d))
            ci = tuple(sorted((float(np.exp(lo * d)), float(np.exp(hi * d)))))
            kind = "ratio"
        comp.tests.append(MetricTest(metric, statistic, int(a.size), int(b.size), p,
                                     effect, ci[0], ci[1], kind, adjusted))
