"""End to end, real services only: the seed's rollout (a derived scenario: two waves and a
rollback, 300 hosts at 60 s) -> Kafka -> pipeline -> detector /metrics -> Prometheus with
the generated rules -> Alertmanager with the generated routing -> a webhook receiver.

The receiver must get exactly one page for the rollout, naming the arm64 XFS cohort and
the kernel pair, nothing about the x86_64 or ext4 cohorts, and the page must resolve once
the rollback has closed the record. Timers are seconds instead of minutes
(``AlertConfig.fast``); everything else is the committed configuration."""

from __future__ import annotations

import json
import re
import time

import pytest
import yaml

from foliowatch.shell import alerting
from foliowatch.shell.services import Alertmanager
from foliowatch.simulator import load_scenario
from foliowatch.simulator.scenario import SCENARIO_DIR

from stack import FleetStack

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

ARM64 = "6.6.87-101.aarch64", "6.12.40-63.aarch64"


def rollback_scenario(tmp_path):
    """The seed scenario with its rollout moved to hour 5 (less history to play), cut to
    two waves three hours apart (10%, 50%) and rolled back at hour 10."""
    text = (SCENARIO_DIR / "seed-iomap-arm64-xfs.toml").read_text()
    text = text.replace('name = "seed-iomap-arm64-xfs"', 'name = "seed-rollback"')
    text = text.replace("start_h = 10", "start_h = 5")
    text = re.sub(r"waves = \[[^\]]*\]\nwave_interval_h = \d+",
                  "waves = [0.10, 0.50]\nwave_interval_h = 3\nrollback_h = 10", text)
    path = tmp_path / "seed-rollback.toml"
    path.write_text(text)
    return load_scenario(str(path), hosts=300, hours=11.6, interval_s=60, seed=3)


def _wait(what, cond, stack, timeout=600.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stack.check()
        got = cond()
        if got:
            return got
        time.sleep(0.5)
    raise AssertionError(f"{what}: not within {timeout:.0f}s")


@pytest.mark.timeout(1500)   # minutes on an idle 2-core machine; more when it is shared
def test_seed_rollout_pages_once_for_arm64_xfs_and_resolves_after_rollback(kafka, topic, tmp_path):
    sc = rollback_scenario(tmp_path)
    webhook = alerting.WebhookReceiver().start()
    cfg = alerting.AlertConfig().fast(receivers={
        "oncall-page": webhook.url + "/page", "ops-tickets": webhook.url + "/ticket",
        "payments-db-oncall": webhook.url + "/payments-db"})
    rules = tmp_path / "rules.yml"
    rules.write_text(alerting.to_yaml(alerting.rule_groups(cfg)))
    am = Alertmanager(tmp_path / "alertmanager",
                      yaml.safe_dump(alerting.alertmanager_config(cfg))).start()
    stack = FleetStack(tmp_path / "stack", kafka.bootstrap, topic, sc)
    hour = 3600.0

    def regression_notes(path=None):
        return [(p, n) for p, n in webhook.received()
                if (path is None or p == path) and any(
                    a["labels"].get("alertname", "").startswith("KernelRolloutRegression")
                    for a in n["alerts"])]

    try:
        stack.start()
        # the canary wave (10%) and the second wave (50%) are out and fragmented
        stack.play_until(sc.start_ts + 9.5 * hour)
        stack.wait_detector()
        stack.start_prometheus(rule_files=[rules], alertmanager=am.url)
        _wait("a page", lambda: regression_notes("/payments-db"), stack)
        # the rollback (hour 10) and the detector's quiet period after it
        stack.play_until(sc.start_ts + 11.5 * hour)
        stack.wait_detector()
        _wait("the page resolved", lambda: [n for _, n in regression_notes("/payments-db")
                                            if n["status"] == "resolved"], stack)
    finally:
        stack.stop()
        am.stop()
        webhook.stop()
        # what the receiver got, for whoever reads a failure
        (tmp_path / "notifications.json").write_text(json.dumps(webhook.received(), indent=1))

    notes = regression_notes()
    pages = [n for p, n in notes if p == "/payments-db"]
    firing = [n for n in pages if n["status"] == "firing"]
    # one page for the rollout: one group, one firing notification
    assert len(firing) == 1, [alerting.notification_text(n) for n in pages]
    assert len({n["groupKey"] for n in pages}) == 1
    page = firing[0]
    assert page["groupLabels"] == {"fleet": "payments-db", "kernel_from": ARM64[0],
                                   "kernel_to": ARM64[1]}
    assert page["commonLabels"]["severity"] == "page"
    cohorts = {(a["labels"]["arch"], a["labels"]["fs"]) for a in page["alerts"]}
    assert cohorts == {("arm64", "xfs")}, cohorts
    assert any(a["labels"]["page_size"] == "4096" for a in page["alerts"])
    headline = page["alerts"][0]["annotations"]["summary"]
    assert "write throughput" in headline and "canaries vs" in headline, headline
    assert ARM64[1] in headline
    # the pages did not go to the generic on-call receiver: this fleet names its own
    assert not regression_notes("/page")
    # nothing at all about the unaffected cohorts, on any receiver, in any status
    for _, n in notes:
        for a in n["alerts"]:
            assert (a["labels"]["arch"], a["labels"]["fs"]) == ("arm64", "xfs"), a["labels"]
    resolved = [n for n in pages if n["status"] == "resolved"]
    assert resolved and resolved[-1]["groupKey"] == page["groupKey"]
    assert all(a["status"] == "resolved" for a in resolved[-1]["alerts"])
