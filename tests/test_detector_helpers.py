"""Synthetic host windows in the dataset contract's shape, with known answers, for the
detector's unit tests (the simulator's scenarios are used end to end elsewhere)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Optional

import numpy as np
import polars as pl

T0 = datetime(2026, 11, 2, tzinfo=timezone.utc)


def fleet_frame(n_hosts: int = 200, minutes: int = 240, *, fleet: str = "db", role: str = "primary",
                arch: str = "arm64", page_size: int = 4096, fs: str = "xfs",
                base_kernel: str = "6.12.0", new_kernel: str = "6.18.0",
                canary_hosts: int = 10, reboot_minute: int = 60,
                write_factor: float = 1.0, stall_factor: float = 1.0,
                rollback_minute: Optional[int] = None,
                reboot_bonus: float = 0.15, new_instance_type: Optional[str] = None,
                new_hw_speedup: float = 1.0, load_shift: Optional[tuple] = None,
                host_sd: float = 0.10, window_sd: float = 0.08,
                seed: int = 0, host_prefix: str = "", fresh_share: float = 0.1) -> pl.DataFrame:
    """One group of hosts; ``canary_hosts`` reboot onto ``new_kernel`` at
    ``reboot_minute`` (staggered over 5 minutes) and, when ``rollback_minute`` is set,
    back to the baseline then. The new kernel multiplies write throughput by
    ``write_factor`` and compaction stalls by ``stall_factor``. A freshly rebooted host
    writes ``reboot_bonus`` faster (unfragmented memory). ``load_shift`` = (minute,
    factor) changes every host's load at that minute."""
    rng = np.random.default_rng(seed)
    hosts = [f"{host_prefix}{fleet}-{arch}-{fs}-{i:04d}" for i in range(n_hosts)]
    host_level = rng.normal(0, host_sd, n_hosts)
    uptime0 = rng.uniform(2, 40, n_hosts) * 86400.0
    # a tenth of the fleet rebooted for maintenance within the last few hours: their
    # fragmentation is still building up (what the memory-state model learns from)
    fresh = rng.random(n_hosts) < fresh_share
    uptime0 = np.where(fresh, rng.uniform(0, 6, n_hosts) * 3600.0, uptime0)
    canary = np.zeros(n_hosts, dtype=bool)
    canary[rng.choice(n_hosts, canary_hosts, replace=False)] = True
    reboot_at = np.where(canary, reboot_minute + rng.integers(0, 5, n_hosts), 10**9)
    itype = np.where(rng.random(n_hosts) < 0.5, "m7g.8xlarge", "m7g.16xlarge")
    if new_instance_type:
        itype = np.where(canary, new_instance_type, itype)
    cpus = np.where(itype == "m7g.16xlarge", 64, np.where(itype == "m7g.8xlarge", 32, 96))
    # fragmentation builds after a boot towards a host's own ceiling, with a host's own
    # time constant (a database fleet: 0.5-2 h), as in DESIGN and the simulator
    frag_ceiling = rng.uniform(0.55, 0.9, n_hosts)
    frag_tau_s = rng.uniform(0.5, 2.0, n_hosts) * 3600.0
    rows = []
    for m in range(minutes):
        t = T0 + timedelta(minutes=m)
        load = 1.0 + 0.2 * np.sin(2 * np.pi * m / 1440.0)
        if load_shift and m >= load_shift[0]:
            load *= load_shift[1]
        on_new = (m >= reboot_at) & ((rollback_minute is None) | (m < (rollback_minute or 0)))
        rebooted = m >= reboot_at
        since = np.where(rebooted, (m - reboot_at) * 60.0, uptime0 + m * 60.0)
        if rollback_minute is not None:
            since = np.where(canary & (m >= rollback_minute), (m - rollback_minute) * 60.0, since)
        frag = np.clip(0.05 + (frag_ceiling - 0.05) * (1 - np.exp(-since / frag_tau_s)), 0, 1)
        bonus = 1 + reboot_bonus * (1 - (frag - 0.05) / 0.85)
        hw = np.where(canary & (new_instance_type is not None), new_hw_speedup, 1.0)
        kfac = np.where(on_new, write_factor, 1.0)
        write = (200.0 * load * np.exp(host_level) * bonus * hw * kfac
                 * np.exp(rng.normal(0, window_sd, n_hosts)))
        stall_rate = 0.5 * load * (0.2 + frag) * np.where(on_new, stall_factor, 1.0)
        stalls = rng.poisson(stall_rate * 60.0) / 60.0
        kern = np.where(on_new, new_kernel, base_kernel)
        boot = np.where(rebooted, np.where((rollback_minute is not None) & (m >= (rollback_minute or 0)) & canary, "b3", "b2"), "b1")
        rows.append(pl.DataFrame({
            "window_start": [t] * n_hosts, "window_s": [60] * n_hosts,
            "fleet": [fleet] * n_hosts, "role": [role] * n_hosts, "arch": [arch] * n_hosts,
            "page_size": [page_size] * n_hosts, "fs": [fs] * n_hosts, "kernel": kern,
            "host_id": hosts, "boot_id": [f"{h}-{b}" for h, b in zip(hosts, boot)],
            "instance_type": itype, "cpus": cpus, "mem_bytes": cpus * 4 * 2**30,
            "samples": [6] * n_hosts, "uptime_s": since,
            "write_mib_s": write, "compact_stall_per_s": stalls,
            "allocstall_per_s": stalls * 0.5, "pgscan_direct_per_s": stalls * 300.0,
            "psi_memory_some_share": np.clip(stalls * 0.002, 0, 1),
            "frag_unusable_1m": frag, "probe_mib_s": [None] * n_hosts,
            "nr_dirtied_sum": write * 60 * 256, "interval_s_sum": [60.0] * n_hosts,
        }, schema_overrides={"probe_mib_s": pl.Float64}))
    return pl.concat(rows).with_columns(pl.col("window_start").dt.cast_time_unit("us"))


