"""``foliowatch demo``: the whole system on one machine.

It starts a local Kafka broker and Prometheus, one real agent on this host, the pipeline
and the detector as separate processes (as they run in production), then plays a
simulated fleet's telemetry — several thousand arm64 and x86_64 hosts on XFS and ext4 —
through Kafka while a new kernel rolls out in waves. It shows live progress, the moment
the regression is detected, the rollout verdict, and where the report is. Every process
it started is stopped by PID on exit, Ctrl-C included.

``--no-kafka`` runs the same path through files (simulator -> Parquet -> pipeline ->
detector replayed window by window) for machines without Java.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Dict, List, Optional

from foliowatch.flags import add_output
from foliowatch.shell.services import KafkaCluster, Prometheus, ServiceError, free_port, stop_pid

DEFAULT_SCENARIO = "demo-rollout"
LOCAL_TOPIC = "foliowatch.samples.this-host"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scenario", default=DEFAULT_SCENARIO,
                   help=f"simulator scenario name or TOML path (default {DEFAULT_SCENARIO}; "
                        "`foliowatch simulate --list` lists them)")
    p.add_argument("--hosts", type=int, default=3000, help="simulated hosts (default 3000)")
    p.add_argument("--interval", type=float, default=60.0,
                   help="simulated agents' sampling interval, seconds (default 60)")
    p.add_argument("--hours", type=float, default=None,
                   help="simulated hours (default: until 6 h after the rollout starts)")
    p.add_argument("--speed", type=float, default=300.0,
                   help="simulated seconds per wall second once the rollout starts; the "
                        "history before it is played as fast as possible (default 300)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: the scenario's)")
    add_output(p, default=None, old=("--workdir",),
               help="where the dataset, state, logs and report go (default out/demo-<time>)")
    p.add_argument("--no-kafka", action="store_true",
                   help="files only (no Java needed): simulate -> files -> pipeline -> detector")
    p.add_argument("--no-agent", action="store_true", help="do not run the real agent on this host")
    p.add_argument("--plain", action="store_true",
                   help="plain log lines instead of the live display (default when not a TTY)")


# --------------------------------------------------------------------------------------
@dataclass
class Processes:
    """Every child process the demo starts, each in its own session, stopped by PID."""

    logdir: Path
    children: Dict[str, subprocess.Popen] = field(default_factory=dict)

    def start(self, name: str, argv: List[str], env: Optional[dict] = None) -> subprocess.Popen:
        log = open(self.logdir / f"{name}.log", "ab")
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env={**os.environ, **(env or {})})
        log.close()
        self.children[name] = proc
        return proc

    def check(self) -> None:
        for name, proc in self.children.items():
            if proc.poll() is not None:
                tail = (self.logdir / f"{name}.log").read_text(errors="replace").splitlines()[-15:]
                raise RuntimeError(f"{name} exited with {proc.returncode}; last lines of "
                                   f"{self.logdir / (name + '.log')}:\n" + "\n".join(tail))

    def stop(self, name: str) -> None:
        proc = self.children.pop(name, None)
        if proc is not None:
            stop_pid(proc.pid)

    def stop_all(self) -> None:
        for name in list(self.children)[::-1]:
            self.stop(name)


def _foliowatch() -> List[str]:
    return [sys.executable, "-m", "foliowatch"]


def _utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, tz=timezone.utc)


def _fmt_sim(ts: float) -> str:
    return _utc(ts).strftime("%a %H:%M")


# --------------------------------------------------------------------------------------
class Display:
    """Live progress (rich) or plain lines."""

    def __init__(self, plain: bool):
        self.plain = plain or not sys.stdout.isatty()
        self.live = None
        self.progress = None
        self.task = None
        self.status: Dict[str, str] = {}
        self._last_plain = 0.0

    def __enter__(self):
        if not self.plain:
            from rich.console import Group
            from rich.live import Live
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                                     TextColumn("{task.percentage:>3.0f}%"), TimeElapsedColumn())
            self.task = self.progress.add_task("simulated fleet", total=1.0)
            self._group = Group
            self.live = Live(self._render(), refresh_per_second=4, transient=False)
            self.live.__enter__()
        return self

    def _render(self):
        from rich.table import Table

        t = Table(show_header=False, box=None, padding=(0, 2))
        for k, v in self.status.items():
            t.add_row(f"[dim]{k}[/dim]", v)
        return self._group(self.progress, t)

    def update(self, fraction: float, status: Dict[str, str]) -> None:
        self.status = status
        if self.plain:
            now = time.monotonic()
            if now - self._last_plain >= 5.0:
                self._last_plain = now
                print("  " + " | ".join(f"{k}: {v}" for k, v in status.items()), flush=True)
            return
        self.progress.update(self.task, completed=min(1.0, fraction))
        self.live.update(self._render())

    def say(self, text: str) -> None:
        if self.live is not None:
            self.live.console.print(text)
        else:
            import re
            print(re.sub(r"\[/?[a-z ]+\]", "", text), flush=True)

    def __exit__(self, *exc):
        if self.live is not None:
            self.live.__exit__(*exc)


# --------------------------------------------------------------------------------------
def _state_records(path: Path) -> List[dict]:
    try:
        return json.loads(path.read_text()).get("records", [])
    except (OSError, ValueError):
        return []


def _truth_summary(truth: List[dict]):
    changes = [t for t in truth if t.get("type") == "change"]
    cohorts = [t for t in truth if t.get("type") == "cohort"]
    rollouts = sorted((t for t in truth if t.get("type") == "rollout"), key=lambda t: t["ts"])
    return changes, cohorts, rollouts


def _wave_at(rollouts: List[dict], ts: float) -> str:
    cur = None
    for r in rollouts:
        if r["ts"] <= ts:
            cur = r
    if cur is None:
        nxt = rollouts[0] if rollouts else None
        return "before rollout" + (f" (starts {_fmt_sim(nxt['ts'])})" if nxt else "")
    if cur.get("action") == "start":
        return (f"wave {cur['wave']}: {cur['wave_fraction']:.0%} of {cur['fleet']} on "
                f"{cur['kernel_to']}")
    return f"{cur.get('action')} {cur['fleet']} {cur.get('kernel_to', '')}"


def _matches(rec: dict, cohort: dict) -> bool:
    return all(str(rec.get(k)) == str(cohort.get(k))
               for k in ("fleet", "arch", "page_size", "fs", "kernel_from", "kernel_to"))


def _judge(records: List[dict], cohorts: List[dict], disp: Display) -> bool:
    """Compare what was detected with the simulator's ground truth. The demo succeeds when
    nothing was flagged where nothing was injected and at least one injected regression
    was found; an injected regression not found yet is reported (a small canary cohort
    may need the next wave: the verdict then says "not enough evidence")."""
    flagged = [r for r in records if r.get("status") in ("confirmed", "suspected")]
    false_alarms, found = 0, 0
    disp.say("[bold]Ground truth vs detection[/bold]")
    for c in cohorts:
        hit = [r for r in flagged if _matches(r, c)]
        expected = c.get("expected") == "regression"
        if expected:
            found += bool(hit)
            mark = "found" if hit else "not yet"
        else:
            false_alarms += bool(hit)
            mark = "FALSE ALARM" if hit else "ok"
        disp.say(f"  {mark:11s} {c['fleet']} {c['arch']} {c['page_size'] // 1024}K {c['fs']} "
                 f"{c['kernel_from']} -> {c['kernel_to']}: injected "
                 f"{'regression' if expected else 'nothing'}, detected "
                 f"{', '.join(r['status'] for r in hit) or 'nothing'}")
    for r in flagged:
        if not any(_matches(r, c) for c in cohorts):
            false_alarms += 1
            disp.say(f"  FALSE ALARM {r['id']}")
    return false_alarms == 0 and found > 0


# --------------------------------------------------------------------------------------
def _prometheus_config(targets: Dict[str, str], rules: Optional[Path] = None,
                       alertmanager: Optional[str] = None) -> str:
    lines = ["global:", "  scrape_interval: 2s", "  evaluation_interval: 2s"]
    if rules is not None:
        lines += ["rule_files:", f"  - '{rules}'"]
    if alertmanager is not None:
        lines += ["alerting:", "  alertmanagers:", "    - static_configs:",
                  f"        - targets: ['{alertmanager.split('://', 1)[-1]}']"]
    lines.append("scrape_configs:")
    for job, addr in targets.items():
        lines += [f"  - job_name: {job}", "    static_configs:", f"      - targets: ['{addr}']"]
    return "\n".join(lines) + "\n"


def _start_alerting(workdir: Path, services: list):
    """The project's alert rules and Alertmanager routing (deploy/), with seconds for
    minutes and the demo's job names, delivering to a webhook receiver of its own.
    Returns (receiver, rules file, Alertmanager)."""
    import yaml

    from foliowatch.shell import alerting
    from foliowatch.shell.services import Alertmanager

    webhook = alerting.WebhookReceiver().start()
    services.append(webhook)
    names = alerting.AlertConfig().receivers
    cfg = alerting.AlertConfig(agent_job="agent", pipeline_job="pipeline", detector_job="detector").fast(
        receivers={name: f"{webhook.url}/{name}" for name in names})
    rules = workdir / "foliowatch-alerts.yml"
    rules.write_text(alerting.to_yaml(alerting.rule_groups(cfg)))
    am = Alertmanager(workdir / "alertmanager", yaml.safe_dump(alerting.alertmanager_config(cfg)))
    services.append(am)
    am.start()
    return webhook, rules, am


def _show_alerts(disp: "Display", webhook, shown: int) -> int:
    """Say each rollout notification the receiver got since ``shown``; returns the count
    seen. Health tickets (a detector behind the accelerated clock) are left to the log."""
    from foliowatch.shell.alerting import notification_text

    got = webhook.received()
    for path, note in got[shown:]:
        if any(a["labels"].get("alertname", "").startswith("KernelRollout") for a in note["alerts"]):
            disp.say(f"[bold magenta]ALERT delivered[/bold magenta] to {path.strip('/')}: "
                     f"{notification_text(note)}")
    return len(got)


def _create_topic(bootstrap: str, name: str) -> None:
    from kafka.admin import KafkaAdminClient, NewTopic

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics([NewTopic(name, num_partitions=1, replication_factor=1)])
    finally:
        admin.close()


def _agent_config(path: Path, bootstrap: Optional[str], port: int, state: Path) -> None:
    # samples leave within seconds (the fleet default batches a minute): the demo shows them
    kafka = (f'[agent.kafka]\nbootstrap = ["{bootstrap}"]\ntopic = "{LOCAL_TOPIC}"\n'
             'latency_budget_s = 4.0\n' if bootstrap
             else "[agent.kafka]\nenabled = false\n")
    path.write_text(
        "[agent]\nfleet = \"demo-local\"\nrole = \"this-host\"\ninterval_s = 2.0\n"
        f"state_dir = \"{state}\"\nmounts = [\"/\"]\n\n{kafka}\n"
        f"[agent.metrics]\nlisten = \"127.0.0.1:{port}\"\n")


def _demo_scenario(args):
    """The scenario as asked, run until ``--hours`` or 6 simulated hours after its first
    rollout; returns (scenario, ground truth, hours)."""
    from foliowatch.simulator import ground_truth, load_scenario

    hours = args.hours
    if hours is None:
        sc0 = load_scenario(args.scenario, hosts=args.hosts, interval_s=args.interval,
                            seed=args.seed)
        _, _, rollouts0 = _truth_summary(ground_truth(sc0))
        first = rollouts0[0]["ts"] if rollouts0 else sc0.start_ts + 6 * 3600
        hours = (first - sc0.start_ts) / 3600.0 + 6.0
    sc = load_scenario(args.scenario, hosts=args.hosts, interval_s=args.interval,
                       hours=hours, seed=args.seed)
    return sc, ground_truth(sc), hours


def _say_plan(args, sc, truth, hours: float, workdir: Path) -> None:
    print(f"foliowatch demo: scenario {args.scenario}, {sc.hosts} simulated hosts every "
          f"{args.interval:g}s, {hours:.1f} simulated hours; workdir {workdir}", flush=True)
    changes, _, _ = _truth_summary(truth)
    for c in changes:
        print(f"  injected: {c['kind']} on {c['fleet']} {c['arch']} {c['page_size'] // 1024}K "
              f"{c['fs']} {c['kernel_from']} -> {c['kernel_to']} ({c['metric']} x{c['effect']})",
              flush=True)


def run(args) -> int:
    workdir = Path(args.output or f"out/demo-{datetime.now():%Y%m%d-%H%M%S}").resolve()
    (workdir / "logs").mkdir(parents=True, exist_ok=True)
    sc, truth, hours = _demo_scenario(args)
    (workdir / "ground_truth.json").write_text(json.dumps(truth, indent=1))
    _, _, rollouts = _truth_summary(truth)
    rollout_start = rollouts[0]["ts"] if rollouts else sc.start_ts
    end_ts = sc.start_ts + hours * 3600.0

    procs = Processes(workdir / "logs")
    services: list = []
    stopping = {"flag": False}

    def on_signal(signum, frame):
        if stopping["flag"]:
            return  # already stopping: a second Ctrl-C must not abort the clean-up
        stopping["flag"] = True
        raise KeyboardInterrupt

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    _say_plan(args, sc, truth, hours, workdir)
    try:
        if args.no_kafka:
            ok = _run_files(args, sc, truth, workdir, procs)
        else:
            ok = _run_kafka(args, sc, truth, workdir, procs, services, rollout_start, end_ts)
        return 0 if ok else 1
    except KeyboardInterrupt:
        print("\nfoliowatch demo: interrupted; stopping everything it started", file=sys.stderr)
        return 130
    except (ServiceError, RuntimeError) as e:
        print(f"foliowatch demo: {e}", file=sys.stderr)
        return 1
    finally:
        stopping["flag"] = True
        procs.stop_all()
        for s in services[::-1]:
            s.stop()
        for s, h in old.items():
            signal.signal(s, h)


def _produce(sc, bootstrap: str, topic: str, seed, speed: float, rollout_start: float,
             progress: dict, stop: threading.Event) -> None:
    """Play the simulated fleet into Kafka: the history before the rollout as fast as
    possible, then `speed` simulated seconds per wall second."""
    from foliowatch.kafka_io import KafkaSettings
    from foliowatch.simulator import simulate_frame
    from foliowatch.simulator.outputs import Pacer, wire_records
    from foliowatch.simulator.producer import make_record_producer

    producer = make_record_producer(KafkaSettings(bootstrap=bootstrap.split(",")), topic)
    try:
        # slices of one simulated minute once the rollout has begun
        pacer = Pacer(rollout_start, speed, step=60.0, stop=stop)
        chunks = simulate_frame(sc, sc.seed if seed is None else seed)
        for keys, values, ts in wire_records(chunks):
            for lo, hi in pacer.slices(ts):
                if stop.is_set():
                    return
                # raises ServiceError (naming the topic) once a delivery has failed
                producer.send(keys[lo:hi], values[lo:hi])
                progress["sent"] += hi - lo
                progress["sim_ts"] = float(ts[hi - 1])
        producer.flush()
    except BaseException as e:  # surfaced by the main loop
        progress["error"] = e
    finally:
        producer.close()
        progress["done"] = True


def _announce(disp: Display, rec: dict, first_canary: Optional[float]) -> None:
    det = datetime.fromisoformat(rec["first_detected_at"].replace("Z", "+00:00"))
    after = ""
    if first_canary is not None:
        mins = (det.timestamp() - first_canary) / 60.0
        after = f", {mins:.0f} simulated minutes after the first canary rebooted"
    from foliowatch.shell.report import format_effect

    others = "; ".join(f"{m['metric']} ({m.get('statistic')}) {format_effect(m)}"
                       for m in rec.get("metrics", [])[:3])
    disp.say(f"[bold red]REGRESSION {rec['status'].upper()}[/bold red] {rec['fleet']}/{rec['role']} "
             f"{rec['arch']} {rec['page_size'] // 1024}K {rec['fs']}: {rec['kernel_from']} -> "
             f"{rec['kernel_to']}: {others}; "
             f"{rec['hosts_new']} new vs {rec['hosts_base']} baseline hosts; detected at "
             f"{_fmt_sim(det.timestamp())}{after}")


def _first_canary(truth) -> Optional[float]:
    rollouts = [t for t in truth if t.get("type") == "rollout" and t.get("action") == "start"]
    return min((r["ts"] for r in rollouts), default=None)


def _finish(truth, workdir: Path, dataset: Path, state: Path, disp: Display) -> bool:
    from foliowatch.shell import report

    _, cohorts, _ = _truth_summary(truth)
    records = _state_records(state)
    ok = _judge(records, cohorts, disp)
    # the rollout gate for every rolled-out kernel of the scenario, as `foliowatch verdict
    # --fleet F --kernel K` decides and prints it, from one evaluation of the dataset
    from foliowatch.detector import verdict
    gates = sorted({(c["fleet"], c["kernel_to"]) for c in cohorts})
    if gates:
        parser = argparse.ArgumentParser(prog="foliowatch verdict")
        verdict.add_arguments(parser)
        args = parser.parse_args(["--dataset", str(dataset), "--state", str(state),
                                  "--fleet", gates[0][0], "--kernel", gates[0][1]])
        analysis, decisions = verdict.decide_gates(args, gates)
        for d in decisions:
            disp.say(f"[bold]verdict[/bold] {d.fleet} {d.kernel}: exit {d.code} = {d.word}")
            for line in verdict.render(d, analysis.as_of, False).splitlines()[:8]:
                disp.say(f"    {line}")
    try:
        page = report.build(dataset, state, workdir / "report")
        disp.say((workdir / "report" / "summary.txt").read_text().rstrip())
        disp.say(f"[bold]report:[/bold] {page}")
    except report.ReportError as e:
        disp.say(f"report: {e}")
        ok = False
    return ok


def _prom_value(prom: Prometheus, query: str) -> Optional[float]:
    """The first value of an instant query (None: no series)."""
    r = prom.query(query)["data"]["result"]
    return float(r[0]["value"][1]) if r else None


def _pipeline_progress(prom: Prometheus):
    """(records consumed, consumer lag) of the fleet's pipeline, from its /metrics."""
    try:
        consumed = _prom_value(prom, 'sum(foliowatch_pipeline_records_in_total{job="pipeline"})')
        lag = _prom_value(prom, 'sum(foliowatch_pipeline_consumer_lag_records{job="pipeline"})')
    except Exception:
        return 0, None
    return int(consumed or 0), None if lag is None else int(lag)


