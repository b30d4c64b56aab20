"""Scenario files: what a simulated fleet looks like, how its kernels roll out and which
changes are injected. Parsing and validation only; the physics is in ``model.py``.

A scenario is a TOML file (``simulator/scenarios/*.toml`` for the named ones), or the
same structure in YAML (``.yaml``/``.yml``)::

    name = "seed-iomap-arm64-xfs"
    start = "2026-11-02T00:00:00Z"  # simulated wall clock of the first interval (UTC)
    hours = 36                      # simulated duration
    interval_s = 10                 # agent sampling interval
    seed = 42

    [faults]                        # optional; defaults in FAULT_DEFAULTS
    lost = 0.001                    # share of records lost on the way (seq gap)

    [[fleet]]                       # one or more
    name = "payments-db"
    role = "postgres"
    workload = "database"           # a key of WORKLOADS
    uptime_days = [2, 60]           # initial uptime range of the hosts
      [[fleet.group]]               # hosts that share arch, page size, fs, kernel
      hosts = 300
      arch = "arm64"                # arm64 | x86_64
      page_size = 4096              # 4096 | 65536 (arm64 only)
      fs = "xfs"                    # xfs | ext4
      instance_types = ["m7g.16xlarge", "m8g.24xlarge"]   # keys of INSTANCE_TYPES
      kernel = "6.6.87-101"         # version-build; the release string gets the arch
                                    # suffix: 6.6.87-101.aarch64, ...aarch64+64k, ...x86_64

    [[rollout]]                     # a kernel rollout in cumulative waves
    fleet = "payments-db"
    kernel_from = "6.6.87-101"
    kernel_to = "6.12.40-63"
    start_h = 6
    waves = [0.01, 0.10, 0.50, 1.0]
    wave_interval_h = 6
    reboot_spread_min = 20          # a wave's hosts reboot spread over this many minutes
    prefer_instance_types = []      # canary hosts picked first from these: the hardware
                                    # confound (ground truth records it as kind "hardware")
    pause_after_wave = 2            # optional: hold after this wave (1-based) ...
    pause_h = 12                    # ... for this many hours
    rollback_h = 30                 # optional: hosts on kernel_to reboot back at this hour
    control_per_canary = 0          # optional: with the first wave, this many baseline hosts
                                    # per canary (rounded) reboot and keep kernel_from: a
                                    # control group in fresh memory states, like the
                                    # canaries' (picked from the last wave's hosts, matched
                                    # on instance type); 0: none

    [[change]]                      # injected effects, with ground truth
    kind = "regression"             # regression | improvement | load_shift
    fleet = "payments-db"           # filters (optional): fleet, arch, page_size, fs
    arch = "arm64"
    fs = "xfs"
    kernel = "6.12.40-63"           # kernel-tied kinds: applies to hosts running it
    write_throughput = 0.75         # ratio on buffered write throughput (and the probe)
    compact_stall = 8.0             # ratio on direct compaction stalls
    direct_reclaim = 3.0            # ratio on allocstall_* and pgscan_direct
    frag_onset = 0.15               # effect starts at this frag_unusable_1m ...
    frag_full = 0.45                # ... and is complete at this one (linear between)
    burst_share = 1.0               # optional: the effect hits only this share of the
                                    # intervals (a tail-only regression: most intervals
                                    # fine, a few far worse; the ratios above apply in them)

    # load_shift: at_h, until_h (optional), load (ratio on the fleet's write demand)

    [[kernel]]                      # optional: how a kernel's buffered writes allocate
    version = "6.12.40-63"          # page-cache folios (the tracepoint counters tp_*)
    mechanism = "affected"          # affected | fixed | unaffected (see MECHANISMS)
    arch = "arm64"                  # optional: only this arch's build (default: every
                                    # arch); kernels and builds not declared: unaffected

Every error names the key and says what to do.
"""

from __future__ import annotations

import copy
import datetime as dt
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from foliowatch.errors import ConfigError

try:  # 3.11+
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - the simulator needs 3.11, see cli.py
    import tomli as tomllib  # type: ignore

SCENARIO_DIR = Path(__file__).resolve().parent / "scenarios"
SCENARIO_SUFFIXES = (".toml", ".yaml", ".yml")

