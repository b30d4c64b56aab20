"""Alerting as code: the Prometheus alerting rules (``deploy/prometheus/foliowatch-alerts.yml``)
and the Alertmanager configuration (``deploy/alertmanager/alertmanager.yml``) generated
from one ``AlertConfig``, so that every threshold, ``for`` duration and grouping timer is
set in one place (the shape of node-mixin's ``config.libsonnet``).

    python -m foliowatch.shell.alerting            # rewrite both files from the defaults
    python -m foliowatch.shell.alerting --check    # exit 1 if a committed file differs

Tests and the demo call ``rule_groups``/``alertmanager_config`` with short timers and
their own receivers. Rules select metrics by the names the agent, pipeline and detector
export (``foliowatch_agent_*``, ``foliowatch_pipeline_*``, ``foliowatch_regression_*``,
``foliowatch_detector_*``) and ``up`` by the job names of ``deploy/prometheus/prometheus.yml``.
"""

from __future__ import annotations

import argparse
import sys
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Dict, List, Optional

from foliowatch.dashboards.config import Thresholds

# Thresholds that a dashboard panel shows and an alert fires on are defined once, in the
# dashboards' config; the alerts read them from there.
_SHARED = Thresholds()

REPO = Path(__file__).resolve().parents[1]
RULES_PATH = REPO / "deploy" / "prometheus" / "foliowatch-alerts.yml"
ALERTMANAGER_PATH = REPO / "deploy" / "alertmanager" / "alertmanager.yml"

# The labels that name one regression's cohort, as the detector exports them.
COHORT = ["fleet", "role", "arch", "page_size", "fs", "kernel_from", "kernel_to"]
# One page per rollout: every cohort of a fleet's kernel change in one notification.
ROLLOUT = ["fleet", "kernel_from", "kernel_to"]
CONFIRMED, SUSPECTED = "KernelRolloutRegressionConfirmed", "KernelRolloutRegressionSuspected"


@dataclass(frozen=True)
class AlertConfig:
    """Every knob of the alerts. Durations are Prometheus durations."""

    runbook_url: str = "https://github.com/foliowatch/foliowatch/blob/main/docs/runbook.md"
    # Prometheus job names (deploy/prometheus/prometheus.yml)
    agent_job: str = "foliowatch-agent"
    pipeline_job: str = "foliowatch-pipeline"
    detector_job: str = "foliowatch-detector"
    # regressions: the detector already waits for joint evidence over many windows;
    # `for` only rides out a scrape that fails halfway through a detector restart
    confirmed_for: str = "2m"
    suspected_for: str = "10m"
    # the pipeline is behind when this many records wait, for this long
    pipeline_lag_records: int = int(_SHARED.lag_bad)
    pipeline_lag_for: str = "10m"
    # dead letters: share of records read, over the window, with a floor in records/s so
    # that a quiet test fleet's two bad records do not page anyone
    dlq_share: float = 0.01
    dlq_min_per_s: float = 1.0
    dlq_window: str = "10m"
    dlq_for: str = "5m"
    # an agent is silent after this many sampling intervals without a record
    agent_interval_s: float = _SHARED.agent_interval_s
    agent_silent_intervals: int = _SHARED.agent_silent_intervals
    agent_silent_for: str = "5m"
    # a fleet is missing hosts when fewer report than its maximum over the last hour by
    # this share, for longer than a rolling reboot wave keeps hosts down
    fleet_missing_share: float = 0.10
    fleet_missing_for: str = "30m"
    # the detector: last evaluation (wall clock) and how far its data trails the pipeline's
    detector_stale_s: float = _SHARED.detector_stale_bad_s
    detector_behind_s: float = 1800.0
    detector_for: str = "5m"
    down_for: str = "5m"
    # Alertmanager: one notification per rollout, sent after group_wait, updated at most
    # every group_interval, repeated every repeat_interval while it fires
    group_wait: str = "30s"
    group_interval: str = "5m"
    repeat_interval: str = "4h"
    # receivers: name -> webhook URL; pages of a fleet go to its own receiver when named
    page_receiver: str = "oncall-page"
    ticket_receiver: str = "ops-tickets"
    fleet_page_receivers: Dict[str, str] = field(
        default_factory=lambda: {"payments-db": "payments-db-oncall"})
    receivers: Dict[str, str] = field(default_factory=lambda: {
        "oncall-page": "http://alert-receiver.example.internal:9095/page",
        "ops-tickets": "http://alert-receiver.example.internal:9095/ticket",
        "payments-db-oncall": "http://alert-receiver.example.internal:9095/payments-db",
    })

    def runbook(self, alert: str) -> str:
        return f"{self.runbook_url}#{alert.lower()}"

    def fast(self, **changes) -> "AlertConfig":
        """Seconds instead of minutes, for tests and the demo."""
        quick = dict(confirmed_for="0s", suspected_for="0s", pipeline_lag_for="0s",
                     dlq_for="0s", agent_silent_for="0s", fleet_missing_for="0s",
                     detector_for="0s", down_for="0s", group_wait="2s",
                     group_interval="5s", repeat_interval="24h")
        return replace(self, **{**quick, **changes})


