"""Kafka faults on a 3-broker KRaft cluster (replication 3, min.insync.replicas 2) while a
real agent and the simulator produce and the pipeline consumes: a broker SIGKILLed and
restarted, the active controller SIGKILLed and restarted, a broker paused (SIGSTOP) past
its session timeout and resumed. Every sample is accounted for (none lost, none counted
twice) and the dataset is byte-identical to a fault-free run over the same topic.
"""

from __future__ import annotations

import os
import re
import signal
import time

import pytest

from accounting import record_result
from fleet import FleetRun, assert_same_dataset
from test_pipeline_kafka import snapshot, wait

pytestmark = [pytest.mark.kafka, pytest.mark.faults]

PIPELINE = ("--until-idle", "20", "--checkpoint-seconds", "1", "--batch-records", "500",
            "--log-level", "INFO")


def broker_pid(cluster, node: int) -> int:
    return int((cluster.dir / f"node{node}" / "pid").read_text())


def active_controller(cluster) -> int:
    """The KRaft quorum's leader, as Kafka's own metadata-quorum tool reports it."""
    p = cluster.tool("metadata-quorum", "--bootstrap-server", cluster.bootstrap,
                     "describe", "--status", timeout=120)
    m = re.search(rb"LeaderId:\s+(\d+)", p.stdout)
    assert p.returncode == 0 and m, p.stderr[-2000:]
    return int(m.group(1))


def run_scenario(cluster, tmp_path, name: str, checked: str, fault) -> None:
    run = FleetRun(cluster, tmp_path)
    try:
        run.start_pipeline(*PIPELINE)
        run.start_agent()
        run.start_simulator(hosts=12, seconds=75, interval_s=2)
        time.sleep(20)                      # the system under way before the fault
        detail = fault(run)
        run.wait_simulator()
        run.stop_agent()
        assert wait(run.pipeline, 300) == 0, run.pipeline.log_path.read_text()[-3000:]
        acc = run.account(name, checked)
        record_result(acc, fault_detail=detail)
        acc.assert_exact()
        assert acc.produced > 400 and not acc.dlq, acc.summary()
        assert_same_dataset(snapshot(run.out), run.reference_dataset())
    finally:
        run.stop_all()


def test_broker_sigkilled_and_restarted(kafka3, tmp_path):
    def fault(run):
        victim = 2 if active_controller(kafka3) != 2 else 3
        os.kill(broker_pid(kafka3, victim), signal.SIGKILL)
        time.sleep(10)
        kafka3.start_node(victim)
        return f"broker {victim} (not the controller) SIGKILLed, restarted 10 s later"
    run_scenario(kafka3, tmp_path, "Kafka: a broker SIGKILLed, restarted",
                 "agent + simulator -> 3 brokers -> pipeline; accounting; dataset equals a "
                 "fault-free run", fault)


def test_active_controller_sigkilled_and_restarted(kafka3, tmp_path):
    def fault(run):
        leader = active_controller(kafka3)
        os.kill(broker_pid(kafka3, leader), signal.SIGKILL)
        time.sleep(10)
        new = active_controller(kafka3)
        assert new != leader, "the quorum should have elected another controller"
        kafka3.start_node(leader)
        return f"controller {leader} SIGKILLed; {new} took over; {leader} restarted"
    run_scenario(kafka3, tmp_path, "Kafka: the active controller SIGKILLed, restarted",
                 "as above; another controller elected", fault)


def test_broker_paused_past_its_session_timeout(kafka3, tmp_path):
    def fault(run):
        victim = 2 if active_controller(kafka3) != 2 else 3
        pid = broker_pid(kafka3, victim)
        os.kill(pid, signal.SIGSTOP)
        try:
            time.sleep(25)   # broker.session.timeout.ms is 9 s: fenced, leaders move
        finally:
            os.kill(pid, signal.SIGCONT)
        return f"broker {victim} SIGSTOPped 25 s (session timeout 9 s), then SIGCONT"
    run_scenario(kafka3, tmp_path, "Kafka: a broker paused (SIGSTOP) 25 s, resumed",
                 "as above; the paused broker fenced and back", fault)
