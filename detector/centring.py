"""Host windows of one metric on a log scale, centred on the baseline hosts' median of
the same window: load, time of day and traffic shifts that hit both kernels cancel.
Every later step of a cohort comparison (memory state, host statistics) works on this
centred value ``z``."""

from __future__ import annotations

import polars as pl

from foliowatch.polars_engine import IN_MEMORY

from .frames import LOG_FLOOR, STATE_METRIC

# A window's centre needs this many baseline hosts; with fewer the median is noise.
MIN_CENTRE_HOSTS = 3


def centred_windows(df: pl.DataFrame, metric: str, base_kernel: str) -> pl.DataFrame:
    """``window_start, host_id, kernel, y`` (log metric), ``frag`` (when the dataset has
    the memory-state gauge), ``centre`` and ``z = y - centre``; windows with fewer than
    ``MIN_CENTRE_HOSTS`` baseline hosts are dropped."""
    floor = LOG_FLOOR[metric]
    cols = ["window_start", "host_id", "kernel",
            (pl.col(metric).clip(lower_bound=0) + floor).log().alias("y")]
    if STATE_METRIC in df.columns:
        cols.append(pl.col(STATE_METRIC).alias("frag"))
    # one query: the filter reads only the columns selected, not every column of df
    x = df.lazy().filter(pl.col(metric).is_not_null() & pl.col(metric).is_finite()).select(cols)
    centre = (x.filter(pl.col("kernel") == base_kernel).group_by("window_start")
              .agg(pl.col("y").median().alias("centre"), pl.len().alias("nb"))
              .filter(pl.col("nb") >= MIN_CENTRE_HOSTS))
    # in ``df``'s row order: a hash join's own order changes from one run to the next,
    # and the memory-state model samples rows (``MemoryStateModel.max_rows``), so the
    # same data gave another model, and other effects, on every run
    return (x.join(centre, on="window_start", how="inner", maintain_order="left")
            .with_columns((pl.col("y") - pl.col("centre")).alias("z"))
            .collect(engine=IN_MEMORY))
