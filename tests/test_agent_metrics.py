"""/metrics: what the agent serves, checked by Prometheus' own promtool and scraped by a
real Prometheus."""

from __future__ import annotations

import re
import subprocess
import time
import urllib.request

import pytest

from foliowatch.agent.config import AgentConfig
from foliowatch.agent.exporter import serve
from foliowatch.agent.runner import Agent
from foliowatch.shell.services import free_port

pytestmark = pytest.mark.agent39


@pytest.fixture
def served_agent(tmp_path):
    port = free_port()
    cfg = AgentConfig(state_dir=str(tmp_path / "state"), mounts=["/"], kafka_enabled=False,
                      metrics_listen=f"127.0.0.1:{port}", interval_s=1.0)
    agent = Agent(cfg)
    agent.tick()
    time.sleep(0.05)
    agent.tick()
    server = serve(agent, cfg.metrics_address())
    try:
        yield agent, f"http://127.0.0.1:{port}/metrics"
    finally:
        server.shutdown()
        agent.close()


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.read().decode()


def value(text: str, series: str) -> float:
    m = re.search(r"^" + re.escape(series) + r" (\S+)$", text, re.M)
    assert m, f"{series} not in /metrics"
    return float(m.group(1))


def test_promtool_check_metrics_passes(served_agent):
    _agent, url = served_agent
    text = scrape(url)
    p = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr


def io_some_us() -> int:
    with open("/proc/pressure/io") as f:
        return int(re.search(r"^some .*total=(\d+)", f.read(), re.M).group(1))


def test_kernel_figures_and_health_in_base_units(served_agent):
    agent, url = served_agent
    psi_before = io_some_us()
    text = scrape(url)
    psi_after = io_some_us()
    names = set(re.findall(r"^([a-z_:][a-z0-9_:]*)(?:\{| )", text, re.M))
    ours = {n for n in names if not n.startswith("process_")}
    assert all(n.startswith("foliowatch_agent_") for n in ours), sorted(ours)
    for series in ("foliowatch_agent_vmstat_compact_stall_total",
                   "foliowatch_agent_vmstat_allocstall_normal_total",
                   "foliowatch_agent_vmstat_pgscan_direct_total",
                   "foliowatch_agent_frag_unusable_1m_ratio",
                   "foliowatch_agent_mem_available_bytes",
                   "foliowatch_agent_samples_total", "foliowatch_agent_samples_sent_total",
                   "foliowatch_agent_samples_spooled_total",
                   "foliowatch_agent_samples_dropped_total",
                   "foliowatch_agent_send_errors_total",
                   "foliowatch_agent_spool_records",
                   "foliowatch_agent_collection_duration_seconds",
                   "foliowatch_agent_last_send_error_timestamp_seconds",
                   "process_resident_memory_bytes"):
        value(text, series)
    assert value(text, "foliowatch_agent_samples_spooled_total") == 1.0   # 1st tick: baseline
    assert value(text, "foliowatch_agent_spool_records") == 1.0           # Kafka disabled
    # PSI in seconds, not microseconds
    psi = value(text, 'foliowatch_agent_pressure_stalled_seconds_total{kind="some",resource="io"}')
    assert psi_before / 1e6 <= psi <= psi_after / 1e6
    assert re.search(r'^foliowatch_agent_mount_written_bytes_total\{device="[^"]+",fs="ext4",'
                     r'mount="/"\} \d', text, re.M)
    assert re.search(r'^foliowatch_agent_frag_unusable_ratio\{order="8"\} [0-9.e-]+$', text, re.M)
    assert 'foliowatch_agent_kernel_settings_info{thp_defrag=' in text


def test_metrics_read_the_kernel_on_every_scrape(served_agent):
    _agent, url = served_agent
    a = value(scrape(url), "foliowatch_agent_uptime_seconds")
    time.sleep(1.1)
    b = value(scrape(url), "foliowatch_agent_uptime_seconds")
    assert b >= a + 1.0


def test_metrics_bind_loopback_by_default():
    assert AgentConfig().metrics_address()[0] == "127.0.0.1"


