"""Rollout events, inferred from the data itself, and attribution of change points to
them.

A host's kernel label changes only at a reboot, so the host windows show every
upgrade and every rollback: the first window of a host on a different kernel than in
its previous window is a kernel change. Changes of one (fleet, role, arch, page size)
from kernel A to kernel B form a rollout; changes close in time form a wave; changes
from B back to A after a rollout to B are a rollback.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Dict, List, Optional, Sequence, Tuple

import polars as pl

ROLLOUT_KEYS = ("fleet", "role", "arch", "page_size")


@dataclass(frozen=True)
class Wave:
    start: datetime
    end: datetime
    hosts: int


@dataclass
class Rollout:
    fleet: str
    role: str
    arch: str
    page_size: int
    kernel_from: str
    kernel_to: str
    first_change: datetime
    last_change: datetime
    hosts: int
    is_rollback: bool = False
    waves: List[Wave] = field(default_factory=list)

    @property
    def key(self) -> Tuple:
        return (self.fleet, self.role, self.arch, self.page_size)


@dataclass(frozen=True)
class Attribution:
    kind: str                       # "rollout", "rollback" or "no_rollout"
    kernel_from: Optional[str] = None
    kernel_to: Optional[str] = None
    wave_start: Optional[datetime] = None
    lag_s: Optional[float] = None   # change point time minus wave start


def boots(host_windows: pl.DataFrame) -> pl.DataFrame:
    """One row per (host, boot): its first window, kernel and rollout keys."""
    return (host_windows.group_by(["host_id", "boot_id"])
            .agg(pl.col("window_start").min(), pl.col("kernel").first(),
                 *[pl.col(k).first() for k in ROLLOUT_KEYS]))


def merge_boots(seen: pl.DataFrame, new: pl.DataFrame) -> pl.DataFrame:
    """Boots seen so far plus those of newer windows (a boot in both keeps its first
    window): ``boots`` of the two tables together, whose rows have the windows' shape."""
    return boots(pl.concat([seen, new.select(seen.columns)]))


def changes_from_boots(df: pl.DataFrame) -> pl.DataFrame:
    df = df.sort(["host_id", "window_start"])
    df = df.with_columns(pl.col("kernel").shift(1).over("host_id").alias("kernel_from"))
    return (df.filter(pl.col("kernel_from").is_not_null() & (pl.col("kernel") != pl.col("kernel_from")))
            .rename({"kernel": "kernel_to", "window_start": "at"})
            .select(["host_id", *ROLLOUT_KEYS, "at", "kernel_from", "kernel_to"]))


def kernel_changes(host_windows: pl.DataFrame) -> pl.DataFrame:
    """One row per host whose kernel label changed: host_id, rollout keys, at (the first
    window on the new kernel), kernel_from, kernel_to."""
    # A kernel changes only with a boot: reduce to one row per (host, boot, kernel) first.
    if "boot_id" in host_windows.columns:
        df = boots(host_windows)
    else:
        # without boots: every window (a host that goes A -> B -> A changes twice)
        df = (host_windows.select(["host_id", "window_start", "kernel", *ROLLOUT_KEYS])
              .unique(subset=["host_id", "window_start"], keep="first"))
    return changes_from_boots(df)


def infer_rollouts(host_windows: Optional[pl.DataFrame] = None,
                   wave_gap: timedelta = timedelta(hours=2),
                   changes: Optional[pl.DataFrame] = None) -> List[Rollout]:
    """Rollouts (and rollbacks) seen in the host windows (or in their ``changes``, from
    ``kernel_changes``), each split into waves: a wave ends where no host changed kernel
    for ``wave_gap``."""
    if changes is None:
        changes = kernel_changes(host_windows)
    if changes.is_empty():
        return []
    rollouts: List[Rollout] = []
    for keys, part in changes.sort("at").group_by([*ROLLOUT_KEYS, "kernel_from", "kernel_to"],
                                                  maintain_order=True):
        times = part["at"].to_list()
        waves: List[Wave] = []
        start = prev = times[0]
        count = 1
        for t in times[1:]:
            if t - prev > wave_gap:
                waves.append(Wave(start, prev, count))
                start, count = t, 0
            count += 1
            prev = t
        waves.append(Wave(start, prev, count))
        fleet, role, arch, page_size, k_from, k_to = keys
        rollouts.append(Rollout(fleet, role, arch, int(page_size), k_from, k_to,
                                times[0], times[-1], part["host_id"].n_unique(), waves=waves))
    # A move B -> A after an earlier A -> B in the same fleet slice is a rollback.
    by_key: Dict[Tuple, List[Rollout]] = {}
    for r in rollouts:
        by_key.setdefault(r.key, []).append(r)
    for rs in by_key.values():
        for r in rs:
            r.is_rollback = any(o.kernel_from == r.kernel_to and o.kernel_to == r.kernel_from
                                and o.first_change < r.first_change for o in rs)
    return sorted(rollouts, key=lambda r: r.first_change)


def attribute(at: datetime, rollouts: Sequence[Rollout], key: Tuple,
              before: timedelta = timedelta(minutes=10),
              after: timedelta = timedelta(hours=2), hosts_in_slice: int = 0,
              min_share: float = 0.05) -> Attribution:
    """The rollout wave that coincides with a change point at ``at`` in the series of the
    fleet slice ``key`` (fleet, role, arch, page_size): a wave starting at most ``after``
    before the change point or ``before`` after it (change-point times are uncertain by a
    few windows). The closest wave wins. No wave: a workload shift, not a kernel change.

    A wave that moved fewer than ``min_share`` of the slice's ``hosts_in_slice`` hosts
    cannot shift the slice's median series: a change point during a 1% canary wave is a
    workload change that happens to coincide, and is reported as such."""
    best: Optional[Tuple[float, Rollout, Wave]] = None
    for r in rollouts:
        if r.key != tuple(key):
            continue
        for w in r.waves:
            if hosts_in_slice and w.hosts < min_share * hosts_in_slice:
                continue
            if w.start - before <= at <= w.end + after:
                lag = (at - w.start).total_seconds()
                if best is None or abs(lag) < abs(best[0]):
                    best = (lag, r, w)
    if best is None:
        return Attribution("no_rollout")
    lag, r, w = best
    return Attribution("rollback" if r.is_rollback else "rollout", r.kernel_from, r.kernel_to,
                       w.start, lag)


def kernel_pairs(host_windows: pl.DataFrame, rollouts: Sequence[Rollout], key: Tuple
                 ) -> List[Tuple[str, str]]:
    """(baseline kernel, new kernel) pairs to compare in one fleet slice.

    From the rollouts seen (not rollbacks); when the dataset starts after a rollout
    began, the kernel on most hosts is the baseline and each other kernel a new one.
    """
    pairs = []
    for r in rollouts:
        if r.key == tuple(key) and not r.is_rollback and (r.kernel_from, r.kernel_to) not in pairs:
            pairs.append((r.kernel_from, r.kernel_to))
    seen = {k for p in pairs for k in p}
    counts = (host_windows.group_by("kernel").agg(pl.col("host_id").n_unique().alias("hosts"))
              .sort(["hosts", "kernel"], descending=[True, False]))
    kernels = counts["kernel"].to_list()
    if kernels:
        majority = kernels[0]
        for k in kernels[1:]:
            if k not in seen:
                pairs.append((majority, k))
    return pairs
