"""``foliowatch agent``: collect kernel telemetry on this host, send it to Kafka, serve
/metrics.

    foliowatch agent --check [--config agent.toml]   validate, print every problem
    foliowatch agent --once --stdout                  one sample as JSON, no Kafka, no state
    foliowatch agent --config /etc/foliowatch/agent.toml   run (systemd)
    foliowatch agent --print-default-config           the embedded default, documented

Exit codes: 0 ok; 1 samples left undelivered (``--once``) or a runtime failure; 2 invalid
configuration, or (``--once``) Kafka refusing the agent's credentials, certificate trust
or ACLs (the message names the setting; the running service logs the same line and
keeps its samples in the spool until the setting is fixed).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys
import threading
import time
import types

from foliowatch.agent import config as agent_config
from foliowatch.agent.stop import StopFlag


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="PATH",
                        help="TOML file (default: the embedded default + FOLIOWATCH_AGENT_* "
                             "environment overrides)")
    parser.add_argument("--check", action="store_true",
                        help="validate the configuration and this host's files, print each "
                             "problem with its key, exit 0 (valid) or 2")
    parser.add_argument("--once", action="store_true",
                        help="take one sample (after a baseline if none is stored), deliver, "
                             "exit")
    parser.add_argument("--stdout", action="store_true",
                        help="print samples as JSON lines instead of spooling and sending; "
                             "touches no state")
    parser.add_argument("--interval", type=float, metavar="SECONDS",
                        help="override agent.interval_s (with --once --stdout: the sampled "
                             "interval, default 1)")
    parser.add_argument("--state-dir", metavar="DIR", help="override agent.state_dir")
    parser.add_argument("--print-default-config", action="store_true",
                        help="print the embedded default configuration and exit")
    parser.add_argument("--export-tracefs-events", metavar="DIR",
                        help="as root: copy the id and format files of the tracepoints the "
                             "collector counts from tracefs into DIR (world-readable), for "
                             "an agent running unprivileged with CAP_PERFMON and "
                             "agent.tracepoints.tracefs = DIR; exit 0, or 1 with DIR "
                             "removed")


def _load(args) -> "tuple":
    environ = dict(os.environ)
    if args.interval is not None:
        environ["FOLIOWATCH_AGENT_INTERVAL_S"] = str(args.interval)
    if args.state_dir:
        environ["FOLIOWATCH_AGENT_STATE_DIR"] = os.path.abspath(args.state_dir)
    return agent_config.load(args.config, environ)


def _runtime_problems(cfg) -> list:
    """What --check can verify on this host beyond the file itself."""
    problems = []
    for path in ("/proc/vmstat", "/proc/buddyinfo", "/proc/diskstats", "/proc/meminfo"):
        if not os.access(path, os.R_OK):
            problems.append(f"host {path}: not readable; the agent needs procfs mounted")
    if not os.path.exists("/proc/pressure/memory"):
        problems.append("host /proc/pressure/memory: absent (kernel without CONFIG_PSI or "
                        "booted with psi=0); psi_* counters will be absent (warning)")
    if cfg.probe.enabled and cfg.probe.user and os.geteuid() == 0:
        import pwd
        try:
            pwd.getpwnam(cfg.probe.user)
        except KeyError:
            problems.append(f"config agent.probe.user: no user {cfg.probe.user!r} on this "
                            "host; create it or name an existing unprivileged user")
    if cfg.tracepoints.enabled:
        from foliowatch.agent.collectors import tracepoints
        tp = tracepoints.TracepointCounters(
            tracepoints.parse_buckets(cfg.tracepoints.order_buckets),
            tracefs=cfg.tracepoints.tracefs)
        tp.open()
        tp.close()
        if tp.off_reason:
            problems.append(f"config agent.tracepoints.enabled: the collector will be off: "
                            f"{tp.off_reason} (warning)")
        problems += [f"{p} (warning)" for p in tp.problems]
    for m in cfg.mounts:
        if not os.path.exists(m):
            problems.append(f"config agent.mounts: {m!r} does not exist on this host; remove "
                            "it or create the mount")
    parent = cfg.state_dir
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.access(parent, os.W_OK):
        problems.append(f"config agent.state_dir: {cfg.state_dir!r} not writable by uid "
                        f"{os.geteuid()}; create it for the agent's user")
    return problems


def _export_tracefs_events(dest: str) -> int:
    from foliowatch.agent.collectors import tracepoints
    try:
        copied = tracepoints.export_event_files(dest)
    except tracepoints.TracepointsUnavailable as e:
        print(f"foliowatch agent --export-tracefs-events: {e}; the tracepoint collector "
              "will be off", file=sys.stderr)
        return 1
    missing = [e for e in tracepoints.EVENTS if e not in copied]
    print(f"foliowatch agent --export-tracefs-events: {len(copied)} of "
          f"{len(tracepoints.EVENTS)} events copied to {os.path.abspath(dest)}"
          + (f" (not in this kernel: {', '.join(missing)})" if missing else ""))
    return 0


def _stdout_samples(cfg, once: bool, interval: float) -> int:
    from foliowatch import schema
    from foliowatch.agent.deltas import Baseline
    from foliowatch.agent.sampler import Sampler
    try:
        sampler = Sampler(cfg)
    except RuntimeError as e:
        print(f"foliowatch agent: {e}", file=sys.stderr)
        return 1
    baseline = Baseline()
    seq = 0
    sampler.record(sampler.read(), baseline, seq)
    stop = _stop_event()
    while not stop.wait(interval):
        record = sampler.record(sampler.read(), baseline, seq)
        if record is None:
            continue
        sys.stdout.write(schema.encode(record).decode() + "\n")
        sys.stdout.flush()
        seq += 1
        if once:
            break
    return 0


# Compression libraries kafka-python's codec module imports whenever they are installed,
# by the agent.kafka.compression that needs each.
_CODEC_MODULES = {"zstd": ("zstandard",), "lz4": ("lz4", "lz4.frame", "lz4f", "lz4framed",
                                                 "xxhash"), "snappy": ("snappy",)}


class _OnFirstUse(types.ModuleType):
    """Stands in for a module until one of its attributes is read, then loads it (and
    takes its namespace, for the modules that imported the stand-in). importlib's
    LazyLoader does not serve here: a later ``import`` statement reads ``__spec__`` and
    loads the module at once."""

    def __getattr__(self, name: str):
        del sys.modules[self.__name__]
        real = importlib.import_module(self.__name__)
        self.__dict__.update(real.__dict__)
        return getattr(real, name)


def _import_only_what_is_used(cfg) -> None:
    """Keep libraries this configuration never calls out of the agent's memory (it runs
    on every host; measured in benchmarks/agent_vs_node_exporter.md). kafka-python
    imports them all when it loads:

    - ``ssl`` (libssl, ~1.2 MiB) without TLS: loaded lazily, on first use;
    - OpenSSL's hashes (``_hashlib``, libcrypto, ~3.6 MiB) without TLS or SASL: hashlib
      then uses Python's built-in SHA-2 and MD5, all kafka-python's import touches;
    - compression libraries other than the configured one.

    Only in the agent's own process (the CLI), never for a library user."""
    protocol = cfg.kafka.security_protocol if cfg.kafka_enabled else "PLAINTEXT"
    tls, sasl = protocol.endswith("SSL"), protocol.startswith("SASL")
    if not tls and "ssl" not in sys.modules:
        sys.modules["ssl"] = _OnFirstUse("ssl")
    if not tls and not sasl and "hashlib" not in sys.modules:
        sys.modules.setdefault("_hashlib", None)   # type: ignore[arg-type]
    for codec, modules in _CODEC_MODULES.items():
        if codec != cfg.kafka.compression:
            for name in modules:
                sys.modules.setdefault(name, None)  # type: ignore[arg-type]


