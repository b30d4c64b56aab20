"""The agent's configuration: one TOML file, then environment overrides, then checks.

Every key lives under ``[agent]``; sub-tables ``[agent.kafka]``, ``[agent.spool]``,
``[agent.metrics]``, ``[agent.probe]``. ``DEFAULT_TOML`` below is the embedded default
(``foliowatch agent --print-default-config``) and documents every key.

Environment overrides: each key has one variable, ``FOLIOWATCH_`` + the dotted key in
upper case with dots as underscores, e.g. ``agent.kafka.bootstrap`` ->
``FOLIOWATCH_AGENT_KAFKA_BOOTSTRAP``. Lists are comma-separated, booleans
``true/false/1/0/yes/no``.

``load()`` returns an ``AgentConfig`` and the list of problems; each problem names the
key (and the variable when the value came from the environment) and what to do, e.g.
``config agent.kafka.bootstrap: expected host:port, got 'kafka'``.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple

from foliowatch import errors, kafka_io, schema
from foliowatch.agent.collectors import tracepoints as _tracepoints

if sys.version_info >= (3, 11):
    import tomllib
else:  # the fleet's system Pythons (3.9, 3.10)
    import tomli as tomllib

DEFAULT_TOML = """\
# foliowatch agent configuration. Every key is optional; these are the defaults.
[agent]
host_id = ""                 # "" = /etc/machine-id
fleet = "default"            # label: which fleet this host belongs to
role = "default"             # label: what the host does (postgres, web, ...)
instance_type = ""           # "" = DMI product name (the instance type on most clouds)
interval_s = 10.0            # sampling interval, seconds (1 .. 3600)
state_dir = "/var/lib/foliowatch-agent"   # seq state and the spool live here
mounts = ["/"]               # paths whose filesystems are watched (write bytes, XFS stats)
log_level = "info"           # debug, info, warning, error

[agent.kafka]
enabled = true               # false: spool only (e.g. while a topic is provisioned)
bootstrap = ["127.0.0.1:9092"]
topic = "foliowatch.samples.v1"
security_protocol = "PLAINTEXT"   # PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL
sasl_mechanism = ""          # SCRAM-SHA-512 (or SCRAM-SHA-256, PLAIN) with SASL_*
sasl_username = ""
sasl_password = ""           # or sasl_password_file, or FOLIOWATCH_AGENT_KAFKA_SASL_PASSWORD
sasl_password_file = ""      # a file whose first line is the password (mode 0400/0600)
ssl_cafile = ""              # CA certificate(s) that signed the brokers' certificates
                             # ("" = this host's CA bundle)
ssl_certfile = ""            # a client certificate (PEM), only for brokers that ask one
ssl_keyfile = ""
compression = "zstd"         # zstd (zstandard, one of the agent's dependencies), gzip
                             # (always available), lz4 / snappy (their Python package:
                             # lz4, python-snappy), or none
send_timeout_s = 10.0        # a batch not acknowledged by then stays in the spool
retry_backoff_max_s = 30.0   # back-off between attempts grows up to this
latency_budget_s = 120.0     # a sample may wait this long in the spool so that one Kafka
                             # request carries several intervals' samples (each request
                             # costs ~3-4 ms of CPU whatever it carries); 0 sends every
                             # sample at once; at most 240 (the pipeline's lateness is 300 s:
                             # later records are refused as late). It delays no detection:
                             # the pipeline's windows close 300 s after their end anyway

[agent.spool]
max_bytes = 67108864         # 64 MiB on disk; when full the oldest samples are dropped

[agent.metrics]
enabled = true
listen = "127.0.0.1:9464"    # /metrics; bind beyond loopback only on purpose

[agent.probe]
enabled = false              # the active write probe (writes real data!)
directory = ""               # on the watched filesystem, writable by `user`
size_bytes = 67108864        # bytes per probe (64 MiB), at most 4 GiB
chunk_bytes = 1048576        # bytes per write(2) call (1 MiB asks for large folios)
max_seconds = 30.0           # stop writing after this long
every_s = 3600.0             # at most one probe per this many seconds
new_kernel_every_s = 600.0   # at most one probe per this many seconds during a host's first
                             # new_kernel_hours on a kernel release it had not run before
                             # (a rollback too): the canary wave is when the detector needs
                             # the probe most; >= agent.interval_s (the shorter of
                             # this and every_s applies)