# name -> (arch, vCPUs, memory GiB, hardware generation speed factor for buffered writes).
# Newer generations write faster: a rollout that starts on them looks like an improvement.
INSTANCE_TYPES: Dict[str, Tuple[str, int, int, float]] = {
    "m6g.16xlarge": ("arm64", 64, 256, 0.82),
    "r6g.16xlarge": ("arm64", 64, 512, 0.82),
    "m7g.16xlarge": ("arm64", 64, 256, 1.00),
    "r7g.16xlarge": ("arm64", 64, 512, 1.00),
    "c7g.16xlarge": ("arm64", 64, 128, 1.00),
    "im4gn.16xlarge": ("arm64", 64, 256, 0.95),
    "m8g.24xlarge": ("arm64", 96, 384, 1.18),
    "r8g.24xlarge": ("arm64", 96, 768, 1.18),
    "m8g.48xlarge": ("arm64", 192, 768, 1.22),
    "m5.24xlarge": ("x86_64", 96, 384, 0.80),
    "m6i.24xlarge": ("x86_64", 96, 384, 0.92),
    "r6i.16xlarge": ("x86_64", 64, 512, 0.92),
    "c6i.16xlarge": ("x86_64", 64, 128, 0.92),
    "m7i.24xlarge": ("x86_64", 96, 384, 1.00),
    "r7i.24xlarge": ("x86_64", 96, 768, 1.00),
    "m7a.24xlarge": ("x86_64", 96, 384, 1.06),
    "m8i.24xlarge": ("x86_64", 96, 384, 1.15),
}

# Workload physics, per host at 64 vCPUs, load 1.0, before heterogeneity and noise.
#   write_mib_s: buffered write demand; frag_max: fragmentation the host settles at
#   (range); frag_tau_h: time constant of its build-up after boot (range; write-heavy
#   page-cache churn fragments memory in hours); compact_stall_s / allocstall_s: direct
#   compaction stalls and direct reclaim entries per second at full fragmentation;
#   diurnal: amplitude of the daily load cycle; weekend: weekend load factor;
#   io_kib: mean block-layer write size; probe_mib_s: write probe speed on a fresh host.
WORKLOADS: Dict[str, Dict[str, Any]] = {
    "database": dict(write_mib_s=160.0, frag_max=(0.55, 0.92), frag_tau_h=(0.5, 3.0),
                     compact_stall_s=1.5, allocstall_s=0.6, diurnal=0.35, weekend=0.75,
                     io_kib=128, probe_mib_s=900.0, mem_used=(0.55, 0.85)),
    "log_shipper": dict(write_mib_s=55.0, frag_max=(0.30, 0.70), frag_tau_h=(4.0, 24.0),
                        compact_stall_s=0.3, allocstall_s=0.15, diurnal=0.25, weekend=0.85,
                        io_kib=512, probe_mib_s=1000.0, mem_used=(0.30, 0.60)),
    "cache": dict(write_mib_s=3.0, frag_max=(0.50, 0.90), frag_tau_h=(8.0, 48.0),
                  compact_stall_s=0.4, allocstall_s=0.2, diurnal=0.45, weekend=0.7,
                  io_kib=32, probe_mib_s=950.0, mem_used=(0.70, 0.92)),
}

ARCH_SUFFIX = {"arm64": "aarch64", "x86_64": "x86_64"}
FS_KINDS = ("xfs", "ext4")
CHANGE_KINDS = ("regression", "improvement", "load_shift")
KERNEL_TIED_KINDS = ("regression", "improvement")
# How a kernel's buffered-write path allocates page-cache folios on XFS, the mechanism
# the tracepoint counters (tp_*) see; the physics is in ``mechanism.py``:
#   affected    asks for large folios (order > 3, PAGE_ALLOC_COSTLY_ORDER) with direct
#               reclaim: on fragmented memory a failed allocation falls into direct
#               compaction (the seed regression, 5d8edfb900d5 without the fix); the
#               large-folio share falls and costly direct compaction attempts rise
#   fixed       asks for large folios, but costly orders fail fast (__GFP_NORETRY, the
#               page allocator fix) and fall back to small folios: the share falls,
#               no costly direct compaction
#   unaffected  the write path asks for small folios only (order <= 3): neither moves
MECHANISMS = ("affected", "fixed", "unaffected")
_KERNEL_RE = re.compile(r"^[0-9]+\.[0-9]+\.[0-9]+-[0-9A-Za-z._]+$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")

