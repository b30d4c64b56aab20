"""Simulator throughput: records per second generated, to files (JSON lines, Parquet)
and to the real Kafka broker, for a 100,000-host fleet at a 10 s interval.

    .venv/bin/python benchmarks/simulator_throughput.py                  # files + Kafka
    .venv/bin/python benchmarks/simulator_throughput.py --no-kafka --minutes 5
    .venv/bin/python benchmarks/simulator_throughput.py --out /dev/shm/simbench  # RAM disk

Targets: at least 300,000 records/s to files (issue 4), 100,000 records/s to Kafka (issue
17). Kafka goes through the simulator's producer (simulator/producer.py: librdkafka,
acks=all, idempotence, zstd level 1, delivery reports for failures only), beside Kafka's
own Java producer (kafka-producer-perf-test: the simulator's records as its payload
file, the same count, acks, idempotence, codec and level, linger and batch size) in
each round; the simulator runs in a process of its own, its CPU taken per thread
(schedstat), the broker's CPU per record measured around every row; ``--compare-with
main`` runs main's simulator path too, alternating with this tree's on the same broker;
kafka-python's client and several processes on request; then each stage alone
(simulate, encode native and polars, produce + flush). The broker is started by the
project's script (and warmed up by an untimed Java run) unless --bootstrap is given.

Measured 2026-12-03 (issue 17, third pass: the compiled encoder, simulator/native), 100,000
hosts, 1 simulated minute (600k records of 1,417 B), 12 partitions, 3 rounds, the
simulator's path of this tree and of main alternating on one broker:

    .venv/bin/python benchmarks/simulator_throughput.py --formats generate,jsonl-devnull \
        --minutes 1 --kafka-minutes 1 --kafka-rounds 3 --compare-with main

    background campaign paused, load average 3.3-4.2:
    Java producer-perf (pre-encoded records)  141,073 / 163,528 / 165,650 records/s
    simulator, this tree                      114,504 / 123,124 / 104,876 records/s
                                              1.05-1.23x the target, 0.63-0.81x Java
                                              10.53 / 10.58 / 10.68 us CPU per record
    simulator, main (polars encoding)         116,342 / 117,275 / 114,653 records/s
                                              11.52 / 11.98 / 11.62 us CPU per record
    CPU per record, this tree / main: 0.88-0.92x; records/s 0.91-1.05x (noise)
    broker CPU per record: 2.4-5.0 us (Java's rows 2.9-6.0)
    this tree per thread (us per record): simulate + encode thread 5.0-5.2, produce calls
    1.7-1.8, librdkafka (zstd 1, batching, sockets) 3.5-3.6, polars pool 0.1;
    main per thread: simulate + encode thread 3.9-4.2 and polars pool (its encoding)
    2.3-2.4, produce calls 1.5-1.6, librdkafka 3.4-3.6
    stages on one 92k-record chunk: encode native 383k records per CPU-second (2.6 us),
    polars 214k (4.7 us): 0.56x; simulate 164k (6.1 us, the plan included)

    campaign running, load 6.5-8.5 (--formats generate --minutes 0.2 --kafka-rounds 2):
    this tree 37,520 / 43,623 records/s, 14.0 / 11.4 us CPU per record; main 36,474 /
    42,079, 14.7 / 13.6 us; Java 49,717 / 70,752 records/s

The target is met on the quiet machine by main's path too (the quiet figures of the
second pass below, 55-60k/s, were taken without the broker's warm-up and on another
day); this pass takes the simulator's CPU per record to 0.84-0.95x main's. Slices of
50,000 records matter: at 20,000 (produced in smaller bursts, so fuller batches less
often) the produce calls, librdkafka and the broker each cost more per record (this
tree 15.7-16.7 us beside main's 13.4-16.1, 0.8-0.95x its records/s). 4 MiB batches
before compression (~540 KB after) were not kept: in this fresh broker they cost it
3.95-11.8 us per record beside main's 3.3-5.3 at 1 MB (50,000-record slices, campaign
paused, load 5.2-6.6).

Measured 2026-12-02 (issue 17, second pass), 100,000 hosts, 1 simulated minute (600k
records, 1,417 B each), 12 partitions, load average 12.6-21:

    .venv/bin/python benchmarks/simulator_throughput.py --formats generate,jsonl-devnull \
        --minutes 1 --kafka-minutes 1 --kafka-rounds 2

    Java producer-perf (pre-encoded records)  18,559 / 21,343 records/s  (its own rate)
    simulator -> Kafka, librdkafka, 1 process 12,518 / 11,912 records/s  0.67x / 0.56x Java
                                              34.1k / 32.9k records per CPU-second
    simulator -> Kafka, kafka-python          3,191 records/s (7.95k per CPU-second): 0.25x
    simulator -> Kafka, librdkafka, 2 procs   10,441 / 10,428 records/s (2 cores, shared)
    stages, CPU per record: simulate ~4.7 us (whole run; 12.6 on one chunk with the plan),
    encode 10.1 us, produce + flush 11.1 us (kafka-python: 110 us)

Quiet (load 2.2-3.3; --kafka-minutes 0.5 and 1): simulator -> Kafka 55,549 and 60,360
records/s beside Java producer-perf 62,087 and 77,597 (0.89x, 0.78x), 46.6-47.8k records
per CPU-second; kafka-python 10,037-11,415 records/s; 2 processes 41,428 (slower: the
2 cores are shared with the broker). A second round as the load rose to 4.6: 29,641 vs
50,283 (0.59x).

The simulator's path before this pass (main) beside it, the same broker, alternating,
load 16.5-18: 8,583 -> 17,767 and 14,885 -> 20,745 records/s; CPU per record 37.0 -> 26.0
and 33.2 -> 24.1 us (0.70-0.73x). The target (100,000 records/s) is not met: Kafka's own
Java producer reaches 16-21k/s with pre-encoded records on this shared 2-core machine,
and the simulator's ~25 us of CPU per record (simulate 5, encode 10, produce 11, the
broker's on top) is ~40k records per CPU-second.

Earlier figures (2026-11-25, kafka-python producer at the time):
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
import subprocess
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


KAFKA_REF = "Java producer-perf"
SIM_ONE = "simulator -> kafka, librdkafka, 1 process"


def task_cpu_ns(pid: int) -> dict:
    """CPU nanoseconds of each thread of ``pid`` (schedstat), with its name."""
    out = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for t in tids:
        try:
            with open(f"/proc/{pid}/task/{t}/schedstat") as f:
                ns = int(f.read().split()[0])
            with open(f"/proc/{pid}/task/{t}/comm") as f:
                comm = f.read().strip()
        except OSError:
            continue
        out[int(t)] = (comm, ns)
    return out


def processes_cpu_ns(pids) -> int:
    return sum(ns for pid in pids for _c, ns in task_cpu_ns(pid).values())


def thread_group(tid: int, comm: str) -> str:
    if tid == os.getpid():
        return "main thread: produce calls, delivery reports"
    if comm.startswith("rdk:"):
        return "librdkafka threads: batching, compression, sockets"
    if comm.startswith("polars"):
        return "polars pool: simulate, polars encoding"
    if comm.startswith("python") or comm == os.path.basename(sys.executable)[:15]:
        return "prefetch thread: simulate, encode"
    return "other threads"


def produce_child(args) -> int:
    """``--produce-child TOPIC``: one run of the simulator's path to Kafka in this process
    (whichever ``foliowatch`` is importable: this tree, or a ref's with PYTHONPATH), its
    CPU per thread from schedstat, sampled every 0.1 s so that threads which end before
    the run does (the prefetch thread, the client's) are counted; one JSON line."""
    import threading
    from foliowatch.kafka_io import KafkaSettings
    from foliowatch.simulator import load_scenario, produce_to_kafka
    sc = load_scenario(args.scenario, hosts=args.hosts, hours=args.kafka_minutes / 60.0,
                       interval_s=args.interval)
    settings = KafkaSettings(bootstrap=[args.bootstrap])
    seen, stop = {}, threading.Event()

    def sample():
        while True:
            seen.update(task_cpu_ns(os.getpid()))
            if stop.wait(0.1):
                return
    before = task_cpu_ns(os.getpid())
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    sampler_tid = None
    t0, c0 = time.monotonic(), time.process_time()
    r = produce_to_kafka(sc, settings, args.produce_child, seed=1)
    secs, cpu = time.monotonic() - t0, time.process_time() - c0
    stop.set()
    sampler_tid = sampler.native_id
    sampler.join()
    seen.update(task_cpu_ns(os.getpid()))
    groups: dict = {}
    for tid, (comm, ns) in seen.items():
        g = "benchmark's sampler" if tid == sampler_tid else thread_group(tid, comm)
        groups[g] = groups.get(g, 0) + ns - before.get(tid, (comm, 0))[1]
    n = r["sent"]
    groups["not sampled (threads' last 0.1 s)"] = max(0, cpu * 1e9 - sum(groups.values()))
    print(json.dumps({"records": n, "seconds": secs, "cpu_s": cpu,
                      "us_per_record": {k: round(v / n / 1e3, 2) for k, v in groups.items()},
                      "peak_rss_mib": round(rss_mib())}), flush=True)
    return 0


def ref_package(ref: str, tmp: Path) -> Path:
    """The repository at git ``ref`` laid out as the installed ``foliowatch`` package
    (its folders mapped as pyproject's package-dir does), for PYTHONPATH."""
    src, pkg = tmp / "ref-src", tmp / "ref-pkg"
    src.mkdir()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", ref], capture_output=True)
    if archive.returncode != 0:
        raise SystemExit(f"git archive {ref}: {archive.stderr.decode()[-500:]}")
    subprocess.run(["tar", "-x", "-C", str(src)], input=archive.stdout, check=True)
    shutil.copytree(src / "foliowatch", pkg / "foliowatch")
    for d in ("agent", "pipeline", "detector", "dashboards", "simulator", "shell"):
        (pkg / "foliowatch" / d).symlink_to(src / d)
    return pkg


def kafka_rows(args) -> list:
    """The Kafka rows, in rounds: Kafka's own Java producer (``kafka-producer-perf-test``:
    the same records from a payload file, the same count, acks, idempotence, codec and
    level, linger and batch size) beside the simulator's path (simulate, encode, produce,
    flush; a process of its own, CPU per thread) of this tree and, with
    ``--compare-with``, of a git ref's, each on a fresh 12-partition topic of the same
    broker, the broker's CPU per record measured around each; then the stages of the
    simulator's path alone."""
    import polars as pl
    from kafka.admin import KafkaAdminClient, NewTopic
    from foliowatch.kafka_io import KafkaSettings
    from foliowatch.shell.services import KafkaCluster
    from foliowatch.simulator import load_scenario, produce_to_kafka, simulate_frame
    from foliowatch.simulator.frames import to_wire_json
    from foliowatch.simulator.native_encode import encoder
    from foliowatch.simulator.outputs import wire_records
    from foliowatch.simulator.producer import LibrdkafkaRecordProducer, make_record_producer

    rows = []
    cluster = None
    tmp = Path(tempfile.mkdtemp(prefix="simbench-kafka-"))
    try:
        bootstrap = args.bootstrap
        broker_pids = [int(p) for p in args.broker_pids.split(",") if p]
        if not bootstrap:
            cluster = KafkaCluster(tmp / "kafka", brokers=1).start()
            bootstrap = cluster.bootstrap
            broker_pids = cluster.pids()
        settings = KafkaSettings(bootstrap=[bootstrap])
        admin = KafkaAdminClient(bootstrap_servers=bootstrap)

        def new_topic() -> str:
            name = f"bench.sim.{uuid.uuid4().hex[:8]}"
            admin.create_topics([NewTopic(name, num_partitions=12, replication_factor=1)])
            return name

        ksc = load_scenario(args.scenario, hosts=args.hosts, hours=args.kafka_minutes / 60.0,
                            interval_s=args.interval)
        n = sum(c.height for c in simulate_frame(ksc, 1))
        chunk = next(iter(simulate_frame(ksc, 1)))
        keys, values, _ = next(wire_records(iter([chunk])))
        payloads = tmp / "payloads.ndjson"
        payloads.write_bytes(b"\n".join(values[:20_000]))
        size = int(sum(len(v) for v in values) / len(values))
        bulk = LibrdkafkaRecordProducer.BULK
        java_props = ["acks=all", "enable.idempotence=true",
                      f"compression.type={settings.compression}",
                      f"linger.ms={bulk['linger.ms']}", f"batch.size={bulk['batch.size']}"]
        if settings.compression in ("zstd", "gzip", "lz4"):
            java_props.append(f"compression.{settings.compression}.level="
                              f"{bulk['compression.level']}")
        trees = [("this tree", None)]
        if args.compare_with:
            trees.append((args.compare_with, ref_package(args.compare_with, tmp)))

        def with_broker(row: dict, broker_ns: int) -> dict:
            row["broker_us_per_record"] = round(broker_ns / row["records"] / 1e3, 2)
            row["cpu_us_per_record"] = round(row["cpu_s"] / row["records"] * 1e6, 2)
            print(json.dumps({"what": row["what"], "cpu_us_per_record": row["cpu_us_per_record"],
                              "broker_us_per_record": row["broker_us_per_record"]}), flush=True)
            return row

        def java_perf() -> dict:
            kafka_sh = REPO / "deploy" / "kafka" / "kafka.sh"
            b0, c0, t0 = processes_cpu_ns(broker_pids), cpu_seconds(), time.monotonic()
            p = subprocess.run(["bash", str(kafka_sh), "tool", "producer-perf", "--topic",
                                new_topic(), "--num-records", str(n), "--throughput", "-1",
                                "--payload-file", str(payloads), "--producer-props",
                                f"bootstrap.servers={bootstrap}", *java_props],
                               capture_output=True, text=True, timeout=1800)
            secs, cpu = time.monotonic() - t0, cpu_seconds() - c0
            broker = processes_cpu_ns(broker_pids) - b0
            last = [l for l in p.stdout.splitlines() if "records sent" in l]
            if p.returncode != 0 or not last:
                raise SystemExit(f"producer-perf failed ({p.returncode}):\n{p.stdout[-2000:]}"
                                 f"\n{p.stderr[-2000:]}")
            sent = int(last[-1].split()[0])
            # the tool's own rate: from its first send to its last acknowledgement, JVM
            # start excluded (the simulator's rows include its producer's start); its CPU
            # includes the JVM's start
            row = {"what": f"{KAFKA_REF} ({size} B payloads, same props)", "records": sent,
                   "seconds": round(secs, 2), "records_per_s": int(float(last[-1].split()[3])),
                   "cpu_s": round(cpu, 2), "records_per_cpu_s": int(sent / cpu),
                   "mib": None, "bytes_per_record": size, "peak_rss_mib": round(rss_mib()),
                   "load_avg_1m": os.getloadavg()[0]}
            print(json.dumps(row), flush=True)
            return with_broker(row, broker)

        def simulator(label: str, pkg) -> dict:
            env = dict(os.environ)
            if pkg is not None:
                env["PYTHONPATH"] = str(pkg)
            b0 = processes_cpu_ns(broker_pids)
            p = subprocess.run([sys.executable, __file__, "--produce-child", new_topic(),
                                "--bootstrap", bootstrap, "--scenario", args.scenario,
                                "--hosts", str(args.hosts), "--interval", str(args.interval),
                                "--kafka-minutes", str(args.kafka_minutes)],
                               capture_output=True, text=True, env=env, timeout=3600)
            broker = processes_cpu_ns(broker_pids) - b0
            if p.returncode != 0:
                raise SystemExit(f"simulator ({label}) failed:\n{p.stderr[-3000:]}")
            r = json.loads(p.stdout.strip().splitlines()[-1])
            row = {"what": f"{SIM_ONE} ({label})", "records": r["records"],
                   "seconds": round(r["seconds"], 2),
                   "records_per_s": int(r["records"] / r["seconds"]),
                   "cpu_s": round(r["cpu_s"], 2),
                   "records_per_cpu_s": int(r["records"] / r["cpu_s"]), "mib": None,
                   "bytes_per_record": size, "peak_rss_mib": r["peak_rss_mib"],
                   "load_avg_1m": os.getloadavg()[0], "threads_us_per_record": r["us_per_record"]}
            print(json.dumps(row), flush=True)
            return with_broker(row, broker)

        for round_ in range(args.kafka_rounds):
            rows.append(java_perf())
            for label, pkg in (trees if round_ % 2 == 0 else trees[::-1]):
                rows.append(simulator(label, pkg))
            if args.with_kafka_python and round_ == 0:   # the slow client: once is enough
                def kafka_python():
                    r = produce_to_kafka(ksc, settings, new_topic(), seed=1,
                                         client="kafka-python")
                    return r["sent"], r["sent"] * size
                rows.append(measure("simulator -> kafka, kafka-python, 1 process", kafka_python))
            if args.kafka_workers > 1:
                def workers():
                    r = produce_to_kafka(ksc, settings, new_topic(), seed=1,
                                         workers=args.kafka_workers)
                    return r["sent"], r["sent"] * size
                rows.append(measure(f"simulator -> kafka, librdkafka, {args.kafka_workers} "
                                    "processes", workers))

        # where the time goes: each stage of the simulator's path alone, on one chunk
        rows.append(measure("  stage: simulate (one chunk, the plan included)",
                            lambda: (next(iter(simulate_frame(ksc, 1))).height, 0)))
        native = encoder()
        if native is not None:
            rows.append(measure("  stage: encode, native (bytes for the producer)",
                                lambda: (len(native.encode(chunk)), 0)))
        rows.append(measure("  stage: encode, polars (to_wire_json, bytes)",
                            lambda: (len(to_wire_json(chunk).cast(pl.Binary).to_list()), 0)))
        for client in ("confluent-kafka",) + (("kafka-python",) if args.with_kafka_python else ()):
            def produce_only(client=client):
                with make_record_producer(settings, new_topic(), client) as p:
                    p.send(keys, values)
                    p.flush()
                return len(keys), sum(len(v) for v in values)
            b0 = processes_cpu_ns(broker_pids)
            row = measure(f"  stage: produce + flush, pre-encoded, {client}", produce_only)
            rows.append(with_broker(row, processes_cpu_ns(broker_pids) - b0))
        admin.close()
    finally:
        if cluster is not None:
            cluster.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return rows


def summarise_kafka(rows) -> None:
    refs = [r for r in rows if r["what"].startswith(KAFKA_REF)]
    sims = [r for r in rows if r["what"].startswith(SIM_ONE)]
    if not refs or not sims:
        return
    print()
    per_round = len(sims) // len(refs)
    for i, ref in enumerate(refs):
        print(f"round {i + 1}: {KAFKA_REF} {ref['records_per_s']:,} records/s "
              f"({ref['cpu_us_per_record']} us CPU per record with the JVM's start; broker "
              f"{ref['broker_us_per_record']} us); load {ref['load_avg_1m']:.1f}")
        for sim in sims[i * per_round:(i + 1) * per_round]:
            print(f"  {sim['what'][len(SIM_ONE) + 1:]:14s} {sim['records_per_s']:,} records/s: "
                  f"{sim['records_per_s'] / ref['records_per_s']:.2f}x the reference, "
                  f"{sim['records_per_s'] / 100_000:.2f}x the target (>= 100,000, issue 17); "
                  f"{sim['cpu_us_per_record']} us CPU per record, broker "
                  f"{sim['broker_us_per_record']} us; load {sim['load_avg_1m']:.1f}")
            for k, v in sim["threads_us_per_record"].items():
                print(f"      {k:54s} {v:6.2f} us")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenario", default="seed-iomap-arm64-xfs")
    ap.add_argument("--hosts", type=int, default=100_000)
    ap.add_argument("--interval", type=float, default=10.0)
    ap.add_argument("--minutes", type=float, default=5.0,
                    help="simulated minutes for the file runs (5 min = ~3M records)")
    ap.add_argument("--kafka-minutes", type=float, default=1.0,
                    help="simulated minutes for the Kafka run")
    ap.add_argument("--kafka-workers", type=int, default=1,
                    help="also measure this many producer processes (when > 1)")
    ap.add_argument("--with-kafka-python", action="store_true",
                    help="also measure kafka-python's client (once)")
    ap.add_argument("--compare-with", metavar="GIT_REF",
                    help="also run the simulator's path of this git ref (e.g. main), "
                         "alternating with this tree's, on the same broker")
    ap.add_argument("--broker-pids", default="",
                    help="with --bootstrap: the broker's process ids, for its CPU")
    ap.add_argument("--produce-child", metavar="TOPIC", help=argparse.SUPPRESS)
    ap.add_argument("--kafka-rounds", type=int, default=2,
                    help="rounds of the Kafka rows, each the reference then the simulator")
    ap.add_argument("--out", help="folder for the files (default: a temp folder on disk)")
    ap.add_argument("--formats", default="generate,jsonl-devnull,jsonl,parquet")
    ap.add_argument("--no-kafka", action="store_true")
    ap.add_argument("--bootstrap", help="use this broker instead of starting one")
    args = ap.parse_args()
    if args.produce_child:
        return produce_child(args)

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
        rows += kafka_rows(args)

    print()
    print(f"{'what':58s} {'records':>10s} {'s':>7s} {'records/s':>10s} {'rec/cpu-s':>10s} "
          f"{'B/rec':>6s} {'RSS MiB':>8s} {'load':>5s}")
    for r in rows:
        print(f"{r['what'][:58]:58s} {r['records']:10d} {r['seconds']:7.2f} "
              f"{r['records_per_s']:10d} {r['records_per_cpu_s'] or 0:10d} "
              f"{r['bytes_per_record'] or 0:6d} {r['peak_rss_mib']:8d} {r['load_avg_1m']:5.1f}")
    summarise_kafka(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
