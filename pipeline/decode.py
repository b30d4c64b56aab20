"""Decode and validate a whole micro-batch of wire records at once, with polars.

``decode_batch(values)`` takes the raw message values of one batch (bytes, in order) and
returns the records that follow wire schema v1 as one flat polars frame (the columns the
aggregation needs), plus a reason for every record that does not.

The vectorised path must never accept a record that ``schema.validate`` rejects, so it
is deliberately strict and conservative. Two vectorised paths:

- The canonical layout (compact JSON, fields in the order the agent and the simulator
  write them, strings without escapes) is proven by one anchored pattern pass per record
  (``CANONICAL_RE``: every key at every level, alphabets, lengths, enumerations, integer
  and number syntax), then parsed by one Arrow JSON read; only number ranges and the
  number of mounts are left to check on the parsed columns. This is the fleet's path:
  about a third of the CPU of the general one.
- Any other layout: JSON parsing and field types come from one Arrow JSON read with a
  fixed schema (strictly typed), handed to polars without copying; the limits of
  ``foliowatch.schema`` are checked on whole columns; the things a fixed dtype cannot see
  (dynamic counter/gauge/setting names, integer-vs-float number syntax, booleans and
  nulls, unknown fields) are checked on the JSON text.

Any row the vectorised paths do not accept is handed to
``schema.decode`` one by one: that yields the exact reason naming the field, and, when the
vectorised checks were merely too strict (whitespace or escapes in names, duplicate keys,
19-digit counters), the record is accepted through the Python path instead of being
lost. A batch whose JSON polars cannot parse as a whole is bisected, so one garbage
message costs a few extra parses, not the batch.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import polars as pl

from foliowatch import schema as wire

MIB = 1048576.0

# Counters the aggregation reads; any others are validated but not kept.
KEPT_COUNTERS = ("compact_stall", "pgscan_direct", "psi_memory_some_us", "nr_dirtied") \
    + wire.ALLOCSTALL_COUNTERS
KEPT_GAUGES = ("uptime_s", "frag_unusable_1m")

RECORD_DTYPE = pl.Struct({
    "schema": pl.Int64,
    "host_id": pl.String,
    "boot_id": pl.String,
    "seq": pl.Int64,
    "ts": pl.Float64,
    "interval_s": pl.Float64,
    "labels": pl.Struct({"fleet": pl.String, "role": pl.String, "arch": pl.String,
                         "kernel": pl.String, "page_size": pl.Int64, "cpus": pl.Int64,
                         "mem_bytes": pl.Int64, "instance_type": pl.String}),
    "counters": pl.Struct({c: pl.Int64 for c in KEPT_COUNTERS}),
    "gauges": pl.Struct({g: pl.Float64 for g in KEPT_GAUGES}),
    "mounts": pl.List(pl.Struct({"mount": pl.String, "fs": pl.String, "device": pl.String,
                                 "counters": pl.Struct({"write_bytes": pl.Int64})})),
    "probe": pl.Struct({"bytes": pl.Int64, "seconds": pl.Float64, "chunk_bytes": pl.Int64,
                        "mib_s": pl.Float64, "compact_stall": pl.Int64,
                        "allocstall": pl.Int64}),
    "agent": pl.String,
})

# The flat frame handed to aggregation: one row per accepted record.
FLAT_SCHEMA: Dict[str, pl.DataType] = {
    "row": pl.Int64,            # position in the batch
    "host_id": pl.String, "boot_id": pl.String, "seq": pl.Int64,
    "ts": pl.Float64, "interval_s": pl.Float64,
    "fleet": pl.String, "role": pl.String, "arch": pl.String, "kernel": pl.String,
    "page_size": pl.Int64, "cpus": pl.Int64, "mem_bytes": pl.Int64,
    "instance_type": pl.String,
    "compact_stall": pl.Int64, "allocstall": pl.Int64, "pgscan_direct": pl.Int64,
    "psi_memory_some_us": pl.Int64, "nr_dirtied": pl.Int64,
    "uptime_s": pl.Float64, "frag_unusable_1m": pl.Float64, "probe_mib_s": pl.Float64,
    "mounts": pl.List(pl.Struct({"fs": pl.String, "write_bytes": pl.Int64})),
}

# --- the canonical layout: one regular expression for the whole record ---------------
# Records from the agent and the simulator share one field order and compact JSON, so
# one anchored pattern (a DFA pass, no captures) can prove a whole record follows schema
# v1 except for what only numbers can tell: ts and interval_s ranges and the number of
# mounts (checked on the parsed columns) and the number of counter/gauge entries (a
# record shorter than ``_SHORT_RECORD`` bytes cannot hold more than 256 entries in one
# map; a longer one has its keys counted). Every alphabet, length, enumeration, integer
# syntax and the exact set of keys at every level are in the pattern; strings hold no
# escapes, so their JSON text is their value. A record in any other layout is not
# rejected by this: it takes the general path below.
_C_NAME = r'"[a-z][a-z0-9_]{0,63}"'
_C_INT = r"(?:0|[1-9][0-9]{0,17})"                 # < 2^63, so no overflow anywhere
_C_POS = r"[1-9][0-9]{0,17}"
_C_UNUM = r"(?:0|[1-9][0-9]{0,16})(?:\.[0-9]{1,20})?(?:[eE][+-]?[0-9]{1,2})?"   # finite
_C_NUM = "-?" + _C_UNUM
_C_ID = r'"[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}"'     # wire.ID_RE, MAX_ID_LEN
_C_LABEL = r'"[A-Za-z0-9][A-Za-z0-9._+~-]{0,63}"'   # wire.LABEL_RE, MAX_LABEL_LEN
_C_MOUNT_PATH = r'"/[A-Za-z0-9._/+-]{0,255}"'       # wire.MOUNT_RE, 256


def _c_map(value: str, repeat: str = "*") -> str:
    return rf"\{{(?:{_C_NAME}:{value}(?:,{_C_NAME}:{value}){repeat})?\}}"


def _c_one_of(options) -> str:
    return "(?:" + "|".join(str(o) for o in options) + ")"


_C_MOUNT = (rf'\{{"mount":{_C_MOUNT_PATH},"fs":"{_c_one_of(wire.FILESYSTEMS)}",'
            rf'"device":{_C_LABEL},"counters":{_c_map(_C_INT, "{0,31}")}\}}')
_C_LABELS = (rf'\{{"fleet":{_C_LABEL},"role":{_C_LABEL},"arch":"{_c_one_of(wire.ARCHES)}",'
             rf'"kernel":{_C_LABEL},"page_size":{_c_one_of(wire.PAGE_SIZES)},'
             rf'"cpus":{_C_POS},"mem_bytes":{_C_POS},"instance_type":{_C_LABEL}\}}')
_C_PROBE = (rf'\{{"bytes":{_C_INT},"seconds":{_C_UNUM},"chunk_bytes":{_C_INT},'
            rf'"mib_s":{_C_UNUM},"compact_stall":{_C_INT},"allocstall":{_C_INT}\}}')
_C_SETTINGS = _c_map(_C_LABEL, "{0,31}")
CANONICAL_RE = (
    rf'^\{{"schema":{wire.SCHEMA_VERSION},"host_id":{_C_ID},"boot_id":{_C_ID},'
    rf'"seq":{_C_INT},"ts":{_C_NUM},"interval_s":{_C_NUM},"labels":{_C_LABELS},'
    rf'"counters":{_c_map(_C_INT)},"gauges":{_c_map(_C_NUM)},'
    rf'"mounts":\[(?:{_C_MOUNT}(?:,{_C_MOUNT})*)?\]'
    # the optional members in the orders the fleet writes them, each at most once:
    # settings, probe, agent (schema.example_record); probe, settings, agent (the
    # simulator); settings, agent, probe (the agent, which adds its probe last)
    rf'(?:(?:,"settings":{_C_SETTINGS})?(?:,"probe":{_C_PROBE})?(?:,"agent":{_C_LABEL})?'
    rf'|,"probe":{_C_PROBE},"settings":{_C_SETTINGS}(?:,"agent":{_C_LABEL})?'
    rf'|(?:,"settings":{_C_SETTINGS})?,"agent":{_C_LABEL},"probe":{_C_PROBE})'
    rf'\}}$')
# A map entry takes at least 6 bytes ('"a":0,'): below this length no map can hold more
# than 256 (MAX_COUNTERS, MAX_GAUGES) entries.
_SHORT_RECORD = 6 * (max(wire.MAX_COUNTERS, wire.MAX_GAUGES) + 1) - 1
assert wire.MAX_ID_LEN == 128 and wire.MAX_LABEL_LEN == 64 and wire.MAX_NAME_LEN == 64

# --- regular expressions over the JSON text (Rust regex syntax) ----------------------
_NAME = r'"[a-z][a-z0-9_]{0,63}"'
_INT = r"(?:0|[1-9][0-9]{0,17})"          # 19+ digits: left to the Python path
_NUM = r"-?(?:0|[1-9][0-9]{0,16})(?:\.[0-9]{1,20})?(?:[eE][+-]?[0-9]{1,2})?"
_LABEL_STR = r'"[A-Za-z0-9][A-Za-z0-9._+~-]{0,63}"'
# Whole map objects that follow the grammar; counted against all objects of that name.
COUNTERS_OBJ_RE = rf'"counters":\{{(?:{_NAME}:{_INT}(?:,{_NAME}:{_INT})*)?\}}'
GAUGES_OBJ_RE = rf'"gauges":\{{(?:{_NAME}:{_NUM}(?:,{_NAME}:{_NUM})*)?\}}'
SETTINGS_OBJ_RE = rf'"settings":\{{(?:{_NAME}:{_LABEL_STR}(?:,{_NAME}:{_LABEL_STR})*)?\}}'
# A mount counters object with more than 32 entries (N entries have N-1 commas).
TOO_MANY_MOUNT_COUNTERS_RE = r'"counters":\{(?:[^,{}]*,){32}'
# The mounts array: objects nested at most two deep (a mount, its counters).
MOUNTS_SPAN_RE = r'"mounts":\[(?:[^\[\]{}]|\{(?:[^{}]|\{[^{}]*\})*\})*\]'
# A cheap screen; a hit sends the row to the Python path: v1 has no true/false/null
# values (Arrow reads a null as absent; a string containing the word merely takes the
# slow path).
BARE_WORDS_RE = r"true|false|null"
KEY_RE = '":'

# Below this many rows a failing chunk is not bisected further: each row goes to Python.
_BISECT_MIN = 16


@dataclass
class DecodedBatch:
    """Accepted records (flat, ``FLAT_SCHEMA``) and ``(row, reason)`` for the rest."""
    good: pl.DataFrame
    rejected: List[Tuple[int, str]]
    python_accepted: int = 0   # rows the vectorised checks refused but schema accepted


def _str_ok(col: pl.Expr, regex: str, max_len: int) -> pl.Expr:
    return col.str.contains(regex) & (col.str.len_chars() <= max_len)


def _checks(d: pl.Expr, raw: pl.Expr) -> pl.Expr:
    """One boolean expression: True when the row certainly follows schema v1."""
    lab = d.struct.field("labels")
    probe = d.struct.field("probe")
    mounts = d.struct.field("mounts")
    ts = d.struct.field("ts")
    iv = d.struct.field("interval_s")
    seq = d.struct.field("seq")
    el = pl.element()
    mount_ok = mounts.list.eval((
        el.struct.field("mount").str.contains(wire.MOUNT_RE.pattern)
        & (el.struct.field("mount").str.len_chars() <= 256)
        & el.struct.field("fs").is_in(list(wire.FILESYSTEMS))
        & el.struct.field("device").str.contains(wire.LABEL_RE.pattern)
        & (el.struct.field("device").str.len_chars() <= wire.MAX_LABEL_LEN)
        & el.struct.field("counters").is_not_null()
    ).fill_null(False)).list.all()   # a member missing from a mount (null) fails it
    conds = [
        d.is_not_null(),
        d.struct.field("schema") == wire.SCHEMA_VERSION,
        _str_ok(d.struct.field("host_id"), wire.ID_RE.pattern, wire.MAX_ID_LEN),
        _str_ok(d.struct.field("boot_id"), wire.ID_RE.pattern, wire.MAX_ID_LEN),
        seq.is_not_null() & (seq >= 0),
        ts.is_finite() & (ts >= 946684800.0) & (ts <= 4102444800.0),
        iv.is_finite() & (iv > 0.0) & (iv <= wire.MAX_INTERVAL_S),
        lab.is_not_null(),
        lab.struct.field("arch").is_in(list(wire.ARCHES)),
        lab.struct.field("page_size").is_in(list(wire.PAGE_SIZES)),
        lab.struct.field("cpus") > 0,
        lab.struct.field("mem_bytes") > 0,
        d.struct.field("counters").is_not_null(),
        d.struct.field("gauges").is_not_null(),
        mounts.is_not_null(),
        mounts.list.len() <= wire.MAX_MOUNTS,
        mount_ok.fill_null(True),
        d.struct.field("agent").is_null()
        | _str_ok(d.struct.field("agent"), wire.LABEL_RE.pattern, wire.MAX_LABEL_LEN),
        probe.is_null() | (
            probe.struct.field("bytes").is_not_null() & (probe.struct.field("bytes") >= 0)
            & probe.struct.field("chunk_bytes").is_not_null()
            & (probe.struct.field("chunk_bytes") >= 0)
            & probe.struct.field("compact_stall").is_not_null()
            & (probe.struct.field("compact_stall") >= 0)
            & probe.struct.field("allocstall").is_not_null()
            & (probe.struct.field("allocstall") >= 0)
            & probe.struct.field("seconds").is_finite() & (probe.struct.field("seconds") >= 0)
            & probe.struct.field("mib_s").is_finite() & (probe.struct.field("mib_s") >= 0)),
        raw.str.contains(BARE_WORDS_RE).not_(),
    ]
    for name in ("fleet", "role", "kernel", "instance_type"):
        conds.append(_str_ok(lab.struct.field(name), wire.LABEL_RE.pattern, wire.MAX_LABEL_LEN))
    ok = pl.all_horizontal(conds).fill_null(False)
    return ok


def _text_checks(df: pl.DataFrame, debug: bool = False) -> pl.Series:
    """Checks on the JSON text: the dynamic maps (names, value syntax, sizes), and a key
    count that proves there is no unknown field at any level. (Field types are already
    strict: see ``_arrow_options``.)

    Rows reaching here hold no whitespace (screened before parsing): the text is compact JSON,
    and valid strings hold no quotes, braces, brackets, commas or colons, so counting
    ``":`` counts keys. Full passes over the text are
    literal-prefixed (fast); the grammar checks run on the short extracted objects.
    Layouts these checks do not expect (the top-level counters after the mounts) are
    left to the Python path rather than guessed at."""
    raw = pl.col("raw")
    d = pl.col("d")
    n_mounts = d.struct.field("mounts").list.len().cast(pl.Int64)
    probe = d.struct.field("probe").is_not_null().cast(pl.Int64)

    def keys(e: pl.Expr) -> pl.Expr:
        return e.str.count_matches(KEY_RE, literal=True).cast(pl.Int64)

    counters_t = raw.str.extract(r'"counters":\{[^{}]*\}', 0)     # first one: top level
    gauges_t = raw.str.extract(GAUGES_OBJ_RE, 0)
    settings_t = raw.str.extract(SETTINGS_OBJ_RE, 0)
    span = raw.str.extract(MOUNTS_SPAN_RE, 0)
    n_settings = settings_t.is_not_null().cast(pl.Int64)
    counter_entries = keys(counters_t) - 1
    gauge_entries = keys(gauges_t) - 1
    setting_entries = (keys(settings_t) - 1).fill_null(0)
    top_present = pl.sum_horizontal(
        [d.struct.field(f).is_not_null().cast(pl.Int64) for f in
         ("schema", "host_id", "boot_id", "seq", "ts", "interval_s", "labels", "counters",
          "gauges", "mounts", "probe", "agent")]) + n_settings
    expected_keys = (top_present + len(wire.LABELS) + counter_entries + gauge_entries
                     + setting_entries + len(wire.PROBE_FIELDS) * probe
                     + keys(span) - 1)   # the span's own "mounts" key is a top-level one
    conds = [
        # the maps follow their grammar and sizes; the top-level counters precede mounts
        raw.str.find('"counters":{', literal=True) < raw.str.find('"mounts":[', literal=True),
        counters_t.str.contains("^" + COUNTERS_OBJ_RE + "$"),
        counter_entries <= wire.MAX_COUNTERS,
        gauge_entries <= wire.MAX_GAUGES,
        setting_entries <= wire.MAX_SETTINGS,
        # mounts: each object has exactly mount, fs, device and a valid counters object
        span.str.count_matches(COUNTERS_OBJ_RE).cast(pl.Int64) == n_mounts,
        ~span.str.contains(TOO_MANY_MOUNT_COUNTERS_RE),
        keys(span.str.replace_all(r'"counters":\{[^{}]*\}', '"counters":0'))
        == 1 + 4 * n_mounts,
        # no key beyond the ones accounted for: no unknown field at any level (labels
        # and probe members are all required, so an extra one shows here too)
        keys(raw) == expected_keys,
    ]
    if debug:
        return df.select([c.alias(f"c{i}") for i, c in enumerate(conds)])
    return df.select(pl.all_horizontal(conds).fill_null(False).alias("ok"))["ok"]


def _flatten(d: pl.Expr) -> List[pl.Expr]:
    lab = d.struct.field("labels")
    c = d.struct.field("counters")
    g = d.struct.field("gauges")
    stalls = [c.struct.field(n) for n in wire.ALLOCSTALL_COUNTERS]
    return [
        d.struct.field("host_id").alias("host_id"),
        d.struct.field("boot_id").alias("boot_id"),
        d.struct.field("seq").alias("seq"),
        d.struct.field("ts").alias("ts"),
        d.struct.field("interval_s").alias("interval_s"),
        *[lab.struct.field(n).alias(n) for n in
          ("fleet", "role", "arch", "kernel", "page_size", "cpus", "mem_bytes", "instance_type")],
        c.struct.field("compact_stall").alias("compact_stall"),
        pl.when(pl.any_horizontal([s.is_not_null() for s in stalls]))
        .then(pl.sum_horizontal(stalls)).otherwise(None).cast(pl.Int64).alias("allocstall"),
        c.struct.field("pgscan_direct").alias("pgscan_direct"),
        c.struct.field("psi_memory_some_us").alias("psi_memory_some_us"),
        c.struct.field("nr_dirtied").alias("nr_dirtied"),
        g.struct.field("uptime_s").alias("uptime_s"),
        g.struct.field("frag_unusable_1m").alias("frag_unusable_1m"),
        d.struct.field("probe").struct.field("mib_s").alias("probe_mib_s"),
        d.struct.field("mounts").list.eval(pl.struct(
            pl.element().struct.field("fs").alias("fs"),
            pl.element().struct.field("counters").struct.field("write_bytes")
            .alias("write_bytes"))).alias("mounts"),
    ]


def flatten_record(rec: Dict[str, Any]) -> Dict[str, Any]:
    """The ``FLAT_SCHEMA`` row of one validated record (the Python path)."""
    lab, c, g = rec["labels"], rec["counters"], rec["gauges"]
    stalls = [c[k] for k in wire.ALLOCSTALL_COUNTERS if k in c]
    row = {
        "host_id": rec["host_id"], "boot_id": rec["boot_id"], "seq": rec["seq"],
        "ts": float(rec["ts"]), "interval_s": float(rec["interval_s"]),
        **{n: lab[n] for n in ("fleet", "role", "arch", "kernel", "page_size", "cpus",
                               "mem_bytes", "instance_type")},
        "compact_stall": c.get("compact_stall"),
        "allocstall": sum(stalls) if stalls else None,
        "pgscan_direct": c.get("pgscan_direct"),
        "psi_memory_some_us": c.get("psi_memory_some_us"),
        "nr_dirtied": c.get("nr_dirtied"),
        "uptime_s": float(g["uptime_s"]) if "uptime_s" in g else None,
        "frag_unusable_1m": float(g["frag_unusable_1m"]) if "frag_unusable_1m" in g else None,
        "probe_mib_s": float(rec["probe"]["mib_s"]) if "probe" in rec else None,
        "mounts": [{"fs": m["fs"], "write_bytes": m["counters"].get("write_bytes")}
                   for m in rec["mounts"]],
    }
    for k in ("seq", "page_size", "cpus", "mem_bytes", "compact_stall", "allocstall",
              "pgscan_direct", "psi_memory_some_us", "nr_dirtied"):
        v = row[k]
        if v is not None and v > wire.MAX_COUNTER_DELTA:
            raise wire.SchemaError(k if k in rec else f"labels.{k}" if k in lab
                                   else f"counters.{k}",
                                   f"{v} exceeds the 64-bit range this pipeline stores")
    for m in row["mounts"]:
        if m["write_bytes"] is not None and m["write_bytes"] > wire.MAX_COUNTER_DELTA:
            raise wire.SchemaError("mounts.counters.write_bytes", "exceeds 2^63-1")
    return row


def _newline_field(obj: Any, path: str = "") -> Optional[str]:
    # Python's `$` also matches before a trailing newline, so schema.validate lets
    # "name\n" through; such a value would become a partition key and a label value.
    if isinstance(obj, str):
        return path or "record" if "\n" in obj else None
    if isinstance(obj, dict):
        for k, v in obj.items():
            bad = _newline_field(v, f"{path}.{k}" if path else str(k))
            if bad:
                return bad
    if isinstance(obj, list):
        for i, v in enumerate(obj):
            bad = _newline_field(v, f"{path}[{i}]")
            if bad:
                return bad
    return None


def python_verdict(value: bytes) -> Tuple[Optional[Dict[str, Any]], Optional[str]]:
    """``schema.decode`` one record: (flat row, None) or (None, reason naming the field)."""
    try:
        rec = wire.decode(value)
        bad = _newline_field(rec)
        if bad:
            raise wire.SchemaError(bad, "contains a newline")
        return flatten_record(rec), None
    except wire.SchemaError as e:
        return None, str(e)
    except (OverflowError, ValueError, TypeError, RecursionError) as e:
        return None, f"record: {type(e).__name__}: {e}"[:300]


def _arrow_type(dt: pl.DataType):
    import pyarrow as pa
    if isinstance(dt, pl.Struct):
        return pa.struct([pa.field(f.name, _arrow_type(f.dtype)) for f in dt.fields])
    if isinstance(dt, pl.List):
        return pa.list_(_arrow_type(dt.inner))
    return {pl.Int64: pa.int64(), pl.Float64: pa.float64(), pl.String: pa.string()}[dt]


_ARROW_OPTIONS = None


def _arrow_options():
    # Arrow's JSON reader converts with the declared types strictly (1.0, true or "1"
    # for an int64 field, 5 for a string field: the chunk fails and is bisected), which
    # is what schema v1 asks for; it ignores the members it is not asked about. One
    # thread: in the pipeline the consuming thread has the other core, and more threads
    # only cost switches (the same CPU per record, measured).
    global _ARROW_OPTIONS
    if _ARROW_OPTIONS is None:
        import pyarrow as pa
        import pyarrow.json as pj
        schema = pa.schema([pa.field(f.name, _arrow_type(f.dtype))
                            for f in RECORD_DTYPE.fields])
        _ARROW_OPTIONS = (pj.ParseOptions(explicit_schema=schema,
                                          unexpected_field_behavior="ignore"),
                          pj.ReadOptions(block_size=16 << 20, use_threads=False))
    return _ARROW_OPTIONS


def _parse(values, text: Optional[pl.Series] = None) -> Optional[pl.DataFrame]:
    """JSON-decode a chunk of raw values (no whitespace in them, so one line each) into
    ``raw`` (text; ``text`` when the caller has it already) and ``d`` (struct of
    ``RECORD_DTYPE``); None when the chunk has a value that is not UTF-8, not a JSON
    object, or has a field of the wrong type."""
    import io

    import pyarrow as pa
    import pyarrow.json as pj
    if isinstance(values, pl.Series):
        values = values.to_list()
    parse_opts, read_opts = _arrow_options()
    try:
        table = pj.read_json(io.BytesIO(b"\n".join(values)), parse_options=parse_opts,
                             read_options=read_opts)
        if table.num_rows != len(values):
            return None
        if text is None:
            text = pl.Series("raw", values, dtype=pl.Binary).cast(pl.String)
        d = pl.from_arrow(table)
        assert isinstance(d, pl.DataFrame)
        return pl.DataFrame({"raw": text}).with_columns(
            d.select(pl.struct(pl.all()).alias("d")).to_series().cast(RECORD_DTYPE))
    except (pa.ArrowException, pl.exceptions.PolarsError, ValueError, OverflowError):
        return None


def _parse_bisect(values: Sequence[bytes], base: int, out_frames: List[pl.DataFrame],
                  python_rows: List[int]) -> None:
    df = _parse(values)
    if df is not None:
        out_frames.append(df.with_columns(
            pl.int_range(base, base + len(values), dtype=pl.Int64).alias("row")))
        return
    if len(values) <= _BISECT_MIN:
        python_rows.extend(range(base, base + len(values)))
        return
    mid = len(values) // 2
    _parse_bisect(values[:mid], base, out_frames, python_rows)
    _parse_bisect(values[mid:], base + mid, out_frames, python_rows)


def _runs(indices: List[int]) -> List[Tuple[int, int]]:
    """Contiguous [start, end) runs of sorted row numbers."""
    runs: List[Tuple[int, int]] = []
    for i in indices:
        if runs and runs[-1][1] == i:
            runs[-1] = (runs[-1][0], i + 1)
        else:
            runs.append((i, i + 1))
    return runs


def screen(values: Sequence[bytes]) -> pl.Series:
    """Rows left to the Python path before parsing: empty or oversized values, a UTF-8
    BOM (which the Arrow reader would skip at the start of its input), and any
    whitespace (compact JSON has none; it would also break the one-value-per-line
    framing of the parser)."""
    raw = pl.Series("raw", values, dtype=pl.Binary)
    sizes = raw.bin.size()
    return ((sizes > wire.MAX_RECORD_BYTES) | (sizes == 0)
            | raw.bin.starts_with(b"\xef\xbb\xbf")
            | raw.bin.contains(b" ") | raw.bin.contains(b"\n")
            | raw.bin.contains(b"\r") | raw.bin.contains(b"\t"))


def _as_text(values: Sequence[bytes]) -> Tuple[pl.Series, List[int]]:
    """The values as a String series (null where a value is not UTF-8) and the rows
    that are not UTF-8 (they take the Python path, which names the problem)."""
    raw = pl.Series("raw", values, dtype=pl.Binary)
    try:
        return raw.cast(pl.String), []
    except pl.exceptions.PolarsError:   # some value is not UTF-8: find it
        bad = []
        for i, v in enumerate(values):
            try:
                bytes(v).decode("utf-8")
            except UnicodeDecodeError:
                bad.append(i)
        fixed = list(values)
        for i in bad:
            fixed[i] = b""
        text = pl.Series("raw", fixed, dtype=pl.Binary).cast(pl.String)
        return text.scatter(bad, None), bad


def canonical(text: pl.Series) -> pl.Series:
    """True for each record that follows ``CANONICAL_RE`` and the entry-count bound:
    what remains to check is numeric (``_canonical_checks`` on the parsed record)."""
    ok = (text.str.contains(CANONICAL_RE) & (text.str.len_bytes() <= wire.MAX_RECORD_BYTES))
    ok = ok.fill_null(False)
    long_rows = (text.str.len_bytes() >= _SHORT_RECORD).fill_null(False)
    if long_rows.any():
        few_keys = text.str.count_matches(KEY_RE, literal=True) <= min(wire.MAX_COUNTERS,
                                                                        wire.MAX_GAUGES)
        ok = ok & (~long_rows | few_keys.fill_null(False))
    return ok


def _canonical_checks(d: pl.Expr) -> pl.Expr:
    """What ``CANONICAL_RE`` cannot see: number ranges and the number of mounts."""
    ts = d.struct.field("ts")
    iv = d.struct.field("interval_s")
    return pl.all_horizontal([
        d.is_not_null(),
        ts.is_finite() & (ts >= 946684800.0) & (ts <= 4102444800.0),
        iv.is_finite() & (iv > 0.0) & (iv <= wire.MAX_INTERVAL_S),
        d.struct.field("mounts").list.len() <= wire.MAX_MOUNTS,
    ]).fill_null(False)


def decode_batch(values: Sequence[bytes], now: Optional[float] = None,
                 max_future_s: float = 0.0) -> DecodedBatch:
    """Decode and validate a batch of raw values; see the module docstring.

    ``max_future_s`` > 0 also rejects records whose ``ts`` lies more than that many
    seconds after ``now`` (wall clock): one host with a wrong clock must not push the
    pipeline's watermark into the future and make everyone else's records late.
    """
    n = len(values)
    if n == 0:
        return DecodedBatch(pl.DataFrame(schema=FLAT_SCHEMA), [])
    values = list(values)
    text, python_rows = _as_text(values)
    good_parts: List[pl.DataFrame] = []
    # 1) records in the canonical layout: one pattern pass, one parse, numeric checks
    canon = canonical(text)
    general = (~canon).arg_true().to_list()
    if python_rows:
        general = sorted(set(general) - set(python_rows))
    if canon.any():
        rows = canon.arg_true()
        if rows.len() == n:
            df = _parse(values, text)
        else:
            df = _parse([values[r] for r in rows.to_list()], text.filter(canon))
        if df is None:   # not expected: the pattern implies parseable JSON
            general = sorted(general + rows.to_list())
        else:
            df = df.with_columns(rows.cast(pl.Int64).alias("row"))
            ok = df.select(_canonical_checks(pl.col("d"))).to_series()
            good_parts.append(df.filter(ok).select(pl.col("row"), *_flatten(pl.col("d"))))
            if not ok.all():
                python_rows.extend(df.filter(~ok)["row"].to_list())
    # 2) any other layout: parse strictly, check the columns and the JSON text
    if general:
        _decode_general(values, general, python_rows, good_parts)

    rejected: List[Tuple[int, str]] = []
    rescued: List[Dict[str, Any]] = []
    for r in sorted(python_rows):
        row, reason = python_verdict(values[r])
        if row is None:
            rejected.append((r, reason or "record: rejected"))
        else:
            row["row"] = r
            rescued.append(row)
    if rescued:
        good_parts.append(pl.DataFrame(rescued, schema=FLAT_SCHEMA))
    good = (pl.concat([p.select(list(FLAT_SCHEMA)).cast(FLAT_SCHEMA) for p in good_parts])
            if good_parts else pl.DataFrame(schema=FLAT_SCHEMA))
    if len(good_parts) > 1:
        good = good.sort("row")
    if max_future_s > 0 and good.height:
        limit = (time.time() if now is None else now) + max_future_s
        future = good["ts"] > limit
        if future.any():
            for r, ts in good.filter(future).select("row", "ts").iter_rows():
                rejected.append((r, f"ts: {ts} is more than {max_future_s:g} s in the future "
                                    "of this pipeline's clock; fix the host's clock"))
            good = good.filter(~future)
    rejected.sort()
    return DecodedBatch(good, rejected, python_accepted=len(rescued))


def _decode_general(values: List[bytes], rows: List[int], python_rows: List[int],
                    good_parts: List[pl.DataFrame]) -> None:
    """The general path for ``rows``: screen, strict parse (bisecting a chunk that does
    not parse), column checks and text checks; what they do not accept goes to
    ``python_rows``."""
    sub = [values[r] for r in rows]
    screened = screen(sub)
    frames: List[pl.DataFrame] = []
    sub_python: List[int] = screened.arg_true().to_list()
    for a, b in _runs((~screened).arg_true().to_list()):
        _parse_bisect(sub[a:b], a, frames, sub_python)
    row_of = pl.Series("row_of", rows, dtype=pl.Int64)
    python_rows.extend(rows[i] for i in sub_python)
    for df in frames:
        df = df.with_columns(pl.lit(row_of).gather(pl.col("row")).alias("row"),
                             _checks(pl.col("d"), pl.col("raw")).alias("ok"))
        ok = df["ok"]
        if ok.any():
            cand = df.filter(ok)
            text_ok = _text_checks(cand)
            if not text_ok.all():
                python_rows.extend(cand.filter(~text_ok)["row"].to_list())
                cand = cand.filter(text_ok)
            good_parts.append(cand.select(pl.col("row"), *_flatten(pl.col("d"))))
        if not ok.all():
            python_rows.extend(df.filter(~ok)["row"].to_list())


def record_key_metrics(flat: pl.DataFrame) -> pl.DataFrame:
    """Per (record, filesystem) key metrics, vectorised: the polars twin of
    ``schema.key_metrics(record, fs)``, tested against it. One row per filesystem the
    record reports (``fs = "none"`` when it watches none)."""
    per_fs = explode_fs(flat)
    iv = pl.col("interval_s")
    return per_fs.select(
        "row", "fs",
        (pl.col("write_bytes") / iv / MIB).alias("write_mib_s"),
        (pl.col("compact_stall") / iv).alias("compact_stall_per_s"),
        (pl.col("allocstall") / iv).alias("allocstall_per_s"),
        (pl.col("pgscan_direct") / iv).alias("pgscan_direct_per_s"),
        pl.min_horizontal(pl.col("psi_memory_some_us") / (iv * 1e6), pl.lit(1.0))
        .alias("psi_memory_some_share"),
        pl.col("frag_unusable_1m"),
        pl.col("probe_mib_s"),
    )


def explode_fs(flat: pl.DataFrame) -> pl.DataFrame:
    """One row per (record, fs): ``write_bytes`` sums that fs's mounts (null when none of
    them reports it). Host-level columns are repeated on each fs row."""
    n_mounts = flat["mounts"].list.len()
    if flat.height and (n_mounts <= 1).all():
        # the common case, one watched filesystem per host: no explode, no regrouping
        first = pl.col("mounts").list.first()
        return (flat.with_columns(first.struct.field("fs").fill_null("none").alias("fs"),
                                  first.struct.field("write_bytes").alias("write_bytes"))
                .drop("mounts"))
    base = flat.drop("mounts")
    m = (flat.select("row", "mounts")
         .with_columns(pl.when(pl.col("mounts").list.len() == 0)
                       .then(pl.lit([{"fs": "none", "write_bytes": None}],
                                    dtype=FLAT_SCHEMA["mounts"]))
                       .otherwise(pl.col("mounts")).alias("mounts"))
         .explode("mounts").unnest("mounts")
         .group_by("row", "fs", maintain_order=True)
         .agg(pl.when(pl.col("write_bytes").count() > 0)
              .then(pl.col("write_bytes").sum()).otherwise(None).alias("write_bytes")))
    return m.join(base, on="row", how="left").sort("row", "fs")
