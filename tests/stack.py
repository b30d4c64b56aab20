"""A simulated scenario through the real services, for tests that look at what operators
see: simulator -> Kafka -> ``foliowatch pipeline`` -> Parquet -> ``foliowatch detect
--follow`` (its /metrics) -> Prometheus scraping both (with rule files and an
Alertmanager when given).

The fleet is played into Kafka in steps (``play_until``) so a test decides which
simulated time the detector has seen: a rollout, then its rollback. Every process is
started by this module and stopped by PID in ``stop``; a process that dies fails the
test with its log.

    stack = FleetStack(tmp_path, kafka.bootstrap, topic, scenario)
    stack.start()                                  # pipeline
    stack.play_until(t1); stack.wait_pipeline()
    stack.start_detector(); stack.wait_detector()
    prom = stack.start_prometheus(rule_files=[...], alertmanager=am.url)
    ...
    stack.stop()
"""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Dict, Iterator, List, Optional

import numpy as np
import polars as pl

from foliowatch.shell.demo import Processes
from foliowatch.shell.services import Prometheus, create_topics, free_port

REPO = Path(__file__).resolve().parents[1]
RULES_DIR = REPO / "deploy" / "prometheus"


def foliowatch_argv(*args: str) -> List[str]:
    return [sys.executable, "-m", "foliowatch", *args]


def scrape(url: str, timeout: float = 5.0) -> Dict[str, float]:
    """A /metrics page as {'name{labels}': value} (comments dropped)."""
    with urllib.request.urlopen(url, timeout=timeout) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


def metric_sum(metrics: Dict[str, float], name: str) -> float:
    return sum(v for k, v in metrics.items() if k == name or k.startswith(name + "{"))


