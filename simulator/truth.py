"""Ground truth of a scenario: what was injected, where and when, so a detector can be
examined against it. Written as ``ground_truth.json`` beside the generated data.

``ground_truth(scenario)`` returns a list of dicts, each with a ``type``:

``change``   an injected effect. Keys: ``kind`` (``regression``, ``improvement``,
             ``load_shift``, ``hardware``), ``fleet``, ``role``, ``arch``, ``page_size``,
             ``fs`` (``None`` = all), ``kernel_from``/``kernel_to`` (release strings as the
             hosts report them; ``None`` for a load shift), ``metric`` and ``effect`` (the
             headline metric, a ratio new/old: 0.75 = 25 % lower), ``metrics`` (every
             metric's ratio, ``schema.KEY_METRICS`` names), ``frag_onset``/``frag_full``
             (the effect grows linearly with ``frag_unusable_1m`` between them and is
             complete above ``frag_full``; ``None`` = not fragmentation-gated),
             ``burst_share`` and ``burst_metrics`` (a tail-only change hits that share
             of the intervals with the burst ratios; ``metrics`` are then the ratios of
             the means over all intervals, and medians barely move),
             ``start_ts`` (first host exposed), ``end_ts`` (rollback or end of a load
             shift, else ``None``), ``hosts`` (hosts in the cohort), ``note``.
``rollout``  a rollout event: ``action`` (``start`` of a wave, ``pause``, ``rollback``,
             ``control``: baseline hosts rebooted with the first wave, keeping
             ``kernel_from``, so that hosts in fresh memory states run both kernels),
             ``ts``, ``fleet``, ``kernel_from``, ``kernel_to`` (version-build; releases
             differ per arch/page size), ``wave``, ``wave_fraction`` (cumulative),
             ``hosts`` (rebooted in this event), ``hosts_total``, ``reboot_spread_s``.
``cohort``   every (fleet, arch, page_size, fs) cohort a rollout touches, with
             ``kernel_from``/``kernel_to`` releases, ``hosts`` and ``expected``
             (``regression``, ``improvement`` or ``none``): the list a detector is
             scored on, false alarms included; ``mechanism_from``/``mechanism_to``: the
             kernels' classes on the cohort (``scenario.MECHANISMS``; ``affected``: its
             hosts attempt costly-order direct compaction once fragmented).

``write_files`` writes ``ground_truth.json`` as ``{"scenario": {name, seed, start_ts,
end_ts, hours, interval_s, hosts, fleets: [...], faults}, "truth": [the list above]}``.

``host_table(scenario)`` (written as ``ground_truth_hosts.csv``) lists every host: its
cohort labels, instance type, initial kernel release, and the rollout wave and times at
which it rebooted onto the new kernel (and back, on a rollback; or, for a control host,
without changing kernel): the canary set a detector can be scored against host by host.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Dict, List, Optional

from .fleet import build_plan
from .mechanism import cohort_mechanism
from .scenario import INSTANCE_TYPES, KERNEL_TIED_KINDS, Scenario, kernel_release


def _metrics(c, in_burst: bool = False) -> Dict[str, float]:
    """Ratios of the metrics' means; for a tail-only change (``burst_share`` < 1) the
    mean over all intervals, or with ``in_burst`` the ratio inside the hit intervals."""
    share = 1.0 if in_burst else c.burst_share

    def mean(ratio: float) -> float:
        return round(1.0 + share * (ratio - 1.0), 6)
    return {"write_mib_s": mean(c.write_throughput), "probe_mib_s": mean(c.write_throughput),
            "compact_stall_per_s": mean(c.compact_stall),
            "allocstall_per_s": mean(c.direct_reclaim),
            "pgscan_direct_per_s": mean(c.direct_reclaim)}


def _headline(m: Dict[str, float]) -> str:
    for k in ("write_mib_s", "compact_stall_per_s", "allocstall_per_s"):
        if m[k] != 1.0:
            return k
    return "write_mib_s"


def _iso(ts: Optional[float]) -> Optional[str]:
    if ts is None:
        return None
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).isoformat().replace("+00:00", "Z")


def ground_truth(scenario: Scenario, seed: Optional[int] = None) -> List[Dict[str, Any]]:
    """The scenario's ground truth (see the module doc). Deterministic for a seed."""
    sc = scenario
    seed = sc.seed if seed is None else int(seed)
    plan = build_plan(sc, seed)
    start = sc.start_ts
    out: List[Dict[str, Any]] = []
    events = plan.rollout_events

    def cohorts(fleet_name: str):
        f = sc.fleet(fleet_name)
        seen: Dict[tuple, Dict[str, Any]] = {}
        for g in f.groups:
            key = (g.arch, g.page_size, g.fs, g.kernel)
            if key in seen:
                seen[key]["hosts"] += g.hosts
            else:
                seen[key] = {"fleet": f.name, "role": f.role, "arch": g.arch,
                             "page_size": g.page_size, "fs": g.fs, "kernel": g.kernel,
                             "hosts": g.hosts}
        return list(seen.values())

    for r in sc.rollouts:
        starts = [e for e in events if e["fleet"] == r.fleet and e["kernel_to"] == r.kernel_to
                  and e["action"] == "start"]
        if not starts:
            continue
        first_ts = starts[0]["ts"]
        rb = [e["ts"] for e in events if e["fleet"] == r.fleet and e["action"] == "rollback"
              and e["kernel_from"] == r.kernel_to]
        end_ts = rb[0] if rb else None
        for co in cohorts(r.fleet):
            if co["kernel"] != r.kernel_from:
                continue
            rel_from = kernel_release(r.kernel_from, co["arch"], co["page_size"])
            rel_to = kernel_release(r.kernel_to, co["arch"], co["page_size"])
            expected = "none"
            for c in sc.changes:
                if c.kind not in KERNEL_TIED_KINDS or not c.matches(
                        co["fleet"], co["arch"], co["page_size"], co["fs"]):
                    continue
                if c.kernel == r.kernel_to:
                    m, mb = _metrics(c), _metrics(c, in_burst=True)
                    kind = c.kind
                elif c.kernel == r.kernel_from:
                    # leaving a kernel that carries the change: the opposite effect
                    m = {k: 1.0 / v for k, v in _metrics(c).items()}
                    mb = {k: 1.0 / v for k, v in _metrics(c, in_burst=True).items()}
                    kind = "improvement" if c.kind == "regression" else "regression"
                else:
                    continue
                metric = _headline(m)
                expected = kind
                out.append({
                    "type": "change", "kind": kind, "fleet": co["fleet"], "role": co["role"],
                    "arch": co["arch"], "page_size": co["page_size"], "fs": co["fs"],
                    "kernel_from": rel_from, "kernel_to": rel_to, "metric": metric,
                    "effect": m[metric], "metrics": m,
                    "frag_onset": c.frag_onset, "frag_full": c.frag_full,
                    "burst_share": c.burst_share, "burst_metrics": mb,
                    "start_ts": first_ts, "start": _iso(first_ts), "end_ts": end_ts,
                    "end": _iso(end_ts), "hosts": co["hosts"], "note": c.note})
            out.append({"type": "cohort", "fleet": co["fleet"], "role": co["role"],
                        "arch": co["arch"], "page_size": co["page_size"], "fs": co["fs"],
                        "kernel_from": rel_from, "kernel_to": rel_to, "hosts": co["hosts"],
                        "expected": expected, "start_ts": first_ts, "end_ts": end_ts,
                        "mechanism_from": cohort_mechanism(sc, r.kernel_from, co["arch"], co["fs"]),
                        "mechanism_to": cohort_mechanism(sc, r.kernel_to, co["arch"], co["fs"])})
        if r.prefer_instance_types:
            f = sc.fleet(r.fleet)
            fleet_types = {t for g in f.groups for t in g.instance_types}
            new = [INSTANCE_TYPES[t][3] for t in r.prefer_instance_types if t in fleet_types]
            old = [INSTANCE_TYPES[t][3] for t in fleet_types if t not in r.prefer_instance_types]
            if new and old:
                ratio = (sum(new) / len(new)) / (sum(old) / len(old))
                out.append({
                    "type": "change", "kind": "hardware", "fleet": r.fleet, "role": f.role,
                    "arch": None, "page_size": None, "fs": None, "kernel_from": r.kernel_from,
                    "kernel_to": r.kernel_to, "metric": "write_mib_s",
                    "effect": round(ratio, 4), "metrics": {"write_mib_s": round(ratio, 4),
                                                           "probe_mib_s": round(ratio, 4)},
                    "frag_onset": None, "frag_full": None, "start_ts": first_ts,
                    "start": _iso(first_ts), "end_ts": None, "end": None,
                    "hosts": int(starts[0]["hosts"]),
                    "note": "canary waves start on newer instance types "
                            f"({', '.join(r.prefer_instance_types)}): faster hardware, not a "
                            "kernel effect"})

    for c in sc.changes:
        if c.kind != "load_shift":
            continue
        at = start + c.at_h * 3600.0
        until = start + c.until_h * 3600.0 if c.until_h is not None else None
        hosts = sum(g.hosts for f in sc.fleets for g in f.groups
                    if c.matches(f.name, g.arch, g.page_size, g.fs))
        near = [e for e in events if e["action"] == "start"
                and (c.fleet is None or e["fleet"] == c.fleet) and abs(e["ts"] - at) <= 3600]
        m = {"write_mib_s": c.load, "compact_stall_per_s": c.load,
             "allocstall_per_s": c.load, "pgscan_direct_per_s": c.load}
        out.append({
            "type": "change", "kind": "load_shift", "fleet": c.fleet,
            "role": sc.fleet(c.fleet).role if c.fleet else None, "arch": c.arch,
            "page_size": c.page_size, "fs": c.fs, "kernel_from": None, "kernel_to": None,
            "metric": "write_mib_s", "effect": c.load, "metrics": m, "frag_onset": None,
            "frag_full": None, "start_ts": at, "start": _iso(at), "end_ts": until,
            "end": _iso(until), "hosts": hosts,
            "coincides_with_rollout": bool(near),
            "note": c.note or "demand changed on every kernel alike: not a kernel effect"})

    for e in events:
        d = dict(e)
        d["time"] = _iso(e["ts"])
        out.append(d)
    out.sort(key=lambda d: (d.get("start_ts", d.get("ts")) or 0.0, d["type"]))
    return out