FAULT_DEFAULTS: Dict[str, float] = {
    "lost": 0.001,                      # records lost in transit: a seq gap, no data
    "late": 0.002,                      # records delivered late ...
    "late_min_s": 30.0,
    "late_max_s": 900.0,                # ... by up to this many seconds
    "duplicate": 0.001,                 # records delivered twice (agent retry)
    "clock_skew_s": 2.0,                # std of a host's constant clock offset (clipped 3x)
    "noisy_neighbour_per_host_day": 0.03,   # episodes: writes 0.3-0.8x for 0.5-6 h
    "failing_disk_per_host_day": 0.002,     # episodes: writes decline to 0.1-0.5x
    "random_reboot_per_host_day": 0.01,     # maintenance/crash reboots, same kernel
    "agent_outage_per_host_day": 0.05,      # agent stopped 1-20 min: a gap, then one record
                                            # whose interval_s (and deltas) cover the gap
    "outlier_share": 0.0005,            # single intervals 5-50x off (stall storms)
    "probe_every_s": 1800.0,            # active write probe period per host (0: none)
    # the agent's denser probe in a host's first hours on a kernel release it had not run
    # before (agent.probe.new_kernel_every_s / new_kernel_hours; the shorter of it and
    # probe_every_s applies, as in the agent); 0 here: the fleet
    # probes every probe_every_s throughout, as before
    "probe_new_kernel_every_s": 0.0,
    "probe_new_kernel_h": 8.0,
}


class ScenarioError(ConfigError):
    """A scenario file is wrong; the message names the file, the key and what to do."""


@dataclass
class Group:
    hosts: int
    arch: str
    page_size: int
    fs: str
    instance_types: List[str]
    kernel: str


@dataclass
class Fleet:
    name: str
    role: str
    workload: str
    groups: List[Group]
    uptime_days: Tuple[float, float] = (2.0, 60.0)
    timezone_offset_h: float = 0.0

    @property
    def hosts(self) -> int:
        return sum(g.hosts for g in self.groups)


@dataclass
class Rollout:
    fleet: str
    kernel_from: str
    kernel_to: str
    start_h: float
    waves: List[float]
    wave_interval_h: float = 6.0
    reboot_spread_min: float = 20.0
    prefer_instance_types: List[str] = field(default_factory=list)
    pause_after_wave: Optional[int] = None
    pause_h: float = 0.0
    rollback_h: Optional[float] = None
    control_per_canary: float = 0.0


@dataclass
class Change:
    kind: str
    fleet: Optional[str] = None
    arch: Optional[str] = None
    page_size: Optional[int] = None
    fs: Optional[str] = None
    kernel: Optional[str] = None
    write_throughput: float = 1.0
    compact_stall: float = 1.0
    direct_reclaim: float = 1.0
    frag_onset: Optional[float] = None
    frag_full: Optional[float] = None
    burst_share: float = 1.0
    load: float = 1.0
    at_h: Optional[float] = None
    until_h: Optional[float] = None
    note: str = ""

    def matches(self, fleet: str, arch: str, page_size: int, fs: str) -> bool:
        return ((self.fleet is None or self.fleet == fleet)
                and (self.arch is None or self.arch == arch)
                and (self.page_size is None or self.page_size == page_size)
                and (self.fs is None or self.fs == fs))


@dataclass
class KernelMechanism:
    """A ``[[kernel]]`` table: the mechanism class of a kernel version's builds (all
    arches, or only ``arch``'s)."""
    version: str
    mechanism: str
    arch: Optional[str] = None


