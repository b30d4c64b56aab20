"""One pass over the kernel's files -> a ``Reading`` (cumulative), and two readings ->
one wire-schema-v1 record (deltas). The collectors parse; this module only composes.
"""

from __future__ import annotations

import os
import re
import threading
import time
from typing import Any, Dict, List, NamedTuple, Optional

from foliowatch import __version__, schema
from foliowatch.agent.collectors import (buddyinfo, diskstats, labels, meminfo, pressure,
                                         thp, tracepoints, vmstat, xfs)
from foliowatch.agent.config import AgentConfig
from foliowatch.agent.deltas import SEP, Baseline

MOUNT_REFRESH_S = 60.0
_BAD_MOUNT_CHARS = re.compile(r"[^A-Za-z0-9._/+-]")


class MountReading(NamedTuple):
    mount: str
    fs: str            # schema filesystem name (xfs, ext4, ..., other)
    device: str
    counters: Dict[str, int]   # cumulative: write_bytes, write_ios, xfs_*


class Reading(NamedTuple):
    boot_id: str
    clock: float       # CLOCK_BOOTTIME: comparable across agent restarts within a boot
    ts: float          # wall clock, Unix seconds
    counters: Dict[str, int]
    gauges: Dict[str, float]
    mounts: List[MountReading]
    settings: Dict[str, str]
    mem_total: int
    zones: List[buddyinfo.ZoneFree]


def boottime() -> float:
    return time.clock_gettime(time.CLOCK_BOOTTIME)


