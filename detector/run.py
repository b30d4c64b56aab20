"""One run of the detector over the dataset, shared by ``foliowatch detect`` and
``foliowatch verdict``: the arguments both take, the detector's configuration from them,
reading the host windows (all at once, or incrementally for ``--follow``), and the
evaluation, which returns an ``Analysis``. Nothing here writes anything but its own
temporary files (``spill_directory``): updating the regression state and announcing
transitions belong to ``detect`` alone (``main``)."""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from typing import Optional

from foliowatch.errors import ConfigError, InputError
from foliowatch.polars_engine import IN_MEMORY

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
    """The arguments of every command that evaluates the dataset."""
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


def config_from(args):
    from .analysis import DetectorConfig
    from .evidence import EvidencePolicy
    cfg = DetectorConfig(lookback=args.lookback)
    if args.fdr is not None:
        if not 0 < args.fdr < 1:
            raise ConfigError(f"--fdr: expected a rate in (0, 1), got {args.fdr}")
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
    """What a continuous detector holds between runs, each part bounded by a horizon of
    its own and never by ``--history``:

    - ``windows``: every column of the windows of the lookback (and ``reread`` before
      it), the ones compared;
    - ``reference``: the ``REFERENCE_HISTORY_COLUMNS`` of the windows of the lookback or
      the reference history, whichever is longer (the span a one-shot evaluation reads
      for it), what the memory-state reference is chosen and built from;
    - ``cache`` (an ``AnalysisCache``): one row per boot over ``--history`` (rollouts and
      rollbacks are read from boots), read at the start a day at a time as a one-shot
      evaluation reads them (``read_boots``), then extended by each new window's boots.

    Each poll reads only the windows from ``reread`` before the newest one held: late
    records rewrite the last windows' files. A newest window earlier than the last one
    (a dataset replaced) starts afresh."""

    def __init__(self, args, config=None, reread: timedelta = timedelta(minutes=10)):
        self.args = args
        self.config = config or config_from(args)
        self.reread = reread
        self.windows = self.reference = self.cache = self.newest = None

    def update(self, newest: datetime) -> "FollowedFrame":
        import polars as pl

        from .analysis import REFERENCE_HISTORY_COLUMNS, AnalysisCache
        from .frames import _utc, read_host_windows
        newest = _utc(newest)
        ws = pl.col("window_start")
        compared_from = newest - self.config.lookback - self.reread
        reference_from = newest - max(self.config.lookback, self.config.reference_history)

        def narrow(lf):
            names = lf.collect_schema().names()
            return lf.select([c for c in REFERENCE_HISTORY_COLUMNS if c in names])
        if self.newest is None or newest < self.newest:
            self.cache = AnalysisCache(boots=read_boots(self.args, newest, self.config),
                                       boots_until=newest)
            self.windows = read_host_windows(self.args.dataset, self.args.window_s,
                                             since=compared_from, until=newest)
            self.reference = _read(self.args, lambda lf: narrow(
                lf.filter((ws >= reference_from) & (ws <= newest))), reference_from, newest)
        else:
            cut = (self.windows["window_start"].max() if not self.windows.is_empty()
                   else self.newest) - self.reread
            # (after a long pause, windows of the re-read that are past a horizon)
            fresh = read_host_windows(self.args.dataset, self.args.window_s, since=cut,
                                      until=newest).filter(ws >= reference_from)
            self.windows = pl.concat(
                [self.windows.filter((ws < cut) & (ws >= compared_from)),
                 fresh.filter(ws >= compared_from).select(self.windows.columns)],
                how="vertical_relaxed")
            self.reference = pl.concat(
                [self.reference.filter((ws < cut) & (ws >= reference_from)),
                 narrow(fresh.lazy()).collect(engine=IN_MEMORY)
                 .select(self.reference.columns)],
                how="vertical_relaxed")
        self.newest = newest
        return self


def evaluate(args, as_of: Optional[datetime] = None, followed: Optional[FollowedFrame] = None):
    """One evaluation of the dataset as of ``as_of`` (default ``--as-of``, else the
    newest window): the ``Analysis``, with nothing written. ``followed``: what a
    continuous detector holds between runs (``FollowedFrame``); without it, one group
    at a time (``evaluate_by_group``)."""
    from .analysis import analyze
    as_of = as_of or args.as_of
    if followed is None:
        return evaluate_by_group(args, as_of, config_from(args))
    if followed.windows.is_empty():
        raise InputError(f"dataset {args.dataset}: no host windows in the requested range")
    return analyze(followed.windows, as_of=as_of, config=followed.config, cache=followed.cache,
                   reference_windows=followed.reference)


