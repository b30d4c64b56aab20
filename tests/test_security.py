"""Security against a real broker: TLS, SASL_SSL with SCRAM-SHA-512 users created by
Kafka's own storage tool, and ACLs enforced by KRaft's StandardAuthorizer (one broker for
the module, certificates made here, stopped by PID).

What is proved: agent, simulator, pipeline and detector connect with credentials from
their configuration file, a password file or the environment; an agent's credentials
can neither read samples nor write regressions; a wrong password, an untrusted
certificate and a missing ACL each stop a command with exit 2 and one line naming the
setting; no secret reaches a log, /metrics, a message or a state file; every /metrics
listens on loopback unless told otherwise.
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from foliowatch import kafka_io
from foliowatch.kafka_io import KafkaSettings, make_consumer, make_producer
from foliowatch.shell import kafka_security
from foliowatch.shell.services import KafkaCluster, free_port, stop_pid

pytestmark = pytest.mark.kafka
REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "foliowatch"]
USERS = ("admin", "agent", "pipeline", "detector")


@pytest.fixture(scope="module")
def secure(tmp_path_factory):
    """One SASL_SSL broker with a user per component and the ACLs of docs/security.md."""
    root = tmp_path_factory.mktemp("secure-kafka")
    passwords = {u: f"{u}-{secrets.token_hex(12)}" for u in USERS}
    security = kafka_security.BrokerSecurity(root / "tls", passwords)
    cluster = KafkaCluster(root / "kafka", security=security)
    try:
        cluster.start()
        kafka_security.grant(settings(cluster, security, "admin"),
                             {c: [c] for c in kafka_security.COMPONENT_ACLS})
        yield cluster, security, passwords
    finally:
        cluster.stop()


def settings(cluster, security, user, password=None, cafile=None) -> KafkaSettings:
    return KafkaSettings(bootstrap=cluster.bootstrap.split(","), security_protocol="SASL_SSL",
                         sasl_mechanism="SCRAM-SHA-512", sasl_username=user,
                         sasl_password=password or security.users[user],
                         ssl_cafile=str(cafile or security.ca.path))


def kafka_toml(path: Path, cluster, security, user, password=None, cafile=None) -> Path:
    """A --kafka-config file; the password in it unless ``password`` is False."""
    lines = ["[kafka]", f'bootstrap = "{cluster.bootstrap}"', 'security_protocol = "SASL_SSL"',
             'sasl_mechanism = "SCRAM-SHA-512"', f'sasl_username = "{user}"',
             f'ssl_cafile = "{cafile or security.ca.path}"']
    if password is not False:
        lines.append(f'sasl_password = "{password or security.users[user]}"')
    path.write_text("\n".join(lines) + "\n")
    return path


def agent_toml(path: Path, cluster, security, state_dir: Path, metrics_port: int,
               topic: str = kafka_io.TOPIC_SAMPLES, password_file: Path = None) -> Path:
    password_file = password_file or path.parent / "agent.password"
    if not password_file.exists():
        password_file.write_text(security.users["agent"] + "\n")
        password_file.chmod(0o600)
    path.write_text(f"""[agent]
