"""CPU and memory of the foliowatch agent beside Debian's prometheus-node-exporter, on
this machine, in one run.

node_exporter runs with only the vmstat, pressure, diskstats and meminfo collectors
(``--collector.disable-defaults``) on a loopback port and is scraped N times; its CPU
time per scrape is the utime+stime delta of its process (/proc/PID/stat) divided by N,
its memory is VmRSS (and VmHWM, the peak) from /proc/PID/status.

The agent runs as a separate process (this file with ``--agent-worker``) and takes N
samples back to back in three phases, so the table shows what each step costs: (1) read
every kernel file, deltas, encode (schema-validated JSON); (2) the same plus the fsync'd
spool append; (3) plus a send to a real Kafka broker with acks=all per sample (skipped
with ``--no-kafka``; the running agent batches within agent.kafka.latency_budget_s,
which ``--steady-minutes`` measures). Its CPU per sample and RSS are
measured the same way as node_exporter's, from outside. The agent's own
/metrics is then scraped N times too (its scrape re-reads the kernel, like
node_exporter's).

    .venv/bin/python benchmarks/agent_vs_node_exporter.py [--samples 300] [--no-kafka]
        [--bootstrap HOST:PORT]   (default: start a 1-broker KRaft cluster for the run)

No timing is asserted anywhere; this prints a table for the engineer's note.
"""

from __future__ import annotations

# Only what the measured agent process needs is imported at the top: the worker must not
# carry the benchmark's own modules (urllib, subprocess, ...) in its RSS.
import json
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TICK = os.sysconf("SC_CLK_TCK")
COLLECTORS = ("vmstat", "pressure", "diskstats", "meminfo")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK     # utime, stime


