"""Large-folio write health: buffered write throughput and the write probe by kernel
(split by arch, page size and filesystem), and the mechanism behind the seed regression
(direct compaction stalls, direct reclaim, memory pressure, fragmentation, and where
hosts run the agent's tracepoint collector the large-folio share and costly-order
direct compaction attempts per GiB written), with the regressions marked on the time
axis."""

from __future__ import annotations

from grafana_foundation_sdk.builders.dashboard import Dashboard

from . import config
from . import panels as p

UID = "foliowatch-write-health"
T = config.THRESHOLDS
LEGEND = "{{kernel}} {{arch}} {{page_size}} {{fs}} {{fleet}}/{{role}}"


def cohort(metric: str, stat: str) -> str:
    """One cohort gauge of the pipeline for the selected cohorts."""
    return (f'foliowatch_pipeline_cohort_{metric}{{stat="{stat}",'
            f'window_s="{config.COHORT_WINDOW_S}",{config.cohort_selector()}}}')


def pooled(metric: str) -> str:
    """One pooled mechanism gauge of the pipeline (``schema.MECHANISM_TABLE``: no stat,
    pooled over the cohort's hosts with the tracepoint collector) for the selected cohorts."""
    return (f'foliowatch_pipeline_cohort_{metric}{{'
            f'window_s="{config.COHORT_WINDOW_S}",{config.cohort_selector()}}}')


def build() -> Dashboard:
    tp, tail = config.THROUGHPUT_STAT, config.TAIL_STAT
    write = p.timeseries(
        f"Buffered write throughput by kernel ({tp} host)",
        "MiB/s written to the filesystem's devices per host, the cohort's median host, "
        "per kernel, architecture, page size and filesystem.",
        [p.query(cohort("write_mib_s", tp), LEGEND)], "MiBs")
    probe = p.timeseries(
        f"Write probe by kernel ({tp} host)",
        "MiB/s of the agent's buffered write probe (write + fsync of a fixed file), where "
        "hosts run it: the same workload on every kernel.",
        [p.query(cohort("probe_mib_s", tp), LEGEND)], "MiBs")
    stalls = p.timeseries(
        f"Direct compaction stalls ({tail} host)",
        "compact_stall per second: allocations that stalled in direct compaction. The seed "
        "regression's mechanism: high-order folio allocations of the write path on "
        "fragmented memory. A tail statistic, since a few hosts stall hard.",
        [p.query(cohort("compact_stall_per_s", tail), LEGEND)], "cps",
        steps=p.steps_up(T.compact_stall_warn, T.compact_stall_bad))
    reclaim = p.timeseries(
        f"Direct reclaim entries ({tail} host)",
        "allocstall_* per second: allocations that entered direct reclaim.",
        [p.query(cohort("allocstall_per_s", tail), LEGEND)], "cps")
    scanned = p.timeseries(
        f"Pages scanned by direct reclaim ({tail} host)",
        "pgscan_direct per second.",
        [p.query(cohort("pgscan_direct_per_s", tail), LEGEND)], "cps")
    psi = p.timeseries(
        f"Memory pressure, PSI some ({tail} host)",
        "Share of wall time in which at least one task stalled on memory (/proc/pressure/memory).",
        [p.query(cohort("psi_memory_some_share", tail), LEGEND)], "percentunit",
        steps=p.steps_up(T.psi_warn, T.psi_bad))
    frag = p.timeseries(
        f"Fragmentation: free memory unusable for a 1 MiB block ({tp} host)",
        "Unusable free space index for a 1 MiB block (/proc/buddyinfo): the share of free "
        "memory in smaller blocks. High values send large-folio allocations into compaction.",
        [p.query(cohort("frag_unusable_1m", tp), LEGEND)], "percentunit",
        steps=p.steps_up(T.frag_warn, T.frag_bad), width=24)
    share = p.timeseries(
        "Large-folio share of page-cache bytes by kernel",
        "Bytes added to the page cache in folios of order >= 4 over all bytes added "
        "(tracepoint filemap:mm_filemap_add_to_page_cache), pooled over the cohort's hosts "
        "that run the agent's tracepoint collector. Falls on fragmented memory on kernels "
        "whose buffered writes ask for large folios.",
        [p.query(pooled("large_folio_share"), LEGEND)], "percentunit")
    costly = p.timeseries(
        "Costly-order direct compaction attempts per GiB written by kernel",
        "Direct compaction attempts of order > 3 with __GFP_DIRECT_RECLAIM (tracepoint "
        "compaction:mm_compaction_try_to_compact_pages) per GiB written to the filesystem, "
        "pooled over the cohort's hosts with the collector. The seed regression's mechanism: "
        "a kernel without it stays at 0 however fragmented its hosts are.",
        [p.query(pooled("compact_try_costly_direct_per_gib"), LEGEND)], "short")
    return p.dashboard(
        UID, "foliowatch / Large-folio write health",
        "Buffered write throughput and the write probe by kernel, with direct compaction, "
        "direct reclaim, memory pressure and fragmentation; regressions annotated.",
        [("Write throughput", [write, probe]),
         ("Compaction and reclaim", [stalls, reclaim, scanned, psi]),
         ("Mechanism (tracepoints)", [share, costly]),
         ("Fragmentation", [frag])],
        annotations=True)
