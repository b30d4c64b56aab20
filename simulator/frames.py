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

Records carry ``settings`` only when a probe ran (see ``wire_spec``).

``to_wire_json`` turns a chunk into wire JSON (one string per row; vectorised in polars,
byte for byte what ``schema.encode`` writes), ``to_wire_frame`` into the nested form that
a JSON reader would produce (structs ``labels``/``counters``/``gauges``/``probe``, a list
``mounts``), which is what the Parquet files hold. Both walk the field table
``schema.FIELDS``; ``wire_spec`` says which columns feed which member.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Dict, Iterator, List, NamedTuple, Optional

import numpy as np
import polars as pl

from foliowatch import schema

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
PROBE_PRESENT = "probe.bytes"   # null on the rows of records without a probe
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
# The wire form is derived from the field table (schema.FIELDS): members in table order,
# each one's value from the spec below. A spec is a leaf (``Col``: a column of the flat
# form; ``Lit``: a constant), a dict (an object, or a map's entries in order: member ->
# spec), a list (a list of objects), or ``Present(column, spec)`` for a member present
# only on the rows where that column is not null. A member the table has and the spec
# lacks is absent. The polars encodings below and the compiled one
# (``native_encode``) are both read from this one spec.


class Col(NamedTuple):
    """The value of a column of the flat form."""
    name: str


class Lit(NamedTuple):
    """A constant (an int, a float or a string)."""
    value: object


class Present:
    """A member present on the rows where ``column`` is not null."""

    def __init__(self, column: str, spec):
        self.column, self.spec = column, spec


def _expr(leaf) -> pl.Expr:
    if isinstance(leaf, Col):
        return pl.col(leaf.name)
    return pl.lit(leaf.value, pl.Int64) if isinstance(leaf.value, int) else pl.lit(leaf.value)


def _present(p: Present) -> pl.Expr:
    return pl.col(p.column).is_not_null()


def wire_spec() -> Dict[str, object]:
    """Which column (or constant) feeds each member of the wire record."""
    mount_counters = {"write_bytes": Col("mount.write_bytes"),
                      "write_ios": Col("mount.write_ios"),
                      "xfs_write_bytes": Present("mount.xfs_write_bytes",
                                                 Col("mount.xfs_write_bytes"))}
    return {
        "schema": Lit(schema.SCHEMA_VERSION),
        **{c: Col(c) for c in ("host_id", "boot_id", "seq", "ts", "interval_s")},
        "labels": {c: Col(c) for c in LABEL_COLUMNS},
        "counters": {c.split(".", 1)[1]: Col(c) for c in COUNTER_COLUMNS},
        "gauges": {c.split(".", 1)[1]: Col(c) for c in GAUGE_COLUMNS},
        "mounts": [{"mount": Col("mount.path"), "fs": Col("mount.fs"),
                    "device": Col("mount.device"), "counters": mount_counters}],
        # the settings ride along with the probe, whose result they explain (THP
        # settings decide folio sizes)
        "settings": Present(PROBE_PRESENT, {k: Lit(v) for k, v in SETTINGS.items()}),
        "probe": Present(PROBE_PRESENT, {c.split(".", 1)[1]: Col(c) for c in PROBE_COLUMNS}),
        "agent": Lit(AGENT_VERSION),
    }


def _object_json(members, spec: Dict[str, object]) -> List[object]:
    """JSON text pieces (str literals and String expressions) of an object."""
    assert set(spec) <= {m.name for m in members}, sorted(set(spec))
    pieces: List[object] = ["{"]
    first = True
    for m in members:
        if m.name not in spec:
            assert not m.required, m.name
            continue
        v = spec[m.name]
        piece = [("" if first else ",") + f'"{m.name}":'] + _value_json(m, v.spec
                                                                       if isinstance(v, Present) else v)
        if isinstance(v, Present):
            assert not first, "an object's first member must be required"
            pieces.append(pl.when(_present(v)).then(pl.concat_str(_merged(piece)))
                          .otherwise(pl.lit("")))
        else:
            pieces += piece
        first = False
    return pieces + ["}"]


