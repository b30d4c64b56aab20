"""Kafka connection settings shared by every component (agent, simulator, pipeline,
detector): one place that turns a ``KafkaSettings`` (from TOML/env) into kafka-python
producer and consumer arguments, TLS and SASL included.

kafka-python is imported lazily so that ``foliowatch.schema`` users need not have it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

TOPIC_SAMPLES = "foliowatch.samples.v1"
TOPIC_DLQ = "foliowatch.samples.dlq"
TOPIC_REGRESSIONS = "foliowatch.regressions.v1"

SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
COMPRESSION = ("none", "gzip", "snappy", "lz4", "zstd")
_HOSTPORT = re.compile(r"^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):([0-9]{1,5})$")


class SettingsError(ValueError):
    """A configuration value is wrong; the message names the key and what to do."""


@dataclass
class KafkaSettings:
    bootstrap: List[str] = field(default_factory=lambda: ["127.0.0.1:9092"])
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: Optional[str] = None
    sasl_username: Optional[str] = None
    sasl_password: Optional[str] = None
    ssl_cafile: Optional[str] = None
    ssl_certfile: Optional[str] = None
    ssl_keyfile: Optional[str] = None
    compression: str = "zstd"
    client_id: str = "foliowatch"

    def check(self, prefix: str = "kafka") -> List[str]:
        """Every problem, each naming its key and what to do (empty when valid)."""
        errs = []
        if not self.bootstrap:
            errs.append(f"{prefix}.bootstrap: empty; give at least one host:port")
        for b in self.bootstrap:
            m = _HOSTPORT.match(b)
            if not m or not 0 < int(m.group(2)) < 65536:
                errs.append(f"{prefix}.bootstrap: expected host:port, got {b!r}")
        if self.security_protocol not in SECURITY_PROTOCOLS:
            errs.append(f"{prefix}.security_protocol: {self.security_protocol!r} is not one of "
                        f"{', '.join(SECURITY_PROTOCOLS)}")
        if self.security_protocol.startswith("SASL"):
            if self.sasl_mechanism not in SASL_MECHANISMS:
                errs.append(f"{prefix}.sasl_mechanism: {self.sasl_mechanism!r} is not one of "
                            f"{', '.join(SASL_MECHANISMS)} (required with {self.security_protocol})")
            if not self.sasl_username or not self.sasl_password:
                errs.append(f"{prefix}.sasl_username/sasl_password: both required with "
                            f"{self.security_protocol}")
        if self.compression not in COMPRESSION:
            errs.append(f"{prefix}.compression: {self.compression!r} is not one of "
                        f"{', '.join(COMPRESSION)}")
        for key in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
            path = getattr(self, key)
            if path is not None:
                import os
                if not os.path.isfile(path):
                    errs.append(f"{prefix}.{key}: file {path!r} does not exist")
        return errs

    def common(self) -> Dict[str, Any]:
        errs = self.check()
        if errs:
            raise SettingsError("; ".join(errs))
        kw: Dict[str, Any] = {"bootstrap_servers": list(self.bootstrap),
                              "security_protocol": self.security_protocol,
                              "client_id": self.client_id}
        if self.security_protocol.startswith("SASL"):
            kw.update(sasl_mechanism=self.sasl_mechanism,
                      sasl_plain_username=self.sasl_username,
                      sasl_plain_password=self.sasl_password)
        if self.security_protocol.endswith("SSL"):
            kw.update(ssl_cafile=self.ssl_cafile, ssl_certfile=self.ssl_certfile,
                      ssl_keyfile=self.ssl_keyfile, ssl_check_hostname=True)
        return kw

    @classmethod
    def from_dict(cls, d: Dict[str, Any], prefix: str = "kafka") -> "KafkaSettings":
        known = set(cls.__dataclass_fields__)
        unknown = [k for k in d if k not in known]
        if unknown:
            raise SettingsError(f"{prefix}.{unknown[0]}: unknown key; known keys are "
                                f"{', '.join(sorted(known))}")
        d = dict(d)
        if isinstance(d.get("bootstrap"), str):
            d["bootstrap"] = [s.strip() for s in d["bootstrap"].split(",") if s.strip()]
        return cls(**d)


def producer_kwargs(settings: KafkaSettings, **overrides: Any) -> Dict[str, Any]:
    """Durable defaults: acks=all, idempotence, compression, bounded retries."""
    kw = settings.common()
    kw.update(acks="all", enable_idempotence=True,
              compression_type=None if settings.compression == "none" else settings.compression,
              retries=5, retry_backoff_ms=200, linger_ms=20, request_timeout_ms=15000,
              max_in_flight_requests_per_connection=5)
    kw.update(overrides)
    return kw


def make_producer(settings: KafkaSettings, **overrides: Any):
    from kafka import KafkaProducer
    return KafkaProducer(**producer_kwargs(settings, **overrides))


def make_consumer(settings: KafkaSettings, *topics: str, group_id: Optional[str] = None,
                  **overrides: Any):
    """A consumer with manual commits: callers commit only after their output is durable."""
    from kafka import KafkaConsumer
    kw = settings.common()
    kw.update(group_id=group_id, enable_auto_commit=False, auto_offset_reset="earliest",
              isolation_level="read_committed")
    kw.update(overrides)
    return KafkaConsumer(*topics, **kw)
