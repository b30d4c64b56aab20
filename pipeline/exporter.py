"""The pipeline's /metrics (prometheus-client): its health, and cohort gauges for the
latest complete window.

Cohort gauges carry only cohort labels (fleet, role, arch, page_size, fs, kernel) plus
window_s and stat: never a host, so their cardinality is bounded by the fleet's cohorts.
They are computed on scrape by one Collector from the host rows of the latest closed
window of each window size (merged across the partitions this instance owns), so the
median and quantiles are real fleet-level ones, not averages of partitions'.
"""

from __future__ import annotations

import threading
from typing import Dict, List, Optional, Tuple

import polars as pl
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily

from foliowatch import dataset as contract
from foliowatch import schema as wire

from .aggregate import ClosedWindow, cohort_rows

STATS = ("mean", "median", "p90", "p99")
_REASON_KINDS = frozenset(wire.TOP_FIELDS) | {"record", "late"}
_UNKNOWN_REASON = "unknown_field"
# The cohort gauges show a window once every partition that reports windows of its size
# has closed it: partitions' watermarks differ (each follows its own hosts' clocks), and
# the newest window of one partition alone holds only its share of the fleet. A
# partition this many windows behind the newest closed one (its hosts went quiet, or it
# moved to another instance) no longer holds the others back.
STALLED_WINDOWS = 5
# At most this many cohorts per window size on /metrics, those with the most hosts
# first: a label value that changes with every record (a bug, or a hostile agent
# inventing kernel names) would otherwise turn one scrape into millions of series and
# take Prometheus down with it. A real fleet has tens to a few hundred cohorts; the
# ones left out are counted (foliowatch_pipeline_cohorts_not_exported) and stay in the
# dataset, which has no such limit.
MAX_EXPORTED_COHORTS = 1000


def exported_cohorts(host_frame: pl.DataFrame,
                     limit: int = MAX_EXPORTED_COHORTS) -> Tuple[pl.DataFrame, int]:
    """The host rows of the ``limit`` cohorts with the most hosts, and how many cohorts
    were left out."""
    keys = list(contract.COHORT_KEYS)
    sizes = host_frame.group_by(keys).agg(pl.col("host_id").n_unique().alias("n"))
    if sizes.height <= limit:
        return host_frame, 0
    keep = sizes.sort(["n", *keys], descending=[True] + [False] * len(keys)).head(limit)
    return host_frame.join(keep.select(keys), on=keys, how="semi"), \
        sizes.height - limit


class _CohortCollector:
    def __init__(self, owner: "PipelineMetrics"):
        self.owner = owner

    def collect(self):
        labels = [*contract.COHORT_KEYS, "window_s"]
        with self.owner.lock:
            frames = dict(self.owner.latest)
        hosts = GaugeMetricFamily("foliowatch_pipeline_cohort_hosts",
                                  "Hosts in the cohort in the latest complete window",
                                  labels=labels)
        start = GaugeMetricFamily("foliowatch_pipeline_latest_window_start_seconds",
                                  "Start of the latest complete window (Unix seconds)",
                                  labels=["window_s"])
        fams = {m: GaugeMetricFamily(f"foliowatch_pipeline_cohort_{m}",
                                     f"Cohort {m} over host values, latest complete window",
                                     labels=labels + ["stat"]) for m in wire.KEY_METRICS}
        mech = {r.name: GaugeMetricFamily(
            f"foliowatch_pipeline_cohort_{r.name}",
            f"Cohort {r.doc}, pooled over its hosts with the tracepoint collector, latest "
            "complete window", labels=labels) for r in wire.MECHANISM_TABLE}
        left_out = GaugeMetricFamily("foliowatch_pipeline_cohorts_not_exported",
                                     f"Cohorts of the latest complete window beyond the "
                                     f"{MAX_EXPORTED_COHORTS} with the most hosts, left off "
                                     "/metrics (they are in the dataset)",
                                     labels=["window_s"])
        for w, (ws, host_frame) in sorted(frames.items()):
            start.add_metric([str(w)], float(ws))
            host_frame, over = exported_cohorts(host_frame)
            left_out.add_metric([str(w)], float(over))
            coh = cohort_rows(host_frame)
            for row in coh.iter_rows(named=True):
                lv = [str(row[k]) for k in contract.COHORT_KEYS] + [str(w)]
                hosts.add_metric(lv, float(row["hosts"]))
                for name, fam in mech.items():
                    if row[name] is not None:
                        fam.add_metric(lv, float(row[name]))
                for m in wire.KEY_METRICS:
                    for s in STATS:
                        v = row[f"{m}_{s}"]
                        if v is not None:
                            fams[m].add_metric(lv + [s], float(v))
        yield hosts
        yield start
        yield left_out
        yield from fams.values()
        yield from mech.values()