def _this_host(prom: Prometheus) -> str:
    """This host's own figures, read back through Prometheus from the agent's /metrics."""
    try:
        sent = _prom_value(prom, 'sum(foliowatch_agent_samples_sent_total)')
        stall = _prom_value(prom, 'sum(rate(foliowatch_agent_vmstat_compact_stall_total[30s]))')
        frag = _prom_value(prom, 'max(foliowatch_agent_frag_unusable_ratio{order="9"})')
    except Exception as e:  # shown, never fatal: the fleet is the demo's subject
        return f"Prometheus query failed: {e}"
    parts = [f"{sent:.0f} samples sent" if sent is not None else "no samples yet"]
    if stall is not None:
        parts.append(f"compaction stalls {stall:.2f}/s")
    if frag is not None:
        parts.append(f"order-9 free memory unusable {frag:.0%}")
    return ", ".join(parts)


@dataclass
class DemoServices:
    """The services the demo starts for the components, by PID (``shell.services``); each
    is appended to ``run``'s list as it starts, so that it is stopped (in reverse) on any
    exit. A new service (Alertmanager, ...) is started in ``_start_services`` and gets a
    field here."""

    kafka: KafkaCluster
    prometheus: Prometheus
    metrics_ports: Dict[str, int]      # /metrics listen port of each scraped component
    alertmanager: object = None        # shell.services.Alertmanager, the project's routing
    webhook: object = None             # shell.alerting.WebhookReceiver: where pages arrive


