"""Kernel tracepoints, counted: page-cache folio sizes, direct compaction and direct
reclaim by allocation order (off by default: ``agent.tracepoints.enabled``).

/proc/vmstat has no counter for the size of the folios buffered writes put in the page
cache, nor for the orders that fall into direct compaction. The tracepoints do, and
counting them costs one increment per event in the kernel: this module opens one
``perf_event_open(2)`` counter per (event, filter, online CPU) in counting mode
(``PERF_TYPE_TRACEPOINT``, ``pid = -1``: system-wide), sets the filter with
``PERF_EVENT_IOC_SET_FILTER``, and reads the u64 counts each interval with one
``read(2)`` per CPU (each CPU's counters are one group, ``PERF_FORMAT_GROUP``). No ring
buffer, no per-event work in user space, standard library only (ctypes).

Events and the fields used (``<tracefs>/events/<sys>/<name>/format``; kernel 6.18 shown):

- ``filemap:mm_filemap_add_to_page_cache``: ``dev_t s_dev``, ``unsigned char order``
  (one event per folio added). Counted per exact order 0 .. the page cache's largest
  order (PMD order with THP, else 8; ``MAX_PAGECACHE_ORDER``, include/linux/pagemap.h),
  so that the bytes added per bucket are exact: ``count x page_size << order``.
  Optionally only folios of the watched filesystems' devices (``s_dev`` is the kernel's
  ``MAJOR << 20 | MINOR``).
- ``compaction:mm_compaction_try_to_compact_pages``: ``int order``, ``gfp_mask``: direct
  compaction attempts by order bucket, and those with ``order > 3``
  (PAGE_ALLOC_COSTLY_ORDER) carrying ``__GFP_DIRECT_RECLAIM``, whose bit value is read
  from the format's ``print fmt`` flag table (it moved between kernel versions).
- ``compaction:mm_compaction_end``: ``int status``: compaction runs ended (direct,
  kcompactd and proactive alike) and those ended in ``success`` (value from the format's
  symbol table).
- ``compaction:mm_compaction_deferred``: ``int order``: compaction skipped because it
  failed recently at that order (where the kernel has the event).
- ``vmscan:mm_vmscan_direct_reclaim_begin``: ``int order``: direct reclaim entries.

Wire counters (cumulative here, deltas in the record; bucket names ``order_0``,
``order_1_3``, ``order_8_up``...): ``tp_pagecache_folios_<b>``,
``tp_pagecache_bytes_<b>``, ``tp_compact_try_<b>``, ``tp_compact_try_costly_direct``,
``tp_compact_end``, ``tp_compact_end_success``, ``tp_compact_deferred``,
``tp_compact_deferred_costly``, ``tp_direct_reclaim``, ``tp_direct_reclaim_costly``.
A counter whose event or field the kernel lacks is absent, never 0.

Privilege: system-wide counters need CAP_PERFMON (or CAP_SYS_ADMIN), or
``kernel.perf_event_paranoid <= 0``; the event ids are read from tracefs (root-only by
default). Where that is missing the collector is off and says why once; the agent runs
on. One file descriptor per counter and CPU: the collector raises the soft
RLIMIT_NOFILE towards the hard limit when it needs more.
"""

from __future__ import annotations

import errno
import logging
import os
import platform
import re
import resource
import struct
import threading
from typing import Dict, Iterable, List, NamedTuple, Optional, Sequence, Tuple

from foliowatch.agent.collectors._io import read_text

log = logging.getLogger("foliowatch.agent.tracepoints")

TRACEFS_PATHS = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")
DEFAULT_BUCKETS = ("0", "1-3", "4-7", "8+")
COSTLY_ORDER = 3            # PAGE_ALLOC_COSTLY_ORDER, include/linux/mmzone.h
PAGECACHE_MAX_ORDER_NO_THP = 8

EV_FILEMAP = "filemap/mm_filemap_add_to_page_cache"
EV_TRY_COMPACT = "compaction/mm_compaction_try_to_compact_pages"
EV_COMPACT_END = "compaction/mm_compaction_end"
EV_COMPACT_DEFERRED = "compaction/mm_compaction_deferred"
EV_DIRECT_RECLAIM = "vmscan/mm_vmscan_direct_reclaim_begin"
EVENTS = (EV_FILEMAP, EV_TRY_COMPACT, EV_COMPACT_END, EV_COMPACT_DEFERRED, EV_DIRECT_RECLAIM)

