"""The running system a fault scenario acts on: a real agent (its own process, this
machine's /proc), the simulator producing a small fleet in real time (a thread of the
test, through the product's ``produce_to_kafka``) and the pipeline (its own process,
``tests/pipeline_faults.py`` when faults are injected into it), all against one Kafka
cluster. Every process is started here and stopped by PID.

``FleetRun.finish()`` stops the producers once they are done, lets the pipeline read
to the end, then accounts for every sample (``accounting``) and runs the pipeline once
more without faults, in a fresh group and folder, over the same topic: the reference
the faulted run's dataset must equal byte for byte.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from foliowatch.kafka_io import KafkaSettings
from foliowatch.shell.services import create_topics, free_port, stop_pid

from accounting import Accounting, Ledger, account
from test_pipeline_kafka import read_topic, run_to_end, snapshot, start_pipeline

REPO = Path(__file__).resolve().parents[2]
SCENARIO = "seed-iomap-arm64-xfs"
NO_SIM_FAULTS = {"lost": 0.0, "late": 0.0, "duplicate": 0.0}


def wait_for(pred, timeout: float, what: str, step: float = 0.25):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def agent_metric(port: int, name: str) -> Optional[float]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            for line in r.read().decode().splitlines():
                if line.startswith(name + " "):
                    return float(line.split()[1])
    except OSError:
        return None
    return None


class FleetRun:
    def __init__(self, cluster, tmp: Path, topic: str = "foliowatch.samples.v1",
                 dlq_topic: str = "foliowatch.samples.dlq"):
        self.cluster = cluster
        self.tmp = Path(tmp)
        self.topic = topic
        self.dlq_topic = dlq_topic
        self.procs: List[subprocess.Popen] = []
        self.agent: Optional[subprocess.Popen] = None
        self.agent_state = self.tmp / "agent-state"
        self.agent_port = free_port()
        self.sim_thread: Optional[threading.Thread] = None
        self.sim_result: Dict = {}
        self.scenario = None
        self.out = self.tmp / "ds"
        self.pipeline: Optional[subprocess.Popen] = None

    # -- producers --------------------------------------------------------------------
    def agent_config(self, **over) -> Path:
        cfg = self.tmp / "agent.toml"
        kafka = over.get("bootstrap", self.cluster.bootstrap).split(",")
        cfg.write_text(
            f'[agent]\nhost_id = "fault-agent-{uuid.uuid4().hex[:6]}"\n'
            f'state_dir = "{self.agent_state}"\ninterval_s = {over.get("interval_s", 1.0)}\n'
            'mounts = ["/"]\n'
            f'[agent.kafka]\nbootstrap = {json.dumps(kafka)}\ntopic = "{self.topic}"\n'
            'send_timeout_s = 3.0\nretry_backoff_max_s = 2.0\n'
            f'latency_budget_s = {over.get("latency_budget_s", 2.0)}\n'
            f'[agent.spool]\nmax_bytes = {over.get("spool_max_bytes", 64 << 20)}\n'
            f'[agent.metrics]\nlisten = "127.0.0.1:{self.agent_port}"\n')
        return cfg

    def start_agent(self, **over) -> subprocess.Popen:
        cfg = self.agent_config(**over)
        env = {k: v for k, v in os.environ.items() if not k.startswith("FOLIOWATCH_")}
        log = open(self.tmp / "agent.log", "ab")
        self.agent = subprocess.Popen([sys.executable, "-m", "foliowatch", "agent",
                                       "--config", str(cfg)], stdout=log,
                                      stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                      env=env, cwd=str(REPO))
        self.procs.append(self.agent)
        return self.agent

    def start_simulator(self, hosts: int = 12, seconds: float = 60.0,
                        interval_s: float = 2.0, seed: int = 7) -> None:
        """The simulated fleet in real time from now: ``hosts`` hosts, one record each
        every ``interval_s`` for ``seconds``."""
        from foliowatch.simulator import load_scenario, produce_to_kafka
        self.scenario = load_scenario(SCENARIO, hosts=hosts, hours=seconds / 3600,
                                      interval_s=interval_s, seed=seed,
                                      faults=NO_SIM_FAULTS, start=float(int(time.time())))
        settings = KafkaSettings(bootstrap=self.cluster.bootstrap.split(","))

        def produce():
            try:
                self.sim_result = produce_to_kafka(self.scenario, settings, topic=self.topic,
                                                   realtime=True, speed=1.0)
            except BaseException as e:   # reported by finish()
                self.sim_result = {"error": repr(e)}
        self.sim_thread = threading.Thread(target=produce, name="simulator", daemon=True)
        self.sim_thread.start()

    # -- the pipeline -----------------------------------------------------------------
    def start_pipeline(self, *extra: str, faults: Tuple[str, ...] = (),
                       group: str = "faults", out: Optional[Path] = None,
                       env: Optional[Dict[str, str]] = None) -> subprocess.Popen:
        # the later --dlq-topic wins over the helper's default
        p = start_pipeline(self.cluster, self.topic, out or self.out, group,
                           "--dlq-topic", self.dlq_topic, *extra, faults=faults, env=env)
        self.procs.append(p)
        self.pipeline = p
        return p

    # -- the end of a scenario --------------------------------------------------------
    def stop_agent(self, timeout: float = 180.0) -> None:
        """Once its spool is empty (everything delivered), SIGTERM and wait."""
        if self.agent is None:
            return
        wait_for(lambda: agent_metric(self.agent_port, "foliowatch_agent_spool_records") == 0.0,
                 timeout, "the agent's spool to drain", step=0.5)
        stop_pid(self.agent.pid)
        self.agent.wait(30)
        # a sample taken between the last delivery and the SIGTERM stays spooled (the
        # agent does not wait for Kafka when told to stop): `--once` delivers it (and
        # one more sample)
        for _ in range(3):
            if self.spooled() == 0:
                return
            subprocess.run([sys.executable, "-m", "foliowatch", "agent", "--once", "--config",
                            str(self.tmp / "agent.toml")], cwd=str(REPO), timeout=120,
                           capture_output=True, env={k: v for k, v in os.environ.items()
                                                     if not k.startswith("FOLIOWATCH_")})
        assert self.spooled() == 0, "the agent's spool did not drain"

    def spooled(self) -> int:
        from foliowatch.agent.spool import Spool
        spool = Spool(str(self.agent_state / "spool"), 64 << 20)
        try:
            return len(spool)
        finally:
            spool.close()

    def wait_simulator(self, timeout: float = 600.0) -> None:
        if self.sim_thread is not None:
            self.sim_thread.join(timeout)
            assert not self.sim_thread.is_alive(), "the simulator did not finish"
            assert "error" not in self.sim_result, self.sim_result

    def ledger(self, messages: List[bytes]) -> Ledger:
        led = Ledger()
        if self.scenario is not None:
            led.add_simulator(self.scenario)
        if (self.agent_state / "state.json").exists():
            from foliowatch.agent.spool import Spool
            spool = Spool(str(self.agent_state / "spool"), 64 << 20)
            try:
                dropped = spool.dropped_total
                assert len(spool) == 0, "samples left in the agent's spool"
            finally:
                spool.close()
            led.add_agent(self.agent_state, messages, dropped=dropped)
        return led

    def account(self, scenario: str, checked: str) -> Accounting:
        msgs = [v for _p, _o, v, _k, _h in read_topic(self.cluster, self.topic)]
        dlq = [v for _p, _o, v, _k, _h in read_topic(self.cluster, self.dlq_topic)]
        return account(scenario, checked, self.ledger(msgs), self.out, dlq)

    def reference_dataset(self) -> Dict[str, bytes]:
        """The same topic through the pipeline once more without faults."""
        ref = self.tmp / "reference"
        dlq = f"{self.dlq_topic}.reference.{uuid.uuid4().hex[:6]}"
        create_topics(self.cluster.bootstrap, dlq)
        run_to_end(self.cluster, self.topic, ref, f"reference-{uuid.uuid4().hex[:6]}",
                   "--dlq-topic", dlq)
        return snapshot(ref)

    def stop_all(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
                p.wait(30)


def assert_same_dataset(got: Dict[str, bytes], expected: Dict[str, bytes]) -> None:
    assert expected, "the reference run wrote nothing"
    assert sorted(got) == sorted(expected), (
        f"window files differ: only in the faulted run {sorted(set(got) - set(expected))[:5]}, "
        f"only in the reference {sorted(set(expected) - set(got))[:5]}")
    differ = [k for k in expected if got[k] != expected[k]]
    assert not differ, f"{len(differ)} window files differ in content, e.g. {differ[:3]}"
