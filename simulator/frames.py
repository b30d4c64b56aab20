"""Simulated records as polars frames, and their conversion to the wire.

``simulate_frame`` yields chunks in delivery order: each chunk holds the records whose
delivery time (``emit_ts``) falls in its span, sorted by it. Late records therefore
arrive in a later chunk than their ``ts``; duplicates arrive twice; lost records never
arrive (their ``seq`` is skipped).

The flat form (one row per delivered record) has these columns:

=========================  ==========================================================
``emit_ts``                float: when the record reaches Kafka (simulated Unix s);
                           not on the wire, used for ordering and ``--realtime``
``host_id`` ``boot_id``    str: identity
``seq``                    int
``ts`` ``interval_s``      float: the agent's (skewed) clock, and the interval the
                           deltas cover (a multiple of the nominal one after an
                           agent outage)
``fleet`` ``role`` ``arch`` ``kernel`` ``instance_type``          str labels
``page_size`` ``cpus`` ``mem_bytes``                              int labels
``counters.<name>``        int deltas, one column per name in ``model.COUNTERS``
``gauges.<name>``          float, one column per name in ``model.GAUGES``
``mount.path`` ``mount.fs`` ``mount.device``                      the data mount
``mount.write_bytes`` ``mount.write_ios``                         int deltas
``mount.xfs_write_bytes``  int delta, null on non-XFS mounts (absent on the wire)
``probe.<field>``          the write probe (``schema.PROBE_FIELDS``); null when no probe ran
=========================  ==========================================================

Records carry ``settings`` only when a probe ran (see ``_wire_json_expr``).

``to_wire_json`` turns a chunk into wire schema v1 JSON (one string per row; vectorised
in polars), ``to_wire_frame`` into the nested form that a JSON reader would produce
(structs ``labels``/``counters``/``gauges``/``probe``, a list ``mounts``), which is what
the Parquet files hold.
"""

from __future__ import annotations

from typing import Dict, Iterator, List, Optional

import numpy as np
import polars as pl

from .fleet import ARCH_PAGE, DEVICES, FS_NAMES, MOUNTS, Plan, build_plan
from .model import COUNTERS, GAUGES, PROBE_BYTES, PROBE_CHUNK, Stepper
from .scenario import Scenario

AGENT_VERSION = "sim-0.1.0"
SETTINGS = {"thp_enabled": "madvise", "thp_defrag": "madvise"}
LABEL_COLUMNS = ("fleet", "role", "arch", "kernel", "page_size", "cpus", "mem_bytes",
                 "instance_type")
COUNTER_COLUMNS = tuple(f"counters.{c}" for c in COUNTERS)
GAUGE_COLUMNS = tuple(f"gauges.{g}" for g in GAUGES)
PROBE_COLUMNS = ("probe.bytes", "probe.seconds", "probe.chunk_bytes", "probe.mib_s",
                 "probe.compact_stall", "probe.allocstall")
ROWS_PER_CHUNK = 250_000

_INT_PER_STEP = ("seq",) + COUNTERS + ("write_bytes", "write_ios")
_FLOAT_PER_STEP = ("ts", "emit_ts", "interval_s") + GAUGES


class _Tables:
    """String tables for the host attributes, gathered by index per chunk."""

    def __init__(self, plan: Plan):
        sc = plan.scenario
        self.host_id = pl.Series("host_id", plan.host_id)
        self.fleet = pl.Series("fleet", [f.name for f in sc.fleets])
        self.role = pl.Series("role", [f.role for f in sc.fleets])
        self.mount = pl.Series("mount.path", [MOUNTS[f.workload] for f in sc.fleets])
        self.arch = pl.Series("arch", [a for a, _ in ARCH_PAGE])
        self.page = np.array([p for _, p in ARCH_PAGE], dtype=np.int64)
        self.fs = pl.Series("mount.fs", list(FS_NAMES))
        self.device = pl.Series("mount.device", list(DEVICES))
        self.itype = pl.Series("instance_type", plan.itypes)
        self.release = pl.Series("kernel", plan.release_names)


def _gather(series: pl.Series, idx: np.ndarray) -> pl.Series:
    return series.gather(pl.Series(idx, dtype=pl.UInt32)) if len(idx) else series.clear()


