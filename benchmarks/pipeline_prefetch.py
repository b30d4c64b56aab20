"""What bounds the pipeline's records/s by the wall clock: librdkafka's prefetch bounds
(``kafka_client.ConsumerOptions.queued_min_messages`` / ``queued_max_kbytes``) against
its own defaults, with confluent-kafka consuming alone and with the whole pipeline, on
one topic of the real broker (issue 17).

    .venv/bin/python benchmarks/pipeline_prefetch.py --records 300000

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
d[-2], d[-1] = int(sys.argv[1]), int(sys.argv[2])
kc.ConsumerOptions.__init__.__defaults__ = tuple(d)
'''

CONSUME = PATCH + r'''
import json, time
from foliowatch.kafka_io import KafkaSettings
from foliowatch.pipeline.kafka_client import ConsumerOptions, Listener, open_consumer
bootstrap, topic, n = sys.argv[3], sys.argv[4], int(sys.argv[5])
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
sys.argv = ["foliowatch"] + sys.argv[3:]
from foliowatch.shell.cli import main
sys.exit(main())
'''


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=300_000)
    args = ap.parse_args()
    import pipeline_throughput as pt
    from kafka.admin import KafkaAdminClient, NewTopic

    from foliowatch.shell.services import KafkaCluster
    work = Path(tempfile.mkdtemp(prefix="fw-prefetch-"))
    cluster = KafkaCluster(work / "kafka", brokers=1).start()
    settings = [(5_000, 8 * 1024), (20_000, 16 * 1024), (100_000, 64 * 1024)]  # before, shipped, librdkafka's
    try:
        topic = f"prefetch.{uuid.uuid4().hex[:8]}"
        admin = KafkaAdminClient(bootstrap_servers=cluster.bootstrap)
        admin.create_topics([NewTopic(topic, num_partitions=6, replication_factor=1),
                             NewTopic(f"{topic}.dlq", num_partitions=1, replication_factor=1)])
        admin.close()
        n = pt.produce(cluster.bootstrap, topic, args.records, "zstd", 1)
        for what in ("consume only", "whole pipeline"):
            for qmin, qkb in settings * 2:
                row = {"what": what, "queued_min_messages": qmin, "queued_max_kbytes": qkb}
                if what == "consume only":
                    p = subprocess.run([sys.executable, "-c", CONSUME, str(qmin), str(qkb),
                                        cluster.bootstrap, topic, str(n)],
                                       capture_output=True, text=True, cwd=REPO)
                    if p.returncode:
                        raise SystemExit(p.stderr[-3000:])
                    row.update(json.loads(p.stdout.strip().splitlines()[-1]))
                else:
                    out = work / f"ds-{uuid.uuid4().hex[:6]}"
                    p = subprocess.run(
                        [sys.executable, "-c", PIPELINE, str(qmin), str(qkb), "pipeline",
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