def _value_json(f: schema.Field, spec) -> List[object]:
    if f.kind == schema.OBJECT:
        if all(isinstance(v, (Col, Lit)) for v in spec.values()) and len(spec) == len(f.members):
            # every member on every row: one vectorised struct encoding, in table order
            return [pl.struct([_expr(spec[m.name]).alias(m.name) for m in f.members])
                    .struct.json_encode()]
        return _object_json(f.members, spec)
    if f.kind == schema.LIST:
        out: List[object] = ["["]
        for i, item in enumerate(spec):
            out += ([","] if i else []) + _object_json(f.members, item)
        return out + ["]"]
    if f.kind == schema.MAP:
        if any(isinstance(v, Present) for v in spec.values()):
            return _object_json([replace(f.value, name=k, required=not isinstance(v, Present))
                                 for k, v in spec.items()], spec)
        # every entry on every row: its names are the struct's fields, in order
        return [pl.struct([_expr(v).alias(k) for k, v in spec.items()]).struct.json_encode()]
    if f.kind == schema.STR:
        # no escaping needed: the alphabets exclude quotes and backslashes, and every string
        # column comes from the scenario's checked names or from fixed tables
        return ['"', _expr(spec), '"']
    return [_expr(spec).cast(pl.String)]


def _merged(pieces: List[object]) -> List[pl.Expr]:
    # adjacent literals as one: each literal is materialised per row
    out: List[object] = []
    for p in pieces:
        if isinstance(p, str) and out and isinstance(out[-1], str):
            out[-1] += p
        else:
            out.append(p)
    return [pl.lit(p) if isinstance(p, str) else p for p in out]


def _wire_json_expr() -> pl.Expr:
    return pl.concat_str(_merged(_object_json(schema.FIELDS, wire_spec()))).alias("json")


def to_wire_json(frame: pl.DataFrame) -> pl.Series:
    """Wire JSON, one string per row of a flat chunk (vectorised): ``schema.encode``'s
    layout, member for member and in its order, but doubles as polars writes them
    (below 1e-4 without Python's exponent: the same JSON numbers, other bytes). The
    compiled encoder (``to_wire_bytes``) writes ``schema.encode``'s bytes."""
    return frame.select(_wire_json_expr()).to_series()


def to_wire_bytes(frame: pl.DataFrame) -> List[bytes]:
    """Wire records of a flat chunk as ``bytes``, one per row, as the producer takes them:
    from the compiled encoder (``native_encode``: byte for byte ``schema.encode``'s) when
    it is built, else from polars (``to_wire_json``)."""
    from .native_encode import NativeProgramError, encoder
    native = encoder()
    if native is not None:
        try:
            return native.encode(frame)
        except NativeProgramError as e:
            _say_polars_once(str(e))
    return to_wire_json(frame).cast(pl.Binary).to_list()


_polars_said: List[str] = []


def _say_polars_once(why: str) -> None:
    if not _polars_said:
        import logging
        logging.getLogger(__name__).warning(
            "simulator: the native encoder cannot express this chunk (%s): encoding "
            "with polars", why)
        _polars_said.append(why)


def _value_struct(f: schema.Field, spec) -> pl.Expr:
    if isinstance(spec, Present):
        return pl.when(_present(spec)).then(_value_struct(f, spec.spec))
    if f.kind == schema.OBJECT:
        return pl.struct([_value_struct(m, spec[m.name]).alias(m.name)
                          for m in f.members if m.name in spec])
    if f.kind == schema.LIST:
        return pl.concat_list([_value_struct(replace(f, kind=schema.OBJECT), item)
                               for item in spec])
    if f.kind == schema.MAP:
        return pl.struct([_value_struct(f.value, v).alias(k) for k, v in spec.items()])
    return _expr(spec)


def to_wire_frame(frame: pl.DataFrame) -> pl.DataFrame:
    """The nested form of the wire record (what the Parquet files hold): a null inside
    ``counters``/``mounts[].counters`` or a null ``probe`` means absent on the wire."""
    spec = wire_spec()
    return frame.select([_value_struct(f, spec[f.name]).alias(f.name)
                         for f in schema.FIELDS if f.name in spec])
