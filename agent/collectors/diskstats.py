"""``/proc/diskstats``: bytes and IOs written per block device.

Columns (Documentation/admin-guide/iostats.rst): ``major minor name`` then reads
completed, reads merged, sectors read, ms reading, writes completed, writes merged,
sectors written, ms writing, IOs in progress, ms doing IO, weighted ms, and on 4.18+
four discard fields, on 5.5+ two flush fields. A "sector" here is always 512 bytes,
whatever the device's logical block size.
"""

from __future__ import annotations

import re
from typing import Dict, NamedTuple, Sequence, Tuple
from foliowatch.agent.collectors._io import read_lines

SECTOR_BYTES = 512


class DiskCounters(NamedTuple):
    major: int
    minor: int
    name: str
    write_ios: int
    write_merges: int
    write_bytes: int
    write_ms: int
    read_ios: int
    read_bytes: int


def parse(text: str) -> Dict[str, DiskCounters]:
    """``{device name: DiskCounters}``; lines with fewer than 11 fields are skipped."""
    out: Dict[str, DiskCounters] = {}
    for line in text.splitlines():
        p = line.split()
        if len(p) < 14:
            continue
        try:
            major, minor = int(p[0]), int(p[1])
            f = [int(x) for x in p[3:14]]
        except ValueError:
            continue
        out[p[2]] = DiskCounters(major, minor, p[2], write_ios=f[4], write_merges=f[5],
                                 write_bytes=f[6] * SECTOR_BYTES, write_ms=f[7],
                                 read_ios=f[0], read_bytes=f[2] * SECTOR_BYTES)
    return out


def by_devno(stats: Dict[str, DiskCounters]) -> Dict[str, DiskCounters]:
    """The same table keyed by ``"major:minor"`` (how /proc/self/mountinfo names devices)."""
    return {f"{d.major}:{d.minor}": d for d in stats.values()}


def mount_counters(d: DiskCounters) -> Dict[str, int]:
    """The cumulative per-mount counters of wire schema v1 for this device."""
    return {"write_bytes": d.write_bytes, "write_ios": d.write_ios}


# "major:minor" devices -> the pattern of their lines (a host watches one or two mounts
# but may have hundreds of block devices: partitions, loop devices, device-mapper)
_LINES: Dict[Tuple[str, ...], "re.Pattern[str]"] = {}


def _lines_of(devnos: Tuple[str, ...]) -> "re.Pattern[str]":
    pattern = _LINES.get(devnos)
    if pattern is None:
        numbers = "|".join(rf"{int(major)} +{int(minor)}"
                           for major, minor in (d.split(":") for d in devnos))
        pattern = _LINES[devnos] = re.compile(rf"^ *(?:{numbers}) [^\n]*\n", re.M)
    return pattern


def parse_devices(text: str, devnos: Sequence[str]) -> Dict[str, DiskCounters]:
    """``parse(text)`` of the devices ``devnos`` (``"major:minor"``) only: their lines
    are found by their numbers and only they are split."""
    if not devnos:
        return {}
    return parse("".join(_lines_of(tuple(devnos)).findall(text)))


def read(proc: str = "/proc") -> Dict[str, DiskCounters]:
    return parse(read_lines(f"{proc}/diskstats"))


def read_devices(devnos: Sequence[str], proc: str = "/proc") -> Dict[str, DiskCounters]:
    return parse_devices(read_lines(f"{proc}/diskstats"), devnos)