new_kernel_hours = 8.0       # 0 turns the denser probing off; at most 168 (a week)
min_free_bytes = 1073741824  # never leave less free than this...
min_free_ratio = 0.1         # ...or than this share of the filesystem
user = "nobody"              # when the agent is root, the probe runs as this user

[agent.tracepoints]
enabled = false              # count page-cache folio orders, direct compaction and direct
                             # reclaim from kernel tracepoints (perf counting mode); needs
                             # CAP_PERFMON or kernel.perf_event_paranoid <= 0, and tracefs
order_buckets = ["0", "1-3", "4-7", "8+"]   # allocation-order ranges: from 0, no gaps,
                             # the last open ("N+"); one counter per range and CPU
pagecache_devices = "all"    # "all" or "watched": page-cache folios of agent.mounts only
tracefs = ""                 # "" = /sys/kernel/tracing, then /sys/kernel/debug/tracing
"""


@dataclass
class ProbeConfig:
    enabled: bool = False
    directory: str = ""
    size_bytes: int = 64 << 20
    chunk_bytes: int = 1 << 20
    max_seconds: float = 30.0
    every_s: float = 3600.0
    new_kernel_every_s: float = 600.0
    new_kernel_hours: float = 8.0
    min_free_bytes: int = 1 << 30
    min_free_ratio: float = 0.1
    user: str = "nobody"


@dataclass
class TracepointsConfig:
    enabled: bool = False
    order_buckets: List[str] = field(default_factory=lambda: list(_tracepoints.DEFAULT_BUCKETS))
    pagecache_devices: str = "all"
    tracefs: str = ""


@dataclass
class AgentConfig:
    host_id: str = ""
    fleet: str = "default"
    role: str = "default"
    instance_type: str = ""
    interval_s: float = 10.0
    state_dir: str = "/var/lib/foliowatch-agent"
    mounts: List[str] = field(default_factory=lambda: ["/"])
    log_level: str = "info"
    kafka_enabled: bool = True
    kafka: kafka_io.KafkaSettings = field(default_factory=lambda: kafka_io.KafkaSettings(
        compression="zstd", client_id="foliowatch-agent"))
    topic: str = kafka_io.TOPIC_SAMPLES
    send_timeout_s: float = 10.0
    retry_backoff_max_s: float = 30.0
    latency_budget_s: float = 120.0
    spool_max_bytes: int = 64 << 20
    metrics_enabled: bool = True
    metrics_listen: str = "127.0.0.1:9464"
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    tracepoints: TracepointsConfig = field(default_factory=TracepointsConfig)

    def metrics_address(self) -> Tuple[str, int]:
        host, _, port = self.metrics_listen.rpartition(":")
        return host.strip("[]"), int(port)


class ConfigError(errors.ConfigError):
    """Every problem of the agent's configuration, one line each."""

    def __init__(self, problems: List[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


def _flatten(d: Mapping[str, Any], prefix: str = "") -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict):
            out.update(_flatten(v, key))
        else:
            out[key] = v
    return out


DEFAULTS: Dict[str, Any] = _flatten(tomllib.loads(DEFAULT_TOML))
KEYS = tuple(DEFAULTS)
_SUBTABLES = {k.rsplit(".", 1)[0] for k in KEYS}


def env_name(key: str) -> str:
    return "FOLIOWATCH_" + key.upper().replace(".", "_")


def _type_name(v: Any) -> str:
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string",
            list: "a list of strings"}[type(v)]


