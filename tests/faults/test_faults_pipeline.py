"""Pipeline faults: SIGKILL at each step of a micro-batch and a restart; two instances
in one group with one of them SIGKILLed again and again; the dataset's filesystem full.
After each, every sample is accounted for (none lost, none counted twice) and the
dataset is byte-identical to an uninterrupted run over the same topic.

The kills come from ``tests/pipeline_faults.py``, which wraps the pipeline's functions
from outside the product before running its CLI.
"""

from __future__ import annotations

import signal
import time
import uuid
from pathlib import Path

import pytest

from foliowatch.kafka_io import KafkaSettings, make_producer
from foliowatch.shell.services import create_topics

from accounting import Ledger, account, record_result
from fleet import NO_SIM_FAULTS, SCENARIO, assert_same_dataset, wait_for
from loopfs import fill_up, loop_fs
from test_pipeline_kafka import read_topic, run_to_end, snapshot, start_pipeline, wait

pytestmark = pytest.mark.kafka
SMALL = ("--batch-records", "400", "--checkpoint-seconds", "0")


class SimTopic:
    """A topic of simulated records (with late and duplicated deliveries), its ledger
    and the dataset of one uninterrupted run."""

    def __init__(self, kafka, tmp: Path):
        from foliowatch.simulator import load_scenario, produce_to_kafka
        self.kafka = kafka
        self.topic = f"faults.pipe.{uuid.uuid4().hex[:8]}"
        create_topics(kafka.bootstrap, self.topic, partitions=4)
        create_topics(kafka.bootstrap, f"{self.topic}.dlq")
        self.scenario = load_scenario(SCENARIO, hosts=10, hours=0.25, interval_s=10, seed=9,
                                      faults={**NO_SIM_FAULTS, "late": 0.01,
                                              "duplicate": 0.01})
        settings = KafkaSettings(bootstrap=[kafka.bootstrap])
        producer = make_producer(settings, batch_size=256 * 1024, linger_ms=20)
        try:
            produce_to_kafka(self.scenario, settings, topic=self.topic, producer=producer)
        finally:
            producer.close()
        self.ledger = Ledger()
        self.ledger.add_simulator(self.scenario)
        ref = tmp / "reference"
        run_to_end(kafka, self.topic, ref, "reference",
                   "--dlq-topic", self._dlq("reference"))
        self.expected = snapshot(ref)

    def _dlq(self, name: str) -> str:
        t = f"{self.topic}.dlq.{name}"
        create_topics(self.kafka.bootstrap, t)
        return t

    def new_group(self, name: str):
        """A fresh group with its own DLQ topic, so that runs never share dead letters."""
        return f"{name}-{uuid.uuid4().hex[:6]}", self._dlq(name)

    def check(self, scenario: str, checked: str, out: Path, dlq_topic: str, **extra):
        dlq = [v for _p, _o, v, _k, _h in read_topic(self.kafka, dlq_topic)]
        acc = account(scenario, checked, self.ledger, out, dlq)
        record_result(acc, **extra)
        acc.assert_exact()
        assert acc.dlq.get("late", 0) > 0, acc.summary()
        assert_same_dataset(snapshot(out), self.expected)
        return acc


@pytest.fixture(scope="module")
def sim(kafka, tmp_path_factory):
    return SimTopic(kafka, tmp_path_factory.mktemp("faults-pipe"))


STEP_CASES = [
    pytest.param("consume", 3, marks=pytest.mark.faults),
    pytest.param("decode", 3, marks=pytest.mark.faults),
    pytest.param("write", 2, marks=pytest.mark.faults),
    pytest.param("checkpoint", 5),          # the short case `make test` runs
    pytest.param("commit", 3, marks=pytest.mark.faults),
]


@pytest.mark.parametrize("step,nth", STEP_CASES)
def test_sigkill_at_a_step_of_a_batch_then_restart(sim, tmp_path, step, nth):
    """SIGKILL at one step of a micro-batch, restart to the end."""
    out = tmp_path / "ds"
    group, dlq = sim.new_group(f"kill-{step}")
    # killed at that step, then restarted and run to the end
    proc = start_pipeline(sim.kafka, sim.topic, out, group, "--until-idle", "2", *SMALL,
                          "--dlq-topic", dlq,
                          faults=("--kill-at", step, "--kill-after", str(nth)))
    assert wait(proc) == -signal.SIGKILL, proc.log_path.read_text()[-3000:]
    run_to_end(sim.kafka, sim.topic, out, group, *SMALL, "--dlq-topic", dlq)
    sim.check(f"Pipeline: SIGKILL after {STEP_TEXT[step]}, restart",
              "restart re-reads from the checkpoint; accounting; dataset equals an "
              "uninterrupted run", out, dlq)


