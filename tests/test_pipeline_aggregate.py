"""Windows are decided by the records in offset order, never by batch boundaries: the
same records in one batch or in many give bit-identical rows; dedupe memory stays
bounded; an end-of-input close makes earlier records late and leaves later ones alone."""

from __future__ import annotations

import json
import random

import polars as pl

from foliowatch import schema as wire
from foliowatch.pipeline.aggregate import (SEEN_SCHEMA, BatchOutcome, PartitionMeta,
                                           WindowAggregator, _seq_gaps)
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


class _WholeMemoryAggregator(WindowAggregator):
    """The oracle: the dedupe and sequence-gap rules as first written, every batch
    looked up in (and every boot's highest seq grouped from) the whole dedupe memory."""

    def process(self, good, next_offsets):
        out = BatchOutcome()
        for p, off in next_offsets.items():
            m = self.meta.setdefault(p, PartitionMeta())
            m.next_offset = max(m.next_offset, off)
        if good.height == 0:
            return out
        good = good.sort("partition", "offset")
        wm_state = {p: (m.watermark if m.watermark is not None else float("-inf"))
                    for p, m in self.meta.items()}
        closed = {p: m.closed_until for p, m in self.meta.items() if m.closed_until is not None}
        before = pl.max_horizontal(
            pl.col("ts").cum_max().shift(1).over("partition").fill_null(float("-inf")),
            pl.col("partition").replace_strict(wm_state, default=float("-inf"),
                                               return_dtype=pl.Float64))
        good = good.with_columns(
            ((pl.col("ts") < before - self.lateness_s)
             | (pl.col("ts") < pl.col("partition").replace_strict(
                 closed, default=float("-inf"), return_dtype=pl.Float64))).alias("late"))
        out.late_rows = sorted(good.filter(pl.col("late"))["row"].to_list())
        good = good.filter(~pl.col("late")).drop("late")
        if good.height:
            for p, mx in good.group_by("partition").agg(pl.col("ts").max()).iter_rows():
                m = self.meta.setdefault(p, PartitionMeta())
                m.watermark = mx if m.watermark is None else max(m.watermark, mx)
        keys = ["partition", "host_id", "boot_id", "seq"]
        fresh = good.filter(pl.struct(keys).is_first_distinct())
        if self._seen.height:
            fresh = fresh.join(self._seen.select(keys), on=keys, how="anti",
                               maintain_order="left")
        out.duplicates = good.height - fresh.height
        out.accepted = fresh.height
        boot = keys[:3]
        prev = self._seen.group_by(boot).agg(pl.col("seq").max().alias("prev"))
        out.missing, out.gaps = _seq_gaps(fresh.select(*boot, "seq")
                                          .join(prev, on=boot, how="left"))
        self._seen = pl.concat([self._seen, fresh.select(list(SEEN_SCHEMA))])
        horizon = {p: (m.watermark - self.lateness_s if m.watermark is not None
                       else float("-inf")) for p, m in self.meta.items()}
        self._seen = self._seen.filter(pl.col("ts") >= pl.col("partition").replace_strict(
            horizon, default=float("-inf"), return_dtype=pl.Float64))
        if fresh.height:
            self._add_partials(fresh)
        return out


