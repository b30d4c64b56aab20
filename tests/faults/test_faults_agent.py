"""Agent faults: Kafka unreachable for hours of intervals (the spool fills, drops its
oldest samples and counts them; the pipeline sees the seq gap); the spool's disk full;
/proc files missing, or cut short in the middle of a read; a kernel lacking fields; the
wall clock jumping back and forward; a SIGKILL in the middle of a send and a restart.

Simulated time: the sampler's two clocks (wall time for ``ts``, CLOCK_BOOTTIME for
intervals) are replaced in the test process so that hours of 10-second intervals pass
in seconds; everything else (spool, state, sender, Kafka, pipeline) is the real thing.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import types
import uuid
from pathlib import Path

import pytest

from foliowatch import schema as wire
from foliowatch.agent import sampler as sampler_mod
from foliowatch.agent.config import AgentConfig
from foliowatch.agent.producer import KafkaSender
from foliowatch.agent.runner import Agent
from foliowatch.agent.state import resume_seq
from foliowatch.kafka_io import KafkaSettings
from foliowatch.shell.services import create_topics, free_port

from accounting import Ledger, account, record_result
from fleet import wait_for
from loopfs import fill_up, loop_fs
from test_pipeline_kafka import read_topic, run_to_end

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "agent" / "x86_64-6.18-4k"
REPO = Path(__file__).resolve().parents[2]


class SimClock:
    """Wall time and CLOCK_BOOTTIME for the sampler, advanced by the test."""

    def __init__(self, wall: float):
        self.wall = wall
        self.boot = 1000.0

    def step(self, s: float) -> None:
        self.wall += s
        self.boot += s


@pytest.fixture
def clock(monkeypatch):
    c = SimClock(time.time())
    monkeypatch.setattr(sampler_mod, "boottime", lambda: c.boot)
    monkeypatch.setattr(sampler_mod, "time", types.SimpleNamespace(
        time=lambda: c.wall, monotonic=time.monotonic))
    return c


def new_topic(kafka) -> str:
    t = f"faults.agent.{uuid.uuid4().hex[:8]}"
    create_topics(kafka.bootstrap, t, partitions=2)
    create_topics(kafka.bootstrap, f"{t}.dlq")
    return t


def pipeline_account(kafka, topic: str, state_dir: Path, tmp: Path, name: str, checked: str,
                     dropped: int = 0):
    out = tmp / "ds"
    totals = run_to_end(kafka, topic, out, f"g-{uuid.uuid4().hex[:6]}")
    msgs = [v for _p, _o, v, _k, _h in read_topic(kafka, topic)]
    ledger = Ledger()
    ledger.add_agent(state_dir, msgs, dropped=dropped)
    dlq = [v for _p, _o, v, _k, _h in read_topic(kafka, f"{topic}.dlq")]
    acc = account(name, checked, ledger, out, dlq)
    record_result(acc)
    acc.assert_exact()
    return acc, totals


@pytest.mark.kafka
@pytest.mark.faults
def test_kafka_unreachable_for_hours_spool_drops_oldest_counted_pipeline_sees_gap(
        kafka, tmp_path, clock):
    topic = new_topic(kafka)
    hours, interval = 6, 10.0
    clock.step(-hours * 3600)                    # the outage ends now
    live = KafkaSettings(bootstrap=[kafka.bootstrap])
    cfg = AgentConfig(state_dir=str(tmp_path / "st"), mounts=["/"], interval_s=interval,
                      kafka=live, topic=topic, send_timeout_s=1.0, retry_backoff_max_s=1.0,
                      spool_max_bytes=1 << 20)
    agent = Agent(cfg)
    host = agent.sampler.host_id.encode()
    try:
        for _ in range(6):                       # delivered before the outage
            agent.tick()
            clock.step(interval)
        assert agent.sender.sent_total == 5 and len(agent.spool) == 0
        # Kafka unreachable (the same agent, its sender pointed where nothing listens)
        agent.sender.close()
        agent.sender = KafkaSender(KafkaSettings(bootstrap=[f"127.0.0.1:{free_port()}"]),
                                   topic, host, 1.0, 1.0)
        ticks = int(hours * 3600 / interval)
        for i in range(ticks):
            agent.tick(deliver=(i % 500 == 0))   # a few real attempts: refused each time
            clock.step(interval)
        assert agent.sender.errors_total >= 3 and agent.sender.sent_total == 0
        dropped = agent.spool.dropped_total
        assert dropped > 0 and len(agent.spool) + dropped + 5 == agent.state.next_seq
        # Kafka is back
        agent.sender.close()
        agent.sender = KafkaSender(live, topic, host, 5.0, 1.0)
        wait_for(lambda: agent.drain() >= 0 and len(agent.spool) == 0, 120,
                 "the spool to drain")
    finally:
        agent.close()
    acc, totals = pipeline_account(
        kafka, topic, Path(cfg.state_dir), tmp_path,
        f"Agent: Kafka unreachable {hours} h of {interval:g} s intervals (1 MiB spool)",
        "spool full: oldest dropped and counted; backlog delivered in order; the "
        "pipeline reports the seq gap", dropped=dropped)
    assert acc.dropped == dropped
    assert totals["missing"] == dropped, totals        # the pipeline saw the gap


def fake_host(tmp: Path) -> Path:
    root = tmp / "host"
    shutil.copytree(FIXTURE, root)
    return root


def bump_vmstat(root: Path, original: str, by: int, cut_at: str = "") -> None:
    """The fake /proc/vmstat: every counter of ``original`` plus ``by``; ``cut_at``: the
    file ends in the middle of that counter's number (a read cut short)."""
    path = root / "proc" / "vmstat"
    lines = []
    for line in original.splitlines():
        name, value = line.split()
        lines.append(f"{name} {int(value) + by}")
    text = "\n".join(lines) + "\n"
    if cut_at:
        i = text.index(f"\n{cut_at} ") + len(cut_at) + 3      # after its first digit
        text = text[:i]
    path.write_text(text)


