"""Reading small kernel files cheaply. The agent reads ~15 of them per sample on every
host of the fleet, so what each read costs around the kernel's own work counts:

- ``pread`` from offset 0 into a buffer reused by the thread until the end of the file,
  decoded once: no buffered-reader or text-wrapper objects per file; a short first read
  of a sysfs attribute or of a small procfs file is the whole file, so it is one read,
  not one and an empty one after it;
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
from typing import Dict

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
_INITIAL_BUFFER = 1 << 16
_local = threading.local()      # per thread: /metrics reads while the sampler does
_open_lock = threading.Lock()
_fds: Dict[str, int] = {}


def _buffer(at_least: int = 0) -> bytearray:
    buf = getattr(_local, "buf", None)
    if buf is None or len(buf) < at_least:
        buf = _local.buf = bytearray(max(_INITIAL_BUFFER, at_least))
    return buf


def _kept_fd(path: str) -> int:
    fd = _fds.get(path)
    if fd is None:
        with _open_lock:
            fd = _fds.get(path)
            if fd is None:
                fd = _fds[path] = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    return fd


def _forget(path: str, fd: int) -> None:
    with _open_lock:
        if _fds.get(path) == fd:
            del _fds[path]
            os.close(fd)


def _read_all(fd: int, whole_below: int = 0) -> bytes:
    """The file from offset 0 to its end. The kernel may return less than asked while
    more follows (a seq_file gives one page per read: tracefs formats, a long vmstat),
    so reading goes on until a read returns nothing, unless the first read returned
    fewer than ``whole_below`` bytes: then that was the whole file (see the callers)."""
    buf = _buffer()
    n = 0
    while True:
        if n == len(buf):
            bigger = _buffer(2 * len(buf))
            bigger[:n] = buf[:n]
            buf = bigger
        got = os.preadv(fd, [memoryview(buf)[n:]], n)
        if got == 0 or (n == 0 and got < whole_below):
            return bytes(memoryview(buf)[:n + got])
        n += got


def read_bytes(path: str) -> bytes:
    if path.startswith(_KERNEL_PREFIXES) and not path.startswith("/proc/self/"):
        fd = _kept_fd(path)
        whole_below = (_INITIAL_BUFFER if path.startswith(_SYSFS_ATTRIBUTES) else
                       _PROC_WHOLE_BELOW if path.startswith("/proc/") else 0)
        try:
            return _read_all(fd, whole_below)
        except OSError:
            _forget(path, fd)                   # gone or stale: retry once, opened anew
            fd = _kept_fd(path)
            try:
                return _read_all(fd, whole_below)
            except OSError:
                _forget(path, fd)
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
    text = read_text(path)
    return text[:text.rfind("\n") + 1]
