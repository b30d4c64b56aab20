"""Where regression transitions go: Kafka (``foliowatch.regressions.v1``), Prometheus
gauges (bounded labels: fleet, arch, page size, fs, kernels, status), and Grafana
annotations (a JSON list for the annotations API or a dashboard's static layer).
The math modules never import this one."""

from __future__ import annotations

import json
from datetime import datetime
from typing import TYPE_CHECKING, Iterable, List, Optional, Sequence

from foliowatch.files import atomic_write

from .headline import HEADLINE_METRICS
from .headline import basis as headline_basis
from .records import RegressionState, Transition

if TYPE_CHECKING:
    from foliowatch.kafka_io import KafkaSettings


def publish_kafka(transitions: Sequence[Transition], settings: "KafkaSettings",
                  topic: Optional[str] = None, timeout_s: float = 30.0) -> int:
    """Send each transition's record, keyed by the record id (one partition per
    regression, so its history stays ordered), over ``settings`` (TLS and SASL as the
    other Kafka clients). Returns the number sent."""
    from foliowatch.errors import ServiceError
    from foliowatch.kafka_access import refusal
    from foliowatch.kafka_io import TOPIC_REGRESSIONS, make_producer
    if not transitions:
        return 0
    topic = topic or TOPIC_REGRESSIONS
    try:
        producer = make_producer(settings, max_block_ms=int(timeout_s * 1000))
        try:
            futures = [producer.send(topic, key=t.record.id.encode(),
                                     value=t.record.to_json().encode()) for t in transitions]
            producer.flush(timeout=timeout_s)
            for f in futures:
                f.get(timeout=timeout_s)
        finally:
            producer.close(timeout=timeout_s)
    except Exception as e:
        refused = refusal(settings, e, f"write {topic}")
        if refused:
            raise refused from None
        raise ServiceError(f"{settings.name('bootstrap')} {','.join(settings.bootstrap)}: "
                           f"{len(transitions)} regression record(s) not delivered to {topic} "
                           f"({type(e).__name__}: {e}); is the broker running?") from None
    return len(transitions)


def grafana_annotations(transitions: Iterable[Transition]) -> List[dict]:
    out = []
    for t in transitions:
        r = t.record
        when = r.resolved_at if r.status == "resolved" else r.updated_at
        ms = int(datetime.fromisoformat(when).timestamp() * 1000)
        eff = (f"x{r.effect:.3f} [{r.ci_low:.3f}, {r.ci_high:.3f}]" if r.effect_kind == "ratio"
               else f"{r.effect:+.3f} [{r.ci_low:+.3f}, {r.ci_high:+.3f}]")
        out.append({
            "time": ms, "timeEnd": ms,
            "tags": ["foliowatch", "regression", r.status, r.fleet, r.arch, r.fs, r.kernel_to],
            "text": (f"{r.status}: {r.fleet}/{r.role} {r.arch} {r.page_size // 1024}K {r.fs} "
                     f"{r.kernel_from} -> {r.kernel_to}: {r.headline}. Evidence: "
                     f"{r.metric} ({r.statistic}) {eff}, q={r.q_value:.2g}"),
        })
    return out


def write_json_atomic(path: str, payload) -> None:
    atomic_write(path, json.dumps(payload, indent=1).encode())


COHORT_LABELS = ("fleet", "role", "arch", "page_size", "fs", "kernel_from", "kernel_to")
# the headline's level ratios (new/baseline) as gauges, bound = estimate | low | high
RATIO_METRICS = {
    "write_mib_s": ("foliowatch_regression_write_ratio",
                    "buffered write throughput on the new kernel / baseline (typical interval)"),
    "probe_mib_s": ("foliowatch_regression_probe_ratio",
                    "write probe MiB/s on the new kernel / baseline (typical interval)"),
    "compact_stall_per_s": ("foliowatch_regression_compact_stall_ratio",
                            "direct compaction stalls on the new kernel / baseline (typical interval)"),
}

assert set(RATIO_METRICS) == set(HEADLINE_METRICS)


