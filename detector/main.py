"""``foliowatch detect``: evaluate the pipeline's Parquet dataset once (or after every new
window with ``--follow``), update the regression state, and announce transitions to
Kafka, /metrics and Grafana annotations."""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from datetime import datetime, timedelta, timezone
from typing import List, Optional

from .records import Transition

DEFAULT_STATE = "foliowatch-detector-state.json"


def parse_duration(text: str) -> timedelta:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd])\s*", text or "")
    if not m:
        raise argparse.ArgumentTypeError(f"expected a duration like 30m, 6h or 7d, got {text!r}")
    n, unit = float(m.group(1)), m.group(2)
    return timedelta(seconds=n * {"s": 1, "m": 60, "h": 3600, "d": 86400}[unit])


def parse_time(text: str) -> datetime:
    try:
        t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an ISO 8601 time such as "
                                         f"2026-11-02T06:30:00Z, got {text!r}") from None
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


def add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", required=True, help="dataset root written by `foliowatch pipeline`")
    parser.add_argument("--window-s", type=int, default=60, help="host window length to read (default 60)")
    parser.add_argument("--as-of", type=parse_time, default=None,
                        help="evaluate as of this time (default: the newest window)")
    parser.add_argument("--lookback", type=parse_duration, default=timedelta(hours=6),
                        help="windows compared (default 6h)")
    parser.add_argument("--history", type=parse_duration, default=timedelta(days=7),
                        help="windows read to find rollouts and rollbacks (default 7d)")
    parser.add_argument("--state", default=DEFAULT_STATE, help=f"state file (default {DEFAULT_STATE})")
    parser.add_argument("--fdr", type=float, default=None, help="false discovery rate (default 0.001)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common(parser)
    parser.add_argument("--follow", action="store_true", help="keep running: evaluate every new window")
    parser.add_argument("--interval", type=float, default=60.0, help="seconds between polls with --follow")
    parser.add_argument("--min-consecutive", type=int, default=1,
                        help="evaluations in a row a regression must be seen before it is announced")
    parser.add_argument("--kafka", metavar="HOST:PORT[,...]", default=None,
                        help=f"bootstrap servers; transitions go to foliowatch.regressions.v1")
    parser.add_argument("--annotations", metavar="PATH", default=None,
                        help="append Grafana annotations of transitions to this JSON file")
    parser.add_argument("--metrics-file", metavar="PATH", default=None,
                        help="write the /metrics exposition here after each evaluation")
    parser.add_argument("--metrics-port", type=int, default=None,
                        help="serve /metrics on 127.0.0.1:PORT (with --follow)")


def config_from(args):
    from .analysis import DetectorConfig
    from .evidence import EvidencePolicy
    cfg = DetectorConfig(lookback=args.lookback)
    if args.fdr is not None:
        if not 0 < args.fdr < 1:
            raise SystemExit(f"--fdr: expected a rate in (0, 1), got {args.fdr}")
        cfg.policy = EvidencePolicy(fdr=args.fdr)
    return cfg


def load_frame(args, as_of: Optional[datetime]):
    from .frames import read_host_windows
    since = (as_of - args.history) if as_of else None
    df = read_host_windows(args.dataset, args.window_s, since=since, until=as_of)
    if as_of is None and not df.is_empty():
        newest = df["window_start"].max()
        df = df.filter(df["window_start"] >= newest - args.history)
    return df


class FollowedFrame:
    """The host windows a continuous detector holds between runs: each poll reads only
    the windows from ``reread`` before the newest one held (late records rewrite the
    last windows' files) and drops what falls out of ``history``."""

    def __init__(self, args, reread: timedelta = timedelta(minutes=10)):
        self.args = args
        self.reread = reread
        self.df = None

    def update(self, newest: datetime):
        from .frames import _utc, read_host_windows
        import polars as pl
        newest = _utc(newest)
        if self.df is None or self.df.is_empty():
            self.df = load_frame(self.args, newest)
            return self.df
        cut = self.df["window_start"].max() - self.reread
        fresh = read_host_windows(self.args.dataset, self.args.window_s, since=cut, until=newest)
        keep = self.df.filter((pl.col("window_start") < cut)
                              & (pl.col("window_start") >= newest - self.args.history))
        self.df = pl.concat([keep, fresh.select(keep.columns)], how="vertical_relaxed")
        return self.df


def evaluate(args, state, as_of: Optional[datetime] = None, frame=None, cache=None):
    """One evaluation: returns (analysis, transitions). ``frame``: host windows already
    read (``FollowedFrame``); ``cache``: an ``AnalysisCache`` kept between runs."""
    from .analysis import analyze
    df = frame if frame is not None else load_frame(args, as_of or args.as_of)
    if df.is_empty():
        raise SystemExit(f"dataset {args.dataset}: no host windows in the requested range")
    analysis = analyze(df, as_of=as_of or args.as_of, config=config_from(args), cache=cache)
    transitions = state.update(analysis.candidates, analysis.rolled_back, analysis.as_of,
                               min_consecutive=getattr(args, "min_consecutive", 1))
    state.save()
    return analysis, transitions


def announce(args, transitions: List[Transition], analysis, last_run: dict) -> None:
    from . import outputs
    if args.kafka and transitions:
        outputs.publish_kafka(transitions, args.kafka)
    if args.annotations and transitions:
        existing = []
        try:
            with open(args.annotations) as f:
                existing = json.load(f)
        except FileNotFoundError:
            pass
        outputs.write_json_atomic(args.annotations, existing + outputs.grafana_annotations(transitions))
    last_run.update(wall=time.time(), comparisons=len(analysis.comparisons),
                    as_of=analysis.as_of.timestamp())
    if args.metrics_file:
        with open(args.metrics_file, "wb") as f:
            f.write(outputs.metrics_text(args.state, last_run))


def summary(analysis, transitions: List[Transition]) -> dict:
    return {
        "as_of": analysis.as_of.isoformat(),
        "comparisons": len(analysis.comparisons),
        "tests": sum(len(c.tests) for c in analysis.comparisons),
        "transitions": [{"id": t.record.id, "from": t.previous, "to": t.record.status}
                        for t in transitions],
        "regressions": [json.loads(r.to_json()) for r in analysis.candidates],
        "rollouts": [{"fleet": r.fleet, "role": r.role, "arch": r.arch, "page_size": r.page_size,
                      "kernel_from": r.kernel_from, "kernel_to": r.kernel_to,
                      "rollback": r.is_rollback, "hosts": r.hosts,
                      "waves": [{"start": w.start.isoformat(), "hosts": w.hosts} for w in r.waves]}
                     for r in analysis.rollouts],
        "change_points": [dict(cp.to_dict(), group="/".join(map(str, cp.group)))
                          for cp in analysis.change_points],
    }


def print_text(analysis, transitions: List[Transition], out=sys.stdout) -> None:
    print(f"as of {analysis.as_of.isoformat()}: {len(analysis.comparisons)} kernel comparisons, "
          f"{len(analysis.candidates)} flagged", file=out)
    for t in transitions:
        print(f"  {t.previous or 'new'} -> {t.record.status}: {t.record.id}", file=out)
    for r in analysis.candidates:
        eff = (f"x{r.effect:.3f} [{r.ci_low:.3f}, {r.ci_high:.3f}]" if r.effect_kind == "ratio"
               else f"{r.effect:+.3f} [{r.ci_low:+.3f}, {r.ci_high:+.3f}]")
        others = ", ".join(sorted({m["metric"] for m in r.metrics} - {r.metric}))
        print(f"  [{r.status}] {r.id}: {r.headline}", file=out)
        print(f"      evidence: {r.metric}/{r.statistic} {eff} q={r.q_value:.2g} "
              f"hosts {r.hosts_new} vs {r.hosts_base} impact {r.impact:.1f}"
              + (f"  also: {others}" if others else ""), file=out)
    for cp in analysis.change_points:
        a = cp.attribution
        to = f"{a.kind} {a.kernel_from}->{a.kernel_to}" if a.kernel_to else a.kind
        print(f"  change point {'/'.join(map(str, cp.group))} {cp.metric} at "
              f"{cp.at.isoformat()} x{cp.to_dict()['shift_ratio']:.3f}: {to}", file=out)


def run(args) -> int:
    from .records import RegressionState
    state = RegressionState(args.state)
    last_run: dict = {}
    if not args.follow:
        analysis, transitions = evaluate(args, state)
        announce(args, transitions, analysis, last_run)
        if args.json:
            print(json.dumps(summary(analysis, transitions), indent=1))
        else:
            print_text(analysis, transitions)
        return 0
    if args.metrics_port:
        from .outputs import serve_metrics
        serve_metrics(args.state, last_run, args.metrics_port)
    from .analysis import AnalysisCache
    from .frames import newest_window
    newest_done = None
    followed = FollowedFrame(args)
    cache = AnalysisCache()
    while True:
        newest = newest_window(args.dataset, args.window_s)
        if newest is not None and newest != newest_done:
            analysis, transitions = evaluate(args, state, as_of=newest,
                                             frame=followed.update(newest), cache=cache)
            announce(args, transitions, analysis, last_run)
            if args.json:
                print(json.dumps(summary(analysis, transitions)), flush=True)
            else:
                print_text(analysis, transitions)
                sys.stdout.flush()
            newest_done = newest
        time.sleep(args.interval)
