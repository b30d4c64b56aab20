"""Kafka connection settings shared by every component (agent, simulator, pipeline,
detector): one definition of the keys (``KafkaSettings``: bootstrap, TLS, SASL), one
function per client library that maps them to that client's arguments
(``kafka_python_kwargs``, ``librdkafka_config``), and the one definition of the command line's Kafka
connection flags (``--bootstrap``, ``--kafka-config``) for the components that take them
on the command line (the agent reads its TOML file).

Secrets: the SASL password comes from the configuration file, a file of its own
(``sasl_password_file``, e.g. a systemd credential) or the environment, never from a
flag; it is left out of ``repr`` and of every message.

kafka-python is imported lazily so that ``foliowatch.schema`` users need not have it, and
a producer loads only kafka-python's producer side (``kafka_python_module``).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import sys
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional

from foliowatch.errors import ConfigError

TOPIC_SAMPLES = "foliowatch.samples.v1"
TOPIC_DLQ = "foliowatch.samples.dlq"
TOPIC_REGRESSIONS = "foliowatch.regressions.v1"

SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
COMPRESSION = ("none", "gzip", "snappy", "lz4", "zstd")
_HOSTPORT = re.compile(r"^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):([0-9]{1,5})$")


class SettingsError(ConfigError):
    """A configuration value is wrong; the message names the key and what to do."""


@dataclass
class KafkaSettings:
    bootstrap: List[str] = field(default_factory=lambda: ["127.0.0.1:9092"])
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: Optional[str] = None
    sasl_username: Optional[str] = None
    sasl_password: Optional[str] = field(default=None, repr=False)
    sasl_password_file: Optional[str] = None
    ssl_cafile: Optional[str] = None
    ssl_certfile: Optional[str] = None
    ssl_keyfile: Optional[str] = None
    compression: str = "zstd"
    client_id: str = "foliowatch"
    #: where each key's value came from, for messages (not a setting)
    key_names: Dict[str, str] = field(default_factory=dict, repr=False, compare=False)

    def name(self, key: str) -> str:
        """How a message names ``key``: the file key, flag or variable it came from."""
        return self.key_names.get(key, f"kafka.{key}")

    def password(self) -> Optional[str]:
        """The SASL password: ``sasl_password``, else the first line of
        ``sasl_password_file``."""
        if self.sasl_password:
            return self.sasl_password
        if self.sasl_password_file:
            try:
                with open(self.sasl_password_file, encoding="utf-8") as f:
                    return f.readline().rstrip("\r\n") or None
            except OSError as e:
                raise SettingsError(f"{self.name('sasl_password_file')}: cannot read "
                                    f"{self.sasl_password_file!r} ({e.strerror}); make it "
                                    "readable by this service's user") from None
        return None

    def check(self, prefix: Optional[str] = None,
              names: Optional[Mapping[str, str]] = None) -> List[str]:
        """Every problem, each naming its key and what to do (empty when valid).
        ``prefix``: the table the keys sit in (``agent.kafka``); ``names``: how to name a
        key whose value came from elsewhere (a flag, a variable). Both are remembered
        for later messages (``name``)."""
        if prefix is not None:
            self.key_names = {k: f"{prefix}.{k}" for k in SETTING_KEYS}
        self.key_names.update(names or {})
        name = self.name

        errs = []
        if not self.bootstrap:
            errs.append(f"{name('bootstrap')}: empty; give at least one host:port")
        for b in self.bootstrap:
            m = _HOSTPORT.match(b)
            if not m or not 0 < int(m.group(2)) < 65536:
                errs.append(f"{name('bootstrap')}: expected host:port, got {b!r}")
        if self.security_protocol not in SECURITY_PROTOCOLS:
            errs.append(f"{name('security_protocol')}: {self.security_protocol!r} is not one of "
                        f"{', '.join(SECURITY_PROTOCOLS)}")
        if self.security_protocol.startswith("SASL"):
            if self.sasl_mechanism not in SASL_MECHANISMS:
                errs.append(f"{name('sasl_mechanism')}: {self.sasl_mechanism!r} is not one of "
                            f"{', '.join(SASL_MECHANISMS)} (required with {self.security_protocol})")
            if self.sasl_password and self.sasl_password_file:
                errs.append(f"{name('sasl_password')}, {name('sasl_password_file')}: give "
                            "one of them, not both")
            if not self.sasl_username or not (self.sasl_password or self.sasl_password_file):
                errs.append(f"{name('sasl_username')}, {name('sasl_password')} (or "
                            f"{name('sasl_password_file')}): both required with "
                            f"{self.security_protocol}")
        if self.compression not in COMPRESSION:
            errs.append(f"{name('compression')}: {self.compression!r} is not one of "
                        f"{', '.join(COMPRESSION)}")
        for key in ("ssl_cafile", "ssl_certfile", "ssl_keyfile", "sasl_password_file"):
            path = getattr(self, key)
            if path is not None:
                if not os.path.isfile(path):
                    errs.append(f"{name(key)}: file {path!r} does not exist")
        if self.ssl_keyfile and not self.ssl_certfile:
            errs.append(f"{name('ssl_keyfile')}: given without {name('ssl_certfile')}; give "
                        "the client certificate too, or neither")
        return errs

    @classmethod
    def from_dict(cls, d: Dict[str, Any], prefix: str = "kafka") -> "KafkaSettings":
        known = set(SETTING_KEYS)
        unknown = [k for k in d if k not in known]
        if unknown:
            raise SettingsError(f"{prefix}.{unknown[0]}: unknown key; known keys are "
                                f"{', '.join(sorted(known))}")
        d = dict(d)
        if isinstance(d.get("bootstrap"), str):
            d["bootstrap"] = [s.strip() for s in d["bootstrap"].split(",") if s.strip()]
        return cls(**d)


#: the keys a configuration may set (``key_names`` is bookkeeping, not a setting)
SETTING_KEYS = tuple(k for k in KafkaSettings.__dataclass_fields__ if k != "key_names")


def kafka_python_kwargs(settings: KafkaSettings) -> Dict[str, Any]:
    """The connection (bootstrap, TLS, SASL) as kafka-python's client arguments: the one
    mapping from ``KafkaSettings`` to kafka-python. Another client library gets its own
    function beside this one, mapping the same fields. Raises ``SettingsError`` naming
    each invalid key."""
    errs = settings.check()
    if errs:
        raise SettingsError("; ".join(errs))
    kw: Dict[str, Any] = {"bootstrap_servers": list(settings.bootstrap),
                          "security_protocol": settings.security_protocol,
                          "client_id": settings.client_id}
    if settings.security_protocol.startswith("SASL"):
        kw.update(sasl_mechanism=settings.sasl_mechanism,
                  sasl_plain_username=settings.sasl_username,
                  sasl_plain_password=settings.password())
    if settings.security_protocol.endswith("SSL"):
        kw.update(ssl_cafile=settings.ssl_cafile, ssl_certfile=settings.ssl_certfile,
                  ssl_keyfile=settings.ssl_keyfile, ssl_check_hostname=True)
    return kw


def producer_kwargs(settings: KafkaSettings, **overrides: Any) -> Dict[str, Any]:
    """Durable defaults: acks=all, idempotence, compression, bounded retries."""
    kw = kafka_python_kwargs(settings)
    kw.update(acks="all", enable_idempotence=True,
              compression_type=None if settings.compression == "none" else settings.compression,
              retries=5, retry_backoff_ms=200, linger_ms=20, request_timeout_ms=15000,
              max_in_flight_requests_per_connection=5)
    kw.update(overrides)
    return kw


#: the Kafka client libraries the central services can use, by the name users pass
#: (``pipeline --kafka-client``): librdkafka through confluent-kafka (C; the faster, and
#: the default) and kafka-python (pure Python; the agent's only client)
KAFKA_CLIENTS = ("confluent-kafka", "kafka-python")
DEFAULT_KAFKA_CLIENT = "confluent-kafka"


def kafka_python_module(name: str):
    """kafka-python's submodule ``kafka.<name>`` (``"producer.kafka"``, ``"codec"``)
    without what the package's ``__init__`` imports eagerly: its admin client, consumer
    and group coordinator, and every admin and consumer request (~3.5 MiB an agent never
    uses, on every host; benchmarks/agent_vs_node_exporter.md).

    The ``kafka`` package is registered without running its ``__init__``; the first read
    of one of its other names (``from kafka import KafkaConsumer``) runs that ``__init__``
    then, so any later user of the whole package gets it unchanged. The layout this
    relies on is kafka-python 3.0.12's, pinned in pyproject.toml's agent extra and checked
    by tests/test_agent_kafka.py in the agent's own process; another layout loads more,
    never less."""
    package = _package_without_init("kafka")
    if package is not None and "__version__" not in package.__dict__:
        # what the skipped __init__ does that a producer notices
        logging.getLogger("kafka").addHandler(logging.NullHandler())
        package.__version__ = importlib.import_module("kafka.version").__version__
        # The table of requests that tells old brokers apart names one request of each
        # of these packages, whose __init__ builds every admin or consumer request from
        # its JSON schema (~2 MiB): only the submodule that holds the named one loads.
        for protocol, where in _PROTOCOL_NAMES_USED.items():
            _package_without_init(protocol, where)
        _crc32c_without_init()
    return importlib.import_module(f"kafka.{name}")


#: kafka-python protocol packages -> {name the producer side reads: its submodule}
_PROTOCOL_NAMES_USED = {
    "kafka.protocol.admin": {"ListGroupsRequest": "groups"},
    "kafka.protocol.consumer": {"OffsetFetchRequest": "group"},
}


def _crc32c_without_init() -> None:
    """The ``crc32c`` package's C function, which kafka-python uses for every record
    batch when it is installed (pure Python takes ~2.4 ms per 4 KiB batch, C ~1 us),
    without what the package's ``__init__`` imports for its version string and command
    line (importlib.metadata, email, argparse: ~2 MiB)."""
    package = _package_without_init("crc32c")
    if package is None or "crc32c" in package.__dict__:
        return
    try:
        package.crc32c = importlib.import_module("crc32c._crc32c").crc32c
    except (ImportError, AttributeError):   # another layout: the whole package, on demand
        pass


def _package_without_init(name: str, where: Optional[Dict[str, str]] = None):
    """The package ``name`` registered without running its ``__init__`` (so that its
    submodules import alone), or the package already imported, or None when it is not
    installed. ``where``: names the package's ``__init__`` would re-export -> the
    submodule to read each from. Reading any other name of the package later (``from
    kafka import KafkaConsumer``) runs that ``__init__`` then, so a later user of the
    whole package gets it unchanged."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.find_spec(name)
    if spec is None or spec.submodule_search_locations is None or spec.loader is None:
        return None
    package = importlib.util.module_from_spec(spec)
    package.__getattr__ = _WholePackageOnDemand(package, spec, where or {})   # PEP 562
    sys.modules[name] = package
    return package