@dataclass
class DemoPaths:
    workdir: Path

    @property
    def dataset(self) -> Path:
        return self.workdir / "dataset"

    @property
    def state(self) -> Path:
        return self.workdir / "detector-state.json"


def _start_services(workdir: Path, services: list, with_agent: bool) -> DemoServices:
    kafka = KafkaCluster(workdir / "kafka", brokers=1)
    services.append(kafka)
    print("starting Kafka (KRaft, 1 broker) ...", flush=True)
    kafka.start()
    ports = {"pipeline": free_port(), "detector": free_port()}
    if with_agent:
        ports.update({"agent": free_port(), "pipeline-local": free_port()})
    webhook, rules, am = _start_alerting(workdir, services)
    prom = Prometheus(workdir / "prometheus", _prometheus_config(
        {k: f"127.0.0.1:{v}" for k, v in ports.items()}, rules, am.url), [rules])
    services.append(prom)
    prom.start()
    print(f"Kafka {kafka.bootstrap}; Prometheus {prom.url}; Alertmanager {am.url} "
          f"-> webhook {webhook.url}", flush=True)
    return DemoServices(kafka, prom, ports, am, webhook)


def _start_this_host(workdir: Path, procs: Processes, svc: DemoServices) -> None:
    """This host's agent samples in real time while the simulated fleet runs on its own
    (simulated) clock: mixing both clocks in one stream would make one of them "late"
    against the pipeline's event-time watermark. So the real host gets its own topic,
    pipeline instance and dataset; everything else is the same path."""
    bootstrap = svc.kafka.bootstrap
    _create_topic(bootstrap, LOCAL_TOPIC)
    cfg = workdir / "agent.toml"
    _agent_config(cfg, bootstrap, svc.metrics_ports["agent"], workdir / "agent-state")
    procs.start("agent", _foliowatch() + ["agent", "--config", str(cfg)])
    procs.start("pipeline-local", _foliowatch() + [
        "pipeline", "--output", str(workdir / "dataset-this-host"), "--bootstrap",
        bootstrap, "--topic", LOCAL_TOPIC, "--group", "foliowatch-pipeline-this-host",
        "--metrics-addr", f"127.0.0.1:{svc.metrics_ports['pipeline-local']}"])


