"""The alerting configuration: the committed rules and Alertmanager files are what
``shell/alerting.py`` generates, Prometheus' and Alertmanager's own tools accept them,
the promtool unit tests pass (each alert fires, stays quiet before its ``for``, resolves),
routing goes by severity and fleet, and a real Alertmanager inhibits "suspected" while
"confirmed" fires for the same cohort, and not for another."""

from __future__ import annotations

import subprocess
import time
from datetime import datetime, timedelta, timezone

import pytest
import yaml

from foliowatch.shell import alerting
from foliowatch.shell.services import Alertmanager

RULES = alerting.RULES_PATH
AM_CONFIG = alerting.ALERTMANAGER_PATH
RULE_TESTS = RULES.parent / "tests" / "foliowatch-alerts.test.yml"
COHORT = {"fleet": "payments-db", "role": "postgres", "arch": "arm64", "page_size": "4096",
          "fs": "xfs", "kernel_from": "6.6.87-101.aarch64", "kernel_to": "6.12.40-63.aarch64"}


def run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120)


def test_committed_files_are_what_the_config_generates():
    cfg = alerting.AlertConfig()
    assert RULES.read_text() == alerting.to_yaml(alerting.rule_groups(cfg))
    assert AM_CONFIG.read_text() == alerting.to_yaml(alerting.alertmanager_config(cfg))
    assert alerting.main(["--check"]) == 0


def test_promtool_checks_the_rules_and_every_alert_has_a_unit_test_and_a_runbook_section():
    p = run("promtool", "check", "rules", str(RULES))
    assert p.returncode == 0, p.stdout + p.stderr
    p = run("promtool", "test", "rules", str(RULE_TESTS))
    assert p.returncode == 0, p.stdout + p.stderr
    p = run("promtool", "check", "config", str(RULES.parent / "prometheus.yml"))
    assert p.returncode == 0, p.stdout + p.stderr
    alerts = {r["alert"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]}
    tested = {t["alertname"] for case in yaml.safe_load(RULE_TESTS.read_text())["tests"]
              for t in case["alert_rule_test"]}
    assert alerts == tested
    runbook = (alerting.REPO / "docs" / "runbook.md").read_text()
    for a in alerts:
        assert f"\n## {a}\n" in runbook, a


def test_rule_unit_tests_fail_when_an_alert_changes(tmp_path):
    """The promtool tests bite: a rules file whose page threshold is off fails them."""
    broken = RULES.read_text().replace('status="confirmed"', 'status="suspected"')
    (tmp_path / "foliowatch-alerts.yml").write_text(broken)
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "t.yml").write_text(RULE_TESTS.read_text())
    p = run("promtool", "test", "rules", str(tmp_path / "tests" / "t.yml"))
    assert p.returncode != 0 and "KernelRolloutRegressionConfirmed" in p.stdout + p.stderr


def test_amtool_accepts_the_config_and_routes_by_severity_and_fleet():
    p = run("amtool", "check-config", str(AM_CONFIG))
    assert p.returncode == 0, p.stdout + p.stderr

    def receiver(**labels):
        p = run("amtool", "config", "routes", "test", f"--config.file={AM_CONFIG}",
                *(f"{k}={v}" for k, v in labels.items()))
        assert p.returncode == 0, p.stderr
        return p.stdout.strip()

    assert receiver(alertname=alerting.CONFIRMED, severity="page", fleet="payments-db") == "payments-db-oncall"
    assert receiver(alertname=alerting.CONFIRMED, severity="page", fleet="web") == "oncall-page"
    assert receiver(alertname=alerting.SUSPECTED, severity="ticket", fleet="payments-db") == "ops-tickets"
    assert receiver(alertname="FoliowatchPipelineLagging", severity="ticket") == "ops-tickets"


def test_alertmanager_groups_one_notification_per_rollout():
    route = alerting.alertmanager_config()["route"]
    rollout = next(r for r in route["routes"] if alerting.CONFIRMED in r["matchers"][0])
    assert rollout["group_by"] == ["fleet", "kernel_from", "kernel_to"]


def _alert(name: str, severity: str, **labels) -> dict:
    now = datetime.now(timezone.utc)
    return {"labels": {"alertname": name, "severity": severity, **labels},
            "annotations": {"summary": name},
            "startsAt": now.isoformat(), "endsAt": (now + timedelta(minutes=10)).isoformat()}


@pytest.fixture
def configured_alertmanager(tmp_path):
    cfg = alerting.AlertConfig().fast()
    am = Alertmanager(tmp_path / "am", yaml.safe_dump(alerting.alertmanager_config(cfg))).start()
    yield am
    am.stop()


def test_real_alertmanager_inhibits_suspected_only_for_the_confirmed_cohort(configured_alertmanager):
    am = configured_alertmanager
    other = {**COHORT, "page_size": "65536"}
    status, _ = am.post_json("/api/v2/alerts", [
        _alert(alerting.CONFIRMED, "page", status="confirmed", **COHORT),
        _alert(alerting.SUSPECTED, "ticket", status="suspected", **COHORT),
        _alert(alerting.SUSPECTED, "ticket", status="suspected", **other)])
    assert status == 200
    deadline = time.monotonic() + 30
    while True:
        alerts = am.get_json("/api/v2/alerts")
        by = {(a["labels"]["alertname"], a["labels"]["page_size"]): a["status"] for a in alerts}
        suspected_same = by.get((alerting.SUSPECTED, "4096"), {})
        if suspected_same.get("inhibitedBy") or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert by[(alerting.CONFIRMED, "4096")]["state"] == "active", by
    assert by[(alerting.SUSPECTED, "4096")]["state"] == "suppressed", by
    assert by[(alerting.SUSPECTED, "4096")]["inhibitedBy"], by
    assert by[(alerting.SUSPECTED, "65536")]["state"] == "active", by


def test_demo_alerting_shows_the_page_its_alertmanager_delivers(tmp_path, capsys):
    """The demo's own Alertmanager (the project's routing, fast timers) delivers a page to
    the demo's webhook receiver, and the demo says so in the operator's words."""
    from foliowatch.shell import demo

    services: list = []
    try:
        webhook, rules, am = demo._start_alerting(tmp_path, services)
        assert "KernelRolloutRegressionConfirmed" in rules.read_text()
        status, _ = am.post_json("/api/v2/alerts", [
            {**_alert(alerting.CONFIRMED, "page", status="confirmed", **COHORT),
             "annotations": {"summary": "Kernel rollout regression confirmed: payments-db "
                                        "arm64 xfs: write throughput 0.76x [0.71, 0.82]"}}])
        assert status == 200
        deadline = time.monotonic() + 30
        while not webhook.received() and time.monotonic() < deadline:
            time.sleep(0.2)
        with demo.Display(plain=True) as disp:
            assert demo._show_alerts(disp, webhook, 0) == 1
    finally:
        for s in services[::-1]:
            s.stop()
    out = capsys.readouterr().out
    assert ("ALERT delivered to payments-db-oncall: FIRING (1 alert): Kernel rollout regression "
            "confirmed: payments-db arm64 xfs: write throughput 0.76x [0.71, 0.82]") in out, out
