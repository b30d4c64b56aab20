"""Change-point methods side by side on series with known change points: foliowatch's
default (``LevelShifts``: PELT, robust long-run noise scale, per-candidate checks),
ruptures PELT and Binseg (l2 cost, penalty 3 s^2 log n from the differences' MAD),
and Apache Otava's e-divisive means with its t-test (window 50, max_pvalue 0.001).

    .venv/bin/python benchmarks/detector_changepoints.py [--per-kind 8] [--out FILE]
    .venv/bin/python benchmarks/detector_changepoints.py --calibration 200
    .venv/bin/python benchmarks/detector_changepoints.py --timing 20 --compare-with /work/main
    .venv/bin/python benchmarks/detector_changepoints.py --same-as 200 --compare-with /work/main

``--calibration SEEDS``: the default method alone, on SEEDS series of each kind with a
known answer (the unit tests' kinds, many more seeds): the share of series with no
change point that get one (per kind: white noise, linear trends, daily cycles, AR(1)),
and the share of 1-sd and 2-sd shifts found within 3 points, each with its exact 95%
interval (Clopper-Pearson), beside the most any method can do on the 1-sd shift (the
least-squares split, noise sd known, threshold simulated at the given p).

``--timing SEEDS --compare-with CHECKOUT``: run time per series of the default method
beside the one in another checkout, alternately in one process, on the calibration's
series (SEEDS of each kind) and the fleet series; reported as ratios.
``--same-as SEEDS --compare-with CHECKOUT``: on the same series, whether the default
method returns the other checkout's change points (for a change meant to make it faster,
not different).

Generated series (ground truth exact), ``--per-kind`` of each kind and length:
- ``shifts``: 1-3 level shifts of 0.5, 1, 2 or 4 noise sd, Gaussian noise;
- ``shifts, t(3) noise`` and ``shifts, AR(1) 0.6 noise`` (shift sizes in long-run sd);
- ``trend``, ``daily cycle`` (period n/2), ``AR(1) 0.9``: no change point at all;
- ``shift in trend+cycle``: one 2-sd shift on a trend plus cycle;
lengths 20, 60, 200, 1,000 and 10,000 (10,000: the generated kinds once each).
Fleet series: the simulator's load-shift scenario, per cohort group the median log
write throughput per minute (diurnal cycle). The truth is every level shift the scenario
puts into the load: the weekend's end at local midnight (Monday 00:00 at UTC-5, 5 h;
the weekend load factor is 0.7-0.85), the traffic move at 18 h, the batch import from
32 h to 38 h (both ends). The rollout's reboot waves (10, 18, 26, 34 h) change memory
state, and with it throughput by 2-5%, on part of the hosts: not counted either way.
The fleet row is also run as ``analyze`` runs the method (``min_shift`` 0.03 on the log
scale, ``DetectorConfig.cp_min_shift``).

A found change point is a true positive if within max(3, 1% of n) points of a true one
not matched yet; precision, recall, F1 over all series of a row; time per series.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from foliowatch.detector.changepoint import LevelShifts  # noqa: E402

MIN_SIZE = 5


def foliowatch_default(x: np.ndarray) -> List[int]:
    return [c.index for c in LevelShifts().fit_predict(x)]


def foliowatch_as_analyze(x: np.ndarray) -> List[int]:
    from foliowatch.detector.analysis import DetectorConfig
    c = DetectorConfig()
    det = LevelShifts(c.cp_max_pvalue, c.cp_min_size, min_shift=c.cp_min_shift)
    return [cp.index for cp in det.fit_predict(x)]


def _pen(x: np.ndarray) -> float:
    sigma = np.median(np.abs(np.diff(x) - np.median(np.diff(x)))) / (0.6745 * np.sqrt(2))
    return 3.0 * max(sigma, 1e-9) ** 2 * np.log(len(x))


def ruptures_pelt(x: np.ndarray) -> List[int]:
    import ruptures as rpt
    # ruptures' PELT is quadratic in Python on long series without changes: its own
    # jump option (candidates every 5 points) keeps 10,000 points in minutes
    jump = 1 if len(x) <= 2000 else 5
    return rpt.Pelt(model="l2", min_size=MIN_SIZE, jump=jump).fit(x).predict(pen=_pen(x))[:-1]


def ruptures_binseg(x: np.ndarray) -> List[int]:
    import ruptures as rpt
    return rpt.Binseg(model="l2", min_size=MIN_SIZE).fit(x).predict(pen=_pen(x))[:-1]


def otava_edivisive(x: np.ndarray) -> List[int]:
    from otava.analysis import compute_change_points
    cps, _weak = compute_change_points(list(map(float, x)), window_len=50, max_pvalue=0.001)
    return sorted({int(c.index) for c in cps})


METHODS: Dict[str, Callable[[np.ndarray], List[int]]] = {
    "foliowatch LevelShifts (default, p 0.001)": foliowatch_default,
    "ruptures PELT (l2, 3 s^2 log n; jump 5 over 2,000 points)": ruptures_pelt,
    "ruptures Binseg (l2, 3 s^2 log n)": ruptures_binseg,
    "otava e-divisive (t-test, p 0.001)": otava_edivisive,
}


def _ar1(rng, n, rho, e=None):
    e = rng.normal(0, 1, n) if e is None else e
    x = np.empty(n)
    x[0] = e[0] / np.sqrt(1 - rho * rho)
    for i in range(1, n):
        x[i] = rho * x[i - 1] + e[i]
    return x


def _levels(rng, n, k, scale):
    if n < 4 * MIN_SIZE * (k + 1):
        k = max(1, n // (4 * MIN_SIZE) - 1)
    cps: List[int] = []
    while len(cps) < k:
        c = int(rng.integers(2 * MIN_SIZE, n - 2 * MIN_SIZE + 1))
        if all(abs(c - o) >= 2 * MIN_SIZE for o in cps):
            cps.append(c)
    cps.sort()
    level = np.zeros(n)
    for c in cps:
        level[c:] += rng.choice([-1, 1]) * rng.choice([0.5, 1.0, 2.0, 4.0]) * scale
    return level, cps


def generated(per_kind: int, seed: int = 0) -> Dict[str, List[Tuple[np.ndarray, List[int]]]]:
    rng = np.random.default_rng(seed)
    kinds: Dict[str, List[Tuple[np.ndarray, List[int]]]] = {}
    for n in (20, 60, 200, 1000, 10_000):
        reps = 1 if n == 10_000 else per_kind
        for _ in range(reps):
            k = int(rng.integers(1, 4))
            t = np.arange(n)
            lv, cps = _levels(rng, n, k, 1.0)
            kinds.setdefault(f"shifts, Gaussian, n={n}", []).append((lv + rng.normal(0, 1, n), cps))
            lv, cps = _levels(rng, n, k, np.sqrt(3.0))      # t(3) has sd sqrt(3)
            kinds.setdefault(f"shifts, t(3) noise, n={n}", []).append((lv + rng.standard_t(3, n), cps))
            lv, cps = _levels(rng, n, k, 2.0)               # AR(1) 0.6: long-run sd 2.5/... ~2
            kinds.setdefault(f"shifts, AR(1) 0.6, n={n}", []).append((lv + _ar1(rng, n, 0.6), cps))
            kinds.setdefault(f"no change: trend, n={n}", []).append(
                (np.linspace(0, rng.uniform(-50, 50), n) + rng.normal(0, 1, n), []))
            kinds.setdefault(f"no change: daily cycle, n={n}", []).append(
                (3 * np.sin(4 * np.pi * t / n + rng.uniform(0, 6.3)) + rng.normal(0, 1, n), []))
            kinds.setdefault(f"no change: AR(1) 0.9, n={n}", []).append((_ar1(rng, n, 0.9), []))
            c = int(rng.integers(n // 4, 3 * n // 4))
            y = np.linspace(0, 10, n) + 3 * np.sin(4 * np.pi * t / n) + rng.normal(0, 1, n)
            y[c:] += 2.0 * rng.choice([-1, 1])
            kinds.setdefault(f"2-sd shift in trend+cycle, n={n}", []).append((y, [c]))
    return kinds


# the load-shift scenario's level shifts, hours from its start (see the docstring)
FLEET_SHIFTS_H = (5, 18, 32, 38)


def fleet_series() -> List[Tuple[np.ndarray, List[int]]]:
    import polars as pl
    from detector_scenarios import host_windows
    from foliowatch.simulator import load_scenario
    sc = load_scenario("load-shift", hosts=1000, interval_s=60)
    df = host_windows(sc).filter(pl.col("write_mib_s").is_not_null())
    t0 = df["window_start"].min()
    out = []
    for _key, g in df.group_by("arch", "page_size", "fs"):
        s = (g.group_by("window_start").agg((pl.col("write_mib_s") + 0.05).log().median().alias("y"))
             .sort("window_start"))
        minutes = ((s["window_start"] - t0).dt.total_minutes()).to_numpy()
        truth = [int(np.searchsorted(minutes, h * 60)) for h in FLEET_SHIFTS_H]
        out.append((s["y"].to_numpy(), truth))
    return out


def score(found: List[int], truth: List[int], n: int) -> Tuple[int, int, int]:
    tol = max(3, n // 100)
    left = list(truth)
    tp = 0
    for f in sorted(found):
        near = [t for t in left if abs(f - t) <= tol]
        if near:
            left.remove(min(near, key=lambda t: abs(f - t)))
            tp += 1
    return tp, len(found) - tp, len(left)


def evaluate(series, label: str, methods) -> List[str]:
    rows = []
    for name, method in methods.items():
        tp = fp = fn = 0
        t0 = time.perf_counter()
        err = None
        for x, truth in series:
            try:
                a, b, c = score(method(x), truth, len(x))
            except Exception as e:      # a method that cannot run on a series: say so
                err = f"{type(e).__name__}: {str(e)[:60]}"
                break
            tp, fp, fn = tp + a, fp + b, fn + c
        secs = (time.perf_counter() - t0) / len(series)
        if err:
            rows.append(f"| {label} | {name} | - | - | - | - | failed: {err} |")
        else:
            prec = tp / (tp + fp) if tp + fp else float("nan")
            rec = tp / (tp + fn) if tp + fn else float("nan")
            f1 = 2 * prec * rec / (prec + rec) if prec == prec and rec == rec and prec + rec else float("nan")
            rows.append(f"| {label} | {name} | {prec:.2f} | {rec:.2f} | {f1:.2f} | {tp}/{fp}/{fn} | "
                        f"{1000 * secs:.1f} |")
        print(rows[-1], flush=True)
    return rows


def _interval(k: int, n: int) -> str:
    from scipy.stats import beta
    lo = beta.ppf(0.025, k, n - k + 1) if k else 0.0
    hi = beta.ppf(0.975, k + 1, n - k) if k < n else 1.0
    return f"{k}/{n} = {k / n:.3f} [{lo:.3f}, {hi:.3f}]"


def null_kinds(rng) -> Dict[str, np.ndarray]:
    """One series of each kind without a change point (the unit tests' kinds)."""
    out: Dict[str, np.ndarray] = {}
    for n in (20, 60, 200, 1000):
        out[f"white noise, n={n}"] = rng.normal(0, 1, n)
    for n, rise in ((60, 30.0), (500, 30.0), (500, -200.0), (2000, 50.0)):
        out[f"linear trend {rise:+.0f} sd, n={n}"] = np.linspace(0, rise, n) + rng.normal(0, 1, n)
    for n, period, amp in ((2880, 1440, 3.0), (672, 96, 3.0), (500, 96, 10.0)):
        t = np.arange(n)
        out[f"daily cycle, amplitude {amp:.0f} sd, period {period}, n={n}"] = (
            amp * np.sin(2 * np.pi * t / period + rng.uniform(0, 2 * np.pi)) + rng.normal(0, 1, n))
    for rho, n in ((0.5, 200), (0.5, 1000), (0.9, 200), (0.9, 1000), (0.9, 3000)):
        out[f"AR(1) {rho}, n={n}"] = _ar1(rng, n, rho)
    for n in (200, 1000):
        out[f"trend 10 sd + cycle 3 sd of period n/2, n={n}"] = _trend_cycle(rng, n)
    return out


def _trend_cycle(rng, n: int) -> np.ndarray:
    t = np.arange(n)
    return np.linspace(0, 10, n) + 3 * np.sin(4 * np.pi * t / n) + rng.normal(0, 1, n)


def oracle_power(shift: float, side: int, p: float, sims: int = 200_000, seed: int = 1) -> float:
    """Share of runs in which the least-squares split of a Gaussian series with a known
    noise sd (1) passes the maximum-over-splits threshold simulated at ``p`` and lies
    within 3 points of the shift: the best any detector of one shift at p can do."""
    rng = np.random.default_rng(seed)
    n = 2 * side
    k = np.arange(MIN_SIZE, n - MIN_SIZE + 1)

    def zmax(x):
        cs = np.cumsum(x, axis=1)
        left = cs[:, k - 1]
        tot = cs[:, -1:]
        z = np.abs(left / k - (tot - left) / (n - k)) / np.sqrt(1 / k + 1 / (n - k))
        return z.max(axis=1), k[z.argmax(axis=1)]

    null, _ = zmax(rng.normal(size=(sims, n)))
    crit = np.quantile(null, 1 - p)
    z, at = zmax(rng.normal(size=(sims // 4, n)) + np.r_[np.zeros(side), np.full(side, shift)])
    return float(np.mean((z > crit) & (np.abs(at - side) <= 3)))


def calibration(seeds: int, p: float = 0.001) -> List[str]:
    det = LevelShifts(max_pvalue=p)
    fp: Dict[str, int] = {}
    for s in range(seeds):
        for kind, x in null_kinds(np.random.default_rng(50_000 + s)).items():
            fp[kind] = fp.get(kind, 0) + bool(det.fit_predict(x))
    rows = ["| series without a change point | series with one (false) |", "|---|---|"]
    rows += [f"| {kind} | {_interval(k, seeds)} |" for kind, k in fp.items()]
    rows += ["", "| one shift (Gaussian noise) | found within 3 points | found anywhere | "
                 "most possible within 3 points (least squares, sd known) |", "|---|---|---|---|"]
    for shift, side in ((1.0, 30), (1.0, 100), (2.0, 30), (2.0, 10)):
        within = anywhere = 0
        for s in range(seeds):
            rng = np.random.default_rng(60_000 + s)
            cps = det.fit_predict(np.r_[rng.normal(0, 1, side), rng.normal(shift, 1, side)])
            anywhere += bool(cps)
            within += any(abs(c.index - side) <= 3 for c in cps)
        rows.append(f"| {shift:.0f} sd, {side} points a side | {_interval(within, seeds)} | "
                    f"{_interval(anywhere, seeds)} | {oracle_power(shift, side, p):.3f} |")
    for n in (200, 1000):
        within = anywhere = 0
        for s in range(seeds):
            rng = np.random.default_rng(70_000 + s)
            x = _trend_cycle(rng, n)
            at = int(rng.integers(n // 4, 3 * n // 4))
            x[at:] += 2.0 * rng.choice([-1, 1])
            cps = det.fit_predict(x)
            anywhere += bool(cps)
            within += any(abs(c.index - at) <= 3 for c in cps)
        rows.append(f"| 2 sd inside trend 10 sd + cycle 3 sd of period n/2, n={n} | "
                    f"{_interval(within, seeds)} | {_interval(anywhere, seeds)} | - |")
    return rows


def _power_series(seeds: int):
    """The calibration's series with one shift: (label, series) per seed."""
    for s in range(seeds):
        for shift, side in ((1.0, 30), (1.0, 100), (2.0, 30), (2.0, 10)):
            rng = np.random.default_rng(60_000 + s)
            yield (f"{shift:.0f} sd, {side} points a side",
                   np.r_[rng.normal(0, 1, side), rng.normal(shift, 1, side)])
        for n in (200, 1000):
            rng = np.random.default_rng(70_000 + s)
            x = _trend_cycle(rng, n)
            x[int(rng.integers(n // 4, 3 * n // 4)):] += 2.0 * rng.choice([-1, 1])
            yield f"2 sd inside trend 10 sd + cycle 3 sd of period n/2, n={n}", x


def _reference_module(reference: str):
    """``reference``/detector/changepoint.py (another checkout), imported on its own."""
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        "reference_changepoint", str(Path(reference) / "detector" / "changepoint.py"))
    ref = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = ref            # dataclasses look their module up there
    spec.loader.exec_module(ref)
    return ref


def _timing_series(seeds: int):
    """(kind, series): the calibration's series (SEEDS of each kind) and the fleet
    series, whole and in the 6 h lookbacks ``analyze`` runs the method on."""
    for s in range(seeds):
        yield from null_kinds(np.random.default_rng(50_000 + s)).items()
    yield from _power_series(seeds)
    for x, _truth in fleet_series():
        yield "fleet load-shift, whole series (2,401-2,402 points)", x
        # what analyze runs it on: the 6 h lookback (360 one-minute windows)
        for end in range(360, len(x) + 1, 360):
            yield "fleet load-shift, 6 h lookbacks (360 points, as analyze)", x[end - 360:end]


def same_as(seeds: int, reference: str) -> List[str]:
    """Whether the default method returns the change points of the ``LevelShifts`` in
    another checkout, on the series of ``--timing`` (as ``analyze`` runs it too on the
    fleet's): per kind, how many series differ in where they put a change point, and
    the largest relative difference of a p-value or a level where they agree (a
    faster computation of the same method rounds differently)."""
    from foliowatch.detector.analysis import DetectorConfig
    ref = _reference_module(reference)
    c = DetectorConfig()
    default = (LevelShifts(), ref.LevelShifts())
    as_analyze = (LevelShifts(c.cp_max_pvalue, c.cp_min_size, min_shift=c.cp_min_shift),
                  ref.LevelShifts(c.cp_max_pvalue, c.cp_min_size, min_shift=c.cp_min_shift))
    count: Dict[str, int] = {}
    differ: Dict[str, int] = {}
    worst: Dict[str, float] = {}
    for kind, x in _timing_series(seeds):
        count[kind] = count.get(kind, 0) + 1
        differ.setdefault(kind, 0)
        worst.setdefault(kind, 0.0)
        for this, other in [default, as_analyze] if kind.startswith("fleet") else [default]:
            a, b = this.fit_predict(x), other.fit_predict(x)
            if [cp.index for cp in a] != [cp.index for cp in b]:
                differ[kind] += 1
                continue
            for u, v in zip(a, b):
                for p, q in ((u.p_value, v.p_value), (u.mean_before, v.mean_before),
                             (u.mean_after, v.mean_after)):
                    worst[kind] = max(worst[kind], abs(p - q) / max(abs(p), abs(q), 1e-300))
    rows = ["| series | runs whose change points differ | largest relative difference of p or level |",
            "|---|---|---|"]
    rows += [f"| {kind} ({count[kind]}) | {differ[kind]} | {worst[kind]:.1e} |" for kind in count]
    return rows


def timing(seeds: int, reference: str) -> List[str]:
    """Run time per series of the default method and of the ``LevelShifts`` in
    ``reference``/detector/changepoint.py (another checkout), alternately on the same
    series in this one process (the calibration's series and the fleet series), so
    the machine's load falls on both alike."""
    ref = _reference_module(reference)
    methods = {"this": LevelShifts(), "reference": ref.LevelShifts()}
    spent: Dict[str, Dict[str, float]] = {}
    count: Dict[str, int] = {}

    def run(kind: str, x: np.ndarray) -> None:
        count[kind] = count.get(kind, 0) + 1
        for name, det in methods.items():
            t0 = time.perf_counter()
            det.fit_predict(x)
            spent.setdefault(kind, {}).setdefault(name, 0.0)
            spent[kind][name] += time.perf_counter() - t0

    for kind, x in _timing_series(seeds):
        run(kind, x)
    rows = ["| series | ms per series, this | ms per series, reference | ratio |", "|---|---|---|---|"]
    total = {"this": 0.0, "reference": 0.0}
    for kind, t in spent.items():
        for k in total:
            total[k] += t[k]
        rows.append(f"| {kind} ({count[kind]}) | {1000 * t['this'] / count[kind]:.1f} | "
                    f"{1000 * t['reference'] / count[kind]:.1f} | {t['this'] / t['reference']:.2f} |")
    rows.append(f"| all ({sum(count.values())}) | {1000 * total['this'] / sum(count.values()):.1f} | "
                f"{1000 * total['reference'] / sum(count.values()):.1f} | "
                f"{total['this'] / total['reference']:.2f} |")
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--per-kind", type=int, default=8)
    p.add_argument("--methods", default=None, help="comma-separated substrings of method names")
    p.add_argument("--out", default=None)
    p.add_argument("--fleet-only", action="store_true", help="only the fleet series")
    p.add_argument("--calibration", type=int, default=0, metavar="SEEDS",
                   help="false-positive rate per null kind and power, over SEEDS series each")
    p.add_argument("--timing", type=int, default=0, metavar="SEEDS",
                   help="run time per series beside --compare-with's method, SEEDS of each kind")
    p.add_argument("--compare-with", default=None, metavar="CHECKOUT",
                   help="another checkout of the repository (e.g. /work/main) for --timing")
    p.add_argument("--same-as", type=int, default=0, metavar="SEEDS",
                   help="whether the change points are --compare-with's, on --timing's series")
    args = p.parse_args(argv)
    if args.timing or args.same_as:
        if not args.compare_with:
            p.error("--timing and --same-as need --compare-with CHECKOUT (e.g. --compare-with /work/main)")
        text = "\n".join(timing(args.timing, args.compare_with) if args.timing
                         else same_as(args.same_as, args.compare_with))
        print(text)
        if args.out:
            Path(args.out).write_text(text + "\n")
        return 0
    if args.calibration:
        text = "\n".join(calibration(args.calibration))
        print(text)
        if args.out:
            Path(args.out).write_text(text + "\n")
        return 0
    methods = METHODS
    if args.methods:
        keys = args.methods.split(",")
        methods = {k: v for k, v in METHODS.items() if any(s in k for s in keys)}
    head = ["| series | method | precision | recall | F1 | TP/FP/FN | ms per series |",
            "|---|---|---|---|---|---|---|"]
    rows: List[str] = []
    for label, series in ({} if args.fleet_only else generated(args.per_kind)).items():
        rows += evaluate(series, f"{label} ({len(series)})", methods)
    fleet = fleet_series()
    label = f"fleet load-shift ({len(fleet)} x {len(fleet[0][0])})"
    rows += evaluate(fleet, label, methods)
    if any("foliowatch" in k for k in methods):
        rows += evaluate(fleet, label, {"foliowatch LevelShifts as analyze runs it (min_shift 0.03)":
                                        foliowatch_as_analyze})
    text = "\n".join(head + rows)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
