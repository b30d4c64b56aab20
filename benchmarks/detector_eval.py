"""Evaluation of `foliowatch detect` on the simulator's named scenarios.

    .venv/bin/python benchmarks/detector_eval.py [--seeds 2] [--quick] [--out FILE]

Tables (markdown, printed and written to --out):

1. The seed case: first flag after the first canary reboot, attribution, other cohorts.
2. Detection rate vs effect size (small-effect-{2,5,10}, seed 25%) and fleet (canary)
   size over seeds: detected by the end of the 1% wave and by the end of the 10% wave,
   with the median delay from the first canary reboot.
3. False alarms per 1,000 cohort-days on the scenarios without a regression to flag
   (control, load shift, improvement, canaries on new hardware) and on the cohorts
   without an injected regression in every scenario.

Host windows come from ``detector_scenarios.host_windows`` (simulator records folded
into the dataset contract's rows); the end-to-end tests use the pipeline itself.
Evaluations run every ``--step`` simulated minutes, as the continuous detector would
(every window) but sparser, so a false alarm that lasts less than a step can be missed.
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Dict, List, Optional

import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parent))
from detector_scenarios import host_windows  # noqa: E402

from foliowatch.detector.analysis import AnalysisCache, DetectorConfig, analyze  # noqa: E402
from foliowatch.detector.attribution import kernel_changes  # noqa: E402
from foliowatch.detector.records import RegressionState  # noqa: E402
from foliowatch.simulator import ground_truth, load_scenario  # noqa: E402

KEEP = ["window_start", "fleet", "role", "arch", "page_size", "fs", "kernel", "host_id", "boot_id",
        "instance_type", "cpus", "mem_bytes", "uptime_s", "write_mib_s", "compact_stall_per_s",
        "allocstall_per_s", "pgscan_direct_per_s", "psi_memory_some_share", "frag_unusable_1m",
        "probe_mib_s", "nr_dirtied_sum", "interval_s_sum"]


def replicate(sc, copies: int, scale: float, seed: int):
    """The scenario's fleets ``copies`` times over (``fleet-0``, ``fleet-1``, ...), each group
    scaled by ``scale``, each copy's rollouts and changes with it and its rollout shifted
    by up to a wave interval: many small independent cohorts, for false-alarm rates per
    cohort-day."""
    import copy
    import random
    rnd = random.Random(seed)
    out = copy.deepcopy(sc)
    out.fleets, out.rollouts, out.changes = [], [], []
    for k in range(copies):
        shift = rnd.uniform(0.0, 4.0)
        for f in sc.fleets:
            g = copy.deepcopy(f)
            g.name = f"{f.name}-{k}"
            for grp in g.groups:
                grp.hosts = max(8, int(round(grp.hosts * scale)))
            out.fleets.append(g)
            for r in sc.rollouts:
                if r.fleet == f.name:
                    r2 = copy.deepcopy(r)
                    r2.fleet = g.name
                    r2.start_h = r.start_h + shift
                    out.rollouts.append(r2)
            for c in sc.changes:
                if c.fleet == f.name:
                    c2 = copy.deepcopy(c)
                    c2.fleet = g.name
                    out.changes.append(c2)
    out.changes += [copy.deepcopy(c) for c in sc.changes if c.fleet is None]
    return out


def simulate(name: str, seed: int, hosts: Optional[int], hours: Optional[float],
             copies: int = 1, scale: float = 1.0):
    sc = load_scenario(name, hosts=hosts, hours=hours, interval_s=60, seed=seed)
    if copies > 1:
        sc = replicate(sc, copies, scale, seed)
    df = host_windows(sc).select(KEEP)
    truth = ground_truth(sc, seed)
    return sc, df, truth


def injected(truth) -> List[dict]:
    return [t for t in truth if t.get("type") == "change" and t.get("kind") == "regression"]


def is_true(rec, truth) -> bool:
    return any(rec.arch == t["arch"] and rec.fs == t["fs"] and rec.page_size == t["page_size"]
               and rec.fleet == t["fleet"] and rec.kernel_to == t["kernel_to"]
               and rec.kernel_from == t["kernel_from"] for t in injected(truth))


def replay(df: pl.DataFrame, truth, times: List[datetime], cfg: DetectorConfig,
           stop_when=None) -> Dict:
    """Run the detector at each time with a state, as the continuous mode would
    (``stop_when``: stop at the first true detection whose record satisfies it)."""
    state = RegressionState(None)
    cache = AnalysisCache()
    first_true: Dict[str, datetime] = {}
    false_ids: Dict[str, datetime] = {}
    false_confirmed: Dict[str, datetime] = {}
    groups = set()
    wall = []
    for t in times:
        w0 = time.perf_counter()
        a = analyze(df, as_of=t, config=cfg, cache=cache)
        wall.append(time.perf_counter() - w0)
        groups |= set(a.hosts_by_group)
        state.update(a.candidates, a.rolled_back, a.as_of)
        for rec in state.open_records():
            if is_true(rec, truth):
                first_true.setdefault(rec.id, t)
            else:
                false_ids.setdefault(rec.id, t)
                if rec.status == "confirmed":
                    false_confirmed.setdefault(rec.id, t)
        if stop_when is not None and any(stop_when(state.records[rid]) for rid in first_true):
            break
    return {"first_true": first_true, "false": false_ids, "false_confirmed": false_confirmed,
            "groups": groups,
            "state": state, "eval_s": sum(wall) / max(len(wall), 1)}


def grid(start: datetime, end: datetime, step_min: int) -> List[datetime]:
    out, t = [], start
    while t <= end:
        out.append(t)
        t += timedelta(minutes=step_min)
    return out


def visible_at(df: pl.DataFrame, ch: pl.DataFrame, change: dict, hosts: int = 3) -> Optional[datetime]:
    """When the injected regression became visible on ``hosts`` canaries: the time the
    third canary of the affected group reached the fragmentation at which the change is
    half on (``frag_onset``/``frag_full`` of the scenario; the simulator's physics)."""
    mid = 0.5 * (change["frag_onset"] + change["frag_full"])
    canaries = ch.filter((pl.col("arch") == change["arch"]) & (pl.col("page_size") == change["page_size"])
                         & (pl.col("kernel_to") == change["kernel_to"]))
    w = (df.filter((pl.col("fs") == change["fs"]) & (pl.col("kernel") == change["kernel_to"])
                   & (pl.col("frag_unusable_1m") >= mid))
         .join(canaries.select("host_id"), on="host_id").group_by("host_id")
         .agg(pl.col("window_start").min()).sort("window_start"))
    return w["window_start"][hosts - 1] if w.height >= hosts else None


def seed_case(args) -> List[str]:
    sc, df, truth = simulate("seed-iomap-arm64-xfs", 42, None, 10 + 8 + 1)
    ch = kernel_changes(df)
    first = ch["at"].min()
    def vis_txt(page_size: int) -> str:
        inj = [t for t in injected(truth) if t["page_size"] == page_size]
        vis = visible_at(df, ch, inj[0]) if inj else None
        return f"{(vis - first).total_seconds() / 60:.0f} min" if vis else "never"
    cfg = DetectorConfig(changepoints=False)
    times = grid(first, first + timedelta(hours=8), 5 if not args.quick else 15)[:25] + \
        grid(first + timedelta(hours=2, minutes=30), first + timedelta(hours=8, minutes=50), 30)
    r = replay(df, truth, sorted(set(times)), cfg)
    rows = ["| scenario | cohort flagged | kernels | status | metric (stat) | effect [95% CI] | first flag after first canary reboot | regression visible on 3 canaries after | hosts new/base | other cohorts flagged |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for rid, t in sorted(r["first_true"].items(), key=lambda kv: kv[1]):
        rec = r["state"].records[rid]
        rows.append(f"| seed-iomap-arm64-xfs (2000 hosts) | {rec.arch} {rec.page_size // 1024}K {rec.fs} | "
                    f"{rec.kernel_from} -> {rec.kernel_to} | {rec.status} | {rec.metric} ({rec.statistic}) | "
                    f"x{rec.effect:.3f} [{rec.ci_low:.3f}, {rec.ci_high:.3f}] | "
                    f"{(t - first).total_seconds() / 60:.0f} min | {vis_txt(rec.page_size)} | {rec.hosts_new}/{rec.hosts_base} | "
                    f"{', '.join(sorted(r['false'])) or 'none'} |")
    if not r["first_true"]:
        rows.append(f"| seed-iomap-arm64-xfs | not flagged in 8 h | | | | | | {vis_txt(4096)} | | {', '.join(sorted(r['false'])) or 'none'} |")
    return rows


def detection(args) -> List[str]:
    rows = ["| scenario | effect | hosts (arm64 4K XFS) | seeds | detected in 1% wave | detected by end of 10% wave | median delay from first canary | false alarms (other cohorts) | s/eval |",
            "|---|---|---|---|---|---|---|---|---|"]
    cases = [("seed-iomap-arm64-xfs", "25%"), ("small-effect-10", "10%"), ("small-effect-5", "5%"),
             ("small-effect-2", "2%")]
    if args.cases:
        cases = [c for c in cases if c[0] in args.cases.split(",")]
    scales = [(None, "full")] if args.quick else [(None, "full"), (0.25, "quarter")]
    if args.scales:
        scales = [sc for sc in scales if sc[1] in args.scales.split(",")]
    for name, eff in cases:
        for scale, scale_name in scales:
            det1 = det10 = 0
            delays, fa, evs = [], 0, []
            target_hosts = None
            for s in range(args.seeds):
                sc0 = load_scenario(name)
                hosts = int(sc0.hosts * scale) if scale else None
                sc, df, truth = simulate(name, args.seed0 + s, hosts, 10 + 16 + 0.5)
                tr = injected(truth)[0]
                target_hosts = tr["hosts"]
                first = kernel_changes(df)["at"].min()
                end1 = first + timedelta(hours=8)
                end10 = first + timedelta(hours=16)
                times = grid(first + timedelta(minutes=30), end10, args.step)
                r = replay(df, truth, times, DetectorConfig(changepoints=False),
                           stop_when=lambda rec, ps=tr["page_size"]: rec.page_size == ps)
                evs.append(r["eval_s"])
                hits = [t for rid, t in r["first_true"].items()
                        if r["state"].records[rid].page_size == tr["page_size"]]
                if hits:
                    t = min(hits)
                    det1 += t <= end1
                    det10 += t <= end10
                    delays.append((t - first).total_seconds() / 3600)
                fa += len(r["false"])
                for rid in sorted(r["false"]):
                    rec = r["state"].records[rid]
                    print(f"  false alarm in {name} seed {args.seed0 + s}: {rid} {rec.status} "
                          f"{rec.metric} ({rec.statistic}) x{rec.effect:.3f} "
                          f"n={rec.hosts_new}/{rec.hosts_base}", flush=True)
            med = sorted(delays)[len(delays) // 2] if delays else None
            rows.append(f"| {name} | {eff} | {target_hosts} ({scale_name}) | {args.seeds} | "
                        f"{det1}/{args.seeds} | {det10}/{args.seeds} | "
                        f"{f'{med:.1f} h' if med is not None else '-'} | {fa} | {sum(evs) / len(evs):.1f} |")
            print(rows[-1], flush=True)
    return rows


def false_alarms(args) -> List[str]:
    rows = ["| scenario | seeds | fleet copies x scale | cohorts | simulated days evaluated | cohort-days | false alarms (suspected or confirmed) | of them confirmed | per 1,000 cohort-days (any / confirmed) |",
            "|---|---|---|---|---|---|---|---|---|"]
    total_fa = total_fc = total_cd = 0.0
    for name in ("control-no-regression", "load-shift", "improvement", "canary-new-hardware"):
        fa = fc = 0
        cd = 0.0
        ncoh = 0
        for s in range(args.seeds):
            sc, df, truth = simulate(name, args.false_seed0 + s, None, None, copies=args.copies,
                                     scale=args.scale)
            first = kernel_changes(df)["at"].min()
            start = df["window_start"].min() + timedelta(hours=6)
            end = df["window_start"].max()
            r = replay(df, truth, grid(max(start, first), end, args.step), DetectorConfig(changepoints=False))
            fa += len(r["false"])
            fc += len(r["false_confirmed"])
            for rid in sorted(r["false"]):
                rec = r["state"].records[rid]
                print(f"  false alarm in {name} seed {args.false_seed0 + s}: {rid} {rec.status} {rec.metric} "
                      f"({rec.statistic}) x{rec.effect:.3f} n={rec.hosts_new}/{rec.hosts_base}; "
                      + ", ".join(f"{m['metric']}.{m['statistic']} {m['effect']:.3f} q={m['q_value']:.1e}"
                                  for m in rec.metrics), flush=True)
            days = (end - max(start, first)).total_seconds() / 86400
            cd += len(r["groups"]) * days
            ncoh = len(r["groups"])
        total_fa += fa
        total_fc += fc
        total_cd += cd
        rows.append(f"| {name} | {args.seeds} | {args.copies} x {args.scale:g} | {ncoh} | {cd / max(ncoh, 1):.2f} | "
                    f"{cd:.1f} | {fa} | {fc} | {1000 * fa / cd:.0f} / {1000 * fc / cd:.0f} |")
        print(rows[-1], flush=True)
    up = 3.0 / total_cd * 1000 if total_cd else float("nan")
    rows.append(f"| all | | | | | {total_cd:.1f} | {total_fa:.0f} | {total_fc:.0f} | "
                f"{1000 * total_fa / total_cd:.1f} / {1000 * total_fc / total_cd:.1f} |")
    rows.append("")
    rows.append(f"With no alarm in {total_cd:.0f} cohort-days the 95% upper bound on the rate is "
                f"3/{total_cd:.0f} = {up:.1f} per 1,000 cohort-days (rule of three).")
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--step", type=int, default=60, help="simulated minutes between evaluations")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--cases", default=None, help="detection: comma-separated scenario names")
    p.add_argument("--scales", default=None, help="detection: full,quarter")
    p.add_argument("--seed0", type=int, default=100, help="detection: first simulation seed")
    p.add_argument("--false-seed0", type=int, default=200, help="false alarms: first simulation seed")
    p.add_argument("--copies", type=int, default=1,
                   help="false alarms: each scenario's fleet this many times over (more cohorts)")
    p.add_argument("--scale", type=float, default=1.0,
                   help="false alarms: host count of each copy's groups, as a share of the scenario's")
    p.add_argument("--only", choices=("seed", "detection", "false"), default=None)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    t0 = time.time()
    parts = []
    if args.only in (None, "seed"):
        parts += ["## Seed case", ""] + seed_case(args) + [""]
        print("\n".join(parts), flush=True)
    if args.only in (None, "detection"):
        parts += ["## Detection rate vs effect size and fleet size", ""] + detection(args) + [""]
    if args.only in (None, "false"):
        parts += ["## False alarms on scenarios without a regression to flag", ""] + false_alarms(args) + [""]
    parts.append(f"(evaluation took {time.time() - t0:.0f} s; step {args.step} simulated minutes)")
    text = "\n".join(parts)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