class RegressionCollector:
    """prometheus-client collector reading the state on scrape (no background updates)."""

    def __init__(self, state_path: str, last_run: Optional[dict] = None):
        self.state_path = state_path
        self.last_run = last_run if last_run is not None else {}

    def collect(self):
        from prometheus_client.core import GaugeMetricFamily
        labels = list(COHORT_LABELS)
        open_g = GaugeMetricFamily("foliowatch_regression_open",
                                   "1 per open regression; status is suspected or confirmed",
                                   labels=labels + ["status"])
        info_g = GaugeMetricFamily("foliowatch_regression_info",
                                   "1 per open regression, with its headline effect in words",
                                   labels=labels + ["status", "headline"])
        eff_g = GaugeMetricFamily("foliowatch_regression_effect_ratio",
                                  "effect of the new kernel on the primary metric (new/base)",
                                  labels=labels + ["metric"])
        ratio_g = {m: GaugeMetricFamily(name, help_, labels=labels + ["bound"])
                   for m, (name, help_) in RATIO_METRICS.items()}
        hosts_g = GaugeMetricFamily("foliowatch_regression_hosts",
                                    "hosts of the group the regression can reach",
                                    labels=labels)
        compared_g = GaugeMetricFamily("foliowatch_regression_compared_hosts",
                                       "hosts the headline ratios rest on, by kernel "
                                       "(new: the rolled-out kernel, baseline: the one it replaces)",
                                       labels=labels + ["kernel"])
        state = RegressionState.read_only(self.state_path)
        for r in state.open_records():
            lv = [r.fleet, r.role, r.arch, str(r.page_size), r.fs, r.kernel_from, r.kernel_to]
            open_g.add_metric(lv + [r.status], 1.0)
            info_g.add_metric(lv + [r.status, r.headline], 1.0)
            if r.effect_kind == "ratio":
                eff_g.add_metric(lv + [r.metric], r.effect)
            for m, fam in ratio_g.items():
                e = (r.levels or {}).get(m)
                if e:
                    for bound, key in (("estimate", "effect"), ("low", "ci_low"), ("high", "ci_high")):
                        fam.add_metric(lv + [bound], float(e[key]))
            hosts_g.add_metric(lv, float(r.hosts_in_group))
            b = headline_basis(r.levels or {})
            compared_g.add_metric(lv + ["new"], float(b["n_new"] if b else r.hosts_new))
            compared_g.add_metric(lv + ["baseline"], float(b["n_base"] if b else r.hosts_base))
        yield open_g
        yield info_g
        yield eff_g
        yield from ratio_g.values()
        yield hosts_g
        yield compared_g
        run = GaugeMetricFamily("foliowatch_detector_last_run_timestamp_seconds",
                                "wall clock of the detector's last completed evaluation")
        run.add_metric([], float(self.last_run.get("wall", 0.0)))
        yield run
        until = GaugeMetricFamily("foliowatch_detector_evaluated_until_timestamp_seconds",
                                  "data time of the newest window the last evaluation saw "
                                  "(compare with the pipeline's latest window: detector behind)")
        until.add_metric([], float(self.last_run.get("as_of", 0.0)))
        yield until
        cmp_g = GaugeMetricFamily("foliowatch_detector_comparisons",
                                  "new-vs-baseline kernel comparisons in the last evaluation")
        cmp_g.add_metric([], float(self.last_run.get("comparisons", 0)))
        yield cmp_g
        gate = GaugeMetricFamily("foliowatch_rollout_verdict",
                                 "the rollout gate's decision for a fleet and new kernel in the "
                                 "last evaluation, as `foliowatch verdict` exits: 0 safe to "
                                 "proceed, 1 regression, 2 not enough evidence",
                                 labels=["fleet", "kernel"])
        for (fleet, kernel), code in sorted(self.last_run.get("rollout_verdicts", {}).items()):
            gate.add_metric([fleet, kernel], float(code))
        yield gate


def metrics_text(state_path: str, last_run: Optional[dict] = None) -> bytes:
    from prometheus_client import CollectorRegistry, generate_latest
    reg = CollectorRegistry()
    reg.register(RegressionCollector(state_path, last_run))
    return generate_latest(reg)


def serve_metrics(state_path: str, last_run: dict, port: int, addr: str = "127.0.0.1"):
    from prometheus_client import CollectorRegistry, start_http_server
    reg = CollectorRegistry()
    reg.register(RegressionCollector(state_path, last_run))
    return start_http_server(port, addr=addr, registry=reg)
