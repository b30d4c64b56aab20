"""The window files' compiled Parquet encoder (``foliowatch_parquetwrite``,
pipeline/native/parquetwrite.c, used by pipeline/native_parquet.py) writes files that
real readers (polars and pyarrow) read back exactly, with the statistics, page layout and
metadata native_parquet's docstring promises, so that readers prune on them correctly;
frames it does not write fall back to polars' writer with the same rows.

Tests of the encoder fail (never skip) when it is not built: run scripts/bootstrap.sh
(or ``.venv/bin/python -m pip install --no-build-isolation ./pipeline/native``)."""

from __future__ import annotations

import datetime as dt
import io
import json
import math
import os
import struct
import subprocess
import sys
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from foliowatch.pipeline import native_parquet

REPO = Path(__file__).resolve().parents[1]

HYPO = settings(max_examples=60, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.fixture(autouse=True, scope="module")
def _encoder_not_turned_off():
    """The environment of the run must not turn the compiled encoder off."""
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv(native_parquet.WRITER_ENV, raising=False)
        yield


# -- the five column types the encoder writes ---------------------------------------------
KINDS = ("int", "float", "str", "ts_utc", "ts")
DTYPES = {"int": pl.Int64, "float": pl.Float64, "str": pl.String,
          "ts_utc": pl.Datetime("us", "UTC"), "ts": pl.Datetime("us")}
UTC = dt.timezone.utc
EPOCH = dt.datetime(1970, 1, 1)
# datetimes Python can hold (year 1 .. 9999), so that statistics compare as datetimes
MIN_US = -62135596800 * 10**6
MAX_US = 253402300799 * 10**6 + 999999

INT_EDGES = [0, 1, -1, 2**63 - 1, -(2**63), 2**31, -(2**31) - 1, 2**53 + 1, 255, -256]
NAN = float("nan")
NEG_NAN = struct.unpack("<d", struct.pack("<Q", 0xFFF8000000000000))[0]
PAYLOAD_NAN = struct.unpack("<d", struct.pack("<Q", 0x7FF0000000000001))[0]
FLOAT_EDGES = [0.0, -0.0, NAN, NEG_NAN, PAYLOAD_NAN, math.inf, -math.inf, 5e-324, -5e-324,
               1.7976931348623157e308, -1.7976931348623157e308, 1.0, -1.0, 2.5]
# inline (<= 12 bytes) and out-of-line string views, bytes >= 0x80 (signed-char compares
# would misorder them), prefixes of each other, NUL
STR_EDGES = ["", "a", "ab", "abc", "a" * 12, "a" * 13, "a" * 40, "\u00e9" * 6, "\u00e9" * 7,
             "\x00", "a\x00", "\x7f", "\u00ff", "\u20ac", "\U0001F600", "z", "Z",
             "caf\u00e9 cr\u00e8me br\u00fbl\u00e9e", "\U0001F600" * 10]
TS_EDGES = [0, 1, -1, MIN_US, MAX_US, 1764000000123456, -86400 * 10**6]

VALUES = {
    "int": st.one_of(st.integers(-(2**63), 2**63 - 1), st.sampled_from(INT_EDGES),
                     st.integers(-3, 3)),
    "float": st.one_of(st.floats(), st.sampled_from(FLOAT_EDGES)),
    "str": st.one_of(st.text(max_size=40), st.sampled_from(STR_EDGES)),
    "ts_utc": st.one_of(st.integers(MIN_US, MAX_US), st.sampled_from(TS_EDGES)),
    "ts": st.one_of(st.integers(MIN_US, MAX_US), st.sampled_from(TS_EDGES)),
}


def column(name: str, kind: str, values) -> pl.Series:
    """A column of ``kind`` from Python values (datetimes as µs since the epoch)."""
    if kind in ("ts_utc", "ts"):
        return pl.Series(name, values, dtype=pl.Int64).cast(DTYPES[kind])
    return pl.Series(name, values, dtype=DTYPES[kind])


@st.composite
def small_frames(draw, min_rows=1, max_rows=40):
    """Frames of 1-6 columns of the supported types, each column without nulls, with
    some or all null, its values drawn from the corner cases above."""
    n = draw(st.integers(min_rows, max_rows))
    kinds = draw(st.lists(st.sampled_from(KINDS), min_size=1, max_size=6))
    cols = []
    for i, kind in enumerate(kinds):
        mode = draw(st.sampled_from(["none", "some", "all"]))
        if mode == "all":
            values = [None] * n
        else:
            elem = VALUES[kind] if mode == "none" else st.one_of(st.none(), VALUES[kind])
            values = draw(st.lists(elem, min_size=n, max_size=n))
        cols.append(column(f"{kind}_{i}", kind, values))
    return pl.DataFrame(cols)


STR_POOL = list("abcxyzABC019 _-.") + ["\u00e9", "\u20ac", "\U0001F600", "\x00", "\u00ff"]


def random_values(rng: np.random.Generator, kind: str, n: int):
    """n values of ``kind``: a mixture of random values and the corner cases."""
    pick_edge = rng.random(n) < 0.15
    if kind == "int":
        v = rng.integers(-(2**63), 2**63 - 1, n, dtype=np.int64, endpoint=True)
        small = rng.random(n) < 0.3
        v[small] = rng.integers(-1000, 1000, int(small.sum()))
        v[pick_edge] = rng.choice(np.array(INT_EDGES, dtype=np.int64), int(pick_edge.sum()))
        return v
    if kind == "float":
        v = rng.standard_normal(n) * 10.0 ** rng.integers(-30, 30, n)
        bits = rng.random(n) < 0.1     # any bit pattern: subnormals, NaN payloads, inf
        v[bits] = rng.integers(0, 2**64, int(bits.sum()), dtype=np.uint64).view(np.float64)
        v[pick_edge] = rng.choice(np.array(FLOAT_EDGES), int(pick_edge.sum()))
        return v
    if kind == "str":
        lens = rng.integers(0, 41, n)
        out = []
        for i, k in enumerate(lens):
            if pick_edge[i]:
                out.append(STR_EDGES[int(rng.integers(len(STR_EDGES)))])
            else:
                out.append("".join(rng.choice(STR_POOL, int(k)).tolist()))
        return out
    v = rng.integers(MIN_US, MAX_US, n, dtype=np.int64)
    v[pick_edge] = rng.choice(np.array(TS_EDGES, dtype=np.int64), int(pick_edge.sum()))
    return v


def random_mask(rng: np.random.Generator, n: int, mode: str) -> np.ndarray:
    """Validity: all valid, all null, scattered nulls, or long runs of each."""
    if mode == "none":
        return np.ones(n, dtype=bool)
    if mode == "all":
        return np.zeros(n, dtype=bool)
    if mode == "some":
        return rng.random(n) > rng.uniform(0.02, 0.98)
    runs, total = [], 0                                  # "runs"
    while total < n:
        runs.append(int(rng.integers(1, 3000)))
        total += runs[-1]
    first = bool(rng.integers(0, 2))
    return np.repeat((np.arange(len(runs)) % 2 == 0) == first, runs)[:n]


def random_frame(rng: np.random.Generator, n: int, kinds=KINDS, modes=None) -> pl.DataFrame:
    cols = []
    for i, kind in enumerate(kinds):
        mode = modes[i] if modes else str(rng.choice(["none", "some", "all", "runs"]))
        s = column(f"{kind}_{i}", kind, random_values(rng, kind, n))
        valid = random_mask(rng, n, mode)
        if not valid.all():
            s = pl.select(pl.when(pl.Series(valid)).then(s).alias(s.name)).to_series()
        cols.append(s)
    return pl.DataFrame(cols)


@st.composite
def seeded_frames(draw, min_rows=1, max_rows=3000):
    """Bigger frames from a drawn seed: numpy draws the values."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    n = draw(st.integers(min_rows, max_rows))
    kinds = draw(st.lists(st.sampled_from(KINDS), min_size=1, max_size=6))
    return random_frame(rng, n, kinds)


def frames(min_rows=1):
    return st.one_of(small_frames(min_rows=min_rows), seeded_frames(min_rows=min_rows))


# -- the encoder, and what a reader sees ------------------------------------------------------
def _encoder_status() -> str:
    try:
        import foliowatch_parquetwrite as mod
    except ImportError as e:
        return (f"foliowatch_parquetwrite is not built ({e}): run scripts/bootstrap.sh "
                f"(it builds pipeline/native into .venv)")
    return (f"foliowatch_parquetwrite is importable (FORMAT_VERSION "
            f"{getattr(mod, 'FORMAT_VERSION', None)}, native_parquet wants "
            f"{native_parquet.FORMAT_VERSION}); {native_parquet.WRITER_ENV}="
            f"{os.environ.get(native_parquet.WRITER_ENV)!r}")


def native(frame: pl.DataFrame) -> bytes:
    """The compiled encoder's file of ``frame``; fails the test when it wrote none."""
    data = native_parquet.native_bytes(frame)
    assert data is not None, (
        f"the compiled Parquet encoder wrote no file for a frame of supported types "
        f"({dict(frame.schema)}, {frame.height} rows): {_encoder_status()}")
    assert isinstance(data, bytes) and data[:4] == b"PAR1" and data[-4:] == b"PAR1"
    created_by = pq.ParquetFile(io.BytesIO(data)).metadata.created_by
    assert created_by == native_parquet.CREATED_BY, created_by
    return data


def read_polars(data: bytes) -> pl.DataFrame:
    return pl.read_parquet(io.BytesIO(data))


def read_pyarrow(data: bytes) -> pl.DataFrame:
    return pl.from_arrow(pq.read_table(io.BytesIO(data)))


def _first(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


def assert_same(got: pl.DataFrame, want: pl.DataFrame, who: str = "") -> None:
    """Exactly the same frame: column names and order, dtypes (time zone included),
    nulls, and values, floats compared by their bits (-0.0 is not 0.0, NaN is NaN)."""
    assert got.columns == want.columns, who
    assert [repr(d) for d in got.dtypes] == [repr(d) for d in want.dtypes], \
        f"{who}: dtypes {got.dtypes} != {want.dtypes}"
    assert got.height == want.height, f"{who}: {got.height} rows, want {want.height}"
    for name in want.columns:
        g, w = got[name], want[name]
        gn, wn = g.is_null().to_numpy(), w.is_null().to_numpy()
        if (gn != wn).any():
            i = _first(gn != wn)
            raise AssertionError(f"{who}: column {name!r} row {i}: got {g[i]!r}, want {w[i]!r}"
                                 f" ({int(gn.sum())} nulls, want {int(wn.sum())})")
        if w.dtype == pl.String:
            diff = (g.fill_null("") != w.fill_null("")).to_numpy()
        elif w.dtype == pl.Float64:
            diff = (g.to_numpy().view(np.uint64) != w.to_numpy().view(np.uint64)) & ~wn
        else:
            diff = (g.to_physical().fill_null(0).to_numpy()
                    != w.to_physical().fill_null(0).to_numpy())
        if diff.any():
            i = _first(diff)
            gv, wv = g[i], w[i]
            if w.dtype == pl.Float64:
                gv, wv = (f"{x!r} (0x{struct.unpack('<Q', struct.pack('<d', x))[0]:016x})"
                          for x in (gv, wv))
            raise AssertionError(f"{who}: column {name!r} row {i} of {w.len()}: got {gv}, "
                                 f"want {wv} ({int(diff.sum())} rows differ)")


def assert_round_trips(frame: pl.DataFrame, data: bytes) -> None:
    assert_same(read_polars(data), frame, "polars.read_parquet")
    assert_same(read_pyarrow(data), frame, "pyarrow.parquet.read_table")


# -- a reader of the footer and page headers (Thrift compact protocol) ----------------------
class Thrift:
    """Just enough of Thrift's compact protocol to read parquet.thrift's structures as
    {field id: value} dicts (lists as Python lists, binaries as bytes)."""

    def __init__(self, data: bytes, pos: int = 0):
        self.d, self.pos = data, pos

    def byte(self) -> int:
        b = self.d[self.pos]
        self.pos += 1
        return b

    def varint(self) -> int:
        shift = out = 0
        while True:
            b = self.byte()
            out |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                return out

    def zigzag(self) -> int:
        v = self.varint()
        return (v >> 1) ^ -(v & 1)

    def value(self, t: int):
        if t in (1, 2):
            return t == 1
        if t == 3:
            return struct.unpack("b", bytes([self.byte()]))[0]
        if t in (4, 5, 6):
            return self.zigzag()
        if t == 7:
            v = struct.unpack("<d", self.d[self.pos:self.pos + 8])[0]
            self.pos += 8
            return v
        if t == 8:
            n = self.varint()
            v = self.d[self.pos:self.pos + n]
            self.pos += n
            return v
        if t in (9, 10):
            h = self.byte()
            n, et = h >> 4, h & 0x0F
            if n == 15:
                n = self.varint()
            if et in (1, 2):
                return [self.byte() == 1 for _ in range(n)]
            return [self.value(et) for _ in range(n)]
        if t == 11:
            n = self.varint()
            if n == 0:
                return {}
            h = self.byte()
            return {self.value(h >> 4): self.value(h & 0x0F) for _ in range(n)}
        if t == 12:
            return self.struct()
        raise AssertionError(f"thrift: unknown type {t} at byte {self.pos}")

    def struct(self) -> dict:
        out, last = {}, 0
        while True:
            h = self.byte()
            if h == 0:
                return out
            t, delta = h & 0x0F, h >> 4
            fid = last + delta if delta else self.zigzag()
            assert fid not in out, f"thrift: field {fid} twice"
            out[fid] = self.value(t)
            last = fid


def footer(data: bytes) -> dict:
    n = struct.unpack("<I", data[-8:-4])[0]
    t = Thrift(data, len(data) - 8 - n)
    meta = t.struct()
    assert t.pos == len(data) - 8, "the footer's length does not match its FileMetaData"
    return meta


# -- 1. round trip ------------------------------------------------------------------------------
@HYPO
@given(frame=frames())
def test_random_frames_of_all_supported_types_round_trip_exactly_through_polars_and_pyarrow(frame):
    assert_round_trips(frame, native(frame))


def test_corner_values_round_trip_exactly_nan_infinities_signed_zeros_and_utf8():
    floats = [0.0, -0.0, NAN, NEG_NAN, PAYLOAD_NAN, math.inf, -math.inf, None, 5e-324, -5e-324]
    strs = ["", None, "a" * 12, "a" * 13, "\u00e9" * 7, "\U0001F600" * 10, "\x00", "z",
            "\u00ff", "x" * 40]
    ints = [0, -1, 2**63 - 1, -(2**63), None, 1, 2, 3, 4, 5]
    ts = [0, -1, MIN_US, MAX_US, None, 1, 2, 3, 4, 1764000000123456]
    frame = pl.DataFrame([column("f", "float", floats), column("s", "str", strs),
                          column("i", "int", ints), column("t", "ts_utc", ts),
                          column("n", "ts", ts)])
    data = native(frame)
    assert_round_trips(frame, data)
    got = read_polars(data)["f"].to_numpy().view(np.uint64)
    assert got[1] == 0x8000000000000000 and got[0] == 0, "-0.0 and 0.0 must stay distinct"


@pytest.mark.parametrize("kind", KINDS)
def test_one_row_frames_round_trip_with_a_value_and_with_a_null(kind):
    value = {"int": -5, "float": -0.0, "str": "\u00e9t\u00e9 in a long string", "ts_utc": -1,
             "ts": 1764000000123456}[kind]
    for v in (value, None):
        frame = pl.DataFrame([column("c", kind, [v])])
        assert_round_trips(frame, native(frame))


@pytest.mark.parametrize("kind", KINDS)
def test_all_null_columns_round_trip_and_keep_their_type(kind):
    for n in (1, 7, 8, 9, 1000):
        frame = pl.DataFrame([column("c", kind, [None] * n), column("i", "int", range(n))])
        assert_round_trips(frame, native(frame))


def test_zero_row_frames_round_trip_through_parquet_bytes():
    """The encoder may leave 0 rows to polars (its C source says it does): whichever
    writer writes it, the file reads back as the same empty frame with the same types."""
    frame = pl.DataFrame([column(f"c{i}", kind, []) for i, kind in enumerate(KINDS)])
    assert_round_trips(frame, native_parquet.parquet_bytes(frame))
    data = native_parquet.native_bytes(frame)
    if data is not None:
        assert_round_trips(frame, data)


def test_a_frame_of_200k_rows_with_runs_and_scattered_nulls_round_trips():
    rng = np.random.default_rng(20261205)
    kinds = KINDS + KINDS
    frame = random_frame(rng, 200_000, kinds, modes=["some"] * 5 + ["runs", "none", "runs",
                                                                        "all", "some"])
    data = native(frame)
    assert_round_trips(frame, data)
    check_statistics(frame, data)


@pytest.mark.parametrize("width", [13, 14, 15, 16, 46, 71])
def test_wide_frames_like_the_window_files_round_trip(width):
    """The dataset's frames have 46 and 71 columns: the footer's lists of 15 or more
    elements (the schema has a column more than the frame) take another header form in
    Thrift's compact protocol."""
    rng = np.random.default_rng(width)
    frame = random_frame(rng, 500, [KINDS[i % 5] for i in range(width)])
    data = native(frame)
    assert_round_trips(frame, data)
    check_statistics(frame, data)


def test_column_names_round_trip_byte_for_byte():
    names = ["host_id", "caf\u00e9", "\u540d\u524d", "with space", "a.b", "x" * 200,
             "\U0001F600"]
    frame = pl.DataFrame([column(n, KINDS[i % 5], [1, None, 3]) if KINDS[i % 5] != "str"
                          else column(n, "str", ["1", None, "3"]) for i, n in enumerate(names)])
    data = native(frame)
    assert_round_trips(frame, data)
    assert pq.ParquetFile(io.BytesIO(data)).schema_arrow.names == names


def test_string_views_in_several_data_buffers_round_trip():
    """Long strings (> 12 bytes) live in a view array's data buffers; a big or
    concatenated column has several of them, which the views index."""
    rng = np.random.default_rng(7)
    parts = [column("s", "str", ["p%d-%s" % (k, "y" * int(rng.integers(13, 40)))
                                 for _ in range(40_000)]) for k in range(4)]
    s = pl.concat(parts, rechunk=False)
    s = pl.concat([s, column("s", "str", ["short", None, "\u00e9" * 20])], rechunk=False)
    frame = pl.DataFrame([s, column("i", "int", range(s.len()))])
    arr = next(iter(pa.RecordBatchReader.from_stream(frame))).column("s")
    assert arr.type == pa.string_view()
    assert len(arr.buffers()) > 3, "the view array should have more than one data buffer"
    data = native(frame)
    assert_round_trips(frame, data)
    check_statistics(frame, data)


# -- 2. statistics ------------------------------------------------------------------------------
def _bits(x: float) -> int:
    return struct.unpack("<Q", struct.pack("<d", x))[0]


def expected_bounds(s: pl.Series):
    """(min, max) a reader must see for the column's non-null, non-NaN values, or None;
    floats: a zero min is -0.0 and a zero max +0.0; strings: UTF-8 bytes, unsigned;
    integers and datetimes: the int64 values."""
    v = s.drop_nulls()
    if s.dtype == pl.Float64:
        a = v.to_numpy()
        a = a[~np.isnan(a)]
        if not a.size:
            return None
        lo, hi = float(a.min()), float(a.max())
        return (-0.0 if lo == 0 else lo), (0.0 if hi == 0 else hi)
    if s.dtype == pl.String:
        b = [x.encode() for x in v.to_list()]
        return (min(b), max(b)) if b else None
    a = v.to_physical().to_numpy()
    return (int(a.min()), int(a.max())) if a.size else None


def check_statistics(frame: pl.DataFrame, data: bytes) -> None:
    md = pq.ParquetFile(io.BytesIO(data)).metadata
    assert md.num_row_groups == 1
    rg = md.row_group(0)
    assert rg.num_rows == frame.height
    for i, name in enumerate(frame.columns):
        s = frame[name]
        cc = rg.column(i)
        assert cc.path_in_schema == name
        assert cc.num_values == frame.height, f"{name}: num_values"
        st_ = cc.statistics
        assert st_ is not None and cc.is_stats_set, f"{name}: no statistics"
        assert st_.has_null_count and st_.null_count == s.null_count(), \
            f"{name}: null_count {st_.null_count}, the frame has {s.null_count()}"
        want = expected_bounds(s)
        assert st_.has_min_max == (want is not None), \
            f"{name}: has_min_max {st_.has_min_max}, want {want is not None} (bounds {want})"
        if want is None:
            continue
        lo, hi = want
        if s.dtype == pl.Float64:
            assert (_bits(st_.min), _bits(st_.max)) == (_bits(lo), _bits(hi)), \
                f"{name}: min/max {st_.min!r}/{st_.max!r}, want {lo!r}/{hi!r}"
        elif s.dtype == pl.String:
            assert (st_.min_raw, st_.max_raw) == (lo, hi), \
                f"{name}: min/max {st_.min_raw!r}/{st_.max_raw!r}, want {lo!r}/{hi!r}"
            assert (st_.min, st_.max) == (lo.decode(), hi.decode())
        elif s.dtype == pl.Int64:
            assert (st_.min, st_.max) == (lo, hi), \
                f"{name}: min/max {st_.min}/{st_.max}, want {lo}/{hi}"
        else:
            assert (st_.min_raw, st_.max_raw) == (lo, hi), \
                f"{name}: min/max {st_.min_raw}/{st_.max_raw}, want {lo}/{hi}"
            utc = s.dtype.time_zone == "UTC"
            for got, us in ((st_.min, lo), (st_.max, hi)):
                want_dt = EPOCH + dt.timedelta(microseconds=us)
                if utc:
                    assert got.tzinfo is not None and got.utcoffset() == dt.timedelta(0), got
                    assert got == want_dt.replace(tzinfo=UTC), f"{name}: {got} != {want_dt}"
                else:
                    assert got.tzinfo is None and got == want_dt, f"{name}: {got} != {want_dt}"


@HYPO
@given(frame=frames())
def test_statistics_give_the_exact_null_count_and_non_nan_min_max_of_every_column(frame):
    check_statistics(frame, native(frame))


@pytest.mark.parametrize("values,lo,hi", [
    ([0.0, -0.0], -0.0, 0.0), ([0.0], -0.0, 0.0), ([-0.0], -0.0, 0.0),
    ([NAN, 0.0, NAN], -0.0, 0.0), ([NAN, -1.0, None, 3.0, NAN], -1.0, 3.0),
    ([NAN, math.inf, -math.inf], -math.inf, math.inf), ([-0.0, 5.0], -0.0, 5.0),
    ([-5.0, 0.0], -5.0, 0.0), ([NEG_NAN, 2.0], 2.0, 2.0), ([None, 1.0, None], 1.0, 1.0),
])
def test_float_statistics_leave_nan_out_and_write_zero_bounds_as_the_format_asks(values, lo, hi):
    frame = pl.DataFrame([column("f", "float", values)])
    data = native(frame)
    st_ = pq.ParquetFile(io.BytesIO(data)).metadata.row_group(0).column(0).statistics
    assert st_.has_min_max
    assert (_bits(st_.min), _bits(st_.max)) == (_bits(lo), _bits(hi)), (st_.min, st_.max)
    check_statistics(frame, data)


@pytest.mark.parametrize("values", [[NAN], [NAN, NEG_NAN, None], [None, None]])
def test_float_columns_of_only_nan_and_null_have_no_min_max(values):
    frame = pl.DataFrame([column("f", "float", values)])
    data = native(frame)
    st_ = pq.ParquetFile(io.BytesIO(data)).metadata.row_group(0).column(0).statistics
    assert not st_.has_min_max
    meta = footer(data)
    stats = meta[4][0][1][0][3].get(12, {})
    assert not {1, 2, 5, 6} & set(stats), f"a NaN or empty bound was written: {stats}"


def test_string_statistics_order_by_unsigned_bytes_and_length():
    frame = pl.DataFrame([column("s", "str", ["abc", "ab", "\u00e9", "z", None, "\x7f"]),
                          column("p", "str", ["ab", "abc", "a", "abc\x00"] + [None, None])])
    data = native(frame)
    rg = pq.ParquetFile(io.BytesIO(data)).metadata.row_group(0)
    s, p = rg.column(0).statistics, rg.column(1).statistics
    assert (s.min_raw, s.max_raw) == (b"ab", "\u00e9".encode()), (s.min_raw, s.max_raw)
    assert (p.min_raw, p.max_raw) == (b"a", b"abc\x00"), (p.min_raw, p.max_raw)
    check_statistics(frame, data)


def test_footer_has_type_defined_column_orders_and_never_a_nan_bound():
    """Readers take min_value/max_value only under the type-defined column order
    (pyarrow reads the deprecated min/max fields otherwise)."""
    rng = np.random.default_rng(3)
    frame = random_frame(rng, 3000, KINDS, modes=["some"] * 5)
    data = native(frame)
    meta = footer(data)
    orders = meta.get(7)
    assert orders is not None and len(orders) == frame.width, f"column_orders: {orders}"
    assert all(o == {1: {}} for o in orders), orders
    for i, chunk in enumerate(meta[4][0][1]):
        stats = chunk[3][12]
        assert 5 in stats and 6 in stats, f"column {i}: no max_value/min_value: {stats}"
        if frame.dtypes[i] == pl.Float64:
            for f in (5, 6):
                assert not math.isnan(struct.unpack("<d", stats[f])[0]), stats


# -- 3. readers prune on the statistics correctly --------------------------------------------
def _kind(dtype) -> str:
    return {pl.Int64: "int", pl.Float64: "float", pl.String: "str"}.get(dtype) or (
        "ts_utc" if dtype.time_zone else "ts")


def _pivot(s: pl.Series, draw):
    """A value to compare the column with: one of its own, or a corner case."""
    vals = s.drop_nulls()
    if s.dtype == pl.Float64:
        vals = vals.filter(vals.is_not_nan())
    kind = _kind(s.dtype)
    edges = {"int": INT_EDGES, "float": [0.0, -0.0, 1.0, -1.0, math.inf, -math.inf],
             "str": ["", "a", "m", "\u00e9", "z" * 13], "ts_utc": TS_EDGES, "ts": TS_EDGES}
    if vals.len() and draw(st.booleans()):
        v = vals[draw(st.integers(0, vals.len() - 1))]
    else:
        v = draw(st.sampled_from(edges[kind]))
    if kind.startswith("ts"):
        if not isinstance(v, dt.datetime):
            v = EPOCH + dt.timedelta(microseconds=v)
        v = v.replace(tzinfo=UTC if kind == "ts_utc" else None)
    return v


def _arrow_scalar(v, dtype):
    if dtype == pl.Int64:
        return pa.scalar(v, pa.int64())
    if dtype == pl.Float64:
        return pa.scalar(v, pa.float64())
    if dtype == pl.String:
        return pa.scalar(v, pa.string())
    return pa.scalar(v, pa.timestamp("us", tz=dtype.time_zone))


OPS = [">", "<", "==", ">=", "<=", "is_null", "is_not_null"]


def _predicates(name: str, op: str, v, dtype):
    """The same predicate for polars and for pyarrow."""
    c, f = pl.col(name), pc.field(name)
    if op == "is_null":
        return c.is_null(), f.is_null()
    if op == "is_not_null":
        return c.is_not_null(), f.is_valid()
    a = _arrow_scalar(v, dtype)
    return {">": (c > v, f > a), "<": (c < v, f < a), "==": (c == v, f == a),
            ">=": (c >= v, f >= a), "<=": (c <= v, f <= a)}[op]


@settings(HYPO, max_examples=40)
@given(frame=st.one_of(small_frames(min_rows=2), seeded_frames(min_rows=2, max_rows=400)),
       n_files=st.integers(2, 8), data=st.data())
def test_scans_of_files_of_slices_prune_only_files_without_matching_rows(frame, n_files, data):
    """One file per slice of the frame (mostly sorted by the predicate's column, so that
    whole files fall outside it): polars' scan, pyarrow's dataset and pq.read_table with
    filters give the rows the same filter gives in memory."""
    frame = frame.with_row_index("row").with_columns(pl.col("row").cast(pl.Int64))
    name = data.draw(st.sampled_from(frame.columns[1:]))
    if data.draw(st.integers(0, 3)):
        frame = frame.sort(name, nulls_last=data.draw(st.booleans()), maintain_order=True)
    piece = -(-frame.height // n_files)
    with tempfile.TemporaryDirectory() as d:
        paths = []
        for k, off in enumerate(range(0, frame.height, piece)):
            p = os.path.join(d, f"part-{k:05d}.parquet")
            Path(p).write_bytes(native(frame.slice(off, piece)))
            paths.append(p)
        lazy = pl.scan_parquet(paths)
        dataset = pads.dataset(paths, format="parquet")
        in_memory = pa.table(frame.to_arrow(compat_level=pl.CompatLevel.oldest()))
        for _ in range(4):
            col = data.draw(st.sampled_from([name] * 3 + frame.columns[1:]))
            s = frame[col]
            op = data.draw(st.sampled_from(OPS))
            pl_pred, pa_pred = _predicates(col, op, _pivot(s, data.draw), s.dtype)
            want = frame.filter(pl_pred)
            got = lazy.filter(pl_pred).collect()
            assert_same(got.sort("row"), want.sort("row"), f"polars scan filter {pl_pred}")
            want_pa = pl.from_arrow(in_memory.filter(pa_pred)).sort("row")
            got_pa = pl.from_arrow(dataset.to_table(filter=pa_pred)).sort("row")
            assert_same(got_pa, want_pa, f"pyarrow dataset filter {pa_pred}")
            got_pq = pl.from_arrow(pq.read_table(paths, filters=pa_pred)).sort("row")
            assert_same(got_pq, want_pa, f"pyarrow read_table filters={pa_pred}")


def test_pruning_keeps_files_whose_only_match_is_a_non_ascii_or_long_string_or_zero():
    """Files whose bounds a signed-byte or prefix-only comparison, or a zero's sign,
    would get wrong: each predicate matches rows in exactly one file."""
    parts = [
        pl.DataFrame([column("s", "str", ["apple", "b" * 30]), column("f", "float", [-0.0, 1.0])]),
        pl.DataFrame([column("s", "str", ["\u00e9t\u00e9", "zzz"]),
                      column("f", "float", [2.0, 3.0])]),
        pl.DataFrame([column("s", "str", ["b" * 31, "b" * 29]), column("f", "float", [NAN, 4.0])]),
        pl.DataFrame([column("s", "str", [None, ""]), column("f", "float", [0.0, None])]),
    ]
    with tempfile.TemporaryDirectory() as d:
        paths = []
        for k, part in enumerate(parts):
            p = os.path.join(d, f"{k}.parquet")
            Path(p).write_bytes(native(part))
            paths.append(p)
        whole = pl.concat(parts)
        for pred in [pl.col("s") > "zzz", pl.col("s") >= "\u00e9", pl.col("s") == "b" * 31,
                     pl.col("s") > "b" * 30, pl.col("s") == "", pl.col("s") < "a",
                     pl.col("f") == 0.0, pl.col("f") <= -0.0, pl.col("f") >= 0.0,
                     pl.col("f") > 3.5, pl.col("s").is_null(), pl.col("f").is_null()]:
            assert_same(pl.scan_parquet(paths).filter(pred).collect(), whole.filter(pred),
                        f"polars {pred}")
        table = pa.table(whole.to_arrow(compat_level=pl.CompatLevel.oldest()))
        for pred in [pc.field("s") > "zzz", pc.field("s") >= "\u00e9",
                     pc.field("s") == "b" * 31, pc.field("s") > "b" * 30,
                     pc.field("s") == "", pc.field("f") == 0.0, pc.field("f") <= -0.0,
                     pc.field("f") > 3.5, pc.field("s").is_null()]:
            assert_same(pl.from_arrow(pads.dataset(paths).to_table(filter=pred)),
                        pl.from_arrow(table.filter(pred)), f"pyarrow {pred}")


# -- 4. slices and chunks --------------------------------------------------------------------------
def _offsets(frame: pl.DataFrame) -> list:
    batch = next(iter(pa.RecordBatchReader.from_stream(frame)))
    return [col.offset for col in batch.columns]


@pytest.mark.parametrize("offset,length", [(7, 50), (1, 1), (3, 100), (8, 64), (13, 1987),
                                           (4095, 7)])
def test_sliced_frames_are_read_from_their_offset(offset, length):
    """A slice shares its parent's buffers (Arrow arrays with a non-zero offset, validity
    bits shifted when it is not a multiple of 8): the file holds the slice's rows."""
    rng = np.random.default_rng(offset * 7919 + length)
    parent = random_frame(rng, 4200, KINDS + ("int", "str"),
                          modes=["some", "some", "some", "runs", "some", "none", "all"])
    frame = parent.slice(offset, length)
    assert any(o == offset for o in _offsets(frame)), \
        f"the slice should reach the encoder with offset {offset}: {_offsets(frame)}"
    data = native(frame)
    assert_round_trips(frame, data)
    check_statistics(frame, data)


@HYPO
@given(frame=seeded_frames(min_rows=1, max_rows=600), data=st.data())
def test_random_slices_round_trip_with_their_own_statistics(frame, data):
    off = data.draw(st.integers(0, frame.height - 1))
    length = data.draw(st.integers(1, frame.height - off))
    part = frame.slice(off, length)
    d = native(part)
    assert_round_trips(part, d)
    check_statistics(part, d)


def test_slices_with_no_nulls_of_a_parent_with_nulls_round_trip():
    frame = pl.DataFrame([column("i", "int", [None] * 9 + list(range(30)) + [None]),
                          column("s", "str", [None] * 9 + [("v%02d-" % i) * 5 for i in range(30)]
                                 + [None]),
                          column("f", "float", [None] * 9 + [float(i) for i in range(30)]
                                 + [None])])
    part = frame.slice(9, 30)
    assert part.null_count().sum_horizontal().item() == 0
    data = native(part)
    assert_round_trips(part, data)
    check_statistics(part, data)


def test_multi_chunk_frames_round_trip_every_chunk():
    rng = np.random.default_rng(11)
    a = random_frame(rng, 333, KINDS, modes=["some"] * 5)
    b = random_frame(rng, 77, KINDS, modes=["none", "all", "runs", "some", "some"])
    c = random_frame(rng, 1000, KINDS, modes=["some"] * 5)
    frame = pl.concat([a, b.slice(5, 60), c], rechunk=False)
    assert frame.n_chunks() > 1
    assert frame.height == 333 + 60 + 1000
    data = native(frame)
    assert_round_trips(frame, data)
    check_statistics(frame, data)


def _module():
    try:
        import foliowatch_parquetwrite as mod
    except ImportError:
        raise AssertionError(_encoder_status()) from None
    return mod


def test_every_batch_of_a_multi_batch_arrow_stream_is_written():
    """The encoder's interface is an Arrow stream of record batches (polars sends one;
    another producer sends several, as pyarrow does here), utf8, large utf8 and string
    views alike: every batch's rows are in the file, in order."""
    mod = _module()
    rng = np.random.default_rng(5)
    frames_ = [random_frame(rng, n, ["int", "float", "str", "ts_utc", "ts", "str", "str"],
                            modes=["some"] * 7) for n in (100, 1, 37, 500)]
    frames_ = [f.rename(dict(zip(f.columns, frames_[0].columns))) for f in frames_]
    tables = [pa.table(f.to_arrow(compat_level=pl.CompatLevel.oldest())) for f in frames_]
    schema = pa.schema([pa.field("int_0", pa.int64()), pa.field("float_1", pa.float64()),
                        pa.field("str_2", pa.string()),
                        pa.field("ts_utc_3", pa.timestamp("us", "UTC")),
                        pa.field("ts_4", pa.timestamp("us")),
                        pa.field("str_5", pa.large_string()),
                        pa.field("str_6", pa.string_view())])
    table = pa.concat_tables([t.cast(schema) for t in tables])
    table = pa.concat_tables([table, table.slice(50, 200)])   # offset batches too
    assert len(table.to_batches()) > 1
    data = mod.write(table.__arrow_c_stream__(), native_parquet._compress(),
                     native_parquet.CREATED_BY)
    assert data is not None
    want = pl.concat(frames_ + [pl.concat(frames_).slice(50, 200)])
    assert_round_trips(want, data)
    check_statistics(want, data)


# -- 5. column types the encoder does not write ------------------------------------------
UNSUPPORTED = {
    "Boolean": pl.Series("x", [True, None, False]),
    "Int32": pl.Series("x", [1, None, -3], dtype=pl.Int32),
    "Int8": pl.Series("x", [1, None, -3], dtype=pl.Int8),
    "UInt32": pl.Series("x", [1, None, 3], dtype=pl.UInt32),
    "UInt64": pl.Series("x", [2**64 - 1, None, 3], dtype=pl.UInt64),
    "Float32": pl.Series("x", [1.5, None, -0.0], dtype=pl.Float32),
    "List": pl.Series("x", [[1, 2], None, []], dtype=pl.List(pl.Int64)),
    "Struct": pl.Series("x", [{"a": 1, "b": "x"}, None, {"a": None, "b": "y"}]),
    "Datetime_ns": pl.Series("x", [1, None, 3], dtype=pl.Int64).cast(pl.Datetime("ns")),
    "Datetime_ns_UTC": pl.Series("x", [1, None, 3], dtype=pl.Int64).cast(
        pl.Datetime("ns", "UTC")),
    "Datetime_ms": pl.Series("x", [1, None, 3], dtype=pl.Int64).cast(pl.Datetime("ms")),
    "Datetime_us_Europe/Paris": pl.Series("x", [1, None, 3], dtype=pl.Int64).cast(
        pl.Datetime("us", "Europe/Paris")),
    "Date": pl.Series("x", [dt.date(2026, 1, 1), None, dt.date(1969, 12, 31)]),
    "Time": pl.Series("x", [dt.time(1, 2, 3), None, dt.time(0)]),
    "Duration": pl.Series("x", [dt.timedelta(seconds=1), None, dt.timedelta(0)]),
    "Binary": pl.Series("x", [b"\x00\xff", None, b""]),
    "Decimal": pl.Series("x", [Decimal("1.25"), None, Decimal("-3.50")],
                         dtype=pl.Decimal(10, 2)),
    "Categorical": pl.Series("x", ["a", None, "b"], dtype=pl.Categorical),
    "Null": pl.Series("x", [None, None, None]),
}


def _with_supported(s: pl.Series) -> pl.DataFrame:
    return pl.DataFrame([column("i", "int", [1, None, 3]), s.alias("x"),
                         column("s", "str", ["a" * 20, "", None])])


@pytest.mark.parametrize("name", list(UNSUPPORTED))
def test_frames_with_an_unsupported_column_type_are_written_by_polars_and_read_back_equal(name):
    frame = _with_supported(UNSUPPORTED[name])
    data = native_parquet.parquet_bytes(frame)
    md = pq.ParquetFile(io.BytesIO(data)).metadata
    assert md.created_by.startswith("Polars"), md.created_by
    got = read_polars(data)
    assert got.schema == frame.schema, (got.schema, frame.schema)
    assert got.equals(frame, null_equal=True), (got, frame)


@pytest.mark.parametrize("name", list(UNSUPPORTED))
def test_native_encoder_declines_a_frame_with_an_unsupported_column_type(name):
    frame = _with_supported(UNSUPPORTED[name])
    native(frame.drop("x"))      # the encoder is there, and writes the other columns
    assert native_parquet.native_bytes(frame) is None, \
        f"the encoder wrote a file with a column of type {frame['x'].dtype}"
    assert native_parquet.native_bytes(frame.select("x")) is None


# -- 6. turning it off, and running without it ----------------------------------------------
def _small() -> pl.DataFrame:
    return pl.DataFrame([column("i", "int", [1, None, 3]), column("f", "float", [NAN, -0.0, None]),
                         column("s", "str", ["\u00e9" * 13, None, ""]),
                         column("t", "ts_utc", [1, 2, None]), column("n", "ts", [None, 5, 6])])


def test_writer_env_polars_turns_the_native_encoder_off(monkeypatch):
    frame = _small()
    native(frame)
    monkeypatch.setenv(native_parquet.WRITER_ENV, "polars")
    assert_polars_writes(frame)


def assert_polars_writes(frame: pl.DataFrame) -> None:
    """The compiled encoder declines ``frame`` and parquet_bytes gives polars' file."""
    assert native_parquet.native_bytes(frame) is None
    data = native_parquet.parquet_bytes(frame)
    assert pq.ParquetFile(io.BytesIO(data)).metadata.created_by.startswith("Polars")
    assert_round_trips(frame, data)


def test_parquet_bytes_falls_back_to_polars_when_the_module_cannot_be_imported(monkeypatch):
    frame = _small()
    monkeypatch.setitem(sys.modules, "foliowatch_parquetwrite", None)
    assert_polars_writes(frame)


def test_parquet_bytes_falls_back_to_polars_without_zstandard(monkeypatch):
    frame = _small()
    monkeypatch.setitem(sys.modules, "zstandard", None)
    assert_polars_writes(frame)


def test_parquet_bytes_is_the_native_file_when_the_encoder_applies():
    frame = _small()
    assert native_parquet.parquet_bytes(frame) == native(frame)


# -- 7. what the file says about itself ---------------------------------------------------------
def test_metadata_one_row_group_optional_columns_zstd_logical_types_and_created_by():
    rng = np.random.default_rng(1)
    frame = random_frame(rng, 1234, KINDS, modes=["some", "none", "some", "all", "some"])
    data = native(frame)
    pf = pq.ParquetFile(io.BytesIO(data))
    md = pf.metadata
    assert md.created_by.startswith("foliowatch")
    assert md.created_by == native_parquet.CREATED_BY
    assert md.num_row_groups == 1 and md.num_rows == frame.height
    assert md.num_columns == frame.width
    want = {
        pl.Int64: ("INT64", {"Type": "None"}, "NONE"),
        pl.Float64: ("DOUBLE", {"Type": "None"}, "NONE"),
        pl.String: ("BYTE_ARRAY", {"Type": "String"}, "UTF8"),
    }
    for i, name in enumerate(frame.columns):
        sc = md.schema.column(i)
        dtype = frame.schema[name]
        assert sc.name == name and sc.path == name
        assert (sc.max_definition_level, sc.max_repetition_level) == (1, 0), \
            f"{name}: not OPTIONAL (def {sc.max_definition_level}, rep {sc.max_repetition_level})"
        logical = json.loads(sc.logical_type.to_json())
        if dtype in want:
            phys, log, conv = want[dtype]
            assert (sc.physical_type, logical, sc.converted_type) == (phys, log, conv), \
                (name, sc.physical_type, logical, sc.converted_type)
        else:
            utc = dtype.time_zone == "UTC"
            assert sc.physical_type == "INT64"
            assert logical["Type"] == "Timestamp", logical
            assert logical["timeUnit"] == "microseconds", logical
            assert logical["isAdjustedToUTC"] is utc, logical
            # the converted type TIMESTAMP_MICROS means adjusted to UTC: only with the zone
            assert sc.converted_type == ("TIMESTAMP_MICROS" if utc else "NONE"), \
                (name, sc.converted_type)
        cc = md.row_group(0).column(i)
        assert cc.compression == "ZSTD", (name, cc.compression)
        assert not cc.has_dictionary_page and set(cc.encodings) <= {"PLAIN", "RLE"}, \
            (name, cc.encodings)
        assert "PLAIN" in cc.encodings
    arrow = pf.schema_arrow
    assert all(f.nullable for f in arrow)
    assert arrow.field("str_2").type == pa.string()
    assert arrow.field("ts_utc_3").type == pa.timestamp("us", "UTC")
    assert arrow.field("ts_4").type == pa.timestamp("us")

    meta = footer(data)
    assert meta[3] == frame.height and len(meta[4]) == 1
    schema = meta[2]
    assert schema[0].get(5) == frame.width and 1 not in schema[0]
    for el, dtype in zip(schema[1:], frame.dtypes):
        assert el[3] == 1, f"{el[4]!r}: repetition_type {el.get(3)}, want OPTIONAL (1)"
        # converted types (for readers older than logical types): UTF8 (0) for strings,
        # TIMESTAMP_MICROS (10) only where it is adjusted to UTC, as that type means
        want_ct = {pl.String: 0, pl.Datetime("us", "UTC"): 10}.get(dtype)
        assert el.get(6) == want_ct, f"{el[4]!r}: converted_type {el.get(6)}, want {want_ct}"


def test_each_column_is_one_zstd_compressed_data_page_v1_of_plain_values_and_rle_levels():
    rng = np.random.default_rng(2)
    frame = random_frame(rng, 5000, KINDS + KINDS, modes=["some", "none", "all", "runs",
                                                           "some"] * 2)
    data = native(frame)
    meta = footer(data)
    assert meta[6].decode() == native_parquet.CREATED_BY
    rg = meta[4][0]
    assert rg[3] == frame.height
    dz = zstandard.ZstdDecompressor()
    for i, chunk in enumerate(rg[1]):
        cm = chunk[3]
        assert cm[4] == 6, f"column {i}: codec {cm[4]}, want ZSTD (6)"
        assert cm[3] == [frame.columns[i].encode()]
        assert 11 not in cm, f"column {i}: a dictionary page"
        t = Thrift(data, cm[9])
        header = t.struct()
        assert header[1] == 0, f"column {i}: page type {header[1]}, want DATA_PAGE (0)"
        dph = header[5]
        assert dph[1] == frame.height, f"column {i}: {dph[1]} values in the page"
        assert (dph[2], dph[3]) == (0, 3), f"column {i}: encoding {dph[2]}, levels {dph[3]}"
        body = data[t.pos:t.pos + header[3]]
        assert len(body) == header[3]
        raw = dz.decompressobj().decompress(body)
        assert len(raw) == header[2], \
            f"column {i}: page of {len(raw)} bytes, the header says {header[2]}"
        assert t.pos + header[3] - cm[9] == cm[7], \
            f"column {i}: the chunk is not exactly one page ({cm[7]} bytes)"
        assert cm[6] == (t.pos - cm[9]) + header[2], f"column {i}: total_uncompressed_size"
        levels = struct.unpack("<I", raw[:4])[0]
        assert 0 < levels < len(raw), f"column {i}: definition levels of {levels} bytes"


# -- 8. threads ---------------------------------------------------------------------------------
def test_four_threads_writing_different_frames_concurrently_all_round_trip():
    rng = np.random.default_rng(8)
    frames_ = []
    for k in range(200):
        kinds = [KINDS[int(j)] for j in rng.integers(0, 5, int(rng.integers(1, 8)))]
        n = int(rng.integers(1, 3000))
        f = random_frame(rng, n, kinds)
        off = int(rng.integers(0, 5))
        frames_.append(f.slice(min(off, n - 1), n))
    sequential = [native(f) for f in frames_]
    start = threading.Barrier(4)

    def work(i):
        if i < 4:
            start.wait(timeout=30)
        return native_parquet.native_bytes(frames_[i])

    with ThreadPoolExecutor(4) as ex:
        concurrent = list(ex.map(work, range(len(frames_))))
    for i, (f, data) in enumerate(zip(frames_, concurrent)):
        assert data is not None, f"frame {i}: no file ({_encoder_status()})"
        assert_round_trips(f, data)
        assert data == sequential[i], f"frame {i}: written differently from another thread"


def test_encoder_calls_the_python_allocator_only_while_holding_the_gil():
    """With CPython's debug allocator hooks (PYTHONMALLOC=debug), a PyMem_* call made
    without the GIL is a fatal error; the encoder runs the same with them as without."""
    _module()
    code = (
        "import polars as pl\n"
        "from concurrent.futures import ThreadPoolExecutor\n"
        "from foliowatch.pipeline import native_parquet as n\n"
        "f = pl.DataFrame({'i': list(range(20000)), 's': ['x' * 20] * 20000})\n"
        "with ThreadPoolExecutor(2) as ex:\n"
        "    out = list(ex.map(lambda _: n.native_bytes(f), range(4)))\n"
        "assert all(o is not None for o in out), out\n"
        "print('ok')\n")
    env = dict(os.environ, PYTHONMALLOC="debug")
    env.pop(native_parquet.WRITER_ENV, None)
    p = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0 and p.stdout.strip() == "ok", \
        f"exit {p.returncode}\nstdout: {p.stdout[-2000:]}\nstderr: {p.stderr[-3000:]}"
