"""Reading the pipeline's Parquet dataset and the vocabulary shared by the detector's
math modules: comparison groups, tested metrics, and how each metric is put on a log
scale.
"""

from __future__ import annotations

import glob
import os
import sys
import time
from datetime import datetime, timezone
from typing import Callable, Optional, Sequence

import polars as pl

from foliowatch.dataset import COHORT_KEYS
from foliowatch.errors import InputError
from foliowatch.schema import KEY_METRICS, WORSE_DIRECTION

# Hosts are compared within one group: same fleet, role, arch, page size and filesystem,
# so that the only designed difference between the two populations is the kernel.
GROUP_KEYS = ("fleet", "role", "arch", "page_size", "fs")
assert set(GROUP_KEYS) | {"kernel"} == set(COHORT_KEYS)

# Throughput is the symptom; compaction and reclaim are the mechanism. Fragmentation is
# the memory state (a covariate and the verdict's coverage criterion), not a symptom.
THROUGHPUT_METRICS = ("write_mib_s", "probe_mib_s")
MECHANISM_METRICS = ("compact_stall_per_s", "allocstall_per_s", "pgscan_direct_per_s",
                     "psi_memory_some_share")
TESTED_METRICS = THROUGHPUT_METRICS + MECHANISM_METRICS
STATE_METRIC = "frag_unusable_1m"
# A host's own before/after difference (the ``within_host`` statistic) is tested only on
# the probe: the same write every time, a measurement of the kernel's capability. The
# other metrics follow what the workload asks for, and the hosts of one rollout wave
# change together: over the hours after their reboot they share drifts in demand that
# a test treating hosts as independent reads as a kernel effect (on the simulator's
# control scenario a 10% wave of 22 hosts drifted 9% in write_mib_s, p = 1e-5).
WITHIN_HOST_METRICS = ("probe_mib_s",)
assert set(TESTED_METRICS) | {STATE_METRIC} == set(KEY_METRICS)

# Added before taking logs, so that zero rates (no stall at all in a window) stay finite
# and a change from 0 to 0.001 stalls/s is not an "infinite" effect. In the metric's
# units; roughly the smallest value that matters operationally.
LOG_FLOOR = {
    "write_mib_s": 0.05, "probe_mib_s": 0.5, "compact_stall_per_s": 0.05,
    "allocstall_per_s": 0.05, "pgscan_direct_per_s": 5.0, "psi_memory_some_share": 0.001,
    "frag_unusable_1m": 0.01,
}


def worse_direction(metric: str) -> int:
    return WORSE_DIRECTION[metric]


def scan_remote_host_windows(root: str, window_s: int = 60) -> pl.LazyFrame:
    """Host windows of one window length in an object store, lazily (a local dataset is
    read by ``collect_host_windows`` from files opened first)."""
    pattern = f"{str(root).rstrip('/')}/level=host/window_s={window_s}/**/*.parquet"
    lf = pl.scan_parquet(pattern, hive_partitioning=True)
    names = lf.collect_schema().names()
    # Partition columns may shadow or duplicate file columns; keep a stable set.
    drop = [c for c in ("level", "date") if c in names]
    return lf.drop(drop) if drop else lf


def _no_host_windows(root: str, window_s: int) -> FileNotFoundError:
    return FileNotFoundError(
        f"dataset {root}: no host windows under level=host/window_s={window_s}; "
        "run `foliowatch pipeline` first or pass the dataset root")


class DatasetReadError(InputError):
    """The dataset stayed unreadable through every attempt."""


# The pipeline writes a window's file once and renames it into place; a replayed window
# is renamed over its old copy. polars takes a file's size when it plans a scan and reads
# the file later, so a file replaced in between is read at the old size: "expected
# parquet magic bytes" or a panic on the byte range. A local dataset is therefore read
# from files opened first (an open file keeps the copy it opened: a snapshot per file),
# up to a thousand at a time; an object store is read again on such an error.
READ_ATTEMPTS = 5


