"""foliowatch.pipeline: Kafka (or files) -> polars -> per-kernel cohort windows, exactly
once, into the Parquet dataset of ``foliowatch.dataset``.

Modules: ``decode`` (a whole micro-batch decoded and validated with polars, agreeing
with ``schema.decode``), ``native_decode`` (its compiled one-pass decoder for the canonical
layout: the optional C module ``pipeline/native`` and the layout compiled from
``schema.FIELDS``), ``native_parquet`` (the window files' Parquet bytes: a compiled
encoder in the same C build, polars' writer for the rest), ``wire_checks`` (the field
table in vectorised form), ``aggregate`` (lateness, dedupe, host partial sums, host and
cohort rows; pure), ``sinks`` (durable dataset writes, partition checkpoints, dead
letters), ``engine`` (one batch through all of it), ``consumer`` (the consumer-group
member: micro-batches, rebalances, commit after durable output), ``files``
(``--from-files``), ``exporter`` (/metrics), ``main`` (the CLI).

Notes for readers of the dataset:

- Read ``ROOT/level=host/**/*.parquet`` and ``ROOT/level=cohort/**/*.parquet``; the root
  also holds ``_state/`` (checkpoints), ``_dlq/`` (dead letters of ``--from-files``) and
  ``_tmp/`` (in-flight writes), which are not Parquet.
- Cohort rows are per source partition (a file holds one partition's window): merge
  partitions with ``m_sum``/``m_sumsq``/``m_n``; recompute medians and quantiles from
  host rows. Quantiles use linear interpolation.
- ``first_ts``/``last_ts`` are Unix seconds (Float64); ``HOST_SUMS`` are Float64; a host
  rate is the sum of its deltas over the sum of the intervals of the records that
  reported the counter; ``uptime_s`` is the largest value in the window.
"""
