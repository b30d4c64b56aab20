"""Real filesystems for the kernel-facing tests: a fresh image formatted with mkfs and
loop-mounted under /tmp (mode 0755, so an unprivileged probe or agent user can reach it),
unmounted and removed afterwards. Needs root; a refused mount fails the test."""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from contextlib import contextmanager
from pathlib import Path


def run_checked(*argv: str, timeout: float = 300) -> str:
    """Run a command; its stdout, or an AssertionError with its stderr."""
    p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if p.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed ({p.returncode}): {p.stderr.strip()}")
    return p.stdout


@contextmanager
def loop_fs(fstype: str, size: int):
    """Yields the mount point of a new ``fstype`` filesystem of ``size`` bytes."""
    assert os.geteuid() == 0, f"loop-mounting a {fstype} image needs root"
    d = Path(tempfile.mkdtemp(prefix=f"foliowatch-{fstype}-", dir="/tmp"))
    os.chmod(d, 0o755)
    image, mnt = d / "fs.img", d / "mnt"
    mnt.mkdir()
    with open(image, "wb") as f:
        f.truncate(size)
    run_checked(f"mkfs.{fstype}", "-q", *(["-F"] if fstype.startswith("ext") else []), str(image))
    run_checked("mount", "-t", fstype, "-o", "loop", str(image), str(mnt))
    try:
        yield str(mnt)
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True, timeout=120)
        shutil.rmtree(d, ignore_errors=True)


def fill_up(folder) -> Path:
    """Fill the filesystem of ``folder`` to its last byte with one file (returned; remove
    it to give the space back): large writes first, then ever smaller ones, so that no
    free remainder is left for a small file."""
    filler = Path(folder) / "filler"
    with open(filler, "wb", buffering=0) as f:
        chunk = 1 << 20
        while chunk:
            try:
                f.write(b"\0" * chunk)
            except OSError:
                chunk //= 2
        os.fsync(f.fileno())
    return filler
