"""Hostile input for the pipeline, and the property it must keep: it never crashes and
never lets a bad record into an aggregate.

``messages()`` is a hypothesis strategy for one micro-batch of raw message values:
valid records mixed with random bytes, truncated JSON, huge messages, deep nesting,
label values built to explode cardinality, NaN and infinities, negative and absurd
counters, far-future and far-past timestamps, other schema versions, replayed and
reordered sequences. ``check_batch(values)`` runs one batch through the real pipeline
(decode, validate, dedupe, windows; the windows are kept in memory instead of written)
and checks it against ``schema.decode``, the contract's reference implementation:

- nothing raises;
- every message is counted once: accepted + duplicates + invalid + late = records;
- every message ``schema.decode`` refuses is in the DLQ with a reason, and nothing the
  pipeline aggregated is one of them;
- the windows hold exactly the accepted records (samples per filesystem), and every
  value in them is finite (no NaN or infinity reaches a host or cohort row).

Used by tests/faults/test_faults_hostile.py (a short run) and benchmarks/fuzz_pipeline.py
(minutes).
"""

from __future__ import annotations

import json
from typing import Any, Dict, List, Optional, Sequence

from hypothesis import strategies as st

from foliowatch import schema as wire

NOW = 1764000000.0


class MemoryDLQ:
    def __init__(self):
        self.records: List[Dict[str, Any]] = []

    def send(self, rec):
        self.records.append(rec)

    def flush(self, timeout: float = 0.0):
        pass

    def close(self, timeout: float = 0.0):
        pass


class MemoryWriter:
    """The dataset sink, in memory (the property is about what reaches it)."""

    def __init__(self):
        self.windows = []

    def start_windows(self, closed):
        from foliowatch.pipeline.sinks import PendingFiles
        self.windows.extend(closed)
        return PendingFiles(self, [], [])


# -- the strategy ---------------------------------------------------------------------
hosts = st.sampled_from([f"fuzz-{i}" for i in range(4)])
BAD_NUMBERS = [float("nan"), float("inf"), float("-inf"), -1, -(2 ** 63), 2 ** 63, 2 ** 64,
               10 ** 30, 1e308, -1e308, 0.5, "12", None, True, [], {}]
BAD_TS = [0, -1, 1e12, 253402300800.0, 1e18, NOW + 86400 * 365, 946684800.0]
PATHS = [("seq",), ("ts",), ("interval_s",), ("counters", "compact_stall"),
         ("counters", "nr_dirtied"), ("gauges", "uptime_s"), ("labels", "page_size"),
         ("labels", "cpus"), ("labels", "mem_bytes"),
         ("mounts", 0, "counters", "write_bytes")]


def _set(rec: Dict[str, Any], path, value) -> None:
    node = rec
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = value


@st.composite
def valid_record(draw, host=None):
    rec = wire.example_record(seq=draw(st.integers(0, 60)),
                              ts=NOW + draw(st.integers(0, 600)) * 1.0,
                              host_id=host or draw(hosts))
    rec["counters"]["compact_stall"] = draw(st.integers(0, 10 ** 6))
    return rec


def _nest(depth: int) -> Any:
    v: Any = 1
    for _ in range(depth):
        v = {"a": v}
    return v


