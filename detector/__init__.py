"""foliowatch.detector: find kernel-rollout regressions in the pipeline's Parquet dataset.

Math modules take polars frames in the dataset contract's shape and return typed
results; none imports Kafka or HTTP clients:

- ``frames``: reading the dataset, comparison groups, metric definitions
- ``attribution``: rollout events inferred from host windows (kernel label changing at a
  reboot), waves, rollbacks; matching change points to them
- ``cohort``: host-level new-vs-baseline comparison (``compare``) and its results, built
  from one module per step: ``centring`` (log scale, centred per window),
  ``state_support`` (comparable memory states), ``memory_state`` (fragmentation model),
  ``reference_state`` (what the baseline history says), ``covariates`` (ridge on host
  covariates), ``host_statistics`` (level, tail, bad_share, within_host per host),
  ``rank_test`` (Mann-Whitney, Hodges-Lehmann), ``coverage`` (fragmentation reached),
  ``before_after`` (each host's own before and after under the monotone assumption:
  a reference from a canary's first hour), ``fresh_reference`` (the few baseline hosts
  rebooted into the canaries' fresh-memory states; corroboration only)
- ``changepoint``: level shifts (PELT over a swappable cost, then a significance check)
- ``evidence``: Benjamini-Hochberg, joint evidence, ranking
- ``records``: the regression record and its suspected/confirmed/resolved state machine
- ``analysis``: one evaluation of a dataset as of a time
- ``run``: the arguments, configuration, dataset reading and evaluation of one run,
  shared by both commands; it writes nothing
- ``gate``: the rollout gate's decision (safe / regression / not enough evidence)

Outputs (``outputs``: Kafka, /metrics, Grafana annotations) and the CLIs (``main``:
``foliowatch detect``, the only writer of the state file; ``verdict``: ``foliowatch
verdict``, a pure read) sit on top.
"""
