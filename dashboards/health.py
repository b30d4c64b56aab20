"""Pipeline and agent health: what flows (samples/s), what waits (consumer lag, agent
spools), what is refused (dead letters by reason, spool drops), who went silent, and
whether the detector still runs."""

from __future__ import annotations

from grafana_foundation_sdk.builders.dashboard import Dashboard

from . import config
from . import panels as p

UID = "foliowatch-health"
T = config.THRESHOLDS
R = config.RATE_INTERVAL
# Agent metrics carry no cohort labels of their own: take them from the host's info
# metric (the labels it ships). fs is per mount, so it does not narrow agents.
AGENT_LABELS = (' * on (job, instance) group_left (fleet, role, arch, kernel) '
                'foliowatch_agent_host_info{' + config.cohort_selector(fs=False) + '}')


def agent(expr: str) -> str:
    return f"({expr}){AGENT_LABELS}"


def build() -> Dashboard:
    silent_s = T.agent_silent_s
    samples = p.timeseries(
        "Samples per second",
        "Records read by the pipeline, and aggregated into windows (the rest are "
        "duplicates or dead letters); records the scraped agents collect.",
        [p.query(f"sum(rate(foliowatch_pipeline_records_in_total[{R}]))", "pipeline: read"),
         p.query(f"sum(rate(foliowatch_pipeline_records_aggregated_total[{R}]))",
                 "pipeline: aggregated", ref="B"),
         p.query(f"sum(rate(foliowatch_agent_samples_total[{R}]){AGENT_LABELS})",
                 "agents: collected", ref="C")],
        "cps")
    lag = p.timeseries(
        "Consumer lag",
        "Records in Kafka the pipeline has not read yet, by topic.",
        [p.query("sum by (topic) (foliowatch_pipeline_consumer_lag_records)", "{{topic}}")],
        "short", steps=p.steps_up(T.lag_warn, T.lag_bad))
    dlq = p.timeseries(
        "Dead letters by reason",
        "Records sent to foliowatch.samples.dlq per second, by the field that failed "
        "validation (or late: its window had closed).",
        [p.query(f"sum by (reason) (rate(foliowatch_pipeline_records_dlq_total[{R}]))",
                 "{{reason}}")],
        "cps", stack=True)
    batch = p.timeseries(
        "Pipeline batch duration (p99)",
        "Time to decode, aggregate and write one micro-batch.",
        [p.query("histogram_quantile(0.99, sum by (le) "
                 f"(rate(foliowatch_pipeline_batch_duration_seconds_bucket[{R}])))", "p99")],
        "s")
    silent = p.stat(
        f"Agents silent for more than {T.agent_silent_intervals} intervals",
        f"Scraped agents whose last record is older than {T.agent_silent_intervals} sampling "
        f"intervals of {T.agent_interval_s:g} s.",
        [p.query(f"sum({agent(f'time() - foliowatch_agent_last_sample_timestamp_seconds > bool {silent_s:g}')})",
                 instant=True)],
        "none", steps=((None, "green"), (1, "red")))
    since = p.timeseries(
        "Seconds since each agent's last record",
        f"Red above {silent_s:g} s ({T.agent_silent_intervals} sampling intervals).",
        [p.query(agent("time() - foliowatch_agent_last_sample_timestamp_seconds"),
                 "{{instance}} {{fleet}} {{kernel}}")],
        "s", steps=((None, "green"), (silent_s, "red")), width=18)
    spool = p.timeseries(
        "Agent spool depth",
        "Records waiting in each agent's disk spool while Kafka is unreachable.",
        [p.query(agent("foliowatch_agent_spool_records"), "{{instance}} {{fleet}}")],
        "short", steps=p.steps_up(T.spool_warn, T.spool_bad))
    drops = p.timeseries(
        "Agent spool drops",
        "Records dropped per second because an agent's spool was full (oldest first): "
        "telemetry lost for good.",
        [p.query(agent(f"rate(foliowatch_agent_samples_dropped_total[{R}])"), "{{instance}} {{fleet}}")],
        "cps", steps=((None, "green"), (1e-9, "red")))
    last_run = p.stat(
        "Detector last run",
        "Seconds since the detector's last completed evaluation.",
        [p.query("time() - max(foliowatch_detector_last_run_timestamp_seconds)", instant=True)],
        "s", steps=p.steps_up(T.detector_stale_warn_s, T.detector_stale_bad_s))
    comparisons = p.timeseries(
        "Detector comparisons per evaluation",
        "New-vs-baseline kernel comparisons in the detector's last evaluation: 0 means no "
        "rollout in the data it reads.",
        [p.query("max(foliowatch_detector_comparisons)", "comparisons")], "short", width=18)
    return p.dashboard(
        UID, "foliowatch / Pipeline and agent health",
        "Samples per second, consumer lag, dead letters, silent agents, agent spools and "
        "the detector's last run.",
        [("Pipeline", [samples, lag, dlq, batch]),
         ("Agents", [silent, since, spool, drops]),
         ("Detector", [last_run, comparisons])])