def test_fleet_frame_has_the_contract_columns():
    from foliowatch.dataset import COHORT_KEYS, WINDOW_COLUMNS
    from foliowatch.schema import KEY_METRICS
    df = fleet_frame(n_hosts=20, minutes=10, canary_hosts=2, reboot_minute=3)
    for c in (*WINDOW_COLUMNS, *COHORT_KEYS, "host_id", "uptime_s", *KEY_METRICS):
        assert c in df.columns
    assert df.height == 200


def with_probe(df: pl.DataFrame, probe_factor: float, frag_penalty: float = 0.15,
               seed: int = 1, new_kernel: str = "6.18.0") -> pl.DataFrame:
    """The write probe every 30 minutes per host (each host at its own minute): a host's
    own speed, times (1 - frag_penalty x fragmentation) (a fresh host writes faster:
    the reboot bonus), times ``probe_factor`` on the new kernel, with 5 % noise."""
    rng = np.random.default_rng(seed)
    hosts = df["host_id"].unique().sort()
    speed = pl.DataFrame({"host_id": hosts, "speed": 900.0 * np.exp(rng.normal(0, 0.2, hosts.len())),
                          "offset": np.arange(hosts.len()) % 30})
    minute = ((pl.col("window_start") - T0).dt.total_minutes()).cast(pl.Int64)
    noise = pl.Series("noise", np.exp(rng.normal(0, 0.05, df.height)))
    return (df.join(speed, on="host_id").with_columns(noise)
            .with_columns(pl.when((minute + pl.col("offset")) % 30 == 0)
                          .then(pl.col("speed") * (1 - frag_penalty * pl.col("frag_unusable_1m"))
                                * pl.when(pl.col("kernel") == new_kernel).then(probe_factor).otherwise(1.0)
                                * pl.col("noise"))
                          .otherwise(None).alias("probe_mib_s"))
            .drop("speed", "offset", "noise"))