def tick_fake(agent: Agent, clock: SimClock, n: int = 1):
    out = []
    for _ in range(n):
        clock.step(10.0)
        out.append(agent.tick(deliver=False))
    return out


def fake_agent(tmp: Path, root: Path) -> Agent:
    cfg = AgentConfig(state_dir=str(tmp / "st"), mounts=[], kafka_enabled=False,
                      host_id="fake-host")
    return Agent(cfg, proc=str(root / "proc"), sys=str(root / "sys"), etc=str(root / "etc"))


def test_proc_file_cut_short_mid_read_never_yields_a_wrong_delta(tmp_path, clock):
    """/proc/vmstat read cut short in the middle of a counter's number: that counter is
    absent for the interval, never a huge delta the next one (every delta reported is
    the real one)."""
    root = fake_host(tmp_path)
    vm = root / "proc" / "vmstat"
    original = vm.read_text()
    agent = fake_agent(tmp_path, root)
    try:
        assert tick_fake(agent, clock) == [None]                 # baseline
        victim = "pgscan_direct"
        records = []
        for i in range(1, 7):                    # +1000 per interval; one read cut short
            bump_vmstat(root, original, 1000 * i, cut_at=victim if i == 2 else "")
            records += tick_fake(agent, clock)
    finally:
        agent.close()
    deltas = [r["counters"].get(victim) for r in records]
    # every delta that is reported is the real one (1000 per interval), never the jump
    # from a cut-short number to the whole one
    assert all(d in (None, 1000) for d in deltas), deltas
    assert deltas[-1] == 1000


def test_proc_files_missing_and_a_kernel_lacking_fields(tmp_path, clock):
    """A kernel without CONFIG_COMPACTION and PSI: valid records without those counters
    (absent, not 0), which the pipeline accepts with null compaction metrics; /proc/vmstat
    missing: that pass fails without using a seq, the next one works."""
    root = fake_host(tmp_path)
    agent = fake_agent(tmp_path, root)
    try:
        tick_fake(agent, clock, 2)
        # a kernel without CONFIG_COMPACTION and without PSI
        vm = root / "proc" / "vmstat"
        vm.write_text("".join(l + "\n" for l in vm.read_text().splitlines()
                              if not l.startswith("compact_")))
        shutil.rmtree(root / "proc" / "pressure")
        recs = [r for r in tick_fake(agent, clock, 3) if r is not None]
        assert recs
        for r in recs:
            wire.decode(wire.encode(r))                           # still valid records
            assert not any(k.startswith(("compact_", "psi_")) for k in r["counters"])
        # /proc/vmstat gone (procfs half-mounted): that pass fails, nothing is spooled
        # and no seq is used; the next pass works again
        seq = agent.state.next_seq
        saved = vm.read_text()
        vm.unlink()
        with pytest.raises(OSError):
            tick_fake(agent, clock)
        assert agent.state.next_seq == seq
        vm.write_text(saved)
        tick_fake(agent, clock, 2)
        assert agent.state.next_seq > seq
    finally:
        agent.close()
    # the pipeline takes such records: the compaction metrics are null, not zero
    from foliowatch.pipeline.decode import decode_batch
    dec = decode_batch([wire.encode(r) for r in recs])
    assert dec.rejected == [] and dec.good.height == len(recs)
    assert dec.good["compact_stall"].is_null().all()


