"""End to end, real services only, one replay shared by the module's tests (in file
order): the seed's rollout (a derived scenario: two waves and a rollback, 300 hosts at
60 s) -> Kafka -> pipeline -> detector /metrics -> Prometheus with the generated rules,
scraping the pipeline, the detector and a real agent on this host -> Alertmanager with the
generated routing -> a webhook receiver.

- At the regression (hour 9.5): every query of the generated dashboards returns series,
  or the test fails naming the panel; the rollout dashboard names the arm64 XFS cohort
  and the kernel pair; its panels render as a PNG.
- The receiver gets exactly one page for the rollout, naming the arm64 XFS cohort and the
  kernel pair, nothing about the x86_64 or ext4 cohorts.
- The page resolves once the rollback (hour 10) has closed the record.

Timers are seconds instead of minutes (``AlertConfig.fast``); everything else is the
committed configuration. Set FOLIOWATCH_DASHBOARD_PNG=docs/dashboard-seed.png to keep the
picture (the README's)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid

import pytest
import yaml

from foliowatch.dashboards import config, generate, render
from foliowatch.dashboards.queries import Prometheus as PromAPI
from foliowatch.dashboards.queries import concrete, panel_queries
from foliowatch.shell import alerting
from foliowatch.shell.services import Alertmanager, create_topics, free_port
from foliowatch.simulator import load_scenario
from foliowatch.simulator.scenario import SCENARIO_DIR

from stack import FleetStack, scrape

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

ARM64 = "6.6.87-101.aarch64", "6.12.40-63.aarch64"
HOUR = 3600.0


def rollback_scenario(tmp_path):
    """The seed scenario with its rollout moved to hour 5 (less history to play), cut to
    two waves three hours apart (10%, 50%) and rolled back at hour 10."""
    text = (SCENARIO_DIR / "seed-iomap-arm64-xfs.toml").read_text()
    text = text.replace('name = "seed-iomap-arm64-xfs"', 'name = "seed-rollback"')
    text = text.replace("start_h = 10", "start_h = 5")
    text = re.sub(r"waves = \[[^\]]*\]\nwave_interval_h = \d+",
                  "waves = [0.10, 0.50]\nwave_interval_h = 3\nrollback_h = 10", text)
    assert "start_h = 5" in text and "rollback_h = 10" in text
    path = tmp_path / "seed-rollback.toml"
    path.write_text(text)
    return load_scenario(str(path), hosts=300, hours=11.6, interval_s=60, seed=3)


def start_agent(tmp_path, bootstrap: str, topic: str):
    """The real agent on this host: sampling every second, /metrics on a free port."""
    port = free_port()
    cfg = tmp_path / "agent.toml"
    cfg.write_text(f'[agent]\nstate_dir = "{tmp_path / "agent-state"}"\ninterval_s = 1.0\n'
                   'fleet = "lab"\nrole = "ci"\nmounts = ["/"]\n'
                   f'[agent.kafka]\nbootstrap = ["{bootstrap}"]\ntopic = "{topic}"\n'
                   '[agent.metrics]\nenabled = true\n'
                   f'listen = "127.0.0.1:{port}"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("FOLIOWATCH_")}
    with open(tmp_path / "agent.log", "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "foliowatch", "agent", "--config", str(cfg)],
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, start_new_session=True)
    return proc, f"127.0.0.1:{port}"


def stop_agent(proc) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


class Rollout:
    """The shared replay: the services, the webhook's notifications, the scenario."""

    def __init__(self, tmp_path, kafka, topic):
        self.tmp = tmp_path
        self.sc = rollback_scenario(tmp_path)
        self.webhook = alerting.WebhookReceiver().start()
        cfg = alerting.AlertConfig().fast(receivers={
            "oncall-page": self.webhook.url + "/page", "ops-tickets": self.webhook.url + "/ticket",
            "payments-db-oncall": self.webhook.url + "/payments-db"})
        rules = tmp_path / "rules.yml"
        rules.write_text(alerting.to_yaml(alerting.rule_groups(cfg)))
        self.am = Alertmanager(tmp_path / "alertmanager",
                               yaml.safe_dump(alerting.alertmanager_config(cfg))).start()
        self.stack = FleetStack(tmp_path / "stack", kafka.bootstrap, topic, self.sc)
        create_topics(kafka.bootstrap, f"{topic}.agent")      # FleetStack makes {topic}.dlq
        self.agent, self.agent_addr = start_agent(tmp_path, kafka.bootstrap, f"{topic}.agent")
        self.rules = rules

    def play_to_regression(self) -> None:
        self.stack.wait_until("agent /metrics", lambda: "foliowatch_agent_samples_total" in
                              str(scrape(f"http://{self.agent_addr}/metrics")), timeout=120)
        self.stack.start()
        self.prom = self.stack.start_prometheus(rule_files=[self.rules], alertmanager=self.am.url,
                                                extra_targets={"foliowatch-agent": self.agent_addr})
        self.prom_start = time.time()
        # the fleet plays in steps so that Prometheus sees the rollout progress: the canary
        # wave (10%, hour 5) and the second wave (50%, hour 8) out and fragmented
        for h in (6, 7.5, 9.5):
            self.stack.play_until(self.sc.start_ts + h * HOUR)
            self.stack.wait_detector()

    def regression_notes(self, path=None):
        return [(p, n) for p, n in self.webhook.received()
                if (path is None or p == path) and any(
                    a["labels"].get("alertname", "").startswith("KernelRolloutRegression")
                    for a in n["alerts"])]

    def stop(self) -> None:
        try:
            self.stack.stop()
            stop_agent(self.agent)
            self.am.stop()
        finally:
            self.webhook.stop()
            # what the receiver got, for whoever reads a failure
            (self.tmp / "notifications.json").write_text(json.dumps(self.webhook.received(), indent=1))


