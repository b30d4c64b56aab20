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
"""

from __future__ import annotations

import os
import re
from typing import Dict, Optional

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
            with open(os.path.join(base, fname)) as f:
                value = parse_choice(f.read())
        except OSError:
            continue
        if value:
            out[key] = value
    try:
        with open(os.path.join(base, "khugepaged/defrag")) as f:
            out["thp_khugepaged_defrag"] = f.read().strip()
    except OSError:
        pass
    return out


def read_mthp_counters(sys: str = "/sys") -> Dict[str, int]:
    """``{mthp_<size>kb_<stat>: value}`` for every size folder with a ``stats/`` folder."""
    base = os.path.join(sys, THP_DIR)
    out: Dict[str, int] = {}
    try:
        entries = os.listdir(base)
    except OSError:
        return out
    for entry in sorted(entries, key=lambda e: (len(e), e)):
        m = _SIZE_DIR.match(entry)
        if not m:
            continue
        for stat in MTHP_STATS:
            try:
                with open(os.path.join(base, entry, "stats", stat)) as f:
                    out[f"mthp_{m.group(1)}kb_{stat}"] = int(f.read())
            except (OSError, ValueError):
                continue
    return out
