"""Which memory states are comparable: the fragmentation bins that enough baseline hosts
occupy. Windows outside them (a canary minutes after its reboot) are left out of a
comparison instead of being adjusted by extrapolation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import polars as pl

# Memory states compared: fragmentation in bins of this width; a bin is comparable when
# at least this many distinct baseline hosts were seen in it (see ``comparable_states``).
FRAG_BIN = 0.05
MIN_STATE_HOSTS = 10


def frag_bin() -> pl.Expr:
    """The window's memory-state bin: its fragmentation in ``FRAG_BIN`` steps."""
    return (pl.col("frag") / FRAG_BIN).floor().cast(pl.Int64)


@dataclass(frozen=True)
class StateSupport:
    """The fragmentation bins the baseline hosts occupy (on ``MIN_STATE_HOSTS`` hosts)."""
    bins: Tuple[int, ...]

    def expr(self) -> pl.Expr:
        """True for windows in a supported bin, or without the gauge (nothing to match)."""
        return (pl.col("frag").is_null() | ~pl.col("frag").is_finite()
                | frag_bin().is_in(list(self.bins)))


def state_support(x: pl.DataFrame, base_kernel: str, min_hosts: int = MIN_STATE_HOSTS
                  ) -> Optional[StateSupport]:
    """Bins of fragmentation where at least ``min_hosts`` baseline hosts have windows
    (None: no fragmentation gauge, no gate)."""
    if "frag" not in x.columns:
        return None
    b = (x.filter((pl.col("kernel") == base_kernel) & pl.col("frag").is_finite())
         .group_by(frag_bin().alias("bin"))
         .agg(pl.col("host_id").n_unique().alias("hosts")))
    if b.is_empty():
        return None
    return StateSupport(tuple(sorted(b.filter(pl.col("hosts") >= min_hosts)["bin"].to_list())))


def comparable_states(x: pl.DataFrame, support: Optional[StateSupport]) -> pl.DataFrame:
    """Keep the windows whose memory state the baseline hosts occupy.

    A canary minutes after its reboot has unfragmented memory that few or no baseline
    hosts share: a model of the "reboot bonus" is extrapolation there (or rests on a
    handful of maintenance reboots), and a few percent of error in it reads as a
    regression or hides one. So windows of either kernel in a fragmentation bin that
    fewer than ``MIN_STATE_HOSTS`` baseline hosts occupy are left out: a canary enters
    the comparison once its memory is in a state the fleet is seen in, which for a
    long-running fleet is also when a fragmentation-gated regression shows."""
    if support is None or "frag" not in x.columns:
        return x
    return x.filter(support.expr())