def _cohort_text() -> str:
    return ("{{ $labels.fleet }}/{{ $labels.role }} {{ $labels.arch }} "
            "{{ $labels.page_size }}-byte pages {{ $labels.fs }}: "
            "{{ $labels.kernel_from }} -> {{ $labels.kernel_to }}")


def _headline_query() -> str:
    # The headline is read from foliowatch_regression_info at notification time instead
    # of being an alert label: its numbers move with every evaluation, and a label that
    # changes makes a new alert (the old one "resolves") each time.
    sel = ",".join(f'{k}="%s"' for k in COHORT)
    args = " ".join(f"$labels.{k}" for k in COHORT)
    return ('{{ with printf `foliowatch_regression_info{' + sel + '}` ' + args +
            ' | query }}{{ range . }}{{ .Labels.headline }}{{ end }}'
            '{{ else }}(headline not exported){{ end }}')


def rule_groups(cfg: AlertConfig = AlertConfig()) -> dict:
    c = cfg
    regression = []
    for name, status, severity, for_, what in (
            (CONFIRMED, "confirmed", "page", c.confirmed_for,
             "Stop the rollout: the new kernel is slower on this cohort (joint evidence: "
             "throughput and compaction/reclaim)."),
            (SUSPECTED, "suspected", "ticket", c.suspected_for,
             "Watch the rollout: one kind of evidence so far, or too few comparable hosts.")):
        regression.append({
            "alert": name,
            "expr": f'max without (instance, job) (foliowatch_regression_open{{status="{status}"}}) == 1',
            "for": for_,
            "labels": {"severity": severity},
            "annotations": {
                "summary": (f"Kernel rollout regression {status}: " + _cohort_text() + ": "
                            + _headline_query()),
                "headline": _headline_query(),
                "description": (what + " `foliowatch verdict --fleet {{ $labels.fleet }} --kernel "
                                  "{{ $labels.kernel_to }}` gives the gate's answer."),
                "runbook_url": c.runbook(name),
            },
        })
    dlq_rate = f"sum by (job, instance) (rate(foliowatch_pipeline_records_dlq_total[{c.dlq_window}]))"
    in_rate = f"sum by (job, instance) (rate(foliowatch_pipeline_records_in_total[{c.dlq_window}]))"
    hosts = 'sum by (fleet) (foliowatch_pipeline_cohort_hosts{window_s="60"})'
    health = [
        {"alert": "FoliowatchPipelineLagging",
         "expr": f"sum by (job, instance, topic) (foliowatch_pipeline_consumer_lag_records) > {c.pipeline_lag_records}",
         "for": c.pipeline_lag_for,
         "labels": {"severity": "ticket"},
         "annotations": {
             "summary": "foliowatch pipeline {{ $labels.instance }} is {{ $value | humanize }} records behind on {{ $labels.topic }}",
             "description": (f"More than {c.pipeline_lag_records:,} records wait in Kafka for "
                             f"{c.pipeline_lag_for}: regressions are found late. Add pipeline "
                             "instances (up to the topic's partitions) or look for a slow sink."),
             "runbook_url": c.runbook("FoliowatchPipelineLagging")}},
        {"alert": "FoliowatchDeadLettersSpiking",
         "expr": f"({dlq_rate} / {in_rate} > {c.dlq_share}) and ({dlq_rate} > {c.dlq_min_per_s})",
         "for": c.dlq_for,
         "labels": {"severity": "ticket"},
         "annotations": {
             "summary": "foliowatch pipeline {{ $labels.instance }}: {{ $value | humanizePercentage }} of records dead-lettered",
             "description": (f"More than {c.dlq_share:.0%} of the records read over {c.dlq_window} "
                             "went to foliowatch.samples.dlq. foliowatch_pipeline_records_dlq_total"
                             " by reason says which field; an agent or simulator release is the "
                             "usual cause."),
             "runbook_url": c.runbook("FoliowatchDeadLettersSpiking")}},
        {"alert": "FoliowatchPipelineDown",
         "expr": f'up{{job="{c.pipeline_job}"}} == 0',
         "for": c.down_for,
         "labels": {"severity": "ticket"},
         "annotations": {
             "summary": "foliowatch pipeline {{ $labels.instance }} is not scraped",
             "description": "Prometheus cannot scrape the pipeline: no data reaches the detector.",
             "runbook_url": c.runbook("FoliowatchPipelineDown")}},
        {"alert": "FoliowatchAgentSilent",
         "expr": (f"(time() - foliowatch_agent_last_sample_timestamp_seconds > "
                  f"{c.agent_silent_intervals * c.agent_interval_s:g}) or "
                  f'(up{{job="{c.agent_job}"}} == 0)'),
         "for": c.agent_silent_for,
         "labels": {"severity": "ticket"},
         "annotations": {
             "summary": "foliowatch agent {{ $labels.instance }} silent",
             "description": (f"No record for more than {c.agent_silent_intervals} sampling "
                             f"intervals ({c.agent_silent_intervals * c.agent_interval_s:g} s), or "
                             "its /metrics is unreachable."),
             "runbook_url": c.runbook("FoliowatchAgentSilent")}},
        {"alert": "FoliowatchFleetHostsMissing",
         "expr": f"{hosts} < {1 - c.fleet_missing_share:g} * max_over_time({hosts}[1h:1m])",
         "for": c.fleet_missing_for,
         "labels": {"severity": "ticket"},
         "annotations": {
             "summary": "fleet {{ $labels.fleet }}: only {{ $value | humanize }} hosts report",
             "description": (f"At least {c.fleet_missing_share:.0%} fewer hosts report than in "
                             f"the last hour, for {c.fleet_missing_for}: agents silent (spool "
                             "full, Kafka unreachable, agent stopped) — a regression on those "
                             "hosts would not be seen."),
             "runbook_url": c.runbook("FoliowatchFleetHostsMissing")}},
        {"alert": "FoliowatchDetectorDown",
         "expr": f'up{{job="{c.detector_job}"}} == 0 or absent(up{{job="{c.detector_job}"}})',
         "for": c.down_for,
         "labels": {"severity": "ticket"},
         "annotations": {
             "summary": "foliowatch detector is not running",
             "description": ("Prometheus cannot scrape the detector: no regression is found or "
                             "resolved, and rollout gates only see the last state."),
             "runbook_url": c.runbook("FoliowatchDetectorDown")}},
        {"alert": "FoliowatchDetectorStale",
         "expr": (f"(time() - foliowatch_detector_last_run_timestamp_seconds > {c.detector_stale_s:g})"
                  f' or (max(foliowatch_pipeline_latest_window_start_seconds{{window_s="60"}})'
                  f" - max(foliowatch_detector_evaluated_until_timestamp_seconds)"
                  f" > {c.detector_behind_s:g})"),
         "for": c.detector_for,
         "labels": {"severity": "ticket"},
         "annotations": {
             "summary": "foliowatch detector has not evaluated recent data",
             "description": (f"The last evaluation is older than {c.detector_stale_s:g} s, or the "
                             f"data it saw trails the pipeline's newest window by more than "
                             f"{c.detector_behind_s:g} s: evaluations are failing or too slow."),
             "runbook_url": c.runbook("FoliowatchDetectorStale")}},
    ]
    return {"groups": [{"name": "foliowatch-kernel-rollouts", "rules": regression},
                       {"name": "foliowatch-health", "rules": health}]}