class _WholePackageOnDemand:
    """The ``__getattr__`` of a package registered without its ``__init__``: a submodule
    name imports that submodule alone, a name of ``where`` is read from its submodule;
    any other name runs the package's ``__init__`` once and reads the name from it."""

    def __init__(self, package, spec, where: Dict[str, str]):
        self.package, self.spec, self.where = package, spec, where

    def __call__(self, attr: str):
        name = self.package.__name__
        if attr in self.where:
            try:
                return getattr(importlib.import_module(f"{name}.{self.where[attr]}"), attr)
            except (ImportError, AttributeError):   # another layout: the whole package
                pass
        try:
            if importlib.util.find_spec(f"{name}.{attr}") is not None:
                return importlib.import_module(f"{name}.{attr}")
        except ImportError:
            pass
        namespace = self.package.__dict__
        if namespace.get("__getattr__") is self:
            del namespace["__getattr__"]
            self.spec.loader.exec_module(self.package)
        try:
            return namespace[attr]
        except KeyError:
            raise AttributeError(f"module {name!r} has no attribute {attr!r}") from None


def producer_class():
    """kafka-python's ``KafkaProducer``, loading only its producer side."""
    return kafka_python_module("producer.kafka").KafkaProducer


def make_producer(settings: KafkaSettings, **overrides: Any):
    return producer_class()(**producer_kwargs(settings, **overrides))