class Sampler:
    def __init__(self, cfg: AgentConfig, proc: str = "/proc", sys: str = "/sys",
                 etc: str = "/etc"):
        self.cfg = cfg
        self.proc, self.sys, self.etc = proc, sys, etc
        self.page_size = os.sysconf("SC_PAGE_SIZE")
        host = cfg.host_id or labels.machine_id(etc)
        if not host:
            raise RuntimeError(f"{etc}/machine-id missing or empty: set agent.host_id (or "
                               "FOLIOWATCH_AGENT_HOST_ID) to a stable host identity")
        self.host_id = labels.clean_id(host)
        self._labels: Optional[Dict[str, Any]] = None
        self._mount_lock = threading.Lock()
        self._mounts: List[labels.Mount] = []
        self._mounts_at = -1e18
        self._mount_table = labels.MountTable(proc)
        self._mounts_settled = False
        # Slow-changing inputs, re-read every MOUNT_REFRESH_S rather than every sample.
        self._slow_at = -1e18
        self._settings: Dict[str, str] = {}
        self._mthp_files: List = []
        self._thp_sizes: Optional[List] = None   # the per-size folders: made at boot
        self._boot_id: Optional[str] = None   # read once: a reboot ends the process
        self.tracepoints: Optional[tracepoints.TracepointCounters] = None
        if cfg.tracepoints.enabled:
            self.tracepoints = tracepoints.TracepointCounters(
                tracepoints.parse_buckets(cfg.tracepoints.order_buckets),
                tracefs=cfg.tracepoints.tracefs, sys=sys)

    # -- watched mounts --------------------------------------------------------------
    def watched_mounts(self) -> List[labels.Mount]:
        with self._mount_lock:
            now = time.monotonic()
            if now - self._mounts_at > MOUNT_REFRESH_S:
                # Unchanged when every configured path was found, is no symlink, still
                # exists and the kernel reports no mount or unmount since the last read.
                if not (self._mounts_settled and not self._mount_table.changed()
                        and all(map(os.path.exists, self.cfg.mounts))):
                    table = self._mount_table.read()
                    found: List[labels.Mount] = []
                    settled = True
                    for path in self.cfg.mounts:
                        m = labels.find_mount(table, path) if os.path.exists(path) else None
                        settled = settled and m is not None and os.path.realpath(path) == path
                        if m is not None and m not in found:
                            found.append(m)
                    self._mounts, self._mounts_settled = found, settled
                self._mounts_at = now
            return list(self._mounts)

    def _mount_readings(self) -> List[MountReading]:
        mounts = self.watched_mounts()
        disks = diskstats.read_devices([m.devno for m in mounts], self.proc)
        by_devno = diskstats.by_devno(disks)
        out: List[MountReading] = []
        for m in mounts:
            disk = by_devno.get(m.devno)
            if disk is None:  # e.g. btrfs: anonymous st_dev, the source names the device
                disk = diskstats.read(self.proc).get(
                    os.path.basename(os.path.realpath(m.source)))
            device = disk.name if disk else labels.clean_label(os.path.basename(m.source), "none")
            counters = diskstats.mount_counters(disk) if disk else {}
            if m.fs == "xfs" and disk is not None:
                stats = xfs.read(disk.name, self.sys)
                if stats:
                    counters.update(xfs.counters(stats))
            mount = (_BAD_MOUNT_CHARS.sub("_", m.mount) or "/")[:256]
            out.append(MountReading(mount, labels.schema_fs(m.fs), device, counters))
        return out

    def _open_tracepoints(self) -> None:
        """Opened at the first reading, after the watched mounts are known; counters of
        a mount that appears later are not filtered for (the kernel's filter is fixed
        while the counter is open)."""
        tp = self.tracepoints
        if tp is None or tp._opened:
            return
        if self.cfg.tracepoints.pagecache_devices == "watched":
            tp.devices = sorted({tracepoints.kernel_dev(m.devno) for m in
                                 self.watched_mounts()})
        tp.open()

    def close(self) -> None:
        self._mount_table.close()
        if self.tracepoints is not None:
            self.tracepoints.close()

    def _refresh_slow(self) -> None:
        now = time.monotonic()
        if now - self._slow_at > MOUNT_REFRESH_S:
            self._settings = {k: labels.clean_label(v)
                              for k, v in thp.read_settings(self.sys).items()}
            if self._thp_sizes is None:
                self._thp_sizes = thp.size_dirs(self.sys)
            self._mthp_files = thp.mthp_files(thp.active_sizes(self.sys, self._thp_sizes))
            self._slow_at = now

    # -- one pass ----------------------------------------------------------------------
    def read(self) -> Reading:
        self._refresh_slow()
        counters = vmstat.read_counters(self.proc)
        counters.update(pressure.read_all(self.proc))
        counters.update(thp.read_files(self._mthp_files))
        if self.tracepoints is not None:
            self._open_tracepoints()
            counters.update(self.tracepoints.read())
        mem = meminfo.read_shipped(self.proc)
        zones = buddyinfo.read(self.proc)
        gauges = meminfo.gauges(mem)
        gauges["uptime_s"] = labels.uptime_s(self.proc)
        gauges.update(buddyinfo.gauges(zones, self.page_size))
        settings = dict(self._settings)
        if self._boot_id is None:
            self._boot_id = labels.boot_id(self.proc)
        return Reading(boot_id=self._boot_id, clock=boottime(), ts=time.time(),
                       counters=counters, gauges=gauges, mounts=self._mount_readings(),
                       settings=settings, mem_total=mem.get("MemTotal", 0), zones=zones)

    def labels(self, reading: Reading) -> Dict[str, Any]:
        if self._labels is None or self._labels["mem_bytes"] != reading.mem_total:
            self._labels = labels.host_labels(
                fleet=self.cfg.fleet, role=self.cfg.role,
                instance_type=self.cfg.instance_type or None,
                mem_bytes=max(1, reading.mem_total), page_size=self.page_size, sys=self.sys)
        return dict(self._labels)

    @staticmethod
    def sections(reading: Reading) -> Dict[str, Dict[str, int]]:
        """Every cumulative counter by section, for the baseline: ``"c"`` for the
        record's counters, ``"m<SEP>mount<SEP>device"`` for a mount's."""
        out = {"c": reading.counters}
        for m in reading.mounts:
            out[f"m{SEP}{m.mount}{SEP}{m.device}"] = m.counters
        return out

    def record(self, reading: Reading, baseline: Baseline, seq: int = 0
               ) -> Optional[Dict[str, Any]]:
        """The wire record for the interval ending at ``reading``, or ``None`` when this
        reading only sets a new baseline."""
        advanced = baseline.advance(reading.boot_id, reading.clock, self.sections(reading))
        if advanced is None:
            return None
        interval, deltas = advanced
        counters = deltas["c"]
        if len(counters) > schema.MAX_COUNTERS:  # keep the kernel's vmstat/PSI first
            counters = dict(list(counters.items())[: schema.MAX_COUNTERS])
        mounts = [{"mount": m.mount, "fs": m.fs, "device": m.device,
                   "counters": deltas[f"m{SEP}{m.mount}{SEP}{m.device}"]}
                  for m in reading.mounts]
        return {
            "schema": schema.SCHEMA_VERSION,
            "host_id": self.host_id,
            "boot_id": labels.clean_id(reading.boot_id),
            "seq": seq,
            "ts": round(reading.ts, 3),
            "interval_s": round(interval, 6),
            "labels": self.labels(reading),
            "counters": counters,
            "gauges": {k: float(v) for k, v in reading.gauges.items()},
            "mounts": mounts,
            "settings": reading.settings,
            "agent": __version__,
        }
