"""Shared fixtures: real services started on loopback and stopped by PID.

A service that cannot start fails the test with its log; nothing here skips.
"""
from __future__ import annotations

import fcntl
import os
import subprocess
import uuid
from pathlib import Path

import pytest

from foliowatch.shell.services import Alertmanager, KafkaCluster, Prometheus, create_topics

REPO = Path(__file__).resolve().parents[1]


def pytest_collection_modifyitems(session, config, items):
    """The long fault cases (marked faults: minutes each, 3-broker clusters) are
    deselected unless --faults is given, so `make test` runs only the short ones of
    tests/faults/ (`make faults` runs them all). Then modules marked slow first, each
    module's tests kept together and in file order: scripts/test.sh runs the suite on
    two workers, a module to a worker, and the long modules must not be the last ones
    handed out. The order is the same in every worker (pytest-xdist requires it)."""
    if not config.getoption("--faults"):
        long_cases = [i for i in items if i.get_closest_marker("faults")]
        if long_cases:
            config.hook.pytest_deselected(items=long_cases)
            items[:] = [i for i in items if not i.get_closest_marker("faults")]
    first_seen = {}
    for i, item in enumerate(items):
        first_seen.setdefault(item.module.__name__, i)
    slow = {item.module.__name__ for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda it: (it.module.__name__ not in slow, first_seen[it.module.__name__]))
FIXTURES = Path(__file__).resolve().parent / "fixtures"


def pytest_addoption(parser):
    parser.addoption("--faults", action="store_true",
                     help="also run the long fault-suite cases (marked faults); `make "
                          "faults` does, `make test` does not")


@pytest.fixture(scope="session")
def seed_dataset(tmp_path_factory, worker_id):
    """The seed scenario (500 hosts, 22 h at 60 s, seed 7) through the simulator and the
    pipeline's --from-files mode, built once per run: the workers of one run share it (the
    first to ask builds it under a lock; the others wait and read). Tests only read it."""
    from test_detector_e2e import simulate_and_aggregate

    # pytest-xdist: the base temp of one run is the parent of each worker's
    root = tmp_path_factory.getbasetemp()
    root = root if worker_id == "master" else root.parent
    built = root / "seed-dataset"
    with open(root / "seed-dataset.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (built / "dataset.done").exists():
            dataset = simulate_and_aggregate(built, "seed-iomap-arm64-xfs",
                                             hosts=500, hours=22, seed=7)
            (built / "dataset.done").write_text(str(dataset))
    return Path((built / "dataset.done").read_text())


@pytest.fixture(scope="session")
def kafka(tmp_path_factory):
    """One real KRaft broker for the whole session, with the foliowatch topics."""
    cluster = KafkaCluster(tmp_path_factory.mktemp("kafka"), brokers=1).start()
    yield cluster
    cluster.stop()


@pytest.fixture
def kafka3(tmp_path):
    """A fresh 3-broker cluster (fault tests); stopped by PID afterwards."""
    cluster = KafkaCluster(tmp_path / "kafka3", brokers=3).start()
    yield cluster
    cluster.stop()


@pytest.fixture
def topic(kafka):
    """A fresh topic (6 partitions) on the session broker, so tests never share data."""
    name = f"test.{uuid.uuid4().hex[:12]}"
    create_topics(kafka.bootstrap, name, partitions=6)
    return name


@pytest.fixture
def prometheus_factory(tmp_path):
    started = []

    def start(config: str, rule_files=None) -> Prometheus:
        p = Prometheus(tmp_path / f"prometheus{len(started)}", config, rule_files).start()
        started.append(p)
        return p

    yield start
    for p in started:
        p.stop()


@pytest.fixture
def alertmanager(tmp_path):
    am = Alertmanager(tmp_path / "alertmanager").start()
    yield am
    am.stop()


@pytest.fixture(scope="session")
def tracefs():
    """The real kernel's tracefs at /sys/kernel/tracing, mounted if it is not (root)."""
    assert os.geteuid() == 0, "the tracepoint tests count on the real kernel and need root"
    if not os.path.isdir("/sys/kernel/tracing/events"):
        subprocess.run(["mount", "-t", "tracefs", "nodev", "/sys/kernel/tracing"], check=True)
    return "/sys/kernel/tracing"
