"""``/metrics``: the kernel figures the agent ships, and the agent's own health, for
Prometheus. One collector reads the kernel files on every scrape (no background
thread keeps copies); values are cumulative (Prometheus computes rates) and in base units
(bytes, seconds, ratios). Every name starts with ``foliowatch_agent_``; labels are
bounded (mount, device, fs, zone, order, size), never per sample. Written and served by
``exposition.py`` (prometheus-client's text format, without importing it).

Bound to 127.0.0.1 by default: the host's node-level scrape config decides whether to
expose it further.
"""

from __future__ import annotations

import logging
import re
import time
from typing import TYPE_CHECKING, Iterator, Tuple

from foliowatch.agent.exposition import (CounterFamily, Family, GaugeFamily, InfoFamily,
                                         MetricsServer, process_families, render)

if TYPE_CHECKING:
    from foliowatch.agent.runner import Agent

log = logging.getLogger("foliowatch.agent.exporter")
P = "foliowatch_agent_"
_MTHP = re.compile(r"^mthp_([0-9]+)kb_(.+)$")
_NAME_OK = re.compile(r"[^a-zA-Z0-9_]")


def _metric_name(name: str) -> str:
    return _NAME_OK.sub("_", name)


class AgentCollector:
    def __init__(self, agent: "Agent"):
        self.agent = agent

    def collect(self) -> Iterator[Family]:
        start = time.monotonic()
        ok = 1.0
        try:
            yield from self._kernel()
        except Exception as e:  # noqa: BLE001 - a broken source must not kill /metrics
            ok = 0.0
            log.warning("scrape: reading the kernel failed: %s", e)
        yield from self._health()
        g = GaugeFamily(P + "scrape_kernel_read_success",
                              "1 if every kernel file could be read during this scrape")
        g.add_metric([], ok)
        yield g
        g = GaugeFamily(P + "scrape_duration_seconds",
                              "Time spent reading the kernel files for this scrape")
        g.add_metric([], time.monotonic() - start)
        yield g

    def _kernel(self) -> Iterator[Family]:
        sampler = self.agent.sampler
        r = sampler.read()
        mthp = {}
        for name, value in sorted(r.counters.items()):
            if name.startswith(("psi_", "tp_")):
                continue
            m = _MTHP.match(name)
            if m:
                mthp.setdefault(m.group(2), []).append((str(int(m.group(1)) * 1024), value))
                continue
            c = CounterFamily(P + "vmstat_" + _metric_name(name),
                                    f"/proc/vmstat {name} (cumulative)")
            c.add_metric([], value)
            yield c
        psi = CounterFamily(P + "pressure_stalled_seconds",
                                  "PSI total stall time (/proc/pressure), by resource and kind",
                                  labels=["resource", "kind"])
        for name, value in sorted(r.counters.items()):
            if name.startswith("psi_"):
                _, resource, kind, _us = name.split("_")
                psi.add_metric([resource, kind], value / 1e6)
        yield psi
        for stat, rows in sorted(mthp.items()):
            c = CounterFamily(P + "mthp_" + _metric_name(stat),
                                    f"transparent_hugepage/hugepages-*/stats/{stat}, by folio "
                                    "size in bytes", labels=["size_bytes"])
            for size, value in sorted(rows, key=lambda x: int(x[0])):
                c.add_metric([size], value)
            yield c
        yield from _tracepoint_families(r.counters)
        frag = GaugeFamily(P + "frag_unusable_ratio",
                                 "Unusable free space index (Gorman) per allocation order: "
                                 "share of free memory in blocks smaller than the order",
                                 labels=["order"])
        for name, value in sorted(r.gauges.items()):
            if name.startswith("frag_unusable_order_"):
                frag.add_metric([name.rsplit("_", 1)[1]], value)
        yield frag
        for name, value in sorted(r.gauges.items()):
            if name.startswith("frag_unusable_order_"):
                continue
            if name == "frag_unusable_1m":
                metric, help_ = "frag_unusable_1m_ratio", ("Unusable free space index for a "
                                                           "1 MiB block at this page size")
            elif name == "uptime_s":
                metric, help_ = "uptime_seconds", "Seconds since boot (/proc/uptime)"
            else:
                metric, help_ = name, f"{name} (/proc/meminfo or /proc/buddyinfo)"
            g = GaugeFamily(P + metric, help_)
            g.add_metric([], value)
            yield g
        blocks = GaugeFamily(P + "buddy_free_blocks",
                                   "Free blocks per node, zone and order (/proc/buddyinfo)",
                                   labels=["node", "zone", "order"])
        for z in r.zones:
            for order, n in enumerate(z.free_blocks):
                blocks.add_metric([str(z.node), z.zone, str(order)], n)
        yield blocks
        families = {}
        for m in r.mounts:
            for name, value in sorted(m.counters.items()):
                if name not in families:
                    base = name if name.startswith("xfs_") else "mount_" + name
                    base = base.replace("write_bytes", "written_bytes")
                    families[name] = CounterFamily(
                        P + _metric_name(base), f"{name} of a watched mount's device "
                        "(/proc/diskstats; xfs_* from /sys/fs/xfs/<dev>/stats)",
                        labels=["mount", "device", "fs"])
                families[name].add_metric([m.mount, m.device, m.fs], value)
        yield from families.values()
        s = InfoFamily(P + "kernel_settings", "Active THP settings",
                             labels=[])
        s.add_metric([], dict(r.settings))
        yield s
        labels_ = sampler.labels(r)
        info = InfoFamily(P + "host", "Host identity and labels as shipped in samples")
        info.add_metric([], {"host_id": sampler.host_id, "boot_id": r.boot_id,
                             **{k: str(v) for k, v in labels_.items()}})
        yield info

    def _health(self) -> Iterator[Family]:
        a = self.agent
        st = a.stats

        def counter(name: str, help_: str, value: float) -> Family:
            c = CounterFamily(P + name, help_)
            c.add_metric([], value)
            return c

        def gauge(name: str, help_: str, value: float) -> Family:
            g = GaugeFamily(P + name, help_)
            g.add_metric([], value)
            return g

        yield counter("samples", "Samples collected into records", st.samples)
        yield counter("samples_spooled", "Records appended to the on-disk spool", st.spooled)
        yield counter("samples_sent", "Records acknowledged by Kafka", a.sender_sent())
        yield counter("samples_dropped", "Records dropped because the spool was full "
                      "(oldest first), since the spool was created", a.spool_dropped())
        yield counter("send_requests", "Delivery attempts to Kafka, each one request for "
                      "every sample that waited (agent.kafka.latency_budget_s)",
                      a.sender_requests())
        yield counter("send_errors", "Failed attempts to deliver to Kafka", a.sender_errors())
        yield counter("collection_errors", "Sampling passes that failed", st.collection_errors)
        yield counter("baseline_resets", "Counters that went backwards and were rebased",
                      a.baseline.resets)
        yield gauge("spool_records", "Records waiting in the spool", a.spool_len())
        yield gauge("spool_bytes", "Bytes used by the spool on disk", a.spool_bytes())
        yield gauge("next_seq", "Sequence number of the next record", a.state.next_seq)
        yield gauge("collection_duration_seconds", "Duration of the last sampling pass "
                    "(collect + encode + spool)", st.last_duration_s)
        yield gauge("last_sample_timestamp_seconds", "Wall time of the last record",
                    st.last_sample_ts)
        err_ts, err = a.last_send_error()
        yield gauge("last_send_error_timestamp_seconds", "Wall time of the last failed "
                    "delivery (0: none yet)", err_ts or 0.0)
        info = InfoFamily(P + "last_send_error", "Class of the last delivery error")
        info.add_metric([], {"error": err or ""})
        yield info
        if st.probe is not None:
            p = st.probe
            yield gauge("probe_write_throughput_bytes_per_second", "Last write probe: "
                        "bytes written / seconds (write + fsync)", p["mib_s"] * 1048576.0)
            yield gauge("probe_bytes", "Last write probe: bytes written", p["bytes"])
            yield gauge("probe_duration_seconds", "Last write probe: seconds", p["seconds"])
            yield gauge("probe_compact_stall", "Last write probe: compact_stall during it",
                        p["compact_stall"])
            yield gauge("probe_allocstall", "Last write probe: allocstall_* during it",
                        p["allocstall"])
            g = GaugeFamily(P + "probe_vmstat_delta", "Last write probe: change of "
                                  "compaction and reclaim counters during it",
                                  labels=["counter"])
            for name, delta in sorted(st.probe_vmstat.items()):
                g.add_metric([name], delta)
            yield g
        tp = a.sampler.tracepoints
        if tp is not None:
            yield gauge("tracepoints_enabled", "1 if the tracepoint counters are open "
                        "(agent.tracepoints.enabled and permitted), 0 if configured but off "
                        "(see foliowatch_agent_tracepoints_info{reason})", 1.0 if tp.on else 0.0)
            info = InfoFamily(P + "tracepoints", "Why the tracepoint counters are off, "
                                    "and events or fields this kernel lacks")
            info.add_metric([], {"reason": tp.off_reason or "",
                                 "missing": "; ".join(tp.problems)})
            yield info
        yield counter("probe_refusals", "Probes that did not run (space, permissions)",
                      st.probe_refusals)
        if a.cfg.probe.enabled:
            yield gauge("probe_period_seconds", "Seconds between write probes now: "
                        "agent.probe.new_kernel_every_s in the host's first new_kernel_hours "
                        "on a kernel release it had not run before, else every_s",
                        a.probe_period_s(time.time()))