def make_consumer(settings: KafkaSettings, *topics: str, group_id: Optional[str] = None,
                  **overrides: Any):
    """A consumer with manual commits: callers commit only after their output is durable."""
    from kafka import KafkaConsumer
    kw = kafka_python_kwargs(settings)
    kw.update(group_id=group_id, enable_auto_commit=False, auto_offset_reset="earliest",
              isolation_level="read_committed")
    kw.update(overrides)
    return KafkaConsumer(*topics, **kw)


def librdkafka_config(settings: KafkaSettings, **overrides: Any) -> Dict[str, Any]:
    """The same connection for confluent-kafka (librdkafka) clients, TLS and SASL included:
    the one place where ``KafkaSettings`` maps to librdkafka's property names (the central
    pipeline consumes with it; the agent stays on kafka-python). ``overrides``: librdkafka
    properties, e.g. ``{"group.id": ...}``."""
    errs = settings.check()
    if errs:
        raise SettingsError("; ".join(errs))
    conf: Dict[str, Any] = {"bootstrap.servers": ",".join(settings.bootstrap),
                            "security.protocol": settings.security_protocol.lower(),
                            "client.id": settings.client_id}
    if settings.security_protocol.startswith("SASL"):
        conf.update({"sasl.mechanism": settings.sasl_mechanism,
                     "sasl.username": settings.sasl_username,
                     "sasl.password": settings.password()})
    if settings.security_protocol.endswith("SSL"):
        # as kafka-python's ssl_check_hostname=True: the broker's name must match its cert
        conf["ssl.endpoint.identification.algorithm"] = "https"
        for key, prop in (("ssl_cafile", "ssl.ca.location"),
                          ("ssl_certfile", "ssl.certificate.location"),
                          ("ssl_keyfile", "ssl.key.location")):
            if getattr(settings, key) is not None:
                conf[prop] = getattr(settings, key)
    conf.update(overrides)
    return conf