def evaluate_by_group(args, as_of: Optional[datetime], config):
    """A one-shot evaluation (``detect``, ``verdict``) that holds one group's windows per
    core at a time, each part read with only the rows and columns it uses (filters and
    projections pushed into the scan):

    - over ``--history``, one row per boot (rollouts and rollbacks are read from boots),
      aggregated as each day of files is read (``read_boots``);
    - of the memory-state reference history, one row per (group, kernel, host)
      (``analysis.reference_summary``);
    - every column of the lookback's windows, and of the reference history only the
      windows of the hosts a reference can use (``analysis.reference_read_keys``) in the
      columns a reference uses (``ReferenceWindows``), each read once, a slice of files
      at a time, and written to temporary files per group (``frames.GROUP_KEYS``);
    - then per group: its windows read back, its comparisons run, and only their results
      kept.

    Memory grows with the hosts of the largest groups (one per core) plus one row per
    host and boot, not with the fleet times the history; the temporary files hold the
    lookback and the reference windows of every group (on disk, compressed). The false
    discovery rate is taken across every group's comparisons at the end
    (``analysis.conclude``): the result is the one ``analyze`` gives over every window
    at once."""
    import polars as pl

    from . import attribution
    from .analysis import (ReferenceWindows, conclude, evaluate_group,
                           merge_reference_summaries, reference_read_keys, reference_summary)
    from .frames import GROUP_KEYS, _utc, newest_window
    if as_of is None:
        as_of = newest_window(args.dataset, args.window_s)
        if as_of is None:
            raise InputError(f"dataset {args.dataset}: no host windows")
    as_of = _utc(as_of)
    rollouts = attribution.infer_rollouts(
        changes=attribution.changes_from_boots(read_boots(args, as_of, config)))
    lookback = (pl.col("window_start") >= as_of - config.lookback) & (pl.col("window_start") <= as_of)
    recent = (pl.col("window_start") > as_of - config.lookback) & (pl.col("window_start") <= as_of)
    # the groups in the order ``analyze`` meets them: first window of each in the files
    groups = [tuple(k) for k in _read(args, lambda lf: lf.filter(recent).select(GROUP_KEYS)
                                      .unique(maintain_order=True), as_of - config.lookback, as_of)
              .unique(maintain_order=True).iter_rows()]
    since = as_of - max(config.lookback, config.reference_history)
    if not groups:
        # nothing to compare; the history still says which rollouts were rolled back
        if _read(args, lambda lf: lf.filter((pl.col("window_start") >= since)
                                            & (pl.col("window_start") <= as_of))
                 .select(pl.len()), since, as_of)["len"].sum() == 0:
            raise InputError(f"dataset {args.dataset}: no host windows in the requested range")
        return conclude([], rollouts, as_of, config)
    in_range = (pl.col("window_start") >= since) & (pl.col("window_start") <= as_of)
    summary = (merge_reference_summaries(
        [_read(args, lambda lf: reference_summary(lf.filter(in_range), as_of, config), since,
               as_of, "streaming")]) if config.adjust else None)

    with spill_directory() as spill:
        # every group's rows, in one pass over the files, each group's to its own files:
        # a group's windows are then read from them, not from the whole fleet's again
        index = {key: i for i, key in enumerate(groups)}
        lookback_rows = _spill_by_group(args, lambda lf: lf.filter(lookback), as_of - config.lookback,
                                        as_of, index, os.path.join(spill, "lookback"))
        if config.adjust:
            keys = reference_read_keys(summary, config)
            wanted = (keys["host_id"] + "\x00" + keys["kernel"]).implode()
            reference_rows = _spill_by_group(
                args, lambda lf: ReferenceWindows.select(lf.filter(
                    (pl.col("host_id").cast(pl.String) + "\x00" + pl.col("kernel").cast(pl.String))
                    .is_in(wanted)), as_of, config),
                as_of - config.reference_history, as_of, index, os.path.join(spill, "reference"))

        def one_group(key):
            is_group = pl.all_horizontal([pl.col(k) == v for k, v in zip(GROUP_KEYS, key)])
            part = lookback_rows(index[key])
            read: list = []

            def reference():     # once, when a comparison of the group first needs it
                if not read:
                    read.append(ReferenceWindows.from_windows(
                        as_of, reference_rows(index[key]), summary=summary.filter(is_group)))
                return read[0]
            return evaluate_group(part.filter(recent), key, rollouts, as_of, config, reference)

        workers = min(len(groups), os.cpu_count() or 1)
        if workers > 1:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                evaluated = list(pool.map(one_group, groups))
        else:
            evaluated = [one_group(k) for k in groups]
    return conclude(evaluated, rollouts, as_of, config)


SPILL_PREFIX = "foliowatch-detect-"