def _start_fleet_pipeline(paths: DemoPaths, procs: Processes, svc: DemoServices) -> None:
    procs.start("pipeline", _foliowatch() + [
        "pipeline", "--output", str(paths.dataset), "--bootstrap", svc.kafka.bootstrap,
        "--group", "foliowatch-pipeline-demo",
        "--metrics-addr", f"127.0.0.1:{svc.metrics_ports['pipeline']}", "--lateness", "120"])


def _detect_argv(paths: DemoPaths, svc: DemoServices, follow: bool) -> List[str]:
    argv = _foliowatch() + [
        "detect", "--dataset", str(paths.dataset), "--state", str(paths.state),
        "--bootstrap", svc.kafka.bootstrap,
        "--annotations", str(paths.workdir / "grafana-annotations.json")]
    if follow:
        argv += ["--follow", "--poll-interval", "2",
                 "--metrics-addr", f"127.0.0.1:{svc.metrics_ports['detector']}"]
    return argv


class Announcer:
    """Says each open regression of the detector's state once per status."""

    def __init__(self, disp: Display, state: Path, first_canary: Optional[float]):
        self.disp, self.state, self.first_canary = disp, state, first_canary
        self.announced: set = set()

    def announce_new(self) -> List[dict]:
        """Announce the open regressions not announced yet in their status; returns all
        the open ones."""
        open_ = [r for r in _state_records(self.state)
                 if r["status"] in ("suspected", "confirmed")]
        for r in open_:
            if (r["id"], r["status"]) not in self.announced:
                self.announced.add((r["id"], r["status"]))
                _announce(self.disp, r, self.first_canary)
        return open_


