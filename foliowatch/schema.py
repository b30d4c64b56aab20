"""Wire schema v1: one telemetry sample, one Kafka message per host per interval.

This module is the contract shared by the agent, the simulator and the pipeline. It is
pure Python (3.9+, no third-party imports) because it runs on every host. The pipeline
validates whole batches with polars against the same limits, imported from here.

A record is a JSON object (UTF-8, no BOM), at most ``MAX_RECORD_BYTES`` long:

=================  ========  ===========================================================
field              type      meaning
=================  ========  ===========================================================
``schema``         int       always ``1`` (``SCHEMA_VERSION``); other values are rejected
``host_id``        str       stable host identity (machine-id or configured); Kafka key
``boot_id``        str       ``/proc/sys/kernel/random/boot_id``; changes at every reboot
``seq``            int >= 0  per-host sequence number, survives agent restarts
``ts``             float     end of the interval, Unix seconds (UTC)
``interval_s``     float     length of the interval the deltas cover, seconds (0, 3600]
``labels``         object    see ``LABELS``: fleet, role, arch, kernel, page_size, cpus,
                             mem_bytes, instance_type (all required)
``counters``       object    name -> delta over the interval (int >= 0). Names are the
                             kernel's own (``/proc/vmstat``: ``compact_stall``,
                             ``allocstall_normal``, ...; PSI: ``psi_memory_some_us``,
                             ...). A counter the kernel lacks is absent, never 0.
``gauges``         object    name -> finite float at the end of the interval
                             (``mem_available_bytes``, ``uptime_s``,
                             ``frag_unusable_1m``, ``frag_unusable_order_N``, ...)
``mounts``         array     watched filesystems: objects with ``mount`` (path), ``fs``
                             (``xfs``, ``ext4``, ...), ``device`` and ``counters``
                             (``write_bytes``, ``write_ios``, and for XFS ``xfs_write_bytes``
                             ...), deltas over the interval
``settings``       object    optional; str -> str kernel settings (``thp_enabled``, ...)
``probe``          object    optional; the active write probe of this interval: ``bytes``,
                             ``seconds``, ``chunk_bytes``, ``mib_s``, ``compact_stall``,
                             ``allocstall``
``agent``          str       optional; agent version
=================  ========  ===========================================================

Identity is ``(host_id, boot_id, seq)``: a consumer that sees it twice drops the copy.

The derived *key metrics* that the pipeline aggregates and the detector tests are defined
once, in ``key_metrics``; the pipeline's vectorised version is tested against it.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Dict, Iterable, List, Mapping, Optional

from foliowatch.errors import InputError

SCHEMA_VERSION = 1
MAX_RECORD_BYTES = 64 * 1024

# Label and identity values become Prometheus label values and Parquet partition keys:
# their length and alphabet are bounded so a hostile or broken host cannot explode
# cardinality or smuggle paths.
MAX_ID_LEN = 128
MAX_LABEL_LEN = 64
MAX_NAME_LEN = 64
MAX_COUNTERS = 256
MAX_GAUGES = 256
MAX_MOUNTS = 16
MAX_SETTINGS = 32
MAX_INTERVAL_S = 3600.0
MAX_COUNTER_DELTA = 2**63 - 1

ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@-]*$")
LABEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+~-]*$")
NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")
MOUNT_RE = re.compile(r"^/[A-Za-z0-9._/+-]*$")

ARCHES = ("x86_64", "arm64", "riscv64", "ppc64le", "s390x")
PAGE_SIZES = (4096, 16384, 65536)
FILESYSTEMS = ("xfs", "ext4", "btrfs", "bcachefs", "f2fs", "zfs", "tmpfs", "other")

# name -> (python type, required)
LABELS: Dict[str, tuple] = {
    "fleet": (str, True),
    "role": (str, True),
    "arch": (str, True),
    "kernel": (str, True),
    "page_size": (int, True),
    "cpus": (int, True),
    "mem_bytes": (int, True),
    "instance_type": (str, True),
}

TOP_FIELDS = ("schema", "host_id", "boot_id", "seq", "ts", "interval_s", "labels",
              "counters", "gauges", "mounts", "settings", "probe", "agent")
REQUIRED_FIELDS = ("schema", "host_id", "boot_id", "seq", "ts", "interval_s", "labels",
                   "counters", "gauges", "mounts")
PROBE_FIELDS = {"bytes": int, "seconds": float, "chunk_bytes": int, "mib_s": float,
                "compact_stall": int, "allocstall": int}

# vmstat counters that make up "direct reclaim": one per zone type on current kernels.
ALLOCSTALL_COUNTERS = ("allocstall_dma", "allocstall_dma32", "allocstall_normal",
                       "allocstall_movable", "allocstall_device")

# The key metrics, derived per record (and per filesystem for write throughput).
KEY_METRICS = (
    "write_mib_s",            # sum of the fs's mounts' write_bytes / interval, MiB/s
    "compact_stall_per_s",    # compact_stall / interval
    "allocstall_per_s",       # sum(allocstall_*) / interval: direct reclaim entries
    "pgscan_direct_per_s",    # pages scanned by direct reclaim / interval
    "psi_memory_some_share",  # psi_memory_some_us / (interval * 1e6), 0..1
    "frag_unusable_1m",       # gauge: share of free memory unusable for a 1 MiB block
    "probe_mib_s",            # write probe throughput, when a probe ran
)
# Direction in which a metric gets worse: -1 lower is worse, +1 higher is worse.
WORSE_DIRECTION = {
    "write_mib_s": -1, "compact_stall_per_s": +1, "allocstall_per_s": +1,
    "pgscan_direct_per_s": +1, "psi_memory_some_share": +1, "frag_unusable_1m": +1,
    "probe_mib_s": -1,
}


class SchemaError(InputError, ValueError):
    """A record does not follow wire schema v1. ``field`` names the offending field."""

    def __init__(self, field: str, problem: str):
        self.field = field
        self.problem = problem
        super().__init__(f"{field}: {problem}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool))


def _check_str(field: str, v: Any, regex, max_len: int) -> None:
    if not isinstance(v, str):
        raise SchemaError(field, f"expected a string, got {type(v).__name__}")
    if not v:
        raise SchemaError(field, "must not be empty")
    if len(v) > max_len:
        raise SchemaError(field, f"longer than {max_len} characters ({len(v)}): "
                                 "would explode metric cardinality; shorten it")
    if not regex.fullmatch(v):  # fullmatch: "$" alone would let a trailing newline through
        raise SchemaError(field, f"has characters outside {regex.pattern}: {v[:40]!r}")


def _check_finite(field: str, v: Any) -> float:
    if not _is_num(v):
        raise SchemaError(field, f"expected a number, got {type(v).__name__}")
    try:
        f = float(v)
    except OverflowError:  # an integer too large for a double
        raise SchemaError(field, f"{str(v)[:20]}... is too large to be a finite number") from None
    if math.isnan(f) or math.isinf(f):
        raise SchemaError(field, f"must be finite, got {v!r}")
    return f


def _check_counter_map(field: str, m: Any, max_items: int) -> None:
    if not isinstance(m, dict):
        raise SchemaError(field, f"expected an object, got {type(m).__name__}")
    if len(m) > max_items:
        raise SchemaError(field, f"has {len(m)} entries, at most {max_items} allowed")
    for k, v in m.items():
        _check_str(f"{field}.{k}"[:120], k, NAME_RE, MAX_NAME_LEN)
        if not _is_int(v):
            raise SchemaError(f"{field}.{k}", f"expected an integer delta, got {type(v).__name__}")
        if v < 0:
            raise SchemaError(f"{field}.{k}", f"negative delta {v}: counters are deltas over "
                                              "the interval; a reset starts a new baseline")
        if v > MAX_COUNTER_DELTA:
            raise SchemaError(f"{field}.{k}", f"delta {v} exceeds 2^63-1")


def validate(record: Any) -> Dict[str, Any]:
    """Check ``record`` against wire schema v1 and return it; raise ``SchemaError``.

    The first problem found is reported, naming the field (dotted path).
    """
    if not isinstance(record, dict):
        raise SchemaError("record", f"expected a JSON object, got {type(record).__name__}")
    if "schema" not in record:
        raise SchemaError("schema", "missing (expected schema version 1)")
    schema = record["schema"]
    if not _is_int(schema) or schema != SCHEMA_VERSION:
        raise SchemaError("schema", f"unknown schema version {schema!r}; this consumer reads "
                                    f"version {SCHEMA_VERSION}")
    for f in REQUIRED_FIELDS:
        if f not in record:
            raise SchemaError(f, "missing (required)")
    for f in record:
        if f not in TOP_FIELDS:
            raise SchemaError(str(f)[:64], f"unknown field; v1 fields are {', '.join(TOP_FIELDS)}")

    _check_str("host_id", record["host_id"], ID_RE, MAX_ID_LEN)
    _check_str("boot_id", record["boot_id"], ID_RE, MAX_ID_LEN)
    seq = record["seq"]
    if not _is_int(seq) or seq < 0 or seq > MAX_COUNTER_DELTA:
        raise SchemaError("seq", f"expected an integer >= 0, got {seq!r}")
    ts = _check_finite("ts", record["ts"])
    if ts < 946684800.0 or ts > 4102444800.0:  # 2000-01-01 .. 2100-01-01
        raise SchemaError("ts", f"{ts} is not a plausible Unix time in seconds")
    interval = _check_finite("interval_s", record["interval_s"])
    if not 0.0 < interval <= MAX_INTERVAL_S:
        raise SchemaError("interval_s", f"must be in (0, {MAX_INTERVAL_S:g}], got {interval}")

    labels = record["labels"]
    if not isinstance(labels, dict):
        raise SchemaError("labels", f"expected an object, got {type(labels).__name__}")
    for name, (typ, required) in LABELS.items():
        if name not in labels:
            if required:
                raise SchemaError(f"labels.{name}", "missing (required)")
            continue
        v = labels[name]
        if typ is int:
            if not _is_int(v) or v <= 0:
                raise SchemaError(f"labels.{name}", f"expected a positive integer, got {v!r}")
        else:
            _check_str(f"labels.{name}", v, LABEL_RE, MAX_LABEL_LEN)
    for name in labels:
        if name not in LABELS:
            raise SchemaError(f"labels.{str(name)[:64]}", "unknown label; v1 labels are "
                                                          + ", ".join(LABELS))
    if labels["arch"] not in ARCHES:
        raise SchemaError("labels.arch", f"{labels['arch']!r} is not one of {', '.join(ARCHES)}")
    if labels["page_size"] not in PAGE_SIZES:
        raise SchemaError("labels.page_size", f"{labels['page_size']} is not one of {PAGE_SIZES}")

    _check_counter_map("counters", record["counters"], MAX_COUNTERS)

    gauges = record["gauges"]
    if not isinstance(gauges, dict):
        raise SchemaError("gauges", f"expected an object, got {type(gauges).__name__}")
    if len(gauges) > MAX_GAUGES:
        raise SchemaError("gauges", f"has {len(gauges)} entries, at most {MAX_GAUGES} allowed")
    for k, v in gauges.items():
        _check_str(f"gauges.{k}"[:120], k, NAME_RE, MAX_NAME_LEN)
        _check_finite(f"gauges.{k}", v)

    mounts = record["mounts"]
    if not isinstance(mounts, list):
        raise SchemaError("mounts", f"expected an array, got {type(mounts).__name__}")
    if len(mounts) > MAX_MOUNTS:
        raise SchemaError("mounts", f"has {len(mounts)} entries, at most {MAX_MOUNTS} allowed")
    for i, m in enumerate(mounts):
        where = f"mounts[{i}]"
        if not isinstance(m, dict):
            raise SchemaError(where, f"expected an object, got {type(m).__name__}")
        for k in ("mount", "fs", "device", "counters"):
            if k not in m:
                raise SchemaError(f"{where}.{k}", "missing (required)")
        for k in m:
            if k not in ("mount", "fs", "device", "counters"):
                raise SchemaError(f"{where}.{str(k)[:64]}", "unknown field")
        _check_str(f"{where}.mount", m["mount"], MOUNT_RE, 256)
        if m["fs"] not in FILESYSTEMS:
            raise SchemaError(f"{where}.fs", f"{str(m['fs'])[:40]!r} is not one of "
                                             f"{', '.join(FILESYSTEMS)}")
        _check_str(f"{where}.device", m["device"], LABEL_RE, MAX_LABEL_LEN)
        _check_counter_map(f"{where}.counters", m["counters"], 32)

    if "settings" in record:
        s = record["settings"]
        if not isinstance(s, dict):
            raise SchemaError("settings", f"expected an object, got {type(s).__name__}")
        if len(s) > MAX_SETTINGS:
            raise SchemaError("settings", f"has {len(s)} entries, at most {MAX_SETTINGS}")
        for k, v in s.items():
            _check_str(f"settings.{k}"[:120], k, NAME_RE, MAX_NAME_LEN)
            _check_str(f"settings.{k}", v, LABEL_RE, MAX_LABEL_LEN)

    if "probe" in record:
        p = record["probe"]
        if not isinstance(p, dict):
            raise SchemaError("probe", f"expected an object, got {type(p).__name__}")
        for k, typ in PROBE_FIELDS.items():
            if k not in p:
                raise SchemaError(f"probe.{k}", "missing (required in a probe)")
            v = p[k]
            if typ is int:
                if not _is_int(v) or v < 0:
                    raise SchemaError(f"probe.{k}", f"expected an integer >= 0, got {v!r}")
            elif _check_finite(f"probe.{k}", v) < 0:
                raise SchemaError(f"probe.{k}", f"must be >= 0, got {v}")
        for k in p:
            if k not in PROBE_FIELDS:
                raise SchemaError(f"probe.{str(k)[:64]}", "unknown field")

    if "agent" in record:
        _check_str("agent", record["agent"], LABEL_RE, MAX_LABEL_LEN)
    return record


def encode(record: Mapping[str, Any]) -> bytes:
    """Validate and serialise a record to its wire bytes (compact JSON, UTF-8)."""
    validate(record)  # type: ignore[arg-type]
    data = json.dumps(record, separators=(",", ":"), allow_nan=False,
                      ensure_ascii=False).encode("utf-8")
    if len(data) > MAX_RECORD_BYTES:
        raise SchemaError("record", f"{len(data)} bytes encoded, at most {MAX_RECORD_BYTES}")
    return data


def _reject_constant(name: str):
    raise SchemaError("record", f"non-standard JSON constant {name}")


def decode(data: bytes) -> Dict[str, Any]:
    """Parse and validate wire bytes; raise ``SchemaError`` naming the field."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise SchemaError("record", f"expected bytes, got {type(data).__name__}")
    if len(data) > MAX_RECORD_BYTES:
        raise SchemaError("record", f"{len(data)} bytes, at most {MAX_RECORD_BYTES}")
    try:
        text = bytes(data).decode("utf-8")
    except UnicodeDecodeError as e:
        raise SchemaError("record", f"not UTF-8 ({e.reason} at byte {e.start})") from None
    try:
        obj = json.loads(text, parse_constant=_reject_constant)
    except SchemaError:
        raise
    except ValueError as e:
        raise SchemaError("record", f"not JSON ({e})") from None
    return validate(obj)


