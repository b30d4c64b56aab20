"""The tracepoint collector's cost per interval in the agent: reading its counters.

    .venv/bin/python benchmarks/tracepoints_read_cost.py [--cpus 2,16,96] [--rounds 2000]

The collector keeps one counter per (event, filter) and CPU: 21 with the default buckets.
Read one by one, that is 21 read(2) calls per CPU and interval (2,016 on a 96-CPU host);
read as one group per CPU (a leader with ``PERF_FORMAT_GROUP``), one per CPU. Both are
measured here on the same open counters, alternating, in CPU time of this thread
(``time.thread_time``), and reported as a ratio.

More CPUs than this machine has are emulated by opening the whole set of counters again
on each real CPU (a 96-CPU host on 2 CPUs: 48 sets): the number of descriptors and of
read(2) calls, and the Python work per interval, are those of the larger host; what the
kernel does per read is that of this machine's counters. Needs root or CAP_PERFMON.
"""

from __future__ import annotations

import argparse
import statistics
import time

from foliowatch.agent.collectors import tracepoints as tp


def per_counter(sets) -> dict:
    """The collector's read before groups: one read(2) per counter and CPU."""
    totals: dict = {}
    for counters in sets:
        by_key: dict = {}
        for _leader, keys, fds in counters._groups:
            for key, fd in zip(keys, fds):
                by_key.setdefault(key, []).append(fd)
        for key, fds in by_key.items():
            totals[key] = totals.get(key, 0) + sum(tp.read_count(fd) for fd in fds)
    return totals


def grouped(sets) -> dict:
    """The shipped read: one read(2) per CPU (``TracepointCounters.raw_counts``)."""
    totals: dict = {}
    for counters in sets:
        for key, value in counters.raw_counts().items():
            totals[key] = totals.get(key, 0) + value
    return totals


def measure(cpus: int, rounds: int) -> dict:
    real = len(tp.online_cpus())
    copies = max(1, cpus // real)
    sets = []
    try:
        for _ in range(copies):
            c = tp.TracepointCounters(tp.parse_buckets(tp.DEFAULT_BUCKETS))
            c.open()
            if not c.on:
                raise SystemExit(f"tracepoint counters off: {c.off_reason}")
            sets.append(c)
        counters = len(sets[0]._keys)
        times = {"per counter": [], "grouped": []}
        for _ in range(rounds):
            for name, fn in (("per counter", per_counter), ("grouped", grouped)):
                t0 = time.thread_time()
                fn(sets)
                times[name].append(time.thread_time() - t0)
        return {"cpus": copies * real, "counters": counters,
                "reads per interval": {"per counter": counters * copies * real,
                                       "grouped": copies * real},
                "us": {k: statistics.mean(v) * 1e6 for k, v in times.items()}}
    finally:
        for c in sets:
            c.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpus", default="2,16,96", help="comma-separated CPU counts to emulate")
    ap.add_argument("--rounds", type=int, default=2000, help="intervals read per method")
    args = ap.parse_args()
    print("| CPUs (emulated) | counters | read(2) per interval, one by one / grouped | "
          "CPU us per interval, one by one | grouped | grouped / one by one |")
    print("|---|---|---|---|---|---|")
    for n in (int(x) for x in args.cpus.split(",")):
        r = measure(n, args.rounds)
        a, b = r["us"]["per counter"], r["us"]["grouped"]
        print(f"| {r['cpus']} | {r['counters']} | {r['reads per interval']['per counter']:,} / "
              f"{r['reads per interval']['grouped']:,} | {a:,.0f} | {b:,.0f} | {b / a:.2f}x |",
              flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