def _coerce(key: str, raw: Any, from_env: bool) -> Any:
    """``raw`` as the type of the key's default; raises ValueError with the problem."""
    default = DEFAULTS[key]
    if isinstance(default, bool):
        if isinstance(raw, bool):
            return raw
        if from_env and str(raw).strip().lower() in ("1", "true", "yes", "on", "0", "false",
                                                     "no", "off"):
            return str(raw).strip().lower() in ("1", "true", "yes", "on")
    elif isinstance(default, int):
        if isinstance(raw, int) and not isinstance(raw, bool):
            return raw
        if from_env:
            try:
                return int(str(raw).strip().replace("_", ""))
            except ValueError:
                pass
    elif isinstance(default, float):
        if isinstance(raw, (int, float)) and not isinstance(raw, bool):
            return float(raw)
        if from_env:
            try:
                return float(str(raw).strip())
            except ValueError:
                pass
    elif isinstance(default, list):
        if isinstance(raw, list) and all(isinstance(x, str) for x in raw):
            return list(raw)
        if isinstance(raw, str):  # "a:1,b:2" accepted in TOML and env alike
            return [s.strip() for s in raw.split(",") if s.strip()]
    elif isinstance(raw, str):
        return raw
    raise ValueError(f"expected {_type_name(default)}, got {raw!r}")


def _suggest(key: str) -> str:
    import difflib
    close = difflib.get_close_matches(key, KEYS, n=1)
    return f"; did you mean {close[0]}?" if close else "; see --print-default-config"


def merged_values(file_data: Optional[Mapping[str, Any]], environ: Mapping[str, str]
                  ) -> Tuple[Dict[str, Any], List[str]]:
    values = dict(DEFAULTS)
    problems: List[str] = []
    flat = _flatten(file_data or {})
    for key, raw in flat.items():
        if key not in DEFAULTS:
            if key in _SUBTABLES:
                problems.append(f"config {key}: expected a table")
            else:
                problems.append(f"config {key}: unknown key{_suggest(key)}")
            continue
        try:
            values[key] = _coerce(key, raw, from_env=False)
        except ValueError as e:
            problems.append(f"config {key}: {e}")
    for key in KEYS:
        name = env_name(key)
        if name in environ:
            try:
                values[key] = _coerce(key, environ[name], from_env=True)
            except ValueError as e:
                problems.append(f"config {key} (from ${name}): {e}")
    return values, problems


MAX_LATENCY_BUDGET_S = 240.0
MAX_NEW_KERNEL_HOURS = 168.0   # a week: longer is no longer a rollout's canary wave
_LISTEN = re.compile(r"^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):([0-9]{1,5})$")
_LEVELS = ("debug", "info", "warning", "error")