def _files_per_read() -> int:
    try:
        import resource
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (ImportError, OSError, ValueError):
        soft = 1024
    # as fast as one scan of every file from 1,000 files a slice on; a quarter of the
    # process's open-file limit at most (the Parquet reader opens files of its own)
    return max(16, min(1024, (soft if soft > 0 else 1024) // 4))


FILES_PER_READ = _files_per_read()
# rows a batch holds when a read's rows are handed on as they come (``each``)
BATCH_ROWS = 500_000
_READ_ERRORS = (pl.exceptions.PolarsError, OSError) + (
    (pl.exceptions.PanicException,) if hasattr(pl.exceptions, "PanicException") else ())


def _day(name: str) -> Optional[str]:
    return name[5:] if name.startswith("date=") else None


def host_files(root: str, window_s: int, since: Optional[datetime] = None,
               until: Optional[datetime] = None) -> list:
    """The host-window files of a local dataset, in a stable order; with ``since`` /
    ``until`` only the ``date=`` folders that can hold such windows."""
    base = os.path.join(str(root), "level=host", f"window_s={window_s}")
    try:
        entries = sorted(os.listdir(base))
    except FileNotFoundError:
        entries = []
    lo = _utc(since).date().isoformat() if since is not None else None
    hi = _utc(until).date().isoformat() if until is not None else None
    files = []
    for name in entries:
        day = _day(name)
        if day is not None and ((lo and day < lo) or (hi and day > hi)):
            continue
        path = os.path.join(base, name)
        if name.endswith(".parquet"):
            files.append(path)
        elif os.path.isdir(path):
            files.extend(sorted(glob.glob(os.path.join(path, "**", "*.parquet"), recursive=True)))
    return files


def _collect_opened(paths: Sequence[str], query, engine: str = "auto", each=None) -> list:
    """``query`` over ``paths`` opened first, in slices of FILES_PER_READ: what is read
    is what was opened, whatever renames happen meanwhile. ``each(i, frame)``: given
    each batch of at most BATCH_ROWS rows in turn (``i`` counts them) instead of
    keeping the slices' frames (nothing is returned)."""
    frames = []
    batches = 0
    for i in range(0, len(paths), FILES_PER_READ):
        fds = []
        try:
            for p in paths[i:i + FILES_PER_READ]:
                try:
                    fds.append(os.open(p, os.O_RDONLY))
                except FileNotFoundError:     # removed after the listing: nothing to read
                    continue
            if fds:
                lf = pl.scan_parquet([f"/proc/self/fd/{fd}" for fd in fds])
                try:
                    if each is None:
                        frames.append(query(lf).collect(engine=engine))
                    else:
                        # in batches, in order: a slice of large files need not fit
                        for frame in query(lf).collect_batches(chunk_size=BATCH_ROWS):
                            each(batches, frame)
                            batches += 1
                except _READ_ERRORS as e:
                    e.foliowatch_files = list(paths[i:i + FILES_PER_READ])
                    raise
        finally:
            for fd in fds:
                os.close(fd)
    return frames


def collect_host_windows(root: str, window_s: int,
                         query: Callable[[pl.LazyFrame], pl.LazyFrame] = lambda lf: lf,
                         since: Optional[datetime] = None, until: Optional[datetime] = None,
                         attempts: int = READ_ATTEMPTS, engine: str = "auto", each=None) -> list:
    """``query`` (row-wise: filters, selects) applied to the host windows; one frame per
    slice of files read (``each(i, frame)``: batches of at most ``BATCH_ROWS`` rows
    given to it in order instead, none kept; a read again after an error gives them
    again from ``i`` 0). ``since`` / ``until`` only prune ``date=`` folders: the query
    filters rows. ``engine``: polars' (``"streaming"`` for an aggregation: it holds a
    batch of rows at a time, not the slice's; row order is then not the files'). Raises
    ``DatasetReadError`` naming the dataset when a file cannot be read (damaged, not a
    rename)."""
    remote = str(root).startswith("s3://")
    last = None
    for attempt in range(attempts):
        if not remote:
            # no file in range: the newest file all the same, for the columns (0 rows)
            files = host_files(root, window_s, since, until) or host_files(root, window_s)[-1:]
            if not files:
                raise _no_host_windows(root, window_s)
        try:
            if remote:
                frame = query(scan_remote_host_windows(root, window_s)).collect(engine=engine)
                if each is None:
                    return [frame]
                each(0, frame)
                return []
            return _collect_opened(files, query, engine, each)
        except _READ_ERRORS as e:
            last = e
            if attempt + 1 < attempts:
                print(f"detector: dataset {root}: read failed ({_first_line(e)}); "
                      "reading again", file=sys.stderr)
                time.sleep(0.2 * (attempt + 1))
    bad = _damaged(getattr(last, "foliowatch_files", []))
    where = f"{bad} is damaged or not Parquet" if bad else \
        "a file under level=host/ is damaged or not Parquet"
    raise DatasetReadError(
        f"dataset {root}: host windows unreadable in {attempts} attempts "
        f"({_first_line(last)}): {where}. Move it out of the dataset (the detector then "
        "reads the rest, without the hosts of that file's window) and check the disk") from None


def _damaged(paths: Sequence[str]) -> Optional[str]:
    """The first of ``paths`` that does not read on its own (the error path only)."""
    for p in paths:
        try:
            pl.read_parquet(p)
        except FileNotFoundError:
            continue
        except _READ_ERRORS:
            return p
    return None


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"


def newest_window(root: str, window_s: int = 60) -> Optional[datetime]:
    """Start of the newest host window in the dataset (None when it holds none)."""
    newest = [f.item() for f in collect_host_windows(
        root, window_s, lambda lf: lf.select(pl.col("window_start").max()))]
    newest = [t for t in newest if t is not None]
    return max(newest) if newest else None


def read_host_windows(root: str, window_s: int = 60, since: Optional[datetime] = None,
                      until: Optional[datetime] = None) -> pl.DataFrame:
    def query(lf: pl.LazyFrame) -> pl.LazyFrame:
        if since is not None:
            lf = lf.filter(pl.col("window_start") >= _utc(since))
        if until is not None:
            lf = lf.filter(pl.col("window_start") <= _utc(until))
        return lf
    frames = [normalise_host_windows(f) for f in
              collect_host_windows(root, window_s, query, since=since, until=until)]
    return frames[0] if len(frames) == 1 else pl.concat(frames, how="diagonal_relaxed")


def normalise_host_windows(df: pl.DataFrame) -> pl.DataFrame:
    """Types the detector relies on, whatever the writer's minor choices were."""
    casts = []
    if df.schema.get("window_start") != pl.Datetime("us", "UTC"):
        ws = df.schema.get("window_start")
        if isinstance(ws, pl.Datetime) and ws.time_zone is None:
            casts.append(pl.col("window_start").dt.replace_time_zone("UTC").dt.cast_time_unit("us"))
        elif isinstance(ws, pl.Datetime):
            casts.append(pl.col("window_start").dt.convert_time_zone("UTC").dt.cast_time_unit("us"))
    for c in ("fleet", "role", "arch", "fs", "kernel", "host_id", "instance_type", "boot_id"):
        if c in df.columns and df.schema[c] != pl.String:
            casts.append(pl.col(c).cast(pl.String))
    if "page_size" in df.columns and df.schema["page_size"] != pl.Int64:
        casts.append(pl.col("page_size").cast(pl.Int64))
    for m in KEY_METRICS:
        if m in df.columns and df.schema[m] != pl.Float64:
            casts.append(pl.col(m).cast(pl.Float64))
    if casts:
        df = df.with_columns(casts)
    return df


def _utc(t: datetime) -> datetime:
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)

