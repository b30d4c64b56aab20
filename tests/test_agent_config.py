"""Configuration: the embedded default, environment overrides, and --check's messages;
the CLI's --once --stdout sample."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from foliowatch import schema
from foliowatch.agent import config

pytestmark = pytest.mark.agent39


def cli(*args, env=None, timeout=60):
    import os
    e = {k: v for k, v in os.environ.items() if not k.startswith("FOLIOWATCH_")}
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "foliowatch", "agent", *args],
                          capture_output=True, text=True, timeout=timeout, env=e)


def test_embedded_default_is_valid_and_safe():
    cfg, problems = config.load(None, {})
    assert problems == []
    assert cfg.metrics_listen.startswith("127.0.0.1:")
    assert cfg.probe.enabled is False
    assert cfg.probe.chunk_bytes == 1 << 20
    assert cfg.kafka.compression == "zstd"     # zstandard is one of the agent's dependencies
    assert cfg.topic == "foliowatch.samples.v1"


def test_environment_overrides_file(tmp_path):
    f = tmp_path / "a.toml"
    f.write_text('[agent]\nfleet = "db"\n[agent.kafka]\nbootstrap = ["k1:9092"]\n')
    cfg, problems = config.load(str(f), {"FOLIOWATCH_AGENT_KAFKA_BOOTSTRAP": "k2:9093,k3:9093",
                                         "FOLIOWATCH_AGENT_SPOOL_MAX_BYTES": "2_000_000",
                                         "FOLIOWATCH_AGENT_PROBE_ENABLED": "false",
                                         "FOLIOWATCH_AGENT_KAFKA_SASL_PASSWORD": "s3cret"})
    assert problems == []
    assert cfg.fleet == "db"
    assert cfg.kafka.bootstrap == ["k2:9093", "k3:9093"]
    assert cfg.spool_max_bytes == 2_000_000
    assert cfg.kafka.sasl_password == "s3cret"


def test_compression_codec_must_be_installed(monkeypatch):
    from kafka import codec
    monkeypatch.setattr(codec, "has_zstd", lambda: False)
    _cfg, problems = config.load(None, {"FOLIOWATCH_AGENT_KAFKA_COMPRESSION": "zstd"})
    assert problems == ["config agent.kafka.compression: 'zstd' needs the Python package "
                        "zstandard, which is not installed here; install it or use \"gzip\""]
    monkeypatch.setattr(codec, "has_zstd", lambda: True)
    assert config.load(None, {"FOLIOWATCH_AGENT_KAFKA_COMPRESSION": "zstd"})[1] == []


def test_every_key_has_one_environment_variable():
    names = [config.env_name(k) for k in config.KEYS]
    assert len(set(names)) == len(names)
    assert config.env_name("agent.kafka.bootstrap") == "FOLIOWATCH_AGENT_KAFKA_BOOTSTRAP"


@pytest.mark.parametrize("toml,message", [
    ('[agent.kafka]\nbootstrap = ["kafka"]\n',
     "config agent.kafka.bootstrap: expected host:port, got 'kafka'"),
    ('[agent]\nintervl_s = 5\n', "config agent.intervl_s: unknown key; did you mean agent.interval_s?"),
    ('[agent]\ninterval_s = "ten"\n', "config agent.interval_s: expected a number, got 'ten'"),
    ('[agent]\ninterval_s = 0.1\n', "config agent.interval_s: must be in [1, 3600] seconds"),
    ('[agent.kafka]\nsecurity_protocol = "SASL_SSL"\n', "config agent.kafka.sasl_mechanism:"),
    ('[agent.kafka]\nsecurity_protocol = "SASL_SSL"\nsasl_mechanism = "SCRAM-SHA-512"\n'
     'sasl_username = "a"\nsasl_password_file = "/nonexistent/pw"\n',
     "config agent.kafka.sasl_password_file: file '/nonexistent/pw' does not exist"),
    ('[agent.kafka]\nsecurity_protocol = "SASL_SSL"\nsasl_mechanism = "SCRAM-SHA-512"\n'
     'sasl_username = "a"\nsasl_password = "x"\nsasl_password_file = "/etc/hostname"\n',
     "config agent.kafka.sasl_password, agent.kafka.sasl_password_file: give one of them"),
    ('[agent.probe]\nenabled = true\n', "config agent.probe.directory: required"),
    ('[agent.probe]\nnew_kernel_every_s = 5.0\n',
     "config agent.probe.new_kernel_every_s: must be >= agent.interval_s (10), got 5"),
    ('[agent.probe]\nnew_kernel_hours = 200.0\n',
     "config agent.probe.new_kernel_hours: must be in [0, 168] (0 turns the denser probing "
     "on a new kernel off), got 200"),
    ('[agent.probe]\nnew_kernel_hours = -1.0\n',
     "config agent.probe.new_kernel_hours: must be in [0, 168]"),
    ('[agent.metrics]\nlisten = "9464"\n', "config agent.metrics.listen: expected host:port"),
    ('[agent.spool]\nmax_bytes = 1000\n', "config agent.spool.max_bytes: at least 1048576"),
    ('[kafka]\nbootstrap = "x:1"\n', "config kafka: unknown table"),
    ('[agent]\nfleet = "a b"\n', "config agent.fleet: 'a b' is not a valid label"),
])
def test_check_names_the_key_and_what_to_do(tmp_path, toml, message):
    f = tmp_path / "agent.toml"
    f.write_text(toml)
    _cfg, problems = config.load(str(f), {})
    assert any(p.startswith(message) for p in problems), problems
    p = cli("--check", "--config", str(f))
    assert p.returncode == 2
    assert message in p.stderr


def test_check_reports_environment_source():
    p = cli("--check", env={"FOLIOWATCH_AGENT_INTERVAL_S": "soon"})
    assert p.returncode == 2
    assert ("config agent.interval_s (from $FOLIOWATCH_AGENT_INTERVAL_S): expected a number, "
            "got 'soon'") in p.stderr


def test_check_passes_on_the_default(tmp_path):
    p = cli("--check", env={"FOLIOWATCH_AGENT_STATE_DIR": str(tmp_path / "st")})
    assert p.returncode == 0, p.stderr
    assert "configuration valid" in p.stdout


def test_print_default_config_round_trips():
    p = cli("--print-default-config")
    assert p.returncode == 0 and p.stdout == config.DEFAULT_TOML


def test_once_stdout_prints_one_valid_sample_without_kafka_or_state(tmp_path):
    p = cli("--once", "--stdout", "--interval", "1",
            env={"FOLIOWATCH_AGENT_STATE_DIR": str(tmp_path / "never"),
                 "FOLIOWATCH_AGENT_KAFKA_BOOTSTRAP": "127.0.0.1:1"})
    assert p.returncode == 0, p.stderr
    lines = p.stdout.strip().splitlines()
    assert len(lines) == 1
    rec = schema.decode(lines[0].encode())
    assert rec["labels"]["arch"] in ("x86_64", "arm64")
    assert 0.9 < rec["interval_s"] < 5
    assert "compact_stall" in rec["counters"]
    assert not (tmp_path / "never").exists()
    json.loads(lines[0])


def test_runtime_errors_name_the_key(tmp_path):
    import socket
    ro = tmp_path / "ro"
    ro.mkdir()
    (ro / "state").write_text("a file where the state directory should be")
    p = cli("--once", env={"FOLIOWATCH_AGENT_STATE_DIR": str(ro / "state"),
                           "FOLIOWATCH_AGENT_KAFKA_ENABLED": "false"})
    assert p.returncode == 1
    assert f"foliowatch agent: agent.state_dir {ro / 'state'}: " in p.stderr
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        p = cli(env={"FOLIOWATCH_AGENT_STATE_DIR": str(tmp_path / "st"),
                     "FOLIOWATCH_AGENT_KAFKA_ENABLED": "false",
                     "FOLIOWATCH_AGENT_METRICS_LISTEN": f"127.0.0.1:{port}"})
    assert p.returncode == 1
    assert f"agent.metrics.listen 127.0.0.1:{port}: Address already in use" in p.stderr
