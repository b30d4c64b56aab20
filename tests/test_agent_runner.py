"""The agent loop: cadence while Kafka is unreachable, a full spool seen from /metrics."""

from __future__ import annotations

import re
import threading
import time

import pytest

from foliowatch import schema
from foliowatch.agent.config import AgentConfig
from foliowatch.agent.exporter import metrics
from foliowatch.agent.runner import Agent
from foliowatch.agent.stop import StopFlag
from foliowatch.kafka_io import KafkaSettings
from foliowatch.shell.services import free_port

pytestmark = pytest.mark.agent39


def test_sampling_keeps_its_cadence_while_kafka_is_unreachable(tmp_path):
    """Delivery attempts to a dead broker block for send_timeout_s each; sampling must not
    wait for them: one record per interval reaches the spool."""
    cfg = AgentConfig(state_dir=str(tmp_path / "st"), mounts=["/"], interval_s=1.0,
                      kafka=KafkaSettings(bootstrap=[f"127.0.0.1:{free_port()}"]),
                      send_timeout_s=4.0, retry_backoff_max_s=0.5, latency_budget_s=0.0)
    agent = Agent(cfg)
    stop = StopFlag()
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
    text = metrics(agent).decode()
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


def test_sigkill_at_any_moment_never_reuses_nor_skips_a_seq(tmp_path):
    """The agent process is SIGKILLed at random moments (mid-sample, mid-append, idle),
    restarted each time, then stopped cleanly: the spool holds every seq from 0 exactly
    once, in order, and the state folder says where seq resumes."""
    import os
    import random
    import signal
    import subprocess
    import sys
    from pathlib import Path

    from foliowatch.agent.spool import Spool
    from foliowatch.agent.state import AgentState, resume_seq

    repo = Path(__file__).resolve().parents[1]
    state_dir = tmp_path / "st"
    config = tmp_path / "agent.toml"
    config.write_text(f'[agent]\nhost_id = "kill-test"\nstate_dir = "{state_dir}"\n'
                      'interval_s = 1.0\nmounts = ["/"]\n'
                      '[agent.kafka]\nenabled = false\n[agent.metrics]\nenabled = false\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("FOLIOWATCH_")}
    log = open(tmp_path / "agent.log", "ab")

    def start() -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "foliowatch", "agent", "--config",
                                 str(config)], stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env, cwd=str(repo))

    def wait_for_more(proc, than: int) -> None:
        deadline = time.monotonic() + 60
        while resume_seq(str(state_dir)) <= than:
            assert proc.poll() is None and time.monotonic() < deadline, \
                (tmp_path / "agent.log").read_text()[-2000:]
            time.sleep(0.05)

    rng = random.Random(17)
    for _ in range(6):
        proc = start()
        try:
            wait_for_more(proc, resume_seq(str(state_dir)))
            time.sleep(rng.uniform(0.0, 1.0))         # anywhere in the 1 s cadence
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
    proc = start()
    try:
        wait_for_more(proc, resume_seq(str(state_dir)))
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, (tmp_path / "agent.log").read_text()[-2000:]
    log.close()
    n = resume_seq(str(state_dir))
    assert AgentState(str(state_dir)).next_seq == n               # saved at the clean stop
    spool = Spool(str(state_dir / "spool"), 64 << 20)
    seqs = []
    while True:
        batch = spool.peek(100)
        if not batch:
            break
        seqs += [schema.decode(p)["seq"] for _, p in batch]
        spool.ack(batch[-1][0])
    spool.close()
    assert n >= 7 and seqs == list(range(n)), seqs


# -- the write probe's period on a new kernel -----------------------------------------------
def probe_agent(tmp_path, **probe) -> Agent:
    """A real agent with the probe enabled, past its baseline tick (probe_due is only
    asked, the probe never runs)."""
    from foliowatch.agent.config import ProbeConfig
    cfg = AgentConfig(state_dir=str(tmp_path / "st"), mounts=["/"], kafka_enabled=False,
                      interval_s=1.0,
                      probe=ProbeConfig(enabled=True, directory=str(tmp_path), **probe))
    agent = Agent(cfg)
    assert not agent.probe_due()       # no baseline yet
    agent.tick()
    return agent