STEP_TEXT = {"consume": "consume (records polled, not processed)",
             "decode": "decode (validated, not aggregated)",
             "write": "the Parquet write, before the checkpoint",
             "checkpoint": "one partition's checkpoint, mid-checkpoint",
             "commit": "the checkpoint, before the offset commit"}


@pytest.mark.faults
def test_two_instances_one_killed_repeatedly(sim, tmp_path):
    """Two members of one group; the second is SIGKILLed again and again mid-run."""
    out = tmp_path / "ds"
    group, dlq = sim.new_group("pair-kill")
    args = ("--until-idle", "10", "--batch-records", "200", "--checkpoint-seconds", "0.5",
            "--dlq-topic", dlq)
    pause = ("--batch-pause", "0.3")
    steady = start_pipeline(sim.kafka, sim.topic, out, group, *args, faults=pause)
    kills = 0
    try:
        for _ in range(4):
            victim = start_pipeline(sim.kafka, sim.topic, out, group, *args, faults=pause)
            # it joins, takes partitions and works for a while; then SIGKILL
            wait_for(lambda: "assigned" in victim.log_path.read_text()
                     and "checkpoint: next offsets" in victim.log_path.read_text(),
                     90, "the second instance to own partitions and checkpoint")
            victim.send_signal(signal.SIGKILL)
            assert victim.wait(30) == -signal.SIGKILL
            kills += 1
            if steady.poll() is not None:
                break
        assert wait(steady, 300) == 0, steady.log_path.read_text()[-3000:]
    finally:
        for p in (steady,):
            if p.poll() is None:
                p.kill()
                p.wait()
    # whatever the killed member had not finished, its checkpoint hands on
    run_to_end(sim.kafka, sim.topic, out, group, "--dlq-topic", dlq)
    sim.check("Pipeline: 2 instances, one SIGKILLed repeatedly",
              f"{kills} kills of the second member mid-run; the survivor takes over its "
              "partitions; accounting; dataset equals an uninterrupted run", out, dlq,
              fault_detail=f"{kills} SIGKILLs")


@pytest.mark.faults
def test_dataset_disk_full_stops_consuming_says_why_and_resumes(sim, tmp_path):
    """The dataset's filesystem (24 MiB loop mount) fills up while the pipeline runs: it
    logs why and where, stops consuming and checkpointing, and finishes once the space
    is back; accounting and dataset as an uninterrupted run."""
    group, dlq = sim.new_group("disk-full")
    with loop_fs("ext4", 24 << 20) as mnt:
        out = Path(mnt) / "ds"
        proc = start_pipeline(sim.kafka, sim.topic, out, group, "--until-idle", "3", *SMALL,
                              "--dlq-topic", dlq, "--log-level", "INFO",
                              "--batch-records", "100", log=tmp_path / "pipeline.log",
                              faults=("--batch-pause", "1"))
        try:
            # the disk fills up while the pipeline is under way
            wait_for(lambda: "checkpoint: next offsets" in proc.log_path.read_text(), 120,
                     "a first checkpoint")
            filler = fill_up(mnt)
            wait_for(lambda: "no space left" in proc.log_path.read_text(), 120,
                     "the pipeline to say the dataset's filesystem is full")
            state = out / "_state"
            before = {p: p.read_bytes() for p in state.rglob("*.state")}
            time.sleep(8)
            assert proc.poll() is None, proc.log_path.read_text()[-3000:]
            log = proc.log_path.read_text()
            assert "stopped consuming" in log and str(out) in log, log[-3000:]
            after = {p: p.read_bytes() for p in state.rglob("*.state")}
            assert after == before                       # nothing checkpointed meanwhile
            filler.unlink()                              # space returns
            assert wait(proc, 240) == 0, proc.log_path.read_text()[-3000:]
            assert "space again" in proc.log_path.read_text()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        sim.check("Pipeline: dataset filesystem full (24 MiB loop mount), space freed",
                  "stops consuming and logs why; resumes when space returns; accounting; "
                  "dataset equals an uninterrupted run", out, dlq)
