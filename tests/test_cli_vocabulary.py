"""One vocabulary on the command line: every subcommand spells Kafka's bootstrap
`--bootstrap`, a /metrics listen address `--metrics-addr HOST:PORT` and an output folder
`--output`; the old spellings still work for one release, hidden from --help, with a
one-line deprecation message naming the new flag. Every command-line Kafka client takes
the same connection settings (TLS and SASL from `--kafka-config`, secrets from the file or
the environment, never from a flag)."""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys

import pytest

from foliowatch import kafka_io
from foliowatch.errors import ConfigError
from foliowatch.shell import cli

# the arguments each subcommand requires, so that one flag can be tried on its own
REQUIRED = {
    "agent": [], "simulate": [], "pipeline": ["--output", "ds"],
    "detect": ["--dataset", "ds"], "verdict": ["--dataset", "ds", "--fleet", "f", "--kernel", "k"],
    "report": ["--dataset", "ds", "--state", "s.json"], "demo": [],
}
KAFKA = ("pipeline", "simulate", "detect")
METRICS = ("pipeline", "detect")
OUTPUT = ("pipeline", "simulate", "report", "demo")
OLD = {"--kafka", "--metrics-port", "--out", "--workdir"}


def parser(name):
    return cli.subcommand_parser(name, importlib.import_module(cli.SUBCOMMANDS[name][0]))


def parse(name, *argv):
    return parser(name).parse_args([*REQUIRED[name], *argv])


def visible_flags(name) -> set:
    return {s for a in parser(name)._actions if a.help != argparse.SUPPRESS for s in a.option_strings}


@pytest.mark.parametrize("name", sorted(set(cli.SUBCOMMANDS) - {"dashboards"}))
def test_every_subcommand_uses_one_spelling_per_concept(name):
    flags = visible_flags(name)
    assert not flags & OLD, f"{name} shows {flags & OLD}"
    if name in KAFKA:
        assert {"--bootstrap", "--kafka-config"} <= flags
        assert parse(name, "--bootstrap", "10.0.0.1:9092,10.0.0.2:9092").bootstrap == \
            "10.0.0.1:9092,10.0.0.2:9092"
    if name in METRICS:
        assert parse(name, "--metrics-addr", "0.0.0.0:9470").metrics_addr == "0.0.0.0:9470"
    if name in OUTPUT:
        assert parser(name).parse_args([*REQUIRED[name], "--output", "out/x"]).output == "out/x"
    # --interval is a sampling interval wherever it exists; the detector polls
    if name == "detect":
        assert "--interval" not in flags and parse(name, "--poll-interval", "5").poll_interval == 5.0
    # no secret on the command line: a flag's value shows in `ps`
    assert not [f for f in flags if "password" in f or "secret" in f]


@pytest.mark.parametrize("name, old, value, dest, new_value", [
    ("detect", "--kafka", "h:1", "bootstrap", "h:1"),
    ("simulate", "--kafka", "h:1", "bootstrap", "h:1"),
    ("detect", "--metrics-port", "9470", "metrics_addr", "127.0.0.1:9470"),
    ("detect", "--interval", "5", "poll_interval", 5.0),
    ("simulate", "--out", "d", "output", "d"),
    ("report", "--out", "d", "output", "d"),
    ("demo", "--workdir", "d", "output", "d"),
])
def test_old_spellings_still_parse_and_name_the_new_flag(name, old, value, dest, new_value, capsys):
    args = parse(name, old, value)
    assert getattr(args, dest) == new_value
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{old} is deprecated" in err[0]
    new = {"bootstrap": "--bootstrap", "metrics_addr": "--metrics-addr",
           "poll_interval": "--poll-interval", "output": "--output"}[dest]
    assert f"use {new}" in err[0]


def test_deprecated_flag_in_a_real_run_prints_one_line_and_works(tmp_path):
    out = tmp_path / "sim"
    p = subprocess.run([sys.executable, "-m", "foliowatch", "simulate", "--scenario", "improvement",
                        "--hosts", "5", "--hours", "0.02", "--seed", "1", "--out", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert p.stderr.strip().splitlines() == [
        "foliowatch simulate: --out is deprecated and will be removed in the next release; "
        "use --output"]
    assert (out / "ground_truth.json").exists() and list(out.glob("samples-*.jsonl"))


def test_kafka_clients_share_tls_and_sasl_settings_with_the_secret_from_the_environment(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    conf = tmp_path / "kafka.toml"
    conf.write_text(f'[kafka]\nbootstrap = ["k1:9093", "k2:9093"]\nsecurity_protocol = "SASL_SSL"\n'
                    f'sasl_mechanism = "SCRAM-SHA-512"\nsasl_username = "detector"\n'
                    f'ssl_cafile = "{ca}"\n')
    env = {"FOLIOWATCH_KAFKA_SASL_PASSWORD": "s3cret"}
    for name, client in (("detect", "foliowatch-detector"), ("pipeline", "foliowatch-pipeline"),
                         ("simulate", "foliowatch-simulator")):
        args = parse(name, "--kafka-config", str(conf))
        s = kafka_io.settings_from_args(args, client_id=client, environ=env)
        kw = kafka_io.producer_kwargs(s)
        assert kw["bootstrap_servers"] == ["k1:9093", "k2:9093"]
        assert (kw["security_protocol"], kw["sasl_mechanism"]) == ("SASL_SSL", "SCRAM-SHA-512")
        assert (kw["sasl_plain_username"], kw["sasl_plain_password"]) == ("detector", "s3cret")
        assert kw["ssl_cafile"] == str(ca) and kw["client_id"] == client
        # --bootstrap overrides the file's servers and keeps its security settings
        s = kafka_io.settings_from_args(parse(name, "--kafka-config", str(conf), "--bootstrap",
                                              "k3:9093"), client_id=client, environ=env)
        assert s.bootstrap == ["k3:9093"] and s.security_protocol == "SASL_SSL"
    # without the password anywhere: refused, naming where each setting came from
    with pytest.raises(ConfigError) as e:
        kafka_io.settings_from_args(parse("detect", "--kafka-config", str(conf)),
                                    client_id="foliowatch-detector", environ={})
    assert f"--kafka-config {conf} [kafka] sasl_password" in str(e.value)
    with pytest.raises(ConfigError, match=r"--bootstrap: expected host:port, got 'kafka'"):
        kafka_io.settings_from_args(parse("simulate", "--bootstrap", "kafka"),
                                    client_id="foliowatch-simulator", environ={})


def test_a_library_error_becomes_exit_2_and_one_line(tmp_path, capsys):
    code = cli.main(["detect", "--dataset", str(tmp_path), "--fdr", "3",
                     "--state", str(tmp_path / "s.json")])
    assert code == 2
    err = capsys.readouterr().err
    assert err == "foliowatch detect: --fdr: expected a rate in (0, 1), got 3.0\n"
    assert not (tmp_path / "s.json").exists()


def test_dashboards_generate_writes_to_output(capsys):
    p = parser("dashboards")
    assert p.parse_args(["generate", "--output", "d"]).output == "d"
    assert p.parse_args(["generate", "--out", "d"]).output == "d"
    assert "--out is deprecated" in capsys.readouterr().err
