"""Simulated host windows for the detector's evaluation and tests.

``host_windows(scenario)`` runs the simulator and folds its delivered records into host
windows of the dataset contract (one row per window x host x boot x fs). It is a
stand-in used to evaluate the detector over many seeds quickly; the end-to-end tests go
through the real path (simulator files -> ``foliowatch pipeline --from-files`` ->
Parquet) instead.
"""

from __future__ import annotations

from typing import Optional

import polars as pl

from foliowatch.schema import TRACEPOINT_COUNTERS

MIB = 1048576.0


def fold_records(flat: pl.DataFrame, window_s: int = 60) -> pl.DataFrame:
    """Host windows from the simulator's flat records: duplicates dropped, rates as sums
    of deltas over sums of intervals, gauges averaged."""
    f = flat.unique(subset=["host_id", "boot_id", "seq"], keep="first")
    alloc = [c for c in f.columns if c.startswith("counters.allocstall_")]
    win = (pl.col("ts") // window_s * window_s * 1_000_000).cast(pl.Int64).cast(pl.Datetime("us", "UTC"))
    iv = pl.col("interval_s").sum()
    return (f.with_columns(win.alias("window_start"),
                           pl.sum_horizontal([pl.col(c) for c in alloc]).alias("_alloc"))
            .group_by("window_start", "fleet", "role", "arch", "page_size",
                      pl.col("mount.fs").alias("fs"), "kernel", "host_id", "boot_id")
            .agg(pl.col("instance_type").first(), pl.col("cpus").first(),
                 pl.col("mem_bytes").first(), pl.len().alias("samples"),
                 pl.col("gauges.uptime_s").max().alias("uptime_s"),
                 pl.col("ts").min().alias("first_ts"), pl.col("ts").max().alias("last_ts"),
                 (pl.col("mount.write_bytes").sum() / iv / MIB).alias("write_mib_s"),
                 (pl.col("counters.compact_stall").sum() / iv).alias("compact_stall_per_s"),
                 (pl.col("_alloc").sum() / iv).alias("allocstall_per_s"),
                 (pl.col("counters.pgscan_direct").sum() / iv).alias("pgscan_direct_per_s"),
                 (pl.col("counters.psi_memory_some_us").sum() / (iv * 1e6)).alias("psi_memory_some_share"),
                 pl.col("gauges.frag_unusable_1m").mean().alias("frag_unusable_1m"),
                 pl.col("probe.mib_s").mean().alias("probe_mib_s"),
                 iv.alias("interval_s_sum"),
                 pl.col("mount.write_bytes").sum().alias("write_bytes_sum"),
                 pl.col("counters.nr_dirtied").sum().alias("nr_dirtied_sum"),
                 # the tracepoint counters' sums (HOST_SUMS), for the mechanism figures
                 *[pl.col(f"counters.{c}").sum().alias(f"{c}_sum")
                   for c in TRACEPOINT_COUNTERS if f"counters.{c}" in f.columns])
            .with_columns(pl.lit(window_s).alias("window_s"))
            .sort("window_start", "host_id"))


def host_windows(scenario, seed: Optional[int] = None, window_s: int = 60) -> pl.DataFrame:
    from foliowatch.simulator import simulate_frame
    parts = [fold_records(chunk, window_s) for chunk in simulate_frame(scenario, seed)]
    df = pl.concat(parts)
    # a window split across delivery chunks: merge its parts (late records)
    keys = ["window_start", "fleet", "role", "arch", "page_size", "fs", "kernel", "host_id", "boot_id"]
    if df.select(keys).is_duplicated().any():
        df = df.sort("interval_s_sum", descending=True).unique(subset=keys, keep="first")
    return df.sort("window_start", "host_id")

