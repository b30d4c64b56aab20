"""The fleet's physics, stepped one sampling interval at a time for all hosts at once.

What a host reports in one interval follows from its load (diurnal and weekly cycle,
load shifts, a slow per-host wander and heavy-tailed interval noise), its hardware, its
memory fragmentation (builds with uptime towards a host-specific ceiling, resets at
reboot), its kernel (the scenario's injected changes, gated by fragmentation) and its
episodes (noisy neighbour, failing disk). Delivery faults (lost, late, duplicated
records, clock skew) are decided here too; ``frames.py`` turns steps into ordered chunks.

The model in one place, per host h at time t (rates per second):

    load      = fleet_cycle(t) * load_shifts(t) * exp(wander_h(t)) * noise_t3
    frag      = frag_max_h * (1 - exp(-uptime / tau_h))
    gate_c    = clip((frag - onset_c) / (full_c - onset_c), 0, 1)   per kernel change c
    write     = write_base_h * hw_h * load * (1 - 0.15 frag) * prod_c(1 + (w_c - 1) gate_c)
    stalls    = stall_base_h * load * (frag / 0.8)^3 * prod_c(1 + (s_c - 1) gate_c)
    reclaim   = alloc_base_h * load * (0.15 + frag)^2 * prod_c(1 + (r_c - 1) gate_c)

So a kernel change's ratio is exact, in expectation, between like hosts at
``frag >= frag_full``, and fresh canaries (frag near 0) show little of it; a fresh host
writes up to 15 % faster than a fragmented one on any kernel (the reboot bonus).

These are the default relations (``physics.DEFAULT``); a scenario's ``physics``
(``physics.Physics``) swaps in other forms and parameters for each of them.
The tracepoint counters (page-cache bytes and direct compaction attempts by order
bucket) follow from the kernel's mechanism class: ``mechanism.py``.

Counts are Poisson (normal approximation above a mean of 25). A stall storm (the
``outlier_share`` of intervals) multiplies stalls 5-50x. Reboots take a host away for
1.5-6 min and start a new boot id (seq continues); an agent outage leaves a gap after
which one record covers the whole gap (``interval_s`` longer, deltas to match).
"""

from __future__ import annotations

import math
from typing import Dict, List

import numpy as np

from foliowatch.schema import TRACEPOINT_COUNTERS

from .fleet import (ARCH_PAGE, EP_DISK, EP_NOISY, REBOOT_KEEP_KERNEL, Plan,
                    kernel_tied_changes, probe_steps)
from .physics import DEFAULT as DEFAULT_PHYSICS
from .mechanism import MechanismModel

MIB = 1048576.0

COUNTERS = ("compact_stall", "compact_fail", "compact_success", "compact_migrate_scanned",
            "compact_free_scanned", "allocstall_normal", "allocstall_movable",
            "pgscan_direct", "pgsteal_direct", "pgscan_kswapd", "pgsteal_kswapd",
            "nr_dirtied", "nr_written", "thp_fault_alloc", "thp_fault_fallback",
            "psi_memory_some_us", "psi_memory_full_us") + TRACEPOINT_COUNTERS
GAUGES = ("mem_available_bytes", "mem_free_bytes", "uptime_s", "frag_unusable_1m",
          "frag_unusable_order_2", "frag_unusable_order_4", "frag_unusable_order_9")
PROBE_BYTES = 256 * 1048576
PROBE_CHUNK = 1048576


