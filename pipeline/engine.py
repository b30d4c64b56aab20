"""One micro-batch through the pipeline: decode + validate, lateness + dedupe +
aggregation, dead letters, closed windows to the dataset. Shared by the Kafka consumer
and ``--from-files``; the source decides when to checkpoint and commit.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import polars as pl

from foliowatch import dataset as contract

from .aggregate import ClosedWindow, WindowAggregator
from .decode import DecodedBatch, decode_batch
from .sinks import DatasetWriter, PendingFiles, StateStore, dlq_record

log = logging.getLogger("foliowatch.pipeline")

LATE = "late"


@dataclass
class PipelineConfig:
    output: str
    windows_s: Sequence[int] = contract.DEFAULT_WINDOWS_S
    lateness_s: float = 300.0
    max_future_s: float = 600.0


@dataclass
class BatchStats:
    records: int = 0
    accepted: int = 0
    duplicates: int = 0
    missing: int = 0           # net seqs skipped by hosts (aggregate._seq_gaps)
    invalid: int = 0
    late: int = 0
    python_accepted: int = 0
    windows: int = 0
    seconds: float = 0.0


class Pipeline:
    def __init__(self, cfg: PipelineConfig, writer: DatasetWriter, dlq, metrics=None):
        self.cfg = cfg
        self.writer = writer
        self.dlq = dlq
        self.metrics = metrics
        self.agg = WindowAggregator(cfg.windows_s, cfg.lateness_s)
        # the last batch's window files, still being written (at most one batch's)
        self._writing: Optional[Tuple[PendingFiles, List[ClosedWindow]]] = None

    def decode(self, values: Sequence[bytes]) -> DecodedBatch:
        """Decode and validate ``values`` (``decode.decode_batch``): the first step of
        ``process``, which a caller may run ahead, on another thread (it touches none
        of the pipeline's state). Its wall time travels with the batch: ``process``
        counts it in the batch's duration wherever the decode ran."""
        t0 = time.perf_counter()
        dec = decode_batch(values, max_future_s=self.cfg.max_future_s)
        dec.seconds = time.perf_counter() - t0
        return dec

    def process(self, values: Sequence[bytes], partitions: Sequence[int],
                offsets: Sequence[int], topic: str,
                keys: Optional[Sequence[Optional[bytes]]] = None,
                decoded: Optional[DecodedBatch] = None) -> BatchStats:
        """One batch; ``decoded``: ``values`` already through ``decode`` (its time is
        counted in ``BatchStats.seconds``, as when the decode runs here)."""
        t0 = time.perf_counter()
        st = BatchStats(records=len(values))
        if not values:
            return st
        dec = self.decode(values) if decoded is None else decoded
        ahead = 0.0 if decoded is None else decoded.seconds
        part_s = pl.Series("partition", partitions, dtype=pl.Int64)
        off_s = pl.Series("offset", offsets, dtype=pl.Int64)
        good = dec.good.with_columns(part_s.gather(dec.good["row"]).alias("partition"),
                                     off_s.gather(dec.good["row"]).alias("offset"))
        nxt = (pl.DataFrame({"p": part_s, "o": off_s}).group_by("p").agg(pl.col("o").max() + 1))
        outcome = self.agg.process(good, dict(nxt.iter_rows()))
        dead = [(r, reason, None) for r, reason in dec.rejected]
        dead += [(r, LATE, f"ts more than {self.cfg.lateness_s:g} s behind the partition's "
                           "watermark; its window is closed") for r in outcome.late_rows]
        for r, reason, detail in sorted(dead):
            rec = dlq_record(reason, bytes(values[r]), topic, int(partitions[r]),
                             int(offsets[r]), keys[r] if keys is not None else None)
            if detail:
                rec["detail"] = detail
            self.dlq.send(rec)
        st.accepted, st.duplicates = outcome.accepted, outcome.duplicates
        st.missing = outcome.missing
        for host, boot, seq, n in outcome.gaps[:3]:
            log.warning("host %s boot %s: %d sample(s) missing before seq %d (dropped by "
                        "its agent's full spool, or lost on the way)", host, boot, n,
                        seq + n)
        if len(outcome.gaps) > 3:
            log.warning("... and %d more hosts with missing samples in this batch",
                        len(outcome.gaps) - 3)
        st.invalid, st.late = len(dec.rejected), len(outcome.late_rows)
        st.python_accepted = dec.python_accepted
        st.windows = self.emit(self.agg.close_ready())
        st.seconds = time.perf_counter() - t0 + ahead
        if self.metrics is not None:
            self.metrics.observe_batch(st, [reason for _r, reason, _d in dead])
        return st

    def emit(self, closed: List[ClosedWindow]) -> int:
        """Start writing ``closed``'s files, once the previous batch's are durable: they
        are written while the next batch is decoded and aggregated, and ``wait_durable``
        (which ``checkpoint`` and ``finish`` call) waits for them."""
        self.wait_durable()
        if closed:
            self._writing = (self.writer.start_windows(closed), closed)
        return len(closed)

    def wait_durable(self) -> int:
        """Return when every window file handed to the writer is durable, with the number
        of windows that were still being written; raises the writer's error."""
        if self._writing is None:
            return 0
        (pending, closed), self._writing = self._writing, None
        pending.wait()
        if self.metrics is not None:
            for cw in closed:
                self.metrics.observe_window(cw)
        return len(closed)

    def finish(self, partitions: Optional[Sequence[int]] = None) -> int:
        """End of input: close every open window of ``partitions`` (default: all); their
        files are durable when it returns."""
        n = self.emit(self.agg.close_ready(final=True, partitions=partitions))
        self.wait_durable()
        return n

    def checkpoint(self, store: StateStore, partitions: Sequence[int],
                   dlq_timeout_s: float = 30.0) -> Dict[int, int]:
        """Make everything up to each partition's next offset durable: dead letters
        flushed, state saved. Returns {partition: next offset} to commit. A partition
        whose stored checkpoint is already ahead (another instance owns it now) is left
        alone and not returned. Raises ``sinks.DeadLetterError`` (and saves nothing)
        when the dead letters cannot be made durable within ``dlq_timeout_s``."""
        self.wait_durable()     # the checkpoint covers closed windows: their files first
        self.dlq.flush(dlq_timeout_s)
        out: Dict[int, int] = {}
        for p in partitions:
            if p not in self.agg.meta:
                continue
            meta, partials, seen = self.agg.snapshot(p)
            prev = store.load_meta(p)
            if prev is not None and prev.next_offset > meta.next_offset:
                log.warning("partition %d: stored checkpoint at offset %d is ahead of this "
                            "instance (%d); another instance owns it now, not overwriting",
                            p, prev.next_offset, meta.next_offset)
                continue
            store.save(p, meta, partials, seen)
            out[p] = meta.next_offset
        return out
