"""``/sys/kernel/mm/transparent_hugepage/``: THP settings and per-size (mTHP) counters.

Settings files show every choice with the active one in brackets
(``always [madvise] never``); the agent ships the active choice as a string setting
(``thp_enabled``, ``thp_defrag``, ``thp_shmem_enabled``) so the pipeline can split cohorts
by them. ``khugepaged/defrag`` is 0/1.

Since 6.8/6.9 each supported folio size has a ``hugepages-<N>kB/`` folder with a
``stats/`` folder of cumulative counters. They cover anonymous memory and shmem only, not
page-cache (XFS) folios; the agent still ships allocations and fallbacks per size
(``mthp_<N>kb_anon_fault_alloc`` ...) because anonymous fallbacks rise with the same
fragmentation that makes large page-cache folios fail. Older kernels have no such
folders and these counters are absent.

Only *active* sizes are read (``active_sizes``): those whose anon ``enabled`` or
``shmem_enabled`` is not ``never`` (``inherit`` resolves to the global setting). A size
that is off allocates nothing, so its counters cannot move; skipping it saves ~40 file
reads per sample on a 4 KiB-page host, where 9+ sizes exist and usually one is on. The
agent refreshes the active set every minute.
"""

from __future__ import annotations

import os
import re
from typing import Dict, List, Optional, Tuple

from foliowatch.agent.collectors._io import read_lines, read_text

THP_DIR = "kernel/mm/transparent_hugepage"
SETTINGS = {"enabled": "thp_enabled", "defrag": "thp_defrag",
            "shmem_enabled": "thp_shmem_enabled"}
# The per-size stats shipped: bounded so that 13 sizes x stats stay well inside the wire
# schema's 256 counters.
MTHP_STATS = ("anon_fault_alloc", "anon_fault_fallback", "shmem_alloc", "shmem_fallback",
              "split_failed")
_SIZE_DIR = re.compile(r"^hugepages-([0-9]+)kB$")


def parse_choice(text: str) -> Optional[str]:
    """The bracketed choice of a settings file; the whole value when there are no
    brackets (``khugepaged/defrag`` is a plain number)."""
    text = text.strip()
    m = re.search(r"\[([^\]]+)\]", text)
    if m:
        return m.group(1)
    return text or None


def read_settings(sys: str = "/sys") -> Dict[str, str]:
    base = os.path.join(sys, THP_DIR)
    out: Dict[str, str] = {}
    for fname, key in SETTINGS.items():
        try:
            value = parse_choice(read_text(os.path.join(base, fname)))
        except OSError:
            continue
        if value:
            out[key] = value
    try:
        out["thp_khugepaged_defrag"] = read_text(os.path.join(base, "khugepaged/defrag")).strip()
    except OSError:
        pass
    return out


def _choice_of(path: str, default: str) -> str:
    try:
        return parse_choice(read_text(path)) or default
    except OSError:
        return default


def size_dirs(sys: str = "/sys") -> List[Tuple[int, str]]:
    """``[(size_kb, folder)]`` of every per-size folder that has ``stats/``, by size."""
    base = os.path.join(sys, THP_DIR)
    try:
        entries = os.listdir(base)
    except OSError:
        return []
    out = []
    for entry in entries:
        m = _SIZE_DIR.match(entry)
        if m and os.path.isdir(os.path.join(base, entry, "stats")):
            out.append((int(m.group(1)), os.path.join(base, entry)))
    return sorted(out)


def active_sizes(sys: str = "/sys", sizes: Optional[List[Tuple[int, str]]] = None
                 ) -> List[Tuple[int, str]]:
    """The active ones of ``sizes`` (default: ``size_dirs(sys)``; the kernel creates
    them at boot, so a caller may list them once)."""
    base = os.path.join(sys, THP_DIR)
    anon_global = _choice_of(os.path.join(base, "enabled"), "never")
    shmem_global = _choice_of(os.path.join(base, "shmem_enabled"), "never")
    out = []
    for kb, folder in size_dirs(sys) if sizes is None else sizes:
        anon = _choice_of(os.path.join(folder, "enabled"), "never")
        shmem = _choice_of(os.path.join(folder, "shmem_enabled"), "never")
        if anon == "inherit":
            anon = anon_global
        if shmem == "inherit":
            shmem = shmem_global
        if anon != "never" or shmem not in ("never", "deny"):
            out.append((kb, folder))
    return out


def mthp_files(sizes: List[Tuple[int, str]]) -> List[Tuple[str, str]]:
    """``[(counter name, stats file)]`` of ``sizes`` (from ``active_sizes``), computed
    when the sizes are, not per sample."""
    return [(f"mthp_{kb}kb_{stat}", os.path.join(folder, "stats", stat))
            for kb, folder in sizes for stat in MTHP_STATS]


def read_files(files: List[Tuple[str, str]]) -> Dict[str, int]:
    """``{name: value}`` of one-number files; a file absent or unreadable is left out."""
    out: Dict[str, int] = {}
    for name, path in files:
        try:
            out[name] = int(read_lines(path))
        except (OSError, ValueError):
            continue
    return out


def read_mthp_counters(sys: str = "/sys", sizes: Optional[List[Tuple[int, str]]] = None
                       ) -> Dict[str, int]:
    """``{mthp_<size>kb_<stat>: value}`` for ``sizes`` (default: every size folder)."""
    return read_files(mthp_files(size_dirs(sys) if sizes is None else sizes))