def task_cpu_ns(pid: int) -> int:
    """CPU time of the live threads of ``pid`` in ns (/proc/PID/task/*/schedstat): finer
    than the 10 ms ticks of /proc/PID/stat."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except OSError:
            pass
    return total


def memory(pid: int) -> dict:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                out[line.split(":")[0]] = int(line.split()[1]) * 1024
    return out


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str) -> bytes:
    import urllib.request
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.read()


def wait_http(url: str, proc, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{proc.args[0]} exited with {proc.returncode} during start")
        try:
            get(url)
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"{url} not ready after {timeout:.0f}s")


def scrape_cost(pid: int, url: str, n: int) -> dict:
    for _ in range(5):                      # warm-up: first scrapes allocate caches
        get(url)
    c0, t0 = cpu_seconds(pid), time.monotonic()
    size = 0
    for _ in range(n):
        size = len(get(url))
    c1, t1 = cpu_seconds(pid), time.monotonic()
    return {"cpu_s": (c1 - c0) / n, "wall_s": (t1 - t0) / n, "bytes": size, **memory(pid)}


def bench_node_exporter(n: int) -> dict:
    import shutil
    import subprocess
    exe = shutil.which("prometheus-node-exporter")
    if exe is None:
        raise SystemExit("prometheus-node-exporter not found: apt-get install "
                         "prometheus-node-exporter")
    port = free_port()
    argv = [exe, f"--web.listen-address=127.0.0.1:{port}", "--collector.disable-defaults",
            *[f"--collector.{c}" for c in COLLECTORS]]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}/metrics"
        wait_http(url, proc)
        return scrape_cost(proc.pid, url, n)
    finally:
        proc.terminate()
        proc.wait(10)


PHASES = (
    ("collect", "read kernel, deltas, encode+validate"),
    ("spool", "+ fsync'd spool append"),
    ("send", "+ Kafka send, one request each (acks=all, gzip)"),
)


def bench_agent(n: int, bootstrap: str, topic: str, workdir: str) -> dict:
    import subprocess
    port = free_port()
    argv = [sys.executable, __file__, "--agent-worker", "--samples", str(n),
            "--state-dir", workdir, "--metrics-port", str(port), "--topic", topic]
    if bootstrap:
        argv += ["--bootstrap", bootstrap]
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            cwd=REPO)
    try:
        def expect(word: str) -> dict:
            line = proc.stdout.readline()
            if not line.startswith(word):
                raise SystemExit(f"agent worker: expected {word!r}, got {line!r}")
            return json.loads(line.split(" ", 1)[1]) if " " in line else {}

        out = {"stages": expect("ready"), "phases": {}}
        for phase, _what in PHASES:
            if phase == "send" and not bootstrap:
                continue
            c0, t0 = cpu_seconds(proc.pid), time.monotonic()
            proc.stdin.write(f"{phase}\n")
            proc.stdin.flush()
            done = expect("done")
            c1, t1 = cpu_seconds(proc.pid), time.monotonic()
            out["phases"][phase] = {"cpu_s": (c1 - c0) / n, "wall_s": (t1 - t0) / n, **done}
        out.update(memory(proc.pid))
        out["scrape"] = scrape_cost(proc.pid, f"http://127.0.0.1:{port}/metrics", n)
        return out
    finally:
        try:
            proc.stdin.write("exit\n")
            proc.stdin.flush()
            proc.wait(30)
        except (OSError, subprocess.TimeoutExpired):
            proc.kill()
            proc.wait(10)


def agent_worker(args) -> int:
    """The measured agent process: imports, warm-up, then N samples per phase."""
    stages = {"interpreter": memory(os.getpid())["VmRSS"]}
    from foliowatch import schema
    from foliowatch.agent.config import AgentConfig
    from foliowatch.agent.deltas import Baseline
    from foliowatch.agent.exporter import serve
    from foliowatch.agent.runner import Agent
    from foliowatch.kafka_io import KafkaSettings
    from foliowatch.kafka_io import producer_class
    producer_class()   # kafka-python, as the agent loads it (counted in the import stage)
    stages["imports"] = memory(os.getpid())["VmRSS"]
    cfg = AgentConfig(state_dir=args.state_dir, mounts=["/"], interval_s=1.0,
                      kafka_enabled=bool(args.bootstrap),
                      kafka=KafkaSettings(bootstrap=[args.bootstrap or "127.0.0.1:9092"],
                                          compression="gzip"),
                      topic=args.topic, metrics_listen=f"127.0.0.1:{args.metrics_port}")
    agent = Agent(cfg)
    server = serve(agent, cfg.metrics_address())
    for _ in range(5):
        agent.tick()
    stages["agent_ready"] = memory(os.getpid())["VmRSS"]
    print("ready " + json.dumps(stages), flush=True)
    collect_baseline = Baseline()
    while True:
        phase = sys.stdin.readline().strip()
        if phase == "collect":
            for i in range(args.samples):
                record = agent.sampler.record(agent.sampler.read(), collect_baseline, i)
                if record is not None:
                    schema.encode(record)
        elif phase in ("spool", "send"):
            for _ in range(args.samples):
                agent.tick(deliver=phase == "send")
            if phase == "spool" and agent.sender is not None:
                agent.drain()          # not measured: empty the spool before "send"
        else:
            break
        print("done " + json.dumps({"spool_left": len(agent.spool), "sent": agent.sender_sent(),
                                   "record_bytes": len(agent.spool.last_payload() or b"")}),
              flush=True)
    server.shutdown()
    agent.close()
    return 0


def threads(pid: int) -> dict:
    """Per thread of ``pid``: thread id -> [CPU seconds (schedstat, ns resolution),
    voluntary context switches (wake-ups after sleeping), involuntary ones]. Python
    threads all carry the process's name, so threads are told apart by id (ids grow in
    creation order)."""
    out: dict = {}
    for tid in sorted(os.listdir(f"/proc/{pid}/task"), key=int):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                ns = int(f.read().split()[0])
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                status = dict(line.split(":", 1) for line in f if ":" in line)
        except OSError:   # the thread ended meanwhile
            continue
        out[int(tid)] = [ns / 1e9, int(status["voluntary_ctxt_switches"]),
                         int(status["nonvoluntary_ctxt_switches"])]
    return out


def host_install(tmp: str, source: str = REPO, name: str = "host") -> str:
    """The agent installed as on a host (deploy/ansible/roles/foliowatch_agent): a
    virtualenv of this interpreter's base Python holding the foliowatch wheel built from
    ``source`` and the agent's dependencies only; returns its python. The development
    virtualenv would add what hosts never load: the editable install's import finder
    (~1.9 MiB resident in every process) and other extras' start-up hooks
    (urllib3-future's .pth, ~0.9 MiB)."""
    import glob
    import subprocess
    venv, wheels = os.path.join(tmp, f"{name}-venv"), os.path.join(tmp, f"{name}-wheels")
    base = os.path.join(sys.base_prefix, "bin", "python%d.%d" % sys.version_info[:2])
    if not os.path.exists(base):       # (Python 3.9's _base_executable names the venv's)
        base = getattr(sys, "_base_executable", sys.executable)
    print(f"installing the agent of {source} as on a host ({base}) ...", file=sys.stderr)
    python = os.path.join(venv, "bin", "python")
    for argv in ([base, "-m", "venv", venv],
                 [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                  "--no-build-isolation", "-w", wheels, source],
                 [python, "-m", "pip", "install", "-q", "--disable-pip-version-check",
                  "WHEEL[agent]"]):
        if argv[-1] == "WHEEL[agent]":
            argv[-1] = glob.glob(os.path.join(wheels, "foliowatch-*.whl"))[0] + "[agent]"
        p = subprocess.run(argv, capture_output=True, text=True)
        if p.returncode != 0:
            raise SystemExit(f"{' '.join(argv)} failed ({p.returncode}):\n{p.stderr[-3000:]}")
    return python


def checkout(ref: str, tmp: str) -> str:
    """The repository's tree at git ``ref`` in a folder of ``tmp`` (for a wheel of it)."""
    import subprocess
    where = os.path.join(tmp, "ref-src")
    os.makedirs(where)
    archive = subprocess.run(["git", "-C", REPO, "archive", ref], capture_output=True)
    if archive.returncode != 0:
        raise SystemExit(f"git archive {ref}: {archive.stderr.decode()[-500:]}")
    subprocess.run(["tar", "-x", "-C", where], input=archive.stdout, check=True)
    return where


def steady(minutes: float, interval: float, bootstrap: str, topic: str, workdir: str,
           agents: list, tracepoints: bool = False) -> int:
    """The real agent (``foliowatch agent`` run by each ``(label, python)`` of
    ``agents``, default configuration but for the broker, the state folder, the topic and
    the /metrics port; several run side by side) at ``interval`` beside node_exporter
    scraped at the same interval, all measured from outside over ``minutes`` after a
    warm-up of three intervals. Kafka send included when ``bootstrap`` is given; the
    tracepoint collector on with ``tracepoints`` (root, tracefs mounted)."""
    import shutil
    import subprocess
    exe = shutil.which("prometheus-node-exporter")
    if exe is None:
        raise SystemExit("prometheus-node-exporter not found: apt-get install "
                         "prometheus-node-exporter (scripts/bootstrap.sh installs it)")
    ne_port = free_port()
    ne = subprocess.Popen([exe, f"--web.listen-address=127.0.0.1:{ne_port}",
                           "--collector.disable-defaults",
                           *[f"--collector.{c}" for c in COLLECTORS]],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    runs = []
    for i, (label, python) in enumerate(agents):
        state = os.path.join(workdir, f"agent{i}")
        os.makedirs(state)
        port = free_port()
        agent_topic = topic if i == 0 else f"{topic}.{i}"
        if bootstrap and i:
            ensure_topic(bootstrap, agent_topic)
        env = dict(os.environ, FOLIOWATCH_AGENT_INTERVAL_S=str(interval),
                   FOLIOWATCH_AGENT_STATE_DIR=state,
                   FOLIOWATCH_AGENT_METRICS_LISTEN=f"127.0.0.1:{port}",
                   FOLIOWATCH_AGENT_KAFKA_ENABLED="true" if bootstrap else "false",
                   FOLIOWATCH_AGENT_KAFKA_BOOTSTRAP=bootstrap or "127.0.0.1:9092",
                   FOLIOWATCH_AGENT_KAFKA_TOPIC=agent_topic,
                   FOLIOWATCH_AGENT_TRACEPOINTS_ENABLED="true" if tracepoints else "false",
                   FOLIOWATCH_AGENT_LOG_LEVEL="warning")
        log = open(os.path.join(workdir, f"agent{i}.log"), "wb")
        # run from the state folder: in the repository, ``-m`` would import its source tree
        proc = subprocess.Popen([python, "-m", "foliowatch", "agent"], env=env, cwd=state,
                                stdout=log, stderr=subprocess.STDOUT)
        runs.append({"label": label, "proc": proc, "log": log.name,
                     "url": f"http://127.0.0.1:{port}/metrics"})
    ne_url = f"http://127.0.0.1:{ne_port}/metrics"
    try:
        wait_http(ne_url, ne)
        for run in runs:
            wait_http(run["url"], run["proc"])
        # warm-up: the baseline, then the first Kafka request (within the latency budget:
        # kafka-python is imported and the producer connects then, once per process)
        deadline = time.monotonic() + 3 * interval + 300
        for run in runs:
            while True:
                page = get(run["url"]).decode()
                if not bootstrap or "\nfoliowatch_agent_send_requests_total 0.0" not in page:
                    break
                if time.monotonic() > deadline:
                    raise SystemExit(f"agent {run['label']} sent nothing to Kafka during "
                                     "the warm-up")
                time.sleep(1.0)
        time.sleep(3 * interval)
        n = max(1, int(minutes * 60 / interval))
        load0 = os.getloadavg()
        ne0, nes0 = cpu_seconds(ne.pid), task_cpu_ns(ne.pid)
        for run in runs:
            pid = run["proc"].pid
            run.update(cpu0=cpu_seconds(pid), th0=threads(pid), ns0=task_cpu_ns(pid))
        t0 = time.monotonic()
        for i in range(n):                            # node_exporter: one scrape per interval
            get(ne_url)
            wait = t0 + (i + 1) * interval - time.monotonic()
            if wait > 0:
                time.sleep(wait)
        wall = time.monotonic() - t0
        ne1, nes1 = cpu_seconds(ne.pid), task_cpu_ns(ne.pid)
        for run in runs:
            pid = run["proc"].pid
            run.update(cpu1=cpu_seconds(pid), th1=threads(pid), ns1=task_cpu_ns(pid))
        for run in runs:
            if run["proc"].poll() is not None:
                raise SystemExit(f"agent {run['label']} exited ({run['proc'].returncode}); "
                                 f"see {run['log']}")
        # after the CPU window: the agent's /metrics is scraped once (as Prometheus does in
        # production), so its RSS includes what a scrape loads
        for run in runs:
            run["sent"] = [line for line in get(run["url"]).decode().splitlines()
                           if line.startswith(("foliowatch_agent_samples_sent_total",
                                               "foliowatch_agent_send_requests_total",
                                               "foliowatch_agent_spool_records "))]
            run["mem"] = memory(run["proc"].pid)
        ne_mem = memory(ne.pid)
    finally:
        for p in [run["proc"] for run in runs] + [ne]:
            p.terminate()
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
    ne_ms = (ne1 - ne0) / n * 1e3
    nes_ms = (nes1 - nes0) / n / 1e6
    mib = 1 << 20
    load = os.getloadavg()
    print(f"\nsteady state: {n} intervals of {interval:g} s ({wall / 60:.1f} min), agent "
          f"{'with' if bootstrap else 'without'} Kafka"
          f"{', tracepoint collector on (' + str(os.cpu_count()) + ' CPUs)' if tracepoints else ''}, Python {sys.version.split()[0]}, "
          f"{os.uname().release}; load average at the start {load0[0]:.2f} {load0[1]:.2f} "
          f"{load0[2]:.2f}, at the end {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(f"  node_exporter: CPU per scrape {ne_ms:.2f} ms (schedstat {nes_ms:.2f}), RSS "
          f"{ne_mem['VmRSS'] / mib:.1f} MiB (peak {ne_mem['VmHWM'] / mib:.1f})")
    print(f"  {'agent':34} {'ms/interval':>11} {'ratio':>6} {'schedstat':>9} {'ratio':>6} "
          f"{'RSS MiB':>8} {'ratio':>6} {'peak':>6}")
    for run in runs:
        ag_ms = (run["cpu1"] - run["cpu0"]) / n * 1e3
        ags_ms = (run["ns1"] - run["ns0"]) / n / 1e6
        rss, hwm = run["mem"]["VmRSS"], run["mem"]["VmHWM"]
        print(f"  {run['label']:34} {ag_ms:11.2f} {ag_ms / ne_ms:6.2f} {ags_ms:9.2f} "
              f"{ags_ms / nes_ms:6.2f} {rss / mib:8.1f} {rss / ne_mem['VmRSS']:6.2f} "
              f"{hwm / mib:6.1f}")
    print("  targets: CPU per interval <= 0.5x node_exporter's per scrape, RSS <= 1.3x")
    for run in runs:
        print(f"\nagent {run['label']}: {'; '.join(run['sent']) or 'no delivery figures'}")
        print("  threads over the run (in creation order: sampling (main), /metrics, "
              "delivery, kafka-python's network thread): CPU ms per interval (schedstat), "
              "wake-ups per interval (voluntary context switches), preemptions per interval")
        th0, th1 = run["th0"], run["th1"]
        for i, tid in enumerate(sorted(th1)):
            a, b = th0.get(tid, [0.0, 0, 0]), th1[tid]
            print(f"  thread {i} (tid {tid}) {(b[0] - a[0]) / n * 1e3:8.2f} ms "
                  f"{(b[1] - a[1]) / n:8.1f} {(b[2] - a[2]) / n:8.1f}")
    return 0


def ensure_topic(bootstrap: str, topic: str) -> None:
    from kafka.admin import KafkaAdminClient, NewTopic
    from kafka.errors import TopicAlreadyExistsError
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics([NewTopic(topic, num_partitions=6, replication_factor=1)])
    except TopicAlreadyExistsError:
        pass
    finally:
        admin.close()


def main() -> int:
    import argparse
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=300)
    ap.add_argument("--no-kafka", action="store_true")
    ap.add_argument("--bootstrap", default="")
    ap.add_argument("--topic", default="foliowatch.bench.agent")
    ap.add_argument("--steady-minutes", type=float, default=0.0,
                    help="instead of back-to-back samples: the real agent at --interval "
                         "for this long beside node_exporter scraped at the same interval")
    ap.add_argument("--interval", type=float, default=10.0,
                    help="--steady-minutes: the interval (default %(default)s, the agent's)")
    ap.add_argument("--dev-venv", action="store_true",
                    help="--steady-minutes: run the agent from this virtualenv instead of "
                         "a host-like install (the wheel and the agent's dependencies only)")
    ap.add_argument("--compare-with", metavar="GIT_REF",
                    help="--steady-minutes: also run the agent of this commit (installed "
                         "as on a host) side by side, beside the same node_exporter")
    ap.add_argument("--tracepoints", action="store_true",
                    help="--steady-minutes: the agents run the tracepoint collector "
                         "(agent.tracepoints.enabled; root and tracefs mounted)")
    ap.add_argument("--agent-worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--state-dir", help=argparse.SUPPRESS)
    ap.add_argument("--metrics-port", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.agent_worker:
        return agent_worker(args)
    import tempfile
    from pathlib import Path

    cluster = None
    bootstrap = args.bootstrap
    with tempfile.TemporaryDirectory(prefix="foliowatch-bench-") as tmp:
        try:
            if not args.no_kafka and not bootstrap:
                sys.path.insert(0, REPO)
                from foliowatch.shell.services import KafkaCluster
                print("starting a 1-broker Kafka for the run ...", file=sys.stderr)
                cluster = KafkaCluster(Path(tmp) / "kafka").start()
                bootstrap = cluster.bootstrap
            if bootstrap:
                ensure_topic(bootstrap, args.topic)
            if args.steady_minutes > 0:
                os.makedirs(Path(tmp) / "agent")
                here = "this tree" + (" (development virtualenv)" if args.dev_venv else "")
                agents = [(here, sys.executable if args.dev_venv else host_install(tmp))]
                if args.compare_with:
                    ref = checkout(args.compare_with, tmp)
                    agents.append((f"{args.compare_with} (side by side)",
                                   host_install(tmp, ref, "ref")))
                return steady(args.steady_minutes, args.interval,
                              "" if args.no_kafka else bootstrap, args.topic,
                              str(Path(tmp) / "agent"), agents, args.tracepoints)
            ne = bench_node_exporter(args.samples)
            ag = bench_agent(args.samples, "" if args.no_kafka else bootstrap, args.topic,
                             str(Path(tmp) / "agent"))
        finally:
            if cluster is not None:
                cluster.stop()

    mib = 1 << 20
    last = ag["phases"]["send" if "send" in ag["phases"] else "spool"]
    print(f"\n{args.samples} scrapes / samples on {os.uname().release} {os.uname().machine}, "
          f"{os.cpu_count()} CPUs; agent on Python {sys.version.split()[0]}; record "
          f"{last['record_bytes']} bytes, sent to Kafka {last['sent']}, left in spool "
          f"{last['spool_left']}\n")
    print(f"{'CPU per scrape / sample (ms)':52} {'node_exp':>9} {'agent':>8} {'ratio':>6}")
    ne_ms = ne["cpu_s"] * 1e3
    for phase, what in PHASES:
        if phase in ag["phases"]:
            ms = ag["phases"][phase]["cpu_s"] * 1e3
            print(f"  agent sample: {what:36} {ne_ms:9.2f} {ms:8.2f} {ms / ne_ms:6.2f}")
    ms = ag["scrape"]["cpu_s"] * 1e3
    print(f"  {'agent /metrics scrape (re-reads the kernel)':50} {ne_ms:9.2f} {ms:8.2f} "
          f"{ms / ne_ms:6.2f}")
    print(f"\n{'memory (MiB)':52} {'node_exp':>9} {'agent':>8} {'ratio':>6}")
    for name, a, b in (("RSS after the run", ne["VmRSS"], ag["VmRSS"]),
                       ("peak RSS", ne["VmHWM"], ag["scrape"]["VmHWM"])):
        print(f"  {name:50} {a / mib:9.1f} {b / mib:8.1f} {b / a:6.2f}")
    print(f"\n/metrics size: node_exporter {ne['bytes'] / 1024:.1f} KiB, agent "
          f"{ag['scrape']['bytes'] / 1024:.1f} KiB")
    st = ag["stages"]
    print(f"agent RSS by stage (MiB): interpreter {st['interpreter'] / mib:.1f}, "
          f"+ imports (prometheus-client, kafka-python, foliowatch) {st['imports'] / mib:.1f}, "
          f"+ agent, producer, /metrics server, 5 samples {st['agent_ready'] / mib:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