def alertmanager_config(cfg: AlertConfig = AlertConfig()) -> dict:
    c = cfg
    rollout_routes = [{"matchers": ['severity="page"', f'fleet="{fleet}"'], "receiver": rx}
                      for fleet, rx in sorted(c.fleet_page_receivers.items())]
    rollout_routes += [{"matchers": ['severity="page"'], "receiver": c.page_receiver},
                       {"matchers": ['severity="ticket"'], "receiver": c.ticket_receiver}]
    return {
        "route": {
            "receiver": c.ticket_receiver,
            "group_by": ["alertname", "fleet"],
            "group_wait": c.group_wait,
            "group_interval": c.group_interval,
            "repeat_interval": c.repeat_interval,
            "routes": [
                # one notification per rollout: every cohort and status of a fleet's
                # kernel change together, never one per host or per metric
                {"matchers": [f'alertname=~"{CONFIRMED}|{SUSPECTED}"'],
                 "group_by": ROLLOUT, "routes": rollout_routes},
                {"matchers": ['severity="page"'], "receiver": c.page_receiver},
            ],
        },
        "inhibit_rules": [
            {"source_matchers": [f'alertname="{CONFIRMED}"'],
             "target_matchers": [f'alertname="{SUSPECTED}"'],
             "equal": COHORT},
            {"source_matchers": ['alertname="FoliowatchDetectorDown"'],
             "target_matchers": ['alertname="FoliowatchDetectorStale"'],
             "equal": []},
        ],
        "receivers": [{"name": name, "webhook_configs": [{"url": url, "send_resolved": True}]}
                      for name, url in sorted(c.receivers.items())],
    }