# wire counter prefix -> (metric, help); the rest of the name is the order bucket
_TP_BUCKETED = (
    ("tp_pagecache_folios_", "tracepoint_pagecache_folios",
     "Folios added to the page cache (filemap:mm_filemap_add_to_page_cache), by "
     "allocation-order bucket"),
    ("tp_pagecache_bytes_", "tracepoint_pagecache_bytes",
     "Bytes of the folios added to the page cache, by allocation-order bucket"),
    ("tp_compact_try_", "tracepoint_compaction_attempts",
     "Direct compaction attempts (compaction:mm_compaction_try_to_compact_pages), by "
     "allocation-order bucket"),
)
_TP_SINGLE = {
    "tp_compact_try_costly_direct": ("tracepoint_compaction_attempts_costly_direct_reclaim",
                                     "Direct compaction attempts of order > 3 carrying "
                                     "__GFP_DIRECT_RECLAIM"),
    "tp_compact_end": ("tracepoint_compaction_ended", "Compaction runs ended "
                       "(compaction:mm_compaction_end; direct, kcompactd and proactive)"),
    "tp_compact_end_success": ("tracepoint_compaction_ended_success",
                               "Compaction runs ended with status success"),
    "tp_compact_deferred": ("tracepoint_compaction_deferred", "Compaction deferred "
                            "(compaction:mm_compaction_deferred)"),
    "tp_compact_deferred_costly": ("tracepoint_compaction_deferred_costly",
                                   "Compaction deferred at order > 3"),
    "tp_direct_reclaim": ("tracepoint_direct_reclaim", "Direct reclaim entries "
                          "(vmscan:mm_vmscan_direct_reclaim_begin)"),
    "tp_direct_reclaim_costly": ("tracepoint_direct_reclaim_costly",
                                 "Direct reclaim entries at order > 3"),
}


