"""Where simulated records go: files (JSON lines or Parquet) or Kafka, through the
simulator's producer (``producer.make_record_producer``: acks=all, idempotence, the
settings' compression), keyed by host id like the agent.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import numpy as np
import polars as pl

from .frames import _say_polars_once, _wire_json_expr, simulate_frame, to_wire_bytes, to_wire_frame
from .producer import DEFAULT_CLIENT, check_client, make_record_producer
from .scenario import Scenario
from .truth import ground_truth, host_table, scenario_summary

GROUND_TRUTH_FILE = "ground_truth.json"
ROWS_PER_ROW_GROUP = 250_000
# CSV, not Parquet: a reader pointed at the folder picks up the data files only
HOSTS_FILE = "ground_truth_hosts.csv"


def write_ground_truth(scenario: Scenario, out_dir: Path, seed: int) -> Path:
    """``ground_truth.json``: ``{"scenario": {...}, "truth": ground_truth(...)}``."""
    path = Path(out_dir) / GROUND_TRUTH_FILE
    doc = {"scenario": scenario_summary(scenario, seed), "truth": ground_truth(scenario, seed)}
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=1, sort_keys=True))
    tmp.replace(path)
    return path


def _write_json_lines(fh, chunk: pl.DataFrame, parts: int = 2) -> int:
    """Encode a chunk to wire JSON and append it as lines: with the compiled encoder
    when it is built (``schema.encode``'s bytes), else with polars in ``parts`` slices in
    parallel (its own thread pool; a one-column CSV without quoting or header is exactly
    JSON lines, and polars' CSV writer is the fastest way to get the strings to disk)."""
    from .native_encode import NativeProgramError, encoder
    native = encoder()
    if native is not None:
        try:
            fh.write(b"\n".join(native.encode(chunk)) + b"\n")
            return chunk.height
        except NativeProgramError as e:
            _say_polars_once(str(e))
    step = -(-chunk.height // parts)
    frames = pl.collect_all([chunk.lazy().slice(i * step, step).select(_wire_json_expr())
                             for i in range(parts)])
    for f in frames:
        f.write_csv(fh, include_header=False, quote_style="never")
    return chunk.height


def _prefetch(chunks: Iterator[pl.DataFrame], depth: int = 2) -> Iterator[pl.DataFrame]:
    """Generate the next chunks in a background thread while the caller encodes and
    writes this one (numpy and polars release the GIL, so the two overlap)."""
    q: "queue.Queue" = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def work():
        try:
            for c in chunks:
                while not stop.is_set():
                    try:
                        q.put(c, timeout=0.2)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(done)
        except BaseException as e:  # re-raised in the caller's thread
            q.put(e)

    t = threading.Thread(target=work, name="simulate-prefetch", daemon=True)
    t.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        t.join(timeout=5)


def write_files(scenario: Scenario, out_dir, seed: Optional[int] = None, fmt: str = "jsonl",
                *, rows_per_file: int = 1_000_000) -> List[Path]:
    """Write the simulated records to ``out_dir`` in delivery order, as JSON lines
    (``samples-00000.jsonl``: wire v1, one record per line) or Parquet
    (``samples-00000.parquet``: the nested wire form, see ``frames.to_wire_frame``), plus
    ``ground_truth.json`` and ``ground_truth_hosts.csv`` (see ``truth``). Returns the
    paths written, data files first."""
    if fmt not in ("jsonl", "parquet"):
        raise ValueError(f"write_files fmt: expected 'jsonl' or 'parquet', got {fmt!r}")
    seed = scenario.seed if seed is None else int(seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: List[Path] = []
    chunks = _prefetch(simulate_frame(scenario, seed))
    if fmt == "jsonl":
        fh = None
        rows = 0
        for chunk in chunks:
            if fh is None or rows >= rows_per_file:
                if fh is not None:
                    fh.close()
                paths.append(out / f"samples-{len(paths):05d}.jsonl")
                fh = open(paths[-1], "wb")
                rows = 0
            rows += _write_json_lines(fh, chunk)
        if fh is not None:
            fh.close()
    else:
        pending: List[pl.DataFrame] = []
        rows = 0

        def flush() -> None:
            # polars' own writer: about a third cheaper than pyarrow's on this nested form
            frame = pl.concat(pending, rechunk=False)
            paths.append(out / f"samples-{len(paths):05d}.parquet")
            frame.write_parquet(paths[-1], compression="zstd", compression_level=1,
                                row_group_size=ROWS_PER_ROW_GROUP)
            pending.clear()

        for chunk in chunks:
            pending.append(to_wire_frame(chunk))
            rows += chunk.height
            if rows >= rows_per_file:
                flush()
                rows = 0
        if pending:
            flush()
    paths.append(write_ground_truth(scenario, out, seed))
    host_table(scenario, seed).write_csv(out / HOSTS_FILE)
    paths.append(out / HOSTS_FILE)
    return paths


def produce_to_kafka(scenario: Scenario, settings, topic: Optional[str] = None,
                     seed: Optional[int] = None, realtime: bool = False, speed: float = 1.0,
                     producer=None, progress=None, workers: int = 1,
                     client: str = DEFAULT_CLIENT) -> Dict[str, Any]:
    """Send the simulated records to Kafka, key = host id, value = wire v1 JSON.

    As fast as possible with simulated timestamps by default; with ``realtime`` each
    record waits until its delivery time, the simulated clock running ``speed`` times
    faster than the wall clock. ``workers`` > 1 runs that many producer processes, each
    sending the records of its share of the hosts. ``client``: the Kafka client library
    (``producer.CLIENTS``); ``producer``: a kafka-python producer the caller made (and
    closes) to send with instead (see ``producer.make_record_producer``). Raises ``ServiceError`` naming
    the topic if any record was not delivered. Returns ``sent`` (records acknowledged by
    the broker), ``seconds``, ``records_per_s``, ``topic``."""
    from foliowatch.kafka_io import TOPIC_SAMPLES

    topic = topic or TOPIC_SAMPLES
    if speed <= 0:
        raise ValueError(f"produce_to_kafka speed: must be > 0, got {speed}")
    if workers < 1:
        raise ValueError(f"produce_to_kafka workers: must be >= 1, got {workers}")
    check_client(client)   # before any worker starts
    seed = scenario.seed if seed is None else int(seed)
    if workers == 1:
        return _produce_share(scenario, settings, topic, seed, realtime, speed, producer,
                              progress, (0, 1), client)
    if producer is not None:
        raise ValueError("produce_to_kafka: a given producer cannot be shared by workers; "
                         "pass workers=1")
    import multiprocessing as mp

    t0 = time.monotonic()
    # spawn, not fork: polars' thread pool must not be forked
    with mp.get_context("spawn").Pool(workers) as pool:
        results = pool.starmap(_produce_share, [
            (scenario, settings, topic, seed, realtime, speed, None, None, (i, workers), client)
            for i in range(workers)])
    secs = time.monotonic() - t0
    sent = sum(r["sent"] for r in results)
    return {"sent": sent, "seconds": secs, "records_per_s": sent / secs if secs > 0 else 0.0,
            "topic": topic, "workers": workers}


#: records encoded at once for Kafka: large enough for a vectorised encoding and for the
#: producer's batches to fill (a slice is produced in one burst), small enough that the
#: ``bytes`` held for the producer stay ~70 MB per slice
WIRE_SLICE_ROWS = 50_000


def wire_records(chunks: Iterator[pl.DataFrame]) -> Iterator[Tuple[List[bytes], List[bytes],
                                                                   np.ndarray]]:
    """The chunks as the producer takes them, in slices of ``WIRE_SLICE_ROWS``: keys (host
    ids) and values (wire JSON) as ``bytes``, each slice encoded at once
    (``to_wire_bytes``: the compiled encoder when it is built), and the records'
    simulated delivery times."""
    for chunk in chunks:
        for lo in range(0, chunk.height, WIRE_SLICE_ROWS):
            part = chunk.slice(lo, WIRE_SLICE_ROWS)
            yield (part["host_id"].cast(pl.Binary).to_list(),
                   to_wire_bytes(part),
                   part["emit_ts"].to_numpy())


class Pacer:
    """The one pacing rule for playing simulated records at a wall-clock speed: records
    timed before ``sim_start`` go as fast as possible; from the first record at or after
    it, a slice of ``step`` simulated seconds waits until ``(t - sim_start) / speed`` wall
    seconds after that record was reached. ``stop`` (a ``threading.Event``) cuts a wait
    short; the caller checks it."""

    def __init__(self, sim_start: float, speed: float, step: float = 1.0,
                 stop: Optional[threading.Event] = None):
        if speed <= 0:
            raise ValueError(f"Pacer speed: must be > 0, got {speed}")
        self.sim_start, self.speed, self.step, self.stop = sim_start, speed, step, stop
        self._wall0: Optional[float] = None

    def slices(self, emit: np.ndarray) -> Iterator[Tuple[int, int]]:
        """``(lo, hi)`` bounds of ``emit`` (sorted delivery times) in slices of ``step``
        simulated seconds, each yielded once it is due."""
        if not len(emit):
            return
        bounds = np.searchsorted(emit, np.arange(emit[0], emit[-1] + self.step, self.step))
        lo = 0
        for hi in list(bounds[1:]) + [len(emit)]:
            if hi <= lo:
                continue
            if emit[lo] >= self.sim_start:
                if self._wall0 is None:
                    self._wall0 = time.monotonic()
                self._wait_until(self._wall0 + (emit[lo] - self.sim_start) / self.speed)
            yield lo, hi
            lo = hi

    def _wait_until(self, due: float) -> None:
        # one reading of the clock per step: read twice, the second reading can pass
        # ``due`` and the sleep length come out negative
        while self.stop is None or not self.stop.is_set():
            remaining = due - time.monotonic()
            if remaining <= 0:
                return
            if self.stop is None:
                time.sleep(remaining)
            else:
                self.stop.wait(min(0.1, remaining))


def _produce_share(scenario: Scenario, settings, topic: str, seed: int, realtime: bool,
                   speed: float, producer, progress, share,
                   client: str = DEFAULT_CLIENT) -> Dict[str, Any]:
    """Produce the records of hosts whose id hashes to ``share[0]`` modulo ``share[1]``
    (all of them for ``(0, 1)``): a host's records all go through one producer, in order.
    The next chunks are simulated and encoded in a background thread while this one is
    sent (polars and numpy release the GIL; so does the client's I/O thread)."""
    part, parts = share
    chunks = simulate_frame(scenario, seed)
    if parts > 1:
        chunks = (c.filter(pl.col("host_id").hash(seed=0) % parts == part) for c in chunks)
    sent = 0
    t0 = time.monotonic()
    pacer = Pacer(scenario.start_ts, speed) if realtime else None
    with make_record_producer(settings, topic, client, producer) as sender:
        for keys, values, emit in _prefetch(wire_records(chunks), depth=2):
            if pacer is not None:
                # slices of ~1 simulated second, so records leave near their time
                for lo, hi in pacer.slices(emit):
                    sender.send(keys[lo:hi], values[lo:hi])
                    sent += hi - lo
            else:
                sender.send(keys, values)
                sent += len(keys)
            if progress:
                progress(sent)
        sender.flush()
    secs = time.monotonic() - t0
    return {"sent": sent, "seconds": secs, "records_per_s": sent / secs if secs > 0 else 0.0,
            "topic": topic}