def make_librdkafka_producer(settings: KafkaSettings, **overrides: Any):
    """A confluent-kafka producer with the durable defaults of ``producer_kwargs``
    (acks=all, idempotence, compression, bounded retries) for the central services that
    produce in bulk (the simulator): ``produce`` costs about a microsecond of Python per
    record where kafka-python's ``send`` costs tens. ``overrides``: librdkafka properties."""
    from confluent_kafka import Producer
    return Producer(librdkafka_config(settings, **{
        "acks": "all", "enable.idempotence": True,
        "compression.type": settings.compression, "retries": 5, "retry.backoff.ms": 200,
        "linger.ms": 20, "request.timeout.ms": 15000,
        "max.in.flight.requests.per.connection": 5, **overrides}))


# ---- the command line's Kafka connection (pipeline, simulate, detect) -------------------
DEFAULT_BOOTSTRAP = "127.0.0.1:9092"
ENV_PREFIX = "FOLIOWATCH_KAFKA_"     # FOLIOWATCH_KAFKA_<KEY>: one key of the [kafka] table


def add_kafka_arguments(parser, purpose: str, old_spelling: Optional[str] = None) -> None:
    """``--bootstrap`` and ``--kafka-config``: the same Kafka connection, TLS and SASL
    included, in every subcommand that talks to Kafka. Secrets never come from a flag
    (a flag's value shows in ``ps``): the [kafka] table of ``--kafka-config`` or the
    environment carries them. ``old_spelling``: the flag's former name, kept hidden for
    one release."""
    from foliowatch.flags import deprecated_alias
    keys = ", ".join(SETTING_KEYS)
    g = parser.add_argument_group("Kafka connection")
    g.add_argument("--bootstrap", metavar="HOST:PORT[,HOST:PORT]", default=None,
                   help=f"{purpose}: Kafka bootstrap servers; over the bootstrap of "
                        f"--kafka-config and ${ENV_PREFIX}BOOTSTRAP (default {DEFAULT_BOOTSTRAP})")
    g.add_argument("--kafka-config", metavar="TOML", default=None,
                   help=f"TOML file with a [kafka] table ({keys}) for TLS and SASL; "
                        f"{ENV_PREFIX}<KEY> overrides a key, e.g. {ENV_PREFIX}SASL_PASSWORD "
                        "so that the password need not sit in the file")
    if old_spelling:
        deprecated_alias(g, old_spelling, "--bootstrap", "bootstrap")


