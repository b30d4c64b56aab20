"""``--from-files``: the embedded mode for one machine. Reads wire records from JSON lines
(one record per line) or Parquet (the nested wire form the simulator writes, where a
null means absent; or a ``value`` column of raw message bytes) and runs them through the
same pipeline as Kafka.

Each input file is one "partition" and the offsets are line or row numbers, so the
output file names follow the dataset contract and a rerun over the same files overwrites
instead of duplicating. An input's partition is a stable hash of its file name and its
first 64 KiB: a rerun finds its own windows' files, and another file that happens to
share the name (``samples-00000.parquet`` of another simulation, a day's log of another
day) gets a partition of its own instead of overwriting the windows of the first (its
offsets are numbered from 0 too, and its windows may fall in the same ``date=`` folder).
The end of the input is the end of the stream: every window is closed.
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Iterator, List, Sequence, Tuple

import polars as pl

from foliowatch.errors import InputError

from .engine import Pipeline

SUFFIXES = (".jsonl", ".ndjson", ".json", ".parquet")




def expand_inputs(paths: Sequence[str]) -> List[Path]:
    """Files named, or the record files inside folders named, in a stable order."""
    out: List[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            # a folder from `foliowatch simulate` also holds its ground truth: not records
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix in SUFFIXES
                           and not f.name.startswith("ground_truth"))
            if not found:
                raise InputError(f"--from-files {raw}: no {', '.join(SUFFIXES)} files "
                                 "inside; point it at the simulator's output folder or a file")
            out.extend(found)
        elif p.is_file():
            if p.suffix not in SUFFIXES:
                raise InputError(f"--from-files {raw}: unknown file type '{p.suffix}'; "
                                 f"expected one of {', '.join(SUFFIXES)}")
            out.append(p)
        else:
            raise InputError(f"--from-files {raw}: no such file or folder")
    seen: dict = {}
    for f in out:
        part, real = file_partition(f), f.resolve()
        if part in seen and seen[part][1] != real:
            raise InputError(f"--from-files: {seen[part][0]} and {f} have the same "
                             f"name and the same first {IDENTITY_BYTES // 1024} KiB, which "
                             "make their partition in the dataset: the same input twice? "
                             "Pass one of them (or rename one) so that their windows' files "
                             "do not overwrite each other")
        seen[part] = (f, real)
    return out


IDENTITY_BYTES = 64 * 1024


def file_partition(path: Path) -> int:
    """The stand-in partition number of an input file: a stable hash of its name and
    its first IDENTITY_BYTES bytes."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(IDENTITY_BYTES)
    except OSError as e:
        raise InputError(f"--from-files {path}: cannot open ({e.strerror})") from None
    return zlib.crc32(path.name.encode() + b"\0" + head) & 0x7FFFFFFF


def _strip_nulls(lines: pl.Series) -> pl.Series:
    # In the nested Parquet form a null field means "absent on the wire".
    key = r'"[A-Za-z0-9_]*":null'
    return (lines.str.replace_all(r"," + key, "").str.replace_all(key + ",", "")
            .str.replace_all(r"\{" + key + r"\}", "{}"))


def parquet_values(path: Path) -> List[bytes]:
    try:
        df = pl.read_parquet(path)
    except Exception as e:  # polars raises several kinds for a bad file
        raise InputError(f"--from-files {path}: not a readable Parquet file ({e}); "
                         "regenerate it or pass JSON lines") from None
    if "value" in df.columns and df.schema["value"] in (pl.Binary, pl.String):
        return [v if isinstance(v, bytes) else (v or "").encode() for v in df["value"]]
    import io
    buf = io.BytesIO()
    df.write_ndjson(buf)
    lines = pl.Series(buf.getvalue().decode().splitlines())
    return [s.encode() for s in _strip_nulls(lines)]


def iter_batches(path: Path, batch_records: int) -> Iterator[Tuple[List[bytes], List[int]]]:
    """(values, offsets) batches of one input file; empty JSON lines are skipped."""
    if path.suffix == ".parquet":
        values = parquet_values(path)
        for i in range(0, len(values), batch_records):
            chunk = values[i:i + batch_records]
            yield chunk, list(range(i, i + len(chunk)))
        return
    try:
        fh = open(path, "rb")
    except OSError as e:
        raise InputError(f"--from-files {path}: cannot open ({e.strerror})") from None
    with fh:
        values: List[bytes] = []
        offsets: List[int] = []
        for lineno, line in enumerate(fh):
            line = line.rstrip(b"\r\n")
            if not line.strip():
                continue
            values.append(line)
            offsets.append(lineno)
            if len(values) >= batch_records:
                yield values, offsets
                values, offsets = [], []
        if values:
            yield values, offsets


def run_files(pipeline: Pipeline, paths: Sequence[Path], batch_records: int = 10_000) -> dict:
    """Run every file through ``pipeline``; returns totals."""
    totals = {"records": 0, "accepted": 0, "duplicates": 0, "missing": 0,
              "invalid": 0, "late": 0, "windows": 0}
    for path in paths:
        part = file_partition(path)
        topic = f"file:{path.name}"
        for values, offsets in iter_batches(path, batch_records):
            st = pipeline.process(values, [part] * len(values), offsets, topic)
            for k in totals:
                totals[k] += getattr(st, k)
        totals["windows"] += pipeline.finish([part])
        if hasattr(pipeline.dlq, "input_done"):
            pipeline.dlq.input_done(part)
    pipeline.dlq.flush()
    return totals
