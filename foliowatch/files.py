"""Durable, atomic file replacement: the one way every component writes a file that must
survive a crash whole (the agent's state and spool head, the pipeline's window files,
checkpoints and dead letters, the detector's state and outputs).

``atomic_write`` writes a temporary file, fsyncs it, renames it over the target and
fsyncs the target's folder: a reader sees the old bytes or the new ones, never a mix,
and once it returns the new file survives a power loss (the rename, a change to the
folder, is durable only once the folder is fsynced). Folders created on the way are
fsynced in their parents (``make_dirs_durable``), so the path to the file survives too.

Standard library only, Python 3.9: the agent runs on the fleet's system Python.
"""

from __future__ import annotations

import os
import threading
import uuid
from pathlib import Path
from typing import List, Optional, Union

PathLike = Union[str, "os.PathLike[str]"]

# Held while a folder is created and fsynced in its parent: a writer thread that finds a
# folder another thread has just created must not use it before its entry is durable.
_MKDIR_LOCK = threading.Lock()


def fsync_dir(directory: PathLike) -> None:
    """Make the entries of ``directory`` (files created, renamed or removed) durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_dirs_durable(directory: PathLike) -> List[Path]:
    """Create ``directory`` and its missing parents so that they survive a crash: each
    folder created is fsynced in its parent, from the deepest up to the first that
    already existed. Returns the folders created, deepest first (each one's parent was
    fsynced after it was made)."""
    with _MKDIR_LOCK:
        missing: List[Path] = []
        d = Path(directory)
        while not d.is_dir():
            missing.append(d)
            if d.parent == d:
                break
            d = d.parent
        for d in reversed(missing):        # outermost first: mkdir needs the parent
            try:
                d.mkdir()
            except FileExistsError:        # another process made it: fsync it anyway
                if not d.is_dir():
                    raise
        created: List[Path] = []
        for d in missing:                  # deepest first
            fsync_dir(d.parent)
            created.append(d)              # reported only once its entry is durable
        return created


def atomic_write(path: PathLike, data: bytes, *, tmp_dir: Optional[PathLike] = None,
                 fsync_data: bool = True, fsync_folder: bool = True,
                 mode: int = 0o666) -> List[Path]:
    """Replace ``path`` with ``data``: temporary file, fsync, rename, fsync of the folder.

    ``tmp_dir``: where the temporary file is written (default: ``path``'s folder); it
    must be on the same filesystem, and keeps half-written files out of a folder that
    readers list. ``fsync_data=False`` and ``fsync_folder=False`` trade durability for
    speed where a caller can repair a lost update (the rename stays atomic either way).
    ``mode``: the new file's permissions (before the umask). Missing folders are created
    durably; returns those created for ``path``, deepest first. On an error the
    temporary file is removed and the old ``path`` is left as it was."""
    target = Path(path)
    created = make_dirs_durable(target.parent)
    tmp_folder = target.parent if tmp_dir is None else Path(tmp_dir)
    if tmp_dir is not None:
        make_dirs_durable(tmp_folder)
    # ".tmp." in the name, never the target's suffix: globs for the real files miss it
    tmp = tmp_folder / f".{target.name}.tmp.{os.getpid()}.{uuid.uuid4().hex[:8]}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if fsync_data:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    if fsync_folder:
        fsync_dir(target.parent)
    return created
