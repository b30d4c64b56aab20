"""``foliowatch pipeline`` against the real broker: simulator records end up in the
dataset exactly as an independent computation says; a SIGKILL mid-batch and a restart,
or a second instance taking over, leave the dataset identical to an uninterrupted run;
partitions revoked by a rebalance are committed at their checkpoint; a hostile stream is
split exactly into aggregated records, duplicates and dead letters.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import pytest

from foliowatch import schema as wire
from foliowatch.kafka_io import KafkaSettings, make_producer
from foliowatch.shell.services import create_topics, free_port

from test_pipeline_reference import Reference, assert_dataset_matches

pytestmark = pytest.mark.kafka
REPO = Path(__file__).resolve().parents[1]
FAULTS = Path(__file__).resolve().parent / "pipeline_faults.py"


# -- helpers ----------------------------------------------------------------------------
def new_topic(kafka, partitions: int = 6) -> str:
    name = f"test.pipe.{uuid.uuid4().hex[:10]}"
    create_topics(kafka.bootstrap, name, partitions=partitions)
    create_topics(kafka.bootstrap, f"{name}.dlq")
    return name


def produce_simulated(kafka, topic: str, hosts: int = 40, hours: float = 0.5, seed: int = 3):
    from foliowatch.simulator import load_scenario, produce_to_kafka
    sc = load_scenario("seed-iomap-arm64-xfs", hosts=hosts, hours=hours, seed=seed,
                       faults={"late": 0.01, "duplicate": 0.01})
    settings = KafkaSettings(bootstrap=[kafka.bootstrap])
    producer = make_producer(settings, batch_size=512 * 1024, linger_ms=50)
    try:
        res = produce_to_kafka(sc, settings, topic=topic, seed=seed, producer=producer)
    finally:
        producer.close()
    assert res["sent"] > 1000
    return res["sent"]


def read_topic(kafka, topic: str) -> List[Tuple[int, int, bytes, Optional[bytes], list]]:
    """Every message of ``topic`` as (partition, offset, value, key, headers)."""
    from kafka import KafkaConsumer, TopicPartition
    c = KafkaConsumer(bootstrap_servers=kafka.bootstrap, enable_auto_commit=False,
                      group_id=None, max_poll_records=5000)
    try:
        parts = [TopicPartition(topic, p) for p in sorted(c.partitions_for_topic(topic) or [])]
        c.assign(parts)
        c.seek_to_beginning(*parts)
        ends = c.end_offsets(parts)
        out = []
        deadline = time.monotonic() + 60
        while any(c.position(tp) < ends[tp] for tp in parts):
            assert time.monotonic() < deadline, "could not read the topic back"
            for recs in c.poll(timeout_ms=500).values():
                out += [(r.partition, r.offset, r.value, r.key, r.headers) for r in recs]
        return out
    finally:
        c.close()


def start_pipeline(kafka, topic: str, out: Path, group: str, *extra: str,
                   env: Optional[Dict[str, str]] = None, log: Optional[Path] = None,
                   faults: Tuple[str, ...] = ()):
    """``faults``: options of tests/pipeline_faults.py (the pipeline then runs under it)."""
    runner = ([sys.executable, str(FAULTS), *faults, "--"] if faults
              else [sys.executable, "-m", "foliowatch"])
    argv = [*runner, "pipeline", "--bootstrap", kafka.bootstrap,
            "--topic", topic, "--dlq-topic", f"{topic}.dlq", "--group", group,
            "--output", str(out), *extra]
    if "--metrics-addr" not in extra:
        argv += ["--metrics-addr", "off"]
    log = log or out.parent / f"{group}.{uuid.uuid4().hex[:6]}.log"
    fh = open(log, "wb")
    proc = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, cwd=REPO,
                            env={**os.environ, **(env or {})})
    proc.log_path = log
    return proc


def wait(proc, timeout: float = 180) -> int:
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError(f"pipeline did not finish in {timeout}s:\n"
                             + proc.log_path.read_text()[-3000:])


def totals(proc) -> dict:
    lines = [l for l in proc.log_path.read_text().splitlines() if l.startswith("{")]
    return json.loads(lines[-1])


def snapshot(root: Path) -> Dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes()
            for p in sorted(root.glob("level=*/**/*.parquet"))}


def run_to_end(kafka, topic, out, group, *extra, **kw) -> dict:
    proc = start_pipeline(kafka, topic, out, group, "--until-idle", "2", *extra, **kw)
    rc = wait(proc)
    assert rc == 0, proc.log_path.read_text()[-3000:]
    return totals(proc)


@pytest.fixture(scope="module")
def sim_topic(kafka, tmp_path_factory):
    """A topic with simulator records, and the dataset of one uninterrupted run on it."""
    topic = new_topic(kafka)
    produce_simulated(kafka, topic)
    out = tmp_path_factory.mktemp("ref") / "ds"
    t = run_to_end(kafka, topic, out, "ref")
    return topic, out, t


# -- tests ------------------------------------------------------------------------------
def test_simulator_records_through_the_broker_match_an_independent_computation(
        kafka, sim_topic, tmp_path):
    topic, out, t = sim_topic
    msgs = read_topic(kafka, topic)
    ref = Reference([(p, o, v) for p, o, v, _k, _h in msgs])
    assert ref.late and ref.duplicates
    assert t["records"] == len(msgs) == ref.total
    assert t["accepted"] == len(ref.accepted) and t["duplicates"] == len(ref.duplicates)
    assert t["late"] == len(ref.late) and t["invalid"] == len(ref.invalid) == 0
    assert_dataset_matches(out, ref)
    # every late record is in the DLQ with its coordinates and original bytes
    dlq = [json.loads(v) for _p, _o, v, _k, _h in read_topic(kafka, f"{topic}.dlq")]
    by_coord = {(p, o): v for p, o, v, _k, _h in msgs}
    assert sorted((d["partition"], d["offset"]) for d in dlq) == sorted(ref.late)
    for d in dlq:
        assert d["reason"] == "late" and d["topic"] == topic
        assert base64.b64decode(d["value_b64"]) == by_coord[(d["partition"], d["offset"])]
    # offsets are committed: a rerun in the same group finds nothing left to do
    t2 = run_to_end(kafka, topic, out, "ref")
    assert t2["records"] == 0


def test_metrics_expose_cohort_gauges_lag_and_counts(kafka, tmp_path):
    topic = new_topic(kafka)
    n = produce_simulated(kafka, topic, hosts=20, hours=0.25, seed=5)
    port = free_port()
    proc = start_pipeline(kafka, topic, tmp_path / "ds", "metrics", "--until-idle", "6",
                          "--metrics-addr", f"127.0.0.1:{port}")
    try:
        body, deadline = "", time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                    body = r.read().decode()
                if (f"foliowatch_pipeline_records_in_total {float(n)}" in body
                        and "foliowatch_pipeline_cohort_write_mib_s{" in body):
                    break
            except OSError:
                pass
            time.sleep(0.3)
        assert f"foliowatch_pipeline_records_in_total {float(n)}" in body, body[-2000:]
        gauges = [l for l in body.splitlines()
                  if l.startswith("foliowatch_pipeline_cohort_write_mib_s{")]
        assert gauges and all("host" not in l.split("}")[0].replace("hosts", "") for l in gauges)
        assert 'arch="arm64"' in body and 'stat="p99"' in body and 'fs="xfs"' in body
        lag = [l for l in body.splitlines()
               if l.startswith("foliowatch_pipeline_consumer_lag_records{")]
        assert len(lag) == 6 and all(l.endswith(" 0.0") for l in lag), lag
        assert "foliowatch_pipeline_batch_duration_seconds_count" in body
        assert 'foliowatch_pipeline_records_dlq_total{reason="late"}' in body
    finally:
        assert wait(proc) == 0


def test_sigkill_mid_batch_and_restart_gives_the_identical_dataset(kafka, sim_topic, tmp_path):
    topic, ref_out, _t = sim_topic
    expected = snapshot(ref_out)
    out = tmp_path / "ds"
    small = ("--batch-records", "700", "--checkpoint-seconds", "0")
    # 1) killed right after window files are durable, before the checkpoint that
    #    covers them (the worst moment)
    proc = start_pipeline(kafka, topic, out, "crash", "--until-idle", "2", *small,
                          faults=("--kill-after-windows", "40"))
    assert wait(proc) == -signal.SIGKILL
    partial = snapshot(out)
    assert 0 < len(partial) < len(expected)
    # 2) restarted, then SIGKILLed from outside at an arbitrary point of a batch
    proc = start_pipeline(kafka, topic, out, "crash", "--until-idle", "2", *small,
                          faults=("--batch-pause", "0.05"))
    deadline = time.monotonic() + 60
    while len(snapshot(out)) < len(partial) + 40 and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    # 3) restarted to the end
    run_to_end(kafka, topic, out, "crash", *small)
    got = snapshot(out)
    assert sorted(got) == sorted(expected), "same windows, same file names"
    assert all(got[k] == expected[k] for k in expected), "byte-identical files"


def test_two_instances_share_partitions_and_one_takes_over(kafka, sim_topic, tmp_path):
    topic, ref_out, _t = sim_topic
    expected = snapshot(ref_out)
    out = tmp_path / "ds"
    args = ("--until-idle", "8", "--batch-records", "300",
            "--checkpoint-seconds", "0.5", "--log-level", "INFO")
    pause = ("--batch-pause", "0.2")
    a = start_pipeline(kafka, topic, out, "pair", *args, faults=pause)
    b = start_pipeline(kafka, topic, out, "pair", *args, faults=pause)
    try:
        deadline = time.monotonic() + 90
        def assigned(p):
            return [l for l in p.log_path.read_text().splitlines() if "assigned" in l]

        def checkpointed_since_sharing(p):
            lines = p.log_path.read_text().splitlines()
            last = max(i for i, l in enumerate(lines) if "assigned" in l)
            return any("checkpoint: next offsets" in l for l in lines[last:])
        while time.monotonic() < deadline:
            la, lb = assigned(a), assigned(b)
            if (la and lb and "[]" not in la[-1] and "[]" not in lb[-1]
                    and checkpointed_since_sharing(a) and checkpointed_since_sharing(b)):
                break
            time.sleep(0.2)
        else:
            raise AssertionError("both instances should own partitions and make progress:\n"
                                 + a.log_path.read_text()[-2000:] + b.log_path.read_text()[-2000:])
        a.send_signal(signal.SIGTERM)          # stop one: it checkpoints and leaves the group
        assert wait(a, 60) == 0
        ta = totals(a)
        assert wait(b, 180) == 0
        tb = totals(b)
    finally:
        for p in (a, b):
            if p.poll() is None:
                p.kill()
                p.wait()
    assert ta["records"] > 0 and tb["records"] > 0
    assert "revoked" in b.log_path.read_text() or "assigned" in b.log_path.read_text()
    got = snapshot(out)
    assert sorted(got) == sorted(expected)
    assert all(got[k] == expected[k] for k in expected)


def _committed(kafka, group: str, topic: str, partitions) -> Dict[int, Optional[int]]:
    """The group's committed offsets, as the broker has them (None: never committed)."""
    from kafka import KafkaConsumer, TopicPartition
    c = KafkaConsumer(bootstrap_servers=kafka.bootstrap, group_id=group,
                      enable_auto_commit=False)
    try:
        return {p: c.committed(TopicPartition(topic, p), timeout_ms=10_000)
                for p in partitions}
    finally:
        c.close(autocommit=False)


