"""Windows are decided by the records in offset order, never by batch boundaries: the
same records in one batch or in many give bit-identical rows; dedupe memory stays
bounded; an end-of-input close makes earlier records late and leaves later ones alone."""

from __future__ import annotations

import random

import polars as pl

from foliowatch import schema as wire
from foliowatch.pipeline.aggregate import WindowAggregator
from foliowatch.pipeline.decode import decode_batch


def _batch(values, partition, first_offset):
    d = decode_batch(values)
    return d.good.with_columns(pl.lit(partition, pl.Int64).alias("partition"),
                               (pl.col("row") + first_offset).alias("offset"))


def _records(n_hosts=12, n=80, seed=1):
    rng = random.Random(seed)
    out = []
    for i in range(n):
        for h in range(n_hosts):
            r = wire.example_record(seq=i, ts=1764000000.0 + 10 * i + rng.uniform(-3, 3),
                                    host_id=f"h{h}", interval_s=10.0 + rng.random())
            r["gauges"]["frag_unusable_1m"] = rng.random()
            r["counters"]["compact_stall"] = rng.randrange(100)
            out.append(wire.encode(r))
            if rng.random() < 0.05:
                out.append(out[-1])            # a duplicate
    return out


def _run(values, sizes, lateness=60.0):
    agg = WindowAggregator((60, 3600), lateness)
    closed, pos = [], 0
    for size in sizes:
        chunk = values[pos:pos + size]
        if not chunk:
            break
        agg.process(_batch(chunk, 0, pos), {0: pos + len(chunk)})
        closed += agg.close_ready()
        pos += size
    closed += agg.close_ready(final=True)
    return agg, sorted(closed, key=lambda c: (c.window_s, c.window_start))


def test_batch_boundaries_do_not_change_any_window():
    values = _records()
    _a, one = _run(values, [len(values)])
    rng = random.Random(9)
    sizes = [rng.randint(1, 97) for _ in range(len(values))]
    _b, many = _run(values, sizes)
    assert [(c.window_s, c.window_start, c.first_offset, c.last_offset) for c in one] == \
        [(c.window_s, c.window_start, c.first_offset, c.last_offset) for c in many]
    for x, y in zip(one, many):
        assert x.hosts.equals(y.hosts) and x.cohorts.equals(y.cohorts)


def test_dedupe_memory_is_bounded_by_the_lateness_horizon():
    values = _records(n_hosts=10, n=300)
    agg, _ = _run(values, [200] * 100, lateness=60.0)
    # 10 hosts, 10 s intervals, 60 s horizon: about 7 identities per host remain
    assert agg._seen.height <= 10 * 8


def test_after_an_end_of_input_close_earlier_records_are_late_later_ones_count():
    agg = WindowAggregator((60,), 30.0)
    mk = lambda seq, ts: wire.encode(wire.example_record(seq=seq, ts=ts))
    agg.process(_batch([mk(0, 1764000005.0), mk(1, 1764000015.0)], 0, 0), {0: 2})
    assert len(agg.close_ready(final=True)) == 1
    out = agg.process(_batch([mk(2, 1764000025.0), mk(3, 1764000065.0)], 0, 2), {0: 4})
    assert out.late_rows == [0] and out.accepted == 1
