"""The fleet plan: every host's fixed attributes and every scheduled event (rollout and
rollback reboots, random reboots, noisy-neighbour and failing-disk episodes), drawn once
from the scenario and its seed. ``model.py`` plays the plan forward in time.

Everything is held in numpy arrays indexed by host number, so the simulation steps the
whole fleet with array operations.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Dict, List

import numpy as np

from .scenario import (INSTANCE_TYPES, KERNEL_TIED_KINDS, WORKLOADS, Scenario,
                       kernel_release)

ARCH_PAGE = (("arm64", 4096), ("arm64", 65536), ("x86_64", 4096))
FS_NAMES = ("xfs", "ext4")
MOUNTS = {"database": "/var/lib/postgresql", "log_shipper": "/var/log/shipper",
          "cache": "/var/cache/app"}
DEVICES = ("nvme1n1", "md0")

REBOOT_KEEP_KERNEL = -1
# why a host rebooted (kept in the plan for tests and ground truth)
REASON_ROLLOUT, REASON_ROLLBACK, REASON_RANDOM, REASON_DISK, REASON_CONTROL = 0, 1, 2, 3, 4
EP_NONE, EP_NOISY, EP_DISK = 0, 1, 2


@dataclass
class Plan:
    scenario: Scenario
    seed: int
    n: int
    # static per host
    host_id: List[str]
    fleet_idx: np.ndarray
    group_idx: np.ndarray
    arch_page: np.ndarray        # index into ARCH_PAGE
    fs_idx: np.ndarray           # index into FS_NAMES
    itype_idx: np.ndarray        # index into itypes
    cpus: np.ndarray
    mem_bytes: np.ndarray
    hw_speed: np.ndarray
    write_base: np.ndarray       # MiB/s demand at load 1.0
    frag_max: np.ndarray
    frag_tau_s: np.ndarray
    stall_base: np.ndarray       # direct compaction stalls/s at full fragmentation
    alloc_base: np.ndarray
    io_bytes: np.ndarray
    mem_used: np.ndarray
    diurnal: np.ndarray
    weekend: np.ndarray
    tz_h: np.ndarray
    skew_s: np.ndarray
    phase_s: np.ndarray
    delay_s: np.ndarray
    device_idx: np.ndarray
    probe_base: np.ndarray
    probe_offset: np.ndarray
    # initial state
    boot_ts0: np.ndarray
    seq0: np.ndarray
    ver0: np.ndarray
    # tables
    itypes: List[str]
    versions: List[str]
    releases: np.ndarray         # [version, arch_page] -> index into release_names
    release_names: List[str]
    fleet_names: List[str]
    # events, sorted by ts
    reboot_ts: np.ndarray
    reboot_host: np.ndarray
    reboot_ver: np.ndarray       # new version index or REBOOT_KEEP_KERNEL
    reboot_reason: np.ndarray
    reboot_wave: np.ndarray      # rollout wave (1-based) of a rollout reboot, else 0
    reboot_down_s: np.ndarray    # host unreachable for this long after the reboot starts
    agent_off_ts: np.ndarray     # agent outages (host up, agent stopped), sorted by ts
    agent_off_host: np.ndarray
    agent_off_end: np.ndarray
    ep_ts: np.ndarray
    ep_host: np.ndarray
    ep_end: np.ndarray
    ep_kind: np.ndarray
    ep_depth: np.ndarray
    rollout_events: List[Dict[str, Any]] = field(default_factory=list)


def _ver_index(versions: List[str], v: str) -> int:
    if v not in versions:
        versions.append(v)
    return versions.index(v)


def probe_steps(every_s: float, interval: float) -> int:
    """Sampling intervals between a host's write probes every ``every_s`` (0: no probe)."""
    return max(1, int(round(every_s / interval))) if every_s > 0 else 0


