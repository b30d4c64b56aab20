"""XFS's own statistics: ``/sys/fs/xfs/stats/stats`` (all XFS filesystems together) and
``/sys/fs/xfs/<device>/stats/stats`` (one mounted filesystem, by block device name).

Same text format as the legacy ``/proc/fs/xfs/stat``: a tag, then numbers. The lines the
agent ships (fs/xfs/xfs_stats.h, Documentation/filesystems/xfs/xfs-stats):

- ``xpc <xstrat_bytes> <write_bytes> <read_bytes>``: bytes written to disk by the
  allocator (delayed allocation conversion), bytes written by write(2)/pwrite(2) into
  the page cache, and bytes read. node_exporter does not export this line.
- ``rw <write_calls> <read_calls>``: number of write and read system calls.
- ``xstrat <quick> <split>``: allocations of delayed-allocation extents.

``/sys/fs/xfs`` exists only while the xfs module is loaded; a host without it reports no
xfs_* counters.
"""

from __future__ import annotations

import os
from typing import Dict, List, Optional
from foliowatch.agent.collectors._io import read_text

# tag -> names of its fields, in order (xfs_ prefix added for the wire record).
FIELDS = {
    "xpc": ("xfs_xstrat_bytes", "xfs_write_bytes", "xfs_read_bytes"),
    "rw": ("xfs_write_calls", "xfs_read_calls"),
    "xstrat": ("xfs_xstrat_quick", "xfs_xstrat_split"),
}


def parse(text: str) -> Dict[str, List[int]]:
    """Every line as ``{tag: [numbers]}``."""
    out: Dict[str, List[int]] = {}
    for line in text.splitlines():
        p = line.split()
        if len(p) < 2:
            continue
        try:
            out[p[0]] = [int(x) for x in p[1:]]
        except ValueError:
            continue
    return out


def counters(stats: Dict[str, List[int]]) -> Dict[str, int]:
    """The shipped cumulative counters (absent when the kernel's file lacks the line)."""
    out: Dict[str, int] = {}
    for tag, names in FIELDS.items():
        values = stats.get(tag)
        if values is None:
            continue
        for name, value in zip(names, values):
            out[name] = value
    return out


def read(device: Optional[str] = None, sys: str = "/sys") -> Optional[Dict[str, List[int]]]:
    """Stats of one filesystem (``device``: e.g. ``nvme1n1``, ``dm-0``, ``loop0``) or of
    all XFS filesystems (``None``); ``None`` when the file does not exist."""
    path = (os.path.join(sys, "fs/xfs", device, "stats/stats") if device
            else os.path.join(sys, "fs/xfs/stats/stats"))
    try:
        return parse(read_text(path))
    except (FileNotFoundError, NotADirectoryError):
        return None
