"""The active write probe: buffered writes on a watched filesystem, timed, with the
kernel's compaction and reclaim counters read around them.

Off by default. When enabled it writes ``size_bytes`` to a new file in ``directory``
with ``write(2)`` calls of ``chunk_bytes`` (1 MiB by default: a chunk that large makes
iomap ask the page allocator for large folios, the path of the seed regression), then
``fsync(2)``, then removes the file. MiB/s = bytes / (write + fsync seconds) / 2**20.

Safety:
- free space is checked first: the probe refuses to run when the filesystem would be
  left with less than ``min_free_bytes`` or ``min_free_ratio`` of its size free;
- the budget is bounded by bytes (``size_bytes``) and by time (``max_seconds``: writing
  stops early and the bytes actually written are reported);
- the file is created with O_EXCL, removed in a ``finally``, and stale probe files left by
  a killed agent are removed before the next probe;
- when the agent runs as root the probe runs in a forked child that drops to an
  unprivileged ``user`` (default ``nobody``), so a wrong ``directory`` cannot overwrite anything root
  owns; the directory must be writable by that user.

Run as a module (``python -m foliowatch.agent.collectors.probe DIR SIZE CHUNK MAX_S
MIN_FREE_BYTES MIN_FREE_RATIO``) it prints one JSON result, for trying it by hand.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Dict, Optional

from foliowatch.agent.collectors import vmstat

FILE_PREFIX = ".foliowatch-probe."
DEFAULT_CHUNK = 1 << 20
# vmstat counters whose deltas the probe reports (schema: compact_stall, allocstall;
# the rest go to /metrics and the log).
WATCHED = ("compact_stall", "compact_fail", "compact_success", "compact_migrate_scanned",
           "compact_free_scanned", "pgscan_direct", "pgsteal_direct", "pgscan_kswapd")


class ProbeRefused(RuntimeError):
    """The probe did not run; the message says why and what to change."""


def space_problem(directory: str, size_bytes: int, min_free_bytes: int,
                  min_free_ratio: float) -> Optional[str]:
    """Why writing ``size_bytes`` into ``directory`` would leave too little free space,
    or ``None`` when it is safe."""
    st = os.statvfs(directory)
    avail = st.f_bavail * st.f_frsize
    total = st.f_blocks * st.f_frsize
    floor = max(min_free_bytes, int(min_free_ratio * total))
    if avail - size_bytes < floor:
        return (f"probe.directory {directory}: {avail} bytes free, the probe needs "
                f"{size_bytes} and must leave {floor} free; lower agent.probe.size_bytes "
                f"or free space")
    return None


def remove_stale(directory: str) -> int:
    removed = 0
    for name in os.listdir(directory):
        if name.startswith(FILE_PREFIX):
            try:
                os.unlink(os.path.join(directory, name))
                removed += 1
            except OSError:
                pass
    return removed


def _vmstat_watch(proc: str) -> Dict[str, int]:
    fields = vmstat.read(proc)
    out = {k: fields[k] for k in WATCHED if k in fields}
    stalls = vmstat.allocstall_total(fields)
    if stalls is not None:
        out["allocstall"] = stalls
    return out


def run(directory: str, size_bytes: int, chunk_bytes: int = DEFAULT_CHUNK,
        max_seconds: float = 30.0, min_free_bytes: int = 1 << 30, min_free_ratio: float = 0.1,
        proc: str = "/proc") -> Dict[str, object]:
    """Run the probe in this process. Returns ``{"probe": <schema probe object>,
    "vmstat": {counter: delta during the probe}}``; raises ``ProbeRefused``."""
    if chunk_bytes <= 0 or size_bytes < chunk_bytes:
        raise ProbeRefused(f"probe: size_bytes ({size_bytes}) must be >= chunk_bytes "
                           f"({chunk_bytes}) > 0")
    import stat
    try:
        is_dir = stat.S_ISDIR(os.stat(directory).st_mode)
    except PermissionError:
        raise ProbeRefused(f"probe.directory {directory}: not reachable by uid {os.geteuid()} "
                           "(a parent folder is not searchable); choose a directory that "
                           "agent.probe.user can reach") from None
    except FileNotFoundError:
        is_dir = False
    if not is_dir:
        raise ProbeRefused(f"probe.directory {directory}: not a directory; create it on the "
                           "watched filesystem")
    remove_stale(directory)
    problem = space_problem(directory, size_bytes, min_free_bytes, min_free_ratio)
    if problem:
        raise ProbeRefused(problem)
    chunk = memoryview(b"\xa5" * chunk_bytes)
    path = os.path.join(directory, f"{FILE_PREFIX}{os.getpid()}")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except PermissionError:
        raise ProbeRefused(f"probe.directory {directory}: not writable by uid "
                           f"{os.geteuid()}; chown it to agent.probe.user") from None
    written = 0
    try:
        before = _vmstat_watch(proc)
        start = time.monotonic()
        deadline = start + max_seconds
        while written < size_bytes:
            n = os.write(fd, chunk[: min(chunk_bytes, size_bytes - written)])
            written += n
            if time.monotonic() > deadline:
                break
        os.fsync(fd)
        seconds = time.monotonic() - start
        after = _vmstat_watch(proc)
    finally:
        os.close(fd)
        os.unlink(path)
    deltas = {k: max(0, after[k] - before[k]) for k in after if k in before}
    seconds = max(seconds, 1e-9)
    return {
        "probe": {"bytes": written, "seconds": seconds, "chunk_bytes": chunk_bytes,
                  "mib_s": written / seconds / 1048576.0,
                  "compact_stall": deltas.get("compact_stall", 0),
                  "allocstall": deltas.get("allocstall", 0)},
        "vmstat": deltas,
    }


def run_as(user: Optional[str], directory: str, size_bytes: int, chunk_bytes: int,
           max_seconds: float, min_free_bytes: int, min_free_ratio: float,
           timeout: Optional[float] = None) -> Dict[str, object]:
    """Run the probe, as ``user`` in a forked child when this process is root and a user
    is given; in this process otherwise.

    A fork (not a new interpreter) because the agent's interpreter may live where the
    unprivileged user cannot execute it; the child only writes, reads /proc, and exits.
    """
    if os.geteuid() != 0 or not user or user == "root":
        return run(directory, size_bytes, chunk_bytes, max_seconds, min_free_bytes,
                   min_free_ratio)
    import pwd
    import select
    import signal
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        raise ProbeRefused(f"probe.user {user!r}: no such user; create it or set "
                           "agent.probe.user") from None
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: drop privileges for good, probe, report, exit
        status = 0
        try:
            os.close(rfd)
            os.setgroups([])
            os.setgid(pw.pw_gid)
            os.setuid(pw.pw_uid)
            if os.geteuid() != pw.pw_uid or os.getuid() != pw.pw_uid:
                raise RuntimeError("could not drop privileges")
            try:
                out = {"ok": run(directory, size_bytes, chunk_bytes, max_seconds,
                                 min_free_bytes, min_free_ratio)}
            except ProbeRefused as e:
                out = {"refused": str(e)}
            data = json.dumps(out).encode()
            while data:
                data = data[os.write(wfd, data):]
        except BaseException as e:  # noqa: BLE001 - report anything to the parent
            status = 1
            try:
                os.write(wfd, json.dumps({"error": f"{type(e).__name__}: {e}"}).encode())
            except BaseException:  # noqa: BLE001
                pass
        finally:
            os._exit(status)
    os.close(wfd)
    deadline = time.monotonic() + (timeout if timeout is not None else max_seconds + 120)
    chunks = []
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                os.kill(pid, signal.SIGKILL)
                raise ProbeRefused(f"probe as {user}: no result in time; killed it")
            ready, _, _ = select.select([rfd], [], [], left)
            if not ready:
                continue
            chunk = os.read(rfd, 65536)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(rfd)
        os.waitpid(pid, 0)
    try:
        out = json.loads(b"".join(chunks) or b"{}")
    except ValueError:
        out = {}
    if "ok" in out:
        return out["ok"]
    if "refused" in out:
        raise ProbeRefused(out["refused"])
    raise ProbeRefused(f"probe as {user} failed: {out.get('error', 'no result')}")


def main(argv=None) -> int:
    a = list(sys.argv[1:] if argv is None else argv)
    try:
        result = run(a[0], int(a[1]), int(a[2]), float(a[3]), int(a[4]), float(a[5]))
    except ProbeRefused as e:
        print(str(e), file=sys.stderr)
        return 3
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
