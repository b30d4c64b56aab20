"""The pipeline's cohort gauges show a window only when every partition has closed it:
partitions' watermarks differ, and one partition's newest window holds a fraction of
the fleet (the dashboards' hosts per kernel would dip and spike with it)."""

from __future__ import annotations

import polars as pl

from foliowatch.pipeline.aggregate import ClosedWindow
from foliowatch.pipeline.exporter import STALLED_WINDOWS, PipelineMetrics


def _closed(partition: int, start: int, hosts: list) -> ClosedWindow:
    frame = pl.DataFrame({"host_id": hosts})
    return ClosedWindow(partition=partition, window_s=60, window_start=start, first_offset=0,
                        last_offset=0, hosts=frame, cohorts=frame)


def _shown(m: PipelineMetrics):
    start, frame = m.latest[60]
    return start, sorted(frame["host_id"].to_list())


def test_a_window_is_shown_once_every_partition_closed_it():
    m = PipelineMetrics()
    m.observe_window(_closed(0, 0, ["a", "b"]))
    m.observe_window(_closed(1, 0, ["c"]))
    assert _shown(m) == (0, ["a", "b", "c"])
    m.observe_window(_closed(0, 60, ["a", "b"]))
    assert _shown(m) == (0, ["a", "b", "c"])        # partition 1 has not closed 60 yet
    m.observe_window(_closed(0, 120, ["a", "b"]))
    assert _shown(m) == (0, ["a", "b", "c"])
    m.observe_window(_closed(1, 60, ["c"]))
    assert _shown(m) == (60, ["a", "b", "c"])        # the whole fleet, not one partition


def test_a_stalled_partition_stops_holding_the_others_back():
    m = PipelineMetrics()
    m.observe_window(_closed(1, 0, ["c"]))
    for i in range(STALLED_WINDOWS + 2):
        m.observe_window(_closed(0, 60 * i, ["a"]))
    start, hosts = _shown(m)
    assert start == 60 * (STALLED_WINDOWS + 1) and hosts == ["a"]


def test_a_batch_decoded_ahead_counts_its_decode_in_the_batch_duration(tmp_path,
                                                                      monkeypatch):
    # the Kafka consumer decodes a batch on its own thread and hands it to the worker:
    # the batch-duration histogram must still cover the decode, as its help text says
    import json
    import time

    from prometheus_client import CollectorRegistry

    from foliowatch import schema
    from foliowatch.pipeline import engine
    from foliowatch.pipeline.engine import Pipeline, PipelineConfig
    from foliowatch.pipeline.sinks import DatasetWriter, FileDLQ

    slow_s = 0.5
    real = engine.decode_batch

    def slow_decode(*a, **k):
        time.sleep(slow_s)
        return real(*a, **k)

    monkeypatch.setattr(engine, "decode_batch", slow_decode)
    registry = CollectorRegistry()
    out = str(tmp_path / "ds")
    pipe = Pipeline(PipelineConfig(output=out, max_future_s=0), DatasetWriter(out),
                    FileDLQ(tmp_path / "dlq.jsonl"), metrics=PipelineMetrics(registry))
    values = [json.dumps(schema.example_record(seq=i, ts=1764000000.0 + 10 * i),
                         separators=(",", ":")).encode() for i in range(5)]
    decoded = pipe.decode(values)                    # as the consuming thread does
    st = pipe.process(values, [0] * 5, list(range(5)), "t", decoded=decoded)
    assert st.accepted == 5
    assert st.seconds >= slow_s
    assert registry.get_sample_value(
        "foliowatch_pipeline_batch_duration_seconds_sum") >= slow_s
