"""Change-point methods side by side on the same series: foliowatch's binary
segmentation (standardized CUSUM + Brownian-bridge p-value, autocorrelation corrected),
ruptures PELT and Binseg (l2 cost, BIC-like penalty from a robust noise estimate), and
Apache Otava's e-divisive means with its t-test (window 50, max_pvalue 0.001).

    .venv/bin/python benchmarks/detector_changepoints.py [--series 60] [--out FILE]

Series sets (ground truth known exactly):
- ``synthetic``: 0-3 level shifts of 0.5-2 noise sd, AR(1) noise (rho 0.3) with
  Student-t(4) innovations, length 1,000;
- ``fleet``: the simulator's load-shift scenario, per cohort group the median log write
  throughput per minute (diurnal cycle, load shifts at 18 h and 32 h are the truth).
Precision/recall with a tolerance of 15 points; detection delay = points after the
true change until the method, run on the data seen so far, reports it (prefixes of
+5 ... +320 points; the median over detected changes); run time per 1,000 points.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from foliowatch.detector.changepoint import BinarySegmentation, Mosum  # noqa: E402

TOL = 15
DELAYS = (5, 10, 20, 40, 80, 160, 320)


def foliowatch_bs(x: np.ndarray) -> List[int]:
    return [c.index for c in BinarySegmentation(max_pvalue=0.001, min_segment=10).fit_predict(x)]


def foliowatch_mosum(x: np.ndarray) -> List[int]:
    return [c.index for c in Mosum(bandwidth=15, max_pvalue=0.001).fit_predict(x)]


def _pen(x: np.ndarray) -> float:
    sigma = np.median(np.abs(np.diff(x))) / (0.6745 * np.sqrt(2))
    return 3.0 * max(sigma, 1e-9) ** 2 * np.log(len(x))


def ruptures_pelt(x: np.ndarray) -> List[int]:
    import ruptures as rpt
    return rpt.Pelt(model="l2", min_size=10, jump=1).fit(x).predict(pen=_pen(x))[:-1]


def ruptures_binseg(x: np.ndarray) -> List[int]:
    import ruptures as rpt
    return rpt.Binseg(model="l2", min_size=10).fit(x).predict(pen=_pen(x))[:-1]


def otava_edivisive(x: np.ndarray) -> List[int]:
    from otava.analysis import compute_change_points
    cps, _weak = compute_change_points(list(map(float, x)), window_len=50, max_pvalue=0.001)
    return sorted({int(c.index) for c in cps})


METHODS: Dict[str, Callable[[np.ndarray], List[int]]] = {
    "foliowatch MOSUM (G 15, Gumbel p 0.001)": foliowatch_mosum,
    "foliowatch binseg+bridge test": foliowatch_bs,
    "ruptures PELT (l2, 3 s^2 log n)": ruptures_pelt,
    "ruptures Binseg (l2, 3 s^2 log n)": ruptures_binseg,
    "otava e-divisive (t-test, p 0.001)": otava_edivisive,
}


def synthetic(n_series: int, seed: int = 0) -> List[Tuple[np.ndarray, List[int]]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_series):
        n = 1000
        k = int(rng.integers(0, 4))
        cps = sorted(rng.choice(np.arange(100, n - 100), size=k, replace=False).tolist()) if k else []
        while any(b - a < 60 for a, b in zip(cps, cps[1:])):
            cps = sorted(rng.choice(np.arange(100, n - 100), size=k, replace=False).tolist())
        level = np.zeros(n)
        for c in cps:
            level[c:] += rng.choice([-1, 1]) * rng.uniform(0.5, 2.0)
        e = rng.standard_t(4, n) / np.sqrt(2.0)
        noise = np.zeros(n)
        for i in range(1, n):
            noise[i] = 0.3 * noise[i - 1] + e[i]
        out.append((level + noise, cps))
    return out


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


def score(found: List[int], truth: List[int]) -> Tuple[int, int, int]:
    tp = sum(any(abs(f - t) <= TOL for f in found) for t in truth)
    fp = sum(not any(abs(f - t) <= TOL for t in truth) for f in found)
    return tp, fp, len(truth) - tp


def delay(method, x: np.ndarray, t: int) -> float:
    for d in DELAYS:
        if t + d > len(x):
            break
        if any(abs(f - t) <= TOL for f in method(x[:t + d])):
            return d
    return float("nan")


def evaluate(series, label: str, delay_samples: int) -> List[str]:
    rows = []
    for name, method in METHODS.items():
        tp = fp = fn = 0
        points = 0
        t0 = time.perf_counter()
        for x, truth in series:
            a, b, c = score(method(x), truth)
            tp, fp, fn = tp + a, fp + b, fn + c
            points += len(x)
        secs = time.perf_counter() - t0
        delays = []
        for x, truth in series[:delay_samples]:
            delays += [delay(method, x, t) for t in truth]
        det = [d for d in delays if d == d]
        prec = tp / (tp + fp) if tp + fp else float("nan")
        rec = tp / (tp + fn) if tp + fn else float("nan")
        med = f"{np.median(det):.0f}" if det else "-"
        rows.append(f"| {label} | {name} | {prec:.2f} | {rec:.2f} | {tp}/{fp}/{fn} | {med} "
                    f"({len(det)}/{len(delays)} seen by +{DELAYS[-1]}) | {1000 * secs / points * 1000:.2f} |")
        print(rows[-1], flush=True)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--series", type=int, default=60)
    p.add_argument("--delay-series", type=int, default=25)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    head = ["| series | method | precision | recall | TP/FP/FN | median delay, points | ms per 1,000 points |",
            "|---|---|---|---|---|---|---|"]
    rows = evaluate(synthetic(args.series), f"synthetic ({args.series} x 1,000)", args.delay_series)
    fleet = fleet_series()
    rows += evaluate(fleet, f"fleet load-shift ({len(fleet)} x {len(fleet[0][0])})", len(fleet))
    text = "\n".join(["## Change points: precision, recall, delay, run time", ""] + head + rows)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