@pytest.mark.kafka
@pytest.mark.faults
def test_wall_clock_jumping_back_and_forward(kafka, tmp_path, clock):
    """Intervals come from CLOCK_BOOTTIME, so they stay right; the records' ts follow the
    wall clock. The pipeline takes or parks each record (late, or stamped in the future)
    and loses none."""
    topic = new_topic(kafka)
    cfg = AgentConfig(state_dir=str(tmp_path / "st"), mounts=["/"], interval_s=10.0,
                      kafka=KafkaSettings(bootstrap=[kafka.bootstrap]), topic=topic,
                      send_timeout_s=5.0)
    clock.step(-3600)
    agent = Agent(cfg)
    records = []
    try:
        for i in range(60):
            if i == 20:
                clock.wall -= 1800                 # NTP steps the clock back 30 min
            if i == 40:
                clock.wall += 1800 + 7200          # ... then 2 h ahead of real time
            clock.step(10.0)
            r = agent.tick()
            if r is not None:
                records.append(r)
        assert len(agent.spool) == 0
    finally:
        agent.close()
    assert all(abs(r["interval_s"] - 10.0) < 1e-6 for r in records)
    assert [r["seq"] for r in records] == list(range(len(records)))
    acc, _t = pipeline_account(kafka, topic, Path(cfg.state_dir), tmp_path,
                               "Agent: wall clock 30 min back, then 2 h forward",
                               "intervals from CLOCK_BOOTTIME stay right; records behind "
                               "the watermark are late, ahead of the pipeline's clock are "
                               "refused, both in the DLQ with the reason")
    assert acc.dlq.get("late", 0) > 0 and acc.dlq.get("ts", 0) > 0, acc.summary()


def _agent_toml(tmp: Path, bootstrap: str, topic: str, **kw) -> Path:
    cfg = tmp / "agent.toml"
    cfg.write_text(f'[agent]\nhost_id = "restart-{uuid.uuid4().hex[:6]}"\n'
                   f'state_dir = "{tmp / "st"}"\ninterval_s = {kw.get("interval", 1.0)}\n'
                   'mounts = ["/"]\n'
                   f'[agent.kafka]\nbootstrap = ["{bootstrap}"]\ntopic = "{topic}"\n'
                   'send_timeout_s = 4.0\nretry_backoff_max_s = 1.0\n'
                   'latency_budget_s = 0.0\n'          # every sample sent at once
                   '[agent.metrics]\nenabled = false\n')
    return cfg


def _start(cfg: Path, log: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FOLIOWATCH_")}
    with open(log, "ab") as f:
        return subprocess.Popen([sys.executable, "-m", "foliowatch", "agent", "--config",
                                 str(cfg)], stdout=f, stderr=subprocess.STDOUT, env=env,
                                cwd=str(REPO))


@pytest.mark.kafka
@pytest.mark.faults
def test_sigkill_in_the_middle_of_a_send_then_restart(kafka, tmp_path):
    """The broker is paused (SIGSTOP) so that the agent's send is in flight, the agent is
    SIGKILLed then, the broker resumes (it may still append what was in flight), the
    agent restarts and re-sends what it had not seen acknowledged. Three times."""
    topic = new_topic(kafka)
    cfg = _agent_toml(tmp_path, kafka.bootstrap, topic)
    log = tmp_path / "agent.log"
    broker = int((kafka.dir / "node1" / "pid").read_text())

    def next_seq() -> int:
        return resume_seq(str(tmp_path / "st"))
    for round_ in range(3):
        proc = _start(cfg, log)
        try:
            target = next_seq() + 6
            wait_for(lambda: next_seq() >= target, 60, "samples")
            os.kill(broker, signal.SIGSTOP)
            try:
                time.sleep(1.5)                  # a send is waiting on the paused broker
                proc.send_signal(signal.SIGKILL)
                proc.wait(30)
            finally:
                os.kill(broker, signal.SIGCONT)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    proc = _start(cfg, log)                      # the last restart drains the spool
    try:
        time.sleep(3)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    from foliowatch.agent.spool import Spool
    spool = Spool(str(tmp_path / "st" / "spool"), 64 << 20)
    left = len(spool)
    spool.close()
    if left:
        subprocess.run([sys.executable, "-m", "foliowatch", "agent", "--once", "--config",
                        str(cfg)], cwd=str(REPO), timeout=120, capture_output=True)
    acc, _t = pipeline_account(kafka, topic, tmp_path / "st", tmp_path,
                               "Agent: SIGKILL in the middle of a send, restart (x3)",
                               "the broker paused while a send is in flight; copies re-sent "
                               "after the restart are dropped by the pipeline's dedupe")


def test_spool_disk_full_drops_are_counted_and_the_agent_recovers(tmp_path, clock):
    """The spool's filesystem full (8 MiB loop mount): passes fail, every seq the agent
    assigned is in the spool or counted as dropped, and sampling resumes once space
    returns."""
    with loop_fs("ext4", 8 << 20) as mnt:
        cfg = AgentConfig(state_dir=str(Path(mnt) / "st"), mounts=["/"], kafka_enabled=False)
        agent = Agent(cfg)
        try:
            tick_fake(agent, clock, 3)
            filler = fill_up(mnt)
            failures = 0
            for _ in range(5):
                try:
                    tick_fake(agent, clock)
                except OSError:
                    failures += 1
            assert failures, "the full filesystem should have failed a pass"
            filler.unlink()
            tick_fake(agent, clock, 3)
            n = agent.state.next_seq
            # every seq the agent assigned is in the spool or counted as dropped
            assert len(agent.spool) + agent.spool.dropped_total == n, \
                (len(agent.spool), agent.spool.dropped_total, n, failures)
        finally:
            agent.close()
