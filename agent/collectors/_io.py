"""Reading small kernel files cheaply: one open, one read, one close, no buffered text
wrapper. The agent reads ~20 such files per sample on every host of the fleet, so the
per-file overhead of ``open().read()`` (a BufferedReader + TextIOWrapper each time) is
most of its CPU time."""

from __future__ import annotations

import os


def read_text(path: str) -> str:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = []
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks).decode("utf-8", "replace")


def read_lines(path: str) -> str:
    """``read_text`` of a file the kernel writes as whole lines (/proc tables, sysfs
    values: every line ends with a newline), without an unterminated last line: a read
    cut short ends in the middle of a line, and a counter cut in the middle of its
    number ("12" of "1234") would pass for a counter reset and come back as a huge
    delta the next interval. Absent, it is only absent for one interval."""
    text = read_text(path)
    return text[:text.rfind("\n") + 1]
