"""The pipeline's Kafka consumer behind one small interface, so that the client library
is chosen in one place (``open_consumer``): confluent-kafka (librdkafka, C) by default,
kafka-python (pure Python) as the alternative.

Measured side by side on the same topic in one run (benchmarks/pipeline_throughput.py):
kafka-python spends ~7 µs of GIL-holding CPU per record parsing record batches in
Python, which alone caps a pipeline process near 120k records/s; librdkafka parses
them in C on its own threads and hands over ready messages for well under 2 µs each.

What the runner needs from a client, and no more:

- ``subscribe`` with a ``Listener``: ``assigned(partitions)`` returns where to start
  reading each partition (its checkpoint), ``revoked(partitions)`` returns the offsets to
  commit before the partitions go (their checkpoint), ``released(partitions, committed,
  error)`` follows that commit, ``lost(partitions)`` when evicted (no commit possible).
  Each client commits on revoke in the one way its library allows inside a rebalance.
- ``poll`` returns a ``Records`` batch of parallel lists (values, partitions, offsets,
  keys): no object per record is kept.
- ``commit``, ``assignment``, ``end_offsets``, ``position``, ``lag``, ``close``; every
  blocking broker call is bounded by a timeout (see consumer.py: a SIGTERM must be acted
  upon when the broker is gone; confluent-kafka's periodic commit is asynchronous and
  so never blocks). A failed commit raises ``CommitFailed``.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

from foliowatch.errors import ConfigError, FoliowatchError
from foliowatch.kafka_io import (DEFAULT_KAFKA_CLIENT, KAFKA_CLIENTS, KafkaSettings,
                                 librdkafka_config, make_consumer)

log = logging.getLogger("foliowatch.pipeline")

CLIENTS, DEFAULT_CLIENT = KAFKA_CLIENTS, DEFAULT_KAFKA_CLIENT
# Fetch sizes (compressed bytes). librdkafka holds whole fetch responses and their
# decompressed batches (zstd wire records grow ~7x), and a fetch overshoots the prefetch
# bounds below by up to these. Measured on 300k simulator records, 6 partitions
# (benchmarks/pipeline_throughput.md): 2 MiB per partition and 16 MiB per fetch peaked at
# 531-558 MB; 1 MiB / 4 MiB 415-438 MB (2026-12-02). With the decoder's columns handed
# over without pyarrow and the fixed mmap threshold (2026-12-04, with the prefetch bounds
# below, alternating): 1 MiB / 4 MiB 324-326 MB at 78.6-83.6k records/s, 10.1-10.8 us per
# record; these 294-298 MB at 79.3-80.4k/s, 10.5 us; 256 KiB / 1 MiB 298-305 MB at
# 73.5-77.0k/s, 11.0-11.4 us (batches fill more slowly). A batch larger than the
# partition's size still comes whole (Kafka returns at least one).
DEFAULT_PARTITION_FETCH_BYTES = 512 * 1024
DEFAULT_FETCH_MAX_BYTES = 2 * 1024 * 1024


class CommitFailed(FoliowatchError):
    """An offset commit was refused or not answered in time (the checkpoint files hold
    the position)."""


@dataclass
class Records:
    """One poll's messages as parallel lists (in partition order, offsets ascending)."""
    values: List[bytes] = field(default_factory=list)
    partitions: List[int] = field(default_factory=list)
    offsets: List[int] = field(default_factory=list)
    keys: List[Optional[bytes]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.values)

    def extend(self, other: "Records") -> None:
        self.values += other.values
        self.partitions += other.partitions
        self.offsets += other.offsets
        self.keys += other.keys


class Listener:
    """The runner's side of a rebalance (see the module docstring)."""

    def assigned(self, partitions: List[int]) -> Dict[int, int]:
        raise NotImplementedError

    def revoked(self, partitions: List[int]) -> Dict[int, int]:
        raise NotImplementedError

    def released(self, partitions: List[int], committed: bool,
                 error: Optional[BaseException]) -> None:
        raise NotImplementedError

    def lost(self, partitions: List[int]) -> None:
        raise NotImplementedError


