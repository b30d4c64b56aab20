"""What, besides the kernel, separates a comparison's new-kernel hosts from its baseline
hosts so that a cross-sectional test cannot tell the two apart: named, so that the
verdict says "not enough evidence" and why, instead of a suspicion.

A comparison between hosts assumes the baseline hosts are a sample of the group that the
rollout has not reached yet. Late in a rollout they are not: the last few hosts are the
ones the rollout skipped (pinned tenants, special hardware, hosts that were down) and,
not having rebooted, they have run for weeks while the new kernel's hosts have run for
hours. A host's own before/after (``within_host``) still compares like with like.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

import polars as pl


@dataclass(frozen=True)
class ConfoundPolicy:
    # With fewer baseline hosts than this, and fewer than the new-kernel hosts, neither
    # the covariate adjustment (its ridge needs 20 baseline hosts:
    # ``CovariateAdjuster.min_hosts``) nor the memory-state model has enough hosts to
    # learn what makes hosts differ: the baseline cannot stand in for "these hosts, had
    # they kept the old kernel".
    min_base_hosts: int = 20
    # Once the baseline hosts are fewer than this share of the new-kernel hosts, they
    # are what the rollout left behind, not a sample of the group.
    remnant_ratio: float = 0.5
    # Uptime overlap: at least this many baseline hosts must have run no longer than
    # this multiple of the longest-running new-kernel host; with fewer, the two kernels
    # are separated by uptime (named together with the remnant confound).
    uptime_overlap_hosts: int = 3
    uptime_overlap_factor: float = 2.0


def find_confounds(cov: pl.DataFrame, new_kernel: str,
                   policy: Optional[ConfoundPolicy] = None) -> List[str]:
    """One line per confound from the comparison's host covariates ``cov`` (one row per
    host and kernel, with ``uptime_s``-derived ``log_uptime_h``); empty when the baseline
    hosts stand in for the new-kernel hosts."""
    policy = policy or ConfoundPolicy()
    is_new = pl.col("kernel") == new_kernel
    new_hosts = cov.filter(is_new)["host_id"].implode()
    n_new = cov.filter(is_new).height
    if n_new == 0:
        return []
    # baseline hosts that are not the new-kernel hosts before their reboot
    is_new = is_new | pl.col("host_id").is_in(new_hosts)
    n_base = cov.filter(~is_new).height
    out = []
    # a small group's baseline at the canary stage is the group, not a remnant
    remnant = (n_base < policy.remnant_ratio * n_new
               or (n_base < policy.min_base_hosts and n_base < n_new))
    if remnant:
        up = ""
        if "log_uptime_h" in cov.columns:
            hours = cov.select(pl.col("log_uptime_h").exp() - 1.0, "kernel", "host_id")
            ub = hours.filter(~is_new)["log_uptime_h"].median()
            un = hours.filter(pl.col("kernel") == new_kernel)["log_uptime_h"].median()
            un_max = hours.filter(pl.col("kernel") == new_kernel)["log_uptime_h"].max()
            near = hours.filter(~is_new & (pl.col("log_uptime_h")
                                           <= policy.uptime_overlap_factor * (un_max or 0.0))).height
            if ub is not None and un is not None:
                up = (f", median uptime {ub / 24:.1f} d against {un:.1f} h on the new kernel"
                      + ("" if near >= policy.uptime_overlap_hosts
                         else f" ({near} baseline hosts of similar uptime)"))
        out.append(f"only {n_base} baseline hosts remain beside {n_new} new-kernel hosts "
                   f"(the hosts the rollout has not reached{up})")
    return out
