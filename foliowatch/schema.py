"""Wire schema v1: one telemetry sample, one Kafka message per host per interval.

This module is the contract shared by the agent, the simulator and the pipeline, and the
one place it is written down: ``FIELDS`` is the field table (names, types, bounds,
alphabets, lengths, required or optional, units) as data. Everything else is derived
from it: the strict validator (``validate``, ``decode``), the encoder (``encode``: the
canonical layout, compact JSON in table order), and, in the pipeline, the Arrow schema,
the vectorised column checks and the fast path's anchored pattern
(``foliowatch.pipeline.wire_checks``), and the compiled decoder's layout
(``foliowatch.pipeline.native_decode``). A schema change is one edit of the table.
``python -m foliowatch.schema`` prints the table.

It is pure Python (3.9+, standard library only) because the agent runs it on every host.

A record is a JSON object (UTF-8, no BOM), at most ``MAX_RECORD_BYTES`` long. Its
``counters`` are deltas over the interval under the kernel's own names
(``/proc/vmstat``: ``compact_stall``, ``allocstall_normal``, ...; PSI:
``psi_memory_some_us``, ...): a counter the kernel lacks is absent, never 0. Any counter
name in the ``NAME`` alphabet is valid, so a new counter needs no change here unless the
pipeline is to keep it (``CARRIED_COUNTERS``). The agent's optional tracepoint counters
(``tp_*``: page-cache bytes and direct compaction attempts by allocation-order bucket,
``TRACEPOINT_COUNTERS``) were added this way, backwards-compatibly: records without them
stay valid, and consumers that do not know them ignore them. ``MECHANISM_TABLE`` derives
the mechanism figures from them (large-folio share, direct compaction attempts per GiB
written).

Unknown members: a reader (``decode``, hence the pipeline) ignores members the table
does not name, at any level, and drops them, as protobuf readers do, so agents can be
upgraded before the pipeline; a writer (``encode``) refuses them. Everything the table
requires is still enforced exactly.

Identity is ``(host_id, boot_id, seq)``: a consumer that sees it twice drops the copy.

The derived *key metrics* that the pipeline aggregates and the detector tests are
defined once, as data, in ``KEY_METRIC_TABLE``; ``key_metrics`` computes them for one
record, and the pipeline's vectorised version is built from the same table.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, replace
from typing import Any, Dict, Iterable, List, Mapping, NamedTuple, Optional, Sequence, Tuple

from foliowatch.errors import InputError

SCHEMA_VERSION = 1
MAX_RECORD_BYTES = 64 * 1024
INT64_MAX = 2**63 - 1


class Alphabet(NamedTuple):
    """Characters a string may hold: ``first`` for its first character, ``rest`` for the
    others (bodies of regular-expression character classes). Neither may hold a quote,
    a backslash or a control character, so a valid string's JSON text is its value."""
    first: str
    rest: str

    @property
    def pattern(self) -> str:
        return f"^[{self.first}][{self.rest}]*$"


# Label and identity values become Prometheus label values and Parquet partition keys:
# their length and alphabet are bounded so a hostile or broken host cannot explode
# cardinality or smuggle paths.
ID = Alphabet("A-Za-z0-9", "A-Za-z0-9._:@-")
LABEL = Alphabet("A-Za-z0-9", "A-Za-z0-9._+~-")
NAME = Alphabet("a-z", "a-z0-9_")
MOUNT_PATH = Alphabet("/", "A-Za-z0-9._/+-")
MAX_ID_LEN = 128
MAX_LABEL_LEN = 64
MAX_NAME_LEN = 64

ARCHES = ("x86_64", "arm64", "riscv64", "ppc64le", "s390x")
PAGE_SIZES = (4096, 16384, 65536)
FILESYSTEMS = ("xfs", "ext4", "btrfs", "bcachefs", "f2fs", "zfs", "tmpfs", "other")

# Field kinds. INT and COUNTER are JSON integers (never booleans); COUNTER is a delta
# over the interval. FLOAT is any finite JSON number. A MAP has free names (alphabet
# ``NAME``) and one value field; a LIST holds objects with ``members``.
INT, COUNTER, FLOAT, STR, OBJECT, LIST, MAP = (
    "int", "counter", "float", "str", "object", "list", "map")


@dataclass(frozen=True)
class Field:
    """One field of the wire record (or a member of one of its objects)."""
    name: str
    kind: str
    required: bool = True
    minimum: Optional[float] = None        # inclusive, unless exclusive_minimum
    maximum: Optional[float] = None        # inclusive
    exclusive_minimum: bool = False
    alphabet: Optional[Alphabet] = None    # STR
    max_len: Optional[int] = None          # STR, characters
    choices: Optional[tuple] = None        # the only values allowed
    members: Tuple["Field", ...] = ()      # OBJECT; LIST: the members of each item
    value: Optional["Field"] = None        # MAP: every value
    max_items: Optional[int] = None        # LIST, MAP
    unit: str = ""
    doc: str = ""

    def member(self, name: str) -> "Field":
        for m in self.members:
            if m.name == name:
                return m
        raise KeyError(f"{self.name} has no member {name!r}")