class FleetWatch:
    """The live view of a Kafka demo: what was sent and consumed, the rollout's wave, this
    host's own figures, and each regression announced once per status."""

    def __init__(self, sc, truth, svc: DemoServices, paths: DemoPaths, disp: Display,
                 progress: dict, end_ts: float, with_agent: bool):
        self.sc, self.svc, self.paths, self.disp = sc, svc, paths, disp
        self.progress, self.end_ts, self.with_agent = progress, end_ts, with_agent
        _, _, self.rollouts = _truth_summary(truth)
        self.announcer = Announcer(disp, paths.state, _first_canary(truth))
        self.rate, self._rate_prev = 0.0, (time.monotonic(), 0)
        self._pipe_prev, self.consumed, self.behind = 0.0, 0, None
        self._host_prev, self._host_line = 0.0, "starting"
        self.alerts_shown = 0

    def show_alerts(self) -> None:
        self.alerts_shown = _show_alerts(self.disp, self.svc.webhook, self.alerts_shown)

    def refresh(self) -> None:
        now = time.monotonic()
        if now - self._rate_prev[0] >= 1.0:
            self.rate = (self.progress["sent"] - self._rate_prev[1]) / (now - self._rate_prev[0])
            self._rate_prev = (now, self.progress["sent"])
        if now - self._pipe_prev >= 2.0:
            self._pipe_prev = now
            self.consumed, self.behind = _pipeline_progress(self.svc.prometheus)
        if self.with_agent and now - self._host_prev >= 4.0:
            self._host_prev = now
            self._host_line = _this_host(self.svc.prometheus)
        open_ = self.announcer.announce_new()
        self.show_alerts()
        start, end = self.sc.start_ts, self.end_ts
        sim = min(self.progress["sim_ts"], end)
        self.disp.update((sim - start) / max(1.0, end - start), {
            "simulated time": f"{_fmt_sim(sim)} ({(sim - start) / 3600:.1f} of "
                              f"{(end - start) / 3600:.1f} h)",
            "rollout": _wave_at(self.rollouts, sim),
            "samples": f"{self.progress['sent']:,} sent, {self.rate:,.0f}/s",
            "pipeline": f"{self.consumed:,} consumed, lag "
                        + ("?" if self.behind is None else f"{self.behind:,}") + " records",
            **({"this host (real agent)": self._host_line} if self.with_agent else {}),
            "open regressions": str(len(open_)) + (
                "" if not open_ else " (" + ", ".join(
                    f"{r['arch']} {r['fs']} {r['kernel_to']} {r['status']}" for r in open_) + ")"),
        })

    def caught_up(self) -> bool:
        return (self.progress["done"] and self.behind == 0
                and self.consumed >= self.progress["sent"])