def _hostile_stream(seed, n_hosts=9, steps=70):
    """(partition, value) in arrival order: several partitions and boots, duplicates
    in and across batches, arrivals out of order, records hours late, seq gaps, records
    with members the table does not name, and records the compiled decoder refuses
    (whitespace, reordered members) that the Python path accepts."""
    rng = random.Random(seed)
    t0 = 1764000000.0
    out = []
    for i in range(steps):
        step = []
        for h in range(n_hosts):
            if rng.random() < 0.08:
                continue                        # a sample lost on the way: a seq gap
            boot = "b1" if i < steps // 2 or h % 3 else "b2"      # some hosts reboot
            r = wire.example_record(seq=i, ts=t0 + 10 * i + rng.uniform(-4, 4),
                                    host_id=f"h{h}", boot_id=boot,
                                    interval_s=10.0 + rng.random())
            r["gauges"]["frag_unusable_1m"] = rng.random()
            r["counters"]["compact_stall"] = rng.randrange(100)
            if rng.random() < 0.03:
                r["ts"] = t0 + 10 * i - rng.choice([400, 4000, 40000])   # late
            u = rng.random()
            if u < 0.05:
                value = json.dumps({**r, "x_future_member": {"a": 1}}).encode()
            elif u < 0.10:
                value = json.dumps(r, indent=1).encode()   # whitespace: Python path
            elif u < 0.13:
                value = json.dumps(dict(reversed(list(r.items())))).encode()
            else:
                value = wire.encode(r)
            step.append((h % 3, value))
        rng.shuffle(step)                       # out of order within a step
        out += step
        if out and rng.random() < 0.15:         # a copy delivered again later
            out += rng.sample(out[-60:], k=min(len(out), rng.randint(1, 8)))
    return out


def _batches(stream, rng):
    offsets = {}
    pos = 0
    while pos < len(stream):
        size = rng.choice([1, 7, 30, 111, 250])
        chunk = stream[pos:pos + size]
        pos += size
        d = decode_batch([v for _p, v in chunk])
        parts, offs = [], []
        for p, _v in chunk:
            parts.append(p)
            offs.append(offsets.get(p, 0))
            offsets[p] = offs[-1] + 1
        good = d.good.with_columns(
            pl.Series(parts, dtype=pl.Int64).gather(d.good["row"]).alias("partition"),
            pl.Series(offs, dtype=pl.Int64).gather(d.good["row"]).alias("offset"))
        yield good, {p: offsets[p] for p in set(parts)}, d.python_accepted


def test_dedupe_and_gaps_against_the_whole_memory_on_hostile_batches():
    """The dedupe memory is looked up only for records at or below their boot's highest
    remembered seq: on 40 generated streams in batches of 1 to 250, with checkpoints
    restored and partitions dropped on the way, every batch's counts, gaps and late
    records, every closed window and every checkpoint equal the oracle's."""
    python_path = 0
    for seed in range(40):
        rng = random.Random(seed)
        lateness = rng.choice([0.0, 30.0, 60.0, 300.0])
        new, old = WindowAggregator((60, 3600), lateness), \
            _WholeMemoryAggregator((60, 3600), lateness)
        for k, (good, nxt, rescued) in enumerate(_batches(_hostile_stream(seed), rng)):
            python_path += rescued
            a, b = new.process(good, nxt), old.process(good, nxt)
            assert (a.accepted, a.duplicates, a.missing, sorted(a.gaps), a.late_rows) == \
                (b.accepted, b.duplicates, b.missing, sorted(b.gaps), b.late_rows), (seed, k)
            _same_windows(new.close_ready(), old.close_ready())
            if k % 9 == 4:                      # a checkpoint, restored (a restart)
                for p in new.partitions():
                    snap_a, snap_b = new.snapshot(p), old.snapshot(p)
                    assert snap_a[0] == snap_b[0]
                    assert snap_a[1].sort(pl.all()).equals(snap_b[1].sort(pl.all()))
                    assert snap_a[2].sort(pl.all()).equals(snap_b[2].sort(pl.all()))
                    new.restore(p, *snap_a)
                    old.restore(p, *snap_b)
            if k % 13 == 12:                    # a partition revoked
                p = rng.choice([0, 1, 2])
                new.drop(p)
                old.drop(p)
        _same_windows(new.close_ready(final=True), old.close_ready(final=True))
    assert python_path > 100                    # the slow path was exercised


def _same_windows(xs, ys):
    key = lambda c: (c.partition, c.window_s, c.window_start)
    xs, ys = sorted(xs, key=key), sorted(ys, key=key)
    assert [(key(c), c.first_offset, c.last_offset) for c in xs] == \
        [(key(c), c.first_offset, c.last_offset) for c in ys]
    for x, y in zip(xs, ys):
        assert x.hosts.equals(y.hosts) and x.cohorts.equals(y.cohorts)
