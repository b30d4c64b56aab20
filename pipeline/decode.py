"""Decode and validate a whole micro-batch of wire records at once, with polars.

``decode_batch(values)`` takes the raw message values of one batch (bytes, in order) and
returns the records that follow the wire schema as one flat polars frame (the columns the
aggregation needs), plus a reason for every record that does not.

The checks themselves are derived from ``schema.FIELDS`` in ``wire_checks``; this module
runs them in order, cheapest first:

- The canonical layout, when the pipeline's native module is built (``native_decode``):
  one compiled pass per record proves it against the table and extracts the flat
  columns at once (~2-3 µs per record); the rows it does not accept take the paths below
  as if they were the whole batch, or, when fewer than ``VECTORISED_MIN_ROWS``, go
  straight to ``schema.decode`` (the last bullet). Without the module, the paths below
  do all of it.
- The canonical layout (what ``schema.encode`` writes: compact JSON, members in table
  order, strings without escapes) is proven by one anchored pattern pass per record, then
  parsed by one Arrow JSON read; only bounds that number syntax cannot prove and the
  number of list items are left to check on the parsed columns. This is the fleet's
  path: about a third of the CPU of the general one.
- Any other layout: JSON parsing and field types come from one Arrow JSON read with a
  fixed schema (strictly typed), handed to polars without copying; the table's limits
  are checked on whole columns; the things a fixed dtype cannot see (map names, integer
  vs float number syntax, booleans and nulls, unknown fields) are checked on the JSON
  text.
- Any row the vectorised paths do not accept is handed to ``schema.decode`` one by one:
  that yields the exact reason naming the field, and, when the vectorised checks were
  merely too strict (whitespace or escapes in names, duplicate keys, 19-digit
  counters, members the table does not name, which a reader ignores), the record is
  accepted through the Python path instead of being lost. A
  batch whose JSON polars cannot parse as a whole is bisected, so one garbage message
  costs a few extra parses, not the batch.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

import polars as pl

from foliowatch import schema as wire

from . import native_decode
from .wire_checks import DEFAULT, WireChecks, dtype


class FlatColumn(NamedTuple):
    """A column of the flat frame: the sum of ``inputs`` (one, or all that are present)
    of the record's member ``source`` ("" for the top level)."""
    name: str
    dtype: pl.DataType
    source: str
    inputs: Tuple[str, ...]


def _flat_columns() -> Tuple[FlatColumn, ...]:
    top = [FlatColumn(f.name, dtype(f), "", (f.name,)) for f in wire.FIELDS
           if f.required and f.kind in (wire.INT, wire.FLOAT, wire.STR) and f.name != "schema"]
    labels = [FlatColumn(m.name, dtype(m), "labels", (m.name,))
              for m in wire.FIELD["labels"].members]
    metrics = [FlatColumn(m.column, pl.Int64 if m.source == "counters" else pl.Float64,
                          m.source, m.inputs)
               for m in wire.KEY_METRIC_TABLE if m.source != "mounts"]
    carried = [FlatColumn(c, pl.Int64, "counters", (c,)) for c in wire.CARRIED_COUNTERS]
    return tuple(top + labels + metrics + carried
                 + [FlatColumn("uptime_s", pl.Float64, "gauges", ("uptime_s",))])


FLAT_COLUMNS = _flat_columns()
# per mount: its filesystem and the inputs of the metrics that sum mounts
MOUNT_COLUMNS = tuple((m.column, m.inputs) for m in wire.KEY_METRIC_TABLE if m.source == "mounts")
# The flat frame handed to aggregation: one row per accepted record.
FLAT_SCHEMA: Dict[str, pl.DataType] = {
    "row": pl.Int64,            # position in the batch
    **{c.name: c.dtype for c in FLAT_COLUMNS},
    "mounts": pl.List(pl.Struct({"fs": pl.String, **{c: pl.Int64 for c, _ in MOUNT_COLUMNS}})),
}

# Below this many rows a failing chunk is not bisected further: each row goes to Python.
_BISECT_MIN = 16
# The compiled pass's leftovers (a few records of another layout or with escapes):
# below this many, ``schema.decode`` one by one is cheaper than the vectorised paths,
# whose Arrow JSON read and polars checks cost ~14-17 ms per call however few rows
# (measured, 3.11: 16 rows 1.0 ms vs 13.5, 256 rows 11.9 vs 19.2, 1,024 rows 48 vs 35),
# and the pipeline process then never loads pyarrow (~40 MB resident) for them.
VECTORISED_MIN_ROWS = 256


@dataclass
class DecodedBatch:
    """Accepted records (flat, ``FLAT_SCHEMA``) and ``(row, reason)`` for the rest."""
    good: pl.DataFrame
    rejected: List[Tuple[int, str]]
    python_accepted: int = 0   # rows accepted by schema.decode (the Python path)
    seconds: float = 0.0       # wall time of the decode (``Pipeline.decode``)


def _summed(xs: List[pl.Expr]) -> pl.Expr:
    if len(xs) == 1:
        return xs[0]
    return pl.when(pl.any_horizontal([x.is_not_null() for x in xs])) \
        .then(pl.sum_horizontal(xs)).otherwise(None)


