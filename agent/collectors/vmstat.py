"""``/proc/vmstat``: compaction, direct reclaim, kswapd, THP and writeback counters.

The kernel's own names are kept (``compact_stall``, ``allocstall_normal``, ...). Which
counters exist depends on the kernel version and its config (``allocstall_device`` only
with ZONE_DEVICE, ``thp_*`` only with CONFIG_TRANSPARENT_HUGEPAGE, ``compact_*`` only
with CONFIG_COMPACTION): a counter the kernel lacks stays absent, it never becomes 0.
"""

from __future__ import annotations

import re
from typing import Dict, List, Optional, Tuple

from foliowatch.agent.collectors._io import read_lines

# Cumulative event counters the agent ships as deltas. Prefixes select families so that
# counters added by newer kernels (``compact_daemon_*``, ``thp_swpout_fallback``, ...) are
# picked up without an agent release.
COUNTER_PREFIXES = (
    "compact_",        # direct and background compaction
    "allocstall_",     # direct reclaim entries, one per zone type
    "pgscan_",         # pages scanned by kswapd / direct reclaim / khugepaged
    "pgsteal_",        # pages reclaimed
    "kswapd_",         # kswapd wakeups and inode steals
    "thp_",            # THP (anon and file) allocations, fallbacks, splits
    "pageoutrun",
    "pgpgout", "pgpgin",
    "pgmajfault",
    "pgmigrate_",      # migrations done by compaction
    "drop_pagecache",
    "workingset_refault_file",
)
EXACT_COUNTERS = ("nr_dirtied", "nr_written")

# Some ``thp_*`` fields are gauges despite the prefix.
NOT_COUNTERS = frozenset(("thp_file_mapped",))

# Compaction and reclaim counters the write probe reports (schema ``probe`` object).
ALLOCSTALL_PREFIX = "allocstall_"


def parse(text: str) -> Dict[str, int]:
    """Every ``name value`` line of /proc/vmstat as ``{name: int}``.

    Malformed lines are skipped rather than failing the whole sample: a kernel that adds
    a field with an unexpected format must not blind the agent to the others.
    """
    out: Dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) != 2:
            continue
        try:
            out[parts[0]] = int(parts[1])
        except ValueError:
            continue
    return out


# The shipped counters' lines, found in one pass over the text (the file has ~180 lines
# and ~70 are shipped): a sample costs a regular-expression scan, not a split per line.
# Anchored on the newline before each line (a literal the scan jumps between).
_COUNTER_LINE = re.compile(
    r"\n((?:" + "|".join(re.escape(p) for p in COUNTER_PREFIXES) + r")[a-z0-9_]*|"
    + "|".join(re.escape(n) for n in EXACT_COUNTERS) + r") (-?[0-9]+)(?=\n)")


def parse_counters(text: str) -> Dict[str, int]:
    """``counters(parse(text))`` of whole lines (``text`` ends with a newline), in one
    pass: what the agent ships per sample.

    A kernel prints the same lines in the same order at every read (only the numbers
    change: the list of items is compiled in), so the layout of the last well-formed
    text is kept as one pattern: as many lines, the shipped ones at the same places
    with the same names, each ``name number``. A text it matches gives its numbers from
    that one match; anything else is scanned whole (and sets a new layout)."""
    layout = _layout
    if layout is not None:
        pattern, names = layout
        m = pattern.fullmatch(text)
        if m is not None:
            return dict(zip(names, map(int, m.groups())))
    out = scan_counters(text)
    _remember_layout(text, out)
    return out


def scan_counters(text: str) -> Dict[str, int]:
    """``parse_counters`` by a scan of the whole text."""
    return {name: int(value) for name, value in _COUNTER_LINE.findall("\n" + text)
            if name not in NOT_COUNTERS}


_NUMBER = "(-?[0-9]+)"
# (the pattern of the text's layout, the shipped names in its groups' order), or None
_layout: Optional[Tuple["re.Pattern[str]", List[str]]] = None


_WELL_FORMED = re.compile(r"(?:[a-z0-9_]+ -?[0-9]+\n)*")


def _remember_layout(text: str, shipped: Dict[str, int]) -> None:
    """Only the layout of a text whose every line is ``name number``: a line left out
    for its form must not stay left out once it is well formed."""
    global _layout
    _layout = None
    if not _WELL_FORMED.fullmatch(text):
        return
    parts, names = [], []
    for line in text.splitlines():
        name = line.partition(" ")[0]
        if name in shipped:
            parts.append(re.escape(name) + " " + _NUMBER + "\n")
            names.append(name)
        else:
            parts.append("[^\n]*\n")
    if names == list(shipped):
        _layout = (re.compile("".join(parts)), names)


def is_counter(name: str) -> bool:
    if name in NOT_COUNTERS:
        return False
    return name in EXACT_COUNTERS or name.startswith(COUNTER_PREFIXES)


def counters(fields: Dict[str, int]) -> Dict[str, int]:
    """The cumulative counters the agent ships, by the kernel's names."""
    return {k: v for k, v in fields.items() if is_counter(k)}


def allocstall_total(fields: Dict[str, int]) -> Optional[int]:
    """Sum of ``allocstall_*`` (direct reclaim entries), ``None`` on a kernel without them."""
    vals = [v for k, v in fields.items() if k.startswith(ALLOCSTALL_PREFIX)]
    return sum(vals) if vals else None


def read(proc: str = "/proc") -> Dict[str, int]:
    return parse(read_lines(f"{proc}/vmstat"))


def read_counters(proc: str = "/proc") -> Dict[str, int]:
    return parse_counters(read_lines(f"{proc}/vmstat"))