def _play_fleet_until_caught_up(watch: FleetWatch, procs: Processes, detect_follow: List[str]
                                ) -> None:
    """Wait while the fleet is played, starting the detector once the dataset has data,
    until the pipeline has consumed everything and the detector has had a few cycles on
    the complete data."""
    idle_since = None
    host_windows = watch.paths.dataset / "level=host" / "window_s=60"
    while True:
        time.sleep(0.5)
        procs.check()
        if "detector" not in procs.children and any(host_windows.rglob("*.parquet")):
            procs.start("detector", detect_follow)
        if "error" in watch.progress:
            raise RuntimeError(f"simulated fleet: {watch.progress['error']}")
        watch.refresh()
        if watch.caught_up():
            idle_since = idle_since or time.monotonic()
            if time.monotonic() - idle_since >= 8.0:
                return


def _await_page(watch: FleetWatch, timeout_s: float = 20.0) -> None:
    """A confirmed regression's page is on its way (rule evaluation, group_wait): let it
    arrive before the detector stops."""
    deadline = time.monotonic() + timeout_s
    while (any(r["status"] == "confirmed" for r in _state_records(watch.paths.state))
           and not any(p != "/ops-tickets" for p, _ in watch.svc.webhook.received())
           and time.monotonic() < deadline):
        time.sleep(0.5)
    watch.show_alerts()


