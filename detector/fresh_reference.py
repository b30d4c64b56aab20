"""The uptime-matched reference: baseline hosts that rebooted (maintenance) and passed
through the same fresh-memory states as the canaries, compared state by state.

A long-running fleet's baseline hosts sit at high fragmentation; the comparison between
hosts (``cohort.compare``) uses only the memory states at least
``state_support.MIN_STATE_HOSTS`` of them occupy, which canaries reach hours after their
reboot. The few baseline hosts rebooted within the reference history (a handful in a
thousand a day) are the like-with-like reference for those first hours: the same kernel
as the fleet, the same uptime and fragmentation as the canaries. Too few to raise or
confirm a regression on their own (a rank test against three hosts cannot reach the
run's false discovery rate, and their hardware mix is whatever was rebooted), they
corroborate one: compaction stalls or direct reclaim on the new kernel above what
baseline hosts did in the same memory state, beside a significant throughput drop
(``EvidencePolicy.corroborate_p``; ``EvidencePolicy.corroborating_only``).

Per new-kernel host (``fresh_matched``): the median over its windows of the centred log
value minus the median, over reference hosts, of the reference hosts' median in the same
fragmentation bin. Each reference host gets the same value over the bins the new-kernel
hosts occupy: how far one baseline host sits from the others in a state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import polars as pl

from .centring import centred_windows
from .state_support import frag_bin

STATISTIC = "fresh_matched"


@dataclass(frozen=True)
class FreshReferencePolicy:
    # The mechanism metrics (a regression of the seed's kind multiplies them several
    # fold, which a handful of reference hosts can show; a throughput effect of a few
    # percent against host-to-host spread of tens of percent they cannot).
    metrics: Tuple[str, ...] = ("compact_stall_per_s", "allocstall_per_s", "pgscan_direct_per_s")
    # A fragmentation bin (``state_support.FRAG_BIN`` wide) is a reference state when at
    # least this many distinct baseline hosts were seen in it: with 3 reference hosts and
    # 8 canaries all above them, the one-sided rank test's p is 1/165 = 0.006, just
    # inside ``EvidencePolicy.corroborate_p`` (0.01); fewer cannot corroborate at all.
    min_hosts: int = 3


def _bin() -> pl.Expr:
    return frag_bin().alias("bin")


def reference_bins(centred: pl.DataFrame, base_kernel: str) -> Optional[pl.DataFrame]:
    """Per baseline host and fragmentation bin of the reference history: the host's
    median centred log value (``host_id, bin, z``). ``centred``: the reference's
    ``centring.centred_windows`` of the metric (built once for all its uses)."""
    x = centred
    if "frag" not in x.columns or x.is_empty():
        return None
    return (x.filter((pl.col("kernel") == base_kernel) & pl.col("frag").is_finite())
            .group_by("host_id", _bin()).agg(pl.col("z").median().alias("z")))


def fresh_matched(df: pl.DataFrame, metric: str, base_kernel: str, new_kernel: str,
                  bins: Optional[pl.DataFrame], policy: FreshReferencePolicy
                  ) -> Optional[pl.DataFrame]:
    """``host_id, kernel, fresh_matched`` for the new-kernel hosts of ``df`` (windows in
    reference states) and the reference hosts of those states; None when there is none."""
    if bins is None or bins.is_empty():
        return None
    x = centred_windows(df, metric, base_kernel)
    if "frag" not in x.columns:
        return None
    new = x.filter((pl.col("kernel") == new_kernel) & pl.col("frag").is_finite()).with_columns(_bin())
    states = (bins.group_by("bin").agg(pl.col("z").median().alias("ref"),
                                       pl.col("host_id").n_unique().alias("hosts"))
              .filter(pl.col("hosts") >= policy.min_hosts))
    new = new.join(states, on="bin", how="inner")
    if new.is_empty():
        return None
    occupied = new["bin"].unique().implode()
    new_hosts = new["host_id"].unique().implode()
    base = (bins.filter(pl.col("bin").is_in(occupied) & ~pl.col("host_id").is_in(new_hosts))
            .join(states, on="bin", how="inner"))
    per_host = lambda f: (f.group_by("host_id")  # noqa: E731
                          .agg((pl.col("z") - pl.col("ref")).median().alias(STATISTIC)))
    return pl.concat([per_host(new).with_columns(pl.lit(new_kernel).alias("kernel")),
                      per_host(base).with_columns(pl.lit(base_kernel).alias("kernel"))])