def due_after(agent: Agent, seconds: float) -> bool:
    """Whether a probe is due when the last one ran ``seconds`` ago."""
    agent.state.last_probe_ts = time.time() - seconds
    return agent.probe_due()


def period_metric(agent: Agent) -> float:
    text = metrics(agent).decode()
    return float(re.search(r"^foliowatch_agent_probe_period_seconds (\S+)$", text,
                           re.M).group(1))


def boot_time() -> float:
    with open("/proc/stat") as f:
        return next(float(line.split()[1]) for line in f if line.startswith("btime "))


def test_probe_every_new_kernel_every_s_in_the_first_hours_on_a_new_release(tmp_path):
    """The state file says this host last ran another release: the dense period runs
    from this boot, new_kernel_every_s (600) instead of every_s (3600) for
    new_kernel_hours; after them, every_s again. An agent restart keeps the start."""
    import os

    from foliowatch.agent.state import AgentState
    old = AgentState(str(tmp_path / "st"))
    old.kernel_release = "0.0.0-the-release-before"
    old.save()
    agent = probe_agent(tmp_path, every_s=3600.0, new_kernel_every_s=600.0,
                        new_kernel_hours=8.0)
    assert agent.state.kernel_release == os.uname().release
    since = agent.state.kernel_since
    assert since is not None and abs(since - boot_time()) <= 1.5
    agent.state.kernel_since = time.time() - 7.9 * 3600   # 7.9 h into the new kernel
    assert not due_after(agent, 590) and due_after(agent, 610)
    assert period_metric(agent) == 600.0
    agent.state.kernel_since = time.time() - 8.1 * 3600   # past new_kernel_hours
    assert not due_after(agent, 610) and not due_after(agent, 3590) and due_after(agent, 3610)
    assert period_metric(agent) == 3600.0
    agent.state.kernel_since = since
    agent.close()
    restarted = Agent(agent.cfg)      # same release: the dense period does not restart
    assert restarted.state.kernel_since == since
    restarted.close()


def test_no_dense_probing_on_a_first_install_nor_when_turned_off(tmp_path):
    """No state file: the release is recorded, not treated as a rollout; with
    new_kernel_hours = 0 a changed release keeps every_s."""
    import os
    agent = probe_agent(tmp_path, every_s=3600.0, new_kernel_every_s=600.0)
    assert (agent.state.kernel_release, agent.state.kernel_since) == (os.uname().release, None)
    assert not due_after(agent, 610) and due_after(agent, 3610)
    assert period_metric(agent) == 3600.0
    agent.state.kernel_since = time.time() - 60           # as if just changed...
    agent.cfg.probe.new_kernel_hours = 0.0                # ...but turned off
    assert not due_after(agent, 610) and due_after(agent, 3610)
    agent.close()


def test_a_host_that_probes_more_often_than_new_kernel_every_s_keeps_its_period(tmp_path):
    """every_s (300) below new_kernel_every_s (the default 600): on a new kernel the
    shorter period applies, and the configuration is valid as it was before the key."""
    from foliowatch.agent.config import load
    cfg_file = tmp_path / "agent.toml"
    cfg_file.write_text(f'[agent]\nstate_dir = "{tmp_path / "st"}"\n'
                        f'[agent.probe]\nenabled = true\ndirectory = "{tmp_path}"\nevery_s = 300.0\n')
    load(str(cfg_file))               # no ConfigError
    agent = probe_agent(tmp_path, every_s=300.0)
    agent.state.kernel_since = time.time() - 60           # a new kernel a minute ago
    assert not due_after(agent, 290) and due_after(agent, 310)
    assert period_metric(agent) == 300.0
    agent.close()
