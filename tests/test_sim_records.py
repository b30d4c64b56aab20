"""Simulated records: deterministic with a seed, every one valid wire schema v1, the
Parquet form equal to the JSON form, counters reset only at reboots, and the delivery
faults (lost, late, duplicated, skewed) present as configured."""
from __future__ import annotations

import json
import re

import numpy as np
import polars as pl
import pytest

from foliowatch import schema
from foliowatch.simulator import (ground_truth, host_table, load_scenario, simulate_frame,
                                  to_wire_frame, to_wire_json, write_files)
from foliowatch.simulator.fleet import REASON_ROLLBACK, REASON_ROLLOUT, build_plan

# a busy little fleet: the rollout, reboots, episodes and faults all happen within 3 h
FAULTS = {"lost": 0.01, "late": 0.01, "duplicate": 0.01, "random_reboot_per_host_day": 0.5,
          "noisy_neighbour_per_host_day": 0.5, "failing_disk_per_host_day": 0.2,
          "agent_outage_per_host_day": 2.0}


@pytest.fixture(scope="module")
def scenario():
    sc = load_scenario("rollback", hosts=60, hours=3, interval_s=30, seed=3, faults=FAULTS)
    r = sc.rollouts[0]
    r.start_h, r.wave_interval_h, r.rollback_h = 0.25, 0.5, 2.0
    return sc


@pytest.fixture(scope="module")
def records(scenario):
    return pl.concat(list(simulate_frame(scenario, 3, rows_per_chunk=2000)))


def test_same_seed_same_records_other_seed_other_records(scenario, records):
    again = pl.concat(list(simulate_frame(scenario, 3, rows_per_chunk=2000)))
    assert records.equals(again)
    other = pl.concat(list(simulate_frame(scenario, 4, rows_per_chunk=2000)))
    assert not records.equals(other)
    assert ground_truth(scenario, 3) == ground_truth(scenario, 3)


def test_chunk_size_does_not_change_the_records(scenario, records):
    big = pl.concat(list(simulate_frame(scenario, 3, rows_per_chunk=50_000)))
    key = ["host_id", "seq", "emit_ts"]
    assert big.sort(key).equals(records.sort(key))


def test_every_record_is_valid_wire_v1(records):
    lines = to_wire_json(records).to_list()
    assert len(lines) == records.height > 10_000
    decoded = [schema.decode(s.encode()) for s in lines]
    kinds = {tuple(schema.fs_of(r)) for r in decoded}
    assert kinds == {("xfs",), ("ext4",)}
    assert any("probe" in r for r in decoded)
    ext4 = next(r for r in decoded if r["mounts"][0]["fs"] == "ext4")
    assert "xfs_write_bytes" not in ext4["mounts"][0]["counters"]  # absent, never null
    for r in decoded[:200]:
        m = schema.key_metrics(r)
        assert m["write_mib_s"] > 0 and 0 <= m["frag_unusable_1m"] < 1


def test_wire_json_is_byte_for_byte_what_schema_encode_writes(records):
    """The simulator's vectorised encoding (derived from schema.FIELDS) is the encoder's
    canonical layout: every record, re-encoded by schema.encode, gives the same bytes.
    (polars writes floats below 1e-4 without an exponent where Python writes one; such
    a record must still be the same JSON, member for member and in the same order.)"""
    lines = to_wire_json(records).to_list()
    assert any('"probe"' in x for x in lines) and any('"xfs_write_bytes"' in x for x in lines)
    differ = 0
    for line in lines:
        again = schema.encode(json.loads(line)).decode()
        if again != line:
            differ += 1
            assert json.loads(line, object_pairs_hook=list) == \
                json.loads(again, object_pairs_hook=list), (line, again)
            assert re.search(r"[0-9]e-", again), (line, again)
    assert differ < len(lines) // 1000


def test_parquet_form_equals_the_json_form(records):
    sample = records.sample(500, seed=1)
    nested = to_wire_frame(sample).to_dicts()
    for row, line in zip(nested, to_wire_json(sample).to_list()):
        assert _drop_nulls(row) == json.loads(line)


def _drop_nulls(v):
    if isinstance(v, dict):
        return {k: _drop_nulls(x) for k, x in v.items() if x is not None}
    if isinstance(v, list):
        return [_drop_nulls(x) for x in v]
    return v


