"""Pipeline throughput: records per second through the whole pipeline (consume, decode,
validate, dedupe, aggregate, write Parquet, commit) beside Kafka's own Java consumer
performance tool reading the same topic of the real broker in the same run, with each
Kafka client the pipeline can use (confluent-kafka, kafka-python); memory; and where the
CPU per record goes (each client consuming alone, decode+validate alone, aggregation
alone, the engine without Kafka).

    .venv/bin/python benchmarks/pipeline_throughput.py                   # 1M records
    .venv/bin/python benchmarks/pipeline_throughput.py --records 300000 --compression lz4
    .venv/bin/python benchmarks/pipeline_throughput.py --records 300000 --before ../main/.venv/bin/python

Targets (issue 17): >= 50% of the Java tool's records/s, >= 100,000 records/s per
pipeline process, <= 8 µs CPU per record, peak RSS <= 300 MB at the default batch. The
broker is started by the project's script (foliowatch.shell.services). Prints one JSON
object per measurement and a summary table at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def emit(row: dict) -> dict:
    row["load_avg_1m"] = round(os.getloadavg()[0], 2)
    print(json.dumps(row), flush=True)
    return row


# the mean wire record (docs/scaling.md): sizes kafka-python's batches for --wire-batch
WIRE_RECORD_BYTES = 1418


def produce(bootstrap: str, topic: str, records: int, compression: str, seed: int,
            wire_batch: int = 0) -> int:
    """The benchmark's topic: the simulator's records, in the simulator's 1 MiB batches,
    or with ``wire_batch`` in batches of about that many records made by kafka-python,
    as the agents make them (12 at the default 10 s interval and 120 s latency budget):
    each batch is compressed, and decompressed by the pipeline, on its own."""
    from foliowatch.kafka_io import KafkaSettings, make_producer
    from foliowatch.simulator import load_scenario, produce_to_kafka
    hosts = 2000
    hours = records / (hosts * 360.0)
    sc = load_scenario("seed-iomap-arm64-xfs", hosts=hosts, hours=hours, seed=seed)
    settings = KafkaSettings(bootstrap=[bootstrap], compression=compression)
    if not wire_batch:
        return produce_to_kafka(sc, settings, topic=topic, seed=seed)["sent"]
    producer = make_producer(settings, batch_size=wire_batch * WIRE_RECORD_BYTES,
                             linger_ms=50)
    try:
        return produce_to_kafka(sc, settings, topic=topic, seed=seed,
                                producer=producer)["sent"]
    finally:
        producer.close(timeout=30)


def _children_cpu() -> float:
    import resource
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def java_consumer_perf(cluster, topic: str, n: int) -> dict:
    cpu0 = _children_cpu()
    p = cluster.tool("consumer-perf", "--bootstrap-server", cluster.bootstrap, "--topic", topic,
                     "--messages", str(n), "--timeout", "60000",
                     "--group", f"perf-{uuid.uuid4().hex[:6]}", timeout=600)
    out = p.stdout.decode()
    heads = [l for l in out.splitlines() if l.startswith("start.time")]
    lines = [l for l in out.splitlines() if re.match(r"^\d{4}-\d\d-\d\d", l)]
    if p.returncode != 0 or not lines or not heads:
        raise SystemExit(f"consumer-perf failed ({p.returncode}):\n{out}\n{p.stderr.decode()[-3000:]}")
    header = [h.strip() for h in heads[0].split(",")]
    vals = [v.strip() for v in lines[-1].split(",")]
    d = dict(zip(header, vals))
    cpu = _children_cpu() - cpu0   # the whole JVM run, startup included
    return {"what": "java consumer-perf", "records": int(d["data.consumed.in.nMsg"]),
            "cpu_seconds_incl_jvm_startup": round(cpu, 2),
            "records_per_s": float(d["nMsg.sec"]),
            "fetch_records_per_s": float(d.get("fetch.nMsg.sec", "nan")),
            "rebalance_ms": float(d.get("rebalance.time.ms", "nan")),
            "mb_per_s": float(d["MB.sec"]), "raw": d}


def _decoder_env(decoder: str, writer: str = "native") -> dict:
    """The environment that selects the decoder: the compiled pass ("native", the
    default when built) or the Python/polars path alone ("python"); and the window
    files' writer: the compiled one ("native") or polars' ("polars")."""
    from foliowatch.pipeline.native_decode import DECODER_ENV
    from foliowatch.pipeline.native_parquet import WRITER_ENV
    return {**os.environ, DECODER_ENV: decoder, WRITER_ENV: writer}


def run_pipeline(bootstrap: str, topic: str, out: Path, extra, client: str,
                 decoder: str = "native", python: str = sys.executable,
                 label: str = "", writer: str = "native") -> dict:
    """The whole pipeline as a subprocess; ``python``: the interpreter of the checkout to
    run (another one's .venv runs that checkout's code: ``--before``)."""
    python = str(Path(python).absolute())
    argv = [python, "-m", "foliowatch", "pipeline", "--bootstrap", bootstrap,
            "--topic", topic, "--dlq-topic", f"{topic}.dlq", "--group",
            f"bench-{uuid.uuid4().hex[:6]}", "--output", str(out), "--until-idle", "3",
            "--metrics-addr", "off", "--log-level", "WARNING", "--kafka-client", client,
            *extra]
    t0 = time.monotonic()
    cwd = REPO if python == str(Path(sys.executable).absolute()) else Path(python).absolute().parents[2]
    p = subprocess.run(argv, capture_output=True, text=True, cwd=cwd,
                       env=_decoder_env(decoder, writer))
    wall = time.monotonic() - t0
    if p.returncode != 0:
        raise SystemExit(f"pipeline failed:\n{p.stderr[-3000:]}")
    t = json.loads([l for l in p.stdout.splitlines() if l.startswith("{")][-1])
    return {"what": f"foliowatch pipeline (whole), {client}, {decoder} decode{label}",
            "records": t["records"],
            "records_per_s": round(t["records"] / t["busy_seconds"]),
            "busy_seconds": t["busy_seconds"], "wall_seconds_incl_startup_and_idle": round(wall, 1),
            "peak_rss_mb": t["peak_rss_mb"], "windows": t["windows"],
            "cpu_seconds_incl_startup": t.get("cpu_seconds"),
            "cpu_us_per_record_incl_startup": round(t["cpu_seconds"] / t["records"] * 1e6, 2),
            # the CPU of the work (every thread, first record to last batch): the start
            # (imports ~1.2 s, joining the group) is a fixed cost, not a per-record one
            "cpu_seconds": t["busy_cpu_seconds"],
            "records_per_cpu_s": round(t["records"] / t["busy_cpu_seconds"]),
            "cpu_us_per_record": round(t["busy_cpu_seconds"] / t["records"] * 1e6, 2),
            "consumer_thread_cpu_seconds": t.get("consumer_thread_cpu_seconds"),
            "worker_thread_cpu_seconds": t.get("worker_thread_cpu_seconds"),
            "accepted": t["accepted"], "late": t["late"], "duplicates": t["duplicates"]}


CONSUME_ONLY = r"""
import json, sys, time
from foliowatch.kafka_io import KafkaSettings
from foliowatch.pipeline.consumer import peak_rss_mb
from foliowatch.pipeline.kafka_client import ConsumerOptions, Listener, open_consumer
client, bootstrap, topic, n, mpr, mpfb, fmb = (sys.argv[1], sys.argv[2], sys.argv[3],
    int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]), int(sys.argv[7]))

