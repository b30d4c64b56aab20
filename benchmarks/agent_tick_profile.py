"""Where one sampling tick of the agent spends its CPU, part by part, in-process.

The agent's own tick (``Agent.tick``) is run with each of its steps timed by the thread's
CPU clock (``time.thread_time_ns``): the kernel files one by one (read and parse), the
record (baseline and deltas), ``schema.encode``, the spool append (write + fsync) and the
rest of the tick. Two ways between ticks: ``tight`` (back to back) and ``cold`` (a pause
and a sweep through 64 MiB of memory before each tick, so the interpreter's code and
data are out of the CPU caches, as after the real 10 s sleep on a busy host). Garbage
collections during the ticks are counted (``gc.callbacks``).

    .venv/bin/python benchmarks/agent_tick_profile.py [--ticks 200] [--pause 0.2]

No Kafka: the delivery thread's cost is measured from outside by
``agent_vs_node_exporter.py --steady-minutes``. No timing is asserted anywhere.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from typing import Callable, Dict, List

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ticks", type=int, default=200)
    ap.add_argument("--pause", type=float, default=0.2,
                    help="cold mode: seconds between ticks (default %(default)s)")
    ap.add_argument("--sweep-mib", type=int, default=64)
    args = ap.parse_args()

    from foliowatch.agent import config as agent_config
    from foliowatch.agent import runner, sampler as sampler_mod
    from foliowatch.agent.collectors import (buddyinfo, diskstats, labels, meminfo,
                                             pressure, thp, vmstat, xfs)
    from foliowatch import schema
    from foliowatch.agent.spool import Spool

    parts: Dict[str, List[int]] = defaultdict(list)
    clock = time.thread_time_ns

    def timed(name: str, fn: Callable) -> Callable:
        def wrapper(*a, **kw):
            t = clock()
            try:
                return fn(*a, **kw)
            finally:
                parts[name].append(clock() - t)
        return wrapper

    # each step of the tick, by the module attribute the agent calls it through
    for mod, attr, name in (
            (vmstat, "read_counters", "read vmstat"),
            (pressure, "read_all", "read pressure (2 files)"),
            (thp, "read_files", "read mTHP counters"),
            (meminfo, "read_shipped", "read meminfo"),
            (buddyinfo, "read", "read buddyinfo"),
            (buddyinfo, "gauges", "buddyinfo gauges"),
            (labels, "uptime_s", "read uptime"),
            (diskstats, "read_devices", "read diskstats (watched)"),
            (xfs, "read", "read xfs stats"),
            (schema, "encode", "schema.encode"),
    ):
        setattr(mod, attr, timed(name, getattr(mod, attr)))
    S = sampler_mod.Sampler
    S.watched_mounts = timed("watched mounts", S.watched_mounts)
    S._refresh_slow = timed("slow refresh check", S._refresh_slow)
    S.read = timed("Sampler.read (all reads)", S.read)
    S.record = timed("Sampler.record", S.record)
    Spool.append = timed("spool append (durable write)", Spool.append)
    runner.Agent.tick = timed("tick (whole)", runner.Agent.tick)

    collections: List[float] = []
    started: List[float] = []

    def on_gc(phase, info):
        if phase == "start":
            started.append(time.perf_counter())
        elif started:
            collections.append(time.perf_counter() - started.pop())
    gc.callbacks.append(on_gc)

    sweep = bytearray(args.sweep_mib << 20)
    results = {}
    with tempfile.TemporaryDirectory(prefix="tick-profile-", dir=os.environ.get("TMPDIR")) as tmp:
        for mode in ("tight", "cold"):
            env = dict(os.environ, FOLIOWATCH_AGENT_STATE_DIR=os.path.join(tmp, mode),
                       FOLIOWATCH_AGENT_KAFKA_ENABLED="false")
            cfg, problems = agent_config.load(None, env)
            assert not problems, problems
            agent = runner.Agent(cfg, deliver=False)
            for _ in range(3):
                agent.tick(deliver=False)
            parts.clear()
            collections.clear()
            for _ in range(args.ticks):
                if mode == "cold":
                    time.sleep(args.pause)
                    for i in range(0, len(sweep), 64):
                        sweep[i] = 1
                agent.tick(deliver=False)
            results[mode] = ({k: statistics.median(v) / 1e3 for k, v in parts.items()},
                             {k: len(v) / args.ticks for k, v in parts.items()},
                             len(collections), sum(collections))
            agent.close()
    print(f"Python {sys.version.split()[0]}, {args.ticks} ticks per mode, load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}; median thread CPU in us per call "
          "(calls per tick)")
    names = list(results["tight"][0])
    print(f"  {'part':32} {'tight':>8} {'cold':>8}")
    for name in names:
        print(f"  {name:32} {results['tight'][0][name]:8.1f} {results['cold'][0].get(name, 0):8.1f}"
              f"   ({results['cold'][1].get(name, 0):.0f})")
    for mode in ("tight", "cold"):
        n, secs = results[mode][2], results[mode][3]
        print(f"  gc during {mode}: {n} collections, {secs * 1e3:.2f} ms in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