def test_counters_reset_only_at_reboots(scenario, records):
    """Per host in seq order: within a boot the boot time (ts - uptime) stays put; a new
    boot id comes with a boot after the previous record; seq never restarts; the
    kernel changes only with the boot; the reboots are the planned ones."""
    plan = build_plan(scenario, 3)
    first = records.unique(["host_id", "boot_id", "seq"]).sort("host_id", "seq")
    per_host = first.group_by("host_id", maintain_order=True).agg(
        pl.col("seq"), pl.col("boot_id"), pl.col("gauges.uptime_s"), pl.col("kernel"),
        pl.col("ts"))
    start, end = scenario.start_ts, scenario.start_ts + scenario.hours * 3600
    planned = {}
    for ts, h in zip(plan.reboot_ts, plan.reboot_host):
        if start < ts < end - 600:  # reboots near the end may not report yet
            planned.setdefault(plan.host_id[h], []).append(ts)
    reboots_seen = 0
    for host, seqs, boots, uptimes, kernels, ts in per_host.iter_rows():
        assert all(b > a for a, b in zip(seqs, seqs[1:])), host
        changes = [i for i in range(1, len(boots)) if boots[i] != boots[i - 1]]
        booted = [t - u for t, u in zip(ts, uptimes)]
        for i in range(1, len(boots)):
            if i in changes:
                assert booted[i] > ts[i - 1] and uptimes[i] < 3600, host  # a fresh boot
            else:
                assert abs(booted[i] - booted[i - 1]) < 0.5, host
        for i in range(1, len(kernels)):   # the kernel changes only with the boot
            if kernels[i] != kernels[i - 1]:
                assert i in changes, host
        assert len(set(boots)) == len(changes) + 1
        reboots_seen += len(changes)
        assert len(changes) <= len(planned.get(host, [])) + 1, host
    assert reboots_seen >= 0.8 * sum(len(v) for v in planned.values()) > 20


def test_rollout_and_rollback_reach_the_hosts(scenario, records):
    plan = build_plan(scenario, 3)
    truth = ground_truth(scenario, 3)
    starts = [t for t in truth if t["type"] == "rollout" and t["action"] == "start"]
    rollback = [t for t in truth if t["type"] == "rollout" and t["action"] == "rollback"][0]
    moved = sum(t["hosts"] for t in starts)
    assert rollback["hosts"] == moved == int((plan.reboot_reason == REASON_ROLLOUT).sum())
    assert int((plan.reboot_reason == REASON_ROLLBACK).sum()) == moved
    new = records.filter(pl.col("kernel").str.starts_with("6.12.40-63"))
    assert new["host_id"].n_unique() >= moved - 2  # a host may still be down at the end
    assert new["ts"].max() < rollback["ts"] + 20 * 60 + 60
    assert new["ts"].min() > starts[0]["ts"]


def test_interval_covers_the_time_since_the_previous_sample(scenario, records):
    """Consecutive records of one boot are ``interval_s`` apart: after an agent outage
    the first record covers the whole gap, with deltas to match."""
    r = (records.unique(["host_id", "boot_id", "seq"]).sort("host_id", "seq")
         .with_columns(dseq=pl.col("seq").diff().over("host_id", "boot_id"),
                       dts=pl.col("ts").diff().over("host_id", "boot_id"))
         .filter(pl.col("dseq") == 1))
    assert (r["dts"] - r["interval_s"]).abs().max() < 1e-3
    long = r.filter(pl.col("interval_s") > scenario.interval_s)
    assert long.height > 5 and long["interval_s"].max() <= 1260
    rate = lambda f: (f["mount.write_bytes"] / f["interval_s"]).median()
    assert rate(long) == pytest.approx(rate(r), rel=0.35)


def test_host_table_names_the_hosts_each_wave_moved(scenario, records):
    hosts = host_table(scenario, 3)
    assert hosts.height == scenario.hosts and hosts["host_id"].is_unique().all()
    moved = set(hosts.filter(pl.col("rollout_wave") > 0)["host_id"])
    reported = set(records.filter(pl.col("kernel").str.starts_with("6.12.40-63"))["host_id"])
    assert reported <= moved and len(moved - reported) <= 2
    assert hosts.filter(pl.col("rollout_wave") > 0)["rollback_reboot_ts"].null_count() == 0
    starts = [t for t in ground_truth(scenario, 3) if t["type"] == "rollout" and t["action"] == "start"]
    per_wave = hosts.group_by("rollout_wave").len()
    for t in starts:
        assert per_wave.filter(pl.col("rollout_wave") == t["wave"])["len"].item() == t["hosts"]


