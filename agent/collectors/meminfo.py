"""``/proc/meminfo``: total and available memory (bytes).

Values are printed in kB (KiB, despite the unit's spelling); fields without a unit
(``HugePages_Total``) are counts.
"""

from __future__ import annotations

import re
from typing import Dict

from foliowatch.agent.collectors._io import read_lines

# meminfo field -> gauge name in the wire record
GAUGES = {"MemAvailable": "mem_available_bytes", "MemFree": "mem_free_bytes",
          "Dirty": "mem_dirty_bytes", "Writeback": "mem_writeback_bytes",
          "AnonHugePages": "mem_anon_huge_bytes", "FileHugePages": "mem_file_huge_bytes"}


# What a sample uses: MemTotal (the mem_bytes label) and the gauges' fields, found in one
# pass over the ~55 lines (anchored on the newline before each).
SHIPPED = ("MemTotal",) + tuple(GAUGES)
_SHIPPED_LINE = re.compile(r"\n(" + "|".join(SHIPPED) + r"):[ \t]*([0-9]+)( kB)?[ \t]*(?=\n)")


def parse_shipped(text: str) -> Dict[str, int]:
    """The ``SHIPPED`` fields of ``parse(text)`` (whole lines), in one pass."""
    return {name: int(value) * 1024 if kb else int(value)
            for name, value, kb in _SHIPPED_LINE.findall("\n" + text)}


def parse(text: str) -> Dict[str, int]:
    """``{field: value}`` with kB values converted to bytes."""
    out: Dict[str, int] = {}
    for line in text.splitlines():
        name, sep, rest = line.partition(":")
        if not sep:
            continue
        p = rest.split()
        if not p:
            continue
        try:
            value = int(p[0])
        except ValueError:
            continue
        if len(p) > 1 and p[1] == "kB":
            value *= 1024
        out[name.strip()] = value
    return out


def gauges(fields: Dict[str, int]) -> Dict[str, float]:
    return {g: float(fields[k]) for k, g in GAUGES.items() if k in fields}


def read(proc: str = "/proc") -> Dict[str, int]:
    return parse(read_lines(f"{proc}/meminfo"))


def read_shipped(proc: str = "/proc") -> Dict[str, int]:
    return parse_shipped(read_lines(f"{proc}/meminfo"))