@dataclass
class Scenario:
    name: str
    description: str
    start: dt.datetime
    hours: float
    interval_s: float
    seed: int
    fleets: List[Fleet]
    rollouts: List[Rollout] = field(default_factory=list)
    changes: List[Change] = field(default_factory=list)
    faults: Dict[str, float] = field(default_factory=lambda: dict(FAULT_DEFAULTS))
    source: str = ""
    kernels: List[KernelMechanism] = field(default_factory=list)
    # alternative relations for the model (``physics.Physics``); None: the default ones.
    # Set in code (``physics.Physics.random(seed)``), not from scenario files.
    physics: Optional[Any] = None

    def mechanism(self, version: str, arch: str) -> str:
        """The ``MECHANISMS`` class of ``version``'s build for ``arch`` (``unaffected``
        unless a ``[[kernel]]`` table says otherwise)."""
        for k in self.kernels:
            if k.version == version and k.arch in (None, arch):
                return k.mechanism
        return "unaffected"

    @property
    def start_ts(self) -> float:
        return self.start.timestamp()

    @property
    def steps(self) -> int:
        return int(round(self.hours * 3600.0 / self.interval_s))

    @property
    def hosts(self) -> int:
        return sum(f.hosts for f in self.fleets)

    def fleet(self, name: str) -> Fleet:
        for f in self.fleets:
            if f.name == name:
                return f
        raise KeyError(name)


def kernel_release(version: str, arch: str, page_size: int) -> str:
    """The ``uname -r`` string a host reports: ``6.6.87-101.aarch64``, with ``+64k`` for
    a 64K-page arm64 kernel (the RHEL/Fedora convention), ``6.6.87-101.x86_64``."""
    rel = f"{version}.{ARCH_SUFFIX[arch]}"
    if page_size == 65536:
        rel += "+64k"
    return rel


# ---------------------------------------------------------------- parsing