def test_prometheus_scrapes_the_agent(served_agent, prometheus_factory):
    _agent, url = served_agent
    target = url.split("//")[1].split("/")[0]
    prom = prometheus_factory(
        "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: agent\n"
        f"    static_configs:\n      - targets: ['{target}']\n")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        r = prom.query("foliowatch_agent_frag_unusable_1m_ratio")
        if r["data"]["result"]:
            assert 0.0 <= float(r["data"]["result"][0]["value"][1]) <= 1.0
            return
        time.sleep(0.5)
    raise AssertionError("Prometheus never scraped foliowatch_agent_frag_unusable_1m_ratio")


def _wakeups(thread) -> int:
    """Voluntary context switches of ``thread`` so far: how often it slept and woke."""
    with open(f"/proc/self/task/{thread.native_id}/status") as f:
        return int(re.search(r"^voluntary_ctxt_switches:\s+(\d+)", f.read(), re.M).group(1))


def _settled_wakeups(thread) -> int:
    """``_wakeups`` once ``thread`` has gone back to sleep: a scrape's client has its
    answer before the server thread has closed the connection and is asleep again (and
    on a loaded machine each wait for the GIL on the way counts as a switch too). A
    thread that polls (every 0.5 s, as socketserver does by default) never settles."""
    before, deadline = _wakeups(thread), time.monotonic() + 10.0
    while True:
        time.sleep(0.3)
        now = _wakeups(thread)
        if now == before:
            return now
        assert time.monotonic() < deadline, "the serving thread never went to sleep"
        before = now


def test_the_metrics_server_sleeps_between_scrapes(served_agent):
    """Between scrapes the serving thread stays asleep (no periodic polling: it ran on
    every host all the time)."""
    import threading
    _agent, url = served_agent
    scrape(url)
    server_thread = next(t for t in threading.enumerate() if t.name == "foliowatch-metrics")
    before = _settled_wakeups(server_thread)
    time.sleep(2.0)
    assert _wakeups(server_thread) - before <= 1
    scrape(url)
    assert _settled_wakeups(server_thread) > before      # a scrape does wake it


def test_exposition_is_byte_for_byte_prometheus_clients(served_agent):
    """The agent writes /metrics itself (no prometheus-client import on the host); the
    same families through prometheus-client's generate_latest give the same bytes, and
    the process families match its ProcessCollector's names, types and help."""
    from prometheus_client import generate_latest
    from prometheus_client.core import (CollectorRegistry, CounterMetricFamily,
                                        GaugeMetricFamily, InfoMetricFamily)
    from prometheus_client.process_collector import ProcessCollector

    from foliowatch.agent import exposition
    from foliowatch.agent.exporter import AgentCollector
    agent, _url = served_agent
    ours = list(AgentCollector(agent).collect())
    ours.append(exposition.GaugeFamily("x_odd", 'help with \\ and\nnewline',
                                       labels=["v"]))
    ours[-1].add_metric(['quote " back \\ nl \n'], 12345678.9)
    ours.append(exposition.CounterFamily("x_named_total", "strip", labels=[]))
    ours[-1].add_metric([], float("inf"))

    class Theirs:
        def collect(self):
            for f in ours:
                if f.kind == "info":
                    m = InfoMetricFamily(f.name, f.documentation, labels=[])
                    for labels, _v in f.samples:
                        m.add_metric([], labels)
                else:
                    cls = CounterMetricFamily if f.kind == "counter" else GaugeMetricFamily
                    names = sorted({k for labels, _v in f.samples for k in labels})
                    m = cls(f.name, f.documentation, labels=names or f.labels)
                    for labels, v in f.samples:
                        m.add_metric([labels[k] for k in (names or f.labels)], v)
                yield m
    registry = CollectorRegistry(auto_describe=False)
    registry.register(Theirs())
    assert exposition.render(ours) == generate_latest(registry)

    heads = lambda text: [l for l in text.splitlines() if l.startswith("#")]  # noqa: E731
    mine = exposition.render(exposition.process_families()).decode()
    reg = CollectorRegistry()
    ProcessCollector(registry=reg)
    assert heads(mine) == heads(generate_latest(reg).decode())


def test_metrics_served_gzipped_when_asked(served_agent):
    import gzip
    _agent, url = served_agent
    req = urllib.request.Request(url, headers={"Accept-Encoding": "gzip"})
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.headers["Content-Encoding"] == "gzip"
        assert r.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
        assert b"foliowatch_agent_samples_total" in gzip.decompress(r.read())