class FromStart(Listener):   # a new group: read from the beginning, commit nothing
    def assigned(self, partitions): return {}
    def revoked(self, partitions): return {}
    def released(self, partitions, committed, error): pass
    def lost(self, partitions): pass

c = open_consumer(client, KafkaSettings(bootstrap=[bootstrap]), ConsumerOptions(
    group=f"consume-only-{time.time_ns()}", max_poll_records=mpr,
    max_partition_fetch_bytes=mpfb, fetch_max_bytes=fmb))
c.subscribe(topic, FromStart())
got, nbytes, t0 = 0, 0, None
deadline = time.monotonic() + 600
while got < n and time.monotonic() < deadline:
    recs = c.poll(mpr, 1.0)
    if len(recs) and t0 is None:   # from the first records on: joining is not counted
        t0, c0 = time.monotonic(), time.process_time()
    got += len(recs)
    nbytes += sum(map(len, recs.values))
secs, cpu = time.monotonic() - t0, time.process_time() - c0
c.close(5)
print(json.dumps({"records": got, "seconds": round(secs, 2), "records_per_s": round(got / secs),
                  "cpu_seconds": round(cpu, 2), "cpu_us_per_record": round(cpu / got * 1e6, 2),
                  "mb_per_s": round(nbytes / secs / 1e6, 1),
                  "peak_rss_mb": peak_rss_mb()}))
