"""When the seed scenario's cohort is first suspected, with and without the mechanism
evidence (costly-order direct compaction from the agent's tracepoint counters).

    .venv/bin/python benchmarks/mechanism_detection.py [--seeds 3] [--step 5] [--hours 6]

For each seed, the seed scenario (2,000 hosts, 60 s windows) is simulated once and the
continuous detector replayed every ``--step`` simulated minutes from the first canary
reboot, twice on the same host windows: with the tracepoint sums (every host runs the
collector) and without them (no host does: the detector as it was before). Times are
counted from when the regression exists per the simulator's ground truth: the time the
third canary of the arm64 4K XFS cohort reaches the fragmentation at which the injected
change is half on (``detector_eval.visible_at``, the README's "exists on 3 canaries"),
and from the first canary reboot; the table also gives when the change begins at all
(the third canary past the change's ``frag_onset``). A negative time is a suspicion before that point (the
mechanism shows on the canaries as soon as they fragment at all, before the throughput
loss is fully on). Also printed: the record's status and deciding metric at that time,
and any other cohort flagged meanwhile (x86_64 and ext4 are unaffected in the scenario).
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from detector_eval import KEEP, grid, injected, is_true, visible_at  # noqa: E402
from detector_scenarios import host_windows  # noqa: E402

from foliowatch.detector.analysis import AnalysisCache, DetectorConfig, analyze  # noqa: E402
from foliowatch.detector.records import RegressionState  # noqa: E402
from foliowatch.detector.attribution import kernel_changes  # noqa: E402
from foliowatch.schema import TRACEPOINT_COUNTERS  # noqa: E402
from foliowatch.simulator import ground_truth, load_scenario  # noqa: E402

TRACEPOINT_SUMS = [f"{c}_sum" for c in TRACEPOINT_COUNTERS] + ["write_bytes_sum"]


def minutes(a, b) -> str:
    return f"{(a - b).total_seconds() / 60:+.0f}" if a is not None and b is not None else "-"


def first_flags(df, truth, times, cfg):
    """Replay the continuous detector over ``times``: when the arm64 4K XFS cohort is
    first open (suspected or confirmed) and first confirmed, its record then, and the
    other cohorts flagged meanwhile (stops at the confirmation)."""
    state, cache = RegressionState(None), AnalysisCache()
    suspected = confirmed = first_rec = None
    others = set()
    for t in times:
        a = analyze(df, as_of=t, config=cfg, cache=cache)
        state.update(a.candidates, a.rolled_back, a.as_of)
        for rec in state.open_records():
            if not is_true(rec, truth):
                others.add(rec.id)
            elif rec.page_size == 4096:
                if suspected is None:
                    suspected, first_rec = t, copy.deepcopy(rec)
                if rec.status == "confirmed" and confirmed is None:
                    confirmed = t
        if confirmed is not None:
            break
    return suspected, first_rec, confirmed, sorted(others)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--seed0", type=int, default=42)
    ap.add_argument("--step", type=int, default=5, help="simulated minutes between evaluations")
    ap.add_argument("--hours", type=float, default=6.0,
                    help="replay this long after the first canary reboot")
    ap.add_argument("--hosts", type=int, default=None, help="scale the fleet (default 2,000)")
    args = ap.parse_args()
    cfg = DetectorConfig(changepoints=False)
    rows = ["| seed | change begins / regression exists (3 canaries) after first reboot | "
            "first suspected, "
            "without mechanism evidence | first suspected, with it | with it: status, metric "
            "| first confirmed, without / with | other cohorts flagged (without / with) |",
            "|---|---|---|---|---|---|---|"]
    for s in range(args.seeds):
        seed = args.seed0 + s
        t0 = time.monotonic()
        sc = load_scenario("seed-iomap-arm64-xfs", hosts=args.hosts,
                           hours=10 + args.hours + 0.5, interval_s=60, seed=seed)
        df = host_windows(sc).select(KEEP + TRACEPOINT_SUMS)
        truth = ground_truth(sc, seed)
        change = next(t for t in injected(truth) if t["page_size"] == 4096)
        ch = kernel_changes(df)
        first = ch["at"].min()
        exists = visible_at(df, ch, change)
        # the change begins at all (3 canaries past frag_onset): the earliest defensible start
        begins = visible_at(df, ch, {**change, "frag_full": change["frag_onset"]})
        times = grid(first, first + timedelta(hours=args.hours), args.step)
        found = {label: first_flags(frame, truth, times, cfg) for label, frame in
                 (("without", df.drop(TRACEPOINT_SUMS)), ("with", df))}
        (t_wo, _, c_wo, fa_wo), (t_w, rec_w, c_w, fa_w) = found["without"], found["with"]

        def at(t):
            return (f"{minutes(t, exists)} min ({minutes(t, first)} from first reboot)"
                    if t is not None else f"not in {args.hours:g} h")
        rows.append(f"| {seed} | {minutes(begins, first)} / {minutes(exists, first)} min | "
                    f"{at(t_wo)} | {at(t_w)} | "
                    f"{rec_w.status if rec_w else '-'}, {rec_w.metric if rec_w else '-'} | "
                    f"{minutes(c_wo, exists)} / {minutes(c_w, exists)} min | "
                    f"{', '.join(fa_wo) or 'none'} / {', '.join(fa_w) or 'none'} |")
        print(rows[-1], f"({time.monotonic() - t0:.0f} s)", flush=True)
    print(f"\nload average {os.getloadavg()[0]:.1f}; evaluation every {args.step} simulated "
          "minutes; minutes relative to when the regression exists on 3 canaries")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