class WebhookReceiver:
    """An Alertmanager webhook receiver on 127.0.0.1 (stdlib http.server in a thread):
    keeps every notification as (path, payload) and calls ``on_notification`` with
    each. The demo shows pages with it; tests count them."""

    def __init__(self, on_notification=None):
        self.notifications: List[tuple] = []
        self.on_notification = on_notification
        self._server = None
        self._thread = None
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "WebhookReceiver":
        import json
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    payload = json.loads(body)
                except ValueError:
                    self.send_response(400)
                    self.end_headers()
                    return
                with owner._lock:
                    owner.notifications.append((self.path, payload))
                if owner.on_notification is not None:
                    owner.on_notification(self.path, payload)
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):       # quiet: the caller shows what matters
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def received(self) -> List[tuple]:
        with self._lock:
            return list(self.notifications)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def notification_text(payload: dict) -> str:
    """One line per notification: status, how many alerts, and each alert's summary."""
    alerts = payload.get("alerts") or []
    head = f"{payload.get('status', '?').upper()} ({len(alerts)} alert{'s' if len(alerts) != 1 else ''})"
    return head + ": " + "; ".join(a.get("annotations", {}).get("summary", a.get("labels", {})
                                                                  .get("alertname", "?"))
                                   for a in alerts)


HEADER = ("# Generated by `python -m foliowatch.shell.alerting` from shell/alerting.py "
          "(AlertConfig):\n# change thresholds there and regenerate; "
          "tests/test_alerting.py checks this file.\n")


def to_yaml(doc: dict) -> str:
    import yaml
    return HEADER + yaml.safe_dump(doc, sort_keys=False, width=100, allow_unicode=True)


def write(cfg: AlertConfig, rules_path: Path, alertmanager_path: Path) -> None:
    for path, doc in ((rules_path, rule_groups(cfg)), (alertmanager_path, alertmanager_config(cfg))):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(to_yaml(doc))


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="exit 1 if a committed file differs")
    args = p.parse_args(argv)
    cfg = AlertConfig()
    if args.check:
        stale = [str(path) for path, doc in ((RULES_PATH, rule_groups(cfg)),
                                             (ALERTMANAGER_PATH, alertmanager_config(cfg)))
                 if not path.exists() or path.read_text() != to_yaml(doc)]
        for s in stale:
            print(f"{s}: differs from shell/alerting.py; run python -m foliowatch.shell.alerting",
                  file=sys.stderr)
        return 1 if stale else 0
    write(cfg, RULES_PATH, ALERTMANAGER_PATH)
    print(f"wrote {RULES_PATH} and {ALERTMANAGER_PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