def _flatten(d: pl.Expr) -> List[pl.Expr]:
    cols = []
    for c in FLAT_COLUMNS:
        base = d.struct.field(c.source) if c.source else d
        cols.append(_summed([base.struct.field(n) for n in c.inputs])
                    .cast(c.dtype).alias(c.name))
    el = pl.element()
    mounts = d.struct.field("mounts").list.eval(pl.struct(
        el.struct.field("fs").alias("fs"),
        *[_summed([el.struct.field("counters").struct.field(n) for n in inputs]).alias(c)
          for c, inputs in MOUNT_COLUMNS]))
    return cols + [mounts.alias("mounts")]


def flatten_record(rec: Dict[str, Any]) -> Dict[str, Any]:
    """The ``FLAT_SCHEMA`` row of one validated record (the Python path)."""
    row: Dict[str, Any] = {}
    for c in FLAT_COLUMNS:
        container = rec.get(c.source) or {} if c.source else rec
        vals = [container[n] for n in c.inputs if n in container]
        v = (vals[0] if len(vals) == 1 else sum(vals)) if vals else None
        if v is not None and c.dtype == pl.Float64:
            v = float(v)
        elif v is not None and c.dtype == pl.Int64 and v > wire.INT64_MAX:
            # a sum of in-range counters can still overflow the column
            raise wire.SchemaError(f"{c.source}.{c.name}" if c.source else c.name,
                                   f"{v} exceeds the 64-bit range this pipeline stores")
        row[c.name] = v
    mounts = []
    for m in rec["mounts"]:
        entry: Dict[str, Any] = {"fs": m["fs"]}
        for c, inputs in MOUNT_COLUMNS:
            vals = [m["counters"][n] for n in inputs if n in m["counters"]]
            entry[c] = sum(vals) if vals else None
            if entry[c] is not None and entry[c] > wire.INT64_MAX:
                raise wire.SchemaError(f"mounts.counters.{c}", "exceeds 2^63-1")
        mounts.append(entry)
    row["mounts"] = mounts
    return row


def python_verdict(value: bytes, fields: Sequence[wire.Field] = wire.FIELDS
                   ) -> Tuple[Optional[Dict[str, Any]], Optional[str]]:
    """``schema.decode`` one record: (flat row, None) or (None, reason naming the field)."""
    try:
        return flatten_record(wire.decode(value, fields)), None
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


def _arrow_options(checks: WireChecks, dt: Optional[pl.Struct] = None):
    # Arrow's JSON reader converts with the declared types strictly (1.0, true or "1"
    # for an int64 field, 5 for a string field: the chunk fails and is bisected), which
    # is what schema v1 asks for; it ignores the members it is not asked about. One
    # thread: in the pipeline the consuming thread has the other core, and more threads
    # only cost switches (the same CPU per record, measured).
    dt = checks.dtype if dt is None else dt
    cache = checks.__dict__.setdefault("_arrow_options", {})
    options = cache.get(dt)
    if options is None:
        import pyarrow as pa
        import pyarrow.json as pj
        schema = pa.schema([pa.field(f.name, _arrow_type(f.dtype)) for f in dt.fields])
        options = (pj.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore"),
                   pj.ReadOptions(block_size=16 << 20, use_threads=False))
        cache[dt] = options
    return options


def canonical_dtype(checks: WireChecks) -> pl.Struct:
    """What the canonical path parses: the flat columns' inputs and the members its
    numeric checks read (``WireChecks.pruned_dtype``)."""
    dt = checks.__dict__.get("_canonical_dtype")
    if dt is None:
        needed = [(c.source, n) if c.source else (n,) for c in FLAT_COLUMNS for n in c.inputs]
        needed += [("mounts", "fs")] + [("mounts", "counters", n)
                                        for _c, inputs in MOUNT_COLUMNS for n in inputs]
        dt = checks._canonical_dtype = checks.pruned_dtype(needed)  # type: ignore[attr-defined]
    return dt


def _parse(values, text: Optional[pl.Series] = None,
           checks: WireChecks = DEFAULT, dt: Optional[pl.Struct] = None
           ) -> Optional[pl.DataFrame]:
    """JSON-decode a chunk of raw values (no whitespace in them, so one line each) into
    ``raw`` (text; ``text`` when the caller has it already) and ``d`` (struct of
    ``dt``, default ``checks.dtype``); None when the chunk has a value that is not UTF-8, not a JSON
    object, or has a field of the wrong type."""
    import io

    import pyarrow as pa
    import pyarrow.json as pj
    if isinstance(values, pl.Series):
        values = values.to_list()
    dt = checks.dtype if dt is None else dt
    parse_opts, read_opts = _arrow_options(checks, dt)
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
            d.select(pl.struct(pl.all()).alias("d")).to_series().cast(dt))
    except (pa.ArrowException, pl.exceptions.PolarsError, ValueError, OverflowError):
        return None


