"""Every decision of a time-ordered replay, written out so that two versions of the
detector can be compared decision for decision (a change meant only to make evaluation
cheaper must leave this output identical).

    .venv/bin/python benchmarks/detector_decisions.py dump OUT.jsonl [--case seed|late-waves|both]
        [--one-shot DIR]
    .venv/bin/python benchmarks/detector_decisions.py diff A.jsonl B.jsonl

``dump``: the seed case (0.75x, 2,000 hosts, default physics) every 20 simulated minutes
through its canary wave, and/or the late-waves no-effect rollout (3 copies at a tenth of
its size, ``Physics.random(300)``) every 2 hours; per evaluation, every comparison (hosts,
windows, confounds, each test's p, q, effect and interval) and every candidate record
(status, reasons, headline), one JSON line each. To dump an older version, put its
package first on PYTHONPATH. ``--one-shot DIR``: each evaluation is instead the one-shot
evaluation ``detect`` and ``verdict`` run (``run.evaluate`` with ``--as-of``: it reads what it
needs from a dataset, without a cache between runs), over the case written once as a
dataset under DIR (a day's windows in four files). ``diff``: the lines that differ (none:
identical).
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import timedelta
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _dataset(df, root: Path) -> None:
    """``df``'s host windows in the dataset layout (``level=host/window_s=60/date=.../``),
    each day in four files of six hours; kept when ``root`` holds them already."""
    import polars as pl
    base = root / "level=host" / "window_s=60"
    if base.is_dir():
        return
    df = df.with_columns(pl.col("window_start").dt.date().alias("_day"),
                         (pl.col("window_start").dt.hour() // 6).alias("_part"))
    for (day, part), rows in df.group_by("_day", "_part", maintain_order=True):
        d = base / f"date={day.isoformat()}"
        d.mkdir(parents=True, exist_ok=True)
        rows.drop("_day", "_part").write_parquet(d / f"part-{part}.parquet")


def _evaluations(case: str, one_shot: Optional[str] = None):
    from detector_eval import KEEP, grid, replicate
    from detector_replay import NO_EFFECT
    from detector_scenarios import host_windows
    from foliowatch.detector.analysis import AnalysisCache, DetectorConfig, analyze
    from foliowatch.detector.attribution import kernel_changes
    from foliowatch.detector.records import RegressionState
    from foliowatch.simulator import load_scenario
    from foliowatch.simulator.physics import Physics
    if case == "seed":
        sc = load_scenario("seed-iomap-arm64-xfs", interval_s=60, seed=300, hours=18.5)
        step, span = 20, timedelta(hours=8)
    else:
        base, change = NO_EFFECT[case]
        sc = change(load_scenario(base, interval_s=60, seed=300))
        sc = replicate(sc, 3, 0.1, 300)
        sc.physics = Physics.random(300)
        step, span = 120, None
    df = host_windows(sc).select(KEEP)
    first = kernel_changes(df)["at"].min()
    end = first + span if span else df["window_start"].max()
    state, cache = RegressionState(None), AnalysisCache()
    if one_shot:
        from foliowatch.detector import run
        root = Path(one_shot) / case
        _dataset(df, root)
        ns = argparse.Namespace(dataset=str(root), window_s=60, history=timedelta(days=7),
                                lookback=timedelta(hours=6), fdr=None, as_of=None)
    for t in grid(first + timedelta(minutes=step), end, step):
        if one_shot:
            a = run.evaluate(ns, as_of=t)
        else:
            a = analyze(df, as_of=t, config=DetectorConfig(changepoints=False), cache=cache)
        state.update(a.candidates, a.rolled_back, a.as_of)
        yield case, t, a, state


def dump(out: str, cases, one_shot: Optional[str] = None) -> None:
    with open(out, "w") as f:
        for case in cases:
            for c, t, a, state in _evaluations(case, one_shot):
                for comp in sorted(a.comparisons, key=lambda c: (str(c.group), c.kernel_from, c.kernel_to)):
                    f.write(json.dumps({
                        "case": c, "as_of": t.isoformat(), "kind": "comparison",
                        "group": list(map(str, comp.group)), "from": comp.kernel_from, "to": comp.kernel_to,
                        "n": [comp.n_new, comp.n_base, comp.n_new_compared, comp.windows],
                        "confounds": comp.confounds,
                        "tests": [[m.metric, m.statistic, m.n_new, m.n_base, m.p_value, m.q_value,
                                   m.effect, m.ci_low, m.ci_high] for m in comp.tests]},
                        default=str) + "\n")
                for r in sorted(a.candidates, key=lambda r: r.id):
                    f.write(json.dumps({"case": c, "as_of": t.isoformat(), "kind": "candidate",
                                        "id": r.id, "status": r.status, "metric": r.metric,
                                        "statistic": r.statistic, "effect": r.effect,
                                        "reasons": r.reasons, "headline": r.headline}) + "\n")
                for r in sorted(state.open_records(), key=lambda r: r.id):
                    f.write(json.dumps({"case": c, "as_of": t.isoformat(), "kind": "open",
                                        "id": r.id, "status": r.status}) + "\n")
                f.flush()
                print(c, t, len(a.comparisons), len(a.candidates), flush=True)


def _close(x, y, rel: float) -> bool:
    """Equal, up to ``rel`` relative difference between floats (last-bit rounding of a
    sum taken in another order)."""
    if isinstance(x, float) and isinstance(y, float):
        return x == y or abs(x - y) <= rel * max(abs(x), abs(y))
    if isinstance(x, list) and isinstance(y, list):
        return len(x) == len(y) and all(_close(a, b, rel) for a, b in zip(x, y))
    if isinstance(x, dict) and isinstance(y, dict):
        return x.keys() == y.keys() and all(_close(x[k], y[k], rel) for k in x)
    return x == y


def diff(a: str, b: str, rel: float = 1e-9) -> int:
    """Lines that differ: exactly, and beyond ``rel`` in some float (every decision, status
    and count must be equal for a line to be close)."""
    la, lb = Path(a).read_text().splitlines(), Path(b).read_text().splitlines()
    exact = bad = 0
    worst = 0.0
    for i, (x, y) in enumerate(zip(la, lb)):
        if x == y:
            continue
        exact += 1
        jx, jy = json.loads(x), json.loads(y)
        if not _close(jx, jy, rel):
            bad += 1
            if bad <= 10:
                print(f"line {i + 1}:\n  {x[:400]}\n  {y[:400]}")
        else:
            for tx, ty in zip(jx.get("tests", []), jy.get("tests", [])):
                for u, v in zip(tx, ty):
                    if isinstance(u, float) and u != v:
                        worst = max(worst, abs(u - v) / max(abs(u), abs(v)))
    if len(la) != len(lb):
        print(f"{len(la)} lines against {len(lb)}")
        bad += 1
    print(f"{len(la)} lines compared: {exact} not byte-identical, {bad} differ beyond a relative "
          f"{rel:g} (largest relative float difference among the others: {worst:.1e})")
    return 1 if bad else 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("dump")
    d.add_argument("out")
    d.add_argument("--case", default="both", choices=("seed", "late-waves", "both"))
    d.add_argument("--one-shot", metavar="DIR", default=None,
                   help="evaluate as a one-shot detect does, from the case written as a dataset here")
    f = sub.add_parser("diff")
    f.add_argument("a")
    f.add_argument("b")
    args = p.parse_args(argv)
    if args.cmd == "diff":
        return diff(args.a, args.b)
    dump(args.out, ["seed", "late-waves"] if args.case == "both" else [args.case], args.one_shot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
