"""Reading small kernel files cheaply. The agent reads ~15 of them per sample on every
host of the fleet, so what each read costs around the kernel's own work counts:

- ``pread`` from offset 0 until the end of the file, decoded once: no buffered-reader
  or text-wrapper objects per file; a short first read of a sysfs attribute or of a
  small procfs file is the whole file, so it is one read, not one and an empty one
  after it;
- files of procfs and sysfs (``/proc/...``, ``/sys/...``) stay open between samples:
  the kernel generates their text anew at every read from offset 0, so the open and
  close of each read (a third of its cost) are paid once. A file that went away (a
  filesystem unmounted: its sysfs folder is gone) fails its read; it is closed and
  opened again, which then fails as a missing file does. Other paths (fixture trees in
  tests) are opened per read, as their contents may be replaced.
"""

from __future__ import annotations

import os
import threading
from typing import Dict, Optional, Tuple

_KERNEL_PREFIXES = ("/proc/", "/sys/")
# sysfs attributes read every sample (THP counters, XFS stats): each is made whole by
# one show() call, so one read returns all of it; not other filesystems under /sys
# (tracefs formats are seq_files, given one page per read)
_SYSFS_ATTRIBUTES = ("/sys/kernel/mm/", "/sys/fs/xfs/")
# A procfs seq_file read fills one page-sized kernel buffer with whole lines and stops
# only when the next line does not fit: a first read that returns less than half a page
# (of lines shorter than that) is the whole file. meminfo, pressure, uptime, buddyinfo
# and a short diskstats are; vmstat (~4 KiB) is read on to the end.
_PROC_WHOLE_BELOW = os.sysconf("SC_PAGE_SIZE") // 2
# One read's size: more than a seq_file's page or a sysfs attribute gives at once. The
# bytes object of this size that ``os.pread`` makes is shrunk to what was read.
_READ_BYTES = 1 << 16
_open_lock = threading.Lock()
# kept-open kernel files: path -> (fd, a first read shorter than this is the whole file)
_fds: Dict[str, Tuple[int, int]] = {}


def _whole_below(path: str) -> int:
    return (_READ_BYTES if path.startswith(_SYSFS_ATTRIBUTES) else
            _PROC_WHOLE_BELOW if path.startswith("/proc/") else 0)


def _kept(path: str) -> Optional[Tuple[int, int]]:
    """The kept-open file of ``path``, opened now if it is a kernel file not open yet;
    ``None`` for other paths."""
    kept = _fds.get(path)
    if kept is None and path.startswith(_KERNEL_PREFIXES) and not path.startswith("/proc/self/"):
        with _open_lock:
            kept = _fds.get(path)
            if kept is None:
                kept = _fds[path] = (os.open(path, os.O_RDONLY | os.O_CLOEXEC),
                                     _whole_below(path))
    return kept


def _forget(path: str, kept: Tuple[int, int]) -> None:
    with _open_lock:
        if _fds.get(path) == kept:
            del _fds[path]
            os.close(kept[0])


def _read_all(fd: int, whole_below: int = 0) -> bytes:
    """The file from offset 0 to its end. The kernel may return less than asked while
    more follows (a seq_file gives one page per read: tracefs formats, a long vmstat),
    so reading goes on until a read returns nothing, unless the first read returned
    fewer than ``whole_below`` bytes: then that was the whole file (see the callers)."""
    data = os.pread(fd, _READ_BYTES, 0)
    if len(data) < whole_below or not data:
        return data
    return _read_on(fd, data)


def _read_on(fd: int, first: bytes) -> bytes:
    """``first`` (the file's first bytes, not empty) and the rest, read until a read
    returns nothing."""
    chunks = [first]
    offset = len(first)
    while True:
        more = os.pread(fd, _READ_BYTES, offset)
        if not more:
            return b"".join(chunks)
        chunks.append(more)
        offset += len(more)


def read_bytes(path: str) -> bytes:
    # The per-sample case (a kept-open file whose first read is all of it) runs here
    # without further calls: the agent reads ~13 files per sample, on every host.
    kept = _fds.get(path)
    if kept is not None:
        try:
            data = os.pread(kept[0], _READ_BYTES, 0)
            return data if len(data) < kept[1] or not data else _read_on(kept[0], data)
        except OSError:
            _forget(path, kept)                 # gone or stale: retry once, opened anew
    kept = _kept(path)
    if kept is not None:
        try:
            return _read_all(*kept)
        except OSError:
            _forget(path, kept)
            raise
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return _read_all(fd)
    finally:
        os.close(fd)


def read_text(path: str) -> str:
    return read_bytes(path).decode("utf-8", "replace")


def read_lines(path: str) -> str:
    """``read_text`` of a file the kernel writes as whole lines (/proc tables, sysfs
    values: every line ends with a newline), without an unterminated last line: a read
    cut short ends in the middle of a line, and a counter cut in the middle of its
    number ("12" of "1234") would pass for a counter reset and come back as a huge
    delta the next interval. Absent, it is only absent for one interval."""
    text = read_bytes(path).decode("utf-8", "replace")
    return text[:text.rfind("\n") + 1]