def simulate_frame(scenario: Scenario, seed: Optional[int] = None, *,
                   rows_per_chunk: int = ROWS_PER_CHUNK) -> Iterator[pl.DataFrame]:
    """Chunks of delivered records (flat form, see the module doc), in delivery order.

    Deterministic: the same scenario and seed give the same frames."""
    seed = scenario.seed if seed is None else int(seed)
    plan = build_plan(scenario, seed)
    stepper = Stepper(plan)
    tables = _Tables(plan)
    n = plan.n
    steps = scenario.steps
    dtv = scenario.interval_s
    k = max(1, rows_per_chunk // max(n, 1))
    pend_hosts: Optional[np.ndarray] = None
    pend_cols: Dict[str, np.ndarray] = {}
    for first in range(0, steps, k):
        last = min(steps, first + k)
        # records held back from the previous chunk come first
        parts: Dict[str, List[np.ndarray]] = {name: [a] for name, a in pend_cols.items()}
        rows_host: List[np.ndarray] = [pend_hosts] if pend_hosts is not None else []
        for i in range(first, last):
            out = stepper.step(i)
            u = out["u"]
            keep = out["up"] & (u >= stepper.p_lost)
            idx = np.nonzero(keep)[0]
            emit = out["emit_ts"].copy()
            band = stepper.p_lost + stepper.p_late
            late = (u >= stepper.p_lost) & (u < band)
            if late.any():
                v = (u[late] - stepper.p_lost) / stepper.p_late
                emit[late] += stepper.late_min + (stepper.late_max - stepper.late_min) * v
            out["emit_ts"] = emit
            dup = keep & (u >= band) & (u < band + stepper.p_dup)
            dup_idx = np.nonzero(dup)[0]
            probe_full = {}
            if "probe_idx" in out:
                for name in ("probe_mib_s", "probe_seconds"):
                    a = np.full(n, np.nan)
                    a[out["probe_idx"]] = out[name]
                    probe_full[name] = a
                for name in ("probe_compact_stall", "probe_allocstall"):
                    a = np.full(n, -1, dtype=np.int64)
                    a[out["probe_idx"]] = out[name]
                    probe_full[name] = a
            for sel, is_retry in ((idx, False), (dup_idx, True)):
                if not len(sel):
                    continue
                rows_host.append(sel)
                for name in _INT_PER_STEP + _FLOAT_PER_STEP + ("boot_idx", "release_idx"):
                    col = out[name][sel]
                    if name == "emit_ts" and is_retry:
                        # the retry arrives 1-30 s after the first copy
                        col = col + 1.0 + 29.0 * ((u[sel] * 977.0) % 1.0)
                    parts.setdefault(name, []).append(col)
                for name, a in probe_full.items():
                    parts.setdefault(name, []).append(a[sel])
        if not rows_host:
            continue
        hosts = np.concatenate(rows_host)
        cols = {name: np.concatenate(v) for name, v in parts.items()}
        # Delivery order, decided on the arrays before any frame is built (a stable sort
        # on the millisecond times the frame shows, so ties keep a fixed order); records
        # due after this chunk's span wait for the next one.
        cols["emit_ts"] = np.round(cols["emit_ts"], 3)
        order = np.argsort(cols["emit_ts"], kind="stable")
        cut = len(order)
        if last < steps:
            horizon = scenario.start_ts + last * dtv
            cut = int(np.searchsorted(cols["emit_ts"][order], horizon, side="left"))
        ready, rest = order[:cut], order[cut:]
        if len(rest):
            pend_hosts, pend_cols = hosts[rest], {k: v[rest] for k, v in cols.items()}
        else:
            pend_hosts, pend_cols = None, {}
        if len(ready):
            yield _build_frame(plan, tables, hosts[ready], {k: v[ready] for k, v in cols.items()},
                               dtv, stepper.boot_ids)


def _build_frame(plan: Plan, t: _Tables, hosts: np.ndarray, cols: Dict[str, np.ndarray],
                 dtv: float, boot_ids: List[str]) -> pl.DataFrame:
    fleet_idx = plan.fleet_idx[hosts]
    ap = plan.arch_page[hosts]
    fs_idx = plan.fs_idx[hosts]
    boot_series = pl.Series("boot_id", boot_ids)
    data = {
        "emit_ts": cols["emit_ts"],
        "host_id": _gather(t.host_id, hosts),
        "boot_id": _gather(boot_series, cols["boot_idx"]),
        "seq": cols["seq"],
        "ts": np.round(cols["ts"], 3),
        "interval_s": cols["interval_s"],
        "fleet": _gather(t.fleet, fleet_idx),
        "role": _gather(t.role, fleet_idx),
        "arch": _gather(t.arch, ap),
        "kernel": _gather(t.release, cols["release_idx"]),
        "page_size": t.page[ap],
        "cpus": plan.cpus[hosts],
        "mem_bytes": plan.mem_bytes[hosts],
        "instance_type": _gather(t.itype, plan.itype_idx[hosts]),
    }
    for c in COUNTERS:
        data[f"counters.{c}"] = cols[c]
    for g in GAUGES:
        data[f"gauges.{g}"] = cols[g]
    data["mount.path"] = _gather(t.mount, fleet_idx)
    data["mount.fs"] = _gather(t.fs, fs_idx)
    data["mount.device"] = _gather(t.device, plan.device_idx[hosts])
    data["mount.write_bytes"] = cols["write_bytes"]
    data["mount.write_ios"] = cols["write_ios"]
    df = pl.DataFrame(data)
    # XFS's own write counter (the xpc line) sees the bytes written through XFS; block
    # layer writes include metadata and journal, so they run a little higher.
    xfs_w = pl.when(pl.col("mount.fs") == "xfs").then(
        (pl.col("mount.write_bytes").cast(pl.Float64) * 0.985).round(0).cast(pl.Int64))
    exprs = [xfs_w.alias("mount.xfs_write_bytes")]
    if "probe_mib_s" in cols:
        mib = pl.Series(cols["probe_mib_s"])
        has = ~np.isnan(cols["probe_mib_s"])
        df = df.with_columns(
            pl.Series("_has_probe", has),
            pl.Series("probe.mib_s", mib).fill_nan(None),
            pl.Series("probe.seconds", cols["probe_seconds"]).fill_nan(None),
            pl.Series("probe.compact_stall", cols["probe_compact_stall"]),
            pl.Series("probe.allocstall", cols["probe_allocstall"]),
        )
        has_p = pl.col("_has_probe")
        exprs += [
            pl.when(has_p).then(pl.lit(PROBE_BYTES, pl.Int64)).alias("probe.bytes"),
            pl.when(has_p).then(pl.lit(PROBE_CHUNK, pl.Int64)).alias("probe.chunk_bytes"),
            pl.when(has_p).then(pl.col("probe.compact_stall")).alias("probe.compact_stall"),
            pl.when(has_p).then(pl.col("probe.allocstall")).alias("probe.allocstall"),
        ]
        df = df.with_columns(exprs).drop("_has_probe")
    else:
        df = df.with_columns(exprs + [pl.lit(None, pl.Int64).alias("probe.bytes"),
                                      pl.lit(None, pl.Float64).alias("probe.seconds"),
                                      pl.lit(None, pl.Int64).alias("probe.chunk_bytes"),
                                      pl.lit(None, pl.Float64).alias("probe.mib_s"),
                                      pl.lit(None, pl.Int64).alias("probe.compact_stall"),
                                      pl.lit(None, pl.Int64).alias("probe.allocstall")])
    return df.select(FLAT_COLUMNS)


FLAT_COLUMNS = (("emit_ts", "host_id", "boot_id", "seq", "ts", "interval_s") + LABEL_COLUMNS
                + COUNTER_COLUMNS + GAUGE_COLUMNS
                + ("mount.path", "mount.fs", "mount.device", "mount.write_bytes",
                   "mount.write_ios", "mount.xfs_write_bytes") + PROBE_COLUMNS)


# ------------------------------------------------------------------ wire conversion

def _labels_expr() -> pl.Expr:
    return pl.struct([pl.col(c) for c in LABEL_COLUMNS]).alias("labels")


def _mount_expr(with_xfs: bool) -> pl.Expr:
    counters = [pl.col("mount.write_bytes").alias("write_bytes"),
                pl.col("mount.write_ios").alias("write_ios")]
    if with_xfs:
        counters.append(pl.col("mount.xfs_write_bytes").alias("xfs_write_bytes"))
    return pl.struct(pl.col("mount.path").alias("mount"), pl.col("mount.fs").alias("fs"),
                     pl.col("mount.device").alias("device"),
                     pl.struct(counters).alias("counters"))


def _probe_expr() -> pl.Expr:
    return pl.struct([pl.col(c).alias(c.split(".", 1)[1]) for c in PROBE_COLUMNS])


def _sub_object(cols) -> pl.Expr:
    return pl.struct([pl.col(c).alias(c.split(".", 1)[1]) for c in cols]).struct.json_encode()


_SETTINGS_JSON = "{" + ",".join(f'"{k}":"{v}"' for k, v in SETTINGS.items()) + "}"


def _wire_json_expr() -> pl.Expr:
    # Sub-objects through struct.json_encode (vectorised in Rust), joined with as few
    # literal pieces as possible (each literal is materialised per row). Absent fields
    # (xfs_write_bytes on ext4, the probe) are left out, never written as null. Strings
    # need no escaping: every string column comes from the scenario's restricted
    # alphabets (checked in scenario.py) or from fixed tables. The settings ride along
    # with the probe, whose result they explain (THP settings decide folio sizes).
    has_probe = pl.col("probe.bytes").is_not_null()
    return pl.concat_str([
        pl.lit('{"schema":1,"host_id":"'), pl.col("host_id"), pl.lit('","boot_id":"'),
        pl.col("boot_id"), pl.lit('","seq":'), pl.col("seq").cast(pl.String),
        pl.lit(',"ts":'), pl.col("ts").cast(pl.String),
        pl.lit(',"interval_s":'), pl.col("interval_s").cast(pl.String),
        pl.lit(',"labels":'), _labels_expr().struct.json_encode(),
        pl.lit(',"counters":'), _sub_object(COUNTER_COLUMNS),
        pl.lit(',"gauges":'), _sub_object(GAUGE_COLUMNS),
        pl.lit(',"mounts":['),
        pl.lit('{"mount":"'), pl.col("mount.path"), pl.lit('","fs":"'), pl.col("mount.fs"),
        pl.lit('","device":"'), pl.col("mount.device"),
        pl.lit('","counters":{"write_bytes":'), pl.col("mount.write_bytes").cast(pl.String),
        pl.lit(',"write_ios":'), pl.col("mount.write_ios").cast(pl.String),
        pl.when(pl.col("mount.xfs_write_bytes").is_not_null())
        .then(pl.concat_str([pl.lit(',"xfs_write_bytes":'),
                             pl.col("mount.xfs_write_bytes").cast(pl.String)]))
        .otherwise(pl.lit("")),
        pl.lit("}}]"),
        pl.when(has_probe).then(pl.concat_str([
            pl.lit(',"probe":'), _probe_expr().struct.json_encode(),
            pl.lit(',"settings":' + _SETTINGS_JSON)])).otherwise(pl.lit("")),
        pl.lit(f',"agent":"{AGENT_VERSION}"}}'),
    ]).alias("json")


def to_wire_json(frame: pl.DataFrame) -> pl.Series:
    """Wire schema v1 JSON, one string per row of a flat chunk (vectorised)."""
    return frame.select(_wire_json_expr()).to_series()


def to_wire_frame(frame: pl.DataFrame) -> pl.DataFrame:
    """The nested form of wire schema v1 (what the Parquet files hold): a null inside
    ``counters``/``mounts[].counters`` or a null ``probe`` means absent on the wire."""
    return frame.select(
        pl.lit(1, pl.Int64).alias("schema"), "host_id", "boot_id", "seq", "ts", "interval_s",
        _labels_expr(),
        pl.struct([pl.col(c).alias(c.split(".", 1)[1]) for c in COUNTER_COLUMNS]).alias("counters"),
        pl.struct([pl.col(c).alias(c.split(".", 1)[1]) for c in GAUGE_COLUMNS]).alias("gauges"),
        pl.concat_list([_mount_expr(True)]).alias("mounts"),
        pl.when(pl.col("probe.bytes").is_not_null())
        .then(pl.struct([pl.lit(v).alias(k) for k, v in SETTINGS.items()])).alias("settings"),
        pl.when(pl.col("probe.bytes").is_not_null()).then(_probe_expr()).alias("probe"),
        pl.lit(AGENT_VERSION).alias("agent"),
    )