def test_partitions_revoked_by_a_rebalance_are_committed_at_their_checkpoint(
        kafka, tmp_path):
    """A second instance joins the group: the first one's partitions are revoked, and
    their offsets end up committed in the group (not only in the checkpoint files) at
    exactly the checkpointed positions. Periodic checkpoints are off, so nothing but the
    rebalance can have committed them."""
    from foliowatch.pipeline.sinks import StateStore

    topic = new_topic(kafka)
    n = produce_simulated(kafka, topic, hosts=20, hours=0.25, seed=11)
    ends = {p: o for p, o in _end_offsets(kafka, topic).items() if o > 0}
    assert len(ends) >= 3, ends        # partitions with records (hosts hash unevenly)
    out, group = tmp_path / "ds", "revoke"
    args = ("--checkpoint-seconds", "3600", "--log-level", "INFO")
    port = free_port()
    a = start_pipeline(kafka, topic, out, group, *args, "--metrics-addr", f"127.0.0.1:{port}")
    b = None
    store = StateStore(str(out / "_state"), f"{group}.{topic}")
    try:
        # a owns every partition and has read them to the end
        body, deadline = "", time.monotonic() + 90
        while f"foliowatch_pipeline_records_in_total {float(n)}" not in body:
            assert a.poll() is None and time.monotonic() < deadline, \
                body[-1000:] + a.log_path.read_text()[-3000:]
            time.sleep(0.3)
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                    body = r.read().decode()
            except OSError:
                pass
        assert set(_committed(kafka, group, topic, ends).values()) == {None}
        assert all(store.load_meta(p) is None for p in ends)

        b = start_pipeline(kafka, topic, out, group, *args)

        def shared() -> bool:
            la = a.log_path.read_text()
            lb = [l for l in b.log_path.read_text().splitlines() if "assigned" in l]
            return "revoked:" in la and bool(lb) and "[]" not in lb[-1]
        deadline = time.monotonic() + 90
        while not shared():
            assert a.poll() is None and b.poll() is None and time.monotonic() < deadline, \
                a.log_path.read_text()[-3000:] + b.log_path.read_text()[-3000:]
            time.sleep(0.2)
        checkpointed = {p: store.load_meta(p).next_offset for p in ends}
        assert checkpointed == ends
        assert _committed(kafka, group, topic, ends) == checkpointed
        log_a = a.log_path.read_text()
        assert "revoked: checkpointed, committed and released" in log_a, log_a[-3000:]
        assert "commit on revoke failed" not in log_a
    finally:
        for p in (a, b):
            if p is not None and p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in (a, b):
            if p is not None:
                assert wait(p, 60) == 0, p.log_path.read_text()[-3000:]


