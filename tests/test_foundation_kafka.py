"""The real Kafka broker: project producer -> broker -> project consumer, kcat and
Kafka's own console consumer all see the same bytes; a 3-broker cluster keeps an
acks=all message when one broker stops."""
import subprocess
import time

import pytest

from foliowatch import kafka_io, schema
from foliowatch.kafka_io import KafkaSettings

pytestmark = pytest.mark.kafka


def _produce(bootstrap, topic, records):
    settings = KafkaSettings(bootstrap=bootstrap.split(","))
    producer = kafka_io.make_producer(settings)
    try:
        for rec in records:
            producer.send(topic, key=rec["host_id"].encode(), value=schema.encode(rec)).get(timeout=30)
    finally:
        producer.close()


def _consume_all(bootstrap, topic, expected, timeout=30.0):
    consumer = kafka_io.make_consumer(KafkaSettings(bootstrap=bootstrap.split(",")), topic,
                                      group_id=None, consumer_timeout_ms=1000)
    got, deadline = [], time.monotonic() + timeout
    try:
        while len(got) < expected and time.monotonic() < deadline:
            for msg in consumer:
                got.append(msg)
    finally:
        consumer.close()
    return got


def test_sample_reads_back_identically_through_project_code_kcat_and_console_consumer(kafka, topic):
    records = [schema.example_record(seq=i, ts=1764000000.0 + 10 * i) for i in range(5)]
    wire = [schema.encode(r) for r in records]
    _produce(kafka.bootstrap, topic, records)

    msgs = _consume_all(kafka.bootstrap, topic, len(records))
    assert sorted(m.value for m in msgs) == sorted(wire)
    assert sorted((schema.decode(m.value)["seq"] for m in msgs)) == list(range(5))
    assert {m.key for m in msgs} == {b"db-arm-0001"}
    # one key -> one partition -> per-host order preserved
    assert [schema.decode(m.value)["seq"] for m in msgs] == list(range(5))

    # kcat: an independent C client (librdkafka)
    kc = subprocess.run(["kcat", "-C", "-b", kafka.bootstrap, "-t", topic, "-e", "-q",
                         "-f", "%s\n"], capture_output=True, timeout=60)
    assert kc.returncode == 0, kc.stderr.decode()
    kcat_lines = [l for l in kc.stdout.split(b"\n") if l]
    assert sorted(kcat_lines) == sorted(wire)

    # Kafka's own Java console consumer from the same jars
    cc = kafka.tool("console-consumer", "--bootstrap-server", kafka.bootstrap, "--topic", topic,
                    "--from-beginning", "--max-messages", str(len(records)), "--timeout-ms", "30000")
    assert cc.returncode == 0, cc.stderr.decode()[-2000:]
    java_lines = [l for l in cc.stdout.split(b"\n") if l.startswith(b"{")]
    assert sorted(java_lines) == sorted(wire)
    assert [schema.decode(l) for l in sorted(java_lines)] == [schema.decode(w) for w in sorted(wire)]


def test_foliowatch_topics_exist_with_partitions_and_retention(kafka):
    p = kafka.tool("topics", "--bootstrap-server", kafka.bootstrap, "--describe",
                   "--topic", kafka_io.TOPIC_SAMPLES)
    assert p.returncode == 0, p.stderr.decode()
    out = p.stdout.decode()
    assert "PartitionCount: 6" in out and "retention.ms=604800000" in out
    listing = kafka.tool("topics", "--bootstrap-server", kafka.bootstrap, "--list").stdout.decode()
    for t in (kafka_io.TOPIC_SAMPLES, kafka_io.TOPIC_DLQ, kafka_io.TOPIC_REGRESSIONS):
        assert t in listing.split()


@pytest.mark.slow
def test_three_broker_cluster_keeps_acked_message_when_a_broker_stops(kafka3):
    from kafka.admin import KafkaAdminClient, NewTopic

    admin = KafkaAdminClient(bootstrap_servers=kafka3.bootstrap)
    admin.create_topics([NewTopic("replicated", num_partitions=3, replication_factor=3,
                                  topic_configs={"min.insync.replicas": "2"})])
    admin.close()
    desc = kafka3.tool("topics", "--bootstrap-server", kafka3.bootstrap, "--describe",
                       "--topic", "replicated").stdout.decode()
    assert "ReplicationFactor: 3" in desc

    rec = schema.example_record(seq=42)
    _produce(kafka3.bootstrap, "replicated", [rec])
    pids = kafka3.pids()
    kafka3.stop_node(2)
    assert len(kafka3.pids()) == len(pids) - 1
    survivors = ",".join(b for i, b in enumerate(kafka3.bootstrap.split(",")) if i != 1)
    msgs = _consume_all(survivors, "replicated", 1, timeout=60)
    assert [schema.decode(m.value) for m in msgs] == [rec]
    # still writable with acks=all: 2 in-sync replicas remain
    _produce(survivors, "replicated", [schema.example_record(seq=43)])
    assert len(_consume_all(survivors, "replicated", 2, timeout=60)) == 2


def test_kafka_perf_tools_run_from_the_same_jars(kafka, topic):
    prod = kafka.tool("producer-perf", "--topic", topic, "--num-records", "2000", "--record-size", "200",
                      "--throughput", "-1", "--producer-props", f"bootstrap.servers={kafka.bootstrap}",
                      "acks=all")
    assert prod.returncode == 0, prod.stderr.decode()[-2000:]
    assert b"2000 records sent" in prod.stdout
    cons = kafka.tool("consumer-perf", "--bootstrap-server", kafka.bootstrap, "--topic", topic,
                      "--messages", "2000", "--timeout", "30000")
    assert cons.returncode == 0, cons.stderr.decode()[-2000:]
    # header line, then one CSV row whose 5th column is the message count
    row = [l for l in cons.stdout.decode().splitlines() if l and l[0].isdigit()][-1].split(",")
    assert int(row[4].strip()) == 2000