def _say_targets(disp: Display, prom: Prometheus) -> None:
    up = prom.query("up")["data"]["result"]
    disp.say(f"Prometheus {prom.url}: {sum(1 for r in up if r['value'][1] == '1')} of "
             f"{len(up)} targets up ({', '.join(sorted(r['metric']['job'] for r in up))})")


def _run_kafka(args, sc, truth, workdir: Path, procs: Processes, services: list,
               rollout_start: float, end_ts: float) -> bool:
    from foliowatch.kafka_io import TOPIC_SAMPLES

    paths = DemoPaths(workdir)
    with_agent = not args.no_agent
    svc = _start_services(workdir, services, with_agent)
    if with_agent:
        _start_this_host(workdir, procs, svc)
    _start_fleet_pipeline(paths, procs, svc)
    progress = {"sent": 0, "sim_ts": sc.start_ts, "done": False}
    stop = threading.Event()
    producer = threading.Thread(target=_produce, daemon=True,
                                args=(sc, svc.kafka.bootstrap, TOPIC_SAMPLES, args.seed,
                                      args.speed, rollout_start, progress, stop))
    try:
        with Display(args.plain) as disp:
            watch = FleetWatch(sc, truth, svc, paths, disp, progress, end_ts, with_agent)
            producer.start()
            _play_fleet_until_caught_up(watch, procs, _detect_argv(paths, svc, follow=True))
            disp.say(f"simulated fleet played: {progress['sent']:,} samples; pipeline caught up")
            _say_targets(disp, svc.prometheus)
            _await_page(watch)
            for name in ("detector", "pipeline", "agent", "pipeline-local"):
                procs.stop(name)
            # one last evaluation on the complete dataset, so the result does not depend on
            # where the follow loop happened to be when it was stopped
            subprocess.run(_detect_argv(paths, svc, follow=False), capture_output=True, text=True)
            watch.announcer.announce_new()
            return _finish(truth, workdir, paths.dataset, paths.state, disp)
    finally:
        stop.set()


