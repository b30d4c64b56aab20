"""The agent loop: cadence while Kafka is unreachable, a full spool seen from /metrics."""

from __future__ import annotations

import re
import threading
import time

import pytest
from prometheus_client import generate_latest

from foliowatch import schema
from foliowatch.agent.config import AgentConfig
from foliowatch.agent.exporter import make_registry
from foliowatch.agent.runner import Agent
from foliowatch.kafka_io import KafkaSettings
from foliowatch.shell.services import free_port

pytestmark = pytest.mark.agent39


def test_sampling_keeps_its_cadence_while_kafka_is_unreachable(tmp_path):
    """Delivery attempts to a dead broker block for send_timeout_s each; sampling must not
    wait for them: one record per interval reaches the spool."""
    cfg = AgentConfig(state_dir=str(tmp_path / "st"), mounts=["/"], interval_s=1.0,
                      kafka=KafkaSettings(bootstrap=[f"127.0.0.1:{free_port()}"]),
                      send_timeout_s=4.0, retry_backoff_max_s=0.5)
    agent = Agent(cfg)
    stop = threading.Event()
    loop = threading.Thread(target=agent.run, args=(stop,))
    loop.start()
    time.sleep(5.5)
    stop.set()
    loop.join(30)
    assert not loop.is_alive()
    agent.close()
    assert agent.sender.errors_total >= 1
    assert agent.state.next_seq >= 4, agent.state.next_seq      # 6 ticks, 1 baseline
    assert len(agent.spool) == agent.state.next_seq              # all kept, none sent


def test_full_spool_drops_oldest_and_reports_it_on_metrics(tmp_path, caplog):
    cfg = AgentConfig(state_dir=str(tmp_path / "st"), mounts=["/"], kafka_enabled=False,
                      spool_max_bytes=1 << 20)
    agent = Agent(cfg)
    n = 0
    while agent.spool.dropped_total == 0:
        if agent.tick() is not None:
            n += 1
        assert n < 5000
    text = generate_latest(make_registry(agent)).decode()
    dropped = float(re.search(r"^foliowatch_agent_samples_dropped_total (\S+)$", text,
                              re.M).group(1))
    assert dropped == agent.spool.dropped_total > 0
    assert "spool full" in caplog.text and "dropped the" in caplog.text
    seqs = []
    while True:
        batch = agent.spool.peek(100)
        if not batch:
            break
        seqs += [schema.decode(p)["seq"] for _, p in batch]
        agent.spool.ack(batch[-1][0])
    assert seqs == list(range(int(dropped), n))              # the oldest went, in order
    agent.close()


def test_one_agent_per_state_dir(tmp_path):
    cfg = AgentConfig(state_dir=str(tmp_path / "st"), mounts=["/"], kafka_enabled=False)
    first = Agent(cfg)
    with pytest.raises(RuntimeError, match=r"lock: held by another agent \(pid \d+\)"):
        Agent(cfg)
    first.close()
    Agent(cfg).close()           # released on close