class _Reader:
    """Reads one table, remembering the key path so every error can name it."""

    def __init__(self, src: str, path: str, table: Dict[str, Any]):
        self.src, self.path, self.t = src, path, table
        self.used: set = set()

    def where(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def fail(self, key: str, problem: str) -> None:
        raise ScenarioError(f"scenario {self.src}: {self.where(key)}: {problem}")

    def get(self, key: str, typ, default: Any = ..., check=None, hint: str = ""):
        self.used.add(key)
        if key not in self.t:
            if default is ...:
                self.fail(key, f"missing (required){'; ' + hint if hint else ''}")
            return default
        v = self.t[key]
        if typ is float and isinstance(v, int) and not isinstance(v, bool):
            v = float(v)
        if typ is not None and (not isinstance(v, typ) or isinstance(v, bool) and typ is not bool):
            tname = typ.__name__ if isinstance(typ, type) else "/".join(t.__name__ for t in typ)
            self.fail(key, f"expected {tname}, got {type(v).__name__} {v!r}"
                           f"{'; ' + hint if hint else ''}")
        if check is not None:
            problem = check(v)
            if problem:
                self.fail(key, f"{problem}{'; ' + hint if hint else ''}")
        return v

    def finish(self, known: Sequence[str]) -> None:
        for k in self.t:
            if k not in known:
                self.fail(k, f"unknown key; known keys here are {', '.join(known)}")


def _positive(v) -> Optional[str]:
    return None if v > 0 else f"must be > 0, got {v}"


def _non_negative(v) -> Optional[str]:
    return None if v >= 0 else f"must be >= 0, got {v}"


def _share(v) -> Optional[str]:
    return None if 0 <= v <= 1 else f"must be between 0 and 1, got {v}"


def _one_of(options):
    def check(v):
        return None if v in options else f"{v!r} is not one of {', '.join(map(str, options))}"
    return check


def _label(v) -> Optional[str]:
    return None if _NAME_RE.match(v) else (f"{v!r} must be 1-64 characters of "
                                           "A-Z a-z 0-9 . _ - (it becomes a metric label)")


def _kernel(v) -> Optional[str]:
    return None if _KERNEL_RE.match(v) else (f"{v!r} is not a kernel version-build such as "
                                             "'6.6.87-101' (the arch suffix is added per host)")


def _parse(doc: Dict[str, Any], src: str) -> Scenario:
    top = _Reader(src, "", doc)
    name = top.get("name", str, check=_label)
    description = top.get("description", str, "")
    start_s = top.get("start", (str, dt.datetime), "2026-11-02T00:00:00Z",
                      hint="give an ISO 8601 UTC time such as '2026-11-02T00:00:00Z'")
    if isinstance(start_s, dt.datetime):
        start = start_s if start_s.tzinfo else start_s.replace(tzinfo=dt.timezone.utc)
    else:
        try:
            start = dt.datetime.fromisoformat(start_s.replace("Z", "+00:00"))
        except ValueError:
            top.fail("start", f"{start_s!r} is not an ISO 8601 time; give e.g. "
                              "'2026-11-02T00:00:00Z'")
        if start.tzinfo is None:
            start = start.replace(tzinfo=dt.timezone.utc)
    hours = top.get("hours", float, check=_positive)
    interval = top.get("interval_s", float, 10.0,
                       check=lambda v: None if 1 <= v <= 3600 else f"must be in [1, 3600], got {v}")
    seed = top.get("seed", int, 0, check=_non_negative)

    faults = dict(FAULT_DEFAULTS)
    fr = _Reader(src, "faults", top.get("faults", dict, {}))
    for k, default in FAULT_DEFAULTS.items():
        check = _share if k in ("lost", "late", "duplicate", "outlier_share") else _non_negative
        faults[k] = fr.get(k, float, default, check=check)
    fr.finish(list(FAULT_DEFAULTS))
    if faults["late_max_s"] < faults["late_min_s"]:
        fr.fail("late_max_s", f"{faults['late_max_s']} is below late_min_s "
                              f"{faults['late_min_s']}; raise it")

    fleets: List[Fleet] = []
    fleet_tables = top.get("fleet", list, hint="add at least one [[fleet]] table")
    if not fleet_tables:
        top.fail("fleet", "empty; add at least one [[fleet]] table")
    for i, ft in enumerate(fleet_tables):
        r = _Reader(src, f"fleet[{i}]", ft if isinstance(ft, dict) else {})
        if not isinstance(ft, dict):
            r.fail("", "expected a table ([[fleet]])")
        fname = r.get("name", str, check=_label)
        r.path = f"fleet[{fname}]"
        role = r.get("role", str, check=_label)
        workload = r.get("workload", str, check=_one_of(tuple(WORKLOADS)))
        up = r.get("uptime_days", list, [2.0, 60.0])
        if len(up) != 2 or not all(isinstance(x, (int, float)) for x in up) or not 0 <= up[0] <= up[1]:
            r.fail("uptime_days", f"expected [min, max] days with 0 <= min <= max, got {up!r}")
        tz = r.get("timezone_offset_h", float, 0.0,
                   check=lambda v: None if -12 <= v <= 14 else f"must be in [-12, 14], got {v}")
        groups = []
        gts = r.get("group", list, hint="add [[fleet.group]] tables with hosts, arch, fs, kernel")
        if not gts:
            r.fail("group", "empty; add at least one [[fleet.group]]")
        for j, gt in enumerate(gts):
            g = _Reader(src, f"{r.path}.group[{j}]", gt)
            hosts = g.get("hosts", int, check=_positive)
            arch = g.get("arch", str, check=_one_of(tuple(ARCH_SUFFIX)))
            page = g.get("page_size", int, 4096, check=_one_of((4096, 65536)))
            if page == 65536 and arch != "arm64":
                g.fail("page_size", "65536-byte pages exist only on arm64 here; use 4096")
            fs = g.get("fs", str, check=_one_of(FS_KINDS))
            its = g.get("instance_types", list)
            if not its:
                g.fail("instance_types", "empty; name at least one instance type")
            for it in its:
                if it not in INSTANCE_TYPES:
                    g.fail("instance_types", f"{it!r} is unknown; known: "
                                             f"{', '.join(sorted(INSTANCE_TYPES))}")
                if INSTANCE_TYPES[it][0] != arch:
                    g.fail("instance_types", f"{it!r} is {INSTANCE_TYPES[it][0]}, but the group "
                                             f"is {arch}; pick a {arch} type")
            kernel = g.get("kernel", str, check=_kernel)
            g.finish(("hosts", "arch", "page_size", "fs", "instance_types", "kernel"))
            groups.append(Group(hosts, arch, page, fs, list(its), kernel))
        r.finish(("name", "role", "workload", "uptime_days", "timezone_offset_h", "group"))
        if any(f.name == fname for f in fleets):
            r.fail("name", f"fleet {fname!r} defined twice; fleet names must be unique")
        fleets.append(Fleet(fname, role, workload, groups, (float(up[0]), float(up[1])), tz))
    fleet_names = [f.name for f in fleets]

    rollouts: List[Rollout] = []
    for i, rt in enumerate(top.get("rollout", list, [])):
        r = _Reader(src, f"rollout[{i}]", rt)
        fl = r.get("fleet", str, check=_one_of(fleet_names))
        kf = r.get("kernel_from", str, check=_kernel)
        kt = r.get("kernel_to", str, check=_kernel)
        if kf == kt:
            r.fail("kernel_to", "equals kernel_from; a rollout needs a new kernel")
        fleet_kernels = {g.kernel for g in fleets[fleet_names.index(fl)].groups}
        if kf not in fleet_kernels:
            r.fail("kernel_from", f"{kf!r} runs on no group of fleet {fl!r} "
                                  f"(its kernels: {', '.join(sorted(fleet_kernels))})")
        start_h = r.get("start_h", float, check=_non_negative)
        waves = r.get("waves", list, [0.01, 0.10, 0.50, 1.0])
        if (not waves or not all(isinstance(w, (int, float)) and 0 < w <= 1 for w in waves)
                or any(b <= a for a, b in zip(waves, waves[1:]))):
            r.fail("waves", f"expected increasing cumulative fractions in (0, 1], e.g. "
                            f"[0.01, 0.1, 0.5, 1.0]; got {waves!r}")
        wi = r.get("wave_interval_h", float, 6.0, check=_positive)
        spread = r.get("reboot_spread_min", float, 20.0, check=_non_negative)
        prefer = r.get("prefer_instance_types", list, [])
        for it in prefer:
            if it not in INSTANCE_TYPES:
                r.fail("prefer_instance_types", f"{it!r} is unknown; known: "
                                                f"{', '.join(sorted(INSTANCE_TYPES))}")
        paw = r.get("pause_after_wave", int, None,
                    check=lambda v: None if 1 <= v < len(waves) else
                    f"must name a wave 1..{len(waves) - 1} (not the last), got {v}")
        pause_h = r.get("pause_h", float, 0.0, check=_non_negative)
        rb = r.get("rollback_h", float, None, check=_non_negative)
        if rb is not None and rb <= start_h:
            r.fail("rollback_h", f"{rb} is not after start_h {start_h}; a rollback follows a rollout")
        control = r.get("control_per_canary", float, 0.0,
                        check=lambda v: None if 0 <= v < math.inf else
                        f"must be a finite number >= 0, got {v}",
                        hint="baseline hosts per canary that reboot with the first wave "
                             "and keep kernel_from; 0 for none")
        r.finish(("fleet", "kernel_from", "kernel_to", "start_h", "waves", "wave_interval_h",
                  "reboot_spread_min", "prefer_instance_types", "pause_after_wave", "pause_h",
                  "rollback_h", "control_per_canary"))
        rollouts.append(Rollout(fl, kf, kt, start_h, [float(w) for w in waves], wi, spread,
                                list(prefer), paw, pause_h, rb, control))

    changes: List[Change] = []
    for i, ct in enumerate(top.get("change", list, [])):
        r = _Reader(src, f"change[{i}]", ct)
        kind = r.get("kind", str, check=_one_of(CHANGE_KINDS))
        c = Change(kind=kind)
        c.fleet = r.get("fleet", str, None, check=_one_of(fleet_names))
        c.arch = r.get("arch", str, None, check=_one_of(tuple(ARCH_SUFFIX)))
        c.page_size = r.get("page_size", int, None, check=_one_of((4096, 65536)))
        c.fs = r.get("fs", str, None, check=_one_of(FS_KINDS))
        c.note = r.get("note", str, "")
        if kind in KERNEL_TIED_KINDS:
            c.kernel = r.get("kernel", str, check=_kernel,
                             hint=f"a {kind} is tied to the kernel that causes it")
            c.write_throughput = r.get("write_throughput", float, 1.0, check=_positive)
            c.compact_stall = r.get("compact_stall", float, 1.0, check=_positive)
            c.direct_reclaim = r.get("direct_reclaim", float, 1.0, check=_positive)
            c.frag_onset = r.get("frag_onset", float, None, check=_share)
            c.frag_full = r.get("frag_full", float, None, check=_share)
            if (c.frag_onset is None) != (c.frag_full is None):
                r.fail("frag_full", "give frag_onset and frag_full together (or neither: "
                                    "the effect then ignores fragmentation)")
            if c.frag_onset is not None and c.frag_full <= c.frag_onset:
                r.fail("frag_full", f"{c.frag_full} must be above frag_onset {c.frag_onset}")
            c.burst_share = r.get("burst_share", float, 1.0, check=lambda v: None if 0 < v <= 1
                                  else f"must be in (0, 1], got {v}")
            if (c.write_throughput, c.compact_stall, c.direct_reclaim) == (1.0, 1.0, 1.0):
                r.fail("write_throughput", "no effect given; set write_throughput, "
                                           "compact_stall or direct_reclaim")
            known = ("kind", "fleet", "arch", "page_size", "fs", "note", "kernel",
                     "write_throughput", "compact_stall", "direct_reclaim", "frag_onset",
                     "frag_full", "burst_share")
        else:  # load_shift
            c.at_h = r.get("at_h", float, check=_non_negative)
            c.until_h = r.get("until_h", float, None, check=_non_negative)
            if c.until_h is not None and c.until_h <= c.at_h:
                r.fail("until_h", f"{c.until_h} must be after at_h {c.at_h}")
            c.load = r.get("load", float, check=_positive)
            known = ("kind", "fleet", "arch", "page_size", "fs", "note", "at_h", "until_h", "load")
        r.finish(known)
        changes.append(c)

    kernels = _parse_kernels(top, src, fleets, rollouts, changes)
    top.finish(("name", "description", "start", "hours", "interval_s", "seed", "faults",
                "fleet", "rollout", "change", "kernel"))
    return Scenario(name, description, start, hours, interval, seed, fleets, rollouts,
                    changes, faults, src, kernels)


def _parse_kernels(top: _Reader, src: str, fleets: List[Fleet], rollouts: List[Rollout],
                   changes: List[Change]) -> List[KernelMechanism]:
    known = ({g.kernel for f in fleets for g in f.groups}
             | {k for r in rollouts for k in (r.kernel_from, r.kernel_to)}
             | {c.kernel for c in changes if c.kernel})
    kernels: List[KernelMechanism] = []
    for i, kt in enumerate(top.get("kernel", list, [])):
        r = _Reader(src, f"kernel[{i}]", kt if isinstance(kt, dict) else {})
        if not isinstance(kt, dict):
            r.fail("", "expected a table ([[kernel]] with version and mechanism)")
        version = r.get("version", str, check=_kernel)
        r.path = f"kernel[{version}]"
        if version not in known:
            r.fail("version", f"{version!r} runs nowhere: no group, rollout or change names "
                              f"it (kernels here: {', '.join(sorted(known))}); fix the spelling")
        mechanism = r.get("mechanism", str, check=_one_of(MECHANISMS),
                          hint="affected: costly-order direct compaction on fragmented memory; "
                               "fixed: the allocator fix; unaffected: small folios only")
        arch = r.get("arch", str, None, check=_one_of(tuple(ARCH_SUFFIX)))
        r.finish(("version", "mechanism", "arch"))
        for k in kernels:
            if k.version == version and (k.arch is None or arch is None or k.arch == arch):
                r.fail("arch", f"the {arch or 'every-arch'} build of {version} is already "
                               f"declared ({k.mechanism}, arch {k.arch or 'all'}); declare "
                               "each build once, with distinct arch keys")
        kernels.append(KernelMechanism(version, mechanism, arch))
    return kernels


def list_scenarios() -> List[str]:
    """Names of the scenarios shipped in ``simulator/scenarios/``."""
    return sorted(p.stem for p in SCENARIO_DIR.glob("*.toml"))


def load_scenario(name_or_path: Union[str, Path, Scenario], *, hosts: Optional[int] = None,
                  hosts_scale: Optional[float] = None, hours: Optional[float] = None,
                  interval_s: Optional[float] = None, seed: Optional[int] = None,
                  faults: Optional[Dict[str, float]] = None,
                  start: Union[None, str, float, dt.datetime] = None) -> Scenario:
    """A named scenario (see ``list_scenarios()``) or a TOML file, with overrides:
    ``hosts`` (total host count; every group scaled in proportion, at least 1 each),
    ``hosts_scale``, ``hours``, ``interval_s``, ``seed``, ``faults`` (merged), ``start``
    (``"now"``, an ISO 8601 time, Unix seconds or a datetime: when the simulated clock
    starts; rollout and change times stay relative to it)."""
    if isinstance(name_or_path, Scenario):
        sc = copy.deepcopy(name_or_path)
    else:
        p = Path(name_or_path)
        if not (p.suffix in SCENARIO_SUFFIXES or p.exists()):
            p = SCENARIO_DIR / f"{name_or_path}.toml"
            if not p.exists():
                raise ScenarioError(f"scenario {name_or_path!r}: no such named scenario and no "
                                    f"such file; named scenarios: {', '.join(list_scenarios())}")
        try:
            text = p.read_text(encoding="utf-8")
        except OSError as e:
            raise ScenarioError(f"scenario {p}: cannot read ({e.strerror})") from None
        if p.suffix in (".yaml", ".yml"):
            import yaml
            try:
                doc = yaml.safe_load(text)
            except yaml.YAMLError as e:
                raise ScenarioError(f"scenario {p}: not valid YAML ({e})") from None
            if not isinstance(doc, dict):
                raise ScenarioError(f"scenario {p}: expected a mapping at the top (name, hours, "
                                    f"fleet, ...), got {type(doc).__name__}")
        else:
            try:
                doc = tomllib.loads(text)
            except tomllib.TOMLDecodeError as e:
                raise ScenarioError(f"scenario {p}: not valid TOML ({e})") from None
        sc = _parse(doc, str(p))
    if hosts is not None:
        if hosts <= 0:
            raise ScenarioError(f"override hosts: must be > 0, got {hosts}")
        hosts_scale = hosts / sc.hosts
    if hosts_scale is not None:
        if hosts_scale <= 0:
            raise ScenarioError(f"override hosts_scale: must be > 0, got {hosts_scale}")
        for f in sc.fleets:
            for g in f.groups:
                g.hosts = max(1, int(round(g.hosts * hosts_scale)))
    if hours is not None:
        if hours <= 0:
            raise ScenarioError(f"override hours: must be > 0, got {hours}")
        sc.hours = float(hours)
    if interval_s is not None:
        if not 1 <= interval_s <= 3600:
            raise ScenarioError(f"override interval_s: must be in [1, 3600], got {interval_s}")
        sc.interval_s = float(interval_s)
    if seed is not None:
        sc.seed = int(seed)
    if start is not None:
        sc.start = _parse_start(start)
    if faults:
        for k, v in faults.items():
            if k not in FAULT_DEFAULTS:
                raise ScenarioError(f"override faults.{k}: unknown; known: {', '.join(FAULT_DEFAULTS)}")
            sc.faults[k] = float(v)
    return sc


def _parse_start(start: Union[str, float, dt.datetime]) -> dt.datetime:
    if isinstance(start, dt.datetime):
        return start if start.tzinfo else start.replace(tzinfo=dt.timezone.utc)
    if isinstance(start, (int, float)) and not isinstance(start, bool):
        return dt.datetime.fromtimestamp(float(start), dt.timezone.utc)
    if isinstance(start, str):
        if start == "now":
            # whole seconds, so that interval boundaries stay round numbers
            return dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
        try:
            t = dt.datetime.fromisoformat(start.replace("Z", "+00:00"))
        except ValueError:
            pass
        else:
            return t if t.tzinfo else t.replace(tzinfo=dt.timezone.utc)
    raise ScenarioError(f"override start: expected 'now', an ISO 8601 time such as "
                        f"'2026-11-02T00:00:00Z' or Unix seconds, got {start!r}")