host_id = "secure-host-1"
fleet = "secure"
interval_s = 1.0
state_dir = "{state_dir}"
[agent.kafka]
bootstrap = ["{cluster.bootstrap}"]
topic = "{topic}"
security_protocol = "SASL_SSL"
sasl_mechanism = "SCRAM-SHA-512"
sasl_username = "agent"
sasl_password_file = "{password_file}"
ssl_cafile = "{security.ca.path}"
send_timeout_s = 5.0
latency_budget_s = 0.0
[agent.metrics]
listen = "127.0.0.1:{metrics_port}"
""")
    return path


def cli(*args, env=None, timeout=180) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def listening_hosts(port: int):
    """The local addresses a TCP socket listens on for ``port`` (from /proc/net/tcp*)."""
    hosts = set()
    for table, family in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            addr, p = local.split(":")
            if state != "0A" or int(p, 16) != port:
                continue
            raw = bytes.fromhex(addr)
            # /proc prints each 32-bit word in host (little-endian) order
            raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
            hosts.add(socket.inet_ntop(family, raw))
    return hosts


def scrape(port: int, deadline_s: float = 60.0) -> str:
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                return r.read().decode()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


def test_components_connect_with_their_credentials_and_no_secret_leaks(secure, tmp_path):
    """Agent (password file), simulator (environment), pipeline (TOML) and detector
    (TOML) work over SASL_SSL; each /metrics listens on 127.0.0.1 only; no password
    appears in any output, /metrics page or file they wrote."""
    cluster, security, passwords = secure
    outputs = []
    procs = []
    try:
        # the agent as a service: samples, spool, delivery, /metrics
        agent_port = free_port()
        cfg = agent_toml(tmp_path / "agent.toml", cluster, security, tmp_path / "agent-state",
                         agent_port)
        agent_log = open(tmp_path / "agent.log", "w")
        agent = subprocess.Popen([*CLI, "agent", "--config", str(cfg)], stdout=agent_log,
                                 stderr=subprocess.STDOUT, start_new_session=True)
        procs.append(agent)
        # the simulator: the password from the environment, not the file
        sim = cli("simulate", "--scenario", "demo-rollout", "--hosts", "12", "--hours", "0.1",
                  "--kafka-config", str(kafka_toml(tmp_path / "sim.toml", cluster, security,
                                                   "agent", password=False)),
                  env={"FOLIOWATCH_KAFKA_SASL_PASSWORD": passwords["agent"]})
        outputs.append(sim.stdout + sim.stderr)
        assert sim.returncode == 0, sim.stderr
        assert '"sent"' in sim.stdout

        agent_metrics = scrape(agent_port)
        outputs.append(agent_metrics)
        deadline = time.monotonic() + 60
        while not re.search(r"^foliowatch_agent_samples_sent_total [1-9]", agent_metrics, re.M):
            assert time.monotonic() < deadline, agent_metrics[-2000:]
            time.sleep(1)
            agent_metrics = scrape(agent_port)
            outputs.append(agent_metrics)
        assert listening_hosts(agent_port) == {"127.0.0.1"}
        stop_pid(agent.pid)   # a finite topic for the pipeline's --until-idle

        # the pipeline: password in its --kafka-config; /metrics given a port only
        pipe_port = free_port()
        dataset = tmp_path / "dataset"
        pipe = subprocess.Popen(
            [*CLI, "pipeline", "--output", str(dataset), "--until-idle", "4",
             "--kafka-config", str(kafka_toml(tmp_path / "pipe.toml", cluster, security,
                                              "pipeline")),
             "--metrics-addr", f":{pipe_port}"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        procs.append(pipe)
        outputs.append(scrape(pipe_port))
        assert listening_hosts(pipe_port) == {"127.0.0.1"}
        out, _ = pipe.communicate(timeout=300)
        outputs.append(out)
        assert pipe.returncode == 0, out
        assert '"accepted"' in out and '"records": 0' not in out

        # the detector, continuous, with Kafka and /metrics on a port only
        det_port = free_port()
        det = subprocess.Popen(
            [*CLI, "detect", "--dataset", str(dataset), "--state", str(tmp_path / "state.json"),
             "--follow", "--poll-interval", "1", "--metrics-addr", f":{det_port}",
             "--kafka-config", str(kafka_toml(tmp_path / "det.toml", cluster, security,
                                              "detector"))],
            stdout=open(tmp_path / "detector.log", "w"), stderr=subprocess.STDOUT,
            start_new_session=True)
        procs.append(det)
        det_metrics = scrape(det_port, deadline_s=120)
        outputs.append(det_metrics)
        assert listening_hosts(det_port) == {"127.0.0.1"}
        # the detector's grant: regressions may be written with its credentials
        p = make_producer(settings(cluster, security, "detector"))
        p.send(kafka_io.TOPIC_REGRESSIONS, b"probe").get(30)
        p.close()
    finally:
        for proc in procs:
            stop_pid(proc.pid)
    outputs += [(tmp_path / name).read_text() for name in ("agent.log", "detector.log")]
    config_files = {tmp_path / n for n in ("agent.toml", "agent.password", "sim.toml",
                                            "pipe.toml", "det.toml")}
    written = [f for f in tmp_path.rglob("*") if f.is_file() and f not in config_files]
    assert any("spool" in str(f) for f in written) and any(dataset in f.parents for f in written)
    for secret in passwords.values():
        for text in outputs:
            assert secret not in text
        for f in written:
            assert secret.encode() not in f.read_bytes(), f


def test_agent_credentials_cannot_read_samples_or_write_regressions(secure):
    cluster, security, _ = secure
    from kafka.errors import TopicAuthorizationFailedError
    agent = settings(cluster, security, "agent")
    consumer = make_consumer(agent, kafka_io.TOPIC_SAMPLES, group_id=None,
                             consumer_timeout_ms=10_000)
    with pytest.raises(TopicAuthorizationFailedError):
        list(consumer)
    consumer.close()
    producer = make_producer(agent, max_block_ms=10_000)
    producer.send(kafka_io.TOPIC_SAMPLES, b"allowed").get(30)
    with pytest.raises(TopicAuthorizationFailedError):
        producer.send(kafka_io.TOPIC_REGRESSIONS, b"refused").get(30)
    producer.close()


def one_line_naming(result: subprocess.CompletedProcess, *names: str) -> str:
    lines = [l for l in result.stderr.splitlines()
             if l.startswith("foliowatch ") and not l.startswith("foliowatch agent --once")]
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert len(lines) == 1, result.stderr
    for n in names:
        assert n in lines[0], lines[0]
    return lines[0]


def test_wrong_password_fails_with_one_line_naming_the_setting(secure, tmp_path):
    cluster, security, passwords = secure
    wrong = "not-" + secrets.token_hex(8)
    conf = kafka_toml(tmp_path / "k.toml", cluster, security, "agent", password=False)
    r = cli("simulate", "--scenario", "demo-rollout", "--hosts", "2", "--hours", "0.05",
            "--kafka-config", str(conf), env={"FOLIOWATCH_KAFKA_SASL_PASSWORD": wrong},
            timeout=60)
    line = one_line_naming(r, "$FOLIOWATCH_KAFKA_SASL_PASSWORD", "refused user 'agent'")
    assert wrong not in r.stderr + r.stdout and passwords["agent"] not in line


def test_untrusted_certificate_fails_with_one_line_naming_the_setting(secure, tmp_path):
    cluster, security, _ = secure
    other = kafka_security.make_ca(tmp_path, "another CA")
    conf = kafka_toml(tmp_path / "k.toml", cluster, security, "pipeline", cafile=other.path)
    r = cli("pipeline", "--output", str(tmp_path / "ds"), "--kafka-config", str(conf),
            "--metrics-addr", "off", timeout=60)
    one_line_naming(r, f"--kafka-config {conf} [kafka] ssl_cafile", "not trusted")


def test_missing_acl_fails_with_one_line_naming_the_user(secure, tmp_path):
    """The agent pointed at the regressions topic (no ACL for it): ``--once`` stops
    with exit 2 naming the user and the topic; the sample stays in the spool."""
    cluster, security, _ = secure
    cfg = agent_toml(tmp_path / "agent.toml", cluster, security, tmp_path / "state",
                     free_port(), topic=kafka_io.TOPIC_REGRESSIONS)
    r = cli("agent", "--once", "--config", str(cfg), timeout=120)
    one_line_naming(r, "agent.kafka.sasl_username", "user 'agent' is not authorized",
                    kafka_io.TOPIC_REGRESSIONS, "wait in")


def test_settings_hide_the_password():
    s = KafkaSettings(sasl_password="hunter2-secret")
    assert "hunter2-secret" not in repr(s)
    assert "hunter2-secret" not in str(s.check())


def test_every_metrics_default_is_loopback():
    from foliowatch.agent.config import AgentConfig
    from foliowatch.flags import parse_listen
    from foliowatch.shell.cli import subcommand_parser, _load
    assert AgentConfig().metrics_address()[0] == "127.0.0.1"
    pipeline = subcommand_parser("pipeline", _load("pipeline")).parse_args(["--output", "x"])
    assert parse_listen(pipeline.metrics_addr)[0] == "127.0.0.1"
    detect = subcommand_parser("detect", _load("detect")).parse_args(
        ["--dataset", "x", "--state", "y"])
    assert detect.metrics_addr is None        # off unless asked for
    assert parse_listen(":9467")[0] == "127.0.0.1"


def test_acl_docs_list_the_granted_acls():
    """docs/security.md shows the kafka-acls commands for exactly ``COMPONENT_ACLS``."""
    doc = (REPO / "docs" / "security.md").read_text()
    users = {"agent": "foliowatch-agent", "pipeline": "foliowatch-pipeline",
             "detector": "foliowatch-detector"}
    for command in kafka_security.kafka_acls_commands(users):
        assert re.sub(r"\s+", " ", command) in re.sub(r"\s*\\\n\s*", " ", doc), command
