"""Durable atomic writes (``foliowatch.files``): a reader sees the old bytes or the new
ones, never a mix or a temporary file; the system calls, watched with strace, are the
durable sequence: write, fsync of the temporary file, rename over the target, fsync of
the target's folder."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from pathlib import Path
from typing import List

import pytest

from foliowatch.files import atomic_write

pytestmark = pytest.mark.agent39

SIZE = 1024 * 1024


def test_a_reader_sees_the_old_or_the_new_bytes_never_a_mix(tmp_path):
    target = tmp_path / "state.json"
    versions = [bytes([c]) * SIZE for c in b"ab"]
    atomic_write(target, versions[0])
    stop, seen = threading.Event(), []

    def read():
        while not stop.is_set():
            seen.append(target.read_bytes())
    reader = threading.Thread(target=read)
    reader.start()
    try:
        for i in range(40):
            atomic_write(target, versions[(i + 1) % 2])
    finally:
        stop.set()
        reader.join()
    assert len(seen) > 1
    assert all(b in versions for b in seen), "a read saw a partial or mixed file"
    assert target.read_bytes() == versions[0]
    assert os.listdir(tmp_path) == ["state.json"], "no temporary file left behind"


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary_file(tmp_path):
    target = tmp_path / "head"
    atomic_write(target, b"old")
    with pytest.raises(TypeError):
        atomic_write(target, None)            # fails after the temporary file exists
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["head"]


def test_missing_folders_are_created_and_the_temporary_file_can_live_elsewhere(tmp_path):
    target = tmp_path / "ds" / "date=2026-01-01" / "part.parquet"
    created = atomic_write(target, b"x", tmp_dir=tmp_path / "ds" / "_tmp")
    assert created == [target.parent, target.parent.parent]
    assert target.read_bytes() == b"x"
    assert os.listdir(tmp_path / "ds" / "_tmp") == []


def _syscalls(tmp_path: Path, call: str) -> List[str]:
    """The file system calls of a Python process that runs ``call``, as strace saw them
    (from the first one naming ``tmp_path``: interpreter start-up is left out)."""
    log = tmp_path / "strace.log"
    code = f"from foliowatch.files import atomic_write; {call}"
    subprocess.run(["strace", "-f", "-qq", "-o", str(log), "-e",
                    "trace=openat,write,fsync,fdatasync,rename,renameat,renameat2,close",
                    sys.executable, "-c", code], check=True, cwd=tmp_path)
    lines = [re.sub(r"^\d+\s+", "", line) for line in log.read_text().splitlines()]
    first = next(i for i, line in enumerate(lines) if str(tmp_path / "out") in line)
    return lines[first:]


def _trace(lines: List[str], target: Path):
    """(fd of the temporary file, index of its fsync, index of the rename, index of the
    folder's fsync or None) in the strace lines."""
    opened = next(line for line in lines if re.match(r"openat\(.*\.tmp\..*O_CREAT", line))
    tmp = re.search(r'"([^"]+)"', opened).group(1)
    assert Path(tmp).parent == target.parent and ".tmp." in Path(tmp).name
    fd = int(opened.rsplit("=", 1)[1])
    start = lines.index(opened)
    wrote = next(i for i, l in enumerate(lines) if i > start and l.startswith(f"write({fd},"))
    synced = next(i for i, l in enumerate(lines) if i > wrote and l.startswith(f"fsync({fd})"))
    renamed = next(i for i, l in enumerate(lines)
                   if re.match(r"rename(at2?)?\(", l) and tmp in l and f'"{target}"' in l)
    folder = [i for i, l in enumerate(lines) if i > renamed and re.match(
        rf'openat\(AT_FDCWD, "{re.escape(str(target.parent))}", .*O_DIRECTORY', l)]
    folder_sync = None
    if folder:
        dfd = int(lines[folder[0]].rsplit("=", 1)[1])
        folder_sync = next((i for i, l in enumerate(lines)
                            if i > folder[0] and l.startswith(f"fsync({dfd})")), None)
    return synced, renamed, folder_sync


def test_the_file_is_fsynced_before_the_rename_and_the_folder_after_it(tmp_path):
    target = tmp_path / "out" / "state.json"
    lines = _syscalls(tmp_path, f"atomic_write({str(target)!r}, b'{{}}')")
    synced, renamed, folder_sync = _trace(lines, target)
    assert synced < renamed, "the data must be on disk before the new name points at it"
    assert folder_sync is not None and folder_sync > renamed, \
        "the folder must be fsynced after the rename (else the rename may be lost)"


def test_without_the_folder_fsync_only_the_file_is_fsynced(tmp_path):
    """The agent's per-sample state save: the file is fsynced, the folder is not (the
    spool repairs a lost rename)."""
    target = tmp_path / "out" / "state.json"
    (tmp_path / "out").mkdir()
    lines = _syscalls(tmp_path, f"atomic_write({str(target)!r}, b'{{}}', fsync_folder=False)")
    synced, renamed, folder_sync = _trace(lines, target)
    assert synced < renamed and folder_sync is None