"""


def consume_only(client: str, bootstrap: str, topic: str, n: int, mpr: int, mpfb: int,
                 fmb: int) -> dict:
    """One client alone, through the pipeline's consumer interface (records as lists)."""
    p = subprocess.run([sys.executable, "-c", CONSUME_ONLY, client, bootstrap, topic, str(n),
                        str(mpr), str(mpfb), str(fmb)],
                       capture_output=True, text=True, cwd=REPO)
    if p.returncode != 0:
        raise SystemExit(f"consume-only failed:\n{p.stderr[-3000:]}")
    return {"what": f"{client} consume only (fetch {mpfb >> 10}/{fmb >> 10} KiB, poll {mpr})",
            **json.loads(p.stdout.strip().splitlines()[-1])}


def _cpu_row(what: str, n: int, secs: float, cpu: float) -> dict:
    return {"what": what, "records": n, "records_per_s": round(n / secs),
            "cpu_seconds": round(cpu, 2), "cpu_us_per_record": round(cpu / n * 1e6, 2)}


def stages(bootstrap: str, topic: str, n: int, work: Path, batch: int) -> list:
    """The pipeline's own stages alone, in this process, on records read from the topic
    first: decode+validate; lateness+dedupe+aggregation; and the whole engine (decode,
    validate, dedupe, aggregate, Parquet files written durably, dead letters) without
    Kafka. CPU seconds count every thread (polars and Arrow use both cores)."""
    from foliowatch.kafka_io import KafkaSettings, make_consumer
    from foliowatch.pipeline.aggregate import WindowAggregator
    from foliowatch.pipeline.decode import decode_batch
    from foliowatch.pipeline.engine import Pipeline, PipelineConfig
    from foliowatch.pipeline.sinks import DatasetWriter, FileDLQ
    import polars as pl
    c = make_consumer(KafkaSettings(bootstrap=[bootstrap]), topic, group_id=None,
                      max_poll_records=20000)
    recs = []
    while len(recs) < n:
        for rs in c.poll(timeout_ms=1000).values():
            recs.extend(rs)
    c.close()
    values = [r.value for r in recs[:n]]
    parts = [r.partition for r in recs[:n]]
    offs = [r.offset for r in recs[:n]]
    del recs
    from foliowatch.pipeline.native_decode import DECODER_ENV
    rows = []
    for decoder, what in (("python", "pattern pass + Arrow JSON + polars"),
                          ("native", "compiled one-pass decoder")):
        os.environ[DECODER_ENV] = decoder
        decode_batch(values[:batch])   # warm: the pattern's automaton is built on first use
        t0, c0 = time.perf_counter(), time.process_time()
        decoded = [decode_batch(values[i:i + batch]) for i in range(0, len(values), batch)]
        rows.append(_cpu_row(f"decode+validate only, {decoder} ({what})", n,
                             time.perf_counter() - t0, time.process_time() - c0))
    agg = WindowAggregator()
    t0, c0 = time.perf_counter(), time.process_time()
    for i, d in enumerate(decoded):
        base = i * batch
        g = d.good.with_columns(
            pl.Series(parts[base:base + batch]).gather(d.good["row"]).cast(pl.Int64).alias("partition"),
            pl.Series(offs[base:base + batch]).gather(d.good["row"]).cast(pl.Int64).alias("offset"))
        agg.process(g, {})
        agg.close_ready()
    agg.close_ready(final=True)
    rows.append(_cpu_row("lateness+dedupe+aggregate+close only", n,
                         time.perf_counter() - t0, time.process_time() - c0))
    del decoded
    for decoder in ("python", "native"):
        os.environ[DECODER_ENV] = decoder
        out = work / f"ds-engine-{decoder}"
        engine = Pipeline(PipelineConfig(output=str(out), max_future_s=0),
                          DatasetWriter(str(out)), FileDLQ(work / f"engine-dlq-{decoder}.jsonl"))
        t0, c0 = time.perf_counter(), time.process_time()
        for i in range(0, n, batch):
            engine.process(values[i:i + batch], parts[i:i + batch], offs[i:i + batch], topic)
        engine.finish()
        engine.dlq.flush()
        rows.append(_cpu_row(f"whole engine without Kafka (decode ... durable Parquet, DLQ), "
                             f"{decoder} decode", n,
                             time.perf_counter() - t0, time.process_time() - c0))
    os.environ[DECODER_ENV] = "native"
    return rows