def _hostile_stream() -> Tuple[List[Tuple[bytes, bytes]], Dict[str, int]]:
    """(key, value) messages: 8 hosts x 40 intervals of good records, interleaved with
    duplicates, late records, counter resets, garbage, wrong versions, hostile labels."""
    t0 = 1764000000.0
    msgs: List[Tuple[bytes, bytes]] = []
    kinds: Dict[str, int] = {}

    def add(kind: str, host: str, value: bytes) -> None:
        msgs.append((host.encode(), value))
        kinds[kind] = kinds.get(kind, 0) + 1

    for i in range(40):
        for h in range(8):
            host = f"hostile-{h}"
            boot = "boot-a" if i < 25 or h % 2 else "boot-b"     # odd hosts never reboot
            seq = i if boot == "boot-a" else i - 25               # seq restarts after reboot
            rec = wire.example_record(seq=seq, ts=t0 + 10 * i + h * 0.1, host_id=host,
                                      boot_id=boot)
            rec["labels"] = dict(rec["labels"], arch="arm64" if h < 4 else "x86_64")
            rec["counters"]["compact_stall"] = 3 * h + i
            add("good", host, wire.encode(rec))
            if i % 7 == 3:
                add("duplicate", host, wire.encode(rec))
            if i == 30 and h < 3:   # 100+ s behind the stream's newest records: late
                old = wire.example_record(seq=1000 + h, ts=t0 + 10 * i - 400, host_id=host,
                                          boot_id=boot)
                add("late", host, wire.encode(old))
            if i == 12 and h == 5:  # a counter reset reported as a negative delta
                bad = json.loads(wire.encode(rec))
                bad["seq"] = 5000
                bad["counters"]["nr_dirtied"] = -262144
                add("invalid", host, json.dumps(bad).encode())
            if i % 10 == 5 and h == 2:
                add("invalid", host, rng_bytes(i))
            if i == 20 and h == 1:
                for v in (2, "1", 0):
                    wrong = dict(rec, schema=v, seq=6000 + (v if isinstance(v, int) else 9))
                    add("invalid", host, json.dumps(wrong).encode())
            if i == 22 and h == 3:
                for fleet in ("x" * 65, "../../etc/passwd", 'a"},{"x', "caf\u00e9",
                              "prod\n", "<script>"):
                    evil = dict(rec, seq=7000 + len(msgs))
                    evil["labels"] = dict(rec["labels"], fleet=fleet)
                    add("invalid", host, json.dumps(evil, ensure_ascii=False).encode())
    return msgs, kinds