# perf_event_open(2) numbers by machine (arch/*/entry/syscalls, include/uapi/asm-generic).
SYSCALL_NR = {"x86_64": 298, "aarch64": 241, "arm64": 241}
PERF_TYPE_SOFTWARE = 1
PERF_TYPE_TRACEPOINT = 2
PERF_COUNT_SW_DUMMY = 9      # counts nothing: the leader of each CPU's group of counters
PERF_FORMAT_GROUP = 1 << 3   # read(2) of a leader: u64 nr, then u64 value per member
GROUP_LEADER = "software:dummy (the counters' group leader)"   # its name in messages
PERF_FLAG_FD_CLOEXEC = 1 << 3
PERF_ATTR_FLAG_DISABLED = 1 << 0
PERF_EVENT_IOC_ENABLE = 0x2400
PERF_EVENT_IOC_DISABLE = 0x2401
# _IOW('$', 6, char *)
PERF_EVENT_IOC_SET_FILTER = (1 << 30) | (struct.calcsize("P") << 16) | (0x24 << 8) | 6

# What an agent that cannot read tracefs (mode 0700 root by default) can do about it.
TRACEFS_ACCESS_HINT = ("run the agent as root (with only CAP_PERFMON among its "
                       "capabilities), or copy the events' files as root before it starts "
                       "(`foliowatch agent --export-tracefs-events DIR`) and set "
                       "agent.tracepoints.tracefs = DIR, or mount tracefs with gid= of the "
                       "agent's group")
PRIVILEGE_HINT = ("grant the agent CAP_PERFMON (systemd: AmbientCapabilities=CAP_PERFMON) "
                  "or set kernel.perf_event_paranoid <= 0")


class TracepointsUnavailable(Exception):
    """The collector cannot count at all on this host (the message says why and what
    to do)."""


class Bucket(NamedTuple):
    lo: int
    hi: Optional[int]      # None: open ("8+")

    @property
    def name(self) -> str:
        if self.hi is None:
            return f"order_{self.lo}_up"
        return f"order_{self.lo}" if self.lo == self.hi else f"order_{self.lo}_{self.hi}"

    def contains(self, order: int) -> bool:
        return order >= self.lo and (self.hi is None or order <= self.hi)

    def filter(self, field: str = "order") -> str:
        if self.hi is None:
            return f"{field} >= {self.lo}"
        if self.lo == self.hi:
            return f"{field} == {self.lo}"
        return f"{field} >= {self.lo} && {field} <= {self.hi}"


class CounterSpec(NamedTuple):
    key: str          # internal name; wire names are derived in ``wire_counters``
    event: str        # "sys/name"
    filter: str       # "" = none


class EventFormat(NamedTuple):
    id: int
    fields: Dict[str, str]     # name -> C type
    print_fmt: str


# -- pure parsing ------------------------------------------------------------------------
def parse_buckets(specs: Sequence[str]) -> List[Bucket]:
    """``["0", "1-3", "4-7", "8+"]`` -> buckets. They must start at order 0, follow each
    other without gaps and end with an open ``N+``. Raises ValueError naming the item."""
    out: List[Bucket] = []
    for i, spec in enumerate(specs):
        s = spec.strip()
        m = re.fullmatch(r"([0-9]+)(?:-([0-9]+)|(\+))?", s)
        if not m:
            raise ValueError(f"{spec!r} is not an order range; write \"N\", \"N-M\" or, "
                             "last, \"N+\"")
        lo = int(m.group(1))
        hi = None if m.group(3) else int(m.group(2) if m.group(2) else lo)
        if hi is not None and hi < lo:
            raise ValueError(f"{spec!r}: the range ends below its start")
        expected = 0 if not out else (out[-1].hi or 0) + 1
        if lo != expected:
            raise ValueError(f"{spec!r}: expected a range starting at order {expected} "
                             "(ranges start at 0 and follow each other without gaps)")
        if hi is None and i != len(specs) - 1:
            raise ValueError(f"{spec!r}: only the last range may be open (N+)")
        out.append(Bucket(lo, hi))
    if not out or out[-1].hi is not None:
        raise ValueError("the last range must be open, e.g. \"8+\", so that every order "
                         "is counted")
    return out