def scenario_summary(sc: Scenario, seed: int) -> Dict[str, Any]:
    return {"name": sc.name, "description": sc.description, "seed": seed,
            "start_ts": sc.start_ts, "start": _iso(sc.start_ts),
            "end_ts": sc.start_ts + sc.hours * 3600.0,
            "end": _iso(sc.start_ts + sc.hours * 3600.0), "hours": sc.hours,
            "interval_s": sc.interval_s, "hosts": sc.hosts,
            "fleets": [{"name": f.name, "role": f.role, "workload": f.workload,
                        "hosts": f.hosts,
                        "groups": [{"hosts": g.hosts, "arch": g.arch,
                                    "page_size": g.page_size, "fs": g.fs,
                                    "instance_types": g.instance_types,
                                    "kernel": kernel_release(g.kernel, g.arch, g.page_size)}
                                   for g in f.groups]} for f in sc.fleets],
            "faults": dict(sc.faults), "source": sc.source}


def host_table(scenario: Scenario, seed: Optional[int] = None):
    """One row per host (see the module doc), as a polars DataFrame."""
    import numpy as np
    import polars as pl

    from .fleet import ARCH_PAGE, FS_NAMES, REASON_CONTROL, REASON_ROLLBACK, REASON_ROLLOUT

    sc = scenario
    seed = sc.seed if seed is None else int(seed)
    p = build_plan(sc, seed)
    n = p.n
    wave = np.zeros(n, dtype=np.int64)
    moved = np.full(n, np.nan)
    back = np.full(n, np.nan)
    control = np.full(n, np.nan)
    for ts, h, reason, w in zip(p.reboot_ts, p.reboot_host, p.reboot_reason, p.reboot_wave):
        if reason == REASON_ROLLOUT and np.isnan(moved[h]):
            moved[h], wave[h] = ts, w
        elif reason == REASON_ROLLBACK and np.isnan(back[h]):
            back[h] = ts
        elif reason == REASON_CONTROL:
            control[h] = ts
    fleets = [f for f in sc.fleets]
    return pl.DataFrame({
        "host_id": p.host_id,
        "fleet": [fleets[i].name for i in p.fleet_idx],
        "role": [fleets[i].role for i in p.fleet_idx],
        "arch": [ARCH_PAGE[i][0] for i in p.arch_page],
        "page_size": [ARCH_PAGE[i][1] for i in p.arch_page],
        "fs": [FS_NAMES[i] for i in p.fs_idx],
        "instance_type": [p.itypes[i] for i in p.itype_idx],
        "cpus": p.cpus, "mem_bytes": p.mem_bytes,
        "kernel_initial": [p.release_names[p.releases[v, a]] for v, a in zip(p.ver0, p.arch_page)],
        "rollout_wave": wave,
        "rollout_reboot_ts": pl.Series(moved).fill_nan(None),
        "rollback_reboot_ts": pl.Series(back).fill_nan(None),
        "control_reboot_ts": pl.Series(control).fill_nan(None),
    })


