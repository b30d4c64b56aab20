"""The detector reads the pipeline's dataset while the pipeline writes it: a window's file
renamed over its old copy (a replayed window) is read whole, old or new, never half of
each; ``since`` reads only the ``date=`` folders it needs; a damaged file is an error
that names the dataset and what to do."""

from __future__ import annotations

import io
import os
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

import polars as pl
import pytest

from foliowatch.detector import frames
from foliowatch.files import atomic_write

DAY0 = datetime(2026, 11, 2, tzinfo=timezone.utc)


def _window(version: int, rows: int, start: datetime) -> bytes:
    df = pl.DataFrame({
        "window_start": [start] * rows,
        "window_s": [60] * rows,
        "host_id": [f"h{i}" for i in range(rows)],
        "version": [version] * rows,
        "write_mib_s": [float(i) for i in range(rows)],
    })
    buf = io.BytesIO()
    df.write_parquet(buf, compression="zstd", statistics=True)
    return buf.getvalue()


def _rows(version: int) -> int:
    return 50 + (version % 40) * 23      # every version of a file has another size


def test_files_replaced_while_read_are_read_whole(tmp_path):
    day = tmp_path / "ds" / "level=host" / "window_s=60" / "date=2026-11-02"
    day.mkdir(parents=True)
    names = [day / f"part-p0-{i * 1000}-{i * 1000 + 999}.parquet" for i in range(6)]
    for i, p in enumerate(names):
        p.write_bytes(_window(i, _rows(i), DAY0 + timedelta(minutes=i)))
    stop, rewrites = threading.Event(), [0]

    def replay():     # the pipeline's own atomic write, as fast as it goes
        v = len(names)
        while not stop.is_set():
            atomic_write(names[v % len(names)],
                         _window(v, _rows(v), DAY0 + timedelta(minutes=v % len(names))),
                         tmp_dir=tmp_path / "ds" / "_tmp")
            v += 1
            rewrites[0] += 1

    writer = threading.Thread(target=replay)
    writer.start()
    try:
        reads = 0
        while reads < 150 or rewrites[0] < 300:
            df = frames.read_host_windows(str(tmp_path / "ds"), 60)
            counts = df.group_by("version").len()
            assert counts.height == len(names), counts
            for v, n in counts.iter_rows():
                assert n == _rows(v), f"version {v}: {n} rows of {_rows(v)}"
            reads += 1
    finally:
        stop.set()
        writer.join()
    assert rewrites[0] >= 300


def test_since_reads_only_the_days_it_needs_and_equals_a_filtered_full_read(tmp_path):
    root = tmp_path / "ds"
    for d in range(4):
        day = root / "level=host" / "window_s=60" / f"date={(DAY0 + timedelta(days=d)).date()}"
        day.mkdir(parents=True)
        for h in range(3):
            (day / f"part-p0-{d}-{h}.parquet").write_bytes(
                _window(d, 10, DAY0 + timedelta(days=d, hours=h * 8)))
    since = DAY0 + timedelta(days=2, hours=4)
    files = frames.host_files(str(root), 60, since=since)
    assert {Path(f).parent.name for f in files} == {"date=2026-11-04", "date=2026-11-05"}
    full = frames.read_host_windows(str(root), 60)
    part = frames.read_host_windows(str(root), 60, since=since)
    assert part.sort("window_start", "host_id").equals(
        full.filter(pl.col("window_start") >= since).sort("window_start", "host_id"))
    # nothing in range: no rows, the columns all the same
    empty = frames.read_host_windows(str(root), 60, since=DAY0 + timedelta(days=9))
    assert empty.is_empty() and empty.columns == full.columns
    assert frames.newest_window(str(root), 60) == DAY0 + timedelta(days=3, hours=16)


def test_a_damaged_file_is_named_with_what_to_do(tmp_path):
    day = tmp_path / "ds" / "level=host" / "window_s=60" / "date=2026-11-02"
    day.mkdir(parents=True)
    (day / "part-p0-0-9.parquet").write_bytes(_window(0, 10, DAY0))
    (day / "part-p0-10-19.parquet").write_bytes(b"PAR1 not parquet at all")
    with pytest.raises(frames.DatasetReadError) as e:
        frames.read_host_windows(str(tmp_path / "ds"), 60)
    msg = str(e.value)
    assert str(day / "part-p0-10-19.parquet") in msg and "damaged" in msg
    assert "Move it out of the dataset" in msg
    with pytest.raises(FileNotFoundError, match="run `foliowatch pipeline` first"):
        frames.read_host_windows(str(tmp_path / "empty"), 60)