def test_delivery_faults_are_present(scenario, records):
    key = ["host_id", "boot_id", "seq"]
    dups = records.height - records.unique(key).height
    assert dups > 0.004 * records.height
    late = records.filter(pl.col("emit_ts") - pl.col("ts") > 20)
    assert late.height > 0.004 * records.height
    gaps = (records.unique(key).sort("host_id", "seq")
            .with_columns(d=pl.col("seq").diff().over("host_id"))
            .filter(pl.col("d") > 1).height)
    assert gaps > 0
    # chunks are in delivery order
    assert records["emit_ts"].is_sorted() or all(
        c["emit_ts"].is_sorted() for c in simulate_frame(scenario, 3, rows_per_chunk=2000))
    # clock skew: each host's clock sits a constant few seconds off (ts is the agent's
    # clock, emit_ts the true delivery time: their difference is skew minus delay)
    plan = build_plan(scenario, 3)
    off = (records.filter(pl.col("emit_ts") - pl.col("ts") < 10)
           .group_by("host_id").agg(pl.col("ts").sub(pl.col("emit_ts")).median().alias("off")))
    idx = [plan.host_id.index(h) for h in off["host_id"]]
    expect = plan.skew_s[idx] - plan.delay_s[idx]
    assert np.allclose(off["off"].to_numpy(), expect, atol=0.01)
    assert 1.0 < plan.skew_s.std() < 3.0 and np.abs(plan.skew_s).max() <= 6.0


def test_write_files_jsonl_and_parquet(tmp_path, scenario, records):
    sc = load_scenario(scenario, hours=0.5)
    jl = write_files(sc, tmp_path / "j", seed=3, fmt="jsonl")
    pq = write_files(sc, tmp_path / "p", seed=3, fmt="parquet")
    assert jl[-2].name == pq[-2].name == "ground_truth.json"
    assert jl[-1].name == pq[-1].name == "ground_truth_hosts.csv"
    lines = jl[0].read_bytes().splitlines()
    for line in lines:
        schema.decode(line)
    table = pl.read_parquet(pq[0])
    assert table.height == len(lines)
    assert table["seq"].to_list() == [json.loads(x)["seq"] for x in lines]
    truth = json.loads(jl[-2].read_text())
    assert truth["scenario"]["name"] == sc.name and truth["truth"] == json.loads(
        json.dumps(ground_truth(sc, 3)))


# -- the compiled encoder (simulator/native, built by scripts/bootstrap.sh) ---------------
from foliowatch.simulator.frames import PROBE_PRESENT, to_wire_bytes  # noqa: E402
from foliowatch.simulator.native_encode import ENCODER_ENV, encoder  # noqa: E402


def _native():
    enc = encoder()
    assert enc is not None, "the native encoder is not built: run scripts/bootstrap.sh"
    return enc


def _schema_encode(frame: pl.DataFrame) -> list:
    """What schema.encode writes for each row: the row as the record dict a JSON reader
    gives (the nested form, absent members dropped)."""
    return [schema.encode(_drop_nulls(row)) for row in to_wire_frame(frame).to_dicts()]


def test_native_encoding_is_byte_for_byte_what_schema_encode_writes(records):
    """Every simulated record (probes, ext4 mounts without the XFS counter, reboots,
    duplicates) as the compiled encoder writes it equals schema.encode's bytes, and
    to_wire_bytes (what the producer sends) is that encoder's output."""
    native = _native().encode(records)
    assert native == _schema_encode(records)
    assert any(b'"probe"' in v for v in native) and any(b'"xfs_write_bytes"' not in v
                                                         for v in native)
    assert to_wire_bytes(records.head(500)) == native[:500]


# doubles whose repr takes every branch: integral, few and many decimals, the shortest
# repr's 17 digits, an exponent (below 1e-4, at and past 1e16), subnormal, the extremes
EDGE_DOUBLES = [0.0, -0.0, 1.0, -1.5, 0.1, 0.2 + 0.1, 1 / 3, 2 / 3, 0.0001, 0.00011,
                9.999999999999999e-05, 1e-05, 1.5e-07, 5e-324, 2.2250738585072014e-308,
                123456789.123, 1793577611.627, 2.0 ** 52 + 0.5, 2.0 ** 53 - 1, 2.0 ** 53,
                2.0 ** 53 + 2, 999999999999999.9, 1e15, 1e16, 1.2345e17, 1.7976931348623157e308,
                -1.7976931348623157e308, 3.141592653589793, 166732353536.0, 0.7755]


