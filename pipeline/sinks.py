"""Where the pipeline's output goes: the Parquet dataset (local folder or s3:// URL), the
checkpoint state of each source partition, and the dead-letter queue (a Kafka topic, or
a JSON-lines file without Kafka).

Local writes are durable before they are visible (``foliowatch.files.atomic_write``):
the temporary file is written in ``_tmp/`` outside the dataset's partition folders, so
that no reader lists it, then fsynced, renamed into place and the folder fsynced; a
folder created on the way (a new ``date=`` partition) is fsynced in its parent. A reader
never sees a partial file, and a file that is visible survives a crash. On s3:// a PUT is
atomic by itself; polars writes through its own cloud support (object_store), with
credentials from the environment as usual for AWS.
"""

from __future__ import annotations

import base64
import datetime as dt
import errno
import io
import json
import logging
import os
import struct
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import polars as pl

from foliowatch.errors import ConfigError, InputError, ServiceError
from foliowatch.files import atomic_write, make_dirs_durable

from .aggregate import PARTIAL_SCHEMA, SEEN_SCHEMA, ClosedWindow, PartitionMeta
from .native_parquet import parquet_bytes

STATE_VERSION = 1
log = logging.getLogger("foliowatch.pipeline")

# A full filesystem (or quota) under the dataset, the checkpoints or the dead-letter
# files is waited out, not fatal: nothing after the failed write is consumed or
# committed, and the write is tried again every SPACE_RETRY_S until it fits.
NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
SPACE_RETRY_S = 5.0


def write_when_space(write, where: str, retry_s: float = SPACE_RETRY_S):
    """Run ``write()``; while it fails because the filesystem is full, say so once and
    try again every ``retry_s`` seconds (the caller's thread waits: the pipeline stops
    consuming, so nothing is read that could not be written). Every write given here
    is atomic and idempotent (a whole file replaced), so a retry is safe."""
    since = None
    while True:
        try:
            result = write()
        except OSError as e:
            if e.errno not in NO_SPACE:
                raise
            if since is None:
                since = time.monotonic()
                log.error("%s: no space left on its filesystem (%s); the pipeline has "
                          "stopped consuming and tries again every %g s: free space there "
                          "(or grow the filesystem) and it resumes where it stopped, "
                          "nothing is skipped", where, os.strerror(e.errno), retry_s)
            time.sleep(retry_s)
            continue
        if since is not None:
            log.warning("%s: space again after %.0f s; consuming resumes", where,
                        time.monotonic() - since)
        return result


def is_remote(root: str) -> bool:
    return "://" in root and not root.startswith("file://")


def _local(root: str) -> str:
    return root[len("file://"):] if root.startswith("file://") else root


def window_file(level: str, window_s: int, window_start: int, partition: int,
                first_offset: int, last_offset: int) -> str:
    """Relative path of one window's file, as ``foliowatch.dataset`` lays it out."""
    date = dt.datetime.fromtimestamp(window_start, dt.timezone.utc).date().isoformat()
    return (f"level={level}/window_s={window_s}/date={date}/"
            f"part-p{partition}-{first_offset}-{last_offset}.parquet")


class DatasetWriter:
    """Writes closed windows into the hive-partitioned dataset at ``root``."""

    def __init__(self, root: str):
        self.root = root.rstrip("/")
        self.remote = is_remote(self.root)
        self._pool = None
        if not self.remote:
            self.path = Path(_local(self.root))
            try:
                make_dirs_durable(self.path)
            except OSError as e:
                raise ConfigError(f"--output {root}: cannot create the dataset "
                                  f"folder ({e.strerror}); choose a writable path") from None
            self.tmp = self.path / "_tmp"

    def start_windows(self, closed: Sequence[ClosedWindow]) -> "PendingFiles":
        """Start writing the files of ``closed`` and return at once; they are durable
        when the returned ``wait()`` returns. Files are encoded and fsync'd on a few
        threads (polars and fsync release the GIL), while the caller goes on with the
        next batch: a batch that closes many windows waits for the disk once, not per
        file, and not before its next batch is aggregated."""
        jobs = [(window_file(level, cw.window_s, cw.window_start, cw.partition,
                             cw.first_offset, cw.last_offset), frame)
                for cw in closed for level, frame in (("host", cw.hosts),
                                                      ("cohort", cw.cohorts))]
        if not jobs:
            return PendingFiles(self, jobs, [])
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor
            self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="dataset-writer")
        return PendingFiles(self, jobs, [self._pool.submit(self._write, rel, frame)
                                         for rel, frame in jobs])

    def _write_all(self, jobs: List[Tuple[str, pl.DataFrame]]) -> None:
        for rel, frame in jobs:
            self._write(rel, frame)

    def _write(self, rel: str, frame: pl.DataFrame) -> None:
        if self.remote:
            frame.write_parquet(f"{self.root}/{rel}", compression="zstd")
            return
        atomic_write(self.path / rel, parquet_bytes(frame), tmp_dir=self.tmp)


