"""The tracepoint counters through the pipeline: optional on the wire (records without
them stay valid and give null figures), kept per host window, and the mechanism figures
(large-folio share, direct compaction attempts per GiB written) equal to
``schema.mechanism_metrics`` of the window's summed record, per host and pooled per
cohort (on the cohort rows too)."""

from __future__ import annotations

import polars as pl

from foliowatch import dataset as contract
from foliowatch import schema as wire
from foliowatch.pipeline.aggregate import WindowAggregator, pooled_mechanism
from foliowatch.pipeline.decode import decode_batch

GIB = 1 << 30


def _record(host: str, i: int, tp: bool, large: int, small: int, attempts: int):
    r = wire.example_record(seq=i, ts=1764000000.0 + 10 * i, host_id=host)
    if tp:
        r["counters"].update({
            "tp_pagecache_bytes_order_0": small, "tp_pagecache_bytes_order_1_3": 0,
            "tp_pagecache_bytes_order_4_7": large // 4, "tp_pagecache_bytes_order_8_up": large,
            "tp_compact_try_order_0": 0, "tp_compact_try_order_1_3": 1,
            "tp_compact_try_order_4_7": 0, "tp_compact_try_order_8_up": attempts,
            "tp_compact_try_costly_direct": attempts,
            "tp_pagecache_folios_order_0": 3,     # not kept by the pipeline, still valid
        })
    return r


def _windows(records):
    d = decode_batch([wire.encode(r) for r in records])
    assert d.rejected == []
    agg = WindowAggregator((60,), 30.0)
    agg.process(d.good.with_columns(pl.lit(0, pl.Int64).alias("partition"),
                                    pl.col("row").alias("offset")), {0: len(records)})
    return agg.close_ready(final=True)


def test_tracepoint_counters_are_optional_and_give_mechanism_figures_per_host_and_cohort():
    records = []
    for i in range(6):   # one 60 s window
        records.append(_record("tp-a", i, True, large=64 << 20, small=1 << 20, attempts=2))
        records.append(_record("tp-b", i, True, large=16 << 20, small=3 << 20, attempts=0))
        records.append(_record("plain", i, False, 0, 0, 0))
    windows = _windows(records)
    assert len(windows) == 1
    hosts = windows[0].hosts
    assert set(contract.MECHANISM_COLUMNS) <= set(hosts.columns)
    by_host = {r["host_id"]: r for r in hosts.iter_rows(named=True)}
    written = 6 * wire.example_record()["mounts"][0]["counters"]["write_bytes"]
    a = by_host["tp-a"]
    assert a["large_folio_share"] == (80 << 20) / (81 << 20)
    assert a["compact_try_order_8_up_per_gib"] == 12 / written * GIB
    assert a["compact_try_costly_direct_per_gib"] == 12 / written * GIB
    assert a["compact_try_order_4_7_per_gib"] == 0.0
    assert by_host["tp-b"]["compact_try_costly_direct_per_gib"] == 0.0
    assert by_host["tp-b"]["large_folio_share"] == (20 << 20) / (23 << 20)
    for name in contract.MECHANISM_COLUMNS:   # a host without the collector: absent, not 0
        assert by_host["plain"][name] is None
    # the window's figures are those of its summed record
    summed = _record("tp-a", 0, True, large=6 * (64 << 20), small=6 << 20, attempts=12)
    summed["mounts"][0]["counters"]["write_bytes"] = written
    summed["counters"]["tp_compact_try_order_1_3"] = 6
    for name, value in wire.mechanism_metrics(summed).items():
        assert abs(a[name] - value) <= 1e-12 * max(1.0, abs(value)), name
    pooled = pooled_mechanism(hosts).row(0, named=True)
    assert pooled["large_folio_share_hosts"] == 2
    assert pooled["large_folio_share"] == (100 << 20) / (104 << 20)
    assert pooled["compact_try_costly_direct_per_gib"] == 12 / (2 * written) * GIB
    # the cohort rows (level=cohort in the dataset) carry the same pooled figures
    cohorts = windows[0].cohorts
    assert cohorts.height == 1
    assert set(contract.COHORT_MECHANISM_COLUMNS) <= set(cohorts.columns)
    cohort = cohorts.row(0, named=True)
    for name in contract.COHORT_MECHANISM_COLUMNS:
        assert cohort[name] == pooled[name], name


def test_pipeline_metrics_serve_pooled_mechanism_figures_per_cohort():
    from prometheus_client import CollectorRegistry, generate_latest
    from foliowatch.pipeline.exporter import PipelineMetrics
    records = [_record("tp-a", i, True, large=64 << 20, small=1 << 20, attempts=2)
               for i in range(6)] + [_record("plain", i, False, 0, 0, 0) for i in range(6)]
    registry = CollectorRegistry()
    metrics = PipelineMetrics(registry)
    for cw in _windows(records):
        metrics.observe_window(cw)
    text = generate_latest(registry).decode()
    line = [l for l in text.splitlines()
            if l.startswith("foliowatch_pipeline_cohort_large_folio_share{")]
    assert len(line) == 1 and 'window_s="60"' in line[0]
    assert abs(float(line[0].rsplit(" ", 1)[1]) - (80 << 20) / (81 << 20)) < 1e-12
    assert "foliowatch_pipeline_cohort_compact_try_costly_direct_per_gib{" in text
