"""``foliowatch detect``: evaluate the pipeline's Parquet dataset once (or after every new
window with ``--follow``), update the regression state, and announce transitions to
Kafka, /metrics and Grafana annotations. This is the only command that writes the state
file; the evaluation itself (``run``) writes nothing."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import List

from foliowatch.errors import ConfigError
from foliowatch.flags import add_metrics_addr, deprecated_alias
from foliowatch.kafka_io import TOPIC_REGRESSIONS, add_kafka_arguments

from .gate import add_gate_arguments
from .records import Transition
from .run import add_common


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common(parser)
    parser.add_argument("--follow", action="store_true", help="keep running: evaluate every new window")
    parser.add_argument("--poll-interval", type=float, default=60.0, metavar="SECONDS",
                        help="seconds between polls of the dataset with --follow (default 60)")
    deprecated_alias(parser, "--interval", "--poll-interval", "poll_interval", convert=float)
    parser.add_argument("--min-consecutive", type=int, default=1,
                        help="evaluations in a row a regression must be seen before it is announced")
    add_kafka_arguments(parser, f"publish transitions to {TOPIC_REGRESSIONS}", old_spelling="--kafka")
    parser.add_argument("--annotations", metavar="PATH", default=None,
                        help="append Grafana annotations of transitions to this JSON file")
    parser.add_argument("--metrics-file", metavar="PATH", default=None,
                        help="write the /metrics exposition here after each evaluation")
    add_metrics_addr(parser, None, help="serve /metrics on HOST:PORT (with --follow)",
                     old_port=True)
    add_gate_arguments(parser)


def detect_once(args, state, as_of=None, followed=None):
    """One evaluation, then the state updated and saved: returns (analysis, transitions).
    ``followed``: what a continuous detector keeps between runs (``run.FollowedFrame``)."""
    from .run import evaluate
    analysis = evaluate(args, as_of=as_of, followed=followed)
    transitions = state.update(analysis.candidates, analysis.rolled_back, analysis.as_of,
                               min_consecutive=args.min_consecutive)
    state.save()
    return analysis, transitions


def announce(args, transitions: List[Transition], analysis, state, last_run: dict,
             kafka=None) -> None:
    """Transitions to Kafka (``kafka``: the ``KafkaSettings``, None for none) and Grafana
    annotations; this run's figures and the rollout gate's decisions to /metrics."""
    from . import outputs
    from .gate import decide_all, policy_from
    if kafka is not None and transitions:
        outputs.publish_kafka(transitions, kafka)
    if args.annotations and transitions:
        existing = []
        try:
            with open(args.annotations) as f:
                existing = json.load(f)
        except FileNotFoundError:
            pass
        outputs.write_json_atomic(args.annotations, existing + outputs.grafana_annotations(transitions))
    last_run.update(wall=time.time(), comparisons=len(analysis.comparisons),
                    as_of=analysis.as_of.timestamp(),
                    rollout_verdicts=decide_all(analysis, state, policy_from(args),
                                                fdr=args.fdr))
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
    from foliowatch.kafka_io import kafka_requested, settings_from_args

    from .records import RegressionState
    # settings first: a wrong connection stops the command before it evaluates anything
    kafka = (settings_from_args(args, client_id="foliowatch-detector")
             if kafka_requested(args) else None)
    if kafka is not None:
        from foliowatch.kafka_access import preflight
        preflight(kafka)
    state = RegressionState(args.state)
    last_run: dict = {}
    if not args.follow:
        analysis, transitions = detect_once(args, state)
        announce(args, transitions, analysis, state, last_run, kafka)
        if args.json:
            print(json.dumps(summary(analysis, transitions), indent=1))
        else:
            print_text(analysis, transitions)
        return 0
    if args.metrics_addr:
        from foliowatch.flags import parse_listen

        from .outputs import serve_metrics
        host, port = parse_listen(args.metrics_addr)
        try:
            serve_metrics(args.state, last_run, port, host)
        except OSError as e:
            raise ConfigError(f"--metrics-addr {args.metrics_addr}: cannot listen "
                              f"({e.strerror}); pick a free port") from None
    from .frames import newest_window
    from .run import FollowedFrame
    newest_done = None
    followed = FollowedFrame(args)
    while True:
        newest = newest_window(args.dataset, args.window_s)
        if newest is not None and newest != newest_done:
            analysis, transitions = detect_once(args, state, as_of=newest,
                                                followed=followed.update(newest))
            announce(args, transitions, analysis, state, last_run, kafka)
            if args.json:
                print(json.dumps(summary(analysis, transitions)), flush=True)
            else:
                print_text(analysis, transitions)
                sys.stdout.flush()
            newest_done = newest
        time.sleep(args.poll_interval)
