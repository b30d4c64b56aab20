"""The Kafka side: a consumer-group member that reads ``foliowatch.samples.v1`` in
micro-batches (bounded by records and time), runs them through the pipeline, and
commits offsets only after the windows and the checkpoint that cover them are durable.

Partition ownership follows the group: when partitions are assigned, this instance
loads their checkpoints and seeks to the checkpointed offset (the checkpoint is the
truth; the committed offset may lag it by one crash); when they are revoked, it
finishes the pending batch, checkpoints and commits them, and forgets them.

The Kafka client library is chosen in one place (``kafka_client.open_consumer``;
confluent-kafka by default) and used through its small interface: rebalances arrive as
``Listener`` calls, and the client commits a revoked partition's checkpoint in the way
its library allows inside a rebalance.

Consuming and processing overlap: this thread polls Kafka and decodes a batch (the
compiled decoder runs without the GIL and touches no pipeline state) while one worker
thread aggregates the previous batch and the files of the one before are written
(polars and fsync release the GIL). Everything that reads or changes the pipeline's
state from this thread (checkpoints, rebalances, the end of input) first waits for the
worker to finish what it was handed, so checkpoints stay consistent.

SIGTERM/SIGINT stop it promptly even when the broker is gone: every blocking broker call
has a bound (offset commits, leaving the group, delivering dead letters), the final
checkpoint is written only when the dead letters it covers are acknowledged, and a
commit the broker cannot take is skipped (the checkpoint files hold the position).
"""

from __future__ import annotations

import json
import logging
import queue
import signal
import threading
import time
from dataclasses import dataclass
from typing import Dict, List, Optional

from foliowatch.errors import ServiceError
from foliowatch.kafka_io import KafkaSettings, make_producer

from .engine import Pipeline
from .kafka_client import (DEFAULT_CLIENT, DEFAULT_FETCH_MAX_BYTES,
                           DEFAULT_PARTITION_FETCH_BYTES, CommitFailed, ConsumerOptions,
                           Listener, Records, open_consumer)
from .sinks import StateStore

log = logging.getLogger("foliowatch.pipeline")


@dataclass
class ConsumerConfig:
    topic: str
    group: str = "foliowatch-pipeline"
    batch_records: int = 10_000
    batch_seconds: float = 1.0
    # A batch is handed over when it is full, when batch_seconds have passed since it
    # began, or as soon as one poll of this long brings nothing: the consumer has caught
    # up, and waiting for the rest of batch_seconds would only delay the records it holds
    # (at the end of a backlog, up to a whole second for the last few). Idle, the loop
    # comes round this often for checkpoints, the lag and --until-idle.
    caught_up_poll_s: float = 0.1
    checkpoint_seconds: float = 5.0
    until_idle_s: float = 0.0          # > 0: stop after this long with nothing to read
    session_timeout_ms: int = 10_000
    max_partition_fetch_bytes: int = DEFAULT_PARTITION_FETCH_BYTES
    fetch_max_bytes: int = DEFAULT_FETCH_MAX_BYTES
    max_poll_records: int = 10_000
    # Every blocking broker call is bounded: with the broker gone, kafka-python's commit
    # would otherwise retry forever and a SIGTERM would never be acted upon.
    commit_timeout_ms: int = 5_000
    stop_timeout_s: float = 3.0        # after SIGTERM: per broker call still attempted
    client: str = DEFAULT_CLIENT       # kafka_client.CLIENTS