class _LagCollector:
    def __init__(self, owner: "PipelineMetrics"):
        self.owner = owner

    def collect(self):
        g = GaugeMetricFamily("foliowatch_pipeline_consumer_lag_records",
                              "Records behind the partition's high watermark",
                              labels=["topic", "partition"])
        with self.owner.lock:
            lag = dict(self.owner.lag)
        for (topic, p), v in sorted(lag.items()):
            g.add_metric([topic, str(p)], float(v))
        yield g


class PipelineMetrics:
    def __init__(self, registry: Optional[CollectorRegistry] = None):
        self.registry = registry or CollectorRegistry()
        self.lock = threading.Lock()
        self.latest: Dict[int, Tuple[int, pl.DataFrame]] = {}
        self._closed: Dict[int, Dict[int, int]] = {}     # window_s -> partition -> newest start
        self._pending: Dict[int, Dict[int, List[pl.DataFrame]]] = {}   # window_s -> start -> frames
        self.lag: Dict[Tuple[str, int], int] = {}
        r = self.registry
        self.records_in = Counter("foliowatch_pipeline_records_in_total",
                                  "Records read from the source", registry=r)
        self.records_out = Counter("foliowatch_pipeline_records_aggregated_total",
                                   "Records accepted and aggregated into windows", registry=r)
        self.duplicates = Counter("foliowatch_pipeline_records_duplicate_total",
                                  "Records dropped as duplicates of (host_id, boot_id, seq)",
                                  registry=r)
        self.dlq = Counter("foliowatch_pipeline_records_dlq_total",
                           "Records sent to the dead-letter queue, by reason kind",
                           ["reason"], registry=r)
        # every reason exists from the start at 0, so that a rate over the first dead
        # letter is not lost and the dashboards' "by reason" panel is never empty
        for kind in sorted(_REASON_KINDS | {_UNKNOWN_REASON}):
            self.dlq.labels(kind)
        self.python_path = Counter(
            "foliowatch_pipeline_records_slow_path_total",
            "Valid records that needed the per-record Python validation (non-compact JSON, "
            "unusual layouts): a producer to look at when this grows", registry=r)
        self.windows = Counter("foliowatch_pipeline_windows_written_total",
                               "Window files written (host + cohort per window)",
                               ["window_s"], registry=r)
        self.batch_seconds = Histogram("foliowatch_pipeline_batch_duration_seconds",
                                       "Time to decode, aggregate and write one micro-batch",
                                       buckets=(.01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30),
                                       registry=r)
        r.register(_CohortCollector(self))
        r.register(_LagCollector(self))

    def observe_batch(self, st, reasons: List[str]) -> None:
        self.records_in.inc(st.records)
        self.records_out.inc(st.accepted)
        self.duplicates.inc(st.duplicates)
        self.python_path.inc(st.python_accepted)
        for reason in reasons:
            # bounded label: the field name before the colon, or "late"
            kind = reason.split(":", 1)[0].split("[", 1)[0].split(".", 1)[0]
            if kind not in _REASON_KINDS:
                kind = _UNKNOWN_REASON
            self.dlq.labels(kind).inc()
        self.batch_seconds.observe(st.seconds)

    def observe_window(self, cw: ClosedWindow) -> None:
        self.windows.labels(str(cw.window_s)).inc()
        w = cw.window_s
        with self.lock:
            closed = self._closed.setdefault(w, {})
            closed[cw.partition] = max(closed.get(cw.partition, cw.window_start), cw.window_start)
            pending = self._pending.setdefault(w, {})
            pending.setdefault(cw.window_start, []).append(cw.hosts)
            newest = max(closed.values())
            complete = min(s for s in closed.values() if s >= newest - STALLED_WINDOWS * w)
            ready = sorted(s for s in pending if s <= complete)
            if not ready:
                return
            start = ready[-1]
            frames = pending[start]
            cur = self.latest.get(w)
            if cur is not None and cur[0] == start:      # a partition that caught up late
                frames = [cur[1], *frames]
            if cur is None or start >= cur[0]:
                self.latest[w] = (start, pl.concat(frames))
            for s in ready:
                del pending[s]

    def set_lag(self, lag: Dict[Tuple[str, int], int]) -> None:
        with self.lock:
            self.lag = dict(lag)

    def serve(self, addr: str) -> None:
        from prometheus_client import start_http_server
        from foliowatch.flags import parse_listen
        host, port = parse_listen(addr)
        start_http_server(port, addr=host, registry=self.registry)
