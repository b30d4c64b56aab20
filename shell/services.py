"""Local real services for development, tests and the demo: Apache Kafka (through
``deploy/kafka/kafka.sh``), Prometheus and Alertmanager (Debian packages), each on
loopback ports with its own temporary folder, stopped by PID.

A service that cannot start raises ``ServiceError`` with the tail of its log: callers
(tests included) fail loudly rather than skip.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import List, Optional

from foliowatch import errors

REPO = Path(__file__).resolve().parents[1]
KAFKA_SH = REPO / "deploy" / "kafka" / "kafka.sh"


class ServiceError(errors.ServiceError):
    """A local service (Kafka, Prometheus, Alertmanager) did not start or answer."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, n: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


def stop_pid(pid: int, timeout: float = 15.0) -> None:
    """TERM, wait, then KILL: the one way every service here is stopped."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
            if done:
                return
        except ChildProcessError:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    except (ProcessLookupError, ChildProcessError):
        pass


def create_topics(bootstrap: str, *names: str, partitions: int = 1) -> None:
    """Create topics (replication 1) on a local broker, e.g. one per test so that tests
    never share data."""
    from kafka.admin import KafkaAdminClient, NewTopic
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics([NewTopic(n, num_partitions=partitions, replication_factor=1)
                             for n in names])
    finally:
        admin.close()


class KafkaCluster:
    """1 broker (default) or N brokers in KRaft combined mode, started by kafka.sh.

    ``security``: a ``kafka_security.BrokerSecurity`` for SASL_SSL listeners (SCRAM
    users, TLS, ACLs enforced); None (the default) for PLAINTEXT on loopback."""

    def __init__(self, workdir: Path, brokers: int = 1, security=None):
        self.dir = Path(workdir)
        self.brokers = brokers
        self.security = security
        self.bootstrap = ""

    def start(self, timeout: float = 180.0) -> "KafkaCluster":
        if not KAFKA_SH.exists():
            raise ServiceError(f"{KAFKA_SH} not found: run from a foliowatch checkout")
        self.dir.mkdir(parents=True, exist_ok=True)
        secure = []
        if self.security is not None:
            secure = ["--secure", str(self.security.write())]
        try:
            p = subprocess.run(["bash", str(KAFKA_SH), "start", "--dir", str(self.dir),
                                "--brokers", str(self.brokers), *secure],
                               capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            # kafka.sh was killed; the nodes it started (their own sessions) were not
            self.stop()
            raise ServiceError(f"Kafka ({self.brokers} broker(s)) not ready after "
                               f"{timeout:.0f}s in {self.dir}; stopped its nodes") from None
        if p.returncode != 0:
            raise ServiceError(f"Kafka ({self.brokers} broker(s)) did not start in {self.dir}:\n"
                               f"{p.stderr[-4000:]}")
        self.bootstrap = p.stdout.strip().splitlines()[-1]
        return self

    def stop(self) -> None:
        subprocess.run(["bash", str(KAFKA_SH), "stop", "--dir", str(self.dir)],
                       capture_output=True, text=True, timeout=120)

    def stop_node(self, node: int) -> None:
        subprocess.run(["bash", str(KAFKA_SH), "stop-node", "--dir", str(self.dir),
                        "--node", str(node)], check=True, capture_output=True, timeout=60)

    def start_node(self, node: int) -> None:
        p = subprocess.run(["bash", str(KAFKA_SH), "start-node", "--dir", str(self.dir),
                            "--node", str(node)], capture_output=True, text=True, timeout=180)
        if p.returncode != 0:
            raise ServiceError(f"Kafka node {node} did not restart: {p.stderr[-2000:]}")

    def pids(self) -> List[int]:
        return [int(f.read_text()) for f in sorted(self.dir.glob("node*/pid"))]

    def tool(self, name: str, *args: str, timeout: float = 120.0,
             input: Optional[bytes] = None) -> subprocess.CompletedProcess:
        """Run one of Kafka's own tools (topics, console-consumer, consumer-perf, ...)."""
        return subprocess.run(["bash", str(KAFKA_SH), "tool", name, *args], input=input,
                              capture_output=True, timeout=timeout)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


class _HttpService:
    name = "service"
    binary: List[str] = []
    ready_path = "/-/ready"

    def __init__(self, workdir: Path):
        self.dir = Path(workdir)
        self.port = 0
        self.proc: Optional[subprocess.Popen] = None
        self.log = self.dir / f"{self.name}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _argv(self) -> List[str]:
        raise NotImplementedError

    def start(self, timeout: float = 60.0):
        exe = shutil.which(self.binary[0])
        if exe is None:
            raise ServiceError(f"{self.binary[0]} not found: run scripts/bootstrap.sh "
                               f"(apt-get install {self.binary[1]})")
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port()
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self._argv(), stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServiceError(f"{self.name} exited with {self.proc.returncode} during "
                                   f"start:\n{_tail(self.log)}")
            try:
                with urllib.request.urlopen(self.url + self.ready_path, timeout=1) as r:
                    if r.status == 200:
                        return self
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        self.stop()
        raise ServiceError(f"{self.name} not ready on {self.url} after {timeout:.0f}s:\n"
                           f"{_tail(self.log)}")

    def stop(self) -> None:
        if self.proc is not None:
            stop_pid(self.proc.pid)
            self.proc = None

    def get_json(self, path: str, timeout: float = 10.0):
        with urllib.request.urlopen(self.url + path, timeout=timeout) as r:
            return json.loads(r.read())

    def post_json(self, path: str, payload, timeout: float = 10.0):
        req = urllib.request.Request(self.url + path, data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"},
                                     method="POST")
        with urllib.request.urlopen(req, timeout=timeout) as r:
            body = r.read()
            return r.status, (json.loads(body) if body else None)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


class Prometheus(_HttpService):
    """Debian's prometheus with a given config (YAML text), scraping every ``interval``."""

    name = "prometheus"
    binary = ["prometheus", "prometheus"]

    def __init__(self, workdir: Path, config: str, rule_files: Optional[List[Path]] = None):
        super().__init__(workdir)
        self.config = config
        self.rule_files = rule_files or []

    def _argv(self) -> List[str]:
        cfg = self.dir / "prometheus.yml"
        cfg.write_text(self.config)
        return ["prometheus", f"--config.file={cfg}", f"--storage.tsdb.path={self.dir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}", "--web.enable-lifecycle",
                "--web.enable-admin-api", "--storage.tsdb.retention.time=2d"]

    def query(self, promql: str, at: Optional[float] = None):
        from urllib.parse import urlencode
        q = {"query": promql}
        if at is not None:
            q["time"] = str(at)
        return self.get_json("/api/v1/query?" + urlencode(q))


class Alertmanager(_HttpService):
    name = "alertmanager"
    binary = ["prometheus-alertmanager", "prometheus-alertmanager"]

    def __init__(self, workdir: Path, config: Optional[str] = None):
        super().__init__(workdir)
        self.config = config or ("route:\n  receiver: default\n  group_wait: 1s\n"
                                 "receivers:\n  - name: default\n")

    def _argv(self) -> List[str]:
        cfg = self.dir / "alertmanager.yml"
        cfg.write_text(self.config)
        # An empty cluster address turns high-availability gossip off: one instance.
        return ["prometheus-alertmanager", f"--config.file={cfg}",
                f"--storage.path={self.dir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}", "--cluster.listen-address="]