def rng_bytes(i: int) -> bytes:
    return bytes((i * 37 + j * 101) % 256 for j in range(64))


def test_hostile_stream_good_all_aggregated_bad_all_in_dlq_counts_exact(kafka, tmp_path):
    topic = new_topic(kafka, partitions=3)
    msgs, kinds = _hostile_stream()
    producer = make_producer(KafkaSettings(bootstrap=[kafka.bootstrap]))
    for k, v in msgs:
        producer.send(topic, key=k, value=v)
    producer.send(topic, key=b"hostile-0", value=None)   # a tombstone: no value at all
    kinds["invalid"] += 1
    producer.flush()
    producer.close()
    out = tmp_path / "ds"
    t = run_to_end(kafka, topic, out, "hostile", "--batch-records", "97")
    read = read_topic(kafka, topic)
    ref = Reference([(p, o, v or b"") for p, o, v, _k, _h in read])
    assert len(ref.accepted) == kinds["good"]
    assert len(ref.duplicates) == kinds["duplicate"]
    assert len(ref.late) == kinds["late"] and len(ref.invalid) == kinds["invalid"]
    expected = {"records": len(msgs) + 1, "accepted": kinds["good"],
                "duplicates": kinds["duplicate"], "invalid": kinds["invalid"],
                "late": kinds["late"]}
    assert {k: t[k] for k in expected} == expected
    assert t["records"] == t["accepted"] + t["duplicates"] + t["invalid"] + t["late"]
    assert_dataset_matches(out, ref)
    dlq = read_topic(kafka, f"{topic}.dlq")
    recs = [json.loads(v) for _p, _o, v, _k, _h in dlq]
    assert sorted((d["partition"], d["offset"]) for d in recs) == \
        sorted(list(ref.invalid) + ref.late)
    by_coord = {(p, o): v for p, o, v, _k, _h in read}
    for (_p, _o, _v, key, headers), d in zip(dlq, recs):
        assert base64.b64decode(d["value_b64"]) == (by_coord[(d["partition"], d["offset"])]
                                                    or b"")
        assert key == f"{topic}/{d['partition']}/{d['offset']}".encode()
        assert dict(headers)["reason"].decode() == d["reason"][:1000]
        if (d["partition"], d["offset"]) in ref.late:
            assert d["reason"] == "late"
        else:   # the reason names the field, as schema.decode does
            assert d["reason"].split(":")[0] in ("record", "schema", "counters.nr_dirtied",
                                                 "labels.fleet"), d["reason"]
    # hostile label values never reach the dataset (no path smuggling in partitions)
    assert all(p.name.startswith(("level=", "_")) for p in out.iterdir())