class PendingFiles:
    """One batch's window files on their way to the disk (``DatasetWriter.start_windows``).
    ``wait()`` returns when every one is durable, or raises the first failure once all
    have finished. A full filesystem is waited out as ``write_when_space`` does: the
    batch's files are written again, one by one, until they fit (each write is atomic
    and idempotent)."""

    def __init__(self, writer: "DatasetWriter", jobs: List[Tuple[str, pl.DataFrame]],
                 futures: list):
        self.writer = writer
        self.jobs = jobs
        self._futures = futures

    def wait(self) -> None:
        futures, self._futures = self._futures, []
        errors = [f.exception() for f in futures]     # every write has finished
        if any(isinstance(e, OSError) and e.errno in NO_SPACE for e in errors):
            write_when_space(lambda: self.writer._write_all(self.jobs),
                             f"--output {self.writer.root}")
            return
        for e in errors:
            if e is not None:
                raise e


def _ipc_bytes(df: pl.DataFrame) -> bytes:
    buf = io.BytesIO()
    df.write_ipc(buf, compression="uncompressed")
    return buf.getvalue()


class CheckpointError(InputError):
    """A partition checkpoint file cannot be used: wrong format or version."""


class StateStore:
    """Checkpoints of each source partition, one file per partition:
    ``{dir}/{source}/p{partition}.state`` holding the partition's next offset, watermark
    and the open windows' partial sums and dedupe memory. Local folders only."""

    MAGIC = b"FWPS"

    def __init__(self, directory: str, source: str):
        if is_remote(directory):
            raise ConfigError(f"--state-dir {directory}: checkpoints need a local "
                              "(or network-mounted) folder; give --state-dir explicitly when "
                              "--output is an object store URL")
        safe = "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in source)
        self.dir = Path(_local(directory)) / safe
        write_when_space(lambda: make_dirs_durable(self.dir), f"checkpoints {self.dir}")
        self.tmp = self.dir / "_tmp"

    def path(self, partition: int) -> Path:
        return self.dir / f"p{partition}.state"

    def save(self, partition: int, meta: PartitionMeta, partials: pl.DataFrame,
             seen: pl.DataFrame) -> None:
        head = json.dumps({"version": STATE_VERSION, "next_offset": meta.next_offset,
                           "watermark": meta.watermark,
                           "closed_until": meta.closed_until}).encode()
        parts = [head, _ipc_bytes(partials), _ipc_bytes(seen)]
        data = self.MAGIC + b"".join(struct.pack("<Q", len(p)) + p for p in parts)
        write_when_space(lambda: atomic_write(self.path(partition), data, tmp_dir=self.tmp),
                         f"checkpoint {self.path(partition)}")

    def load_meta(self, partition: int) -> Optional[PartitionMeta]:
        """Only the header of a checkpoint (cheap: no frames decoded)."""
        try:
            with open(self.path(partition), "rb") as f:
                head = f.read(len(self.MAGIC) + 8)
                if len(head) < len(self.MAGIC) + 8 or not head.startswith(self.MAGIC):
                    return None
                (n,) = struct.unpack_from("<Q", head, len(self.MAGIC))
                meta = json.loads(f.read(n))
        except FileNotFoundError:
            return None
        return PartitionMeta(int(meta["next_offset"]), meta["watermark"],
                             meta.get("closed_until"))

    def load(self, partition: int) -> Optional[Tuple[PartitionMeta, pl.DataFrame,
                                                     pl.DataFrame]]:
        path = self.path(partition)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        if not data.startswith(self.MAGIC):
            raise CheckpointError(f"state {path}: not a foliowatch checkpoint; move it "
                                  "away to start this partition from the committed offset")
        pos, parts = len(self.MAGIC), []
        for _ in range(3):
            (n,) = struct.unpack_from("<Q", data, pos)
            parts.append(data[pos + 8:pos + 8 + n])
            pos += 8 + n
        head = json.loads(parts[0])
        if head.get("version") != STATE_VERSION:
            raise CheckpointError(f"state {path}: version {head.get('version')} is not "
                                  f"{STATE_VERSION}; finish with the old pipeline or move it away")
        meta = PartitionMeta(int(head["next_offset"]), head["watermark"],
                             head.get("closed_until"))
        partials = pl.read_ipc(io.BytesIO(parts[1])).cast(PARTIAL_SCHEMA)
        seen = pl.read_ipc(io.BytesIO(parts[2])).cast(SEEN_SCHEMA)
        return meta, partials, seen