def parse_format(text: str) -> Tuple[Dict[str, str], str]:
    """A tracefs ``format`` file -> ({field name: C type}, print fmt)."""
    fields: Dict[str, str] = {}
    print_fmt = ""
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("field:"):
            decl = line.split(";", 1)[0][len("field:"):].strip()
            m = re.match(r"^(.*?)([A-Za-z_][A-Za-z0-9_]*)(\[[^\]]*\])?$", decl)
            if m:
                fields[m.group(2)] = m.group(1).strip()
        elif line.startswith("print fmt:"):
            print_fmt = line[len("print fmt:"):].strip()
    return fields, print_fmt


def _eval_flag_expr(expr: str) -> Optional[int]:
    """The value of a flag expression as the kernel prints it in a format file, e.g.
    ``( unsigned long)(( gfp_t)((((1UL))) << (10)))``: casts dropped, integers and
    ``<< | & ~`` only."""
    e = re.sub(r"\(\s*(unsigned long|gfp_t|unsigned int|int)\s*\)", "", expr)
    e = re.sub(r"([0-9]+)(UL|ULL|U|L)\b", r"\1", e)
    if not re.fullmatch(r"[0-9xa-fA-F()\s<>|&~]*", e):
        return None
    try:
        return int(eval(e, {"__builtins__": {}}, {}))  # noqa: S307 - digits and operators only
    except (SyntaxError, ValueError, TypeError):
        return None


def flag_value(print_fmt: str, flag: str) -> Optional[int]:
    """The value of ``flag`` (e.g. ``__GFP_DIRECT_RECLAIM``) in a ``__print_flags`` table
    of ``print_fmt``; ``None`` when the table does not name it."""
    m = re.search(r"\{\s*([^{}]*?)\s*,\s*\"" + re.escape(flag) + r"\"\s*\}", print_fmt)
    return _eval_flag_expr(m.group(1)) if m else None


def symbol_value(print_fmt: str, symbol: str) -> Optional[int]:
    """The value of ``symbol`` in a ``__print_symbolic`` table (``{8, "success"}``)."""
    m = re.search(r"\{\s*(-?[0-9]+)\s*,\s*\"" + re.escape(symbol) + r"\"\s*\}", print_fmt)
    return int(m.group(1)) if m else None


def kernel_dev(devno: str) -> int:
    """A device number ``"major:minor"`` (mountinfo) as the kernel's internal ``dev_t``
    (MINORBITS = 20), the encoding of the tracepoint's ``s_dev``."""
    major, _, minor = devno.partition(":")
    return (int(major) << 20) | int(minor)


def pagecache_max_order(sys: str = "/sys", page_size: Optional[int] = None) -> int:
    """The largest order a page-cache folio can have here: the PMD order with THP, else
    8 (MAX_PAGECACHE_ORDER). Counting per order up to it keeps bytes exact."""
    page_size = page_size or os.sysconf("SC_PAGE_SIZE")
    try:
        pmd = int(read_text(f"{sys}/kernel/mm/transparent_hugepage/hpage_pmd_size"))
    except (OSError, ValueError):
        return PAGECACHE_MAX_ORDER_NO_THP
    order = 0
    while (page_size << (order + 1)) <= pmd:
        order += 1
    return order