def _build(v: Dict[str, Any]) -> Tuple[AgentConfig, List[str]]:
    p: List[str] = []
    opt = lambda s: s or None  # noqa: E731  "" means unset for optional strings
    kafka = kafka_io.KafkaSettings(
        bootstrap=v["agent.kafka.bootstrap"],
        security_protocol=v["agent.kafka.security_protocol"],
        sasl_mechanism=opt(v["agent.kafka.sasl_mechanism"]),
        sasl_username=opt(v["agent.kafka.sasl_username"]),
        sasl_password=opt(v["agent.kafka.sasl_password"]),
        sasl_password_file=opt(v["agent.kafka.sasl_password_file"]),
        ssl_cafile=opt(v["agent.kafka.ssl_cafile"]),
        ssl_certfile=opt(v["agent.kafka.ssl_certfile"]),
        ssl_keyfile=opt(v["agent.kafka.ssl_keyfile"]),
        compression=v["agent.kafka.compression"],
        client_id="foliowatch-agent")
    probe = ProbeConfig(**{k.split(".")[-1]: v[k] for k in KEYS if k.startswith("agent.probe.")})
    tracepoints = TracepointsConfig(**{k.split(".")[-1]: v[k] for k in KEYS
                                       if k.startswith("agent.tracepoints.")})
    cfg = AgentConfig(
        host_id=v["agent.host_id"], fleet=v["agent.fleet"], role=v["agent.role"],
        instance_type=v["agent.instance_type"], interval_s=v["agent.interval_s"],
        state_dir=v["agent.state_dir"], mounts=v["agent.mounts"], log_level=v["agent.log_level"],
        kafka_enabled=v["agent.kafka.enabled"], kafka=kafka, topic=v["agent.kafka.topic"],
        send_timeout_s=v["agent.kafka.send_timeout_s"],
        retry_backoff_max_s=v["agent.kafka.retry_backoff_max_s"],
        latency_budget_s=v["agent.kafka.latency_budget_s"],
        spool_max_bytes=v["agent.spool.max_bytes"], metrics_enabled=v["agent.metrics.enabled"],
        metrics_listen=v["agent.metrics.listen"], probe=probe, tracepoints=tracepoints)

    if cfg.kafka_enabled:
        p += [f"config {e}" for e in kafka.check(prefix="agent.kafka")]
        p += _codec_problems(kafka.compression)
    if not 1.0 <= cfg.interval_s <= schema.MAX_INTERVAL_S:
        p.append(f"config agent.interval_s: must be in [1, {schema.MAX_INTERVAL_S:g}] "
                 f"seconds, got {cfg.interval_s:g}")
    if cfg.host_id and not schema.ID_RE.match(cfg.host_id):
        p.append(f"config agent.host_id: {cfg.host_id!r} has characters outside "
                 f"{schema.ID_RE.pattern}; use letters, digits and ._:@-")
    for key, value in (("fleet", cfg.fleet), ("role", cfg.role),
                       ("instance_type", cfg.instance_type)):
        if value and (not schema.LABEL_RE.match(value) or len(value) > schema.MAX_LABEL_LEN):
            p.append(f"config agent.{key}: {value!r} is not a valid label (letters, digits "
                     f"and ._+~-, at most {schema.MAX_LABEL_LEN} characters)")
    if not cfg.state_dir.startswith("/"):
        p.append(f"config agent.state_dir: expected an absolute path, got {cfg.state_dir!r}")
    if len(cfg.mounts) > schema.MAX_MOUNTS:
        p.append(f"config agent.mounts: {len(cfg.mounts)} paths, at most {schema.MAX_MOUNTS}")
    for m in cfg.mounts:
        if not m.startswith("/"):
            p.append(f"config agent.mounts: expected absolute paths, got {m!r}")
    if cfg.log_level not in _LEVELS:
        p.append(f"config agent.log_level: {cfg.log_level!r} is not one of {', '.join(_LEVELS)}")
    if not cfg.topic or not re.match(r"^[A-Za-z0-9._-]{1,249}$", cfg.topic):
        p.append(f"config agent.kafka.topic: {cfg.topic!r} is not a valid Kafka topic name")
    if not 0.5 <= cfg.send_timeout_s <= 300:
        p.append(f"config agent.kafka.send_timeout_s: must be in [0.5, 300], got "
                 f"{cfg.send_timeout_s:g}")
    if not 0.1 <= cfg.retry_backoff_max_s <= 3600:
        p.append(f"config agent.kafka.retry_backoff_max_s: must be in [0.1, 3600], got "
                 f"{cfg.retry_backoff_max_s:g}")
    if not 0.0 <= cfg.latency_budget_s <= MAX_LATENCY_BUDGET_S:
        p.append(f"config agent.kafka.latency_budget_s: must be in [0, "
                 f"{MAX_LATENCY_BUDGET_S:g}] seconds (a sample delayed longer may reach the "
                 f"pipeline after its lateness, 300 s, and be refused), got "
                 f"{cfg.latency_budget_s:g}")
    if cfg.spool_max_bytes < (1 << 20):
        p.append(f"config agent.spool.max_bytes: at least 1048576 (1 MiB) so the spool holds "
                 f"more than a few samples, got {cfg.spool_max_bytes}")
    m = _LISTEN.match(cfg.metrics_listen)
    if not m or not 0 < int(m.group(2)) < 65536:
        p.append(f"config agent.metrics.listen: expected host:port, got {cfg.metrics_listen!r}")
    pr = cfg.probe
    if pr.enabled:
        if not pr.directory.startswith("/"):
            p.append("config agent.probe.directory: required when agent.probe.enabled = true; "
                     "give an absolute path on a watched filesystem")
        elif not os.path.isdir(pr.directory):
            p.append(f"config agent.probe.directory: {pr.directory!r} does not exist; create it "
                     f"(writable by {pr.user or 'the agent'})")
    if not 1 <= pr.chunk_bytes <= (64 << 20):
        p.append(f"config agent.probe.chunk_bytes: must be in [1, 67108864], got {pr.chunk_bytes}")
    if not pr.chunk_bytes <= pr.size_bytes <= (4 << 30):
        p.append(f"config agent.probe.size_bytes: must be >= chunk_bytes and <= 4 GiB, got "
                 f"{pr.size_bytes}")
    if not 0.1 <= pr.max_seconds <= 600:
        p.append(f"config agent.probe.max_seconds: must be in [0.1, 600], got {pr.max_seconds:g}")
    if pr.every_s < cfg.interval_s:
        p.append(f"config agent.probe.every_s: must be >= agent.interval_s ({cfg.interval_s:g}),"
                 f" got {pr.every_s:g}")
    if pr.new_kernel_every_s < cfg.interval_s:
        p.append(f"config agent.probe.new_kernel_every_s: must be >= agent.interval_s "
                 f"({cfg.interval_s:g}), got {pr.new_kernel_every_s:g}; it is the probe "
                 f"period of a host's first hours on a new kernel")
    if not 0.0 <= pr.new_kernel_hours <= MAX_NEW_KERNEL_HOURS:
        p.append(f"config agent.probe.new_kernel_hours: must be in [0, "
                 f"{MAX_NEW_KERNEL_HOURS:g}] (0 turns the denser probing on a new kernel "
                 f"off), got {pr.new_kernel_hours:g}")
    if not 0.0 <= pr.min_free_ratio < 1.0:
        p.append(f"config agent.probe.min_free_ratio: must be in [0, 1), got {pr.min_free_ratio}")
    if pr.min_free_bytes < 0:
        p.append(f"config agent.probe.min_free_bytes: must be >= 0, got {pr.min_free_bytes}")
    p += _tracepoint_problems(tracepoints)
    return cfg, p