def _evaluation(a) -> dict:
    """What an evaluation decides, in a form two evaluations can be compared in."""
    return {
        "comparisons": [(c.group, c.kernel_from, c.kernel_to, c.n_new, c.n_base,
                         c.n_new_compared, c.windows, c.confounds,
                         [(t.metric, t.statistic, t.n_new, t.n_base, t.p_value, t.q_value,
                           t.effect, t.ci_low, t.ci_high) for t in c.tests])
                        for c in a.comparisons],
        "candidates": [(r.id, r.status, r.metric, r.statistic, r.reasons, r.headline)
                       for r in a.candidates],
        "rolled_back": sorted(a.rolled_back), "hosts": a.hosts_by_group,
        "rollouts": [(r.key, r.kernel_from, r.kernel_to, r.hosts, r.is_rollback)
                     for r in a.rollouts],
        "change_points": [(cp.group, cp.metric, cp.at, cp.attribution.kind) for cp in a.change_points],
    }


def _close(x, y) -> bool:
    if isinstance(x, float) and isinstance(y, float):
        return x == y or abs(x - y) <= 1e-9 * max(abs(x), abs(y))
    if isinstance(x, (list, tuple)) and isinstance(y, (list, tuple)):
        return len(x) == len(y) and all(_close(a, b) for a, b in zip(x, y))
    if isinstance(x, dict) and isinstance(y, dict):
        return x.keys() == y.keys() and all(_close(x[k], y[k]) for k in x)
    return x == y


def test_a_one_shot_read_group_by_group_decides_as_every_window_at_once(tmp_path, monkeypatch):
    """``detect`` and ``verdict`` read one group at a time (``run.evaluate_by_group``):
    the same comparisons, tests, false discovery rate and records as ``analyze`` over
    every window in memory, with the reference's host sample in use (groups larger than
    ``reference_hosts``) and files read a few at a time, in batches of rows."""
    from argparse import Namespace

    from foliowatch.detector import run
    from foliowatch.detector.analysis import DetectorConfig, analyze
    root, whole = three_groups_dataset(tmp_path, monkeypatch)
    config = DetectorConfig(reference_hosts=40)
    args = Namespace(dataset=str(root), window_s=60, history=timedelta(days=7))
    for minute in (230, 299):
        as_of = DAY0 + timedelta(minutes=minute)
        one_shot = _evaluation(run.evaluate_by_group(args, as_of, config))
        in_memory = _evaluation(analyze(whole, as_of=as_of, config=config))
        assert _close(one_shot, in_memory), (one_shot, in_memory)
        assert len(one_shot["hosts"]) == 3 and len(one_shot["comparisons"]) == 2
    assert [c[1] for c in one_shot["candidates"]] == ["confirmed"], one_shot["candidates"]
    assert one_shot["rolled_back"], one_shot


def three_groups_dataset(tmp_path, monkeypatch):
    """A dataset of 5 h in which every file holds three groups (a regression, a rollback
    without an effect, a group with no rollout), read a few files at a time, in batches
    of rows: its root and every window of it in one frame."""
    from test_detector_helpers import fleet_frame
    df = pl.concat([
        # a regression, a rollback without an effect, a group with no rollout
        fleet_frame(n_hosts=90, minutes=300, canary_hosts=12, write_factor=0.75,
                    stall_factor=4.0, seed=1),
        fleet_frame(n_hosts=80, minutes=300, arch="x86_64", fs="ext4", canary_hosts=10,
                    rollback_minute=200, seed=2),
        fleet_frame(n_hosts=60, minutes=300, fleet="web", canary_hosts=0, seed=3),
    ], how="diagonal_relaxed").sort("window_start", maintain_order=True)
    root = tmp_path / "ds"
    day = root / "level=host" / "window_s=60" / "date=2026-11-02"
    day.mkdir(parents=True)
    hour = pl.col("window_start").dt.hour()
    for h in range(5):      # an hour a file; every file holds every group
        df.filter(hour == h).write_parquet(day / f"part-p0-{h}.parquet")
    monkeypatch.setattr(frames, "FILES_PER_READ", 2)
    monkeypatch.setattr(frames, "BATCH_ROWS", 7_000)
    return root, frames.read_host_windows(str(root), 60)


def test_a_killed_detects_spill_folder_is_removed_by_the_next_one(tmp_path):
    """A one-shot evaluation spills each group's rows to a temporary folder; SIGKILL or
    the OOM killer leaves it behind (~1 GB at 2,000 hosts). The next evaluation removes
    the folders of processes that no longer exist, and only those."""
    import subprocess

    from foliowatch.detector.run import SPILL_PREFIX, spill_directory
    gone = subprocess.Popen(["true"])
    gone.wait()
    left = tmp_path / f"{SPILL_PREFIX}{gone.pid}-abc"
    (left / "lookback").mkdir(parents=True)
    (left / "lookback" / "part-0.parquet").write_bytes(b"x" * 1024)
    running = tmp_path / f"{SPILL_PREFIX}{os.getppid()}-def"     # a live process's
    running.mkdir()
    other = tmp_path / "foliowatch-detect-notapid"
    other.mkdir()
    with spill_directory(str(tmp_path)) as spill:
        assert os.path.basename(spill).startswith(f"{SPILL_PREFIX}{os.getpid()}-")
        assert not left.exists()
        assert running.exists() and other.exists()
    assert not os.path.exists(spill)