@st.composite
def hostile_value(draw) -> bytes:
    kind = draw(st.sampled_from(["valid"] * 4 + ["bad_number", "bad_ts", "label", "schema",
                                 "nesting", "huge", "bytes", "truncated", "unknown_field",
                                 "extreme_valid"]))
    rec = draw(valid_record())
    if kind == "valid":
        return wire.encode(rec)
    if kind == "bad_number":
        _set(rec, draw(st.sampled_from(PATHS)), draw(st.sampled_from(BAD_NUMBERS)))
    elif kind == "bad_ts":
        rec["ts"] = draw(st.sampled_from(BAD_TS))
    elif kind == "label":
        # cardinality explosion (valid alphabet, a new value every time) or hostile text
        key = draw(st.sampled_from(["kernel", "fleet", "role", "arch", "instance_type"]))
        rec["labels"][key] = draw(st.one_of(
            st.from_regex(r"[a-z0-9][a-z0-9._-]{0,40}", fullmatch=True),
            st.text(max_size=80)))
    elif kind == "schema":
        rec["schema"] = draw(st.sampled_from([0, 2, 99, "1", 1.0, None]))
    elif kind == "nesting":
        rec[draw(st.sampled_from(["labels", "counters", "extra"]))] = _nest(
            draw(st.integers(2, 5000)))
        try:
            return json.dumps(rec).encode()
        except RecursionError:
            return b'{"labels":' + b'{"a":' * 5000 + b"1" + b"}" * 5001
    elif kind == "huge":
        rec["agent"] = "x" * draw(st.sampled_from([70_000, 300_000, 2_000_000]))
    elif kind == "bytes":
        return draw(st.binary(max_size=300))
    elif kind == "truncated":
        data = wire.encode(rec)
        return data[:draw(st.integers(0, len(data) - 1))]
    elif kind == "unknown_field":
        rec[draw(st.text(min_size=1, max_size=10))] = 1
    elif kind == "extreme_valid":
        # the largest values the contract admits
        rec["counters"]["compact_stall"] = wire.INT64_MAX
        rec["interval_s"] = wire.MAX_INTERVAL_S
    return json.dumps(rec, allow_nan=True).encode()


@st.composite
def messages(draw) -> List[bytes]:
    """One batch: hostile values, with some of them replayed and the batch reordered."""
    values = draw(st.lists(hostile_value(), min_size=1, max_size=40))
    replays = draw(st.lists(st.sampled_from(values), max_size=8))
    values = values + replays
    return draw(st.permutations(values))


# -- the property ---------------------------------------------------------------------
def _decodes(value: bytes) -> Optional[Dict[str, Any]]:
    try:
        return wire.decode(value)
    except Exception:   # any refusal, whatever its type: the pipeline must refuse too
        return None


def check_batch(values: Sequence[bytes], now: float = NOW + 300) -> Dict[str, int]:
    """Run one batch through the pipeline and check the property; returns its counts."""
    import polars as pl

    from foliowatch.pipeline.engine import Pipeline, PipelineConfig

    dlq, writer = MemoryDLQ(), MemoryWriter()
    p = Pipeline(PipelineConfig(output="unused", max_future_s=0.0), writer, dlq)
    n = len(values)
    st_ = p.process(list(values), [0] * n, list(range(n)), "fuzz", [b"k"] * n)
    p.finish()
    assert st_.records == n
    assert st_.accepted + st_.duplicates + st_.invalid + st_.late == n, st_
    parked = {d["offset"]: d["reason"] for d in dlq.records}
    assert len(parked) == len(dlq.records) == st_.invalid + st_.late
    first_copies, accepted_fs = set(), 0
    for i, v in enumerate(values):
        rec = _decodes(v)
        if rec is None:
            assert i in parked and parked[i], f"bad record {v[:200]!r} not in the DLQ"
        elif i not in parked:
            ident = (rec["host_id"], rec["boot_id"], rec["seq"])
            if ident not in first_copies:          # the first copy in offset order counts
                first_copies.add(ident)
                accepted_fs += len(wire.fs_of(rec))
    assert st_.accepted == len(first_copies), (st_, len(first_copies))
    # duplicates are records too: the windows hold the accepted ones only
    samples = {w: 0 for w in p.agg.windows_s}
    for cw in writer.windows:
        samples[cw.window_s] += int(cw.hosts["samples"].sum())
        for frame in (cw.hosts, cw.cohorts):
            floats = [c for c, t in frame.schema.items() if t in (pl.Float64, pl.Float32)]
            if floats and frame.height:
                bad = frame.select(pl.any_horizontal(
                    [pl.col(c).is_nan() | pl.col(c).is_infinite() for c in floats]).any())
                assert not bad.item(), f"non-finite value in a window: {frame}"
    assert all(s == accepted_fs for s in samples.values()), (samples, accepted_fs)
    return {"records": n, "accepted": st_.accepted, "invalid": st_.invalid,
            "late": st_.late, "duplicates": st_.duplicates}