def fs_of(record: Mapping[str, Any]) -> List[str]:
    """Filesystem types the record reports, sorted; ``["none"]`` when it watches none."""
    kinds = sorted({m["fs"] for m in record["mounts"]})
    return kinds or ["none"]


def key_metrics(record: Mapping[str, Any], fs: Optional[str] = None) -> Dict[str, Optional[float]]:
    """The key metrics of one record, for filesystem ``fs`` (write throughput sums that
    filesystem's mounts). A metric whose inputs are absent is ``None``, not 0."""
    interval = float(record["interval_s"])
    c = record["counters"]
    g = record["gauges"]
    out: Dict[str, Optional[float]] = {}
    mounts: Iterable[Mapping[str, Any]] = [m for m in record["mounts"] if fs is None or m["fs"] == fs]
    wb = [m["counters"]["write_bytes"] for m in mounts if "write_bytes" in m["counters"]]
    out["write_mib_s"] = (sum(wb) / interval / 1048576.0) if wb else None
    out["compact_stall_per_s"] = c["compact_stall"] / interval if "compact_stall" in c else None
    stalls = [c[k] for k in ALLOCSTALL_COUNTERS if k in c]
    out["allocstall_per_s"] = sum(stalls) / interval if stalls else None
    out["pgscan_direct_per_s"] = c["pgscan_direct"] / interval if "pgscan_direct" in c else None
    psi = c.get("psi_memory_some_us")
    out["psi_memory_some_share"] = min(1.0, psi / (interval * 1e6)) if psi is not None else None
    fr = g.get("frag_unusable_1m")
    out["frag_unusable_1m"] = float(fr) if fr is not None else None
    p = record.get("probe")
    out["probe_mib_s"] = float(p["mib_s"]) if p else None
    return out