def _label(name: str, doc: str, **kw: Any) -> Field:
    return Field(name, STR, alphabet=LABEL, max_len=MAX_LABEL_LEN, doc=doc, **kw)


def _id(name: str, doc: str) -> Field:
    return Field(name, STR, alphabet=ID, max_len=MAX_ID_LEN, doc=doc)


def _positive(name: str, doc: str, **kw: Any) -> Field:
    return Field(name, INT, minimum=1, maximum=INT64_MAX, doc=doc, **kw)


def _count(name: str, doc: str, unit: str = "") -> Field:
    return Field(name, INT, minimum=0, unit=unit, doc=doc)


MAP_NAME = Field("name", STR, alphabet=NAME, max_len=MAX_NAME_LEN, doc="a map entry's name")
DELTA = Field("delta", COUNTER, minimum=0, maximum=INT64_MAX,
              doc="a counter's increase over the interval")
GAUGE = Field("value", FLOAT, doc="a finite number at the end of the interval")
SETTING = _label("value", "a kernel setting's value")

# ---------------------------------------------------------------- the field table
FIELDS: Tuple[Field, ...] = (
    Field("schema", INT, choices=(SCHEMA_VERSION,),
          doc="always SCHEMA_VERSION; other values are rejected"),
    _id("host_id", "stable host identity (machine-id or configured); the Kafka key"),
    _id("boot_id", "/proc/sys/kernel/random/boot_id; changes at every reboot"),
    Field("seq", INT, minimum=0, maximum=INT64_MAX,
          doc="per-host sequence number, survives agent restarts"),
    Field("ts", FLOAT, minimum=946684800.0, maximum=4102444800.0, unit="s",
          doc="end of the interval, Unix time (UTC), 2000-01-01 .. 2100-01-01"),
    Field("interval_s", FLOAT, minimum=0.0, exclusive_minimum=True, maximum=3600.0,
          unit="s", doc="length of the interval the deltas cover"),
    Field("labels", OBJECT, doc="what the host is; all members required", members=(
        _label("fleet", "the fleet (rollout unit) the host belongs to"),
        _label("role", "the host's workload role"),
        _label("arch", "CPU architecture", choices=ARCHES),
        _label("kernel", "kernel release (uname -r)"),
        _positive("page_size", "base page size", choices=PAGE_SIZES, unit="bytes"),
        _positive("cpus", "online CPUs"),
        _positive("mem_bytes", "MemTotal", unit="bytes"),
        _label("instance_type", "hardware or cloud instance type"),
    )),
    Field("counters", MAP, value=DELTA, max_items=256,
          doc="name -> delta over the interval; names are the kernel's own"),
    Field("gauges", MAP, value=GAUGE, max_items=256,
          doc="name -> value at the end of the interval (mem_available_bytes, uptime_s, "
              "frag_unusable_1m, frag_unusable_order_N, ...)"),
    Field("mounts", LIST, max_items=16, doc="watched filesystems", members=(
        Field("mount", STR, alphabet=MOUNT_PATH, max_len=256, doc="mount point"),
        Field("fs", STR, choices=FILESYSTEMS, doc="filesystem type"),
        _label("device", "block device name"),
        Field("counters", MAP, value=DELTA, max_items=32,
              doc="write_bytes, write_ios, and for XFS xfs_write_bytes, ...: deltas"),
    )),
    Field("settings", MAP, required=False, value=SETTING, max_items=32,
          doc="kernel settings (thp_enabled, ...)"),
    Field("probe", OBJECT, required=False, doc="the active write probe of this interval",
          members=(
              _count("bytes", "bytes written", "bytes"),
              Field("seconds", FLOAT, minimum=0.0, unit="s", doc="time the writes took"),
              _count("chunk_bytes", "size of each write", "bytes"),
              Field("mib_s", FLOAT, minimum=0.0, unit="MiB/s", doc="write throughput"),
              _count("compact_stall", "direct compactions during the probe"),
              _count("allocstall", "direct reclaims during the probe"),
          )),
    _label("agent", "agent version", required=False),
)

# Names kept for the code that needs one limit (the agent's config checks, its collectors)
FIELD = {f.name: f for f in FIELDS}
TOP_FIELDS = tuple(f.name for f in FIELDS)
REQUIRED_FIELDS = tuple(f.name for f in FIELDS if f.required)
LABELS: Dict[str, Field] = {m.name: m for m in FIELD["labels"].members}
PROBE_FIELDS: Dict[str, Field] = {m.name: m for m in FIELD["probe"].members}
MAX_INTERVAL_S = float(FIELD["interval_s"].maximum)  # type: ignore[arg-type]
MAX_COUNTER_DELTA = INT64_MAX
MAX_COUNTERS = int(FIELD["counters"].max_items)  # type: ignore[arg-type]
MAX_GAUGES = int(FIELD["gauges"].max_items)  # type: ignore[arg-type]
MAX_MOUNTS = int(FIELD["mounts"].max_items)  # type: ignore[arg-type]
MAX_SETTINGS = int(FIELD["settings"].max_items)  # type: ignore[arg-type]
ID_RE = re.compile(ID.pattern)
LABEL_RE = re.compile(LABEL.pattern)
NAME_RE = re.compile(NAME.pattern)
MOUNT_RE = re.compile(MOUNT_PATH.pattern)