def build_plan(sc: Scenario, seed: int) -> Plan:
    rng = np.random.default_rng([seed, 0xF011])
    start = sc.start_ts
    end = start + sc.hours * 3600.0
    interval = sc.interval_s
    fl = sc.faults

    versions: List[str] = []
    for f in sc.fleets:
        for g in f.groups:
            _ver_index(versions, g.kernel)
    for r in sc.rollouts:
        _ver_index(versions, r.kernel_from)
        _ver_index(versions, r.kernel_to)
    for c in sc.changes:
        if c.kernel:
            _ver_index(versions, c.kernel)
    release_names: List[str] = []
    releases = np.zeros((len(versions), len(ARCH_PAGE)), dtype=np.int32)
    for vi, v in enumerate(versions):
        for ai, (arch, page) in enumerate(ARCH_PAGE):
            releases[vi, ai] = len(release_names)
            release_names.append(kernel_release(v, arch, page))

    itypes = sorted(INSTANCE_TYPES)
    cols: Dict[str, list] = {k: [] for k in (
        "fleet_idx", "group_idx", "arch_page", "fs_idx", "itype_idx", "ver0", "wl", "tz",
        "up_lo", "up_hi")}
    host_id: List[str] = []
    group_no = 0
    for fi, f in enumerate(sc.fleets):
        counter = {"arm64": 0, "x86_64": 0}
        for g in f.groups:
            ap = ARCH_PAGE.index((g.arch, g.page_size))
            short = "a64" if g.arch == "arm64" else "x86"
            for _ in range(g.hosts):
                counter[g.arch] += 1
                host_id.append(f"{f.name}-{short}-{counter[g.arch]:06d}")
            n = g.hosts
            cols["fleet_idx"].append(np.full(n, fi))
            cols["group_idx"].append(np.full(n, group_no))
            cols["arch_page"].append(np.full(n, ap))
            cols["fs_idx"].append(np.full(n, FS_NAMES.index(g.fs)))
            its = [itypes.index(t) for t in g.instance_types]
            cols["itype_idx"].append(rng.choice(its, size=n))
            cols["ver0"].append(np.full(n, versions.index(g.kernel)))
            cols["wl"].append(np.full(n, list(WORKLOADS).index(f.workload)))
            cols["tz"].append(np.full(n, f.timezone_offset_h))
            cols["up_lo"].append(np.full(n, f.uptime_days[0]))
            cols["up_hi"].append(np.full(n, f.uptime_days[1]))
            group_no += 1
    a = {k: np.concatenate(v) for k, v in cols.items()}
    n = len(host_id)
    fleet_idx = a["fleet_idx"].astype(np.int32)
    itype_idx = a["itype_idx"].astype(np.int32)
    it_arr = [INSTANCE_TYPES[t] for t in itypes]
    cpus = np.array([it_arr[i][1] for i in range(len(itypes))])[itype_idx]
    mem_gib = np.array([it_arr[i][2] for i in range(len(itypes))])[itype_idx]
    # MemTotal is a little below the instance's nominal memory (firmware, kernel).
    mem_bytes = (mem_gib * 1073741824 * 0.965).astype(np.int64) // 4096 * 4096
    hw_speed = np.array([it_arr[i][3] for i in range(len(itypes))])[itype_idx]

    wl_names = list(WORKLOADS)
    def wl_param(name: str) -> np.ndarray:
        return np.array([WORKLOADS[w][name] for w in wl_names], dtype=float)[a["wl"]]
    def wl_range(name: str) -> np.ndarray:
        lo = np.array([WORKLOADS[w][name][0] for w in wl_names])[a["wl"]]
        hi = np.array([WORKLOADS[w][name][1] for w in wl_names])[a["wl"]]
        return lo + (hi - lo) * rng.random(n)

    cpu_scale = cpus / 64.0
    # Tenants differ: the same instance type in the same fleet carries different load.
    write_base = wl_param("write_mib_s") * cpu_scale * rng.lognormal(0.0, 0.30, n)
    frag_max = wl_range("frag_max")
    frag_tau_s = wl_range("frag_tau_h") * 3600.0
    stall_base = wl_param("compact_stall_s") * cpu_scale * rng.lognormal(0.0, 0.25, n)
    alloc_base = wl_param("allocstall_s") * cpu_scale * rng.lognormal(0.0, 0.25, n)
    io_bytes = wl_param("io_kib") * 1024.0 * rng.lognormal(0.0, 0.2, n)
    mem_used = wl_range("mem_used")
    diurnal = wl_param("diurnal") * rng.uniform(0.8, 1.2, n)
    weekend = wl_param("weekend")
    probe_base = wl_param("probe_mib_s") * hw_speed * rng.lognormal(0.0, 0.08, n)
    skew_s = np.clip(rng.normal(0.0, fl["clock_skew_s"], n), -3 * fl["clock_skew_s"],
                     3 * fl["clock_skew_s"])
    phase_s = rng.uniform(0.0, interval, n)
    delay_s = rng.uniform(0.05, 1.5, n)
    device_idx = (rng.random(n) < 0.3).astype(np.int32)
    probe_offset = rng.integers(0, max(1, probe_steps(fl["probe_every_s"], interval)), n)

    uptime0 = (a["up_lo"] + (a["up_hi"] - a["up_lo"]) * rng.random(n)) * 86400.0
    boot_ts0 = start - uptime0
    seq0 = rng.integers(1_000, 5_000_000, n)

    # ---------------------------------------------------------------- events
    reb_ts: List[np.ndarray] = []
    reb_host: List[np.ndarray] = []
    reb_ver: List[np.ndarray] = []
    reb_reason: List[np.ndarray] = []
    reb_wave: List[np.ndarray] = []
    rollout_events: List[Dict[str, Any]] = []

    def add_reboots(ts, hosts, ver, reason, wave=0):
        reb_ts.append(np.asarray(ts, dtype=float))
        reb_host.append(np.asarray(hosts, dtype=np.int64))
        reb_ver.append(np.full(len(hosts), ver, dtype=np.int32))
        reb_reason.append(np.full(len(hosts), reason, dtype=np.int8))
        reb_wave.append(np.full(len(hosts), wave, dtype=np.int8))

    def control_group(candidates, canaries, k):
        """``k`` hosts of ``candidates`` (in order of preference) for a control group:
        one per canary in turn, from the canary's group (its cohort) with its instance
        type, else from its group, else any candidate."""
        grp = a["group_idx"]
        queues: Dict[Any, deque] = {"any": deque(candidates)}
        for h in candidates:
            queues.setdefault((grp[h], itype_idx[h]), deque()).append(h)
            queues.setdefault(grp[h], deque()).append(h)
        used: set = set()

        def take(key):
            q = queues.get(key, deque())
            while q and q[0] in used:
                q.popleft()
            return q.popleft() if q else None
        picked = []
        for i in range(min(k, len(candidates))):
            c = canaries[i % len(canaries)]
            h = take((grp[c], itype_idx[c]))
            h = take(grp[c]) if h is None else h
            h = take("any") if h is None else h
            used.add(h)
            picked.append(h)
        return np.asarray(picked, dtype=np.int64)

    for r in sc.rollouts:
        fi = [f.name for f in sc.fleets].index(r.fleet)
        vf, vt = versions.index(r.kernel_from), versions.index(r.kernel_to)
        eligible = np.nonzero((fleet_idx == fi) & (a["ver0"] == vf))[0]
        order = rng.permutation(eligible)
        if r.prefer_instance_types:
            pref = np.isin(itype_idx[order], [itypes.index(t) for t in r.prefer_instance_types])
            order = np.concatenate([order[pref], order[~pref]])
        total = len(order)
        done = 0
        t_wave = start + r.start_h * 3600.0
        rollback_ts = start + r.rollback_h * 3600.0 if r.rollback_h is not None else math.inf
        moved: List[np.ndarray] = []
        spread = r.reboot_spread_min * 60.0
        for wi, frac in enumerate(r.waves):
            if t_wave >= rollback_ts:
                break
            target = max(done + 1, int(round(frac * total))) if frac < 1 else total
            target = min(target, total)
            hosts = order[done:target]
            ts = t_wave + rng.uniform(0.0, spread, len(hosts))
            # the rollback halts the wave: reboots not yet begun are cancelled
            hosts, ts = hosts[ts < rollback_ts], ts[ts < rollback_ts]
            if wi == 0 and r.control_per_canary > 0 and len(hosts):
                control = control_group(order[target:][::-1], hosts,
                                        int(round(r.control_per_canary * len(hosts))))
                cts = t_wave + rng.uniform(0.0, spread, len(control))
                control, cts = control[cts < rollback_ts], cts[cts < rollback_ts]
                if len(control):
                    add_reboots(cts, control, REBOOT_KEEP_KERNEL, REASON_CONTROL, 1)
                    rollout_events.append(dict(
                        type="rollout", action="control", ts=t_wave, fleet=r.fleet,
                        kernel_from=r.kernel_from, kernel_to=r.kernel_from, wave=1,
                        wave_fraction=0.0, hosts=int(len(control)), hosts_total=0,
                        reboot_spread_s=spread,
                        instance_types=sorted({itypes[i] for i in itype_idx[control]})))
            if len(hosts):
                add_reboots(ts, hosts, vt, REASON_ROLLOUT, wi + 1)
                moved.append(hosts)
                rollout_events.append(dict(
                    type="rollout", action="start", ts=t_wave, fleet=r.fleet,
                    kernel_from=r.kernel_from, kernel_to=r.kernel_to, wave=wi + 1,
                    wave_fraction=frac, hosts=int(len(hosts)), hosts_total=int(target),
                    reboot_spread_s=spread,
                    instance_types=sorted({itypes[i] for i in itype_idx[hosts]})))
            done = target
            t_wave += r.wave_interval_h * 3600.0
            if r.pause_after_wave == wi + 1 and r.pause_h > 0:
                rollout_events.append(dict(
                    type="rollout", action="pause", ts=t_wave, fleet=r.fleet,
                    kernel_from=r.kernel_from, kernel_to=r.kernel_to, wave=wi + 1,
                    wave_fraction=frac, hosts=0, hosts_total=int(done),
                    resume_ts=t_wave + r.pause_h * 3600.0))
                t_wave += r.pause_h * 3600.0
        if r.rollback_h is not None and moved:
            back = np.concatenate(moved)
            add_reboots(rollback_ts + rng.uniform(0.0, spread, len(back)), back, vf,
                        REASON_ROLLBACK)
            rollout_events.append(dict(
                type="rollout", action="rollback", ts=rollback_ts, fleet=r.fleet,
                kernel_from=r.kernel_to, kernel_to=r.kernel_from, wave=None,
                wave_fraction=0.0, hosts=int(len(back)), hosts_total=0,
                reboot_spread_s=spread))

    days = sc.hours / 24.0
    k = rng.poisson(fl["random_reboot_per_host_day"] * days * n)
    if k:
        add_reboots(rng.uniform(start, end, k), rng.integers(0, n, k), REBOOT_KEEP_KERNEL,
                    REASON_RANDOM)

    # episodes: noisy neighbours (temporary) and failing disks (progressive, then the
    # host is repaired: a reboot ends it)
    ep = []
    k = rng.poisson(fl["noisy_neighbour_per_host_day"] * days * n)
    if k:
        s = rng.uniform(start - 3600.0, end, k)
        ep.append((s, rng.integers(0, n, k), s + rng.uniform(1800.0, 6 * 3600.0, k),
                   np.full(k, EP_NOISY), rng.uniform(0.2, 0.7, k)))
    k = rng.poisson(fl["failing_disk_per_host_day"] * days * n)
    if k:
        s = rng.uniform(start - 6 * 3600.0, end, k)
        e = s + rng.uniform(2 * 3600.0, 24 * 3600.0, k)
        h = rng.integers(0, n, k)
        ep.append((s, h, e, np.full(k, EP_DISK), rng.uniform(0.5, 0.9, k)))
        add_reboots(e, h, REBOOT_KEEP_KERNEL, REASON_DISK)
    if ep:
        ep_ts, ep_host, ep_end, ep_kind, ep_depth = (np.concatenate(x) for x in zip(*ep))
        o = np.argsort(ep_ts, kind="stable")
        ep_ts, ep_host, ep_end, ep_kind, ep_depth = (x[o] for x in (ep_ts, ep_host, ep_end, ep_kind, ep_depth))
    else:
        ep_ts = ep_end = ep_depth = np.zeros(0)
        ep_host = ep_kind = np.zeros(0, dtype=np.int64)

    if reb_ts:
        rts = np.concatenate(reb_ts)
        o = np.argsort(rts, kind="stable")
        rts = rts[o]
        rhost = np.concatenate(reb_host)[o]
        rver = np.concatenate(reb_ver)[o]
        rreason = np.concatenate(reb_reason)[o]
        rwave = np.concatenate(reb_wave)[o]
    else:
        rts = np.zeros(0)
        rhost = np.zeros(0, dtype=np.int64)
        rver = np.zeros(0, dtype=np.int32)
        rreason = np.zeros(0, dtype=np.int8)
        rwave = np.zeros(0, dtype=np.int8)
    down_s = rng.uniform(90.0, 360.0, len(rts))
    k = rng.poisson(fl["agent_outage_per_host_day"] * days * n)
    ag_ts = rng.uniform(start, end, k)
    ag_host = rng.integers(0, n, k)
    ag_end = ag_ts + rng.uniform(60.0, 1200.0, k)
    o = np.argsort(ag_ts, kind="stable")
    rollout_events.sort(key=lambda e: (e["ts"], e["fleet"]))

    return Plan(
        scenario=sc, seed=seed, n=n, host_id=host_id, fleet_idx=fleet_idx,
        group_idx=a["group_idx"].astype(np.int32), arch_page=a["arch_page"].astype(np.int32),
        fs_idx=a["fs_idx"].astype(np.int32), itype_idx=itype_idx, cpus=cpus.astype(np.int64),
        mem_bytes=mem_bytes, hw_speed=hw_speed, write_base=write_base, frag_max=frag_max,
        frag_tau_s=frag_tau_s, stall_base=stall_base, alloc_base=alloc_base,
        io_bytes=io_bytes, mem_used=mem_used, diurnal=diurnal, weekend=weekend,
        tz_h=a["tz"].astype(float), skew_s=skew_s, phase_s=phase_s, delay_s=delay_s,
        device_idx=device_idx, probe_base=probe_base, probe_offset=probe_offset,
        boot_ts0=boot_ts0, seq0=seq0, ver0=a["ver0"].astype(np.int32), itypes=itypes,
        versions=versions, releases=releases, release_names=release_names,
        fleet_names=[f.name for f in sc.fleets], reboot_ts=rts, reboot_host=rhost,
        reboot_ver=rver, reboot_reason=rreason, reboot_wave=rwave, reboot_down_s=down_s,
        agent_off_ts=ag_ts[o], agent_off_host=ag_host[o], agent_off_end=ag_end[o], ep_ts=ep_ts,
        ep_host=ep_host, ep_end=ep_end, ep_kind=ep_kind, ep_depth=ep_depth,
        rollout_events=rollout_events)


def kernel_tied_changes(sc: Scenario):
    return [c for c in sc.changes if c.kind in KERNEL_TIED_KINDS]