def spill_directory(parent: Optional[str] = None) -> tempfile.TemporaryDirectory:
    """A one-shot evaluation's temporary folder (``SPILL_PREFIX`` + its pid), removed when
    the evaluation ends. A ``detect`` killed outright (SIGKILL, the OOM killer) cannot
    remove its own, and a 2,000-host spill is ~1 GB: the folders of processes that no
    longer exist are removed here first."""
    parent = parent or tempfile.gettempdir()
    mine = re.compile(re.escape(SPILL_PREFIX) + r"([0-9]+)-")
    for entry in os.scandir(parent):
        m = mine.match(entry.name)
        if not m or not entry.is_dir(follow_symlinks=False) or _alive(int(m.group(1))):
            continue
        shutil.rmtree(entry.path, ignore_errors=True)
        print(f"detector: removed {entry.path}, left by a detect that was killed "
              f"(pid {m.group(1)})", file=sys.stderr)
    return tempfile.TemporaryDirectory(prefix=f"{SPILL_PREFIX}{os.getpid()}-", dir=parent)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:     # another user's process
        return True
    return True


def _spill_by_group(args, query, lo: datetime, hi: datetime, index: dict, directory: str):
    """``query``'s rows of the host-window files of ``lo`` .. ``hi``, read a slice of
    files at a time and written per group (``index``: group key -> number) under
    ``directory``. Returns ``rows(number)``: that group's rows, in the files' order (the
    rows one read of every file would give, filtered to the group)."""
    import glob
    import shutil

    import polars as pl

    from .frames import GROUP_KEYS, collect_host_windows, normalise_host_windows
    schema = {}

    def write(i: int, frame: pl.DataFrame) -> None:
        if i == 0 and os.path.isdir(directory):     # a read again after an error
            shutil.rmtree(directory)
        frame = normalise_host_windows(frame)
        schema.setdefault("columns", frame.clear())
        for key, part in frame.partition_by(list(GROUP_KEYS), maintain_order=True,
                                            as_dict=True).items():
            n = index.get(tuple(key))
            if n is not None:
                folder = os.path.join(directory, f"g{n}")
                os.makedirs(folder, exist_ok=True)
                part.write_parquet(os.path.join(folder, f"{i:06d}.parquet"), compression="lz4")
    collect_host_windows(args.dataset, args.window_s, query, since=lo, until=hi, each=write)

    def rows(n: int) -> pl.DataFrame:
        parts = [pl.read_parquet(f) for f in
                 sorted(glob.glob(os.path.join(directory, f"g{n}", "*.parquet")))]
        if not parts:
            return schema["columns"]
        return parts[0] if len(parts) == 1 else pl.concat(parts, how="diagonal_relaxed")
    return rows


def _read(args, query, lo: datetime, hi: datetime, engine: str = "auto"):
    """``query`` over the host-window files of ``lo`` .. ``hi``, one frame."""
    import polars as pl

    from .frames import collect_host_windows, normalise_host_windows
    parts = [normalise_host_windows(f) for f in collect_host_windows(
        args.dataset, args.window_s, query, since=lo, until=hi, engine=engine)]
    return parts[0] if len(parts) == 1 else pl.concat(parts, how="diagonal_relaxed")


def read_boots(args, as_of: datetime, config):
    """One row per (host, boot) over ``--history`` (and the lookback and reference
    history, when longer) up to ``as_of``: its first window, kernel and rollout keys
    (``attribution.boots``), read a day at a time."""
    import polars as pl

    from .attribution import ROLLOUT_KEYS
    from .frames import collect_host_windows, host_files, normalise_host_windows
    first = as_of - max(args.history, config.lookback, config.reference_history)
    keys = ["kernel", *ROLLOUT_KEYS]

    def per_boot(lf: pl.LazyFrame, lo: datetime, hi: datetime) -> pl.LazyFrame:
        return (lf.filter((pl.col("window_start") >= lo) & (pl.col("window_start") <= hi))
                .group_by("host_id", "boot_id")
                .agg(pl.col("window_start").min(), *[pl.col(k).sort_by("window_start").first()
                                                    for k in keys]))
    # a day at a time, midnight to midnight (the dataset's date= folders: each file is
    # read once), streaming: the per-boot aggregation holds a batch of a day's rows and
    # one day's host and boot ids, not the history's
    parts = []
    day = first
    while day <= as_of:
        end = min(datetime.combine(day.date() + timedelta(days=1), datetime.min.time(), day.tzinfo)
                  - timedelta(microseconds=1), as_of)
        if host_files(args.dataset, args.window_s, day, end):
            parts += [normalise_host_windows(f) for f in collect_host_windows(
                args.dataset, args.window_s, lambda lf, lo=day, hi=end: per_boot(lf, lo, hi),
                since=day, until=end, engine="streaming")]
        day = end + timedelta(microseconds=1)
    return (pl.concat(parts, how="diagonal_relaxed").sort("window_start")
            .group_by("host_id", "boot_id", maintain_order=True)
            .agg(pl.col("window_start").first(), *[pl.col(k).first() for k in keys])
            .select("host_id", "boot_id", "window_start", *keys))