class KafkaRunner(Listener):
    def __init__(self, settings: KafkaSettings, cfg: ConsumerConfig, pipeline: Pipeline,
                 store: StateStore, metrics=None):
        self.settings = settings
        self.cfg = cfg
        self.pipeline = pipeline
        self.store = store
        self.metrics = metrics
        self.consumer = None
        self.pending = Records()
        self.stop_requested = False
        self.last_checkpoint = time.monotonic()
        self.totals = {"records": 0, "accepted": 0, "duplicates": 0, "missing": 0,
                       "invalid": 0, "late": 0, "windows": 0}
        self._first_record_at: Optional[float] = None
        self._last_batch_done_at: Optional[float] = None
        # process CPU (every thread) at those two moments: the CPU of the work itself,
        # without the start (imports, joining the group) and the idle wait at the end
        self._first_record_cpu = 0.0
        self._last_batch_done_cpu = 0.0
        # Two batches at most: the worker's, and the next one, handed over as soon as it
        # is full; the consuming thread waits for the worker to take it before it fills
        # another (librdkafka keeps prefetching meanwhile). A third, filled while the
        # second waited, held ~15 MB more of records for nothing: the worker is the
        # slower side.
        self._work: "queue.Queue" = queue.Queue(maxsize=1)
        self._taken = threading.Semaphore(0)
        self._worker: Optional[threading.Thread] = None
        self._worker_error: Optional[BaseException] = None
        self._worker_cpu = 0.0
        self._closing = False
        self._commit_failing = False

    # -- rebalance callbacks (run inside poll) ----------------------------------------
    def revoked(self, partitions: List[int]) -> Dict[int, int]:
        """Partitions about to be revoked: finish, checkpoint; returns what to commit."""
        if self._closing:   # closing: run() has checkpointed already
            return {}
        self._process_pending()
        return self._checkpoint(partitions)    # waits for the worker first

    def released(self, partitions: List[int], committed: bool,
                 error: Optional[BaseException]) -> None:
        if self._closing:
            return
        if error is not None:   # the checkpoint files hold the position
            self._commit_failing = True
            log.warning("offset commit on revoke failed (%s: %s); the checkpoint files "
                        "hold the position", type(error).__name__, error)
        elif committed:
            self._commit_failing = False
        for p in partitions:
            self.pipeline.agg.drop(p)
        log.info("partitions %s revoked: checkpointed, %s and released", sorted(partitions),
                 "committed" if committed else "not committed")

    def lost(self, partitions: List[int]) -> None:
        """Evicted from the group (session expired): the generation is gone, so a commit
        would be refused; the checkpoint still records what is durable."""
        if self._closing:
            return
        self._process_pending()
        self._checkpoint(partitions)
        for p in partitions:
            self.pipeline.agg.drop(p)
        log.warning("partitions %s lost (evicted from the group): checkpointed, not "
                    "committed, released", sorted(partitions))

    def assigned(self, partitions: List[int]) -> Dict[int, int]:
        """Partitions assigned: load their checkpoints; returns where to start reading
        (the checkpoint is the truth; without one the group's committed offset)."""
        self._drain()
        start: Dict[int, int] = {}
        for p in partitions:
            saved = self.store.load(p)
            if saved is None:
                self.pipeline.agg.drop(p)
                continue
            meta, partials, seen = saved
            self.pipeline.agg.restore(p, meta, partials, seen)
            start[p] = meta.next_offset
        log.info("partitions %s assigned", sorted(partitions))
        return start

    # -- the loop --------------------------------------------------------------------
    def _make_consumer(self):
        c = open_consumer(self.cfg.client, self.settings, ConsumerOptions(
            group=self.cfg.group, session_timeout_ms=self.cfg.session_timeout_ms,
            max_partition_fetch_bytes=self.cfg.max_partition_fetch_bytes,
            fetch_max_bytes=self.cfg.fetch_max_bytes,
            max_poll_records=self.cfg.max_poll_records))
        c.subscribe(self.cfg.topic, self)
        return c

    def request_stop(self, *_args) -> None:
        self.stop_requested = True

    def run(self) -> dict:
        self._worker = threading.Thread(target=self._work_loop, name="pipeline-batches",
                                        daemon=True)
        self._worker.start()
        self.consumer = self._make_consumer()
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        idle_since = time.monotonic()
        try:
            while not self.stop_requested:
                got = self._fill_batch()
                if got:
                    idle_since = time.monotonic()
                    self._process_pending()
                if time.monotonic() - self.last_checkpoint >= self.cfg.checkpoint_seconds:
                    self._checkpoint_and_commit(self._owned())
                self._update_lag()
                if (self.cfg.until_idle_s > 0 and not got
                        and self._caught_up(time.monotonic() - idle_since)):
                    # a finite input is over: close every window as the end of the stream
                    self._drain()
                    owned = self._owned()
                    self.totals["windows"] += self.pipeline.finish(owned)
                    break
            self._process_pending()
            self._checkpoint_and_commit(self._owned())
        finally:
            self._closing = True
            self._work.put(None)
            self._worker.join(timeout=60)
            # bounded: leaving the group and delivering dead letters must not keep a
            # stopping pipeline alive when the broker is gone (nothing is lost: the
            # checkpoint covers only what was durable)
            quick = self.stop_requested
            try:
                self.consumer.close(self.cfg.stop_timeout_s if quick
                                    else self.cfg.commit_timeout_ms / 1000)
            except Exception as e:
                log.warning("consumer close: %s", e)
            try:
                self.pipeline.dlq.close(self.cfg.stop_timeout_s if quick else 30.0)
            except Exception as e:
                log.warning("dead-letter producer close: %s", e)
        log.info("stopped")
        import resource
        if self._first_record_at is not None and self._last_batch_done_at is not None:
            # from the poll that brought the first records to the end of the last batch
            self.totals["busy_seconds"] = round(self._last_batch_done_at
                                                - self._first_record_at, 3)
            self.totals["busy_cpu_seconds"] = round(self._last_batch_done_cpu
                                                    - self._first_record_cpu, 2)
        ru = resource.getrusage(resource.RUSAGE_SELF)
        self.totals["peak_rss_mb"] = peak_rss_mb()
        self.totals["cpu_seconds"] = round(ru.ru_utime + ru.ru_stime, 2)
        # where the CPU went: this (consuming) thread, the batch worker's own Python and
        # native code, and the rest (polars/Arrow pools, the Kafka client's own threads)
        self.totals["consumer_thread_cpu_seconds"] = round(time.thread_time(), 2)
        self.totals["worker_thread_cpu_seconds"] = round(self._worker_cpu, 2)
        return self.totals

    def _owned(self) -> List[int]:
        return self.consumer.assignment()

    def _fill_batch(self) -> int:
        deadline = time.monotonic() + self.cfg.batch_seconds
        self._batch_started_at = time.monotonic()
        self._batch_started_cpu = time.process_time()
        n = 0
        while n < self.cfg.batch_records and not self.stop_requested:
            # polls of at most caught_up_poll_s: confluent-kafka's returns only when it has
            # all it was asked for or its timeout is over
            timeout = max(0.0, min(deadline - time.monotonic(), self.cfg.caught_up_poll_s))
            polled = self.consumer.poll(min(self.cfg.max_poll_records,
                                            self.cfg.batch_records - n), timeout)
            if not len(polled):
                break       # caught up: hand over what is here now
            self.pending.extend(polled)
            n += len(polled)
            if time.monotonic() >= deadline:
                break
        return n

    def _process_pending(self) -> None:
        """Hand the pending records to the worker and wait until it has taken them
        (it is then busy with them, and no other batch is waiting)."""
        if not len(self.pending):
            return
        recs, self.pending = self.pending, Records()
        if self._first_record_at is None:
            self._first_record_at = self._batch_started_at
            self._first_record_cpu = self._batch_started_cpu
        self._raise_worker_error()
        recs.values = [v if v is not None else b"" for v in recs.values]
        decoded = self.pipeline.decode(recs.values)
        self._work.put((recs, decoded))
        self._taken.acquire()

    def _drain(self) -> None:
        """Wait until the worker has processed every batch handed to it."""
        self._work.join()
        self._raise_worker_error()

    def _raise_worker_error(self) -> None:
        if self._worker_error is not None:
            err, self._worker_error = self._worker_error, None
            raise err

    def _work_loop(self) -> None:
        while True:
            item = self._work.get()
            self._taken.release()
            try:
                if item is None:
                    return
                if self._worker_error is None:
                    self._process_records(*item)
            except BaseException as e:  # re-raised in the consuming thread
                self._worker_error = e
            finally:
                self._work.task_done()

    def _process_records(self, recs: Records, decoded) -> None:
        cpu0 = time.thread_time()
        st = self.pipeline.process(recs.values, recs.partitions, recs.offsets,
                                   self.cfg.topic, recs.keys, decoded=decoded)
        for k in self.totals:
            self.totals[k] += getattr(st, k)
        self._last_batch_done_at = time.monotonic()
        self._last_batch_done_cpu = time.process_time()
        self._worker_cpu += time.thread_time() - cpu0

    def _checkpoint(self, partitions: List[int]) -> Dict[int, int]:
        """Checkpoint ``partitions`` (after the worker is done); returns the next offsets
        it recorded, which may be committed (none if no checkpoint was written)."""
        from .sinks import DeadLetterError

        self._drain()
        self.last_checkpoint = time.monotonic()
        if not partitions:
            return {}
        try:
            offsets = self.pipeline.checkpoint(
                self.store, partitions,
                dlq_timeout_s=self.cfg.stop_timeout_s if self.stop_requested else 30.0)
        except DeadLetterError as e:
            # the previous checkpoint stays: a restart replays from it and rewrites the
            # same window files, so nothing is lost or counted twice
            log.warning("no checkpoint: %s", e)
            return {}
        if offsets:
            log.info("checkpoint: next offsets %s", json.dumps(offsets, sort_keys=True))
        return offsets or {}

    def _checkpoint_and_commit(self, partitions: List[int]) -> None:
        """From the consuming thread (never from a rebalance listener: see the module
        docstring)."""
        offsets = self._checkpoint(partitions)
        if not offsets:
            return
        stopping = self.stop_requested
        if stopping and self._commit_failing:
            log.warning("not committing offsets while stopping: the broker did not answer "
                        "the last commit; the checkpoint files hold the position")
            return
        timeout_s = self.cfg.stop_timeout_s if stopping else self.cfg.commit_timeout_ms / 1000
        try:
            self.consumer.commit(offsets, timeout_s)
            self._commit_failing = False
        except CommitFailed as e:  # a rebalance, or the broker is gone: the checkpoint holds
            self._commit_failing = True
            log.warning("offset commit failed (%s); the checkpoint files hold the position", e)

    def _caught_up(self, idle_s: float) -> bool:
        """--until-idle: nothing read for a while and every owned partition read to its
        end. Without partitions (a rebalance, e.g. waiting for a killed member's session
        to expire) it waits much longer before concluding there is nothing to do."""
        if idle_s < self.cfg.until_idle_s:
            return False
        parts = self.consumer.assignment()
        if not parts:
            return idle_s >= self.cfg.until_idle_s + 3 * self.cfg.session_timeout_ms / 1000
        timeout_s = self.cfg.commit_timeout_ms / 1000
        try:
            ends = self.consumer.end_offsets(parts, timeout_s)
            pos = self.consumer.position(parts, timeout_s)
        except Exception as e:   # broker unreachable: not known to be caught up
            log.warning("end offsets: %s", e)
            return False
        return all(pos[p] is not None and pos[p] >= ends[p] for p in parts)

    def _update_lag(self) -> None:
        if self.metrics is None:
            return
        self.metrics.set_lag({(self.cfg.topic, p): lag
                              for p, lag in self.consumer.lag().items()})


def peak_rss_mb() -> float:
    """This process's peak resident memory. /proc's VmHWM, not ru_maxrss, which Linux
    carries over from the parent across fork+exec."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    import resource
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def make_kafka_dlq(settings: KafkaSettings, topic: str):
    """The DLQ producer, after checking that the topic exists: a pipeline that cannot
    park bad records must not start consuming."""
    from kafka.errors import KafkaTimeoutError

    from .sinks import KafkaDLQ
    producer = make_producer(settings, max_block_ms=15_000)
    try:
        producer.partitions_for(topic)
    except KafkaTimeoutError:
        producer.close(timeout=5)
        raise ServiceError(f"--dlq-topic {topic}: the topic does not exist on "
                           f"{','.join(settings.bootstrap)} (or the broker is unreachable); "
                           "create it (deploy/kafka/kafka.sh topics --bootstrap B) or point "
                           "--dlq-topic at an existing one") from None
    return KafkaDLQ(producer, topic)