def exposure_ts(scenario: Scenario, seed: Optional[int] = None, *, hosts: int = 3,
                gate: float = 0.5) -> List[Dict[str, Any]]:
    """When each injected kernel-tied change first exists on ``hosts`` new-kernel hosts:
    the time the ``hosts``-th host rebooted onto the change's kernel reached the
    fragmentation at which the change is ``gate`` of its full size (``gate`` 0: the
    onset; changes not gated by fragmentation exist from the reboot). Under the
    scenario's physics (``physics.py``). One dict per change and cohort (``fleet``,
    ``arch``, ``page_size``, ``fs``, ``kernel_to`` release), with ``ts`` (None: fewer
    hosts ever got there)."""
    import numpy as np

    from .fleet import ARCH_PAGE, FS_NAMES, REASON_ROLLOUT
    from .physics import DEFAULT, frag_onset_times

    sc = scenario
    seed = sc.seed if seed is None else int(seed)
    p = build_plan(sc, seed)
    phys = getattr(sc, "physics", None) or DEFAULT
    rollout = p.reboot_reason == REASON_ROLLOUT
    out: List[Dict[str, Any]] = []
    for c in sc.changes:
        if c.kind not in KERNEL_TIED_KINDS or c.kernel not in p.versions:
            continue
        vi = p.versions.index(c.kernel)
        sel = rollout & (p.reboot_ver == vi)
        h = p.reboot_host[sel]
        boot = p.reboot_ts[sel] + 0.5 * p.reboot_down_s[sel]
        if c.frag_onset is None:
            ready = boot
        else:
            level = c.frag_onset + gate * (c.frag_full - c.frag_onset)
            ready = boot + frag_onset_times(phys, p.frag_max[h], p.frag_tau_s[h], level)
        for fi, f in enumerate(sc.fleets):
            for ai, (arch, page) in enumerate(ARCH_PAGE):
                for si, fs in enumerate(FS_NAMES):
                    if not c.matches(f.name, arch, page, fs):
                        continue
                    m = (p.fleet_idx[h] == fi) & (p.arch_page[h] == ai) & (p.fs_idx[h] == si)
                    if not m.any():
                        continue
                    t = np.sort(ready[m])
                    ts = float(t[hosts - 1]) if len(t) >= hosts and np.isfinite(t[hosts - 1]) else None
                    out.append({"fleet": f.name, "arch": arch, "page_size": page, "fs": fs,
                                "kernel_to": kernel_release(c.kernel, arch, page),
                                "kind": c.kind, "gate": gate, "hosts": hosts, "ts": ts})
    return out