def _parse_bisect(values: Sequence[bytes], base: int, out_frames: List[pl.DataFrame],
                  python_rows: List[int], checks: WireChecks = DEFAULT,
                  dt: Optional[pl.Struct] = None) -> None:
    df = _parse(values, checks=checks, dt=dt)
    if df is not None:
        out_frames.append(df.with_columns(
            pl.int_range(base, base + len(values), dtype=pl.Int64).alias("row")))
        return
    if len(values) <= _BISECT_MIN:
        python_rows.extend(range(base, base + len(values)))
        return
    mid = len(values) // 2
    _parse_bisect(values[:mid], base, out_frames, python_rows, checks, dt)
    _parse_bisect(values[mid:], base + mid, out_frames, python_rows, checks, dt)


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


def decode_batch(values: Sequence[bytes], now: Optional[float] = None,
                 max_future_s: float = 0.0, checks: WireChecks = DEFAULT) -> DecodedBatch:
    """Decode and validate a batch of raw values; see the module docstring.

    ``max_future_s`` > 0 also rejects records whose ``ts`` lies more than that many
    seconds after ``now`` (wall clock): one host with a wrong clock must not push the
    pipeline's watermark into the future and make everyone else's records late.
    """
    n = len(values)
    if n == 0:
        return DecodedBatch(pl.DataFrame(schema=FLAT_SCHEMA), [])
    values = list(values)
    native = native_decode.decoder(checks)
    if native is None:
        good_parts, python_rows = _vectorised(values, checks)
    else:
        # 0) the canonical layout, proven and extracted in one compiled pass; the rest
        #    takes the vectorised paths below as if it were the whole batch, or, when
        #    it is a few records, schema.decode one by one
        good, rest = native.decode(values)
        good_parts = [good] if good.height else []
        if len(rest) < VECTORISED_MIN_ROWS:
            python_rows = rest
        else:
            parts, sub_python = _vectorised([values[r] for r in rest], checks)
            row_of = pl.lit(pl.Series("row_of", rest, dtype=pl.Int64))
            good_parts += [p.with_columns(row_of.gather(pl.col("row")).alias("row"))
                           for p in parts]
            python_rows = [rest[i] for i in sub_python]

    rejected: List[Tuple[int, str]] = []
    rescued: List[Dict[str, Any]] = []
    for r in sorted(python_rows):
        row, reason = python_verdict(values[r], checks.fields)
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


def _vectorised(values: List[bytes], checks: WireChecks
                ) -> Tuple[List[pl.DataFrame], List[int]]:
    """The polars/Arrow paths (the canonical pattern pass, then the general one): the
    accepted rows' frames and the rows left to ``schema.decode``."""
    n = len(values)
    text, python_rows = _as_text(values)
    good_parts: List[pl.DataFrame] = []
    # 1) records in the canonical layout: one pattern pass, one parse, numeric checks
    canon = checks.canonical(text)
    general = (~canon).arg_true().to_list()
    if python_rows:
        general = sorted(set(general) - set(python_rows))
    if canon.any():
        rows = canon.arg_true()
        dt = canonical_dtype(checks)
        if rows.len() == n:
            df = _parse(values, text, checks, dt)
        else:
            df = _parse([values[r] for r in rows.to_list()], text.filter(canon), checks, dt)
        if df is None:   # not expected: the pattern implies parseable JSON
            general = sorted(general + rows.to_list())
        else:
            df = df.with_columns(rows.cast(pl.Int64).alias("row"))
            ok = df.select(checks.canonical_checks(pl.col("d"))).to_series()
            good_parts.append(df.filter(ok).select(pl.col("row"), *_flatten(pl.col("d"))))
            if not ok.all():
                python_rows.extend(df.filter(~ok)["row"].to_list())
    # 2) any other layout: parse strictly, check the columns and the JSON text
    if general:
        _decode_general(values, general, python_rows, good_parts, checks)
    return good_parts, python_rows


def _decode_general(values: List[bytes], rows: List[int], python_rows: List[int],
                    good_parts: List[pl.DataFrame], checks: WireChecks) -> None:
    """The general path for ``rows``: screen, strict parse (bisecting a chunk that does
    not parse), column checks and text checks; what they do not accept goes to
    ``python_rows``."""
    sub = [values[r] for r in rows]
    screened = screen(sub)
    frames: List[pl.DataFrame] = []
    sub_python: List[int] = screened.arg_true().to_list()
    for a, b in _runs((~screened).arg_true().to_list()):
        _parse_bisect(sub[a:b], a, frames, sub_python, checks)
    row_of = pl.Series("row_of", rows, dtype=pl.Int64)
    python_rows.extend(rows[i] for i in sub_python)
    for df in frames:
        df = df.with_columns(pl.lit(row_of).gather(pl.col("row")).alias("row"),
                             checks.checks(pl.col("d"), pl.col("raw")).alias("ok"))
        ok = df["ok"]
        if ok.any():
            cand = df.filter(ok)
            text_ok = checks.text_checks(cand)
            if not text_ok.all():
                python_rows.extend(cand.filter(~text_ok)["row"].to_list())
                cand = cand.filter(text_ok)
            good_parts.append(cand.select(pl.col("row"), *_flatten(pl.col("d"))))
        if not ok.all():
            python_rows.extend(df.filter(~ok)["row"].to_list())