def dlq_record(reason: str, value: bytes, topic: str, partition: int, offset: int,
               key: Optional[bytes] = None) -> Dict[str, Any]:
    """The dead-letter record: why, where from, and the original bytes (base64)."""
    return {"reason": reason, "topic": topic, "partition": partition, "offset": offset,
            "key_b64": base64.b64encode(key).decode() if key is not None else None,
            "value_b64": base64.b64encode(value).decode()}


class FileDLQ:
    """Dead letters as JSON lines (``--from-files``). Given a folder: one file per input,
    ``from-files-p<partition>.jsonl``, rewritten when that input is run again (a rerun
    does not duplicate them; another input's dead letters are kept). Given a file: the
    dead letters of this run, all inputs, replacing the file's contents."""

    def __init__(self, path: Path, per_input: bool = False):
        self.path = Path(path)
        self.per_input = per_input
        # dead letters by input (all under 0 in one file); a single file is rewritten
        # even when it gets none
        self._lines: Dict[int, List[bytes]] = {} if per_input else {0: []}

    def file(self, partition: int) -> Path:
        return self.path / f"from-files-p{partition}.jsonl" if self.per_input else self.path

    def send(self, rec: Dict[str, Any]) -> None:
        part = int(rec["partition"]) if self.per_input else 0
        self._lines.setdefault(part, []).append(
            json.dumps(rec, separators=(",", ":")).encode())

    def input_done(self, partition: int) -> None:
        """An input was read to its end: its file is written even with no dead letter
        (a rerun that finds none clears the old ones)."""
        if self.per_input:
            self._lines.setdefault(partition, [])

    def files(self) -> List[str]:
        return [str(self.file(p)) for p in sorted(self._lines)]

    def flush(self, timeout: float = 0.0) -> None:   # a local write: no timeout applies
        for part, lines in sorted(self._lines.items()):
            target = self.file(part)
            data = b"".join(line + b"\n" for line in lines)
            write_when_space(lambda: atomic_write(target, data, tmp_dir=target.parent / "_tmp"),
                             f"dead letters {target}")

    def close(self, timeout: float = 0.0) -> None:
        self.flush(timeout)


class DeadLetterError(ServiceError):
    """Dead letters are not (yet) durable in the DLQ topic: no checkpoint may cover them."""


class KafkaDLQ:
    """Dead letters to a Kafka topic, keyed ``topic/partition/offset`` of the source so
    that a replayed batch's copies can be recognised; reason and source also in headers.

    ``flush`` returns only when every dead letter sent so far is acknowledged by the
    broker; otherwise it raises ``DeadLetterError`` (a flush that merely times out can be
    retried: the letters stay pending). A producer's flush alone would not say so: it
    also returns when a send failed."""

    def __init__(self, producer, topic: str):
        self.producer = producer
        self.topic = topic
        self._pending: List[Any] = []

    def send(self, rec: Dict[str, Any]) -> None:
        key = f"{rec['topic']}/{rec['partition']}/{rec['offset']}".encode()
        headers = [("reason", rec["reason"].encode()[:1000]),
                   ("source_topic", rec["topic"].encode()),
                   ("source_partition", str(rec["partition"]).encode()),
                   ("source_offset", str(rec["offset"]).encode())]
        self._pending.append(self.producer.send(
            self.topic, key=key, headers=headers,
            value=json.dumps(rec, separators=(",", ":")).encode()))

    def flush(self, timeout: float = 30.0) -> None:
        if not self._pending:
            return
        from kafka.errors import KafkaTimeoutError
        try:
            self.producer.flush(timeout=timeout)
        except KafkaTimeoutError:
            raise DeadLetterError(f"{len(self._pending)} dead letter(s) to {self.topic} not "
                                  f"acknowledged within {timeout:g} s (broker unreachable?)"
                                  ) from None
        failed = [f for f in self._pending if f.is_done and f.failed()]
        self._pending = [f for f in self._pending if not f.is_done]
        if failed:
            raise DeadLetterError(f"{len(failed)} dead letter(s) to {self.topic} failed: "
                                  f"{failed[0].exception}")
        if self._pending:
            raise DeadLetterError(f"{len(self._pending)} dead letter(s) to {self.topic} "
                                  "still in flight after flush")

    def close(self, timeout: float = 10.0) -> None:
        try:
            self.flush(timeout)
        finally:
            self.producer.close(timeout=timeout)
