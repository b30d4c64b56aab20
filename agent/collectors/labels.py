"""Who this host is and what it watches: identity, labels, and mount -> device mapping.

Sources: ``/etc/machine-id`` (host id unless configured), ``/proc/sys/kernel/random/
boot_id`` (new at every boot: counters restart), ``uname``, the page size, the CPU count,
``/proc/meminfo`` (MemTotal), the DMI product name (on EC2 Nitro and most clouds the
instance type, e.g. ``m8g.24xlarge``) unless configured, ``/proc/uptime`` and
``/proc/self/mountinfo`` (filesystem type and block device of each watched mount).

Every value is normalised to what wire schema v1 accepts (arch ``arm64``/``x86_64``;
label alphabet ``[A-Za-z0-9._+~-]``), so a strange kernel string cannot make the agent
emit records the pipeline rejects.
"""

from __future__ import annotations

import os
import platform
import re
import select
import time
from typing import Dict, List, NamedTuple, Optional, Tuple

from foliowatch import schema
from foliowatch.agent.collectors._io import read_text

ARCH_ALIASES = {"aarch64": "arm64", "arm64": "arm64", "x86_64": "x86_64", "amd64": "x86_64",
                "riscv64": "riscv64", "ppc64le": "ppc64le", "s390x": "s390x"}
DMI_PRODUCT = "class/dmi/id/product_name"
_BAD_LABEL_CHARS = re.compile(r"[^A-Za-z0-9._+~-]+")
_BAD_ID_CHARS = re.compile(r"[^A-Za-z0-9._:@-]+")


def normalise_arch(machine: str) -> str:
    """``uname -m`` -> schema arch; unknown machines are reported as-is lower-cased so the
    schema check names them instead of the agent guessing."""
    return ARCH_ALIASES.get(machine.lower(), machine.lower())


def clean_label(value: str, fallback: str = "unknown") -> str:
    value = _BAD_LABEL_CHARS.sub("_", value.strip()).strip("._+~-")
    return value[:schema.MAX_LABEL_LEN] or fallback


def clean_id(value: str, fallback: str = "unknown") -> str:
    value = _BAD_ID_CHARS.sub("_", value.strip()).strip("._:@-")
    return value[:schema.MAX_ID_LEN] or fallback


def _read_first_line(path: str) -> Optional[str]:
    try:
        with open(path) as f:
            line = f.readline().strip()
    except OSError:
        return None
    return line or None


def machine_id(etc: str = "/etc") -> Optional[str]:
    return _read_first_line(os.path.join(etc, "machine-id"))


def boot_id(proc: str = "/proc") -> str:
    value = _read_first_line(f"{proc}/sys/kernel/random/boot_id")
    if value is None:
        raise OSError(f"{proc}/sys/kernel/random/boot_id unreadable: the agent needs it to "
                      "tell reboots from counter resets; mount procfs")
    return value


def dmi_product(sys: str = "/sys") -> Optional[str]:
    return _read_first_line(os.path.join(sys, DMI_PRODUCT))


def parse_uptime(text: str) -> float:
    return float(text.split()[0])


def uptime_s(proc: str = "/proc") -> float:
    """Seconds since boot. The real /proc/uptime prints CLOCK_BOOTTIME in hundredths of
    a second (fs/proc/uptime.c), so that clock is read instead of the file, whose other
    field (idle time) the kernel sums over every CPU at each read; another ``proc`` (a
    copy of its files) is read as a file."""
    if proc == "/proc":
        return int(time.clock_gettime(time.CLOCK_BOOTTIME) * 100) / 100
    return parse_uptime(read_text(f"{proc}/uptime"))


def running_kernel(proc: str = "/proc") -> Tuple[str, float]:
    """``(release, booted_at)``: this kernel's ``uname -r`` and the wall time it booted
    (now less the uptime), i.e. since when this host runs that release."""
    return os.uname().release, time.time() - uptime_s(proc)


def host_labels(*, fleet: str, role: str, instance_type: Optional[str], mem_bytes: int,
                page_size: int, sys: str = "/sys") -> Dict[str, object]:
    """The ``labels`` object of wire schema v1 for this host."""
    uname = os.uname()
    itype = instance_type or dmi_product(sys) or "unknown"
    return {
        "fleet": clean_label(fleet),
        "role": clean_label(role),
        "arch": normalise_arch(uname.machine or platform.machine()),
        "kernel": clean_label(uname.release),
        "page_size": page_size,
        "cpus": os.cpu_count() or 1,
        "mem_bytes": mem_bytes,
        "instance_type": clean_label(itype),
    }


class Mount(NamedTuple):
    mount: str      # mount point
    fs: str         # filesystem type as the kernel names it (xfs, ext4, ...)
    devno: str      # "major:minor" of the superblock's device
    source: str     # mount source (/dev/nvme1n1, ...)


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as octal (\040 ...)
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def parse_mountinfo(text: str) -> List[Mount]:
    """``/proc/self/mountinfo`` (proc(5)): ``id parent major:minor root mountpoint opts
    [optional fields...] - fstype source superopts``."""
    mounts: List[Mount] = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        lp, rp = left.split(), right.split()
        if len(lp) < 5 or len(rp) < 2:
            continue
        mounts.append(Mount(_unescape(lp[4]), rp[0], lp[2], _unescape(rp[1])))
    return mounts


def find_mount(mounts: List[Mount], path: str) -> Optional[Mount]:
    """The mount that holds ``path`` (the last, i.e. topmost, of the longest prefix)."""
    path = os.path.realpath(path)
    best: Optional[Mount] = None
    for m in mounts:
        mp = m.mount.rstrip("/") or "/"
        if path == mp or path.startswith(mp if mp.endswith("/") else mp + "/"):
            if best is None or len(mp) >= len(best.mount.rstrip("/") or "/"):
                best = m
    return best


def schema_fs(fs: str) -> str:
    return fs if fs in schema.FILESYSTEMS else "other"


def read_mounts(proc: str = "/proc") -> List[Mount]:
    with open(f"{proc}/self/mountinfo") as f:
        return parse_mountinfo(f.read())


class MountTable:
    """``read_mounts`` that can tell whether the kernel's mount table changed since it
    was last read, without reading it: /proc/self/mountinfo is pollable (proc(5)), and
    ``poll`` reports ``POLLPRI`` once a mount or unmount happened since the file was
    opened or that was last reported. A host with hundreds of mounts (containers) would
    otherwise parse them all every minute. Only the real /proc is watched; another
    ``proc`` (a copy of its files) is taken as changed at every call."""

    def __init__(self, proc: str = "/proc"):
        self.proc = proc
        self._fd: Optional[int] = None
        self._poll: Optional[select.poll] = None

    def changed(self) -> bool:
        """False only when the table read last is still the kernel's. A change is
        reported once: ``read`` the table when this says True."""
        return self._poll is None or bool(self._poll.poll(0))

    def read(self) -> List[Mount]:
        self.close()
        if self.proc != "/proc":
            return read_mounts(self.proc)
        fd = os.open("/proc/self/mountinfo", os.O_RDONLY | os.O_CLOEXEC)
        try:
            chunks = []       # opened before reading: a change during the read is seen
            while True:
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    break
                chunks.append(chunk)
            poll = select.poll()
            poll.register(fd, select.POLLPRI)
        except BaseException:
            os.close(fd)
            raise
        self._fd, self._poll = fd, poll
        return parse_mountinfo(b"".join(chunks).decode("utf-8", "replace"))

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
        self._fd = self._poll = None