# ---------------------------------------------------------------- the key metrics
# vmstat counters that make up "direct reclaim": one per zone type on current kernels.
ALLOCSTALL_COUNTERS = ("allocstall_dma", "allocstall_dma32", "allocstall_normal",
                       "allocstall_movable", "allocstall_device")


class KeyMetric(NamedTuple):
    """A metric derived per record (per filesystem for mounts) and tested by the detector.

    A *rate* is ``sum(inputs) / interval_s / scale`` (capped at ``cap``); over a window it
    is the sum of deltas over the sum of intervals. A *level* is the input's value; over a
    window, its mean. ``column`` is the pipeline's name for the summed input."""
    name: str
    source: str                  # "counters", "gauges", "probe" or "mounts" (summed)
    inputs: Tuple[str, ...]
    column: str
    rate: bool
    scale: float = 1.0
    cap: Optional[float] = None
    worse: int = +1              # -1: lower is worse, +1: higher is worse
    doc: str = ""


KEY_METRIC_TABLE: Tuple[KeyMetric, ...] = (
    KeyMetric("write_mib_s", "mounts", ("write_bytes",), "write_bytes", True, 1048576.0,
              worse=-1, doc="the filesystem's mounts' write_bytes, MiB/s"),
    KeyMetric("compact_stall_per_s", "counters", ("compact_stall",), "compact_stall", True),
    KeyMetric("allocstall_per_s", "counters", ALLOCSTALL_COUNTERS, "allocstall", True,
              doc="direct reclaim entries per second"),
    KeyMetric("pgscan_direct_per_s", "counters", ("pgscan_direct",), "pgscan_direct", True,
              doc="pages scanned by direct reclaim per second"),
    KeyMetric("psi_memory_some_share", "counters", ("psi_memory_some_us",),
              "psi_memory_some_us", True, 1e6, cap=1.0, doc="share of time stalled, 0..1"),
    KeyMetric("frag_unusable_1m", "gauges", ("frag_unusable_1m",), "frag_unusable_1m",
              False, doc="share of free memory unusable for a 1 MiB block"),
    KeyMetric("probe_mib_s", "probe", ("mib_s",), "probe_mib_s", False, worse=-1,
              doc="write probe throughput, when a probe ran"),
)
KEY_METRICS = tuple(m.name for m in KEY_METRIC_TABLE)
WORSE_DIRECTION = {m.name: m.worse for m in KEY_METRIC_TABLE}
# Counters the pipeline keeps beside the key metrics' inputs: each becomes a column of
# the pipeline's flat frame and a per-host-window sum ``<name>_sum`` in the dataset. On
# the wire they are optional like every counter. Keeping a new counter is one entry here.
# Tracepoint counters (foliowatch.agent.collectors.tracepoints, off by default; optional
# like every counter, absent from hosts that do not run the collector), under the names
# of the agent's default allocation-order buckets (0, 1-3, 4-7, 8+). Other buckets travel
# on the wire too but only these are kept by the pipeline.
ORDER_BUCKETS = ("order_0", "order_1_3", "order_4_7", "order_8_up")
LARGE_FOLIO_BUCKETS = ("order_4_7", "order_8_up")   # folios of order >= 4
TRACEPOINT_COUNTERS: Tuple[str, ...] = (
    tuple(f"tp_pagecache_bytes_{b}" for b in ORDER_BUCKETS)       # bytes added to the page cache
    + tuple(f"tp_compact_try_{b}" for b in ORDER_BUCKETS)         # direct compaction attempts
    + ("tp_compact_try_costly_direct",))   # order > 3 with __GFP_DIRECT_RECLAIM
CARRIED_COUNTERS: Tuple[str, ...] = ("nr_dirtied",) + TRACEPOINT_COUNTERS


class MechanismRatio(NamedTuple):
    """A figure of the regression's mechanism: ``sum(numerator) / sum(denominator) x
    scale`` over a record or a window (sums of deltas, so a window's value weighs its
    intervals by volume). ``None`` when the denominator is 0 or any input is absent.
    Inputs are counters, or, for ``write_bytes``, the filesystem's mounts."""
    name: str
    numerator: Tuple[str, ...]
    denominator: Tuple[str, ...]
    scale: float = 1.0
    doc: str = ""