@pytest.fixture(scope="module")
def rollout(kafka, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("seed-rollout")
    topic = f"test.{uuid.uuid4().hex[:12]}"     # as the `topic` fixture makes them
    create_topics(kafka.bootstrap, topic, partitions=6)
    run = Rollout(tmp, kafka, topic)
    try:
        run.play_to_regression()
        yield run
    finally:
        run.stop()


@pytest.mark.timeout(1500)      # a replay through Kafka, the pipeline and the detector
def test_every_panel_query_returns_series_at_the_regression(rollout):
    api = PromAPI(rollout.prom.url)

    def all_up():
        ups = api.instant("up")
        jobs = {r["metric"]["job"] for r in ups if r["value"][1] == "1"}
        return True if jobs >= {"foliowatch-pipeline", "foliowatch-detector", "foliowatch-agent"} \
            else f"up: {sorted(jobs)}"
    rollout.stack.wait_until("all three targets scraped", all_up, timeout=120)
    time.sleep(6)        # a few more scrapes of the state: rates need two points
    end = time.time()

    empty, ran = [], 0
    for name, dash in generate.dashboards().items():
        for q in panel_queries(dash):
            expr = concrete(q.expr, rate_interval="5s")
            ran += 1
            if not api.instant(expr, at=end):
                empty.append(f"{name} / {q.panel} [{q.ref}]: {expr}")
        # the template variables' label_values queries
        for v in dash["templating"]["list"]:
            inner = v["query"][len("label_values("):-1]
            match, _, label = inner.rpartition(",")
            if not api.label_values(label.strip(), concrete(match.strip())):
                empty.append(f"{name} / variable {v['name']}: {v['query']}")
    assert ran >= 25
    assert not empty, "queries that return nothing:\n" + "\n".join(empty)

    # the rollout dashboard tells the seed's story: the arm64 XFS cohort, the kernel pair
    rows = api.instant(concrete([q for q in panel_queries(generate.dashboards()["kernel-rollout.json"])
                                 if q.panel == "Open regressions"][0].expr), at=end)
    cohorts = {(r["metric"]["arch"], r["metric"]["fs"]) for r in rows}
    assert ("arm64", "xfs") in cohorts and ("x86_64", "ext4") not in cohorts, cohorts
    assert all(r["metric"]["kernel_to"].startswith(ARM64[1]) and r["metric"]["headline"]
               for r in rows)
    # a variable's value narrows the query: x86_64 has no open regression
    selector = config.cohort_selector(kernel_label="kernel_to")
    assert api.instant(concrete(f"foliowatch_regression_info{{{selector}}}", {"arch": "x86_64"}),
                       at=end) == []

    png = render.render(rollout.prom.url, str(rollout.tmp / "rollout.png"),
                        start=rollout.prom_start, end=end)
    assert png.stat().st_size > 50_000
    keep = os.environ.get("FOLIOWATCH_DASHBOARD_PNG")
    if keep:
        shutil.copyfile(png, keep)


@pytest.mark.timeout(900)
def test_the_regression_pages_once_naming_the_arm64_xfs_cohort(rollout):
    rollout.stack.wait_until("a page", lambda: bool(rollout.regression_notes("/payments-db")),
                             timeout=600)
    page = [n for p, n in rollout.regression_notes("/payments-db") if n["status"] == "firing"][0]
    assert page["groupLabels"] == {"fleet": "payments-db", "kernel_from": ARM64[0],
                                   "kernel_to": ARM64[1]}
    assert page["commonLabels"]["severity"] == "page"
    cohorts = {(a["labels"]["arch"], a["labels"]["fs"]) for a in page["alerts"]}
    assert cohorts == {("arm64", "xfs")}, cohorts
    assert any(a["labels"]["page_size"] == "4096" for a in page["alerts"])
    headline = page["alerts"][0]["annotations"]["summary"]
    # the canaries and the baseline hosts counted (one canary is enough when the mechanism
    # evidence is there, as the detector's policy allows)
    assert "write throughput" in headline, headline
    assert re.search(r"\b\d[\d,]* (canary|canaries) vs [\d,]+ baseline hosts\b", headline), headline
    assert ARM64[1] in headline


@pytest.mark.timeout(900)
def test_the_page_resolves_after_the_rollback_and_was_the_only_one(rollout):
    # the rollback (hour 10) and the detector's quiet period after it
    rollout.stack.play_until(rollout.sc.start_ts + 11.5 * HOUR)
    rollout.stack.wait_detector()
    rollout.stack.wait_until("the page resolved", lambda: any(
        n["status"] == "resolved" for _, n in rollout.regression_notes("/payments-db")), timeout=600)
    notes = rollout.regression_notes()
    pages = [n for p, n in notes if p == "/payments-db"]
    firing = [n for n in pages if n["status"] == "firing"]
    # one page for the rollout: one group, one firing notification
    assert len(firing) == 1, [alerting.notification_text(n) for n in pages]
    assert len({n["groupKey"] for n in pages}) == 1
    # the pages did not go to the generic on-call receiver: this fleet names its own
    assert not rollout.regression_notes("/page")
    # nothing at all about the unaffected cohorts, on any receiver, in any status
    for _, n in notes:
        for a in n["alerts"]:
            assert (a["labels"]["arch"], a["labels"]["fs"]) == ("arm64", "xfs"), a["labels"]
    resolved = [n for n in pages if n["status"] == "resolved"]
    assert resolved[-1]["groupKey"] == firing[0]["groupKey"]
    assert all(a["status"] == "resolved" for a in resolved[-1]["alerts"])
