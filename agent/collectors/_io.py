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