def plan(formats: Dict[str, EventFormat], buckets: Sequence[Bucket], max_order: int,
         devices: Sequence[int] = ()) -> Tuple[List[CounterSpec], List[str]]:
    """The counters to open given the events this kernel has (``formats``), and one
    problem line per event or field missing."""
    specs: List[CounterSpec] = []
    problems: List[str] = []

    def need(event: str, *fields: str) -> Optional[EventFormat]:
        f = formats.get(event)
        if f is None:
            problems.append(f"tracepoint {event.replace('/', ':')}: not in this kernel; "
                            "its counters are absent")
            return None
        missing = [x for x in fields if x not in f.fields]
        if missing:
            problems.append(f"tracepoint {event.replace('/', ':')}: no field "
                            f"{', '.join(missing)} in its format on this kernel; its "
                            "counters are absent")
            return None
        return f

    f = need(EV_FILEMAP, "order")
    if f is not None:
        dev_field = "s_dev" if "s_dev" in f.fields else "dev" if "dev" in f.fields else None
        dev_clause = ""
        if devices:
            if dev_field is None:
                problems.append(f"tracepoint {EV_FILEMAP.replace('/', ':')}: no s_dev/dev "
                                "field: page-cache folios are counted for every device")
            else:
                dev_clause = "(" + " || ".join(f"{dev_field} == {d}" for d in devices) + ") && "
        for order in range(max_order + 1):
            cond = f"order >= {order}" if order == max_order else f"order == {order}"
            specs.append(CounterSpec(f"pagecache_order_{order}", EV_FILEMAP, dev_clause + cond))
    f = need(EV_TRY_COMPACT, "order")
    if f is not None:
        for b in buckets:
            specs.append(CounterSpec(f"compact_try_{b.name}", EV_TRY_COMPACT, b.filter()))
        bit = flag_value(f.print_fmt, "__GFP_DIRECT_RECLAIM")
        if "gfp_mask" not in f.fields or bit is None:
            problems.append(f"tracepoint {EV_TRY_COMPACT.replace('/', ':')}: no gfp_mask "
                            "field or no __GFP_DIRECT_RECLAIM in its format; "
                            "tp_compact_try_costly_direct is absent")
        else:
            specs.append(CounterSpec("compact_try_costly_direct", EV_TRY_COMPACT,
                                     f"order > {COSTLY_ORDER} && gfp_mask & {bit}"))
    f = need(EV_COMPACT_END)
    if f is not None:
        specs.append(CounterSpec("compact_end", EV_COMPACT_END, ""))
        success = symbol_value(f.print_fmt, "success")
        if "status" in f.fields and success is not None:
            specs.append(CounterSpec("compact_end_success", EV_COMPACT_END,
                                     f"status == {success}"))
        else:
            problems.append(f"tracepoint {EV_COMPACT_END.replace('/', ':')}: no status field "
                            "with a \"success\" value; tp_compact_end_success is absent")
    f = need(EV_COMPACT_DEFERRED, "order")
    if f is not None:
        specs.append(CounterSpec("compact_deferred", EV_COMPACT_DEFERRED, ""))
        specs.append(CounterSpec("compact_deferred_costly", EV_COMPACT_DEFERRED,
                                 f"order > {COSTLY_ORDER}"))
    f = need(EV_DIRECT_RECLAIM, "order")
    if f is not None:
        specs.append(CounterSpec("direct_reclaim", EV_DIRECT_RECLAIM, ""))
        specs.append(CounterSpec("direct_reclaim_costly", EV_DIRECT_RECLAIM,
                                 f"order > {COSTLY_ORDER}"))
    return specs, problems


def wire_counters(counts: Dict[str, int], buckets: Sequence[Bucket], page_size: int
                  ) -> Dict[str, int]:
    """Per-counter sums over CPUs (keys of ``plan``) -> the wire's ``tp_*`` counters:
    page-cache folios and bytes per bucket from the per-order counts."""
    out: Dict[str, int] = {}
    orders = {int(k.rsplit("_", 1)[1]): v for k, v in counts.items()
              if k.startswith("pagecache_order_")}
    if orders:
        for b in buckets:
            inside = [(o, n) for o, n in orders.items() if b.contains(o)]
            out[f"tp_pagecache_folios_{b.name}"] = sum(n for _, n in inside)
            out[f"tp_pagecache_bytes_{b.name}"] = sum(n * (page_size << o) for o, n in inside)
    for k, v in counts.items():
        if not k.startswith("pagecache_order_"):
            out["tp_" + k] = v
    return out


def read_event_format(tracefs: str, event: str) -> Optional[EventFormat]:
    """An event's id and format from tracefs; ``None`` when the kernel lacks the event.
    PermissionError propagates (the caller says what privilege is missing)."""
    base = os.path.join(tracefs, "events", event)
    try:
        ev_id = int(read_text(os.path.join(base, "id")).strip())
        fields, print_fmt = parse_format(read_text(os.path.join(base, "format")))
    except (FileNotFoundError, NotADirectoryError):
        return None
    return EventFormat(ev_id, fields, print_fmt)


