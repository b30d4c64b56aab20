"""Kernel rollout: where each fleet's kernels stand, which regressions are open with
their headline effect, and the rollout gate's verdict per fleet."""

from __future__ import annotations

from grafana_foundation_sdk.builders.dashboard import Dashboard

from . import config
from . import panels as p

UID = "foliowatch-kernel-rollout"
T = config.THRESHOLDS

# The labels that name one regression, in the order an operator reads them.
REGRESSION_COLUMNS = (("fleet", "Fleet"), ("role", "Role"), ("arch", "Arch"),
                      ("page_size", "Page size (bytes)"), ("fs", "FS"),
                      ("kernel_from", "Baseline kernel"), ("kernel_to", "New kernel"),
                      ("headline", "Effect"), ("status", "Status"))
REGRESSION_LABELS = ", ".join(label for label, _h in REGRESSION_COLUMNS)


def build() -> Dashboard:
    reg_sel = config.cohort_selector(kernel_label="kernel_to")
    cohort_sel = f'window_s="{config.COHORT_WINDOW_S}",{config.cohort_selector()}'
    verdict = p.stat(
        "Rollout verdict per fleet",
        "What `foliowatch verdict` answers for each fleet's newest kernel: safe to proceed, "
        "regression (stop), or wait (not yet observed at the fleet's fragmentation levels).",
        [p.query(f'max by (fleet, kernel) (foliowatch_rollout_verdict{{fleet=~"$fleet",kernel=~"$kernel"}})',
                 "{{fleet}} {{kernel}}", instant=True)],
        "none", steps=((None, "green"), (1, "red"), (2, "yellow")),
        mappings=p.value_map(config.VERDICTS), width=12)
    open_count = p.stat(
        "Regressions open, by status",
        "Regressions the detector holds open (suspected or confirmed) in the selected cohorts.",
        [p.query(f"sum by (status) (foliowatch_regression_open{{{reg_sel}}})", "{{status}}",
                 instant=True)],
        "none", steps=((None, "green"), (1, "red")), width=12).no_value("0")
    table = p.table(
        "Open regressions",
        "One row per open regression: the cohort (fleet, role, arch, page size, filesystem), "
        "the kernel pair, and the effect in operator terms (write throughput new/baseline "
        "with its interval, compaction stalls, hosts compared). Evidence: "
        "`foliowatch detect --json`.",
        [p.query(f"max by ({REGRESSION_LABELS}) (foliowatch_regression_info{{{reg_sel}}})",
                 instant=True, table=True)],
        REGRESSION_COLUMNS, height=8)
    hosts = p.timeseries(
        "Hosts per kernel per fleet",
        "Hosts reporting in the pipeline's latest complete window, by fleet and kernel: "
        "the rollout's progress (and its rollback).",
        [p.query(f"sum by (fleet, kernel) (foliowatch_pipeline_cohort_hosts{{{cohort_sel}}})",
                 "{{fleet}} {{kernel}}")],
        "short", width=24, stack=True)
    ratio = p.timeseries(
        "Write throughput, new kernel / baseline (open regressions)",
        "Buffered write throughput of the new kernel's hosts over the baseline kernel's, "
        "same cohort and time, with its confidence interval (bound low/high). 1.0 = no "
        "change; the seed regression measured 0.75x and 0.45x.",
        [p.query("max by (fleet, arch, page_size, fs, kernel_from, kernel_to, bound) "
                 f"(foliowatch_regression_write_ratio{{{reg_sel}}})",
                 "{{fleet}} {{arch}} {{page_size}} {{fs}} {{kernel_from}}->{{kernel_to}} {{bound}}")],
        "suffix:x", steps=p.steps_down(T.write_ratio_bad, T.write_ratio_warn), min_val=None,
        width=24)
    return p.dashboard(
        UID, "foliowatch / Kernel rollout",
        "Kernel rollouts by fleet: hosts per kernel, open regressions with their headline "
        "effect, and the rollout gate's verdict.",
        [("Verdict", [verdict, open_count]),
         ("Open regressions", [table, ratio]),
         ("Rollout progress", [hosts])],
        annotations=True)
