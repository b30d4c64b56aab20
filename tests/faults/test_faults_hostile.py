"""Hostile input to the pipeline (see ``hostile.py``): a short fuzz run of the property
"never crashes, never lets a bad record into an aggregate", and a label built to explode
cardinality, which must not explode /metrics. ``make faults`` runs the long fuzz
(benchmarks/fuzz_pipeline.py)."""

from __future__ import annotations

import re

from hypothesis import HealthCheck, given, settings
from prometheus_client import generate_latest

from foliowatch import schema as wire

from hostile import NOW, MemoryDLQ, MemoryWriter, check_batch, messages


@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(messages())
def test_hostile_batches_never_crash_and_never_reach_an_aggregate(values):
    """60 hypothesis batches of hostile messages (see hostile.py) through the pipeline:
    nothing raises, every refused message is in the DLQ, the windows hold exactly the
    accepted records, all finite."""
    check_batch(values)


def test_a_label_that_explodes_cardinality_stays_off_metrics_beyond_the_limit():
    """1300 records, each with a new kernel name: all in the dataset, but /metrics
    exports the 1000 largest cohorts and counts the 300 left out."""
    from foliowatch.pipeline import exporter
    from foliowatch.pipeline.engine import Pipeline, PipelineConfig
    metrics = exporter.PipelineMetrics()
    p = Pipeline(PipelineConfig(output="unused"), MemoryWriter(), MemoryDLQ(), metrics)
    n = exporter.MAX_EXPORTED_COHORTS + 300
    values = []
    for i in range(n):          # a new kernel name in every record: one cohort each
        rec = wire.example_record(seq=i, ts=NOW + 1, host_id=f"h{i}")
        rec["labels"]["kernel"] = f"6.6.{i}-evil"
        values.append(wire.encode(rec))
    st = p.process(values, [0] * n, list(range(n)), "t")
    assert st.accepted == n                    # valid records: all in the dataset
    p.finish()
    text = generate_latest(metrics.registry).decode()
    hosts = [l for l in text.splitlines() if l.startswith("foliowatch_pipeline_cohort_hosts{")
             and 'window_s="60"' in l]
    assert len(hosts) == exporter.MAX_EXPORTED_COHORTS
    left = re.search(r'^foliowatch_pipeline_cohorts_not_exported\{window_s="60"\} (\S+)$',
                     text, re.M)
    assert left and float(left.group(1)) == 300


def test_replayed_and_reordered_sequences_count_once_and_gaps_net():
    """A host's seq 0..9 arrives with 3 and 4 missing, 5 replayed, then 3 late but within
    the lateness: 9 samples aggregated, 1 duplicate, and 1 seq still missing (4)."""
    from foliowatch.pipeline.engine import Pipeline, PipelineConfig
    p = Pipeline(PipelineConfig(output="unused"), MemoryWriter(), MemoryDLQ())
    order = [0, 1, 2, 5, 6, 5, 7, 8, 9, 3]
    values = [wire.encode(wire.example_record(seq=s, ts=NOW + 10 * s, host_id="h"))
              for s in order]
    st1 = p.process(values[:5], [0] * 5, list(range(5)), "t")
    st2 = p.process(values[5:], [0] * 5, list(range(5, 10)), "t")
    assert st1.missing == 2                     # 3 and 4 skipped
    assert st2.missing == -1                    # 3 came after all
    assert st1.accepted + st2.accepted == 9 and st2.duplicates == 1
