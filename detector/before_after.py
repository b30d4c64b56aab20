"""A host's own before and after, under the monotone assumption: for one kernel, write
capability does not improve, and compaction stalls and direct reclaim do not fall, as
memory fragments. So a host that rebooted onto the new kernel and is now *less*
fragmented than it was on the old kernel should write at least as fast, and stall at
most as often, as it did then at the same time of day. If it does worse, that is
evidence against the new kernel that needs no model of how fragmentation acts (no
extrapolation into the fresh-memory states the baseline hosts do not occupy): the
reboot bonus only works against it.

This is the like-with-like reference that exists from a canary's first hour: the
comparison between hosts (``cohort.compare``'s level, tail and bad-interval share) waits
until canaries reach the memory states the baseline hosts occupy
(``state_support.MIN_STATE_HOSTS``), which on a long-running fleet is hours after the
regression shows.

Per host and metric (``before_after``): the median of its centred log values over its
last ``BeforeAfterPolicy.recent`` of windows ("after") minus the median over its own
baseline-kernel windows before the rollout at the same time of day ("before"). Centred
on the baseline hosts' median per ``centre_bucket`` of time, so that what moves the
whole fleet (load, time of day) cancels. The new-kernel hosts count only while their
memory is not more fragmented than it was before (the premise of the bound); the baseline
hosts, whose after-minus-before says how far a host's own level wanders without a kernel
change, count only while theirs is not fresher (none of them gets the reboot bonus). The test
(``cohort``) is the one-sided rank test of the new-kernel hosts' differences against the
baseline hosts': under the monotone assumption and no kernel effect, the new kernel's
are stochastically better, so the test is conservative by the reboot bonus.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Optional, Tuple

import polars as pl

from .frames import LOG_FLOOR, STATE_METRIC

STATISTIC = "before_after"


@dataclass(frozen=True)
class BeforeAfterPolicy:
    # Metrics tested this way. Throughput only on the write probe: the same write every
    # time, so its level is the kernel's capability; the workload's own write rate
    # follows demand, which drifts per host over hours (``frames.WITHIN_HOST_METRICS``).
    # Compaction stalls and direct reclaim follow demand too, but they are the
    # mechanism (corroboration at ``EvidencePolicy.corroborate_p``, or alone only far
    # beyond ``mechanism_alone_min_ratio``), and the baseline hosts' differences carry
    # the same drift.
    metrics: Tuple[str, ...] = ("probe_mib_s", "compact_stall_per_s", "allocstall_per_s",
                                "pgscan_direct_per_s")
    # "After" is each host's last hour: since fragmentation only grows with uptime, its
    # most fragmented memory on the kernel so far, where a fragmentation-gated
    # regression shows most. A canary's hour holds 6 write probes (the agent probes every
    # 10 min in a host's first 8 h on a new kernel, ``agent.probe.new_kernel_every_s``),
    # a settled host's 1-2.
    recent: timedelta = timedelta(minutes=60)
    # Matched load: "before" windows are those at the same time of day as "after"
    # (within this many minutes either side of the after hour's middle), on the days
    # before the rollout; a host without enough of them (a history shorter than a day)
    # uses all its pre-rollout windows.
    tod_halfwidth: timedelta = timedelta(minutes=90)
    # The premise of the bound: a new-kernel host counts only while its after
    # fragmentation (median) is not above its before, and a baseline host only while its
    # after is not more than this below its before (one state bin,
    # ``state_support.FRAG_BIN``: the gauge's own jitter is +-0.01, and a baseline host
    # that much fresher gains at most a percent or two, well inside the hosts' spread).
    frag_margin: float = 0.05
    # A host needs this many windows with the metric on each side (the probe: 4 probes
    # before, 1 after; the counters report every window).
    min_before_windows: int = 4
    min_after_windows: int = 1
    # Centre: the baseline hosts' median over buckets of this length, not per window,
    # so that a probe (one host in 30 per window) is centred on every baseline host's
    # probe of the same half hour, not on the two or three that ran in that minute.
    centre_bucket: timedelta = timedelta(minutes=30)
    # a bucket's centre needs this many baseline hosts (``centring.MIN_CENTRE_HOSTS``)
    min_centre_hosts: int = 3


def monotone_premise(is_new: pl.Expr, frag_before: pl.Expr, frag_after: pl.Expr,
                     margin: float) -> pl.Expr:
    """Where a host's own after-minus-before bounds the new kernel's effect from above:
    a new-kernel host whose memory is not more fragmented than before (the reboot bonus
    can only make it look better), a baseline host whose memory is not fresher than
    before by more than ``margin`` (none of them gets the bonus; ``margin`` absorbs the
    gauge's jitter on hosts whose fragmentation has settled)."""
    not_more_fragmented = frag_after <= frag_before
    not_fresher = frag_after >= frag_before - margin
    return pl.when(is_new).then(not_more_fragmented).otherwise(not_fresher)


def log_windows(df: pl.DataFrame, metric: str) -> pl.DataFrame:
    """``window_start, host_id, kernel, y`` (log metric) and ``frag``, for the windows that
    report ``metric`` (the raw windows a reference keeps for ``before_after``)."""
    if metric not in df.columns or STATE_METRIC not in df.columns:
        return pl.DataFrame()
    return (df.filter(pl.col(metric).is_not_null() & pl.col(metric).is_finite()
                      & pl.col(STATE_METRIC).is_finite())
            .select("window_start", "host_id", "kernel",
                    (pl.col(metric).clip(lower_bound=0) + LOG_FLOOR[metric]).log().alias("y"),
                    pl.col(STATE_METRIC).alias("frag")))


def _bucket(policy: BeforeAfterPolicy) -> pl.Expr:
    return pl.col("window_start").dt.truncate(f"{int(policy.centre_bucket.total_seconds())}s")


def _centred(x: pl.DataFrame, base_kernel: str, policy: BeforeAfterPolicy) -> pl.DataFrame:
    """``x`` with ``bucket`` and ``z``: its log value minus the baseline hosts' median in
    the same bucket (buckets with fewer than ``min_centre_hosts`` baseline hosts dropped)."""
    x = x.with_columns(_bucket(policy).alias("bucket"))
    centre = (x.filter(pl.col("kernel") == base_kernel).group_by("bucket")
              .agg(pl.col("y").median().alias("centre"), pl.col("host_id").n_unique().alias("nb"))
              .filter(pl.col("nb") >= policy.min_centre_hosts))
    return (x.join(centre, on="bucket", how="inner")
            .with_columns((pl.col("y") - pl.col("centre")).alias("z")))


def before_buckets(reference: pl.DataFrame, metric: str, base_kernel: str,
                   rollout_start: Optional[datetime],
                   policy: BeforeAfterPolicy) -> Optional[pl.DataFrame]:
    """What a baseline-kernel ``reference`` history keeps for ``before_after``: per host and
    ``centre_bucket`` before ``rollout_start``, the median centred log value, the median
    fragmentation and the number of windows (a few rows per host and hour, whatever the
    window length)."""
    if rollout_start is None:
        return None
    x = log_windows(reference.filter((pl.col("kernel") == base_kernel)
                                     & (pl.col("window_start") < rollout_start)), metric)
    if x.is_empty():
        return None
    x = _centred(x, base_kernel, policy)
    return (x.group_by("host_id", "bucket")
            .agg(pl.col("z").median().alias("z"), pl.col("frag").median().alias("frag"),
                 pl.len().alias("n")))


def before_after(df: pl.DataFrame, metric: str, base_kernel: str, new_kernel: str,
                 before: Optional[pl.DataFrame], policy: BeforeAfterPolicy
                 ) -> Optional[pl.DataFrame]:
    """Per host: ``host_id, kernel, before_after`` (after minus before, centred log scale),
    ``frag_before``, ``frag_after``, for the hosts that satisfy the premise (module doc).
    ``df``: the comparison's host windows (both kernels); ``before``: ``before_buckets``
    of the baseline-kernel reference history. None when either side is missing."""
    if before is None or before.is_empty():
        return None
    after = log_windows(df, metric)
    if after.is_empty():
        return None
    as_of = after["window_start"].max()
    after = _centred(after.filter(pl.col("window_start") > as_of - policy.recent),
                     base_kernel, policy)
    if after.is_empty():
        return None
    # matched time of day: before buckets whose middle is within tod_halfwidth of the
    # after hour's middle
    mid = as_of - policy.recent / 2
    mid_min = mid.hour * 60 + mid.minute
    half = int(policy.tod_halfwidth.total_seconds() // 60)
    bucket_mid = (pl.col("bucket").dt.hour().cast(pl.Int32) * 60
                  + pl.col("bucket").dt.minute().cast(pl.Int32)
                  + int(policy.centre_bucket.total_seconds() // 120))
    dist = (bucket_mid - mid_min).abs() % 1440
    per_host = [pl.col("z").median().alias("z_before"), pl.col("frag").median().alias("frag_before"),
                pl.col("n").sum().alias("n_before")]
    matched = (before.filter(pl.min_horizontal(dist, 1440 - dist) <= half)
               .group_by("host_id").agg(per_host)
               .filter(pl.col("n_before") >= policy.min_before_windows))
    # a history shorter than a day before the rollout has no windows at this time of day
    # for some hosts: theirs is every pre-rollout window (centring on the fleet's median
    # of the same half hour still removes what moves the whole fleet)
    anytime = (before.filter(~pl.col("host_id").is_in(matched["host_id"].implode()))
               .group_by("host_id").agg(per_host)
               .filter(pl.col("n_before") >= policy.min_before_windows))
    b = pl.concat([matched, anytime])
    a = (after.group_by("host_id", "kernel")
         .agg(pl.col("z").median().alias("z_after"), pl.col("frag").median().alias("frag_after"),
              pl.len().alias("n_after"))
         .filter(pl.col("n_after") >= policy.min_after_windows))
    # a host that ran the new kernel in the after hour is a new-kernel host, not baseline
    # (a canary's last old-kernel windows before its reboot)
    new_hosts = a.filter(pl.col("kernel") == new_kernel)["host_id"].implode()
    a = a.filter((pl.col("kernel") == new_kernel) | ~pl.col("host_id").is_in(new_hosts))
    h = a.join(b, on="host_id", how="inner")
    h = h.filter(monotone_premise(pl.col("kernel") == new_kernel, pl.col("frag_before"),
                                  pl.col("frag_after"), policy.frag_margin))
    if h.is_empty():
        return None
    return h.select("host_id", "kernel", (pl.col("z_after") - pl.col("z_before")).alias(STATISTIC),
                    "frag_before", "frag_after", "n_before", "n_after")
