"""Change-point methods side by side on series with known change points: foliowatch's
default (``LevelShifts``: PELT, robust long-run noise scale, per-candidate checks),
ruptures PELT and Binseg (l2 cost, penalty 3 s^2 log n from the differences' MAD),
and Apache Otava's e-divisive means with its t-test (window 50, max_pvalue 0.001).

    .venv/bin/python benchmarks/detector_changepoints.py [--per-kind 8] [--out FILE]

Generated series (ground truth exact), ``--per-kind`` of each kind and length:
- ``shifts``: 1-3 level shifts of 0.5, 1, 2 or 4 noise sd, Gaussian noise;
- ``shifts, t(3) noise`` and ``shifts, AR(1) 0.6 noise`` (shift sizes in long-run sd);
- ``trend``, ``daily cycle`` (period n/2), ``AR(1) 0.9``: no change point at all;
- ``shift in trend+cycle``: one 2-sd shift on a trend plus cycle;
lengths 20, 60, 200, 1,000 and 10,000 (10,000: the generated kinds once each).
Fleet series: the simulator's load-shift scenario, per cohort group the median log
write throughput per minute (diurnal cycle; load shifts at 18 h and 32 h are the truth).

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
        truth = [int(np.searchsorted(minutes, h * 60)) for h in (18, 32)]
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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--per-kind", type=int, default=8)
    p.add_argument("--methods", default=None, help="comma-separated substrings of method names")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    methods = METHODS
    if args.methods:
        keys = args.methods.split(",")
        methods = {k: v for k, v in METHODS.items() if any(s in k for s in keys)}
    head = ["| series | method | precision | recall | F1 | TP/FP/FN | ms per series |",
            "|---|---|---|---|---|---|---|"]
    rows: List[str] = []
    for label, series in generated(args.per_kind).items():
        rows += evaluate(series, f"{label} ({len(series)})", methods)
    fleet = fleet_series()
    rows += evaluate(fleet, f"fleet load-shift ({len(fleet)} x {len(fleet[0][0])})", methods)
    text = "\n".join(head + rows)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
