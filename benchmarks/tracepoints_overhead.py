"""What the tracepoint collector costs buffered writes: write throughput on a
loop-mounted XFS with and without the collector's counters armed, alternated in one run.

Each round writes ``--size-mib`` MiB into a new file in ``chunk`` buffered write(2)
calls and unlinks it (no fsync: the page-cache path, where the tracepoints fire, is what
is measured, not the disk). Rounds alternate off/on (and on/off in the next pair, so a
drift of the machine's load hits both sides alike). The collector is armed as the agent
arms it (default buckets, all devices: 21 counters per CPU) and read once per round, as
every interval. Reported per chunk size: the median over pairs of (throughput on /
throughput off), by wall time and by the writer's CPU time (``time.process_time``, less
sensitive to other processes on a shared machine); a third round, off again, gives the
method's noise floor (off/off); and the writer's extra CPU time per page-cache event
(the kernel's cost of one tracepoint hit with the collector's filters). 4 KiB writes are the worst case: one
page-cache event per 4 KiB instead of per 1 MiB.

    sudo .venv/bin/python benchmarks/tracepoints_overhead.py [--rounds 8] [--size-mib 512]
        [--chunks 1048576,4096]

Needs root (loop mount, counters). No timing is asserted; it prints a table.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from foliowatch.agent.collectors import tracepoints as tp


def _run(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


def write_round(path: str, chunk: int, size: int):
    buf = b"\x5a" * chunk
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    wall, cpu = time.perf_counter(), time.process_time()
    try:
        for _ in range(size // chunk):
            os.write(fd, buf)
    finally:
        os.close(fd)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    os.unlink(path)
    return size / wall, size / cpu


def per_counter_cost(path: str, rounds: int, writes: int = 16384):
    """Writer CPU per page-cache event with 0, 1, 4 and 10 filtered counters per CPU on
    ``filemap:mm_filemap_add_to_page_cache`` (4 KiB writes, one event each): the fixed
    cost of an armed tracepoint and the cost of each further counter."""
    fmt = tp.read_event_format(tp.find_tracefs() or tp.TRACEFS_PATHS[0], tp.EV_FILEMAP)
    cpus = tp.online_cpus()
    cpu_s = {0: [], 1: [], 4: [], 10: []}
    for _ in range(rounds):
        for n in cpu_s:
            fds = [tp.perf_open_tracepoint(fmt.id, c, f"order == {k}")
                   for k in range(n) for c in cpus]
            try:
                cpu_s[n].append(4096 * writes / write_round(path, 4096, 4096 * writes)[1])
            finally:
                for fd in fds:
                    os.close(fd)
    base = statistics.median(cpu_s[0])
    return {n: (statistics.median(v) - base) / writes * 1e9 for n, v in cpu_s.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=8, help="pairs of rounds per chunk size")
    ap.add_argument("--size-mib", type=int, default=512)
    ap.add_argument("--chunks", default="1048576,4096")
    ap.add_argument("--cost-rounds", type=int, default=12,
                    help="rounds of the per-counter cost measurement (0: skip)")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("tracepoints_overhead: needs root (loop mount, perf counters)", file=sys.stderr)
        return 2
    if not os.path.isdir("/sys/kernel/tracing/events"):
        _run("mount", "-t", "tracefs", "nodev", "/sys/kernel/tracing")
    size = args.size_mib << 20
    d = Path(tempfile.mkdtemp(prefix="foliowatch-bench-xfs-", dir="/tmp"))
    image, mnt = d / "fs.img", d / "mnt"
    mnt.mkdir()
    with open(image, "wb") as f:
        f.truncate(max(4 << 30, 2 * size))
    _run("mkfs.xfs", "-q", str(image))
    _run("mount", "-t", "xfs", "-o", "loop", str(image), str(mnt))
    load0 = os.getloadavg()
    rows = []
    cost = {}
    try:
        path = str(mnt / "bench")
        if args.cost_rounds:
            write_round(path, 4096, 64 << 20)
            cost = per_counter_cost(path, args.cost_rounds)
        for chunk in (int(c) for c in args.chunks.split(",")):
            write_round(path, chunk, size)  # warm-up: inode, allocator, CPU caches
            wall_ratios, cpu_ratios, null_ratios, null_cpu, ns_per_event = [], [], [], [], []
            events = 0
            for i in range(args.rounds):
                result = {}
                # a third round, off again: the ratio of the two off rounds is the
                # method's noise floor on this machine
                for armed in ((False, True, None) if i % 2 == 0 else (True, False, None)):
                    counters = None
                    if armed:
                        counters = tp.TracepointCounters()
                        counters.open()
                        if not counters.on:
                            print(f"collector off: {counters.off_reason}", file=sys.stderr)
                            return 1
                        before = counters.raw_counts()
                    result[armed] = write_round(path, chunk, size)
                    if counters is not None:
                        after = counters.raw_counts()   # the interval's read
                        events = sum(after[k] - before[k] for k in after
                                     if k.startswith("pagecache_"))
                        counters.close()
                wall_ratios.append(result[True][0] / result[False][0])
                cpu_ratios.append(result[True][1] / result[False][1])
                null_ratios.append(result[None][0] / result[False][0])
                null_cpu.append(result[None][1] / result[False][1])
                off_cpu = size / result[False][1] / 2 + size / result[None][1] / 2
                ns_per_event.append((size / result[True][1] - off_cpu) / max(events, 1) * 1e9)
            rows.append((chunk, statistics.median(wall_ratios), min(wall_ratios),
                         max(wall_ratios), statistics.median(cpu_ratios), events,
                         statistics.median(null_ratios), statistics.median(null_cpu),
                         statistics.median(ns_per_event)))
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)
        shutil.rmtree(d, ignore_errors=True)
    load1 = os.getloadavg()
    print(f"buffered writes of {args.size_mib} MiB on a loop-mounted XFS, {args.rounds} "
          f"alternated pairs per chunk size; {os.cpu_count()} CPUs; load average "
          f"{load0[0]:.2f} -> {load1[0]:.2f}")
    print("| chunk | wall throughput on/off (median) | min .. max | noise floor off/off "
          "(wall) | CPU-time throughput on/off (median) | noise floor off/off (CPU) | "
          "writer CPU per page-cache event (ns, median) | page-cache events per round |")
    print("|---|---|---|---|---|---|---|---|")
    for chunk, med, lo, hi, cpu, events, null, ncpu, ns in rows:
        print(f"| {chunk} B | {med:.4f} | {lo:.4f} .. {hi:.4f} | {null:.4f} | {cpu:.4f} | "
              f"{ncpu:.4f} | {ns:.0f} | {events} |")
    if cost:
        print()
        print("writer CPU per page-cache event (4 KiB writes), by filtered counters per CPU "
              "on filemap:mm_filemap_add_to_page_cache (median of rounds; the collector "
              "uses 10 on a 4 KiB-page host):")
        print("| counters per CPU | " + " | ".join(str(n) for n in cost) + " |")
        print("|---" * (len(cost) + 1) + "|")
        print("| extra CPU ns per event | " + " | ".join(f"{v:.0f}" for v in cost.values()) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