MECHANISM_TABLE: Tuple[MechanismRatio, ...] = (
    MechanismRatio("large_folio_share",
                   tuple(f"tp_pagecache_bytes_{b}" for b in LARGE_FOLIO_BUCKETS),
                   tuple(f"tp_pagecache_bytes_{b}" for b in ORDER_BUCKETS),
                   doc="bytes added to the page cache in folios of order >= 4 over all "
                       "bytes added, 0..1"),
    *(MechanismRatio(f"compact_try_{b}_per_gib", (f"tp_compact_try_{b}",),
                     ("write_bytes",), float(1 << 30),
                     doc=f"direct compaction attempts at {b.replace('_', ' ', 1)} "
                         "per GiB written to the filesystem")
      for b in ORDER_BUCKETS),
    MechanismRatio("compact_try_costly_direct_per_gib", ("tp_compact_try_costly_direct",),
                   ("write_bytes",), float(1 << 30),
                   doc="direct compaction attempts of order > 3 with __GFP_DIRECT_RECLAIM "
                       "per GiB written: the seed regression's mechanism"),
)
MECHANISM_METRICS = tuple(r.name for r in MECHANISM_TABLE)


def summed_columns() -> Tuple[str, ...]:
    """The flat columns the pipeline sums per host window: rate inputs, carried counters."""
    return tuple(m.column for m in KEY_METRIC_TABLE if m.rate) + CARRIED_COUNTERS


# ---------------------------------------------------------------- the strict validator
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