@dataclass
class ConsumerOptions:
    group: str
    session_timeout_ms: int = 10_000
    max_partition_fetch_bytes: int = DEFAULT_PARTITION_FETCH_BYTES
    fetch_max_bytes: int = DEFAULT_FETCH_MAX_BYTES
    max_poll_records: int = 10_000
    # librdkafka prefetches until a partition has queued.min.messages or the consumer
    # queued.max.messages.kbytes (counted as fetched, i.e. compressed: zstd wire records
    # grow ~7x when decompressed); its defaults are 100,000 messages and 64 MiB. They
    # trade memory for records/s (benchmarks/pipeline_prefetch.py, 2026-12-04, with the
    # backoff below): librdkafka's defaults 91-99k records/s at 479-515 MB peak. Since
    # the decoder no longer loads pyarrow, 2,000 / 4 MiB with the fetch sizes above
    # peaked at 294-298 MB for the same records/s and CPU per record as 20,000 / 16 MiB
    # with 1 MiB / 4 MiB fetches (324-326 MB), in the same run.
    queued_min_messages: int = 2_000
    queued_max_kbytes: int = 4 * 1024
    # Once a partition's queue is past those bounds, librdkafka waits this long before it
    # fetches for it again (its default is 1000 ms; librdkafka issue #2879, "Consumer
    # fetching once a second"): a pipeline that drains a full queue in tens of
    # milliseconds then sat idle for the rest of the second. At 10 ms the whole pipeline
    # did 2.7-3.2x the records/s at 0.7-0.82x the CPU per record
    # (benchmarks/pipeline_prefetch.py and pipeline_throughput.py --before, 2026-12-04,
    # quiet machine); 1 ms gained nothing more. A consumer that keeps up with live
    # traffic never reaches the bounds: this matters when catching up and in replays.
    fetch_queue_backoff_ms: int = 10


def open_consumer(client: str, settings: KafkaSettings, options: ConsumerOptions):
    """The one place that chooses the client library."""
    if client == "confluent-kafka":
        return ConfluentConsumer(settings, options)
    if client == "kafka-python":
        return KafkaPythonConsumer(settings, options)
    raise ConfigError(f"--kafka-client: {client!r} is not one of {', '.join(CLIENTS)}")


def _bounded(what: str, fn: Callable[[], Any], timeout_s: float) -> Any:
    """Run a blocking librdkafka call that takes no timeout of its own (commit, close) on a
    helper thread and wait at most ``timeout_s``; raise ``CommitFailed`` past that (the
    call is abandoned: its thread is a daemon and holds no lock of ours)."""
    box: Dict[str, Any] = {}

    def call() -> None:
        try:
            box["result"] = fn()
        except BaseException as e:  # handed to the caller
            box["error"] = e

    t = threading.Thread(target=call, name=f"kafka-{what}", daemon=True)
    t.start()
    t.join(timeout_s)
    if t.is_alive():
        raise CommitFailed(f"{what}: no answer from the broker within {timeout_s:g} s")
    if "error" in box:
        raise box["error"]
    return box.get("result")


