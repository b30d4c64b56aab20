"""Delivery through the real Kafka broker: a broker outage mid-run, a SIGKILLed agent.
Every sample produced must be consumed exactly once, in seq order."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from foliowatch import schema
from foliowatch.agent.config import AgentConfig
from foliowatch.agent.runner import Agent
from foliowatch.agent.stop import StopFlag
from foliowatch.agent.spool import Spool
from foliowatch.agent.state import AgentState, resume_seq
from foliowatch.kafka_io import KafkaSettings
from foliowatch.shell.services import free_port

pytestmark = [pytest.mark.agent39, pytest.mark.kafka]
REPO = Path(__file__).resolve().parents[1]


def consume_all(bootstrap: str, topic: str):
    """Every message of the topic with kcat, an independent client: [(partition, key, record)]."""
    p = subprocess.run(["kcat", "-C", "-b", bootstrap, "-t", topic, "-o", "beginning", "-e",
                        "-q", "-f", "%p\t%k\t%s\n"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    out = []
    for line in p.stdout.splitlines():
        part, key, value = line.split("\t", 2)
        out.append((int(part), key, schema.decode(value.encode())))
    return out


def wait_for(pred, timeout: float, what: str, step: float = 0.25):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def assert_exactly_once_in_order(msgs, host_id: str, n: int):
    assert [m[2]["seq"] for m in msgs] == list(range(n))
    assert {m[1] for m in msgs} == {host_id}
    assert len({m[0] for m in msgs}) == 1               # one host -> one partition
    ids = {(m[2]["host_id"], m[2]["boot_id"], m[2]["seq"]) for m in msgs}
    assert len(ids) == n


def test_broker_outage_mid_run_spools_then_delivers_exactly_once_in_order(kafka, topic, tmp_path):
    cfg = AgentConfig(state_dir=str(tmp_path / "state"), mounts=["/"], interval_s=1.0,
                      kafka=KafkaSettings(bootstrap=[kafka.bootstrap]), topic=topic,
                      send_timeout_s=2.0, retry_backoff_max_s=1.0)
    agent = Agent(cfg)
    try:
        assert agent.tick() is None                        # baseline
        for _ in range(3):
            agent.tick()
        assert len(agent.spool) == 0 and agent.sender.sent_total == 3
        kafka.stop_node(1)
        try:
            for _ in range(4):
                agent.tick()
                time.sleep(0.2)
            assert len(agent.spool) == 4                   # accepted, on disk, not lost
            assert agent.sender.errors_total >= 1 and agent.sender.last_error
        finally:
            kafka.start_node(1)

        def drained():
            agent.drain()
            return len(agent.spool) == 0
        wait_for(drained, 120, "the spool to drain after the broker returned", step=0.5)
        for _ in range(2):
            agent.tick()
        assert len(agent.spool) == 0
        n = agent.state.next_seq
        assert n == 9
    finally:
        agent.close()
    msgs = consume_all(kafka.bootstrap, topic)
    assert_exactly_once_in_order(msgs, agent.sampler.host_id, n)


def _start_agent(config: Path, log: Path, env_extra=None) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FOLIOWATCH_")}
    env.update(env_extra or {})
    with open(log, "ab") as f:
        return subprocess.Popen([sys.executable, "-m", "foliowatch", "agent", "--config",
                                 str(config)], stdout=f, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env, cwd=str(REPO))


def test_killed_agent_restarts_with_spool_and_seq_intact(kafka, topic, tmp_path):
    state_dir = tmp_path / "state"
    config = tmp_path / "agent.toml"
    dead = f"127.0.0.1:{free_port()}"                      # nothing listens: Kafka "down"
    config.write_text(f'[agent]\nstate_dir = "{state_dir}"\ninterval_s = 1.0\nmounts = ["/"]\n'
                      f'[agent.kafka]\nbootstrap = ["{dead}"]\ntopic = "{topic}"\n'
                      'send_timeout_s = 1.0\nretry_backoff_max_s = 1.0\n'
                      'latency_budget_s = 3.0\n'        # ~3 samples per request
                      '[agent.metrics]\nenabled = false\n')
    log = tmp_path / "agent.log"
    proc = _start_agent(config, log)
    try:
        # read-only: opening the spool here would race the agent
        wait_for(lambda: resume_seq(str(state_dir)) >= 4, 60, "4 samples in the spool")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    before = resume_seq(str(state_dir))
    left = len(Spool(str(state_dir / "spool"), 64 << 20))
    # Every accepted sample is on disk, and seq resumes right after the newest: no gap
    assert before >= 4 and left == before, log.read_text()[-2000:]

    proc = _start_agent(config, log, {"FOLIOWATCH_AGENT_KAFKA_BOOTSTRAP": kafka.bootstrap})
    try:
        wait_for(lambda: len(consume_all(kafka.bootstrap, topic)) >= before + 2, 90,
                 "the backlog and 2 new samples in Kafka", step=1.0)
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(60)
    assert rc == 0, log.read_text()[-2000:]
    n = AgentState(str(state_dir)).next_seq          # saved at the clean stop
    assert n == resume_seq(str(state_dir))
    assert len(Spool(str(state_dir / "spool"), 64 << 20)) == 0
    msgs = consume_all(kafka.bootstrap, topic)
    host = open("/etc/machine-id").read().strip()
    assert [m[2]["seq"] for m in msgs] == list(range(n))
    assert {m[1] for m in msgs} == {host} and len({m[0] for m in msgs}) == 1
    # the restarted agent kept its baseline: its first interval spans the downtime
    assert all(m[2]["interval_s"] <= 3600 for m in msgs)


def test_samples_within_the_latency_budget_share_one_request(kafka, topic, tmp_path):
    """With a budget of 3.5 intervals, about four samples leave per Kafka request, none
    waits longer than the budget, and a clean stop sends what still waited."""
    import threading
    cfg = AgentConfig(state_dir=str(tmp_path / "state"), mounts=["/"], interval_s=1.0,
                      kafka=KafkaSettings(bootstrap=[kafka.bootstrap]), topic=topic,
                      send_timeout_s=5.0, latency_budget_s=3.5)
    agent = Agent(cfg)
    stop = StopFlag()
    arrivals = {}                                     # seq -> monotonic time it was sent
    real_send = agent.sender.send

    def send(payloads):
        n = real_send(payloads)
        for p in payloads[:n]:
            arrivals[schema.decode(p)["seq"]] = time.monotonic()
        return n
    agent.sender.send = send
    spooled = {}                                      # seq -> monotonic time it was spooled
    real_tick = agent.tick

    def tick(deliver=True):
        r = real_tick(deliver)
        if r is not None:
            spooled[r["seq"]] = time.monotonic()
        return r
    agent.tick = tick
    loop = threading.Thread(target=agent.run, args=(stop,))
    loop.start()
    try:
        wait_for(lambda: len(spooled) >= 13, 60, "13 samples")
        stop.set()
        loop.join(30)
    finally:
        stop.set()
        agent.close()
    n = agent.state.next_seq
    assert agent.sender.sent_total == n and len(agent.spool) == 0     # the stop sent the rest
    assert agent.sender.requests_total <= n // 3 + 1, (agent.sender.requests_total, n)
    waits = [arrivals[s] - spooled[s] for s in spooled if s in arrivals]
    assert max(waits) <= 3.5 + 1.0, waits          # budget, plus a send's own time
    assert_exactly_once_in_order(consume_all(kafka.bootstrap, topic), agent.sampler.host_id, n)


def test_agent_process_publishes_with_kafka_pythons_producer_side_only(kafka, topic, tmp_path):
    """The agent's own process (``python -m foliowatch agent --once``) delivers to the real
    broker having loaded kafka-python's producer and nothing of its consumer, group
    coordinator or admin client, nor the admin and consumer request tables (the package's
    ``__init__`` imports them all: ~3.5 MiB on every host), nor what crc32c's ``__init__``
    imports for its version string (importlib.metadata, email)."""
    state_dir = tmp_path / "state"
    config = tmp_path / "agent.toml"
    config.write_text(f'[agent]\nstate_dir = "{state_dir}"\ninterval_s = 1.0\nmounts = ["/"]\n'
                      f'[agent.kafka]\nbootstrap = ["{kafka.bootstrap}"]\ntopic = "{topic}"\n'
                      '[agent.metrics]\nenabled = false\n')
    modules = tmp_path / "modules.txt"
    # the modules the process holds when it exits, written by an atexit hook; the agent
    # itself runs as ``python -m foliowatch`` does
    entry = ("import atexit, runpy, sys\n"
             f"atexit.register(lambda: open({str(modules)!r}, 'w').write('\\n'.join(sys.modules)))\n"
             f"sys.argv = ['foliowatch', 'agent', '--once', '--config', {str(config)!r}]\n"
             "runpy.run_module('foliowatch', run_name='__main__', alter_sys=True)\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FOLIOWATCH_")}
    p = subprocess.run([sys.executable, "-c", entry], capture_output=True, text=True,
                       env=env, cwd=str(REPO), timeout=120)
    assert p.returncode == 0, p.stderr[-3000:]
    loaded = set(modules.read_text().split())
    assert {"kafka.producer.kafka", "kafka.record.default_records"} <= loaded
    unwanted = sorted(m for m in loaded
                      if m.split(".")[:2] in (["kafka", "consumer"], ["kafka", "admin"],
                                              ["kafka", "coordinator"])
                      or m.split(".")[:3] in (["kafka", "protocol", "admin"],
                                              ["kafka", "protocol", "consumer"])
                      and m not in ("kafka.protocol.admin", "kafka.protocol.admin.groups",
                                    "kafka.protocol.consumer", "kafka.protocol.consumer.group")
                      or m.split(".")[0] == "email" or m.startswith("importlib.metadata"))
    assert unwanted == [], unwanted
    # every batch's checksum: crc32c's C function (the package is among the agent's
    # dependencies), never kafka-python's pure-Python fallback (~2.4 ms per 4 KiB)
    assert "crc32c._crc32c" in loaded
    msgs = consume_all(kafka.bootstrap, topic)
    host = open("/etc/machine-id").read().strip()
    assert [m[2]["seq"] for m in msgs] == [0] and msgs[0][1] == host


def test_whole_kafka_package_still_loads_after_the_producer_only_import():
    """A process that loaded only the producer side (the agent's way) and later reads
    any other name of kafka-python (``KafkaConsumer``, the admin requests, crc32c's
    version) gets the whole package unchanged: the skipped ``__init__`` runs then."""
    code = ("import sys\n"
            "from foliowatch.kafka_io import producer_class\n"
            "P = producer_class()\n"
            "assert 'kafka.consumer' not in sys.modules and 'kafka.admin' not in sys.modules\n"
            "from kafka import KafkaConsumer, KafkaProducer, TopicPartition\n"
            "import kafka, crc32c\n"
            "from kafka.protocol.admin import CreateTopicsRequest\n"
            "from kafka.protocol.consumer import *\n"
            "assert KafkaProducer is P and kafka.__version__ and crc32c.__version__\n"
            "assert KafkaConsumer.__module__ == 'kafka.consumer.group'\n"
            "assert 'FetchRequest' in dir() and CreateTopicsRequest.__name__\n"
            "print('ok')\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       cwd=str(REPO), timeout=120)
    assert p.returncode == 0 and p.stdout.strip() == "ok", p.stderr[-3000:]