def _malloc_settings() -> None:
    """glibc gives each thread that allocates its own malloc arena; the agent's four
    threads (sampling, delivery, Kafka's network thread, /metrics) are idle nearly
    always, and one shared arena saves ~1.5 MiB of resident memory (as
    MALLOC_ARENA_MAX=1 would). The fixed mmap threshold (``foliowatch.malloc``) returns
    the codec's ~0.8 MiB zstd context, made and freed once per Kafka request, to the
    kernel. Before any thread starts; a no-op off glibc."""
    from foliowatch.malloc import tune_glibc_malloc
    tune_glibc_malloc(arena_max=1)


def _stop_event() -> StopFlag:
    stop = StopFlag()

    def handler(signum, frame):
        stop.set()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)
    return stop


def run(args) -> int:
    if args.print_default_config:
        sys.stdout.write(agent_config.DEFAULT_TOML)
        return 0
    if args.export_tracefs_events:
        return _export_tracefs_events(args.export_tracefs_events)
    cfg, problems = _load(args)
    logging.basicConfig(level=getattr(logging, cfg.log_level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    if cfg.log_level != "debug":
        # kafka-python logs every failed connection attempt at ERROR; during an outage
        # that floods the journal. The agent logs one line per failed delivery instead.
        logging.getLogger("kafka").setLevel(logging.CRITICAL)
    if args.check:
        if not problems:
            problems = _runtime_problems(cfg)
        for p in problems:
            print(p, file=sys.stderr)
        errors = [p for p in problems if not p.endswith("(warning)")]
        if errors:
            print(f"foliowatch agent --check: {len(errors)} problem(s)", file=sys.stderr)
            return 2
        print(f"foliowatch agent --check: configuration valid ({args.config or 'embedded default'})")
        return 0
    if problems:
        for p in problems:
            print(p, file=sys.stderr)
        return 2
    if args.stdout:
        interval = args.interval if args.interval is not None else (1.0 if args.once
                                                                   else cfg.interval_s)
        return _stdout_samples(cfg, args.once, interval)

    _import_only_what_is_used(cfg)
    _malloc_settings()
    from foliowatch.agent.runner import Agent
    try:
        agent = Agent(cfg)
    except RuntimeError as e:
        print(f"foliowatch agent: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # the state directory: lock, state file, spool
        print(f"foliowatch agent: agent.state_dir {cfg.state_dir}: {e.strerror} "
              f"({e.filename}); make it writable for uid {os.geteuid()} or set "
              "agent.state_dir", file=sys.stderr)
        return 1
    server = None
    stop = _stop_event()
    try:
        if cfg.metrics_enabled and not args.once:
            from foliowatch.agent.exporter import serve
            try:
                server = serve(agent, cfg.metrics_address())
            except OSError as e:
                print(f"foliowatch agent: agent.metrics.listen {cfg.metrics_listen}: "
                      f"{e.strerror}; pick a free port or set agent.metrics.enabled = false",
                      file=sys.stderr)
                return 1
            logging.getLogger("foliowatch.agent").info(
                "/metrics on http://%s:%d/metrics", *cfg.metrics_address())
        if args.once:
            record = agent.tick()
            if record is None:  # first run: this reading was the baseline
                time.sleep(min(cfg.interval_s, 5.0))
                record = agent.tick()
            left = len(agent.spool)
            if agent.sender is not None and agent.sender.refused:
                from foliowatch.kafka_access import KafkaAccessError
                raise KafkaAccessError(f"{agent.sender.refused} ({left} sample(s) wait in "
                                       f"{cfg.state_dir}/spool)")
            if record is not None:
                waiting = (f"{left} sample(s) wait in {cfg.state_dir}/spool for Kafka"
                           if agent.sender is not None and left else
                           "delivered" if agent.sender is not None else
                           f"spooled (Kafka disabled; {left} in the spool)")
                print(f"foliowatch agent --once: sample seq {record['seq']}: {waiting}",
                      file=sys.stderr)
            return 1 if (left and agent.sender is not None) else 0
        agent.run(stop)
        return 0
    finally:
        if server is not None:
            server.shutdown()
        agent.close()
