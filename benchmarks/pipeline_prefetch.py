"""What bounds the pipeline's records/s by the wall clock: librdkafka's prefetch bounds
(``kafka_client.ConsumerOptions.queued_min_messages`` / ``queued_max_kbytes``) and the
wait once they are reached (``fetch_queue_backoff_ms``) against its own defaults, with
confluent-kafka consuming alone and with the whole pipeline, on one topic of the real
broker (issue 17).

    .venv/bin/python benchmarks/pipeline_prefetch.py --records 300000
    .venv/bin/python benchmarks/pipeline_prefetch.py --settings 20000,16384,1000 20000,16384,10
    .venv/bin/python benchmarks/pipeline_prefetch.py --settings 20000,16384,10 --compression gzip --wire-batch 12

Prints one JSON object per run: records/s, CPU µs per record and (whole pipeline) peak
RSS, with the load average. Each setting runs twice, alternating.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

# the prefetch bounds of a run: ConsumerOptions' defaults replaced before the client opens
PATCH = r'''
import sys
import foliowatch.pipeline.kafka_client as kc
d = list(kc.ConsumerOptions.__init__.__defaults__)
d[-3], d[-2], d[-1] = (int(a) for a in sys.argv[1].split(","))
kc.ConsumerOptions.__init__.__defaults__ = tuple(d)
'''

CONSUME = PATCH + r'''
import json, time
from foliowatch.kafka_io import KafkaSettings
from foliowatch.pipeline.kafka_client import ConsumerOptions, Listener, open_consumer
bootstrap, topic, n = sys.argv[2], sys.argv[3], int(sys.argv[4])
class FromStart(Listener):
    def assigned(self, p): return {}
    def revoked(self, p): return {}
    def released(self, p, c, e): pass
    def lost(self, p): pass
c = open_consumer("confluent-kafka", KafkaSettings(bootstrap=[bootstrap]),
                  ConsumerOptions(group=f"prefetch-{time.time_ns()}"))
c.subscribe(topic, FromStart())
got, t0 = 0, None
while got < n:
    recs = c.poll(10000, 1.0)
    if len(recs) and t0 is None:
        t0, c0 = time.monotonic(), time.process_time()
    got += len(recs)
secs, cpu = time.monotonic() - t0, time.process_time() - c0
c.close(5)
print(json.dumps({"records_per_s": round(got / secs), "cpu_us_per_record": round(cpu / got * 1e6, 2)}))
'''

PIPELINE = PATCH + r'''
sys.argv = ["foliowatch"] + sys.argv[2:]
from foliowatch.shell.cli import main
sys.exit(main())
'''


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=300_000)
    from foliowatch.pipeline.kafka_client import ConsumerOptions
    shipped = ConsumerOptions(group="")
    ap.add_argument("--settings", nargs="+", metavar="MSGS,KIB,BACKOFF_MS",
                    default=[f"{shipped.queued_min_messages},{shipped.queued_max_kbytes},"
                             f"{shipped.fetch_queue_backoff_ms}",
                             "20000,16384,10", "100000,65536,1000"],
                    help="prefetch bounds to compare: queued.min.messages, "
                         "queued.max.messages.kbytes, fetch.queue.backoff.ms "
                         "(default: the shipped ones (ConsumerOptions), those shipped "
                         "until the evening of 2026-12-04, librdkafka's own)")
    ap.add_argument("--compression", default="zstd", choices=("none", "gzip", "lz4", "zstd"),
                    help="the topic's codec (the agents send zstd by default)")
    ap.add_argument("--wire-batch", type=int, default=0, metavar="RECORDS",
                    help="produce the topic in batches of about RECORDS records with "
                         "kafka-python, as the agents do (12 at their defaults); default: "
                         "the simulator's 1 MiB batches")
    args = ap.parse_args()
    import pipeline_throughput as pt
    from kafka.admin import KafkaAdminClient, NewTopic

    from foliowatch.shell.services import KafkaCluster
    work = Path(tempfile.mkdtemp(prefix="fw-prefetch-"))
    cluster = KafkaCluster(work / "kafka", brokers=1).start()
    settings = [tuple(int(v) for v in s.split(",")) for s in args.settings]
    if any(len(s) != 3 for s in settings):
        raise SystemExit("--settings: each is MSGS,KIB,BACKOFF_MS, e.g. 20000,16384,10")
    try:
        topic = f"prefetch.{uuid.uuid4().hex[:8]}"
        admin = KafkaAdminClient(bootstrap_servers=cluster.bootstrap)
        admin.create_topics([NewTopic(topic, num_partitions=6, replication_factor=1),
                             NewTopic(f"{topic}.dlq", num_partitions=1, replication_factor=1)])
        admin.close()
        n = pt.produce(cluster.bootstrap, topic, args.records, args.compression, 1,
                       args.wire_batch)
        for what in ("consume only", "whole pipeline"):
            for qmin, qkb, backoff in settings * 2:
                row = {"what": what, "queued_min_messages": qmin, "queued_max_kbytes": qkb,
                       "fetch_queue_backoff_ms": backoff, "compression": args.compression,
                       "wire_batch": args.wire_batch or "1 MiB"}
                bounds = f"{qmin},{qkb},{backoff}"
                if what == "consume only":
                    p = subprocess.run([sys.executable, "-c", CONSUME, bounds,
                                        cluster.bootstrap, topic, str(n)],
                                       capture_output=True, text=True, cwd=REPO)
                    if p.returncode:
                        raise SystemExit(p.stderr[-3000:])
                    row.update(json.loads(p.stdout.strip().splitlines()[-1]))
                else:
                    out = work / f"ds-{uuid.uuid4().hex[:6]}"
                    p = subprocess.run(
                        [sys.executable, "-c", PIPELINE, bounds, "pipeline",
                         "--bootstrap", cluster.bootstrap, "--topic", topic,
                         "--dlq-topic", f"{topic}.dlq", "--group", f"pf-{uuid.uuid4().hex[:6]}",
                         "--output", str(out), "--until-idle", "3", "--metrics-addr", "off",
                         "--log-level", "WARNING"], capture_output=True, text=True, cwd=REPO)
                    if p.returncode:
                        raise SystemExit(p.stderr[-3000:])
                    t = json.loads([ln for ln in p.stdout.splitlines() if ln.startswith("{")][-1])
                    row.update({"records_per_s": round(t["records"] / t["busy_seconds"]),
                                "cpu_us_per_record": round(t["busy_cpu_seconds"] / t["records"] * 1e6, 2),
                                "peak_rss_mb": t["peak_rss_mb"]})
                row["load_avg_1m"] = round(os.getloadavg()[0], 1)
                print(json.dumps(row), flush=True)
    finally:
        cluster.stop()
        import shutil
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