def example_record(seq: int = 0, ts: float = 1764000000.0, **overrides: Any) -> Dict[str, Any]:
    """A valid record with realistic values, for documentation, tests and ``--help``."""
    rec: Dict[str, Any] = {
        "schema": SCHEMA_VERSION,
        "host_id": "db-arm-0001",
        "boot_id": "6f1c1b0e-5d0a-4c57-9d43-3f0f3b8a9e21",
        "seq": seq,
        "ts": ts,
        "interval_s": 10.0,
        "labels": {"fleet": "payments-db", "role": "postgres", "arch": "arm64",
                   "kernel": "6.6.87-101.aarch64", "page_size": 4096, "cpus": 96,
                   "mem_bytes": 412316860416, "instance_type": "m8g.24xlarge"},
        "counters": {"compact_stall": 12, "compact_fail": 9, "compact_success": 3,
                     "allocstall_normal": 4, "allocstall_movable": 1, "pgscan_direct": 5120,
                     "pgsteal_direct": 4800, "nr_dirtied": 262144, "nr_written": 260000,
                     "psi_memory_some_us": 150000, "psi_memory_full_us": 20000},
        "gauges": {"mem_available_bytes": 2.1e11, "uptime_s": 864000.0,
                   "frag_unusable_1m": 0.62, "frag_unusable_order_4": 0.21},
        "mounts": [{"mount": "/var/lib/postgresql", "fs": "xfs", "device": "nvme1n1",
                    "counters": {"write_bytes": 1073741824, "write_ios": 8192,
                                 "xfs_write_bytes": 1073741824}}],
        "settings": {"thp_enabled": "madvise", "thp_defrag": "madvise"},
        "agent": "0.1.0",
    }
    rec.update(overrides)
    return rec