def _run_files(args, sc, truth, workdir: Path, procs: Processes) -> bool:
    """Files only: simulate to Parquet, run the pipeline over them, then replay the
    detector window by window so that the moment of detection is what it would be live."""
    from foliowatch.simulator import write_files

    data, dataset, state = workdir / "samples", workdir / "dataset", workdir / "detector-state.json"
    with Display(True) as disp:
        disp.say("simulating the fleet to Parquet ...")
        paths = write_files(sc, data, seed=args.seed, fmt="parquet")
        inputs = [str(p) for p in paths if str(p).endswith(".parquet")]
        if not args.no_agent:
            disp.say("sampling this host with the real agent (5 samples) ...")
            p = subprocess.run(_foliowatch() + ["agent", "--once", "--stdout", "--interval", "1"],
                               capture_output=True, text=True)
            if p.returncode == 0:
                (data / "this-host.jsonl").write_text(p.stdout)
                inputs.append(str(data / "this-host.jsonl"))
        disp.say("running the pipeline over the files ...")
        p = subprocess.run(_foliowatch() + ["pipeline", "--from-files", *inputs, "--output",
                                            str(dataset)], capture_output=True, text=True)
        if p.returncode != 0:
            raise RuntimeError(f"pipeline failed: {p.stderr[-2000:]}")
        disp.say(p.stdout.strip().splitlines()[-1] if p.stdout.strip() else "pipeline done")
        first_canary = _first_canary(truth)
        step = 300.0
        t = (first_canary or sc.start_ts) - step
        end = sc.start_ts + sc.hours * 3600.0
        end = max(end, t + step)
        announcer = Announcer(disp, state, first_canary)
        from foliowatch.shell.cli import main as cli
        import contextlib
        import io
        while t <= end:
            with contextlib.redirect_stdout(io.StringIO()):
                cli(["detect", "--dataset", str(dataset), "--state", str(state),
                     "--as-of", _utc(t).isoformat(), "--json"])
            announcer.announce_new()
            t += step
        return _finish(truth, workdir, dataset, state, disp)
