"""Every knob the dashboards share, in one place (the shape of node-mixin's
``config.libsonnet``): the datasource, the template variables and the label selectors
they make, which pipeline window and statistic the panels read, and each threshold.
A threshold changed here changes every panel that shows it.

The metric names are the ones the components export: ``foliowatch_agent_*`` (agent/
exporter.py), ``foliowatch_pipeline_*`` (pipeline/exporter.py), ``foliowatch_regression_*``,
``foliowatch_detector_*`` (detector/outputs.py) and ``foliowatch_rollout_verdict``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

# The provisioned datasource (deploy/grafana/provisioning/datasources/foliowatch.yaml).
DATASOURCE_TYPE = "prometheus"
DATASOURCE_UID = "foliowatch-prometheus"

# Dashboards' folder and tags; `foliowatch dashboards push` creates the folder.
FOLDER_UID = "foliowatch"
FOLDER_TITLE = "foliowatch"
TAGS = ["foliowatch"]
# Annotations that `push` posts carry these tags; the dashboards show the ones tagged so.
ANNOTATION_TAGS = ["foliowatch", "regression"]

# Template variables: (name, label, label on the cohort gauges). Every cohort gauge of
# the pipeline carries these labels; the regression gauges name the new kernel kernel_to.
VARIABLES: Tuple[Tuple[str, str], ...] = (
    ("fleet", "Fleet"),
    ("arch", "Architecture"),
    ("fs", "Filesystem"),
    ("kernel", "Kernel"),
)
# The metric whose label values fill the variables: present for every cohort.
VARIABLE_SOURCE = "foliowatch_pipeline_cohort_hosts"
# Value of "All": a regex, so `label=~"$var"` matches every value.
ALL_VALUE = ".*"


def cohort_selector(*, kernel_label: str = "kernel", fs: bool = True, kernel: bool = True) -> str:
    """The label matchers the variables make, for a metric with cohort labels."""
    parts = ['fleet=~"$fleet"', 'arch=~"$arch"']
    if fs:
        parts.append('fs=~"$fs"')
    if kernel:
        parts.append(f'{kernel_label}=~"$kernel"')
    return ",".join(parts)


@dataclass(frozen=True)
class Thresholds:
    """Where a panel turns amber and red. Ratios are new/baseline kernel."""

    # write throughput new/baseline: the seed regression measured 0.75x and 0.45x;
    # below 0.95 is worth a look, below 0.85 stops a rollout
    write_ratio_warn: float = 0.95
    write_ratio_bad: float = 0.85
    # share of free memory unusable for a 1 MiB block: past these, high-order
    # allocations of the write path fall into direct compaction
    frag_warn: float = 0.5
    frag_bad: float = 0.8
    # PSI memory "some": share of wall time with at least one task stalled on memory
    psi_warn: float = 0.05
    psi_bad: float = 0.20
    # direct compaction stalls per second on a host (p90 of the cohort)
    compact_stall_warn: float = 1.0
    compact_stall_bad: float = 10.0
    # an agent is silent after this many sampling intervals of this length without a record
    agent_interval_s: float = 60.0
    agent_silent_intervals: int = 5
    # Kafka records the pipeline is behind
    lag_warn: float = 10_000
    lag_bad: float = 100_000
    # seconds since the detector's last completed evaluation
    detector_stale_warn_s: float = 300.0
    detector_stale_bad_s: float = 900.0
    # records in an agent's disk spool (Kafka unreachable)
    spool_warn: float = 1.0
    spool_bad: float = 1000.0

    @property
    def agent_silent_s(self) -> float:
        return self.agent_interval_s * self.agent_silent_intervals


THRESHOLDS = Thresholds()

# The pipeline's cohort gauges exist per window length; the dashboards read the short
# window (the pipeline's default windows are 60 s and 3600 s) and the cohort's median
# host for throughput, its p90 host for stalls (a tail: a few hosts stall hard while
# the median looks fine).
COHORT_WINDOW_S = "60"
THROUGHPUT_STAT = "median"
TAIL_STAT = "p90"

# Rollout verdict values (foliowatch_rollout_verdict): the exit codes of `foliowatch verdict`.
VERDICTS = ((0, "safe", "green"), (1, "regression", "red"), (2, "wait", "yellow"))

# Rate window: Grafana's $__rate_interval follows the scrape interval.
RATE_INTERVAL = "$__rate_interval"

# Refresh and default time range of every dashboard.
REFRESH = "1m"
TIME_FROM = "now-24h"