def _random_doubles(rng: np.random.Generator, n: int) -> np.ndarray:
    bits = rng.integers(0, 2 ** 63, n, dtype=np.int64).view(np.float64)
    bits = bits[np.isfinite(bits)]
    decimals = np.round(rng.uniform(-1e7, 1e7, n), rng.integers(0, 8))
    small = rng.uniform(0, 1, n) * 10.0 ** rng.integers(-9, 3, n)
    integral = rng.integers(-2 ** 53, 2 ** 53, n).astype(np.float64)
    return np.concatenate([bits, decimals, small, integral])


def test_native_doubles_are_pythons_repr(records):
    """The fast path writes a double exactly as repr() does wherever it answers (it leaves
    the rest to Python's own repr), over random bit patterns and decimal-looking values;
    it answers every double of the simulated records."""
    import foliowatch_wireencode as mod
    values = EDGE_DOUBLES + _random_doubles(np.random.default_rng(17), 100_000).tolist()
    for x in values:
        text = mod.format_double(x)
        assert text is None or text == repr(x), x
    simulated = pl.concat([records[c].drop_nulls().cast(pl.Float64)
                           for c, t in records.schema.items() if t == pl.Float64
                           and c != "emit_ts"]).to_list()
    assert [mod.format_double(x) for x in simulated] == [repr(x) for x in simulated]


def test_native_encoding_of_edge_values_is_schema_encodes(records):
    """Rows carrying edge values where the wire allows them (counters 0 and int64's
    maximum, gauges over every kind of double, probes on and off, the XFS counter on and
    off) encode to schema.encode's bytes: doubles where polars and Python differ (an
    exponent) included."""
    edge = _edge_rows(records)
    assert edge[PROBE_PRESENT].null_count() not in (0, edge.height)
    assert _native().encode(edge) == _schema_encode(edge)
    assert any(b"e-05" in v or b"e+16" in v for v in _native().encode(edge))


