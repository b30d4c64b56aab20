"""Where the pipeline engine's CPU goes, stage by stage: decode + validate, the batch's
lateness / watermark / dedupe, sequence gaps, partial sums, open-window bookkeeping,
closing windows (host rows, cohort rows) and the durable Parquet writes, as µs of
process CPU (every thread: polars' pool, the file writers) per record, without Kafka.

    .venv/bin/python benchmarks/pipeline_stages.py --records 300000

Records: the simulator's ``seed-iomap-arm64-xfs`` scenario, 2,000 hosts (the records of
benchmarks/pipeline_throughput.py), spread over 6 partitions by host, in batches of
10,000. Each stage's CPU is its own (what it calls that is timed too is subtracted).
Run with another checkout's interpreter, this script measures that checkout's code, the
whole package (each virtualenv's editable install maps ``foliowatch`` to its own
checkout): ``/work/main/.venv/bin/python benchmarks/pipeline_stages.py``.

``--output DIR`` keeps the dataset and the dead letters in DIR: the same records through
two checkouts' engines give two folders that ``diff -r`` compares byte for byte (the
output of a change must stay exactly the same):

    /work/main/.venv/bin/python benchmarks/pipeline_stages.py --output /tmp/before
    .venv/bin/python benchmarks/pipeline_stages.py --output /tmp/after
    diff -r /tmp/before /tmp/after && echo identical
"""

from __future__ import annotations

import argparse
import collections
import functools
import importlib.util
import logging
import os
import shutil
import sys
import tempfile
import time
import zlib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if importlib.util.find_spec("foliowatch") is None:
    # not installed: this checkout's code. When installed it is left alone: putting this
    # checkout first would mix its foliowatch/ (schema, dataset contract, native loader)
    # with another interpreter's pipeline/
    sys.path.insert(0, str(REPO))

STAGES = [  # (module, owner, function, label)
    ("engine", None, "decode_batch", "decode + validate"),
    ("aggregate", "WindowAggregator", "process",
     "lateness, watermark, dedupe, dedupe memory (the batch's own part)"),
    ("aggregate", None, "_seq_gaps", "sequence gaps"),
    ("aggregate", "WindowAggregator", "_seq_gaps", "sequence gaps"),  # before the move
    ("aggregate", "WindowAggregator", "_remember_max", "dedupe memory: highest seq per boot"),
    ("aggregate", "WindowAggregator", "_prune_seen", "dedupe memory: forgetting"),
    ("aggregate", None, "explode_fs", "one row per filesystem"),
    ("aggregate", "WindowAggregator", "_add_partials", "partial sums per host window"),
    ("aggregate", "WindowAggregator", "_add_window_frames", "open windows: split, merge"),
    ("aggregate", "WindowAggregator", "close_ready", "closing: merge, split by window"),
    ("aggregate", None, "host_rows", "closing: host rows"),
    ("aggregate", None, "cohort_rows", "closing: cohort rows"),
    # the files of a batch are written while the next one is aggregated: here start_windows
    # waits for them (``waited``), so that their CPU is theirs and not that stage's
    ("sinks", "DatasetWriter", "start_windows", "durable Parquet (encode, fsync, rename)"),
    ("sinks", "DatasetWriter", "write_windows", "durable Parquet (encode, fsync, rename)"),  # before
    ("engine", "Pipeline", "process", "the rest of a batch (gathers, dead letters)"),
]


def records(n: int, seed: int = 1):
    from foliowatch.simulator import load_scenario
    from foliowatch.simulator.frames import simulate_frame
    from foliowatch.simulator.outputs import wire_records
    hosts = 2000
    sc = load_scenario("seed-iomap-arm64-xfs", hosts=hosts, hours=n / (hosts * 360.0),
                       seed=seed)
    values, parts, offsets, next_offset = [], [], [], {}
    for keys, vals, _emit in wire_records(simulate_frame(sc, seed)):
        for k, v in zip(keys, vals):
            p = zlib.crc32(k) % 6
            values.append(v)
            parts.append(p)
            offsets.append(next_offset.get(p, 0))
            next_offset[p] = offsets[-1] + 1
    return values[:n], parts[:n], offsets[:n]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=300_000)
    ap.add_argument("--batch-records", type=int, default=10_000)
    ap.add_argument("--output", metavar="DIR",
                    help="keep the dataset (DIR/ds) and the dead letters (DIR/dlq.jsonl) "
                         "there, to compare two checkouts' output with diff -r; must not "
                         "exist yet (default: a temporary folder, removed)")
    args = ap.parse_args()
    logging.disable(logging.WARNING)   # the simulator's seq gaps would flood the output
    from foliowatch.pipeline.engine import Pipeline, PipelineConfig
    from foliowatch.pipeline.sinks import DatasetWriter, FileDLQ
    values, parts, offsets = records(args.records)
    n = len(values)
    own = collections.Counter()
    stack = []

    def timed(fn, label):
        @functools.wraps(fn)
        def wrapper(*a, **k):
            t = time.process_time()
            stack.append(0.0)
            try:
                return fn(*a, **k)
            finally:
                dt = time.process_time() - t
                own[label] += dt - stack.pop()
                if stack:
                    stack[-1] += dt
        return wrapper

    def waited(fn):
        @functools.wraps(fn)
        def wrapper(*a, **k):
            pending = fn(*a, **k)
            pending.wait()
            return pending
        return wrapper

    for module, owner, name, label in STAGES:
        mod = importlib.import_module(f"foliowatch.pipeline.{module}")
        target = getattr(mod, owner) if owner else mod
        if hasattr(target, name):
            fn = getattr(target, name)
            setattr(target, name, timed(waited(fn) if name == "start_windows" else fn, label))
    if args.output:
        work = Path(args.output)
        work.mkdir(parents=True)     # an existing folder's files would be compared too
    else:
        work = Path(tempfile.mkdtemp(prefix="fw-stages-"))
    try:
        engine = Pipeline(PipelineConfig(output=str(work / "ds"), max_future_s=0),
                          DatasetWriter(str(work / "ds")), FileDLQ(work / "dlq.jsonl"))
        engine.process(values[:10], parts[:10], offsets[:10], "t")   # warm
        own.clear()
        b = args.batch_records
        t0, c0 = time.perf_counter(), time.process_time()
        for i in range(10, n, b):
            engine.process(values[i:i + b], parts[i:i + b], offsets[i:i + b], "t")
        engine.finish()
        engine.dlq.flush()
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    finally:
        if not args.output:
            shutil.rmtree(work, ignore_errors=True)
    print(f"{n} records, batches of {args.batch_records}; µs of CPU per record:")
    for label, secs in sorted(own.items(), key=lambda kv: -kv[1]):
        print(f"  {secs / n * 1e6:6.2f}  {label}")
    print(f"  {cpu / n * 1e6:6.2f}  engine in all ({wall:.1f} s wall); load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
