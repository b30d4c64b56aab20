"""Delivery of encoded samples to Kafka, in order, acknowledged by every in-sync replica.

Built on ``foliowatch.kafka_io.make_producer`` (acks=all, idempotence, compression, TLS,
SASL SCRAM). The key is the host id, so one host's samples land in one partition in
``seq`` order. ``send()`` reports how many of the given records, counted from the first,
the broker acknowledged; the caller (the spool) keeps the rest. On any failure the
producer is closed and rebuilt after a back-off that doubles up to a bound, because a
kafka-python producer whose batches expired may hold stale idempotence state.

A broker that refuses this agent (wrong password, untrusted certificate, missing ACL) is
told apart from an outage (``foliowatch.kafka_access.refusal``): the message names the
setting to fix and is kept in ``refused``; samples stay in the spool either way, so a
credential fixed later loses nothing.
"""

from __future__ import annotations

import logging
import time
from typing import List, Optional

from foliowatch import kafka_access, kafka_io

log = logging.getLogger("foliowatch.agent.producer")
BATCH_BYTES = 1 << 20            # = kafka-python's max_request_size default
METADATA_MAX_AGE_MS = 30 * 60 * 1000


class KafkaSender:
    def __init__(self, settings: kafka_io.KafkaSettings, topic: str, key: bytes,
                 send_timeout_s: float = 10.0, backoff_max_s: float = 30.0):
        self.settings = settings
        self.topic = topic
        self.key = key
        self.send_timeout_s = send_timeout_s
        self.backoff_max_s = backoff_max_s
        self._producer = None
        self._backoff = 0.0
        self._retry_at = 0.0
        self.last_error: Optional[str] = None
        self.last_error_ts: Optional[float] = None
        self.errors_total = 0
        self.sent_total = 0
        self.requests_total = 0   # send() calls that reached the client: batching shows here
        self.refused: Optional[str] = None   # why the broker refuses us, naming the setting

    def ready(self) -> bool:
        """False while backing off after a failure."""
        return time.monotonic() >= self._retry_at

    def retry_in(self) -> float:
        """Seconds until the back-off after a failure ends (0 when ready)."""
        return max(0.0, self._retry_at - time.monotonic())

    def _ensure_producer(self):
        if self._producer is None:
            timeout_ms = int(self.send_timeout_s * 1000)
            # Bounded: a send never blocks the sampling loop for much longer than this.
            wanted = dict(max_block_ms=timeout_ms, request_timeout_ms=max(500, timeout_ms // 2),
                          delivery_timeout_ms=timeout_ms + 100, linger_ms=5,
                          reconnect_backoff_max_ms=2000, bootstrap_timeout_ms=timeout_ms,
                          # One batch (one request) for everything a drain hands over
                          # (runner.DRAIN_BATCH records): the cost is per request.
                          batch_size=BATCH_BYTES,
                          # Partition leaders are re-learnt on any error anyway; the
                          # periodic refresh only adds requests (5 min by default).
                          metadata_max_age_ms=METADATA_MAX_AGE_MS,
                          # The client's internal sensors cost CPU on every request and
                          # nothing reads them: the agent reports its own health.
                          metrics_enabled=False)
            # kafka-python 2.x lacks some of these; it rejects unknown keys.
            known = getattr(kafka_io.producer_class(), "DEFAULT_CONFIG", wanted)
            self._producer = kafka_io.make_producer(
                self.settings, **{k: v for k, v in wanted.items() if k in known})
        return self._producer

    def _fail(self, error: BaseException) -> None:
        self.errors_total += 1
        self.last_error = type(error).__name__
        self.last_error_ts = time.time()
        self._backoff = min(self.backoff_max_s, max(0.5, self._backoff * 2))
        self._retry_at = time.monotonic() + self._backoff
        self.close(timeout=0)
        refused = kafka_access.refusal(self.settings, error, f"write {self.topic}")
        self.refused = str(refused) if refused else None
        if refused:
            self.last_error = type(refused).__name__
            log.error("kafka refused this agent: %s; samples stay in the spool, retrying in "
                      "%.1fs", refused, self._backoff)
            return
        log.warning("kafka send failed (%s: %s); samples stay in the spool, retrying in %.1fs",
                    type(error).__name__, str(error)[:200], self._backoff)

    def send(self, payloads: List[bytes]) -> int:
        if not payloads:
            return 0
        self.requests_total += 1
        try:
            producer = self._ensure_producer()
            futures = [producer.send(self.topic, key=self.key, value=p) for p in payloads]
            producer.flush(timeout=self.send_timeout_s)
        except Exception as e:  # noqa: BLE001 - any client error means "not delivered"
            self._fail(e)
            return self._acked_prefix(locals().get("futures", []))
        acked = self._acked_prefix(futures)
        if acked < len(futures):
            err = next((f.exception for f in futures if f.is_done and f.failed()), None)
            self._fail(err or TimeoutError("not acknowledged in time"))
        else:
            self._backoff = 0.0
            self.refused = None
        return acked

    def _acked_prefix(self, futures) -> int:
        n = 0
        for f in futures:
            if not (f.is_done and f.succeeded()):
                break
            n += 1
        self.sent_total += n
        return n

    def close(self, timeout: float = 5.0) -> None:
        producer, self._producer = self._producer, None
        if producer is None:
            return
        try:
            producer.close(timeout=timeout)
            return
        except Exception:  # noqa: BLE001 - closing a broken producer must not raise
            pass
        # close() flushes first and gives up with KafkaTimeoutError while batches are
        # pending, leaving its network thread running; stop that thread ourselves so a
        # long outage does not leak one thread per failed attempt.
        sender = getattr(producer, "_sender", None)
        if sender is not None:
            sender.force_close()
            sender.join(5)
        try:
            producer.close(timeout=0)
        except Exception:  # noqa: BLE001
            pass