def kafka_requested(args) -> bool:
    """Whether the command line names a Kafka connection (for commands where Kafka is
    optional: ``detect`` publishes, ``simulate`` produces only when asked)."""
    return bool(getattr(args, "bootstrap", None) or getattr(args, "kafka_config", None))


def settings_from_args(args, client_id: str,
                       environ: Optional[Mapping[str, str]] = None) -> KafkaSettings:
    """The connection the flags of ``add_kafka_arguments`` describe: the [kafka] table of
    ``--kafka-config``, then ``FOLIOWATCH_KAFKA_<KEY>`` variables, then ``--bootstrap``.
    Raises ``SettingsError`` naming the flag, file key or variable that is wrong."""
    environ = os.environ if environ is None else environ
    path = getattr(args, "kafka_config", None)
    values: Dict[str, Any] = {}
    names: Dict[str, str] = {}
    if path:
        values = _kafka_table(path)
        names = {k: f"--kafka-config {path} [kafka] {k}" for k in SETTING_KEYS}
    for key in SETTING_KEYS:
        var = ENV_PREFIX + key.upper()
        if environ.get(var):
            values[key], names[key] = environ[var], f"${var}"
    if getattr(args, "bootstrap", None):
        values["bootstrap"], names["bootstrap"] = args.bootstrap, "--bootstrap"
    values.setdefault("bootstrap", DEFAULT_BOOTSTRAP)
    values.setdefault("client_id", client_id)
    unknown = [k for k in values if k not in SETTING_KEYS]
    if unknown:
        raise SettingsError(f"--kafka-config {path} [kafka] {unknown[0]}: unknown key; known "
                            f"keys are {', '.join(SETTING_KEYS)}")
    settings = KafkaSettings.from_dict(values)
    errs = settings.check(names=names)
    if errs:
        raise SettingsError("; ".join(errs))
    return settings


def _kafka_table(path: str) -> Dict[str, Any]:
    try:
        import tomllib
    except ImportError:           # Python < 3.11
        import tomli as tomllib   # type: ignore[no-redef]
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise SettingsError(f"--kafka-config {path}: cannot read ({e.strerror}); give the "
                            "path of a TOML file with a [kafka] table") from None
    except ValueError as e:
        raise SettingsError(f"--kafka-config {path}: not valid TOML ({e})") from None
    table = data.get("kafka")
    if not isinstance(table, dict):
        raise SettingsError(f"--kafka-config {path}: no [kafka] table; put the connection "
                            "settings under [kafka]")
    return dict(table)
