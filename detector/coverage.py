"""Memory-state coverage of a comparison, for the verdict: has the new kernel been seen
at the fragmentation the fleet runs at? A fragmentation-gated regression is invisible on
fresh canaries, so "no regression seen" means little until it has."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import polars as pl

from .frames import STATE_METRIC


@dataclass
class MemoryCoverage:
    frag_base_median: Optional[float] = None     # the fleet's (baseline hosts') median
    new_hosts_at_fleet_frag: int = 0             # new-kernel hosts that reached it
    new_max_uptime_h: float = 0.0                # the longest-running new-kernel host
    uptime_h_at_fleet_frag: Optional[float] = None   # uptime at which hosts reach it


def memory_coverage(df: pl.DataFrame, cov: pl.DataFrame, new_kernel: str) -> MemoryCoverage:
    """From the comparison's host windows ``df`` and host covariates ``cov`` (with the
    hosts' mean fragmentation ``frag``); empty when either kernel has no host or the
    dataset has no fragmentation gauge."""
    out = MemoryCoverage()
    if "frag" not in cov.columns:
        return out
    new = cov.filter(pl.col("kernel") == new_kernel)
    base = cov.filter(pl.col("kernel") != new_kernel)
    if base.is_empty() or new.is_empty():
        return out
    fleet_frag = base["frag"].median()
    if fleet_frag is None:
        return out
    out.frag_base_median = float(fleet_frag)
    # a host counts as "at fleet fragmentation" when its own windows reach the fleet median
    hw = (df.filter(pl.col("kernel") == new_kernel).group_by("host_id")
          .agg(pl.col(STATE_METRIC).max().alias("fmax"), pl.col("uptime_s").max().alias("up")))
    out.new_hosts_at_fleet_frag = int(hw.filter(pl.col("fmax") >= fleet_frag).height)
    out.new_max_uptime_h = float((hw["up"].max() or 0) / 3600.0)
    # uptime at which hosts reach the fleet's median fragmentation, from hosts seen
    # crossing it (rebooted ones, either kernel): the frag build-up does not depend on
    # how long the long-running hosts have been up
    boot = "boot_id" if "boot_id" in df.columns else "host_id"
    seen = (df.select("host_id", boot, (pl.col("uptime_s") / 3600.0).alias("h"),
                      pl.col(STATE_METRIC).alias("f"))
            .drop_nulls().group_by("host_id", boot)
            .agg(pl.col("h").min().alias("first_h"),
                 pl.col("h").filter(pl.col("f") >= fleet_frag).min().alias("cross_h"))
            .filter((pl.col("first_h") < 2.0) & pl.col("cross_h").is_not_null()))
    if seen.height >= 3:
        out.uptime_h_at_fleet_frag = float(seen["cross_h"].median())
    return out