class FleetStack:
    """One scenario, one Kafka topic, one pipeline, one detector, one Prometheus."""

    def __init__(self, workdir: Path, bootstrap: str, topic: str, scenario,
                 seed: Optional[int] = None, lateness_s: int = 120):
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.bootstrap = bootstrap
        self.topic = topic
        self.scenario = scenario
        self.seed = scenario.seed if seed is None else seed
        self.lateness_s = lateness_s
        self.dataset = self.dir / "dataset"
        self.state = self.dir / "detector-state.json"
        self.ports = {"pipeline": free_port(), "detector": free_port()}
        self.procs = Processes(self.dir)
        self.prometheus: Optional[Prometheus] = None
        self.sent = 0
        self.sim_ts = scenario.start_ts
        self._chunks: Optional[Iterator[pl.DataFrame]] = None
        self._pending: Optional[pl.DataFrame] = None
        self._producer = None

    # ---- processes ------------------------------------------------------------------
    @property
    def pipeline_metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['pipeline']}/metrics"

    @property
    def detector_metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['detector']}/metrics"

    def targets(self) -> Dict[str, str]:
        """Prometheus job -> address, as deploy/prometheus/prometheus.yml names the jobs."""
        return {"foliowatch-pipeline": f"127.0.0.1:{self.ports['pipeline']}",
                "foliowatch-detector": f"127.0.0.1:{self.ports['detector']}"}

    def _start(self, name: str, argv: List[str]) -> subprocess.Popen:
        return self.procs.start(name, argv)

    def check(self) -> None:
        """Fail with the log's tail when a started process has exited."""
        self.procs.check()

    def start(self) -> "FleetStack":
        """Start the pipeline consuming the topic (the detector starts once there is data)."""
        create_topics(self.bootstrap, f"{self.topic}.dlq")
        self._start("pipeline", foliowatch_argv(
            "pipeline", "--output", str(self.dataset), "--bootstrap", self.bootstrap,
            "--topic", self.topic, "--group", f"pipeline-{self.topic}",
            "--dlq-topic", f"{self.topic}.dlq", "--windows", "60",
            "--lateness", str(self.lateness_s),
            "--metrics-addr", f"127.0.0.1:{self.ports['pipeline']}"))
        return self

    def detector_argv(self, interval_s: float = 1.0) -> List[str]:
        return foliowatch_argv("detect", "--dataset", str(self.dataset), "--state", str(self.state),
                               "--follow", "--poll-interval", str(interval_s),
                               *metrics_flag(self.ports["detector"]))

    def start_detector(self, interval_s: float = 1.0) -> None:
        self._start("detector", self.detector_argv(interval_s))

    def start_prometheus(self, rule_files: Optional[List[Path]] = None,
                         alertmanager: Optional[str] = None,
                         extra_targets: Optional[Dict[str, str]] = None,
                         interval: str = "1s") -> Prometheus:
        targets = {**self.targets(), **(extra_targets or {})}
        self.prometheus = Prometheus(self.dir / "prometheus",
                                     prometheus_config(targets, rule_files, alertmanager, interval),
                                     rule_files).start()
        return self.prometheus

    def stop(self) -> None:
        if self._producer is not None:
            self._producer.close(timeout=10)
            self._producer = None
        if self.prometheus is not None:
            self.prometheus.stop()
        self.procs.stop_all()

    # ---- the simulated fleet --------------------------------------------------------
    def play_until(self, ts: float) -> int:
        """Send every simulated record delivered before ``ts`` (simulated Unix seconds);
        returns the number sent by this call."""
        from foliowatch.kafka_io import KafkaSettings, make_producer
        from foliowatch.simulator import simulate_frame, to_wire_json

        if self._producer is None:
            self._producer = make_producer(KafkaSettings(bootstrap=self.bootstrap.split(",")),
                                           batch_size=512 * 1024, linger_ms=50)
            self._chunks = simulate_frame(self.scenario, self.seed)
        failures: list = []
        n = 0
        while True:
            chunk = self._pending
            self._pending = None
            if chunk is None:
                chunk = next(self._chunks, None)
                if chunk is None:
                    break
            cut = int(np.searchsorted(chunk["emit_ts"].to_numpy(), ts, side="left"))
            now, later = chunk[:cut], chunk[cut:]
            for k, v in zip(now["host_id"].to_list(), to_wire_json(now).to_list()):
                self._producer.send(self.topic, key=k.encode(), value=v.encode()) \
                    .add_errback(failures.append)
            n += now.height
            if later.height:
                self._pending = later
                break
        self._producer.flush(timeout=120)
        if failures:
            raise AssertionError(f"{len(failures)} records not acknowledged: {failures[0]!r}")
        self.sent += n
        self.sim_ts = ts
        return n

    # ---- waiting for the services ---------------------------------------------------
    def wait_until(self, what: str, ready, timeout: float):
        """Until ``ready()`` returns True (anything else says what is missing), failing
        with a started process's log if it exits meanwhile."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            self.check()
            try:
                last = ready()
            except OSError as e:        # not listening yet
                last = e
            if last is True:
                return
            time.sleep(0.5)
        raise AssertionError(f"{what} not reached in {timeout:.0f}s (last: {last!r})")

    def wait_pipeline(self, timeout: float = 300.0) -> float:
        """Until the pipeline has read every record sent and written the windows the
        watermark closed; returns the start of its latest 60 s window (Unix s)."""
        def ready():
            m = scrape(self.pipeline_metrics_url)
            got = metric_sum(m, "foliowatch_pipeline_records_in_total")
            lag = metric_sum(m, "foliowatch_pipeline_consumer_lag_records")
            return True if got >= self.sent and lag == 0 else f"{got:.0f}/{self.sent} read, lag {lag:.0f}"
        self.wait_until("pipeline caught up", ready, timeout)
        m = scrape(self.pipeline_metrics_url)
        return m['foliowatch_pipeline_latest_window_start_seconds{window_s="60"}']

    def wait_detector(self, as_of: Optional[float] = None, timeout: float = 300.0) -> Dict[str, float]:
        """Until the detector has evaluated the data up to ``as_of`` (default: the
        pipeline's latest window); returns its /metrics."""
        if as_of is None:
            as_of = self.wait_pipeline()
        if "detector" not in self.procs.children:
            self.start_detector()

        def ready():
            m = scrape(self.detector_metrics_url)
            seen = m.get("foliowatch_detector_evaluated_until_timestamp_seconds", 0.0)
            return True if seen >= as_of else f"evaluated until {seen:.0f}, want {as_of:.0f}"
        self.wait_until("detector evaluation", ready, timeout)
        return scrape(self.detector_metrics_url)


def metrics_flag(port: int) -> List[str]:
    """The detector's /metrics listen flag."""
    return ["--metrics-addr", f"127.0.0.1:{port}"]


def prometheus_config(targets: Dict[str, str], rule_files: Optional[List[Path]] = None,
                      alertmanager: Optional[str] = None, interval: str = "1s") -> str:
    lines = ["global:", f"  scrape_interval: {interval}", f"  evaluation_interval: {interval}"]
    if rule_files:
        lines += ["rule_files:"] + [f"  - '{p}'" for p in rule_files]
    if alertmanager:
        host = alertmanager.split("://", 1)[-1].rstrip("/")
        lines += ["alerting:", "  alertmanagers:", "    - static_configs:",
                  f"        - targets: ['{host}']"]
    lines.append("scrape_configs:")
    for job, addr in targets.items():
        lines += [f"  - job_name: {job}", "    static_configs:", f"      - targets: ['{addr}']"]
    return "\n".join(lines) + "\n"