@pytest.fixture
def own_kafka(tmp_path):
    """A broker of this test's own, which the test stops and starts again."""
    from foliowatch.shell.services import KafkaCluster
    cluster = KafkaCluster(tmp_path / "kafka", brokers=1).start()
    yield cluster
    cluster.stop()


def _end_offsets(kafka, topic: str) -> Dict[int, int]:
    from kafka import KafkaConsumer, TopicPartition
    c = KafkaConsumer(bootstrap_servers=kafka.bootstrap, group_id=None)
    try:
        parts = [TopicPartition(topic, p) for p in sorted(c.partitions_for_topic(topic))]
        return {tp.partition: o for tp, o in c.end_offsets(parts).items()}
    finally:
        c.close()


def test_sigterm_with_the_broker_gone_stops_with_a_checkpoint_of_what_is_durable(
        own_kafka, tmp_path):
    """The broker dies under a running pipeline; SIGTERM (as services.stop_pid sends it,
    with SIGKILL after its grace period) stops it by itself, with every partition's
    checkpoint at what its durable output covers; with the broker back, the same group
    finishes the stream and the dataset is byte-identical to an uninterrupted run."""
    from foliowatch.pipeline.sinks import StateStore
    from foliowatch.shell.services import stop_pid

    kafka = own_kafka
    topic = new_topic(kafka, partitions=3)
    msgs, _kinds = _hostile_stream()          # with dead letters to deliver
    producer = make_producer(KafkaSettings(bootstrap=[kafka.bootstrap]))
    for k, v in msgs:
        producer.send(topic, key=k, value=v)
    producer.flush()
    producer.close()
    ends = _end_offsets(kafka, topic)
    ref_out = tmp_path / "ref"
    run_to_end(kafka, topic, ref_out, "uninterrupted", "--batch-records", "97")
    expected = snapshot(ref_out)

    out = tmp_path / "ds"
    proc = start_pipeline(kafka, topic, out, "gone", "--batch-records", "97",
                          "--checkpoint-seconds", "0.5", "--log-level", "INFO")
    store = StateStore(str(out / "_state"), f"gone.{topic}")

    def checkpointed() -> Dict[int, Optional[int]]:
        metas = {p: store.load_meta(p) for p in ends}
        return {p: (m.next_offset if m is not None else None) for p, m in metas.items()}
    try:
        deadline = time.monotonic() + 120
        while checkpointed() != ends:
            assert proc.poll() is None and time.monotonic() < deadline, \
                proc.log_path.read_text()[-3000:]
            time.sleep(0.2)
        kafka.stop_node(1)                     # the broker is gone
        time.sleep(2)                          # periodic commits now wait on a dead broker
        stop_pid(proc.pid)
    finally:
        if proc.poll() is None:
            proc.kill()
    log = proc.log_path.read_text()
    # it stopped by itself (a KILLed process prints neither line)
    assert "foliowatch.pipeline: stopped" in log, log[-3000:]
    assert totals(proc)["records"] == len(msgs)
    assert checkpointed() == ends
    kafka.start_node(1)
    t = run_to_end(kafka, topic, out, "gone", "--batch-records", "97")
    assert t["records"] == 0                   # resumed at the checkpoint: nothing twice
    got = snapshot(out)
    assert sorted(got) == sorted(expected)
    assert all(got[k] == expected[k] for k in expected)


