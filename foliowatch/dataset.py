"""The Parquet dataset contract between the pipeline (writer) and the detector and
report (readers). Column names only; no third-party imports.

Layout under the dataset root (a local folder, or an s3:// URL):

    level=host/window_s=60/date=2026-11-25/part-p{partition}-{first}-{last}.parquet
    level=cohort/window_s=60/date=2026-11-25/part-p{partition}-{first}-{last}.parquet
    level=host/window_s=3600/...

Files are named from (source partition, first offset, last offset) of the records they
hold, so a replay of the same offsets overwrites instead of duplicating. In the
``--from-files`` mode the "partition" is a hash of the input file name and the offsets
are line/row numbers.

**Host windows** (``level=host``): one row per (window, host, boot, filesystem).
Columns: ``WINDOW_COLUMNS`` + ``COHORT_KEYS`` + ``HOST_COLUMNS`` + for each key metric
``m`` in ``schema.KEY_METRICS``: ``m`` (the host's value over the window: a rate is the
sum of deltas over the sum of intervals, a gauge the mean) + ``HOST_SUMS`` +
``MECHANISM_COLUMNS`` (``schema.MECHANISM_TABLE`` over the window's sums: large-folio
share, direct compaction attempts per GiB written; null on hosts without the agent's
tracepoint collector).

**Cohort windows** (``level=cohort``): one row per (window, cohort).
Columns: ``WINDOW_COLUMNS`` + ``COHORT_KEYS`` + ``hosts`` + ``samples`` + for each key
metric ``m``: ``m_mean``, ``m_median``, ``m_p90``, ``m_p99``, ``m_n`` (hosts with a
value), ``m_sum``, ``m_sumsq`` (over host values; enough to merge partitions' means and
variances; medians and quantiles of a merged window are recomputed from host rows) +
``COHORT_MECHANISM_COLUMNS``: each ``schema.MECHANISM_TABLE`` figure pooled over the
cohort's hosts that report its inputs (sum of numerators over sum of denominators; null
when none does) and ``<name>_hosts``, how many did (a merged window re-pools from the
host rows' ``HOST_SUMS``).
"""

from foliowatch import schema as _wire

WINDOW_COLUMNS = ("window_start", "window_s")  # window_start: Datetime(us, UTC)
COHORT_KEYS = ("fleet", "role", "arch", "page_size", "fs", "kernel")
HOST_COLUMNS = ("host_id", "boot_id", "instance_type", "cpus", "mem_bytes",
                "samples", "uptime_s", "first_ts", "last_ts")
# Raw sums kept on host rows so windows can be merged and re-derived exactly: the
# intervals, the key metric rates' inputs and the carried counters (schema.summed_columns).
HOST_SUMS = ("interval_s_sum",) + tuple(f"{c}_sum" for c in _wire.summed_columns())
MECHANISM_COLUMNS = _wire.MECHANISM_METRICS
COHORT_MECHANISM_COLUMNS = tuple(c for m in MECHANISM_COLUMNS for c in (m, f"{m}_hosts"))
DEFAULT_WINDOWS_S = (60, 3600)