def main() -> int:
    from foliowatch.pipeline.kafka_client import (DEFAULT_FETCH_MAX_BYTES,
                                                  DEFAULT_PARTITION_FETCH_BYTES)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--partitions", type=int, default=6)
    ap.add_argument("--compression", default="zstd", choices=["none", "gzip", "lz4", "zstd"])
    ap.add_argument("--max-poll-records", type=int, default=10_000)
    ap.add_argument("--max-partition-fetch-bytes", type=int,
                    default=DEFAULT_PARTITION_FETCH_BYTES)
    ap.add_argument("--fetch-max-bytes", type=int, default=DEFAULT_FETCH_MAX_BYTES)
    ap.add_argument("--batch-records", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--keep", action="store_true", help="keep the temp folder")
    ap.add_argument("--before", metavar="PYTHON",
                    help="also run the whole pipeline (shipped client) with this interpreter, "
                         "e.g. /work/main/.venv/bin/python: the code before a change, "
                         "measured beside this checkout's on the same topic, twice, "
                         "alternating")
    args = ap.parse_args()

    from kafka.admin import KafkaAdminClient, NewTopic
    from foliowatch.pipeline.kafka_client import CLIENTS
    from foliowatch.shell.services import KafkaCluster

    work = Path(tempfile.mkdtemp(prefix="fw-pipebench-"))
    cluster = KafkaCluster(work / "kafka", brokers=1).start()
    results, before_after, writers = [], [], []
    print(f"load average at the start (1/5/15 min): "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    try:
        topic = f"bench.{uuid.uuid4().hex[:8]}"
        admin = KafkaAdminClient(bootstrap_servers=cluster.bootstrap)
        admin.create_topics([NewTopic(topic, num_partitions=args.partitions, replication_factor=1),
                             NewTopic(f"{topic}.dlq", num_partitions=1, replication_factor=1)])
        admin.close()
        t0 = time.monotonic()
        n = produce(cluster.bootstrap, topic, args.records, args.compression, args.seed)
        emit({"what": "produce (simulator -> broker)", "records": n,
              "records_per_s": round(n / (time.monotonic() - t0)),
              "compression": args.compression})
        results.append(emit(java_consumer_perf(cluster, topic, n)))
        defaults = ["--batch-records", str(args.batch_records),
                    "--max-poll-records", str(args.max_poll_records),
                    "--max-partition-fetch-bytes", str(args.max_partition_fetch_bytes),
                    "--fetch-max-bytes", str(args.fetch_max_bytes)]
        for client in CLIENTS:   # the one that ships first
            results.append(emit(run_pipeline(cluster.bootstrap, topic, work / f"ds-{client}",
                                             defaults, client)))
        # the window files' writer: polars' (the reference) and the compiled one,
        # alternating on the same topic
        for i in range(2):
            for writer in ("polars", "native"):
                writers.append(emit(run_pipeline(
                    cluster.bootstrap, topic, work / f"ds-{writer}-{i}", defaults, CLIENTS[0],
                    label=f", {writer} Parquet writer", writer=writer)))
        if args.before:
            for i in range(2):
                for python, label in ((args.before, ", before"), (sys.executable, ", after")):
                    before_after.append(emit(run_pipeline(
                        cluster.bootstrap, topic, work / f"ds-{label[2:]}-{i}", defaults,
                        CLIENTS[0], python=python, label=label)))
        # the shipped client again with the Python decode path alone: before / after
        results.append(emit(run_pipeline(cluster.bootstrap, topic, work / "ds-python-decode",
                                         defaults, CLIENTS[0], decoder="python")))
        for client in CLIENTS:
            results.append(emit(consume_only(client, cluster.bootstrap, topic, n,
                                             args.max_poll_records,
                                             args.max_partition_fetch_bytes,
                                             args.fetch_max_bytes)))
        for row in stages(cluster.bootstrap, topic, min(n, 300_000), work, args.batch_records):
            results.append(emit(row))
    finally:
        cluster.stop()
        if not args.keep:
            import shutil
            shutil.rmtree(work, ignore_errors=True)

    results += writers + before_after
    java = results[0]["records_per_s"]
    print("\n| measurement | records | records/s | vs Java tool | CPU s | CPU µs/record "
          "| peak RSS MB | load avg 1 min |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        cpu = next((r[k] for k in ("cpu_seconds", "cpu_seconds_incl_startup",
                                   "cpu_seconds_incl_jvm_startup") if r.get(k) is not None), "")
        print(f"| {r['what']} | {r['records']} | {r['records_per_s']:,.0f} | "
              f"{r['records_per_s'] / java:.0%} | {cpu} | {r.get('cpu_us_per_record', '')} | "
              f"{r.get('peak_rss_mb', '')} | {r.get('load_avg_1m', '')} |")
    print(f"\nload average at the end (1/5/15 min): "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    whole = results[1]
    print(f"\npipeline ({whole['what']}) / Java consumer-perf = "
          f"{whole['records_per_s'] / java:.0%} (target >= 50%); "
          f"{whole['records_per_s']:,.0f} records/s (target >= 100,000: "
          f"{whole['records_per_s'] / 100_000:.2f}x); "
          f"{whole['cpu_us_per_record']} µs CPU/record (target <= 8: "
          f"{whole['cpu_us_per_record'] / 8:.2f}x); peak RSS {whole['peak_rss_mb']} MB "
          f"(target <= 300: {whole['peak_rss_mb'] / 300:.2f}x); "
          f"cpus = {os.cpu_count()}, compression = {args.compression}")
    for other in (results[2], results[3]):
        print(f"{whole['what']} / {other['what']}: "
              f"{whole['records_per_s'] / other['records_per_s']:.2f}x records/s, "
              f"{whole['cpu_us_per_record'] / other['cpu_us_per_record']:.2f}x CPU per record"
              + (f", {whole['peak_rss_mb'] / other['peak_rss_mb']:.2f}x peak RSS"
                 if other.get("peak_rss_mb") else ""))
    for b, a in zip(writers[0::2], writers[1::2]):
        print(f"compiled / polars Parquet writer (same topic, consecutive): "
              f"{a['records_per_s'] / b['records_per_s']:.2f}x records/s, "
              f"{a['cpu_us_per_record'] / b['cpu_us_per_record']:.2f}x CPU per record "
              f"({a['cpu_us_per_record']} vs {b['cpu_us_per_record']} µs), "
              f"{a['peak_rss_mb'] / b['peak_rss_mb']:.2f}x peak RSS "
              f"({a['peak_rss_mb']} vs {b['peak_rss_mb']} MB)")
    for b, a in zip(before_after[0::2], before_after[1::2]):
        print(f"after / before (same topic, consecutive): "
              f"{a['records_per_s'] / b['records_per_s']:.2f}x records/s, "
              f"{a['cpu_us_per_record'] / b['cpu_us_per_record']:.2f}x CPU per record "
              f"({a['cpu_us_per_record']} vs {b['cpu_us_per_record']} µs), "
              f"{a['peak_rss_mb'] / b['peak_rss_mb']:.2f}x peak RSS "
              f"({a['peak_rss_mb']} vs {b['peak_rss_mb']} MB)")
    by = {r["what"]: r for r in results}
    for decoder in ("python", "native"):
        dec = next(r for w, r in by.items() if w.startswith(f"decode+validate only, {decoder}"))
        agg = by["lateness+dedupe+aggregate+close only"]
        eng = next(r for w, r in by.items() if w.startswith("whole engine") and w.endswith(
            f"{decoder} decode"))
        rest = eng["cpu_us_per_record"] - dec["cpu_us_per_record"] - agg["cpu_us_per_record"]
        print(f"engine by phase, {decoder} decode (µs CPU per record): decode+validate "
              f"{dec['cpu_us_per_record']}, aggregation {agg['cpu_us_per_record']}, files and "
              f"the rest {rest:.2f}; engine {eng['cpu_us_per_record']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
