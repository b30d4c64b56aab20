"""``/proc/pressure/{memory,io}``: pressure stall information (PSI) totals.

Each file has a ``some`` and (for memory and io) a ``full`` line; ``total=`` is the
cumulative stall time in microseconds, which the agent ships as a delta
(``psi_memory_some_us``, ``psi_memory_full_us``, ``psi_io_some_us``, ``psi_io_full_us``).
The ``avg10/60/300`` figures are kernel-side moving averages and are not shipped: the
pipeline computes shares from the totals over exact intervals.

PSI needs CONFIG_PSI and may be disabled at boot (``psi=0``): the file is then absent or
reading it fails with EOPNOTSUPP, and the counters are absent from the record.
"""

from __future__ import annotations

from typing import Dict, Optional
from foliowatch.agent.collectors._io import read_lines

RESOURCES = ("memory", "io")


def parse(text: str) -> Dict[str, int]:
    """``{"some": total_us, "full": total_us}`` (only the lines present)."""
    out: Dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if not parts or parts[0] not in ("some", "full"):
            continue
        for field in parts[1:]:
            key, _, value = field.partition("=")
            if key == "total":
                try:
                    out[parts[0]] = int(value)
                except ValueError:
                    pass
    return out


def counters(resource: str, totals: Dict[str, int]) -> Dict[str, int]:
    return {f"psi_{resource}_{kind}_us": v for kind, v in totals.items()}


def read(resource: str, proc: str = "/proc") -> Optional[Dict[str, int]]:
    """Totals for ``resource``, or ``None`` when this kernel has no PSI for it."""
    try:
        return parse(read_lines(f"{proc}/pressure/{resource}"))
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError:  # EOPNOTSUPP when booted with psi=0
        return None


def read_all(proc: str = "/proc") -> Dict[str, int]:
    out: Dict[str, int] = {}
    for resource in RESOURCES:
        totals = read(resource, proc)
        if totals:
            out.update(counters(resource, totals))
    return out
