"""The simulator through the real broker: every record produced (duplicates included)
is consumed, byte for byte, keyed by host so each host stays in one partition (the one
the Java client and the agent's kafka-python would pick); the real pipeline accepts every
record of a simulated fleet; a failed delivery is an error naming the topic, with either
client; the CLI drives the same path; --realtime paces records by their simulated time."""
from __future__ import annotations

import json
import time
import uuid
from collections import defaultdict

import pytest
from kafka.partitioner.default import murmur2

from foliowatch import schema
from foliowatch.errors import ServiceError
from foliowatch.shell import cli
from foliowatch.kafka_io import KafkaSettings, make_consumer
from foliowatch.shell.services import create_topics
from foliowatch.simulator import (load_scenario, produce_to_kafka, simulate_frame,
                                  to_wire_bytes)
from foliowatch.simulator.producer import CLIENTS

pytestmark = pytest.mark.kafka


def consume_all(bootstrap, topic, expected, timeout=60.0):
    consumer = make_consumer(KafkaSettings(bootstrap=[bootstrap]), topic, group_id=None,
                             consumer_timeout_ms=2000, max_partition_fetch_bytes=8 << 20)
    got, deadline = [], time.monotonic() + timeout
    try:
        while len(got) < expected and time.monotonic() < deadline:
            for msg in consumer:
                got.append(msg)
        # nothing beyond what was produced
        got.extend(consumer.poll(timeout_ms=1000, max_records=100_000).get(None, []))
        for batch in consumer.poll(timeout_ms=500).values():
            got.extend(batch)
    finally:
        consumer.close()
    return got


def small():
    return load_scenario("seed-iomap-arm64-xfs", hosts=60, hours=0.25, seed=3,
                         faults={"duplicate": 0.01, "late": 0.01, "lost": 0.01})


def test_produced_count_equals_consumed_count(kafka, topic):
    sc = small()
    wire = []
    for chunk in simulate_frame(sc, 3):
        wire += list(zip(chunk["host_id"].to_list(), to_wire_bytes(chunk)))
    result = produce_to_kafka(sc, KafkaSettings(bootstrap=[kafka.bootstrap]), topic, seed=3)
    assert result["sent"] == len(wire) > 5000
    msgs = consume_all(kafka.bootstrap, topic, len(wire))
    assert len(msgs) == len(wire)
    assert sorted(m.value for m in msgs) == sorted(v for _, v in wire)
    assert all(schema.encode(json.loads(v)) == v for _, v in wire)   # schema.encode's bytes
    partitions = defaultdict(set)
    for m in msgs:
        rec = schema.decode(m.value)
        assert m.key == rec["host_id"].encode()
        partitions[m.key].add(m.partition)
    assert all(len(p) == 1 for p in partitions.values())
    assert len({p for ps in partitions.values() for p in ps}) > 1
    # the partition the Java client (and the agent's kafka-python) picks for the host id
    for key, (p,) in partitions.items():
        assert p == (murmur2(key) & 0x7FFFFFFF) % 6, key


def test_the_pipeline_accepts_every_record_of_a_simulated_fleet(kafka, tmp_path):
    from test_pipeline_kafka import read_topic, run_to_end
    topic = f"test.simfleet.{uuid.uuid4().hex[:8]}"
    create_topics(kafka.bootstrap, topic, partitions=6)
    create_topics(kafka.bootstrap, f"{topic}.dlq")
    # every fault but late deliveries (those go to the DLQ by design, as "late")
    sc = load_scenario("seed-iomap-arm64-xfs", hosts=80, hours=0.5, seed=11,
                       faults={"duplicate": 0.01, "lost": 0.01, "late": 0.0})
    sent = produce_to_kafka(sc, KafkaSettings(bootstrap=[kafka.bootstrap]), topic,
                            seed=11)["sent"]
    assert sent > 10_000
    t = run_to_end(kafka, topic, tmp_path / "ds", "simfleet")
    assert t["records"] == sent
    assert t["invalid"] == 0 and t["late"] == 0
    assert t["accepted"] + t["duplicates"] == sent and t["duplicates"] > 0
    assert read_topic(kafka, f"{topic}.dlq") == []


@pytest.mark.parametrize("client", CLIENTS)
def test_a_failed_delivery_is_an_error_naming_the_topic(kafka, client):
    from kafka.admin import KafkaAdminClient, NewTopic
    topic = f"test.tiny.{uuid.uuid4().hex[:8]}"
    admin = KafkaAdminClient(bootstrap_servers=kafka.bootstrap)
    try:   # the broker refuses every record: each is larger than the topic allows
        admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1,
                                      topic_configs={"max.message.bytes": "300"})])
    finally:
        admin.close()
    sc = load_scenario("control-no-regression", hosts=5, hours=0.02, seed=1)
    settings = KafkaSettings(bootstrap=[kafka.bootstrap], compression="none")
    with pytest.raises(ServiceError) as err:
        produce_to_kafka(sc, settings, topic, seed=1, client=client)
    msg = str(err.value)
    assert f"kafka topic {topic}:" in msg and "not delivered" in msg
    assert "max.message.bytes" in msg, msg


def test_cli_produces_to_kafka_with_two_workers_and_writes_truth(kafka, topic, tmp_path,
                                                                  capsys):
    truth = tmp_path / "truth.json"
    rc = cli.main(["simulate", "--scenario", "control-no-regression", "--hosts", "30",
                   "--hours", "0.1", "--seed", "2", "--bootstrap", kafka.bootstrap,
                   "--topic", topic, "--truth", str(truth), "--workers", "2"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    sc = load_scenario("control-no-regression", hosts=30, hours=0.1, seed=2)
    expect = sorted(v for c in simulate_frame(sc) for v in to_wire_bytes(c))
    msgs = consume_all(kafka.bootstrap, topic, out["sent"])
    assert len(msgs) == out["sent"] == len(expect) > 900
    assert sorted(m.value for m in msgs) == expect
    assert json.loads(truth.read_text())["scenario"]["name"] == "control-no-regression"


def test_realtime_paces_records_by_simulated_time(kafka, topic):
    sc = load_scenario("control-no-regression", hosts=5, hours=120 / 3600, interval_s=10,
                       seed=1)
    t0 = time.monotonic()
    result = produce_to_kafka(sc, KafkaSettings(bootstrap=[kafka.bootstrap]), topic, seed=1,
                              realtime=True, speed=60.0)
    took = time.monotonic() - t0
    # 120 simulated seconds at 60x: about 2 s of wall clock, not "as fast as possible"
    assert 1.5 <= took <= 10, took
    assert len(consume_all(kafka.bootstrap, topic, result["sent"])) == result["sent"]


def test_a_ready_made_confluent_producer_is_refused_as_it_would_hide_failed_deliveries():
    from confluent_kafka import Producer
    from foliowatch.errors import ConfigError
    from foliowatch.simulator.producer import make_record_producer
    with pytest.raises(ConfigError, match="client='confluent-kafka'"):
        make_record_producer(KafkaSettings(), "t", producer=Producer({}))
