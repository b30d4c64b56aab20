"""Simulator throughput: records per second generated, to files (JSON lines, Parquet)
and to the real Kafka broker, for a 100,000-host fleet at a 10 s interval.

    .venv/bin/python benchmarks/simulator_throughput.py                  # files + Kafka
    .venv/bin/python benchmarks/simulator_throughput.py --no-kafka --minutes 5
    .venv/bin/python benchmarks/simulator_throughput.py --out /dev/shm/simbench  # RAM disk

Target (issue 4): at least 300,000 records/s to files. Kafka goes through the project's
producer path (kafka_io.make_producer: acks=all, idempotence, zstd) with kafka-python;
the broker is started by the project's script unless --bootstrap is given.
Measured 2026-11-25 on this 2-vCPU machine shared with four other engineers' runs
(load average 5-12), seed scenario, 100,000 hosts, 10 s interval, 5 simulated minutes
(3.0M records), 1 simulated minute (0.6M) for Kafka:

    generate frames only            820-860k records/s      ~960k records/CPU-s
    Parquet files (nested wire)     197-262k records/s      ~330-350k records/CPU-s  95 B/rec
    JSON lines, encode only         230k records/s          ~270k records/CPU-s
    JSON lines files                121-140k records/s      ~160-190k records/CPU-s  1122 B/rec
    Kafka, 1 / 2 producer processes 20k / 27k records/s     (kafka-python send() alone:
                                                            22-33k records/s: the client
                                                            is the bound, not generation)

Earlier runs on a quieter machine (load 1-3) gave 330-380k records/s to Parquet.

With the tracepoint counters (9 more counters per record, issue 14), measured 2026-12-02
beside the code before them in one alternating run (2 rounds each, 100,000 hosts, 1
simulated minute, load average 27-36, so per CPU-second figures only):

    generate frames only            before 324-337k, after 230-271k records/CPU-s (0.70-0.84x)
    JSON lines, encode only         before  96-102k, after  99-112k records/CPU-s
    JSON lines files                before  73-98k,  after  78-94k  records/CPU-s  1122 -> 1418 B/rec
    Parquet files (nested wire)     before 128-143k, after 144-155k records/CPU-s    97 -> 106 B/rec

The mechanism model itself is ~6 ms of a ~100 ms step for 100,000 hosts; the rest of
the frames-only cost is the nine more columns per record. Files (the target's measure)
are within the run's noise. JSON
encoding (polars, ~2.5 us/record for ~1.1 KB) is what keeps JSON lines under the target.

Prints one JSON object per measurement and a table at the end, with records per wall
second and per CPU-second of the benchmark process (the machine is shared; the 1-minute
load average is printed beside each row); CPU includes the Kafka producer worker
processes, not the broker's.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def cpu_seconds() -> float:
    """CPU of this process and of its finished children (the Kafka worker processes)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def measure(name, fn):
    t0, c0 = time.monotonic(), cpu_seconds()
    records, nbytes = fn()
    secs = time.monotonic() - t0
    cpu = cpu_seconds() - c0
    row = {"what": name, "records": records, "seconds": round(secs, 2),
           "records_per_s": int(records / secs), "cpu_s": round(cpu, 2),
           # the machine is shared: records per CPU-second of this process (threads
           # included) says what the code costs, whatever the neighbours do
           "records_per_cpu_s": int(records / cpu) if cpu > 0 else None,
           "mib": round(nbytes / 1048576, 1) if nbytes else None,
           "bytes_per_record": int(nbytes / records) if nbytes else None,
           "peak_rss_mib": round(rss_mib()), "load_avg_1m": os.getloadavg()[0]}
    print(json.dumps(row), flush=True)
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenario", default="seed-iomap-arm64-xfs")
    ap.add_argument("--hosts", type=int, default=100_000)
    ap.add_argument("--interval", type=float, default=10.0)
    ap.add_argument("--minutes", type=float, default=5.0,
                    help="simulated minutes for the file runs (5 min = ~3M records)")
    ap.add_argument("--kafka-minutes", type=float, default=1.0,
                    help="simulated minutes for the Kafka run")
    ap.add_argument("--kafka-workers", type=int, default=2,
                    help="also measure this many producer processes")
    ap.add_argument("--out", help="folder for the files (default: a temp folder on disk)")
    ap.add_argument("--formats", default="generate,jsonl-devnull,jsonl,parquet")
    ap.add_argument("--no-kafka", action="store_true")
    ap.add_argument("--bootstrap", help="use this broker instead of starting one")
    args = ap.parse_args()

    import polars as pl
    from foliowatch.simulator import load_scenario, simulate_frame, write_files

    sc = load_scenario(args.scenario, hosts=args.hosts, hours=args.minutes / 60.0,
                       interval_s=args.interval)
    print(json.dumps({"scenario": sc.name, "hosts": sc.hosts, "interval_s": sc.interval_s,
                      "simulated_minutes": args.minutes, "cpus": os.cpu_count(),
                      "polars": pl.__version__, "python": sys.version.split()[0]}), flush=True)
    rows = []
    base = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="simbench-"))
    try:
        for fmt in args.formats.split(","):
            if fmt == "generate":
                def gen():
                    return sum(c.height for c in simulate_frame(sc, 1)), 0
                rows.append(measure("generate (frames only)", gen))
                continue
            if fmt == "jsonl-devnull":
                from foliowatch.simulator.outputs import _prefetch, _write_json_lines

                def encode_only():
                    with open(os.devnull, "wb") as f:
                        return sum(_write_json_lines(f, c)
                                   for c in _prefetch(simulate_frame(sc, 1))), 0
                rows.append(measure("encode jsonl -> /dev/null (no disk)", encode_only))
                continue
            out = base / fmt
            shutil.rmtree(out, ignore_errors=True)

            def files(fmt=fmt, out=out):
                paths = write_files(sc, out, seed=1, fmt=fmt)
                data = [p for p in paths if p.suffix in (".jsonl", ".parquet")]
                if fmt == "jsonl":
                    n = 0
                    for p in data:
                        with open(p, "rb") as f:
                            n += sum(buf.count(b"\n") for buf in iter(lambda: f.read(1 << 24), b""))
                else:
                    n = sum(pl.scan_parquet(p).select(pl.len()).collect().item() for p in data)
                return n, sum(p.stat().st_size for p in data)
            rows.append(measure(f"files {fmt} -> {base}", files))
            shutil.rmtree(out, ignore_errors=True)
    finally:
        if not args.out:
            shutil.rmtree(base, ignore_errors=True)

    if not args.no_kafka:
        from kafka.admin import KafkaAdminClient, NewTopic
        from foliowatch.kafka_io import KafkaSettings
        from foliowatch.shell.services import KafkaCluster
        from foliowatch.simulator import produce_to_kafka

        cluster = None
        tmp = Path(tempfile.mkdtemp(prefix="simbench-kafka-"))
        try:
            bootstrap = args.bootstrap
            if not bootstrap:
                cluster = KafkaCluster(tmp, brokers=1).start()
                bootstrap = cluster.bootstrap
            topic = f"bench.sim.{uuid.uuid4().hex[:8]}"
            admin = KafkaAdminClient(bootstrap_servers=bootstrap)
            admin.create_topics([NewTopic(topic, num_partitions=12, replication_factor=1)])
            admin.close()
            ksc = load_scenario(args.scenario, hosts=args.hosts,
                                hours=args.kafka_minutes / 60.0, interval_s=args.interval)

            for workers in sorted({1, args.kafka_workers}):
                def kafka(workers=workers):
                    r = produce_to_kafka(ksc, KafkaSettings(bootstrap=[bootstrap]), topic,
                                         seed=1, workers=workers)
                    return r["sent"], 0
                rows.append(measure(f"kafka, {workers} producer process(es) (acks=all, "
                                    "idempotent, zstd, 12 partitions)", kafka))

            # the client alone: kafka-python send() of pre-encoded records, no simulation
            from foliowatch.kafka_io import make_producer
            from foliowatch.simulator import to_wire_json
            chunk = next(iter(simulate_frame(ksc, 1)))
            keys = chunk["host_id"].cast(pl.Binary).to_list()
            values = to_wire_json(chunk).cast(pl.Binary).to_list()

            def client_only():
                p = make_producer(KafkaSettings(bootstrap=[bootstrap]), batch_size=512 * 1024,
                                  linger_ms=50)
                for k, v in zip(keys, values):
                    p.send(topic, key=k, value=v)
                p.flush()
                p.close()
                return len(keys), sum(len(v) for v in values)
            rows.append(measure("kafka-python send() alone, pre-encoded, 1 process", client_only))
        finally:
            if cluster is not None:
                cluster.stop()
            shutil.rmtree(tmp, ignore_errors=True)

    print()
    print(f"{'what':58s} {'records':>10s} {'s':>7s} {'records/s':>10s} {'rec/cpu-s':>10s} "
          f"{'B/rec':>6s} {'RSS MiB':>8s} {'load':>5s}")
    for r in rows:
        print(f"{r['what'][:58]:58s} {r['records']:10d} {r['seconds']:7.2f} "
              f"{r['records_per_s']:10d} {r['records_per_cpu_s'] or 0:10d} "
              f"{r['bytes_per_record'] or 0:6d} {r['peak_rss_mib']:8d} {r['load_avg_1m']:5.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