def _num_text(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(x)


def bounds_text(f: Field) -> str:
    """``[lo, hi]``-style text of a numeric field's bounds, for messages and docs."""
    lo = "-inf" if f.minimum is None else _num_text(f.minimum)
    hi = "inf" if f.maximum is None else _num_text(f.maximum)
    return f"{'(' if f.exclusive_minimum else '['}{lo}, {hi}{']' if f.maximum is not None else ')'}"


def _check_str(field: str, v: Any, alphabet: Alphabet, max_len: Optional[int]) -> None:
    if not isinstance(v, str):
        raise SchemaError(field, f"expected a string, got {type(v).__name__}")
    if not v:
        raise SchemaError(field, "must not be empty")
    if max_len is not None and len(v) > max_len:
        raise SchemaError(field, f"longer than {max_len} characters ({len(v)}): "
                                 "would explode metric cardinality; shorten it")
    regex = _compiled(alphabet)
    if not regex.fullmatch(v):  # fullmatch: "$" alone would let a trailing newline through
        raise SchemaError(field, f"has characters outside {regex.pattern}: {v[:40]!r}")


_REGEX: Dict[Alphabet, "re.Pattern[str]"] = {}


def _compiled(alphabet: Alphabet) -> "re.Pattern[str]":
    regex = _REGEX.get(alphabet)
    if regex is None:
        regex = _REGEX[alphabet] = re.compile(alphabet.pattern)
    return regex


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


def _in_bounds(f: Field, x: float) -> bool:
    if f.minimum is not None and (x <= f.minimum if f.exclusive_minimum else x < f.minimum):
        return False
    return f.maximum is None or x <= f.maximum


def _check_choice(f: Field, path: str, v: Any) -> None:
    if f.choices is not None and v not in f.choices:
        shown = repr(str(v)[:40]) if f.kind == STR else str(v)
        raise SchemaError(path, f"{shown} is not one of {', '.join(map(str, f.choices))}")


def _check_value(f: Field, path: str, v: Any, ignore_unknown: bool = False) -> None:
    kind = f.kind
    if kind == STR:
        if f.alphabet is not None:
            _check_str(path, v, f.alphabet, f.max_len)
        _check_choice(f, path, v)
    elif kind == INT:
        if not _is_int(v) or not _in_bounds(f, v):
            lo = "a positive integer" if f.minimum == 1 else f"an integer >= {f.minimum:g}"
            hi = "" if f.maximum is None or not _is_int(v) or v <= f.maximum \
                else f" <= {_num_text(f.maximum)}"
            raise SchemaError(path, f"expected {lo}{hi}, got {v!r}")
        _check_choice(f, path, v)
    elif kind == COUNTER:
        if not _is_int(v):
            raise SchemaError(path, f"expected an integer delta, got {type(v).__name__}")
        if v < 0:
            raise SchemaError(path, f"negative delta {v}: counters are deltas over "
                                    "the interval; a reset starts a new baseline")
        if f.maximum is not None and v > f.maximum:
            raise SchemaError(path, f"delta {v} exceeds 2^63-1")
    elif kind == FLOAT:
        x = _check_finite(path, v)
        if not _in_bounds(f, x):
            raise SchemaError(path, f"must be in {bounds_text(f)}{' ' + f.unit if f.unit else ''}"
                                    f", got {x}")
    elif kind == OBJECT:
        _check_object(f.members, path, v, ignore_unknown)
    elif kind == LIST:
        if not isinstance(v, list):
            raise SchemaError(path, f"expected an array, got {type(v).__name__}")
        if f.max_items is not None and len(v) > f.max_items:
            raise SchemaError(path, f"has {len(v)} entries, at most {f.max_items} allowed")
        for i, item in enumerate(v):
            _check_object(f.members, f"{path}[{i}]", item, ignore_unknown)
    elif kind == MAP:
        if not isinstance(v, dict):
            raise SchemaError(path, f"expected an object, got {type(v).__name__}")
        if f.max_items is not None and len(v) > f.max_items:
            raise SchemaError(path, f"has {len(v)} entries, at most {f.max_items} allowed")
        assert f.value is not None
        # The whole map passes a quick test of the plain case, in a few C-level passes
        # (the agent validates ~100 entries per record on every host); else every entry
        # gets the full checks, which name what is wrong. Both follow from the table.
        plain = _PLAIN_VALUES.get(f.value.kind)
        if plain is not None and _plain_names(v) and plain(f.value, list(v.values())):
            return
        for k, item in v.items():
            _check_str(f"{path}.{k}"[:120], k, NAME, MAP_NAME.max_len)
            _check_value(f.value, f"{path}.{k}", item)
    else:  # pragma: no cover - a table error, not a record error
        raise AssertionError(f"field {f.name}: unknown kind {kind!r}")


# Map names, newline-terminated and joined: a newline is outside the NAME alphabet, so
# each name must match on its own (counted, so that no name can hold one).
_NAME_LIST = re.compile(f"(?:[{MAP_NAME.alphabet.first}][{MAP_NAME.alphabet.rest}]"  # type: ignore[union-attr]
                        f"{{0,{MAP_NAME.max_len - 1}}}\n)*")  # type: ignore[operator]


def _plain_names(m: Mapping[Any, Any]) -> bool:
    if not m:
        return True
    if set(map(type, m)) != {str}:
        return False
    joined = "\n".join(m) + "\n"
    return joined.count("\n") == len(m) and _NAME_LIST.fullmatch(joined) is not None


def _plain_counters(f: Field, values: List[Any]) -> bool:
    if not values:
        return True
    return (set(map(type, values)) == {int} and min(values) >= 0
            and (f.maximum is None or max(values) <= f.maximum))


def _plain_floats(f: Field, values: List[Any]) -> bool:
    if not values:
        return True
    return (set(map(type, values)) == {float} and all(map(math.isfinite, values))
            and _in_bounds(f, min(values)) and _in_bounds(f, max(values)))


# kind -> the quick test of a map's values in their plain case (True: all valid; False:
# check each fully)
_PLAIN_VALUES = {COUNTER: _plain_counters, FLOAT: _plain_floats}


def _check_object(members: Sequence[Field], path: str, obj: Any,
                  ignore_unknown: bool = False) -> None:
    if not isinstance(obj, dict):
        raise SchemaError(path, f"expected an object, got {type(obj).__name__}")
    prefix = f"{path}." if path else ""
    for m in members:
        if m.required and m.name not in obj:
            raise SchemaError(prefix + m.name, "missing (required)")
    present = sum(1 for m in members if m.name in obj)
    if len(obj) > present:
        names = {m.name for m in members}
        unknown = [k for k in obj if k not in names]
        if not ignore_unknown:
            raise SchemaError(prefix + str(unknown[0])[:64], "unknown field; allowed are "
                              + ", ".join(m.name for m in members))
        for k in unknown:   # a newer writer's member: dropped, so nothing downstream sees it
            del obj[k]
    for m in members:
        if m.name in obj:
            _check_value(m, prefix + m.name, obj[m.name], ignore_unknown)


def validate(record: Any, fields: Sequence[Field] = FIELDS,
             ignore_unknown: bool = False) -> Dict[str, Any]:
    """Check ``record`` against the field table (wire schema v1 unless ``fields`` says
    otherwise) and return it; raise ``SchemaError``.

    The first problem found is reported, naming the field (dotted path). The version is
    checked first: a record of another version is not judged by this table.

    A writer (``encode``) may only write the table's members: an unknown one is refused.
    A reader (``decode``, ``ignore_unknown=True``) ignores members the table does not
    name, at any level, and removes them from the returned record, as protobuf readers
    do: an agent upgraded before the pipeline may add a field in the same schema version
    without its records being refused. Everything the table requires is still enforced
    exactly."""
    if not isinstance(record, dict):
        raise SchemaError("record", f"expected a JSON object, got {type(record).__name__}")
    if "schema" not in record:
        raise SchemaError("schema", f"missing (expected schema version {SCHEMA_VERSION})")
    version = record["schema"]
    if not _is_int(version) or version != SCHEMA_VERSION:
        raise SchemaError("schema", f"unknown schema version {version!r}; this consumer reads "
                                    f"version {SCHEMA_VERSION}")
    _check_object(fields, "", record, ignore_unknown)
    return record


# ---------------------------------------------------------------- the writer's quick path
# ``encode`` runs on every host for every sample, and walking the table costs more than
# the record's JSON. So the table is also turned, once, into straight-line code that
# accepts a record only when it is valid *and* laid out in table order, by tests that
# are each as strict as ``validate``'s or stricter (exact types: ``int``, ``float``,
# ``dict``, ``list``, ``str``; a FLOAT only as a float), and that writes the accepted
# record's JSON text as it goes: one ``%`` format per object, made from the table's
# member names for the members present, and one per map's set of names (made once, a
# host sends the same names sample after sample). With exact types the format's
# conversions write what the JSON encoder writes (``%d``: ``int.__repr__``, ``%r``:
# ``float.__repr__``; a string of the table's alphabets or choices is its own JSON text
# between quotes), so the bytes are ``_WIRE_JSON``'s. Whatever it does not accept goes
# through ``validate`` (which names the problem, or accepts an unusual but valid
# record), ``_ordered`` and the JSON encoder. One rule, two speeds:
# ``tests/test_schema.py`` checks that nothing the quick path accepts fails
# ``validate``, and that its bytes are the JSON encoder's.
def _json_key(name: str) -> str:
    """A member's or map entry's name as the JSON encoder writes it, ``%`` escaped for
    a format."""
    return json.dumps(name, ensure_ascii=False).replace("%", "%%") + ":"


# a value's conversion in its parent's format, by kind (STR: a string that is its own
# JSON text; text: JSON already written by the quick path)
_CONVERSION = {INT: "%d", COUNTER: "%d", FLOAT: "%r", STR: '"%s"', "text": "%s"}


def _str_is_plain(f: Field) -> bool:
    """Every value the field allows is its own JSON text between quotes (no character
    the JSON encoder escapes): true of the table's alphabets (``Alphabet``) and of
    choices that need no escape."""
    if f.alphabet is not None:
        # (Alphabet's rule, checked here rather than trusted: one it breaks goes to the
        # JSON encoder)
        escaped = re.compile(f"[{f.alphabet.first}{f.alphabet.rest}]")
        return not any(escaped.match(c) for c in '"\\' + "".join(map(chr, range(32))))
    return f.choices is not None and all(
        isinstance(c, str) and json.dumps(c, ensure_ascii=False) == f'"{c}"' for c in f.choices)


class _QuickSource:
    def __init__(self) -> None:
        self.lines: List[str] = []
        self.env: Dict[str, Any] = {"_map_format": _map_format, "_isfinite": math.isfinite}
        self.depth = 0

    def const(self, value: Any) -> str:
        name = f"_c{len(self.env)}"
        self.env[name] = value
        return name

    def var(self) -> str:
        self.depth += 1
        return f"v{self.depth}"

    def emit(self, indent: int, line: str) -> None:
        self.lines.append("    " * indent + line)

    def reject_unless(self, indent: int, test: str) -> None:
        self.emit(indent, f"if not ({test}): return None")

    def object(self, members: Sequence[Field], obj: str, indent: int) -> str:
        """Checks of an object's members; returns the variable that holds its text."""
        optional = [m.name for m in members if not m.required]
        # each allowed member order (table order, any subset of the optional members)
        # -> the object's format for it
        formats = {}
        for chosen in _subsets(optional):
            present = [m for m in members if m.required or m.name in chosen]
            formats[tuple(m.name for m in present)] = "{" + ",".join(
                _json_key(m.name) + _CONVERSION[self.kind_of(m)] for m in present) + "}"
        fmt, text = self.var(), self.var()
        self.reject_unless(indent, f"type({obj}) is dict")
        self.emit(indent, f"{fmt} = {self.const(formats)}.get(tuple({obj}))")
        self.reject_unless(indent, f"{fmt} is not None")
        values = self.var()
        self.emit(indent, f"{values} = []")
        for m in members:
            v = self.var()
            inner = indent
            if not m.required:
                self.emit(indent, f"if {m.name!r} in {obj}:")
                inner = indent + 1
            self.emit(inner, f"{v} = {obj}[{m.name!r}]")
            self.emit(inner, f"{values}.append({self.value(m, v, inner)})")
        self.emit(indent, f"{text} = {fmt} % tuple({values})")
        return text

    @staticmethod
    def kind_of(f: Field) -> str:
        """How ``f``'s value goes into its parent's format (``_CONVERSION``)."""
        return f.kind if f.kind in (INT, COUNTER, FLOAT, STR) else "text"

    def value(self, f: Field, v: str, indent: int) -> str:
        """Checks of one value; returns what its parent's format takes for it (the
        value itself, or the variable that holds its text)."""
        kind = f.kind
        tests: List[str] = []
        if kind in (INT, COUNTER):
            tests.append(f"type({v}) is int")
            lo = 0 if kind == COUNTER and (f.minimum is None or f.minimum < 0) else f.minimum
            if lo is not None:
                tests.append(f"{v} > {lo!r}" if f.exclusive_minimum else f"{v} >= {lo!r}")
            if f.maximum is not None:
                tests.append(f"{v} <= {f.maximum!r}")
            if kind == INT and f.choices is not None:
                tests.append(f"{v} in {self.const(frozenset(f.choices))}")
        elif kind == FLOAT:
            tests.append(f"type({v}) is float")
            if f.minimum is not None:
                tests.append(f"{v} > {float(f.minimum)!r}" if f.exclusive_minimum
                             else f"{v} >= {float(f.minimum)!r}")
            if f.maximum is not None:
                tests.append(f"{v} <= {float(f.maximum)!r}")
            if f.minimum is None or f.maximum is None:
                tests.append(f"_isfinite({v})")
        elif kind == STR:
            tests.append(f"type({v}) is str")
            if f.alphabet is not None:
                if f.max_len is not None:
                    tests.append(f"len({v}) <= {f.max_len}")
                tests.append(f"{self.const(_compiled(f.alphabet))}.fullmatch({v}) is not None")
            if f.choices is not None:
                tests.append(f"{v} in {self.const(frozenset(f.choices))}")
            if not _str_is_plain(f):
                tests.append("False")   # not a kind the table uses: leave it to validate
        elif kind == OBJECT:
            return self.object(f.members, v, indent)
        elif kind == LIST:
            tests.append(f"type({v}) is list")
            if f.max_items is not None:
                tests.append(f"len({v}) <= {f.max_items}")
            self.reject_unless(indent, " and ".join(tests))
            items, item, text = self.var(), self.var(), self.var()
            self.emit(indent, f"{items} = []")
            self.emit(indent, f"for {item} in {v}:")
            self.emit(indent + 1, f"{items}.append({self.object(f.members, item, indent + 1)})")
            self.emit(indent, f"{text} = '[%s]' % ','.join({items})")
            return text
        elif kind == MAP:
            assert f.value is not None
            fmt, text = self.var(), self.var()
            tests.append(f"type({v}) is dict")
            if f.max_items is not None:
                tests.append(f"len({v}) <= {f.max_items}")
            self.reject_unless(indent, " and ".join(tests))
            conversion = _CONVERSION[self.kind_of(f.value)]
            self.emit(indent, f"{fmt} = _map_format({v}, {conversion!r})")
            self.reject_unless(indent, f"{fmt} is not None")
            plain = _PLAIN_VALUES.get(f.value.kind)
            if plain is not None:
                self.reject_unless(
                    indent, f"{self.const(plain)}({self.const(f.value)}, list({v}.values()))")
            else:
                item = self.var()
                self.emit(indent, f"for {item} in {v}.values():")
                self.value(f.value, item, indent + 1)
                if self.kind_of(f.value) == "text":   # pragma: no cover - a table error
                    raise AssertionError(f"map {f.name}: values of kind {f.value.kind}")
            self.emit(indent, f"{text} = {fmt} % tuple({v}.values())")
            return text
        else:  # pragma: no cover - a table error
            raise AssertionError(f"field {f.name}: unknown kind {kind!r}")
        self.reject_unless(indent, " and ".join(tests))
        return v


# (conversion, map names) -> the map's format, for names the quick path found valid
# before: a host's counters and gauges are the same names sample after sample, and a
# valid set of names stays valid.
_MAP_FORMATS: Dict[Tuple[str, Tuple[Any, ...]], str] = {}


def _map_format(m: Dict[Any, Any], conversion: str) -> Optional[str]:
    """The format that writes map ``m`` with its values converted by ``conversion``,
    or ``None`` when its names are not plain valid names (``validate`` decides)."""
    key = (conversion, tuple(m))
    fmt = _MAP_FORMATS.get(key)
    if fmt is None:
        if not _plain_names(m):
            return None
        if len(_MAP_FORMATS) >= 64:   # bounded: a host has a few sets (resets drop a name)
            _MAP_FORMATS.clear()
        fmt = _MAP_FORMATS[key] = "{" + ",".join(_json_key(k) + conversion for k in m) + "}"
    return fmt


def _subsets(names: Sequence[str]) -> List[Tuple[str, ...]]:
    out: List[Tuple[str, ...]] = [()]
    for name in names:
        out += [s + (name,) for s in out]
    return out


_QUICK: Dict[int, Tuple[Sequence[Field], Any]] = {}   # id(fields) -> (fields, writer)


def _quick_writer(fields: Sequence[Field]) -> Any:
    known = _QUICK.get(id(fields))
    if known is None or known[0] is not fields:   # (a table, by identity: hashing one
        src = _QuickSource()                      # walks all of it)
        src.emit(0, "def quick(v0):")
        src.emit(1, f"return {src.object(fields, 'v0', 1)}")
        exec("\n".join(src.lines), src.env)   # noqa: S102 - our own text, from the table
        known = _QUICK[id(fields)] = (fields, src.env["quick"])
    return known[1]


def quick_text(record: Any, fields: Sequence[Field] = FIELDS) -> Optional[str]:
    """The wire JSON text of ``record`` when ``validate(record, fields)`` accepts it and
    its members are in table order (so its layout is already canonical); ``None`` means
    "ask ``validate``", not "invalid"."""
    return _quick_writer(fields)(record)


def quick_valid(record: Any, fields: Sequence[Field] = FIELDS) -> bool:
    """True only if ``validate(record, fields)`` accepts ``record`` and its members are
    in table order (``quick_text`` writes it); False means "ask ``validate``"."""
    return _quick_writer(fields)(record) is not None


# ---------------------------------------------------------------- the encoder
def _ordered(members: Sequence[Field], obj: Mapping[str, Any]) -> Dict[str, Any]:
    out = {}
    for m in members:
        if m.name in obj:
            v = obj[m.name]
            if m.kind == OBJECT:
                v = _ordered(m.members, v)
            elif m.kind == LIST:
                v = [_ordered(m.members, item) for item in v]
            out[m.name] = v
    return out


# compact JSON, UTF-8, no NaN or infinity; one encoder for every record (json.dumps with
# these options would build one per call)
_WIRE_JSON = json.JSONEncoder(separators=(",", ":"), allow_nan=False, ensure_ascii=False)


def encode(record: Mapping[str, Any], fields: Sequence[Field] = FIELDS) -> bytes:
    """Validate and serialise a record to its wire bytes: the canonical layout (compact
    JSON, UTF-8, members in table order, map entries in the record's order)."""
    text = _quick_writer(fields)(record)
    if text is None:
        validate(record, fields)
        text = _WIRE_JSON.encode(_ordered(fields, record))
    data = text.encode("utf-8")
    if len(data) > MAX_RECORD_BYTES:
        raise SchemaError("record", f"{len(data)} bytes encoded, at most {MAX_RECORD_BYTES}")
    return data


def _reject_constant(name: str):
    raise SchemaError("record", f"non-standard JSON constant {name}")


def decode(data: bytes, fields: Sequence[Field] = FIELDS) -> Dict[str, Any]:
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
    return validate(obj, fields, ignore_unknown=True)


def fs_of(record: Mapping[str, Any]) -> List[str]:
    """Filesystem types the record reports, sorted; ``["none"]`` when it watches none."""
    kinds = sorted({m["fs"] for m in record["mounts"]})
    return kinds or ["none"]


def key_metrics(record: Mapping[str, Any], fs: Optional[str] = None) -> Dict[str, Optional[float]]:
    """The key metrics of one record (``KEY_METRIC_TABLE``), for filesystem ``fs`` (write
    throughput sums that filesystem's mounts). A metric whose inputs are all absent is
    ``None``, not 0."""
    interval = float(record["interval_s"])
    out: Dict[str, Optional[float]] = {}
    for m in KEY_METRIC_TABLE:
        if m.source == "mounts":
            maps: Iterable[Mapping[str, Any]] = [
                mt["counters"] for mt in record["mounts"] if fs is None or mt["fs"] == fs]
        else:
            maps = [record.get(m.source) or {}]
        values = [mp[k] for mp in maps for k in m.inputs if k in mp]
        if not values:
            out[m.name] = None
        elif m.rate:
            v = sum(values) / interval / m.scale
            out[m.name] = v if m.cap is None else min(m.cap, v)
        else:
            out[m.name] = float(values[0])
    return out


def mechanism_metrics(record: Mapping[str, Any], fs: Optional[str] = None
                      ) -> Dict[str, Optional[float]]:
    """The ``MECHANISM_TABLE`` figures of one record, for filesystem ``fs``."""
    mounts = [mt["counters"] for mt in record["mounts"] if fs is None or mt["fs"] == fs]

    def total(names: Tuple[str, ...]) -> Optional[int]:
        values = []
        for n in names:
            if n == "write_bytes":
                found = [c[n] for c in mounts if n in c]
                if not found:
                    return None
                values.extend(found)
            elif n in record["counters"]:
                values.append(record["counters"][n])
            else:
                return None
        return sum(values)

    out: Dict[str, Optional[float]] = {}
    for r in MECHANISM_TABLE:
        num, den = total(r.numerator), total(r.denominator)
        out[r.name] = None if num is None or not den else num / den * r.scale
    return out


def describe(fields: Sequence[Field] = FIELDS, prefix: str = "") -> List[str]:
    """The field table as text lines: path, type, required, bounds or alphabet, unit, doc."""
    lines = []
    for f in fields:
        path = prefix + f.name
        rule = []
        if f.kind in (INT, FLOAT, COUNTER) and (f.minimum is not None or f.maximum is not None):
            rule.append(bounds_text(f))
        if f.alphabet is not None:
            rule.append(f"{f.alphabet.pattern} <= {f.max_len} chars")
        if f.choices is not None:
            rule.append("one of " + ", ".join(map(str, f.choices)))
        if f.max_items is not None:
            rule.append(f"<= {f.max_items} entries")
        lines.append(f"{path:28} {f.kind:8} {'required' if f.required else 'optional':9}"
                     f"{' '.join(rule)}{' (' + f.unit + ')' if f.unit else ''}  {f.doc}")
        if f.kind == MAP and f.value is not None:
            lines.extend(describe((replace(f.value, name="<name>"),), path + "."))
        lines.extend(describe(f.members, path + ("[]." if f.kind == LIST else ".")))
    return lines


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


if __name__ == "__main__":
    print("\n".join(describe()))