def _tracepoint_families(counters) -> Iterator[Family]:
    """The ``tp_*`` counters (collectors/tracepoints.py) as families with an
    ``order_bucket`` label (``0``, ``1-3``, ``8+``, ...)."""
    for prefix, metric, help_ in _TP_BUCKETED:
        rows = [(k[len(prefix):], v) for k, v in counters.items()
                if k.startswith(prefix + "order_")]
        if not rows:
            continue
        c = CounterFamily(P + metric, help_, labels=["order_bucket"])
        for bucket, value in sorted(rows, key=lambda x: int(x[0].split("_")[1])):
            c.add_metric([_bucket_label(bucket)], value)
        yield c
    for key, (metric, help_) in _TP_SINGLE.items():
        if key in counters:
            c = CounterFamily(P + metric, help_)
            c.add_metric([], counters[key])
            yield c


def _bucket_label(name: str) -> str:
    """``order_1_3`` -> ``1-3``, ``order_8_up`` -> ``8+``, ``order_0`` -> ``0``."""
    parts = name.split("_")[1:]
    if parts[-1] == "up":
        return parts[0] + "+"
    return "-".join(parts)


def metrics(agent: "Agent") -> bytes:
    """The /metrics page: the agent's families, then the process's (RSS, CPU, fds)."""
    return render([*AgentCollector(agent).collect(), *process_families()])


def serve(agent: "Agent", address: Tuple[str, int]) -> MetricsServer:
    """Start /metrics on ``address`` in a daemon thread; returns the server
    (``.shutdown()`` stops it)."""
    return MetricsServer(address, lambda: metrics(agent))
