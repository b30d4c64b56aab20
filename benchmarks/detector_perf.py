"""Detector performance at fleet scale.

    .venv/bin/python benchmarks/detector_perf.py [--cohorts 10000] [--days 30] [--out FILE]

1. The change-point part as ``analyze`` runs it: ``--cohorts`` cohort series of the
   6 h lookback (360 one-minute windows each; diurnal cycle, AR(1) heavy-tailed noise,
   a level shift in 1% of them) through ``LevelShifts``; generation is not timed, the
   detection is. Reading: ``--days`` of the same kind of series as a cohort-window
   Parquet file (long format, one row per window x cohort) is read for a slice of
   cohorts and the read rate is reported beside it.
2. (No streaming change-point method exists: every run detects on its lookback.)
3. Incremental host-level run: ``analyze`` on the seed scenario's fleet (2,000 hosts,
   6 h lookback of one-minute host windows) for one new window.

``--one-shot``: only a one-shot ``detect --history {days}d`` over a generated dataset of
``--hosts`` hosts and ``--days`` days (in ``--fleets`` fleets of four groups), in its own process (wall and CPU seconds, peak
RSS), beside the previous read (every host window into memory, then ``analyze``;
``--previous-history none`` leaves it out) and, with ``--before DIR``, beside the same
``detect`` of another version of the package (DIR holds its ``foliowatch`` package, put
first on PYTHONPATH: e.g. an earlier commit laid out as installed), one after the
other on the same dataset; the two outputs are compared (identical or not).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parent))

from foliowatch.detector.changepoint import LevelShifts  # noqa: E402


def cohort_block(rng, rows: int, n: int) -> np.ndarray:
    t = np.arange(n)
    base = rng.normal(4.0, 0.5, (rows, 1)) + 0.3 * np.sin(2 * np.pi * (t[None, :] / 1440.0)
                                                         + rng.uniform(0, 6.28, (rows, 1)))
    e = rng.standard_t(5, (rows, n)) * 0.03
    # AR(1) rho 0.5 by a cheap two-tap filter (keeps generation fast)
    noise = e.copy()
    noise[:, 1:] += 0.5 * e[:, :-1]
    x = base + noise
    shifted = rng.random(rows) < 0.01
    for r in np.flatnonzero(shifted):
        x[r, rng.integers(n // 10, n - n // 10):] -= 0.2
    return x, shifted


def full_scan(cohorts: int, windows: int = 360, chunk: int = 64):
    rng = np.random.default_rng(0)
    det = LevelShifts(max_pvalue=0.001, min_shift=0.03)
    scan = 0.0
    found = truth = hit = 0
    for lo in range(0, cohorts, chunk):
        rows = min(chunk, cohorts - lo)
        x, shifted = cohort_block(rng, rows, windows)
        t0 = time.perf_counter()
        res = [det.fit_predict(r) for r in x]
        scan += time.perf_counter() - t0
        found += sum(bool(r) for r in res)
        truth += int(shifted.sum())
        hit += sum(bool(res[i]) for i in np.flatnonzero(shifted))
    return scan, windows, found, truth, hit


def parquet_read_rate(days: int, cohorts: int = 200):
    n = days * 1440
    rng = np.random.default_rng(1)
    x, _ = cohort_block(rng, cohorts, n)
    start = np.datetime64("2026-10-01T00:00:00")
    df = pl.DataFrame({
        "window_start": np.tile((start + np.arange(n).astype("timedelta64[m]")).astype("datetime64[us]"), cohorts),
        "cohort": np.repeat(np.arange(cohorts, dtype=np.int32), n),
        "write_mib_s_median": np.exp(x.ravel()),
    })
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "cohort.parquet")
        df.write_parquet(path)
        t0 = time.perf_counter()
        m = (pl.read_parquet(path).sort("cohort", "window_start")["write_mib_s_median"]
             .log().to_numpy().reshape(cohorts, n))
        secs = time.perf_counter() - t0
    return secs, cohorts * n, m.shape


def host_level_incremental():
    """``analyze`` for one new window, as the continuous detector runs it: with the
    ``AnalysisCache`` warm from the previous window (boots seen, reference states built
    within the last hour), and cold (a first run, or the hourly reference rebuild)."""
    from detector_scenarios import host_windows
    from foliowatch.detector.analysis import AnalysisCache, DetectorConfig, analyze
    from foliowatch.simulator import load_scenario
    sc = load_scenario("seed-iomap-arm64-xfs", hours=20, interval_s=60)
    df = host_windows(sc)
    as_of = df["window_start"].max()
    cache = AnalysisCache()
    cold, warm = [], []
    for k in range(6):
        t0 = time.perf_counter()
        a = analyze(df, as_of=as_of - timedelta(minutes=5 - k), config=DetectorConfig(), cache=cache)
        (cold if k == 0 else warm).append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    analyze(df, as_of=as_of, config=DetectorConfig())
    cold.append(time.perf_counter() - t0)
    hosts = df["host_id"].n_unique()
    rows = df.filter(df["window_start"] > as_of - timedelta(hours=6)).height
    return statistics.median(warm), max(warm), statistics.median(cold), hosts, rows, len(a.comparisons)


def synthetic_dataset(root: str, hosts: int, days: int, seed: int = 0, fleets: int = 1) -> None:
    """``days`` of one-minute host windows of ``hosts`` hosts in the dataset layout
    (``level=host/window_s=60/date=.../*.parquet``), generated with polars (the
    simulator would take hours for 86 M host windows): ``fleets`` fleets (``payments-db``,
    or ``payments-db-0``, ``-1``, ... when more than one) in four groups each, 1% of
    hosts rebooting a day, and on the last day a rollout of 1% then 10% of the hosts to
    a new kernel (so the evaluation has comparisons to run)."""
    rng = np.random.default_rng(seed)
    groups = [("arm64", 4096, "xfs"), ("arm64", 65536, "xfs"), ("x86_64", 4096, "xfs"),
              ("x86_64", 4096, "ext4")]
    g = rng.integers(0, len(groups), hosts)
    arch = np.array([a for a, _, _ in groups])[g]
    itype = np.where(arch == "arm64", np.where(rng.random(hosts) < 0.5, "m7g.16xlarge", "m8g.24xlarge"),
                     np.where(rng.random(hosts) < 0.5, "m7i.24xlarge", "m6i.24xlarge"))
    cpus = np.where(np.char.find(itype.astype(str), "24x") >= 0, 96, 64)
    host_tab = pl.DataFrame({
        "h": np.arange(hosts), "host_id": [f"db-{i:06d}" for i in range(hosts)],
        "arch": arch, "page_size": np.array([p for _, p, _ in groups])[g],
        "fs": np.array([f for _, _, f in groups])[g], "instance_type": itype, "cpus": cpus,
        "mem_bytes": cpus * 4 * 2**30, "level": rng.normal(0.0, 0.2, hosts),
        "fleet": (["payments-db"] * hosts if fleets == 1
                  else [f"payments-db-{i % fleets}" for i in range(hosts)])})
    start = datetime(2026, 10, 1, tzinfo=timezone.utc)
    boot = np.zeros(hosts, dtype=np.int64)
    boot_min = -rng.uniform(1, 40, hosts) * 1440.0     # minute the current boot began
    new = np.zeros(hosts, dtype=bool)
    order = rng.permutation(hosts)
    canary, wave2 = order[: max(1, hosts // 100)], order[max(1, hosts // 100): hosts // 10]
    minute = pl.DataFrame({"m": np.arange(1440)})
    for day in range(days):
        reb_at = np.where(rng.random(hosts) < 0.01, rng.integers(0, 1440, hosts), 10**6)
        to_new = np.zeros(hosts, dtype=bool)
        if day == days - 1:
            to_new[canary] = to_new[wave2] = True
            reb_at[canary] = 120 + rng.integers(0, 20, canary.size)
            reb_at[wave2] = 600 + rng.integers(0, 20, wave2.size)
        state = pl.DataFrame({"h": np.arange(hosts), "reb_at": reb_at, "boot": boot,
                              "boot_min": boot_min, "was_new": new, "to_new": to_new})
        n = hosts * 1440
        after = pl.col("m") >= pl.col("reb_at")
        mm = pl.col("m") + day * 1440
        uptime = ((mm - pl.when(after).then(day * 1440 + pl.col("reb_at"))
                   .otherwise(pl.col("boot_min"))) * 60.0 + 30.0)
        df = (minute.join(host_tab.join(state, on="h"), how="cross")
              .with_columns(uptime.alias("uptime_s"),
                            (pl.col("was_new") | (pl.col("to_new") & after)).alias("on_new"),
                            (pl.col("boot") + after.cast(pl.Int64)).alias("b"),
                            (1.0 + 0.3 * (2 * np.pi * pl.col("m") / 1440.0).sin()).alias("load"))
              .with_columns((0.8 * (1 - (-pl.col("uptime_s") / 7200.0).exp())).alias("frag_unusable_1m"),
                            pl.Series("noise", rng.normal(0, 0.08, n)),
                            pl.Series("u", rng.random(n)))
              .with_columns((150.0 * pl.col("load") * (pl.col("level") + pl.col("noise")).exp()
                             * (1 - 0.15 * pl.col("frag_unusable_1m"))).alias("write_mib_s"),
                            (0.5 * pl.col("load") * (pl.col("frag_unusable_1m") / 0.8) ** 3
                             * (0.5 + pl.col("u"))).alias("compact_stall_per_s"))
              .select((pl.lit(start) + pl.duration(minutes=mm)).dt.cast_time_unit("us").alias("window_start"),
                      pl.lit(60).alias("window_s"), "fleet",
                      pl.lit("postgres").alias("role"), "arch", "page_size", "fs",
                      pl.concat_str(pl.when(pl.col("on_new")).then(pl.lit("6.12.40-63"))
                                    .otherwise(pl.lit("6.6.87-101")),
                                    pl.when(pl.col("arch") == "arm64").then(pl.lit(".aarch64"))
                                    .otherwise(pl.lit(".x86_64"))).alias("kernel"),
                      "host_id", pl.concat_str("host_id", pl.lit("-"), "b").alias("boot_id"),
                      "instance_type", "cpus", "mem_bytes", "uptime_s", "write_mib_s",
                      "compact_stall_per_s",
                      (pl.col("compact_stall_per_s") * 0.4).alias("allocstall_per_s"),
                      (pl.col("compact_stall_per_s") * 200.0).alias("pgscan_direct_per_s"),
                      (0.002 * pl.col("load") + 0.003 * pl.col("compact_stall_per_s")).clip(0, 1)
                      .alias("psi_memory_some_share"), "frag_unusable_1m",
                      pl.when(pl.col("m") % 30 == pl.col("h") % 30).then(pl.col("write_mib_s") * 6)
                      .alias("probe_mib_s"),
                      (pl.col("write_mib_s") * 60 * 256).alias("nr_dirtied_sum"),
                      pl.lit(60.0).alias("interval_s_sum")))
        d = os.path.join(root, "level=host", "window_s=60",
                         f"date={(start + timedelta(days=day)).date().isoformat()}")
        os.makedirs(d, exist_ok=True)
        df.write_parquet(os.path.join(d, "part-p0-0-0.parquet"))
        moved = (reb_at < 1440) | to_new
        boot += moved
        boot_min = np.where(moved, day * 1440 + np.minimum(reb_at, 1439), boot_min)
        new |= to_new


_MEASURE = """
import resource, sys, time
t0 = time.perf_counter()
from foliowatch.shell import cli
old = sys.argv[1] == "old"
args = ["detect", "--dataset", sys.argv[2], "--state", sys.argv[3], "--history", sys.argv[4], "--json"]
if old:
    # the previous one-shot read: every host window of the history, then analyze
    from foliowatch.detector import run
    import argparse
    from foliowatch.detector.analysis import analyze
    ns = argparse.Namespace(dataset=sys.argv[2], window_s=60, history=run.parse_duration(sys.argv[4]))
    df = run.load_frame(ns, None)
    analyze(df, config=run.config_from(argparse.Namespace(lookback=run.parse_duration("6h"), fdr=None)))
else:
    cli.main(args)
ru = resource.getrusage(resource.RUSAGE_SELF)
print("RESULT", time.perf_counter() - t0, ru.ru_maxrss / 1024.0, ru.ru_utime + ru.ru_stime)
"""


def one_shot(hosts: int, days: int, history: str, previous_history: str,
             dataset: str = None, before: str = None, fleets: int = 1):
    """A one-shot ``detect`` over ``days`` of ``hosts`` hosts, beside the previous read
    (every host window of ``--history`` into memory, then ``analyze``), each in its own
    process: wall seconds, peak RSS (MiB) and CPU seconds. ``dataset``: keep the
    generated dataset there (reused when it exists)."""
    import contextlib
    import subprocess
    out = {}
    gen = 0.0
    with (contextlib.nullcontext(dataset) if dataset else tempfile.TemporaryDirectory()) as d:
        if not os.path.isdir(os.path.join(d, "level=host")):
            t0 = time.perf_counter()
            synthetic_dataset(d, hosts, days, fleets=fleets)
            gen = time.perf_counter() - t0
        runs = [("before", history)] if before else []
        runs.append(("new", history))
        if previous_history != "none":
            runs.append(("old", previous_history))
        for mode, hist in runs:
            env = dict(os.environ, PYTHONPATH=before) if mode == "before" else None
            r = subprocess.run([sys.executable, "-c", _MEASURE, mode, d,
                                os.path.join(d, f"state-{mode}.json"), hist],
                               capture_output=True, text=True, env=env)
            line = [x for x in r.stdout.splitlines() if x.startswith("RESULT")]
            out[mode] = tuple(map(float, line[0].split()[1:])) if line else (float("nan"),) * 3
            out[mode + "_stdout"] = "\n".join(x for x in r.stdout.splitlines()
                                              if not x.startswith("RESULT"))
            if not line:
                print(f"{mode}: exit {r.returncode}: {r.stderr[-500:]}", flush=True)
    return out, gen


def follow_once(dataset: str, history: str, before: str = None):
    """One evaluation of ``detect --follow --json`` over ``dataset`` (its first output),
    then SIGTERM: wall seconds to that output, peak RSS (MiB), CPU seconds and the
    output. ``before``: run the package found in this directory instead."""
    import signal
    import subprocess
    env = dict(os.environ, PYTHONPATH=before) if before else None
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        with open(os.path.join(d, "stderr"), "w+") as err:
            proc = subprocess.Popen([sys.executable, "-m", "foliowatch", "detect", "--follow",
                                     "--poll-interval", "3600", "--json", "--dataset", dataset,
                                     "--state", os.path.join(d, "state.json"), "--history", history],
                                    stdout=subprocess.PIPE, stderr=err, text=True, env=env,
                                    cwd=d)     # not the repository's: -m puts the cwd first
            line = proc.stdout.readline()
            wall = time.perf_counter() - t0
            proc.send_signal(signal.SIGTERM)
            _, status, ru = os.wait4(proc.pid, 0)
            proc.returncode = status
            proc.stdout.close()
            if not line:
                err.seek(0)
                print(f"detect --follow: no output: {err.read()[-500:]}", flush=True)
    return wall, ru.ru_maxrss / 1024.0, ru.ru_utime + ru.ru_stime, line


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cohorts", type=int, default=10_000)
    p.add_argument("--days", type=int, default=30)
    p.add_argument("--out", default=None)
    p.add_argument("--one-shot", action="store_true",
                   help="only the one-shot detect over --days of --hosts hosts")
    p.add_argument("--hosts", type=int, default=2000)
    p.add_argument("--fleets", type=int, default=1,
                   help="one-shot: the hosts in this many fleets of four groups each")
    p.add_argument("--dataset", default=None,
                   help="one-shot: generate the dataset here, or reuse the one there")
    p.add_argument("--previous-history", default="3d",
                   help="one-shot: the history the previous read is given (all of it is held in "
                        "memory: 30 days of 2,000 hosts would not fit this machine); none: skip it")
    p.add_argument("--before", default=None,
                   help="one-shot, follow: also measure the detect of the package found in this directory")
    p.add_argument("--follow", action="store_true",
                   help="only one evaluation of `detect --follow` over --dataset with --history "
                        "--days (beside --before's)")
    args = p.parse_args(argv)
    lines = ["## Detector performance", "",
             "| measurement | size | time | target |", "|---|---|---|---|"]
    if args.follow:
        if not args.dataset:
            p.error("--follow: give --dataset (generate one with --one-shot --dataset DIR)")
        load0 = os.getloadavg()
        runs = {"after": follow_once(args.dataset, f"{args.days}d")}
        if args.before:
            runs["before"] = follow_once(args.dataset, f"{args.days}d", args.before)
        cells = []
        for name, (wall, peak, cpu, _out) in runs.items():
            cells.append(f"{name}: {wall:.1f} s to the first evaluation ({cpu:.1f} s CPU), peak RSS {peak:,.0f} MiB")
        if args.before:
            same = "identical output" if runs["before"][3] == runs["after"][3] else "OUTPUT DIFFERS"
            cells.append(f"ratio after/before {runs['after'][2] / runs['before'][2]:.2f} (CPU), "
                         f"{runs['after'][1] / runs['before'][1]:.2f} (memory); {same}")
        lines.append(f"| `detect --follow --history {args.days}d`, first evaluation | {args.dataset} | "
                     f"{'; '.join(cells)}; load average {load0[0]:.1f} -> {os.getloadavg()[0]:.1f} | < 4 GB |")
        print("\n".join(lines))
        if args.out:
            Path(args.out).write_text("\n".join(lines) + "\n")
        return 0
    if args.one_shot:
        load0 = os.getloadavg()
        res, gen = one_shot(args.hosts, args.days, f"{args.days}d", args.previous_history,
                            args.dataset, args.before, args.fleets)
        tn, mn, cn = res["new"]
        rows = args.hosts * args.days * 1440
        cells = [f"{tn:.1f} s wall ({cn:.1f} s CPU), peak RSS {mn:,.0f} MiB"]
        if "before" in res:
            tb, mb, cb = res["before"]
            same = "identical output" if res["before_stdout"] == res["new_stdout"] else "OUTPUT DIFFERS"
            cells.append(f"before (`--before {args.before}`): {tb:.1f} s wall ({cb:.1f} s CPU), {mb:,.0f} MiB; "
                         f"ratio now/before {cn / cb:.2f} (CPU), {mn / mb:.2f} (memory); {same}")
        if "old" in res:
            to, mo, co = res["old"]
            cells.append(f"previous read (all history in memory, `--history {args.previous_history}`): "
                         f"{to:.1f} s ({co:.1f} s CPU), {mo:,.0f} MiB; ratio new/previous "
                         f"{tn / to:.2f} (time), {mn / mo:.2f} (memory)")
        groups = f" in {4 * args.fleets} groups" if args.fleets > 1 else ""
        lines.append(f"| one-shot `detect --history {args.days}d` | {args.hosts:,} hosts{groups} x {args.days} days = "
                     f"{rows / 1e6:.0f} M host windows | {'; '.join(cells)}; load average {load0[0]:.1f} -> "
                     f"{os.getloadavg()[0]:.1f} | < 30 s, < 4 GB |")
        print("\n".join(lines))
        if args.out:
            Path(args.out).write_text("\n".join(lines) + "\n")
        return 0
    scan, n, found, truth, hit = full_scan(args.cohorts)
    lines.append(f"| change points of every cohort's lookback (LevelShifts) | {args.cohorts:,} cohorts x {n:,} windows "
                 f"= {args.cohorts * n / 1e6:.0f} M points | {scan:.1f} s "
                 f"({args.cohorts * n / scan / 1e6:.0f} M points/s); {hit}/{truth} injected shifts found, "
                 f"{found - hit} other series flagged | < 60 s |")
    print(lines[-1], flush=True)
    n = args.days * 1440
    rsecs, rpoints, _shape = parquet_read_rate(args.days)
    lines.append(f"| reading cohort windows from Parquet (one metric) | {rpoints / 1e6:.1f} M rows | "
                 f"{rsecs:.2f} s ({rpoints / rsecs / 1e6:.0f} M rows/s; {args.cohorts * n / (rpoints / rsecs):.0f} s "
                 f"for all {args.cohorts:,} cohorts at that rate) | (part of the 60 s) |")
    print(lines[-1], flush=True)
    warm, warm_max, cold, hosts, rows, comps = host_level_incremental()
    lines.append(f"| incremental: one new window, host-level comparisons + change points (`analyze` with its cache) | "
                 f"{hosts:,} hosts, {rows:,} host windows in the 6 h lookback, {comps} kernel comparisons | "
                 f"{warm:.2f} s median, {warm_max:.2f} s max over 5 windows; without the cache "
                 f"(first run, hourly reference rebuild) {cold:.2f} s | < 2 s |")
    print(lines[-1], flush=True)
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
