"""Every query of the generated dashboards runs against a real Prometheus that scraped
the real pipeline, detector and an agent while the seed scenario (arm64 XFS regression
on 6.12) played through Kafka; each returns series, or the test fails naming the panel.
The same run renders the kernel rollout dashboard's panels as a PNG.

Set FOLIOWATCH_DASHBOARD_PNG=docs/dashboard-seed.png to keep the picture (the README's)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

from foliowatch.dashboards import config, generate, render
from foliowatch.dashboards.queries import Prometheus as PromAPI
from foliowatch.dashboards.queries import concrete, panel_queries
from foliowatch.shell.services import create_topics, free_port
from foliowatch.simulator.scenario import SCENARIO_DIR, load_scenario
from stack import FleetStack, scrape

HOURS = 12
SEED_TOML = (SCENARIO_DIR / "seed-iomap-arm64-xfs.toml").read_text()


def _seed_scenario(tmp_path):
    """The seed scenario with its rollout brought forward (10% of hosts at 3 h, 50% at
    6 h) so that a 12-hour replay holds a confirmed regression: fewer records to play."""
    text = SEED_TOML.replace("start_h = 10", "start_h = 3")
    text = re.sub(r"waves = \[[^\]]*\]\nwave_interval_h = \d+", "waves = [0.10, 0.50]\nwave_interval_h = 3", text)
    assert "start_h = 3" in text and "wave_interval_h = 3" in text
    path = tmp_path / "seed-early-rollout.toml"
    path.write_text(text)
    return load_scenario(path, hosts=200, hours=HOURS, interval_s=60, seed=7)


def _start_agent(tmp_path, bootstrap: str, topic: str):
    """The real agent on this host: sampling every second, /metrics on a free port."""
    port = free_port()
    cfg = tmp_path / "agent.toml"
    cfg.write_text(f'[agent]\nstate_dir = "{tmp_path / "agent-state"}"\ninterval_s = 1.0\n'
                   'fleet = "lab"\nrole = "ci"\nmounts = ["/"]\n'
                   f'[agent.kafka]\nbootstrap = ["{bootstrap}"]\ntopic = "{topic}"\n'
                   '[agent.metrics]\nenabled = true\n'
                   f'listen = "127.0.0.1:{port}"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("FOLIOWATCH_")}
    log = open(tmp_path / "agent.log", "ab")
    proc = subprocess.Popen([sys.executable, "-m", "foliowatch", "agent", "--config", str(cfg)],
                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            env=env, start_new_session=True)
    log.close()
    return proc, f"127.0.0.1:{port}"



def _wait(what, ready, timeout=120.0):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = ready()
        except OSError as e:
            last = e
        if last is True:
            return
        time.sleep(0.5)
    raise AssertionError(f"{what} not reached in {timeout:.0f}s (last: {last!r})")


@pytest.mark.kafka
@pytest.mark.slow
@pytest.mark.timeout(1500)      # a replay through Kafka, the pipeline and the detector
def test_every_panel_query_returns_series_after_the_seed_scenario(kafka, topic, tmp_path):
    scenario = _seed_scenario(tmp_path)
    stack = FleetStack(tmp_path / "stack", kafka.bootstrap, topic, scenario)
    create_topics(kafka.bootstrap, f"{topic}.agent")      # FleetStack makes {topic}.dlq
    agent, agent_addr = _start_agent(tmp_path, kafka.bootstrap, f"{topic}.agent")
    try:
        _wait("agent /metrics", lambda: "foliowatch_agent_samples_total" in
              str(scrape(f"http://{agent_addr}/metrics")))
        stack.start()
        prom = stack.start_prometheus(extra_targets={"foliowatch-agent": agent_addr})
        prom_start = time.time()
        # the fleet plays in steps so that Prometheus sees the rollout progress
        for h in (3, 5, 7, 9, 11, 12):
            stack.play_until(scenario.start_ts + h * 3600)
            stack.wait_detector()
        api = PromAPI(prom.url)

        def all_up():
            ups = api.instant("up")
            jobs = {r["metric"]["job"] for r in ups if r["value"][1] == "1"}
            return True if jobs >= {"foliowatch-pipeline", "foliowatch-detector", "foliowatch-agent"} \
                else f"up: {sorted(jobs)}"
        _wait("all three targets scraped", all_up)
        time.sleep(6)        # a few more scrapes of the final state: rates need two points
        end = time.time()

        empty, ran = [], 0
        for name, dash in generate.dashboards().items():
            for q in panel_queries(dash):
                expr = concrete(q.expr, rate_interval="5s")
                rows = api.instant(expr, at=end)
                ran += 1
                if not rows:
                    empty.append(f"{name} / {q.panel} [{q.ref}]: {expr}")
            # the template variables' label_values queries
            for v in dash["templating"]["list"]:
                inner = v["query"][len("label_values("):-1]
                match, _, label = inner.rpartition(",")
                values = api.label_values(label.strip(), concrete(match.strip()))
                if not values:
                    empty.append(f"{name} / variable {v['name']}: {v['query']}")
        assert ran >= 25
        assert not empty, "queries that return nothing:\n" + "\n".join(empty)

        # the rollout dashboard tells the seed's story: the arm64 XFS cohort, the kernel pair
        rows = api.instant(concrete([q for q in panel_queries(generate.dashboards()["kernel-rollout.json"])
                                     if q.panel == "Open regressions"][0].expr), at=end)
        cohorts = {(r["metric"]["arch"], r["metric"]["fs"]) for r in rows}
        assert ("arm64", "xfs") in cohorts and ("x86_64", "ext4") not in cohorts, cohorts
        assert all(r["metric"]["kernel_to"].startswith("6.12.40-63") and r["metric"]["headline"]
                   for r in rows)
        # a variable's value narrows the query: x86_64 has no open regression
        selector = config.cohort_selector(kernel_label="kernel_to")
        x86 = api.instant(concrete(f"foliowatch_regression_info{{{selector}}}", {"arch": "x86_64"}),
                          at=end)
        assert x86 == []

        png = render.render(prom.url, str(tmp_path / "rollout.png"), start=prom_start, end=end)
        assert png.stat().st_size > 50_000
        keep = os.environ.get("FOLIOWATCH_DASHBOARD_PNG")
        if keep:
            shutil.copyfile(png, keep)
    finally:
        stack.stop()
        agent.send_signal(signal.SIGTERM)
        try:
            agent.wait(30)
        except subprocess.TimeoutExpired:
            agent.kill()
            agent.wait(10)