class Stepper:
    """Plays a ``Plan`` forward; ``step(i)`` returns the arrays of interval ``i``."""

    def __init__(self, plan: Plan):
        self.p = p = plan
        sc = p.scenario
        self.rng = np.random.default_rng([p.seed, 0x57E9])
        self.interval = sc.interval_s
        self.start = sc.start_ts
        n = p.n
        self.ver = p.ver0.copy()
        self.boot_ts = p.boot_ts0.copy()
        self.down_until = np.full(n, -math.inf)
        self.agent_down_until = np.full(n, -math.inf)
        self.missed = np.zeros(n, dtype=np.int64)   # samples the stopped agent did not take
        self.ag_ptr = int(np.searchsorted(p.agent_off_ts, self.start, side="right"))
        self.seq = p.seq0.astype(np.int64).copy()
        self.boot_idx = np.arange(n, dtype=np.int64)
        self.boot_ids: List[str] = _boot_ids(self.rng, n)
        self.boots = np.zeros(n, dtype=np.int64)   # reboots seen during the simulation
        # when each host booted the kernel it runs, if that changed its kernel during the
        # simulation (the agent's denser probe in its first hours on it)
        self.kernel_since = np.full(n, -math.inf)
        # the relations above, or alternative ones (``physics.py``; scenario.physics)
        self.phys = ph = getattr(sc, "physics", None) or DEFAULT_PHYSICS
        self.noise_state: Dict[str, np.ndarray] = {}
        self.hw_write = ph.hw_write(p.hw_speed)
        self.hw_stall = ph.hw_stall(p.hw_speed)
        self.wander = self.rng.normal(0.0, ph.wander_sd, n)
        self.phi = math.exp(-self.interval / ph.wander_tau_s)
        self.ep_kind = np.zeros(n, dtype=np.int8)
        self.ep_start = np.zeros(n)
        self.ep_end = np.zeros(n)
        self.ep_depth = np.zeros(n)
        self.reb_ptr = int(np.searchsorted(p.reboot_ts, self.start, side="right"))
        self.ep_ptr = 0
        # episodes already under way at the start
        self._start_episodes(self.start)
        self.cpu_scale = p.cpus / 64.0
        # static masks of the kernel-tied changes: (cohort mask, version index, ratios, gate)
        self.kchanges = []
        for c in kernel_tied_changes(sc):
            mask = np.zeros(n, dtype=bool)
            for gi, fl, g in _groups(sc):
                if c.matches(fl.name, g.arch, g.page_size, g.fs):
                    mask |= p.group_idx == gi
            self.kchanges.append((mask, p.versions.index(c.kernel), c.write_throughput,
                                  c.compact_stall, c.direct_reclaim, c.frag_onset, c.frag_full,
                                  c.burst_share))
        self.shifts = []
        for c in sc.changes:
            if c.kind == "load_shift":
                mask = np.zeros(n, dtype=bool)
                for gi, fl, g in _groups(sc):
                    if c.matches(fl.name, g.arch, g.page_size, g.fs):
                        mask |= p.group_idx == gi
                until = self.start + c.until_h * 3600 if c.until_h is not None else math.inf
                self.shifts.append((mask, self.start + c.at_h * 3600, until, c.load))
        fl = sc.faults
        self.p_lost, self.p_late, self.p_dup = fl["lost"], fl["late"], fl["duplicate"]
        self.p_out = fl["outlier_share"]
        self.late_min, self.late_max = fl["late_min_s"], fl["late_max_s"]
        self.probe_steps = probe_steps(fl["probe_every_s"], self.interval)
        self.probe_new_steps = (
            probe_steps(min(fl["probe_new_kernel_every_s"], fl["probe_every_s"]), self.interval)
            if fl["probe_new_kernel_every_s"] > 0 and self.probe_steps else 0)
        self.probe_new_s = fl["probe_new_kernel_h"] * 3600.0
        self.page_size = np.array([ap[1] for ap in ARCH_PAGE])[p.arch_page]
        self.mem_f = p.mem_bytes.astype(float)
        self.mechanism = MechanismModel(p, p.seed)

    # -------------------------------------------------------------- events
    def _start_episodes(self, t: float) -> None:
        p = self.p
        j = int(np.searchsorted(p.ep_ts, t, side="right"))
        if j > self.ep_ptr:
            sl = slice(self.ep_ptr, j)
            h = p.ep_host[sl]
            live = p.ep_end[sl] > t
            h = h[live]
            self.ep_kind[h] = p.ep_kind[sl][live]
            self.ep_start[h] = p.ep_ts[sl][live]
            self.ep_end[h] = p.ep_end[sl][live]
            self.ep_depth[h] = p.ep_depth[sl][live]
            self.ep_ptr = j

    def _reboots(self, t: float) -> None:
        p = self.p
        j = int(np.searchsorted(p.reboot_ts, t, side="right"))
        if j <= self.reb_ptr:
            return
        for k in range(self.reb_ptr, j):  # reboots are rare: a plain loop is fine
            h = p.reboot_host[k]
            ts = p.reboot_ts[k]
            if ts < self.down_until[h]:
                if p.reboot_ver[k] == REBOOT_KEEP_KERNEL:
                    continue  # already rebooting
                # a kernel change asked for while the host is still rebooting (a
                # rollback meeting a rollout reboot): it reboots again once up
                ts = self.down_until[h] + 30.0
            down = p.reboot_down_s[k]
            self.down_until[h] = ts + down
            self.boot_ts[h] = ts + 0.5 * down     # kernel up half way; agent after
            if p.reboot_ver[k] != REBOOT_KEEP_KERNEL:
                if p.reboot_ver[k] != self.ver[h]:
                    self.kernel_since[h] = self.boot_ts[h]
                self.ver[h] = p.reboot_ver[k]
            self.boot_idx[h] = len(self.boot_ids)
            self.boot_ids.append(_boot_ids(self.rng, 1)[0])
            self.boots[h] += 1
            self.agent_down_until[h] = -math.inf   # the agent starts with the new boot
            self.missed[h] = 0
            if self.ep_kind[h] == EP_DISK and self.ep_end[h] <= ts + 1:
                self.ep_kind[h] = 0   # disk replaced
        self.reb_ptr = j

    # -------------------------------------------------------------- one interval
    def step(self, i: int) -> Dict[str, np.ndarray]:
        p, rng, dtv = self.p, self.rng, self.interval
        n = p.n
        t_end = self.start + (i + 1) * dtv            # nominal end of the interval
        t_host = t_end + p.phase_s                    # each agent samples at its own phase
        # a reboot that starts before a host's sampling moment in this interval takes
        # it down for this sample (hosts sample at their own phase within the interval)
        self._reboots(t_end + dtv)
        self._start_episodes(t_end)
        ended = (self.ep_kind > 0) & (self.ep_end <= t_end)
        self.ep_kind[ended] = 0

        j = int(np.searchsorted(p.agent_off_ts, t_end, side="right"))
        if j > self.ag_ptr:
            h = p.agent_off_host[self.ag_ptr:j]
            self.agent_down_until[h] = np.maximum(self.agent_down_until[h],
                                                  p.agent_off_end[self.ag_ptr:j])
            self.ag_ptr = j
        # who reports: up, agent running, and a full interval since the agent started
        host_up = t_host >= self.down_until + dtv
        agent_up = t_host >= self.agent_down_until
        up = host_up & agent_up
        # the agent keeps its last sample across a restart, so its first record after an
        # outage covers the whole gap: a longer interval_s, larger deltas
        self.missed += host_up & ~agent_up
        span = np.where(up, self.missed + 1, 1) * dtv
        self.missed[up] = 0
        u = rng.random(n)                              # one draw decides delivery faults
        seq = self.seq.copy()
        self.seq += up                                 # lost records still use a seq

        # load
        hour = ((t_host / 3600.0 + p.tz_h) % 24.0)
        day = np.floor((t_host / 3600.0 + p.tz_h) / 24.0 + 3.0) % 7.0   # 0 = Monday
        ph = self.phys
        cycle = ph.diurnal(hour, p.diurnal)
        cycle *= np.where(day >= 5.0, p.weekend, 1.0)
        for mask, at, until, ratio in self.shifts:
            if at <= t_end < until:
                cycle = np.where(mask, cycle * ratio, cycle)
        self.wander = self.phi * self.wander + math.sqrt(1 - self.phi ** 2) * ph.wander_sd * rng.standard_normal(n)
        noise = ph.interval_noise(rng, n, self.noise_state)
        load = cycle * np.exp(self.wander) * noise

        # memory
        uptime = np.maximum(t_host - self.boot_ts, 1.0)
        frag = ph.fragmentation(p.frag_max, uptime, p.frag_tau_s)
        kw = np.ones(n)
        ks = np.ones(n)
        kr = np.ones(n)
        for mask, vi, w, s, r, onset, full, burst in self.kchanges:
            on = mask & (self.ver == vi)
            if burst < 1.0:
                on &= (u * 7919.0) % 1.0 < burst
            if not on.any():
                continue
            if onset is None:
                gate = on.astype(float)
            else:
                gate = np.clip((frag - onset) / (full - onset), 0.0, 1.0) * on
            if w != 1.0:
                kw *= 1.0 + (w - 1.0) * gate
            if s != 1.0:
                ks *= 1.0 + (s - 1.0) * gate
            if r != 1.0:
                kr *= 1.0 + (r - 1.0) * gate

        # episodes
        epw = np.ones(n)
        if self.ep_kind.any():
            noisy = self.ep_kind == EP_NOISY
            epw = np.where(noisy, 1.0 - self.ep_depth, epw)
            disk = self.ep_kind == EP_DISK
            prog = np.clip((t_end - self.ep_start) / np.maximum(self.ep_end - self.ep_start, 1.0), 0, 1)
            epw = np.where(disk, 1.0 - self.ep_depth * prog, epw)
        outlier = u >= 1.0 - self.p_out

        write_mib = p.write_base * self.hw_write * load * (1.0 - ph.write_frag_penalty * frag) * kw * epw
        write_bytes = np.rint(write_mib * (MIB * span)).astype(np.int64)
        write_ios = np.rint(write_bytes / p.io_bytes).astype(np.int64)
        nr_dirtied = write_bytes // self.page_size
        nr_written = np.rint(nr_dirtied * (0.97 + 0.06 * (u * 7.0 % 1.0))).astype(np.int64)

        stall_rate = p.stall_base * ph.load_power(load, ph.stall_load_exp) * ph.stall_curve(frag) * ks
        if ph.hw_stall_exp != 0.0:
            stall_rate = stall_rate * self.hw_stall
        stall_rate = np.where(outlier, stall_rate * (5.0 + 45.0 * (u * 13.0 % 1.0)) + 5.0, stall_rate)
        stalls = _event_counts(rng, stall_rate * span)
        fail_share = 0.35 + 0.55 * frag
        compact_fail = np.rint(stalls * fail_share).astype(np.int64)
        compact_success = stalls - compact_fail
        migrate = np.rint(stalls * 2600.0 * (1.0 + frag) * noise).astype(np.int64)
        free_scanned = np.rint(stalls * 11000.0 * (1.0 + frag) * noise).astype(np.int64)
        alloc_rate = p.alloc_base * ph.load_power(load, ph.reclaim_load_exp) * ph.reclaim_curve(frag) * kr
        if ph.hw_stall_exp != 0.0:
            alloc_rate = alloc_rate * self.hw_stall
        allocs = _event_counts(rng, alloc_rate * span)
        # about a fifth of direct reclaim entries come from movable-zone allocations
        alloc_movable = np.floor(allocs * 0.2 + (u * 53.0) % 1.0).astype(np.int64)
        alloc_normal = allocs - alloc_movable
        pgscan_direct = np.rint(allocs * 480.0 * noise).astype(np.int64)
        pgsteal_direct = np.rint(pgscan_direct * 0.82).astype(np.int64)
        pgscan_kswapd = np.rint(nr_dirtied * (0.5 + 0.4 * frag)).astype(np.int64)
        pgsteal_kswapd = np.rint(pgscan_kswapd * 0.9).astype(np.int64)
        thp_rate = self.cpu_scale * load * 2.0
        thp_alloc = np.rint(thp_rate * (1.0 - frag) * span).astype(np.int64)
        thp_fallback = np.rint(thp_rate * frag * span).astype(np.int64)
        span_us = span * 1e6
        psi_some = ph.psi_some_us(span_us, load, stalls, allocs, frag)
        psi_some = np.rint(psi_some).astype(np.int64)
        psi_full = np.rint(psi_some * 0.15).astype(np.int64)

        frag_obs = np.clip(frag + 0.02 * (u * 31.0 % 1.0 - 0.5), 0.0, 0.995)
        per_order = self._per_order(frag_obs)
        mem_avail = self.mem_f * np.clip(1.0 - p.mem_used * (0.92 + 0.08 * load), 0.02, 0.98)
        mem_free = mem_avail * (0.04 + 0.3 * (1.0 - frag))

        out = {
            "up": up, "u": u, "seq": seq, "t_host": t_host,
            "ts": t_host + p.skew_s, "interval_s": span,
            "emit_ts": t_host + p.delay_s,
            "boot_idx": self.boot_idx.copy(), "release_idx": p.releases[self.ver, p.arch_page],
            "compact_stall": stalls, "compact_fail": compact_fail,
            "compact_success": compact_success, "compact_migrate_scanned": migrate,
            "compact_free_scanned": free_scanned, "allocstall_normal": alloc_normal,
            "allocstall_movable": alloc_movable, "pgscan_direct": pgscan_direct,
            "pgsteal_direct": pgsteal_direct, "pgscan_kswapd": pgscan_kswapd,
            "pgsteal_kswapd": pgsteal_kswapd, "nr_dirtied": nr_dirtied,
            "nr_written": nr_written, "thp_fault_alloc": thp_alloc,
            "thp_fault_fallback": thp_fallback, "psi_memory_some_us": psi_some,
            "psi_memory_full_us": psi_full,
            "mem_available_bytes": np.floor(mem_avail / 4096.0) * 4096.0,
            "mem_free_bytes": np.floor(mem_free / 4096.0) * 4096.0,
            "uptime_s": np.round(uptime, 1), "frag_unusable_1m": np.round(frag_obs, 4),
            "frag_unusable_order_2": per_order[0], "frag_unusable_order_4": per_order[1],
            "frag_unusable_order_9": per_order[2],
            "write_bytes": write_bytes, "write_ios": write_ios,
            "frag_true": frag, "write_gate": kw,
            **self.mechanism.counters(self.ver, write_bytes, frag, stalls),
        }
        if self.probe_steps:
            has = up & ((i + p.probe_offset) % self.probe_steps == 0)
            if self.probe_new_steps:
                fresh = t_host - self.kernel_since < self.probe_new_s
                has |= up & fresh & ((i + p.probe_offset) % self.probe_new_steps == 0)
            idx = np.nonzero(has)[0]
            pm = (p.probe_base[idx] * (1.0 - ph.write_frag_penalty * frag[idx]) * kw[idx] * epw[idx]
                  * np.exp(0.05 * rng.standard_normal(len(idx))))
            secs = PROBE_BYTES / MIB / pm
            out["probe_idx"] = idx
            out["probe_mib_s"] = np.round(pm, 2)
            out["probe_seconds"] = np.round(secs, 4)
            out["probe_compact_stall"] = rng.poisson(stall_rate[idx] * secs * 4.0)
            out["probe_allocstall"] = rng.poisson(alloc_rate[idx] * secs * 2.0)
        return out

    def _per_order(self, frag1m: np.ndarray):
        # Share of free memory unusable for an order-k block. 1 MiB is order 8 with 4K
        # pages and order 4 with 64K pages; smaller orders are easier to satisfy.
        order_1m = np.where(self.page_size == 65536, 4.0, 8.0)
        f = np.clip(frag1m, 1e-6, 0.999)
        return [np.round(np.clip(f ** (order_1m / k), 0.0, 0.999), 4) for k in (2.0, 4.0, 9.0)]


def _event_counts(rng: np.random.Generator, lam: np.ndarray) -> np.ndarray:
    """Poisson counts; above a mean of 25 the normal approximation (numpy's Poisson
    sampler costs ~150 ns a draw there, and a fleet draws millions per second)."""
    big = lam > 25.0
    if not big.any():
        return rng.poisson(lam)
    out = np.empty(lam.shape, dtype=np.int64)
    small = ~big
    out[small] = rng.poisson(lam[small])
    lb = lam[big]
    out[big] = np.maximum(np.rint(lb + np.sqrt(lb) * rng.standard_normal(len(lb))), 0)
    return out


def _boot_ids(rng: np.random.Generator, n: int) -> List[str]:
    h = rng.bytes(16 * n).hex()
    return [f"{h[i:i + 8]}-{h[i + 8:i + 12]}-4{h[i + 13:i + 16]}-a{h[i + 17:i + 20]}-{h[i + 20:i + 32]}"
            for i in range(0, 32 * n, 32)]


def _groups(sc):
    gi = 0
    for f in sc.fleets:
        for g in f.groups:
            yield gi, f, g
            gi += 1
