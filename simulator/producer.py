"""The simulator's Kafka producer: one small interface and the one place where the client
library is chosen (``make_record_producer``).

A ``RecordProducer`` takes a chunk at a time, as two lists of the same length: the keys
(host ids) and the values (wire v1 JSON), both ``bytes``, as ``frames.to_wire_bytes``
encodes them for a whole slice at once. ``send`` does nothing per record but the client's
own produce call; ``flush`` waits for every record and raises ``ServiceError`` naming the
topic if any was not delivered; ``close`` releases the client.

Clients: librdkafka's (confluent-kafka, the default: measured side by side with
kafka-python on the same topic by ``benchmarks/simulator_throughput.py``, it is the faster
one: ``docs/scaling.md``) and kafka-python's (the agent's client, also what a caller may
hand in ready-made). Both keep the project's durable defaults (``kafka_io``: acks=all,
idempotence, the settings' compression) and both put a key in the partition the Java
client would (murmur2), so one host's records share a partition whichever client, agent
or simulator sent them.
"""

from __future__ import annotations

from typing import Any, List, Sequence

from foliowatch.errors import ConfigError, ServiceError
from foliowatch.kafka_io import DEFAULT_KAFKA_CLIENT, KAFKA_CLIENTS

CLIENTS, DEFAULT_CLIENT = KAFKA_CLIENTS, DEFAULT_KAFKA_CLIENT
#: seconds ``flush`` waits for the last deliveries before it calls them failed
FLUSH_TIMEOUT_S = 120.0


def check_client(client: str) -> None:
    """Raise ``ConfigError`` unless ``client`` is one of ``CLIENTS``."""
    if client not in CLIENTS:
        raise ConfigError(f"simulator Kafka client: {client!r} is not one of "
                          f"{', '.join(CLIENTS)}")


def make_record_producer(settings, topic: str, client: str = DEFAULT_CLIENT,
                         producer=None) -> "RecordProducer":
    """The simulator's producer for ``topic``: a new one of ``client`` (one of
    ``CLIENTS``), or ``producer``, a kafka-python ``KafkaProducer`` the caller made (and
    closes), wrapped in the same interface (its failures come back on each record's
    future; a ready-made confluent-kafka producer would report them only through a
    callback of its own configuration, so it is refused)."""
    if producer is not None:
        from kafka import KafkaProducer
        if not isinstance(producer, KafkaProducer):
            raise ConfigError(f"simulator producer: expected a kafka-python KafkaProducer, "
                              f"got {type(producer).__name__} (a ready-made confluent-kafka "
                              "Producer could not report failed deliveries here); pass "
                              "client='confluent-kafka' instead and the simulator makes its own")
        return KafkaPythonRecordProducer(topic, producer=producer)
    check_client(client)
    if client == "confluent-kafka":
        return LibrdkafkaRecordProducer(topic, settings)
    return KafkaPythonRecordProducer(topic, settings=settings)


class RecordProducer:
    """Send a chunk's records (``send``), wait for all of them (``flush``), ``close``."""

    topic: str
    sent: int = 0

    def send(self, keys: Sequence[bytes], values: Sequence[bytes]) -> None:
        raise NotImplementedError

    def flush(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def _raise_failures(self, failures: List[Any], total: int) -> None:
        if failures:
            raise ServiceError(
                f"kafka topic {self.topic}: records not delivered ({len(failures)} failure(s) "
                f"reported of {total} records sent; first: {failures[0]}); check that the topic "
                "exists, that this producer may write to it (ACLs) and that its "
                "max.message.bytes holds a record, that the broker is up, then simulate "
                "again (the records already delivered stay: use a fresh topic or expect "
                "duplicates, which the pipeline drops)")

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        try:
            self.close()
        except Exception:
            if exc is None:   # an error already on its way says more than the close's
                raise


class LibrdkafkaRecordProducer(RecordProducer):
    """confluent-kafka. Delivery reports come back for failures only
    (``delivery.report.only.error``): a Python callback per delivered record would cost
    more than the produce call itself, and a record not reported failed by the time
    ``flush`` has emptied the queue was acknowledged (acks=all)."""

    # one simulator stands in for a whole fleet: larger batches than the agent's, and the
    # codec's fastest level (zstd 1 instead of the default 3 took the producer's CPU per
    # record from 17.4 to 11.3 us, and these records took no more room on the broker:
    # 184 vs 199 B each; docs/scaling.md)
    BULK = {"linger.ms": 50, "batch.size": 1 << 20, "queue.buffering.max.kbytes": 128 << 10,
            "compression.level": 1, "partitioner": "murmur2_random"}

    def __init__(self, topic: str, settings):
        from foliowatch.kafka_io import make_librdkafka_producer
        self.topic = topic
        self.failures: List[Any] = []
        self.sent = 0
        self.producer = make_librdkafka_producer(settings, **self.BULK, **{
            "delivery.report.only.error": True, "on_delivery": self._delivered})

    def _delivered(self, err, _msg) -> None:
        if err is not None:
            self.failures.append(err)

    def send(self, keys: Sequence[bytes], values: Sequence[bytes]) -> None:
        produce, topic = self.producer.produce, self.topic
        for k, v in zip(keys, values):
            try:
                produce(topic, v, k)
            except BufferError:   # the local queue is full: let deliveries drain it
                self._produce_when_room(k, v)
        self.sent += len(values)
        self.producer.poll(0)
        self._raise_failures(self.failures, self.sent)

    def _produce_when_room(self, key: bytes, value: bytes) -> None:
        while True:
            self.producer.poll(0.05)
            try:
                self.producer.produce(self.topic, value, key)
                return
            except BufferError:
                continue

    def flush(self) -> None:
        left = self.producer.flush(FLUSH_TIMEOUT_S)
        if left:
            self.failures.append(f"{left} record(s) still queued after {FLUSH_TIMEOUT_S:.0f} s "
                                 "(broker unreachable?)")
        self._raise_failures(self.failures, self.sent)

    def close(self) -> None:
        # undelivered records were reported by flush; do not wait long for them again
        self.producer.flush(5)


class KafkaPythonRecordProducer(RecordProducer):
    """kafka-python: every ``send`` returns a future; failures are collected from them."""

    def __init__(self, topic: str, settings=None, producer=None):
        self.topic = topic
        self.failures: List[BaseException] = []
        self.sent = 0
        self._own = producer is None
        if producer is None:
            from foliowatch.kafka_io import make_producer
            producer = make_producer(settings, batch_size=1 << 20, linger_ms=50)
        self.producer = producer

    def send(self, keys: Sequence[bytes], values: Sequence[bytes]) -> None:
        send, topic, failed = self.producer.send, self.topic, self.failures.append
        for k, v in zip(keys, values):
            send(topic, key=k, value=v).add_errback(failed)
        self.sent += len(values)
        self._raise_failures(self.failures, self.sent)

    def flush(self) -> None:
        from kafka.errors import KafkaError
        try:
            self.producer.flush(timeout=FLUSH_TIMEOUT_S)
        except KafkaError as e:
            # kafka-python's flush raises itself for some failures (a batch the broker
            # refused as too large is split, and flush gives up on it: "Future not done")
            self.failures.append(e)
        self._raise_failures(self.failures, self.sent)

    def close(self) -> None:
        if self._own:
            # after a failure, records may still be retried: do not wait long for them
            self.producer.close(timeout=5 if self.failures else None)


__all__ = ["CLIENTS", "DEFAULT_CLIENT", "check_client", "make_record_producer", "RecordProducer",
           "LibrdkafkaRecordProducer", "KafkaPythonRecordProducer"]