def find_tracefs(candidates: Iterable[str] = TRACEFS_PATHS) -> Optional[str]:
    for path in candidates:
        if os.path.isdir(os.path.join(path, "events")):
            return path
        try:
            os.listdir(os.path.join(path, "events"))
            return path
        except PermissionError:
            raise
        except OSError:
            continue
    return None


def _not_mounted(candidates: Sequence[str]) -> "TracepointsUnavailable":
    return TracepointsUnavailable(
        f"tracefs not mounted (looked in {', '.join(candidates)}); mount it: "
        "mount -t tracefs nodev /sys/kernel/tracing (or in /etc/fstab)")


def export_event_files(dest: str, candidates: Sequence[str] = TRACEFS_PATHS) -> List[str]:
    """Copy the ``id`` and ``format`` of each of ``EVENTS`` from this host's tracefs into
    ``dest`` (``dest/events/<sys>/<name>/``, world-readable), so that an agent running as
    an unprivileged user with CAP_PERFMON can plan its counters without reading tracefs
    (mode 0700 root by default) and without a capability that reads every file
    (``agent.tracepoints.tracefs = dest``). Run as root before the agent starts, on every
    start: ids are fixed while a kernel runs, and a reboot into another kernel restarts
    the agent. Returns the events copied (an event this kernel lacks is left out, as
    the collector leaves it out). ``dest`` is replaced whole; on failure it is removed,
    so that a copy from an earlier kernel is never read. Raises TracepointsUnavailable."""
    import shutil
    import tempfile

    dest = os.path.abspath(dest)
    shutil.rmtree(dest, ignore_errors=True)
    try:
        source = find_tracefs(candidates)
    except PermissionError as e:
        raise TracepointsUnavailable(f"tracefs {e.filename}: permission denied for uid "
                                     f"{os.geteuid()}; copy the event files as root") from None
    if source is None:
        raise _not_mounted(candidates)
    parent = os.path.dirname(dest)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=os.path.basename(dest) + ".", dir=parent)
    copied = []
    try:
        os.chmod(staging, 0o755)
        for event in EVENTS:
            src = os.path.join(source, "events", event)
            try:
                files = {name: read_text(os.path.join(src, name)) for name in ("id", "format")}
            except (FileNotFoundError, NotADirectoryError):
                continue
            out = os.path.join(staging, "events", event)
            os.makedirs(out, mode=0o755, exist_ok=True)
            for name, text in files.items():
                fd = os.open(os.path.join(out, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL,
                             0o644)
                with os.fdopen(fd, "w") as f:
                    os.fchmod(f.fileno(), 0o644)        # not masked by the umask
                    f.write(text)
            copied.append(event)
        for root, dirs, _ in os.walk(staging):      # makedirs' mode is masked by the umask
            for d in dirs:
                os.chmod(os.path.join(root, d), 0o755)
        os.rename(staging, dest)
    except OSError as e:
        shutil.rmtree(staging, ignore_errors=True)
        raise TracepointsUnavailable(f"copying tracefs event files to {dest}: "
                                     f"{e.strerror} ({e.filename})") from None
    return copied


def online_cpus(sys: str = "/sys") -> List[int]:
    """``/sys/devices/system/cpu/online`` (``0-3,5``) as a list."""
    out: List[int] = []
    for part in read_text(f"{sys}/devices/system/cpu/online").strip().split(","):
        if not part:
            continue
        lo, _, hi = part.partition("-")
        out.extend(range(int(lo), int(hi or lo) + 1))
    return out


# -- perf_event_open ---------------------------------------------------------------------
# ctypes (~0.3 MiB resident) is loaded only when the collector opens its counters: the
# agent imports this module for its configuration defaults even when the collector is off.
_libc = None
_PerfEventAttr = None


def _libc_handle():
    """libc (syscall, ioctl) and the perf_event_attr structure, on first use."""
    global _libc, _PerfEventAttr
    if _libc is None:
        import ctypes

        class PerfEventAttr(ctypes.Structure):
            # PERF_ATTR_SIZE_VER0 (64 bytes): accepted by every kernel since 2.6.31.
            _fields_ = [("type", ctypes.c_uint32), ("size", ctypes.c_uint32),
                        ("config", ctypes.c_uint64), ("sample_period", ctypes.c_uint64),
                        ("sample_type", ctypes.c_uint64), ("read_format", ctypes.c_uint64),
                        ("flags", ctypes.c_uint64), ("wakeup_events", ctypes.c_uint32),
                        ("bp_type", ctypes.c_uint32), ("config1", ctypes.c_uint64)]

        libc = ctypes.CDLL(None, use_errno=True)
        libc.syscall.restype = ctypes.c_long
        libc.ioctl.restype = ctypes.c_int
        _libc, _PerfEventAttr = libc, PerfEventAttr
    return _libc


def _perf_event_open(type_: int, config: int, cpu: int, group_fd: int = -1,
                     read_format: int = 0, disabled: bool = True) -> int:
    """perf_event_open(2), system-wide on ``cpu``; OSError with the kernel's errno."""
    nr = SYSCALL_NR.get(platform.machine())
    if nr is None:
        raise TracepointsUnavailable(f"no perf_event_open syscall number known for "
                                     f"{platform.machine()}; the collector supports "
                                     f"{', '.join(sorted(SYSCALL_NR))}")
    libc = _libc_handle()
    import ctypes
    attr = _PerfEventAttr()
    attr.type = type_
    attr.size = ctypes.sizeof(_PerfEventAttr)
    attr.config = config
    attr.read_format = read_format
    attr.flags = PERF_ATTR_FLAG_DISABLED if disabled else 0
    fd = libc.syscall(ctypes.c_long(nr), ctypes.byref(attr), ctypes.c_int(-1),
                      ctypes.c_int(cpu), ctypes.c_int(group_fd),
                      ctypes.c_ulong(PERF_FLAG_FD_CLOEXEC))
    if fd < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return fd


def _ioctl(fd: int, request: int, arg, what: str = "") -> None:
    import ctypes
    if _libc_handle().ioctl(ctypes.c_int(fd), ctypes.c_ulong(request), arg) < 0:
        e = ctypes.get_errno()
        raise OSError(e, f"{what}{os.strerror(e)}")


def perf_open_group_leader(cpu: int) -> int:
    """The leader of ``cpu``'s group: a software event that counts nothing, disabled,
    whose one read(2) returns every member's count (``PERF_FORMAT_GROUP``). A group is
    scheduled as one, so the members count from the leader's ``perf_enable``; one read
    per CPU and interval instead of one per counter and CPU (2,016 reads on a 96-CPU
    host with the default buckets)."""
    return _perf_event_open(PERF_TYPE_SOFTWARE, PERF_COUNT_SW_DUMMY, cpu,
                            read_format=PERF_FORMAT_GROUP)


def perf_open_tracepoint(event_id: int, cpu: int, filter_: str = "", group_fd: int = -1) -> int:
    """One system-wide counting fd on ``cpu`` for tracepoint ``event_id`` with its filter
    set: a member of ``group_fd``'s group (counting once the leader is enabled), or alone
    (``group_fd`` -1: enabled here, read with ``read_count``). Raises OSError with the
    kernel's errno."""
    import ctypes
    fd = _perf_event_open(PERF_TYPE_TRACEPOINT, event_id, cpu, group_fd,
                          disabled=group_fd < 0)
    try:
        if filter_:
            _ioctl(fd, PERF_EVENT_IOC_SET_FILTER,
                   ctypes.create_string_buffer(filter_.encode()), f"filter {filter_!r}: ")
        if group_fd < 0:
            perf_enable(fd)
    except BaseException:
        os.close(fd)
        raise
    return fd


def perf_enable(fd: int) -> None:
    import ctypes
    _ioctl(fd, PERF_EVENT_IOC_ENABLE, ctypes.c_ulong(0))


def read_count(fd: int) -> int:
    return struct.unpack("=Q", os.read(fd, 8))[0]


def read_group(leader: int, members: int) -> Tuple[int, ...]:
    """The counts of a group's ``members`` in the order they joined (the leader's own
    count, first after ``nr``, left out)."""
    values = struct.unpack(f"={members + 2}Q", os.read(leader, 8 * (members + 2)))
    if values[0] != members + 1:
        raise OSError(errno.EIO, f"group of {values[0]} counters read, {members + 1} expected")
    return values[2:]


def _paranoid() -> str:
    try:
        return read_text("/proc/sys/kernel/perf_event_paranoid").strip()
    except OSError:
        return "?"


def _ensure_fd_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = len(os.listdir("/proc/self/fd")) + needed + 64
    if soft != resource.RLIM_INFINITY and soft < want:
        if hard != resource.RLIM_INFINITY and hard < want:
            raise TracepointsUnavailable(
                f"needs {needed} file descriptors (counters x CPUs) but RLIMIT_NOFILE's hard "
                f"limit is {hard}; raise it (systemd: LimitNOFILE={want}) or use fewer "
                "agent.tracepoints.order_buckets")
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


# -- the reader ----------------------------------------------------------------------------
class TracepointCounters:
    """The open counters of one host; ``read()`` returns cumulative ``tp_*`` counters
    (sums over CPUs since ``open()``). Thread-safe: the sampling thread and /metrics
    scrapes read the same fds."""

    def __init__(self, buckets: Sequence[Bucket] = (), devices: Sequence[int] = (),
                 tracefs: str = "", sys: str = "/sys"):
        self.buckets = list(buckets) or parse_buckets(DEFAULT_BUCKETS)
        self.devices = list(devices)
        self.tracefs = tracefs
        self.sys = sys
        self.page_size = os.sysconf("SC_PAGE_SIZE")
        # per CPU: (leader fd, member keys in the order they joined, member fds)
        self._groups: List[Tuple[int, Tuple[str, ...], List[int]]] = []
        self._keys: List[str] = []       # the counters open on at least one CPU
        self.specs: List[CounterSpec] = []
        self.problems: List[str] = []     # events or fields missing: the rest counts
        self.off_reason: Optional[str] = None  # set: nothing counts
        self._lock = threading.Lock()
        self._opened = False

    @property
    def on(self) -> bool:
        return self._opened and self.off_reason is None and bool(self._keys)

    def open(self) -> None:
        """Open every counter this kernel supports; on failure set ``off_reason`` (and
        log it once) instead of raising."""
        with self._lock:
            if self._opened:
                return
            self._opened = True
            try:
                self._open()
            except TracepointsUnavailable as e:
                self._close_fds()
                self.off_reason = str(e)
            for p in self.problems:
                log.warning("%s", p)
            if self.off_reason:
                log.warning("tracepoint counters are off: %s", self.off_reason)
            else:
                log.info("tracepoint counters on: %d counters x %d CPUs",
                         len(self._keys), len(self._groups))

    def _open(self) -> None:
        try:
            tracefs = self.tracefs or find_tracefs()
        except PermissionError as e:
            raise TracepointsUnavailable(
                f"tracefs {e.filename}: permission denied for uid {os.geteuid()}; the "
                f"event ids are read from tracefs: {TRACEFS_ACCESS_HINT}") from None
        if self.tracefs and not os.path.isdir(os.path.join(tracefs, "events")):
            raise TracepointsUnavailable(
                f"agent.tracepoints.tracefs {tracefs}: no events/ folder in it; it names "
                "tracefs or a copy of its event files (`foliowatch agent "
                "--export-tracefs-events DIR`, run as root before the agent starts: see "
                "its output for why it made none)")
        if tracefs is None:
            raise _not_mounted(TRACEFS_PATHS)
        formats: Dict[str, EventFormat] = {}
        for event in EVENTS:
            try:
                f = read_event_format(tracefs, event)
            except PermissionError as e:
                raise TracepointsUnavailable(
                    f"{e.filename}: permission denied for uid {os.geteuid()}; "
                    f"{TRACEFS_ACCESS_HINT}") from None
            if f is not None:
                formats[event] = f
        self.specs, self.problems = plan(formats, self.buckets,
                                         pagecache_max_order(self.sys, self.page_size),
                                         self.devices)
        if not self.specs:
            raise TracepointsUnavailable("none of the events is in this kernel: "
                                         + "; ".join(self.problems))
        cpus = online_cpus(self.sys)
        _ensure_fd_limit((len(self.specs) + 1) * len(cpus))
        leaders: Dict[int, int] = {}
        members: Dict[int, List[Tuple[str, int]]] = {}
        try:
            for cpu in cpus:
                try:
                    leaders[cpu] = perf_open_group_leader(cpu)
                except OSError as e:
                    if e.errno != errno.ENODEV:    # ENODEV: went offline since the listing
                        self._refused(GROUP_LEADER, e)
            for spec in self.specs:
                opened: List[Tuple[int, int]] = []
                try:
                    for cpu, leader in leaders.items():
                        try:
                            opened.append((cpu, perf_open_tracepoint(
                                formats[spec.event].id, cpu, spec.filter, leader)))
                        except OSError as e:
                            if e.errno == errno.ENODEV:
                                continue
                            raise
                except OSError as e:
                    for _cpu, fd in opened:
                        os.close(fd)
                    ev = spec.event.replace("/", ":")
                    if e.errno == errno.EINVAL and spec.filter:
                        # a field this kernel's filter code rejects: lose that counter only
                        self.problems.append(f"tracepoint {ev}: the kernel refused the filter "
                                             f"{spec.filter!r} ({e.strerror}); its counter "
                                             "is absent")
                        continue
                    if e.errno == errno.ENOENT:
                        self.problems.append(f"tracepoint {ev}: perf cannot open it "
                                             f"({e.strerror}); its counters are absent")
                        continue
                    self._refused(ev, e)
                for cpu, fd in opened:
                    members.setdefault(cpu, []).append((spec.key, fd))
                if opened:
                    self._keys.append(spec.key)
        finally:
            for cpu, leader in leaders.items():
                joined = members.get(cpu, [])
                self._groups.append((leader, tuple(k for k, _ in joined),
                                     [fd for _, fd in joined]))
        if not self._keys:
            raise TracepointsUnavailable("no counter could be opened: "
                                         + "; ".join(self.problems))
        for leader, _keys, _fds in self._groups:
            try:
                perf_enable(leader)
            except OSError as e:
                self._refused(GROUP_LEADER, e)

    @staticmethod
    def _refused(ev: str, e: OSError) -> None:
        """Raise what perf_event_open's refusal of ``ev`` means for the collector."""
        if e.errno in (errno.EACCES, errno.EPERM):
            raise TracepointsUnavailable(
                f"perf_event_open({ev}, system-wide): {os.strerror(e.errno)} for uid "
                f"{os.geteuid()} (kernel.perf_event_paranoid = {_paranoid()}); "
                f"{PRIVILEGE_HINT}") from None
        if e.errno in (errno.EMFILE, errno.ENFILE):
            raise TracepointsUnavailable(
                f"perf_event_open({ev}): out of file descriptors ({e}); raise "
                "LimitNOFILE or use fewer agent.tracepoints.order_buckets") from None
        raise TracepointsUnavailable(f"perf_event_open({ev}): {e}") from None

    def raw_counts(self) -> Dict[str, int]:
        """Per-counter sums over CPUs, by ``plan``'s keys: one read(2) per CPU."""
        with self._lock:
            totals = dict.fromkeys(self._keys, 0)
            alike: Dict[Tuple[str, ...], List[Tuple[int, ...]]] = {}
            for leader, keys, _fds in self._groups:
                alike.setdefault(keys, []).append(read_group(leader, len(keys)))
            for keys, rows in alike.items():    # one key order on every CPU, as a rule
                for key, total in zip(keys, map(sum, zip(*rows))):
                    totals[key] += total
            return totals

    def read(self) -> Dict[str, int]:
        if not self._opened:
            self.open()
        if not self.on:
            return {}
        return wire_counters(self.raw_counts(), self.buckets, self.page_size)

    def _close_fds(self) -> None:
        for leader, _keys, fds in self._groups:
            for fd in fds:
                os.close(fd)
            os.close(leader)
        self._groups, self._keys = [], []

    def close(self) -> None:
        with self._lock:
            self._close_fds()
