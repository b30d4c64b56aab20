"""The continuous detector (`foliowatch detect --follow`) on a dataset that grows while it
runs: it evaluates each newest window, reads only what is new (what it holds equals a
fresh read), holds the lookback and the reference history, never all of `--history`,
decides as a one-shot `detect` does, serves /metrics over HTTP, and stops on SIGTERM."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request
from argparse import Namespace
from datetime import timedelta
from pathlib import Path

import polars as pl

from foliowatch.shell import cli
from foliowatch.detector import attribution
from foliowatch.detector.analysis import REFERENCE_HISTORY_COLUMNS, DetectorConfig, analyze
from foliowatch.detector.run import FollowedFrame, evaluate, evaluate_by_group, load_frame
from foliowatch.shell.services import free_port, stop_pid

from test_detector_e2e import scenario_file


def _pipeline(files: Path, dataset: Path) -> None:
    assert cli.main(["pipeline", "--from-files", str(files), "--output", str(dataset),
                     "--windows", "60", "--metrics-addr", "off"]) == 0


def _split_samples(tmp: Path, scenario: Path):
    """Simulated samples cut in two at 11 h: the dataset gets the first part, then the
    second part while the detector runs."""
    files = tmp / "files"
    assert cli.main(["simulate", "--scenario", str(scenario), "--hosts", "200", "--hours", "13",
                     "--interval", "60", "--seed", "5", "--output", str(files),
                     "--format", "parquet"]) == 0
    df = pl.concat([pl.read_parquet(p) for p in sorted(files.glob("samples-*.parquet"))])
    cut = df["ts"].min() + 11 * 3600
    parts = []
    for name, part in (("a", df.filter(pl.col("ts") < cut)), ("b", df.filter(pl.col("ts") >= cut))):
        d = tmp / f"files-{name}"
        d.mkdir()
        part.write_parquet(d / "samples-00000.parquet")
        parts.append(d)
    return parts


def _wait_lines(proc, out_path: Path, n: int, timeout: float = 240.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = [ln for ln in out_path.read_text().splitlines() if ln.startswith("{")]
        if len(lines) >= n:
            return [json.loads(ln) for ln in lines]
        assert proc.poll() is None, f"detector exited early: {out_path.read_text()[-2000:]}"
        time.sleep(0.5)
    raise AssertionError(f"no {n} evaluations within {timeout} s: {out_path.read_text()[-2000:]}")


def test_follow_evaluates_new_windows_serves_metrics_and_stops_on_sigterm(tmp_path, capsys):
    first, second = _split_samples(tmp_path, scenario_file(tmp_path, "seed-iomap-arm64-xfs"))
    dataset, state = tmp_path / "dataset", tmp_path / "state.json"
    _pipeline(first, dataset)
    port = free_port()
    out = tmp_path / "detect.out"
    with open(out, "w") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "foliowatch", "detect", "--follow",
                                 "--dataset", str(dataset), "--state", str(state),
                                 "--poll-interval", "0.5", "--metrics-addr", f"127.0.0.1:{port}", "--json"],
                                stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        runs = _wait_lines(proc, out, 1)
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        assert "foliowatch_detector_last_run_timestamp_seconds" in body
        assert "foliowatch_detector_comparisons" in body
        _pipeline(second, dataset)          # the dataset grows while the detector runs
        runs = _wait_lines(proc, out, 2)
        assert runs[-1]["as_of"] > runs[0]["as_of"]
        assert state.exists()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)               # stops promptly, not by escalation to KILL
    finally:
        if proc.poll() is None:
            stop_pid(proc.pid)


def _sorted(df: pl.DataFrame) -> pl.DataFrame:
    keys = [k for k in ("window_start", "host_id", "boot_id", "fs") if k in df.columns]
    return df.sort(keys)


def test_followed_frame_equals_a_fresh_read_after_the_dataset_grows(tmp_path):
    first, second = _split_samples(tmp_path, scenario_file(tmp_path, "seed-iomap-arm64-xfs"))
    dataset = tmp_path / "dataset"
    args = Namespace(dataset=str(dataset), window_s=60, history=timedelta(hours=8),
                     lookback=timedelta(hours=2))
    config = DetectorConfig(lookback=args.lookback, reference_history=timedelta(hours=4))
    _pipeline(first, dataset)
    followed = FollowedFrame(args, config)
    n1 = load_frame(args, None)["window_start"].max()
    followed.update(n1)
    # one row per boot of the whole --history, read at the start (an evaluation adds the
    # boots of each new window): the rollout began before the horizons
    boots = attribution.boots(load_frame(args, n1))
    assert boots["window_start"].min() < n1 - config.reference_history
    assert _sorted(followed.cache.boots).equals(_sorted(boots.select(followed.cache.boots.columns)))
    _pipeline(second, dataset)
    n2 = load_frame(args, None)["window_start"].max()
    assert n2 > n1 + timedelta(hours=1)
    followed.update(n2)
    fresh = load_frame(args, n2)
    ws = pl.col("window_start")
    # every column of the lookback (and the windows re-read before it), nothing older
    since = n2 - config.lookback - followed.reread
    want = fresh.filter(ws >= since)
    assert followed.windows["window_start"].min() == since
    assert _sorted(followed.windows).equals(_sorted(want.select(followed.windows.columns)))
    # the reference history in the reference's columns only
    since = n2 - config.reference_history
    assert followed.reference.columns == [c for c in REFERENCE_HISTORY_COLUMNS if c in fresh.columns]
    assert followed.reference["window_start"].min() == since
    assert _sorted(followed.reference).equals(
        _sorted(fresh.filter(ws >= since).select(followed.reference.columns)))


def test_the_follower_decides_as_a_one_shot_and_as_every_window_at_once(tmp_path, monkeypatch):
    """Polled at two times, with a lookback and a reference history shorter than the
    data (so that what the follower holds is a part of it), its evaluation equals a
    one-shot ``detect``'s and ``analyze``'s over every window in memory: the same
    comparisons, tests, false discovery rate, records, rollouts and rollbacks."""
    from test_detector_read import DAY0, _close, _evaluation, three_groups_dataset
    root, whole = three_groups_dataset(tmp_path, monkeypatch)
    config = DetectorConfig(reference_hosts=40, lookback=timedelta(minutes=120),
                            reference_history=timedelta(minutes=180))
    args = Namespace(dataset=str(root), window_s=60, history=timedelta(days=7), as_of=None)
    followed = FollowedFrame(args, config)
    for minute in (230, 299):
        as_of = DAY0 + timedelta(minutes=minute)
        followed.update(as_of)
        assert followed.reference["window_start"].min() == as_of - config.reference_history
        follower = _evaluation(evaluate(args, as_of, followed))
        one_shot = _evaluation(evaluate_by_group(args, as_of, config))
        in_memory = _evaluation(analyze(whole, as_of=as_of, config=config))
        assert _close(follower, one_shot), (follower, one_shot)
        assert _close(follower, in_memory), (follower, in_memory)
        assert len(follower["comparisons"]) == 2
    assert [c[1] for c in follower["candidates"]] == ["confirmed"], follower["candidates"]
    assert follower["rolled_back"], follower