# -- confluent-kafka ---------------------------------------------------------------------
class ConfluentConsumer:
    def __init__(self, settings: KafkaSettings, options: ConsumerOptions):
        from confluent_kafka import Consumer
        self.options = options
        self.topic = ""
        self._start: Dict[int, int] = {}
        self._commit_error: Any = None
        self._consumer = Consumer(librdkafka_config(
            settings,
            **{"group.id": options.group,
               "on_commit": self._on_commit,
               "enable.auto.commit": False,
               "enable.auto.offset.store": False,
               "auto.offset.reset": "earliest",
               "isolation.level": "read_committed",
               "session.timeout.ms": options.session_timeout_ms,
               "heartbeat.interval.ms": max(1000, options.session_timeout_ms // 4),
               "max.poll.interval.ms": 600_000,
               "max.partition.fetch.bytes": options.max_partition_fetch_bytes,
               "fetch.max.bytes": options.fetch_max_bytes,
               "queued.min.messages": options.queued_min_messages,
               "queued.max.messages.kbytes": options.queued_max_kbytes,
               "fetch.queue.backoff.ms": options.fetch_queue_backoff_ms}))

    def subscribe(self, topic: str, listener: Listener) -> None:
        from confluent_kafka import OFFSET_INVALID, TopicPartition
        self.topic = topic

        def on_assign(consumer, tps) -> None:
            mine = [tp.partition for tp in tps if tp.topic == topic]
            start = listener.assigned(mine)
            self._start = dict(start)
            consumer.assign([TopicPartition(tp.topic, tp.partition,
                                            start.get(tp.partition, OFFSET_INVALID)
                                            if tp.topic == topic else OFFSET_INVALID)
                             for tp in tps])

        def on_revoke(consumer, tps) -> None:
            mine = [tp.partition for tp in tps if tp.topic == topic]
            offsets = listener.revoked(mine) if mine else {}
            committed, error = False, None
            if offsets:
                # synchronous, on this thread: librdkafka serves a commit made from the
                # rebalance callback before the rebalance goes on (one made from another
                # thread waits for the rebalance, i.e. for this callback: measured)
                try:
                    self._commit_now(offsets)
                    committed = True
                except Exception as e:
                    error = e
            if mine:
                listener.released(mine, committed, error)
            consumer.unassign()

        def on_lost(consumer, tps) -> None:
            mine = [tp.partition for tp in tps if tp.topic == topic]
            if mine:
                listener.lost(mine)
            consumer.unassign()

        self._consumer.subscribe([topic], on_assign=on_assign, on_revoke=on_revoke,
                                 on_lost=on_lost)

    def poll(self, max_records: int, timeout_s: float) -> Records:
        from confluent_kafka import KafkaError, KafkaException
        msgs = self._consumer.consume(num_messages=max_records, timeout=timeout_s)
        out = Records()
        if not msgs:
            return out
        bad = [m for m in msgs if m.error() is not None]
        if bad:
            for m in bad:
                err = m.error()
                if err.fatal():
                    raise KafkaException(err)
                if err.code() != KafkaError._PARTITION_EOF:
                    log.warning("consumer: %s", err)
            msgs = [m for m in msgs if m.error() is None]
        out.values = [m.value() for m in msgs]
        out.partitions = [m.partition() for m in msgs]
        out.offsets = [m.offset() for m in msgs]
        out.keys = [m.key() for m in msgs]
        return out

    def commit(self, offsets: Dict[int, int], timeout_s: float) -> None:
        """Asynchronous: the commit is sent and this returns at once; its outcome arrives
        during a later ``poll`` (``on_commit``) and a failure is raised by the next
        call. A synchronous commit with the broker gone could only be abandoned on a
        helper thread, where it stays blocked in librdkafka."""
        from confluent_kafka import TopicPartition
        failed, self._commit_error = self._commit_error, None
        try:
            self._consumer.commit(offsets=[TopicPartition(self.topic, p, o)
                                           for p, o in offsets.items()], asynchronous=True)
        except Exception as e:
            raise CommitFailed(f"offset commit: {e}") from None
        if failed is not None:
            raise CommitFailed(f"offset commit: {failed}")

    def _on_commit(self, err, tps) -> None:
        bad = [tp for tp in tps or () if tp.error is not None]
        if err is not None or bad:
            self._commit_error = err if err is not None else bad[0].error

    def _commit_now(self, offsets: Dict[int, int]) -> None:
        from confluent_kafka import TopicPartition
        tps = [TopicPartition(self.topic, p, o) for p, o in offsets.items()]
        try:
            res = self._consumer.commit(offsets=tps, asynchronous=False)
        except Exception as e:
            raise CommitFailed(f"offset commit: {e}") from None
        failed = [tp for tp in res or () if tp.error is not None]
        if failed:
            raise CommitFailed(f"offset commit of partition {failed[0].partition}: "
                               f"{failed[0].error}")

    def assignment(self) -> List[int]:
        return sorted(tp.partition for tp in self._consumer.assignment()
                      if tp.topic == self.topic)

    def end_offsets(self, partitions: List[int], timeout_s: float) -> Dict[int, int]:
        from confluent_kafka import TopicPartition
        return {p: self._consumer.get_watermark_offsets(TopicPartition(self.topic, p),
                                                        timeout=timeout_s)[1]
                for p in partitions}

    def position(self, partitions: List[int], timeout_s: Optional[float] = None
                 ) -> Dict[int, Optional[int]]:
        """The next offset to read. librdkafka knows it only once a message of the
        partition was handed over; before that (``timeout_s`` given) it is where reading
        starts: the offset assigned, else the committed one, else the beginning."""
        from confluent_kafka import TopicPartition
        tps = self._consumer.position([TopicPartition(self.topic, p) for p in partitions])
        pos = {tp.partition: tp.offset if tp.offset >= 0 else None for tp in tps}
        unknown = [p for p, o in pos.items() if o is None]
        if timeout_s is None or not unknown:
            return pos
        for p in unknown:
            pos[p] = self._start.get(p)
        rest = [p for p in unknown if pos[p] is None]
        if rest:
            for tp in self._consumer.committed([TopicPartition(self.topic, p) for p in rest],
                                               timeout=timeout_s):
                pos[tp.partition] = tp.offset if tp.offset >= 0 else \
                    self._consumer.get_watermark_offsets(tp, timeout=timeout_s)[0]
        return pos

    def lag(self) -> Dict[int, int]:
        from confluent_kafka import TopicPartition
        parts = self.assignment()
        pos = self.position(parts)
        unknown = [p for p, o in pos.items() if o is None]
        if unknown:   # nothing read yet: where reading starts (asked once, then known)
            try:
                start = self.position(unknown, timeout_s=1.0)
            except Exception:   # the broker is not answering: no figure this time
                start = {}
            for p, o in start.items():
                if o is not None:
                    self._start[p] = pos[p] = o
        lag = {}
        for p in parts:
            _low, high = self._consumer.get_watermark_offsets(
                TopicPartition(self.topic, p), cached=True)
            if high is not None and high >= 0 and pos.get(p) is not None:
                lag[p] = max(0, high - pos[p])
        return lag

    def close(self, timeout_s: float) -> None:
        _bounded("leaving the group", self._consumer.close, timeout_s)


# -- kafka-python ------------------------------------------------------------------------
class KafkaPythonConsumer:
    """kafka-python 3.x runs the rebalance listener on the consumer's IO thread, inside
    the event loop that talks to the broker: a blocking ``commit()`` there cannot work (it
    would wait on the loop it is running on). So the listener is an
    ``AsyncConsumerRebalanceListener`` and awaits ``commit_async``, which the loop
    completes while the listener waits."""

    def __init__(self, settings: KafkaSettings, options: ConsumerOptions):
        self.options = options
        self.topic = ""
        self._consumer = make_consumer(
            settings, group_id=options.group, max_poll_records=options.max_poll_records,
            max_partition_fetch_bytes=options.max_partition_fetch_bytes,
            fetch_max_bytes=options.fetch_max_bytes,
            session_timeout_ms=options.session_timeout_ms,
            heartbeat_interval_ms=max(1000, options.session_timeout_ms // 4),
            max_poll_interval_ms=600_000)

    def _offset_map(self, offsets: Dict[int, int]) -> Dict:
        from kafka import TopicPartition
        from kafka.structs import OffsetAndMetadata
        return {TopicPartition(self.topic, p): OffsetAndMetadata(o, "", -1)
                for p, o in offsets.items()}

    def subscribe(self, topic: str, listener: Listener) -> None:
        from kafka import AsyncConsumerRebalanceListener, TopicPartition
        self.topic = topic
        client = self

        class Adapter(AsyncConsumerRebalanceListener):
            async def on_partitions_revoked(self, revoked):
                mine = [tp.partition for tp in revoked if tp.topic == topic]
                if not mine:
                    return
                offsets = listener.revoked(mine)
                committed, error = False, None
                if offsets:
                    # awaited on the IO loop, which sends the request meanwhile; bounded
                    # by the consumer's request_timeout_ms
                    try:
                        await client._consumer.commit_async(client._offset_map(offsets))
                        committed = True
                    except Exception as e:
                        error = e
                listener.released(mine, committed, error)

            async def on_partitions_assigned(self, assigned):
                mine = [tp.partition for tp in assigned if tp.topic == topic]
                for p, offset in listener.assigned(mine).items():
                    client._consumer.seek(TopicPartition(topic, p), offset)

            async def on_partitions_lost(self, lost):
                mine = [tp.partition for tp in lost if tp.topic == topic]
                if mine:
                    listener.lost(mine)

        self._consumer.subscribe([topic], listener=Adapter())

    def poll(self, max_records: int, timeout_s: float) -> Records:
        out = Records()
        for recs in self._consumer.poll(timeout_ms=int(timeout_s * 1000),
                                        max_records=max_records).values():
            out.values += [r.value if r.value is not None else b"" for r in recs]
            out.partitions += [r.partition for r in recs]
            out.offsets += [r.offset for r in recs]
            out.keys += [r.key for r in recs]
        return out

    def commit(self, offsets: Dict[int, int], timeout_s: float) -> None:
        try:
            self._consumer.commit(self._offset_map(offsets), timeout_ms=int(timeout_s * 1000))
        except Exception as e:
            raise CommitFailed(f"offset commit: {type(e).__name__}: {e}") from None

    def assignment(self) -> List[int]:
        return sorted(tp.partition for tp in self._consumer.assignment()
                      if tp.topic == self.topic)

    def end_offsets(self, partitions: List[int], timeout_s: float) -> Dict[int, int]:
        from kafka import TopicPartition
        tps = [TopicPartition(self.topic, p) for p in partitions]
        ends = self._consumer.end_offsets(tps, timeout_ms=int(timeout_s * 1000))
        return {tp.partition: o for tp, o in ends.items()}

    def position(self, partitions: List[int], timeout_s: Optional[float] = None
                 ) -> Dict[int, Optional[int]]:
        from kafka import TopicPartition
        return {p: self._consumer.position(TopicPartition(self.topic, p)) for p in partitions}

    def lag(self) -> Dict[int, int]:
        lag = {}
        for tp in self._consumer.assignment():
            hw = self._consumer.highwater(tp)
            if hw is None:
                continue
            pos = self._consumer.position(tp, timeout_ms=0)
            if pos is not None:
                lag[tp.partition] = max(0, hw - pos)
        return lag

    def close(self, timeout_s: float) -> None:
        self._consumer.close(autocommit=False, timeout_ms=int(timeout_s * 1000))