def _tracepoint_problems(tp: TracepointsConfig) -> List[str]:
    p: List[str] = []
    try:
        _tracepoints.parse_buckets(tp.order_buckets)
    except ValueError as e:
        p.append(f"config agent.tracepoints.order_buckets: {e}")
    if tp.pagecache_devices not in ("all", "watched"):
        p.append(f"config agent.tracepoints.pagecache_devices: expected \"all\" or "
                 f"\"watched\", got {tp.pagecache_devices!r}")
    if tp.tracefs and not tp.tracefs.startswith("/"):
        p.append(f"config agent.tracepoints.tracefs: expected an absolute path (or \"\" to "
                 f"look in the usual places), got {tp.tracefs!r}")
    return p


_CODEC_PACKAGES = {"zstd": ("has_zstd", "zstandard"), "lz4": ("has_lz4", "lz4"),
                   "snappy": ("has_snappy", "python-snappy")}


def _codec_problems(compression: str) -> List[str]:
    """The agent's hosts have only the agent's dependencies: a codec whose package is
    missing would make every send fail, so say so before the agent starts."""
    if compression not in _CODEC_PACKAGES:
        return []
    codec = kafka_io.kafka_python_module("codec")
    check, package = _CODEC_PACKAGES[compression]
    if getattr(codec, check)():
        return []
    return [f"config agent.kafka.compression: {compression!r} needs the Python package "
            f"{package}, which is not installed here; install it or use \"gzip\""]


def load(path: Optional[str] = None, environ: Optional[Mapping[str, str]] = None
         ) -> Tuple[AgentConfig, List[str]]:
    """Read ``path`` (or only defaults and environment), return the config and every
    problem found (empty when valid)."""
    environ = os.environ if environ is None else environ
    data: Optional[Dict[str, Any]] = None
    if path is not None:
        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except FileNotFoundError:
            return AgentConfig(), [f"config {path}: file not found; pass --config PATH or "
                                   "omit it to use the embedded default"]
        except tomllib.TOMLDecodeError as e:
            return AgentConfig(), [f"config {path}: not valid TOML ({e})"]
        extra = [k for k in data if k != "agent"]
        if extra:
            return AgentConfig(), [f"config {extra[0]}: unknown table; every key lives under "
                                   "[agent]"]
    values, problems = merged_values(data, environ)
    if problems:
        return AgentConfig(), problems
    return _build(values)