def test_at_most_two_batches_of_records_are_alive_and_the_dataset_is_unchanged(
        kafka, sim_topic, tmp_path):
    """Peak memory: the consuming thread hands a full batch over and waits for the worker
    to take it before it fills the next, so at most two batches of records are alive
    (the worker's and the next), even when the worker is the slower side; the dataset is
    the uninterrupted run's."""
    topic, ref_out, ref_totals = sim_topic
    out = tmp_path / "ds"
    counted = tmp_path / "in-flight"
    t = run_to_end(kafka, topic, out, "two-batches", "--batch-records", "500",
                   faults=("--slow-worker", "0.05", "--in-flight-file", str(counted)))
    assert t["records"] == ref_totals["records"] > 1000
    assert int(counted.read_text()) == 2, counted.read_text()
    assert snapshot(out) == snapshot(ref_out)


def test_a_partial_batch_is_handed_over_once_the_consumer_has_caught_up(kafka, sim_topic,
                                                                       tmp_path):
    """A batch is handed over as soon as a poll brings nothing, not when its time bound
    is over: with a record bound larger than the topic and a time bound of an hour, the
    run reads the topic, processes it and ends (a batch waiting for its hour would never
    let it end), and the dataset is the uninterrupted run's."""
    topic, ref_out, ref_totals = sim_topic
    out = tmp_path / "ds"
    t = run_to_end(kafka, topic, out, "caught-up", "--batch-records", "1000000",
                   "--batch-seconds", "3600")
    assert t["records"] == ref_totals["records"] > 1000
    assert snapshot(out) == snapshot(ref_out)