def _edge_rows(records: pl.DataFrame) -> pl.DataFrame:
    """400 simulated rows carrying edge values: counters 0 and int64's maximum, gauges
    over every kind of double, the XFS counter on and off."""
    rng = np.random.default_rng(5)
    base = records.head(400)
    n = base.height
    doubles = np.array((EDGE_DOUBLES * (n // len(EDGE_DOUBLES) + 1))[:n])
    counters = [c for c in base.columns if c.startswith("counters.")]
    return base.with_columns(
        pl.Series("gauges.uptime_s", rng.permutation(doubles)),
        pl.Series("gauges.frag_unusable_1m", _random_doubles(rng, n)[:n]),
        pl.Series("gauges.mem_free_bytes", doubles),
        pl.Series(counters[0], rng.choice([0, 1, 2 ** 63 - 1, 10 ** 18], n)),
        pl.Series(counters[1], rng.integers(0, 2 ** 63 - 1, n)),
        pl.when(pl.Series(rng.random(n) < 0.5)).then(pl.col("mount.xfs_write_bytes"))
        .alias("mount.xfs_write_bytes"),
    )


def test_native_encoding_refuses_what_schema_encode_refuses(records):
    """A gauge that is not finite, or a string that would need escaping, is a
    SchemaError naming the column (json.dumps(allow_nan=False) and the wire's alphabets
    refuse them too), never a record written."""
    row = records.head(3)
    with pytest.raises(schema.SchemaError, match="gauges.uptime_s"):
        _native().encode(row.with_columns(pl.lit(float("nan")).alias("gauges.uptime_s")))
    with pytest.raises(schema.SchemaError, match="host_id"):
        _native().encode(row.with_columns(pl.lit('a"b').alias("host_id")))
    with pytest.raises(schema.SchemaError, match="seq"):
        _native().encode(row.with_columns(pl.lit(None, pl.Int64).alias("seq")))


def test_json_lines_files_are_schema_encodes_bytes(tmp_path, scenario, records, monkeypatch):
    """`simulate --format jsonl` writes each record as schema.encode writes it (the
    compiled encoder), doubles that need an exponent included; without the encoder,
    polars' lines: the same records, member for member."""
    import io

    from foliowatch.simulator.outputs import _write_json_lines
    sc = load_scenario(scenario, hours=0.5)
    lines = write_files(sc, tmp_path / "native", seed=3, fmt="jsonl")[0].read_bytes().splitlines()
    assert lines == [schema.encode(schema.decode(x)) for x in lines]
    edge, buf = _edge_rows(records), io.BytesIO()
    assert _write_json_lines(buf, edge) == edge.height
    assert buf.getvalue().splitlines() == _schema_encode(edge)
    monkeypatch.setenv(ENCODER_ENV, "polars")
    plain = io.BytesIO()
    _write_json_lines(plain, edge)
    plain = plain.getvalue().splitlines()
    assert plain != _schema_encode(edge)
    assert [json.loads(x, object_pairs_hook=list) for x in plain] == \
        [json.loads(x, object_pairs_hook=list) for x in _schema_encode(edge)]


def test_without_the_native_encoder_polars_encodes(records, monkeypatch):
    """FOLIOWATCH_ENCODER=polars (or no build) gives polars' encoding, the same records."""
    sample = records.head(300)
    monkeypatch.setenv(ENCODER_ENV, "polars")
    assert encoder() is None
    assert to_wire_bytes(sample) == [v.encode() for v in to_wire_json(sample).to_list()]
    monkeypatch.delenv(ENCODER_ENV)
    assert to_wire_bytes(sample) == _native().encode(sample)


def _probe_gaps(frame: pl.DataFrame) -> pl.DataFrame:
    """Per probe: host, kernel, time, and the time since the host's previous probe (a
    record delivered twice counted once)."""
    return (frame.filter(pl.col(PROBE_PRESENT).is_not_null()).unique(["host_id", "seq"])
            .sort("host_id", "ts")
            .with_columns(pl.col("ts").diff().over("host_id").alias("gap"))
            .select("host_id", "kernel", "ts", "gap"))


def test_hosts_probe_densely_in_their_first_hours_on_a_new_kernel_only():
    """The agent's ``agent.probe.new_kernel_every_s`` as the simulator plays it: a host that
    rebooted into another kernel (the rollout, and the rollback back again) probes every
    5 min for its first hour on it, every 30 min otherwise; hosts that never changed kernel
    keep the 30 min period. Without the key the records are the scenario's as before."""
    faults = {"probe_every_s": 1800.0, "probe_new_kernel_every_s": 300.0, "probe_new_kernel_h": 1.0}
    sc = load_scenario("rollback", hosts=60, hours=4, interval_s=60, seed=5, faults=faults)
    r = sc.rollouts[0]
    r.start_h, r.waves, r.wave_interval_h, r.rollback_h = 0.25, [0.5, 1.0], 8.0, 2.0
    frame = pl.concat(list(simulate_frame(sc, 5, rows_per_chunk=50_000)))
    changed = (frame.group_by("host_id").agg(pl.col("kernel").n_unique().alias("k"))
               .filter(pl.col("k") > 1)["host_id"])
    assert 0 < changed.len() < 60
    first_on = (frame.sort("ts").with_columns((pl.col("kernel") != pl.col("kernel").shift(1)
                                               .over("host_id")).alias("switch"))
                .filter(pl.col("switch")).select("host_id", "kernel", pl.col("ts").alias("on_since")))
    gaps = _probe_gaps(frame).join(first_on, on=["host_id", "kernel"], how="left")
    fresh = gaps.filter(pl.col("host_id").is_in(changed.implode()) & pl.col("gap").is_not_null()
                        & (pl.col("ts") - pl.col("on_since") > 300)
                        & (pl.col("ts") - pl.col("on_since") < 3000))
    assert fresh.height > 0 and fresh["gap"].max() <= 300 + 60
    settled = gaps.filter(~pl.col("host_id").is_in(changed.implode()) & pl.col("gap").is_not_null())
    assert settled.height > 0 and settled["gap"].min() >= 1800 - 60
    late = gaps.filter(pl.col("host_id").is_in(changed.implode()) & pl.col("gap").is_not_null()
                       & (pl.col("ts") - pl.col("on_since") > 3600 + 1800))
    assert late.height > 0 and late["gap"].min() >= 1800 - 60
    # off (the default): the same fleet's records as without the key
    plain = load_scenario("rollback", hosts=60, hours=4, interval_s=60, seed=5,
                          faults={"probe_every_s": 1800.0})
    off = load_scenario("rollback", hosts=60, hours=4, interval_s=60, seed=5,
                        faults={"probe_every_s": 1800.0, "probe_new_kernel_every_s": 0.0})
    for s in (plain, off):
        r = s.rollouts[0]
        r.start_h, r.waves, r.wave_interval_h, r.rollback_h = 0.25, [0.5, 1.0], 8.0, 2.0
    assert pl.concat(list(simulate_frame(off, 5))).equals(pl.concat(list(simulate_frame(plain, 5))))

