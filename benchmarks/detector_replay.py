"""The detector replayed in time order on fleets under random simulator physics.

    .venv/bin/python benchmarks/detector_replay.py --only false [--runs 18] [--step 60]
    .venv/bin/python benchmarks/detector_replay.py --only speed [--seeds 10] [--step 5]
    .venv/bin/python benchmarks/detector_replay.py --only costless [--seeds 10] [--step 10]
    .venv/bin/python benchmarks/detector_replay.py --totals RUNS.jsonl [...]

Everything runs in process (simulator -> host windows -> ``analyze`` with a
``RegressionState`` at successive as-of times, as ``detect --follow`` would); no Kafka.
Each run draws its physics with ``simulator.physics.Physics.random(seed)``: other
forms for fragmentation growth, compaction and reclaim, PSI, hardware, diurnal shape
and noise than the ones the detector was written against.

``false``: rollouts with no kernel effect (control, load shift, improvement, canaries on
new hardware, a rollback, late waves that leave a few long-running baseline hosts).
``--jsonl FILE``: one line per run, appended as each run finishes (its figures, every
alarm's evidence, the commit evaluated), so that a stopped series keeps what it
measured; ``--totals FILE`` (alone) sums such files. ``--data DIR``: the simulated host
windows of each (scenario, seed, copies, scale, hours) are kept there as Parquet and
read back by a later run (a rerun after a rule change evaluates the same fleets without
simulating them again).
The scenario's fleet is replicated ``--copies`` times at ``--scale`` of its size (many
small independent cohorts; each copy's rollout shifted by up to 4 h). A cohort-day is
one cohort (fleet, role, arch, page size, fs) evaluated for one day from the moment its
rollout began. Every open record is a false alarm (an improvement is not a regression).

``speed``: the seed case (0.75x write throughput on arm64 4K XFS, 2,000 hosts), one
physics per seed (seed 0 of the list: the default physics). The clock starts when the
regression exists on 3 new-kernel hosts (``simulator.truth.exposure_ts``: the third
canary's memory reaches the fragmentation at which the change is at half its size;
``onset`` columns: at which it begins). Evaluations every ``--step`` minutes through the
canary (1 %) wave. ``--start-before M``: the evaluations begin M minutes before the
regression is at half size on 3 canaries instead of at the first canary (cheaper; an
earlier start could only find it earlier, so the figures stay an upper bound).
``--tracepoints``: the hosts' tracepoint counters are kept, so the detector has the
mechanism evidence (``detector.mechanism``) as well; without it, as a fleet without the
collector, only the vmstat, PSI and write metrics.

``costless``: the seed case's kernel with its mechanism and without its cost: the new
kernel's arm64 build still attempts costly-order direct compaction on fragmented memory
(tracepoint counters kept), but no write, stall or reclaim effect is injected. One
physics per seed, evaluations every ``--step`` minutes through the canary and 10 %
waves. The mechanism is the new kernel's, so a suspicion is right; a confirmation says
the writes regressed, and they did not: every confirmed record is a false one.

``small``: 5 % effects (``small-effect-5``: 0.95x writes on arm64 4K XFS, 4,000 hosts),
one physics per run, evaluations every ``--step`` minutes through the 10 % wave; a run
meets the target when the affected cohort is confirmed by the wave's end.

``--new-kernel-probes S`` (every mode): the hosts also run the write probe every S seconds
in their first hours on a kernel they had not run before (the agent's
``agent.probe.new_kernel_every_s``; the scenario's ``probe_new_kernel_h``), besides every
``probe_every_s`` (30 min) throughout; without it the fleet probes every 30 min only.

``--control-per-canary R`` (every mode): with each rollout's first wave, R baseline hosts
per canary reboot and keep the old kernel (``[[rollout]] control_per_canary``): hosts in
fresh memory states on both kernels, which is what the comparison of canaries needs.

``rollback``: the seed case rolled back 2 h after the regression exists on 3 canaries
(``exposure_ts`` at half size; every host on the new kernel reboots back); evaluations
every ``--step`` minutes until 2 h after the rollback; the target is a record confirmed,
then resolved. ``--tracepoints``: as for ``speed``, with the seed case's mechanism declared
for the new kernel's arm64 build.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Dict, List, Optional

import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parent))
from detector_eval import KEEP, grid, replicate  # noqa: E402
from detector_scenarios import fold_records, host_windows  # noqa: E402

from foliowatch.detector.analysis import AnalysisCache, DetectorConfig, analyze  # noqa: E402
from foliowatch.detector.attribution import kernel_changes  # noqa: E402
from foliowatch.detector.mechanism import ATTEMPTS, WRITTEN  # noqa: E402
from foliowatch.detector.records import RegressionState  # noqa: E402
from foliowatch.simulator import load_scenario  # noqa: E402
from foliowatch.simulator.physics import Physics  # noqa: E402
from foliowatch.simulator.scenario import KernelMechanism  # noqa: E402
from foliowatch.simulator.truth import exposure_ts  # noqa: E402


# what the detector's mechanism evidence reads (``detector.mechanism``)
MECHANISM_COLUMNS = [ATTEMPTS, WRITTEN]


def probing(sc, new_kernel_every_s: float) -> str:
    """Set ``sc``'s hosts probing every ``new_kernel_every_s`` in their first hours on a
    kernel they had not run before (the agent's ``agent.probe.new_kernel_every_s``; the
    hours are the scenario's ``probe_new_kernel_h``), as well as every ``probe_every_s``
    throughout; 0 leaves the scenario as it is. Returns the tail that tells the kept host
    windows of such a fleet apart in ``--data`` ("" for 0)."""
    if not new_kernel_every_s:
        return ""
    sc.faults["probe_new_kernel_every_s"] = float(new_kernel_every_s)
    return f"-p{new_kernel_every_s:g}"


def controls(sc, per_canary: float) -> str:
    """Give each of ``sc``'s rollouts a control group: ``per_canary`` baseline hosts per
    canary reboot with the first wave and keep the old kernel (the scenario's
    ``control_per_canary``); 0 leaves the scenario as it is. Returns the tail that tells
    the kept host windows of such a fleet apart in ``--data`` ("" for 0)."""
    if not per_canary:
        return ""
    for r in sc.rollouts:
        r.control_per_canary = float(per_canary)
    return f"-c{per_canary:g}"


def _no_effect(sc):
    sc.changes = [c for c in sc.changes if c.kind not in ("regression",)]
    return sc


def late_waves(sc):
    """Waves up to 97 %: the last baseline hosts are few and have run for weeks, the new
    kernel's for hours."""
    r = sc.rollouts[0]
    r.waves = [0.01, 0.10, 0.50, 0.90, 0.97]
    r.wave_interval_h = 6.0
    r.pause_after_wave, r.pause_h = None, 0.0
    r.start_h = 4.0
    sc.hours = 40.0
    return sc


# name -> (scenario file, change to it)
NO_EFFECT = {
    "control": ("control-no-regression", None),
    "load-shift": ("load-shift", None),
    "improvement": ("improvement", None),
    "new-hardware": ("canary-new-hardware", None),
    "rollback": ("rollback", _no_effect),
    "late-waves": ("control-no-regression", late_waves),
}


def _commit() -> str:
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--",
                                "detector", "simulator"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "unknown"
    return head + ("+uncommitted" if dirty else "")


def _lean_host_windows(sc) -> pl.DataFrame:
    """``detector_scenarios.host_windows`` holding only the detector's columns (``KEEP``)
    of each folded chunk: the full-width chunks, their concatenation and its sorted copy
    took a 2,000-host, 48 h fleet past 6 GB."""
    from foliowatch.simulator import simulate_frame
    df = pl.concat([fold_records(chunk, 60).select(KEEP) for chunk in simulate_frame(sc)],
                   rechunk=True)
    keys = ["window_start", "fleet", "role", "arch", "page_size", "fs", "kernel", "host_id", "boot_id"]
    if df.select(keys).is_duplicated().any():
        df = df.sort("interval_s_sum", descending=True).unique(subset=keys, keep="first")
    return df.sort("window_start", "host_id")


def _spilled_host_windows(sc, path: Path) -> pl.DataFrame:
    """``_lean_host_windows`` written to ``path`` without holding the fleet twice: each
    folded chunk goes to a part file, then ``_merge_parts``. ``small-effect-5`` (4,000
    hosts, 26.5 h) held whole peaked at 7 GB, and one sort of its 6.4 M windows at 4 GB."""
    from foliowatch.simulator import simulate_frame
    parts = path.with_name(path.name + ".parts")
    parts.mkdir(parents=True, exist_ok=True)
    for k, chunk in enumerate(simulate_frame(sc)):
        fold_records(chunk, 60).select(KEEP).write_parquet(parts / f"{k:05d}.parquet")
        del chunk
    _merge_parts(parts, path)
    return pl.read_parquet(path)


def _merge_parts(parts: Path, path: Path, slice_h: int = 2) -> None:
    """The part files of ``_spilled_host_windows`` as one file sorted by window and host,
    a window split across delivery chunks (late records: they are minutes late, so its
    parts fall in one slice of ``slice_h`` hours) merged as ``_lean_host_windows`` does.
    One slice in memory at a time."""
    keys = ["window_start", "fleet", "role", "arch", "page_size", "fs", "kernel", "host_id", "boot_id"]
    lf = pl.scan_parquet(str(parts / "[0-9]*.parquet"))
    lo, hi = lf.select(pl.col("window_start").min().alias("lo"),
                       pl.col("window_start").max().alias("hi")).collect().row(0)
    slices = []
    t, k = lo, 0
    while t <= hi:
        u = t + timedelta(hours=slice_h)
        part = lf.filter((pl.col("window_start") >= t) & (pl.col("window_start") < u)).collect()
        if part.select(keys).is_duplicated().any():
            part = part.sort("interval_s_sum", descending=True).unique(subset=keys, keep="first")
        out = parts / f"slice-{k:04d}.parquet"
        part.sort("window_start", "host_id").write_parquet(out)
        slices.append(out)
        t, k = u, k + 1
    pl.scan_parquet([str(x) for x in slices]).sink_parquet(str(path) + ".tmp")
    os.replace(str(path) + ".tmp", path)
    for f in parts.iterdir():
        f.unlink()
    parts.rmdir()


def _simulated(name: str, seed: int, copies: int, scale: float, hours: Optional[float],
               data: Optional[str], new_kernel_probes: float = 0.0,
               control_per_canary: float = 0.0):
    """The run's host windows and physics: read back from ``data`` when simulated before."""
    base, change = NO_EFFECT[name]
    sc = load_scenario(base, interval_s=60, seed=seed)
    if change:
        sc = change(sc)
    if hours:
        sc.hours = hours
    sc = replicate(sc, copies, scale, seed)
    sc.physics = Physics.random(seed)
    tail = probing(sc, new_kernel_probes) + controls(sc, control_per_canary)
    path = (Path(data) / f"{name}-s{seed}-c{copies}-x{scale:g}-h{sc.hours:g}{tail}.parquet") if data else None
    t0 = time.perf_counter()
    if path is not None and path.exists():
        df = pl.read_parquet(path)
    else:
        df = _lean_host_windows(sc)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            df.write_parquet(str(path) + ".tmp")
            os.replace(str(path) + ".tmp", path)
    return sc, df, time.perf_counter() - t0


def note_open_records(state: RegressionState, t: datetime, seen: Dict[str, Dict]) -> None:
    """Each open record of ``state`` at ``t`` into ``seen`` by id: when first seen, when
    first confirmed ("confirmed_at"), its latest status level and its latest record."""
    for rec in state.open_records():
        d = seen.setdefault(rec.id, {"first": t, "status": rec.status, "rec": rec})
        if rec.status == "confirmed" and "confirmed_at" not in d:
            d["status"], d["confirmed_at"] = "confirmed", t
        d["rec"] = rec


def run_false(name: str, seed: int, copies: int, scale: float, step: int,
              hours: Optional[float], data: Optional[str] = None,
              new_kernel_probes: float = 0.0, control_per_canary: float = 0.0) -> Dict:
    sc, df, sim_s = _simulated(name, seed, copies, scale, hours, data, new_kernel_probes,
                               control_per_canary)
    ch = kernel_changes(df)
    first = ch["at"].min()
    end = df["window_start"].max()
    # cohort-days: each cohort from its own first kernel change to the end
    starts = (ch.join(df.select("host_id", "fs").unique(), on="host_id")
              .group_by("fleet", "arch", "page_size", "fs").agg(pl.col("at").min().alias("ch_at")))
    cohort_days = sum((end - t).total_seconds() / 86400 for t in starts["ch_at"])
    state = RegressionState(None)
    cache = AnalysisCache()
    alarms: Dict[str, Dict] = {}
    evals, cpu = [], []
    for t in grid(first + timedelta(minutes=step), end, step):
        w0, c0 = time.perf_counter(), time.process_time()
        a = analyze(df, as_of=t, config=DetectorConfig(changepoints=False), cache=cache)
        evals.append(time.perf_counter() - w0)
        cpu.append(time.process_time() - c0)
        state.update(a.candidates, a.rolled_back, a.as_of)
        note_open_records(state, t, alarms)
    return {"name": name, "seed": seed, "physics": sc.physics, "cohorts": starts.height,
            "cohort_days": cohort_days, "alarms": alarms, "sim_s": sim_s,
            "eval_s": statistics.median(evals) if evals else 0.0,
            "eval_cpu_s": statistics.median(cpu) if cpu else 0.0, "evals": len(evals),
            "hosts": sc.hosts, "hours": sc.hours}


def _alarm_line(name: str, seed: int, rid: str, a: Dict) -> str:
    rec = a["rec"]
    return (f"- {name} seed {seed}: {rid} {a['status']} at {a['first']:%d %H:%M}: {rec.metric} "
            f"({rec.statistic}) x{rec.effect:.3f} n={rec.hosts_new}/{rec.hosts_base}; "
            + "; ".join(rec.reasons))


def _jsonl_row(r: Dict, args, commit: str) -> Dict:
    return {"scenario": r["name"], "seed": r["seed"], "physics": r["physics"].summary(),
            "hosts": r["hosts"], "hours": r["hours"], "cohorts": r["cohorts"],
            "cohort_days": round(r["cohort_days"], 3), "copies": args.copies, "scale": args.scale,
            "step_min": args.step, "new_kernel_probes_s": args.new_kernel_probes,
            "control_per_canary": args.control_per_canary, "evals": r["evals"], "eval_s": round(r["eval_s"], 2),
            "eval_cpu_s": round(r["eval_cpu_s"], 2), "sim_s": round(r["sim_s"], 1),
            "suspected": sum(1 for a in r["alarms"].values() if a["status"] == "suspected"),
            "confirmed": sum(1 for a in r["alarms"].values() if a["status"] == "confirmed"),
            "alarms": [{"id": rid, "status": a["status"], "first": a["first"].isoformat(),
                        "metric": a["rec"].metric, "statistic": a["rec"].statistic,
                        "effect": a["rec"].effect, "hosts_new": a["rec"].hosts_new,
                        "hosts_base": a["rec"].hosts_base, "reasons": a["rec"].reasons,
                        "line": _alarm_line(r["name"], r["seed"], rid, a)}
                       for rid, a in sorted(r["alarms"].items())],
            "commit": commit, "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "loadavg": [round(x, 1) for x in os.getloadavg()],
            "maxrss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


def totals(paths: List[str]) -> List[str]:
    """The runs of one or more ``--jsonl`` files: false alarms by level and scenario."""
    runs = [json.loads(line) for p in paths for line in Path(p).read_text().splitlines() if line.strip()]
    by: Dict[str, List[float]] = {}
    for r in runs:
        b = by.setdefault(r["scenario"], [0, 0.0, 0, 0])
        b[0] += 1
        b[1] += r["cohort_days"]
        b[2] += r["suspected"]
        b[3] += r["confirmed"]
    rows = ["| scenario | runs | cohort-days | suspected | confirmed |", "|---|---|---|---|---|"]
    for name, (n, cd, sus, con) in sorted(by.items()):
        rows.append(f"| {name} | {n} | {cd:.0f} | {sus} | {con} |")
    cd = sum(b[1] for b in by.values())
    sus = sum(b[2] for b in by.values())
    con = sum(b[3] for b in by.values())
    rows.append(f"| all | {len(runs)} | {cd:.0f} | {sus} | {con} |")
    commits = sorted({r["commit"] for r in runs})
    rows += ["", f"Total: {cd:.0f} cohort-days, {sus + con} false alarms ({con} confirmed): "
             f"{1000 * (sus + con) / cd if cd else 0:.2f} per 1,000 cohort-days; the 95% upper bound with "
             f"none would be 3/{cd:.0f} = {3000 / cd if cd else float('inf'):.2f} per 1,000 (rule of three). "
             f"Commits evaluated: {', '.join(commits)}.", ""]
    rows += [a["line"] + f" [commit {r['commit']}]" for r in runs for a in r["alarms"]]
    return rows


def false_alarms(args) -> List[str]:
    names = args.scenarios.split(",") if args.scenarios else list(NO_EFFECT)
    rows = ["| scenario | seed | physics | hosts | cohorts | cohort-days | suspected | confirmed | s/eval |",
            "|---|---|---|---|---|---|---|---|---|"]
    tot_cd = tot_s = tot_c = 0.0
    details = []
    commit = _commit()
    for k in range(args.runs):
        if args.until and datetime.now(timezone.utc) >= args.until:
            print(f"stopped before run {k + 1}: --until {args.until:%H:%M} UTC reached", flush=True)
            break
        name = names[k % len(names)]
        seed = args.seed0 + k
        r = run_false(name, seed, args.copies, args.scale, args.step, args.hours, args.data,
                      args.new_kernel_probes, args.control_per_canary)
        sus = sum(1 for a in r["alarms"].values() if a["status"] == "suspected")
        con = sum(1 for a in r["alarms"].values() if a["status"] == "confirmed")
        tot_cd += r["cohort_days"]
        tot_s += sus
        tot_c += con
        rows.append(f"| {name} | {seed} | {r['physics'].summary()} | {r['hosts']} | {r['cohorts']} | "
                    f"{r['cohort_days']:.1f} | {sus} | {con} | {r['eval_s']:.1f} |")
        print(rows[-1], flush=True)
        if args.jsonl:
            with open(args.jsonl, "a") as f:
                f.write(json.dumps(_jsonl_row(r, args, commit)) + "\n")
        for rid, a in sorted(r["alarms"].items()):
            details.append(_alarm_line(name, seed, rid, a))
            print(details[-1], flush=True)
    any_ = tot_s + tot_c
    rows += ["", f"Total: {tot_cd:.0f} cohort-days, {any_:.0f} false alarms ({tot_c:.0f} confirmed): "
             f"{1000 * any_ / max(tot_cd, 1e-9):.2f} per 1,000 cohort-days; with none, the 95% upper bound "
             f"would be 3/{tot_cd:.0f} = {3000 / max(tot_cd, 1e-9):.2f} per 1,000 (rule of three). "
             f"Commit {commit}.", ""]
    return rows + details


def _q(xs: List[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def speed(args) -> List[str]:
    rows = ["| seed | physics | canaries (4K) | exists on 3 hosts (onset / half), min after first canary | suspected after half (onset) | confirmed after half (onset) | s/eval |",
            "|---|---|---|---|---|---|---|"]
    sus_d, con_d, sus_o, con_o = [], [], [], []
    missed_s = missed_c = 0
    for k in range(args.seeds):
        seed = args.seed0 + k
        sc = load_scenario("seed-iomap-arm64-xfs", interval_s=60, seed=seed, hours=10 + 8 + 0.5)
        sc.physics = Physics.random(seed) if k else None
        probing(sc, args.new_kernel_probes)
        controls(sc, args.control_per_canary)
        phys = sc.physics or Physics()
        truth = {(e["page_size"], e["gate"]): e["ts"] for g in (0.0, 0.5)
                 for e in exposure_ts(sc, seed, gate=g)}
        half, onset = truth.get((4096, 0.5)), truth.get((4096, 0.0))
        df = host_windows(sc).select(KEEP + (MECHANISM_COLUMNS if args.tracepoints else []))
        ch = kernel_changes(df)
        first = ch["at"].min()
        canary_end = first + timedelta(hours=8)
        ncan = (ch.join(df.select("host_id", "fs").unique(), on="host_id")
                .filter((pl.col("arch") == "arm64") & (pl.col("page_size") == 4096)
                        & (pl.col("fs") == "xfs") & (pl.col("at") < canary_end)).height)
        state = RegressionState(None)
        cache = AnalysisCache()
        t_sus = t_con = None
        evals = []
        ts = lambda x: datetime.fromtimestamp(x, timezone.utc) if x else None  # noqa: E731
        t_start = first + timedelta(minutes=args.step)
        if args.start_before is not None and half:
            t_start = max(t_start, ts(half) - timedelta(minutes=args.start_before))
        for t in grid(t_start, canary_end, args.step):
            w0 = time.perf_counter()
            a = analyze(df, as_of=t, config=DetectorConfig(changepoints=False), cache=cache)
            evals.append(time.perf_counter() - w0)
            state.update(a.candidates, a.rolled_back, a.as_of)
            for rec in state.open_records():
                if rec.page_size == 4096 and rec.arch == "arm64" and rec.fs == "xfs":
                    t_sus = t_sus or t
                    if rec.status == "confirmed":
                        t_con = t_con or t
            if t_con:
                break
        h, o = ts(half), ts(onset)
        mins = lambda a, b: (a - b).total_seconds() / 60 if a and b else None  # noqa: E731
        fmt = lambda v: f"{v:.0f}" if v is not None else "-"  # noqa: E731
        if t_sus:
            sus_d.append(mins(t_sus, h))
            sus_o.append(mins(t_sus, o))
        else:
            missed_s += 1
        if t_con:
            con_d.append(mins(t_con, h))
            con_o.append(mins(t_con, o))
        else:
            missed_c += 1
        rows.append(f"| {seed} | {'default' if not k else phys.summary()} | {ncan} | "
                    f"{fmt(mins(o, first))} / {fmt(mins(h, first))} | "
                    f"{fmt(mins(t_sus, h))} ({fmt(mins(t_sus, o))}) | {fmt(mins(t_con, h))} ({fmt(mins(t_con, o))}) | "
                    f"{statistics.median(evals):.1f} |")
        print(rows[-1], flush=True)

    def dist(xs):
        if not xs:
            return "-"
        return (f"median {statistics.median(xs):.0f}, p10 {_q(xs, 0.1):.0f}, p90 {_q(xs, 0.9):.0f}, "
                f"max {max(xs):.0f} min")
    n = args.seeds
    rows += ["",
             f"- suspected, from half size on 3 hosts: {dist(sus_d)}; within 30 min in "
             f"{sum(1 for x in sus_d if x <= 30)}/{n}; not in the canary wave: {missed_s}/{n}",
             f"- confirmed, from half size on 3 hosts: {dist(con_d)}; within 60 min in "
             f"{sum(1 for x in con_d if x <= 60)}/{n}; not in the canary wave: {missed_c}/{n}",
             f"- from the onset on 3 hosts: suspected {dist(sus_o)}; confirmed {dist(con_o)}"]
    return rows


def costless(args) -> List[str]:
    """The seed case's mechanism without its cost: how often is a cohort confirmed?"""
    rows = ["| seed | physics | cohorts evaluated | evaluations | suspected cohorts | confirmed cohorts (false) | s/eval |",
            "|---|---|---|---|---|---|---|"]
    false_conf, cohort_evals = 0, 0
    details = []
    for k in range(args.from_run, args.seeds):
        seed = args.seed0 + k
        sc = load_scenario("seed-iomap-arm64-xfs", interval_s=60, seed=seed, hours=10 + 16 + 0.5)
        sc.physics = Physics.random(seed) if k else None
        probing(sc, args.new_kernel_probes)
        controls(sc, args.control_per_canary)
        sc.changes = [c for c in sc.changes if c.kind != "regression"]
        assert any(km.mechanism == "affected" for km in sc.kernels), "the seed kernel's mechanism"
        df = host_windows(sc).select(KEEP + MECHANISM_COLUMNS)
        ch = kernel_changes(df)
        first = ch["at"].min()
        state, cache = RegressionState(None), AnalysisCache()
        seen: Dict[str, Dict] = {}
        evals, cohorts = [], set()
        for t in grid(first + timedelta(minutes=args.step), first + timedelta(hours=16), args.step):
            w0 = time.perf_counter()
            a = analyze(df, as_of=t, config=DetectorConfig(changepoints=False), cache=cache)
            evals.append(time.perf_counter() - w0)
            cohorts.update(c.group for c in a.comparisons)
            cohort_evals += len(a.comparisons)
            state.update(a.candidates, a.rolled_back, a.as_of)
            note_open_records(state, t, seen)
        sus = sum(1 for d in seen.values() if d["status"] == "suspected")
        con = [d for d in seen.values() if d["status"] == "confirmed"]
        false_conf += len(con)
        rows.append(f"| {seed} | {'default' if not k else sc.physics.summary()} | {len(cohorts)} | "
                    f"{len(evals)} | {sus} | {len(con)} | {statistics.median(evals):.1f} |")
        print(rows[-1], flush=True)
        for d in con:
            r = d["rec"]
            details.append(f"- seed {seed}: {r.arch} {r.page_size} {r.fs} confirmed "
                           f"{(d['confirmed_at'] - first).total_seconds() / 60:.0f} min after the first "
                           f"canary: {r.metric} ({r.statistic}) x{r.effect:.3f}; " + "; ".join(r.reasons))
            print(details[-1], flush=True)
    rows += ["", f"- {false_conf} false confirmations in {args.seeds - args.from_run} runs "
             f"({cohort_evals} cohort evaluations)"]
    return rows + details


AFFECTED = ("arm64", 4096, "xfs")


def _affected(rec) -> bool:
    return (rec.arch, rec.page_size, rec.fs) == AFFECTED


def small_effects(args) -> List[str]:
    """5 % effects: confirmed by the end of the 10 % wave?"""
    rows = ["| seed | physics | new-kernel hosts (4K XFS) at the wave's end | suspected, h after the 10 % wave began | confirmed, h after | other records | s/eval |",
            "|---|---|---|---|---|---|---|"]
    met = 0
    con_h = []
    for k in range(args.runs):
        seed = args.seed0 + k
        sc = load_scenario("small-effect-5", interval_s=60, seed=seed)
        r = sc.rollouts[0]
        wave10 = r.start_h + r.wave_interval_h
        sc.hours = wave10 + r.wave_interval_h + 0.5
        sc.physics = Physics.random(seed)
        tail = probing(sc, args.new_kernel_probes) + controls(sc, args.control_per_canary)
        path = Path(args.data) / f"small-effect-5-s{seed}-h{sc.hours:g}{tail}.parquet" if args.data else None
        if path is not None and path.exists():
            df = pl.read_parquet(path)
        elif path is not None:
            df = _spilled_host_windows(sc, path)
        else:
            df = host_windows(sc).select(KEEP)
        ch = kernel_changes(df)
        first = ch["at"].min()
        w_start, w_end = first + timedelta(hours=r.wave_interval_h), first + timedelta(hours=2 * r.wave_interval_h)
        nnew = (ch.join(df.select("host_id", "fs").unique(), on="host_id")
                .filter((pl.col("arch") == "arm64") & (pl.col("page_size") == 4096)
                        & (pl.col("fs") == "xfs") & (pl.col("at") < w_end)).height)
        state, cache = RegressionState(None), AnalysisCache()
        t_sus = t_con = None
        others = set()
        evals = []
        for t in grid(w_start + timedelta(minutes=args.step), w_end, args.step):
            w0 = time.perf_counter()
            a = analyze(df, as_of=t, config=DetectorConfig(changepoints=False), cache=cache)
            evals.append(time.perf_counter() - w0)
            state.update(a.candidates, a.rolled_back, a.as_of)
            for rec in state.open_records():
                if _affected(rec):
                    t_sus = t_sus or t
                    if rec.status == "confirmed":
                        t_con = t_con or t
                else:
                    others.add(f"{rec.id} {rec.status}")
            if t_con:
                break
        hours = lambda x: f"{(x - w_start).total_seconds() / 3600:.1f}" if x else "-"  # noqa: E731
        met += t_con is not None
        if t_con:
            con_h.append((t_con - w_start).total_seconds() / 3600)
        rows.append(f"| {seed} | {sc.physics.summary()} | {nnew} | {hours(t_sus)} | {hours(t_con)} | "
                    f"{'; '.join(sorted(others)) or '-'} | {statistics.median(evals):.1f} |")
        print(rows[-1], flush=True)
    med = f"median {statistics.median(con_h):.1f} h, range {min(con_h):.1f}-{max(con_h):.1f} h" if con_h else "-"
    rows += ["", f"- confirmed by the end of the 10 % wave in {met}/{args.runs} runs "
             f"(target >= 95 %); confirmed {med} after the wave began"]
    return rows


def rollback_2h(args) -> List[str]:
    """The seed case rolled back 2 h after the first canary: confirmed, then resolved?"""
    rows = ["| seed | physics | exists on 3 hosts (half), min after first canary | suspected, min after half | confirmed, min after half | resolved, min after the rollback (2 h after half) | s/eval |",
            "|---|---|---|---|---|---|---|"]
    ok = 0
    for k in range(args.runs):
        seed = args.seed0 + k
        sc = load_scenario("rollback", interval_s=60, seed=seed)
        r = sc.rollouts[0]
        sc.physics = Physics.random(seed)
        probing(sc, args.new_kernel_probes)
        controls(sc, args.control_per_canary)
        if args.tracepoints:
            # the seed case's mechanism, which the rollback scenario leaves undeclared
            # (its counters draw from their own stream: the rest of the fleet is the same)
            sc.kernels.append(KernelMechanism(r.kernel_to, "affected", "arm64"))
        r.rollback_h = None

        def exposed():
            return next(e["ts"] for e in exposure_ts(sc, seed, gate=0.5) if e["page_size"] == 4096)
        # the rollback's reboots change the plan's random draws: place it 2 h after the
        # exposure of the plan that includes it (a few rounds find the fixed point)
        half = exposed()
        for _ in range(5):
            r.rollback_h = (half - sc.start_ts) / 3600.0 + 2.0
            moved, half = half, exposed()
            if moved == half:
                break
        else:
            raise RuntimeError(f"seed {seed}: no rollback time 2 h after the exposure found")
        sc.hours = r.rollback_h + 2.5
        rb = datetime.fromtimestamp(sc.start_ts, timezone.utc) + timedelta(hours=r.rollback_h)
        df = host_windows(sc).select(KEEP + (MECHANISM_COLUMNS if args.tracepoints else []))
        ch = kernel_changes(df)
        first = ch["at"].min()
        state, cache = RegressionState(None), AnalysisCache()
        t_sus = t_con = t_res = None
        evals = []
        for t in grid(first + timedelta(minutes=args.step), rb + timedelta(hours=2), args.step):
            w0 = time.perf_counter()
            a = analyze(df, as_of=t, config=DetectorConfig(changepoints=False), cache=cache)
            evals.append(time.perf_counter() - w0)
            for tr in state.update(a.candidates, a.rolled_back, a.as_of):
                rec = tr.record
                if not _affected(rec):
                    continue
                t_sus = t_sus or t
                if rec.status == "confirmed":
                    t_con = t_con or t
                # resolved from confirmed: the target (from suspected: reported, not confirmed)
                # (a record raised and resolved in one run: its first transition's record
                # is the same object, already resolved)
                if rec.status == "resolved" and tr.previous == "confirmed":
                    t_con = t_con or t
                    t_res = t_res or t
            if t_res:
                break
        h = datetime.fromtimestamp(half, timezone.utc) if half else None
        mins = lambda a, b: f"{(a - b).total_seconds() / 60:.0f}" if a and b else "-"  # noqa: E731
        ok += bool(t_con and t_res)
        rows.append(f"| {seed} | {sc.physics.summary()} | {mins(h, first)} | {mins(t_sus, h)} | "
                    f"{mins(t_con, h)} | {mins(t_res, rb)} | {statistics.median(evals):.1f} |")
        print(rows[-1], flush=True)
    rows += ["", f"- confirmed, then resolved in {ok}/{args.runs} runs"]
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", choices=("false", "speed", "costless", "small", "rollback"))
    p.add_argument("--runs", type=int, default=18, help="false: runs (scenarios in turn)")
    p.add_argument("--scenarios", default=None, help=f"false: comma-separated of {', '.join(NO_EFFECT)}")
    p.add_argument("--copies", type=int, default=10, help="false: fleet copies per run")
    p.add_argument("--scale", type=float, default=0.1, help="false: each copy's size vs the scenario's")
    p.add_argument("--hours", type=float, default=None, help="false: simulated hours (default: the scenario's)")
    p.add_argument("--step", type=int, default=None, help="simulated minutes between evaluations")
    p.add_argument("--seeds", type=int, default=10, help="speed, costless: seeds")
    p.add_argument("--seed0", type=int, default=300)
    p.add_argument("--from-run", type=int, default=0,
                   help="costless: begin at this run of the --seeds (run 0: the default physics); "
                        "splits a series between processes")
    p.add_argument("--tracepoints", action="store_true",
                   help="speed, rollback: the hosts run the tracepoint collector (the detector sees the "
                        "mechanism evidence); without it, only the vmstat/PSI/write metrics")
    p.add_argument("--new-kernel-probes", type=float, default=0.0, metavar="SECONDS",
                   help="every mode: hosts also probe every SECONDS in their first hours on a kernel "
                        "they had not run before (agent.probe.new_kernel_every_s); 0: only every "
                        "probe_every_s, as the scenarios say")
    p.add_argument("--control-per-canary", type=float, default=0.0, metavar="R",
                   help="every mode: with the first wave, R baseline hosts per canary (rounded) "
                        "reboot and keep the old kernel (the scenario's control_per_canary); "
                        "0: no control group")
    p.add_argument("--start-before", type=int, default=None,
                   help="speed: start evaluating this many minutes before the half-size exposure")
    p.add_argument("--out", default=None)
    p.add_argument("--jsonl", default=None, help="false: append one JSON line per finished run")
    p.add_argument("--data", default=None, help="false, small: keep and reuse simulated host windows here "
                   "(small: simulated through part files, under 4 GB)")
    p.add_argument("--until", type=lambda s: datetime.strptime(s, "%H:%M").replace(
        year=datetime.now(timezone.utc).year, month=datetime.now(timezone.utc).month,
        day=datetime.now(timezone.utc).day, tzinfo=timezone.utc), default=None,
        help="false: start no run after this UTC time (HH:MM)")
    p.add_argument("--totals", nargs="+", default=None, help="sum --jsonl files and stop")
    args = p.parse_args(argv)
    if args.totals:
        print("\n".join(totals(args.totals)))
        return 0
    if not args.only:
        p.error("--only false|speed is required (or --totals FILE...)")
    if args.step is None:
        args.step = {"false": 60, "costless": 10}.get(args.only, 5)
    t0 = time.time()
    rows = {"false": false_alarms, "speed": speed, "costless": costless, "small": small_effects,
            "rollback": rollback_2h}[args.only](args)
    text = "\n".join(rows) + f"\n\n({time.time() - t0:.0f} s)\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
