"""``foliowatch simulate``: generate a simulated fleet's telemetry to files or Kafka.

    foliowatch simulate --list
    foliowatch simulate --scenario seed-iomap-arm64-xfs --hosts 2000 --hours 12 --output data/
    foliowatch simulate --scenario my.toml --bootstrap 127.0.0.1:9092 --realtime --speed 60
"""

from __future__ import annotations

import argparse
import json
import time

from foliowatch.errors import ConfigError, FoliowatchError, ServiceError
from foliowatch.flags import add_output
from foliowatch.kafka_io import add_kafka_arguments, kafka_requested, settings_from_args

from .scenario import list_scenarios, load_scenario


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--list", action="store_true", help="list the named scenarios and exit")
    p.add_argument("--scenario", metavar="NAME|PATH",
                   help="a named scenario (see --list) or a scenario TOML file")
    p.add_argument("--hosts", type=int, help="total hosts (groups scaled in proportion)")
    p.add_argument("--hours", type=float, help="simulated duration in hours")
    p.add_argument("--interval", type=float, help="agent sampling interval in seconds")
    p.add_argument("--seed", type=int, help="random seed (default: the scenario's)")
    p.add_argument("--start", metavar="now|ISO8601",
                   help="start of the simulated clock (default: the scenario's; 'now' suits "
                        "--realtime demos)")
    add_output(p, help="write files (and ground_truth.json) here", old=("--out",))
    add_kafka_arguments(p, "produce to Kafka instead of files (key = host id)",
                        old_spelling="--kafka")
    p.add_argument("--format", choices=("jsonl", "parquet"), default="jsonl",
                   help="file format with --output (default jsonl)")
    p.add_argument("--topic", help="Kafka topic (default foliowatch.samples.v1)")
    p.add_argument("--realtime", action="store_true",
                   help="with Kafka: send each record at its simulated time")
    p.add_argument("--speed", type=float, default=1.0,
                   help="with --realtime: simulated seconds per wall-clock second")
    p.add_argument("--workers", type=int, default=1,
                   help="with Kafka: producer processes, each sending a share of the hosts")
    p.add_argument("--truth", metavar="FILE",
                   help="with Kafka: also write ground_truth.json to this file")


def run(args: argparse.Namespace) -> int:
    if args.list:
        for name in list_scenarios():
            sc = load_scenario(name)
            first = (sc.description.strip().splitlines() or [""])[0]
            print(f"{name:32s} {sc.hosts:6d} hosts {sc.hours:5g} h  {first}")
        return 0
    if not args.scenario:
        raise ConfigError("--scenario NAME|PATH is required (or --list)")
    to_kafka = kafka_requested(args)
    if bool(args.output) == to_kafka:
        raise ConfigError("give --output DIR or --bootstrap HOST:PORT (or --kafka-config), "
                          "one of them")
    if args.realtime and not to_kafka:
        raise ConfigError("--realtime needs --bootstrap (Kafka)")
    sc = load_scenario(args.scenario, hosts=args.hosts, hours=args.hours,
                       interval_s=args.interval, seed=args.seed, start=args.start)
    t0 = time.monotonic()
    if args.output:
        from .outputs import write_files
        paths = write_files(sc, args.output, sc.seed, fmt=args.format)
        secs = time.monotonic() - t0
        print(json.dumps({"scenario": sc.name, "seed": sc.seed, "hosts": sc.hosts,
                          "files": [str(p) for p in paths], "seconds": round(secs, 2)}))
        return 0
    from .outputs import produce_to_kafka, write_ground_truth
    settings = settings_from_args(args, client_id="foliowatch-simulator")
    from foliowatch.kafka_access import preflight
    preflight(settings)
    if args.truth:
        from pathlib import Path
        Path(args.truth).parent.mkdir(parents=True, exist_ok=True)
        gt = write_ground_truth(sc, Path(args.truth).parent, sc.seed)
        if gt != Path(args.truth):
            gt.replace(args.truth)
    try:
        result = produce_to_kafka(sc, settings, args.topic, sc.seed, realtime=args.realtime,
                                  speed=args.speed, workers=args.workers)
    except FoliowatchError:
        raise
    except Exception as e:   # the client's own errors: say which setting, or that Kafka is away
        from foliowatch.kafka_access import refusal
        refused = refusal(settings, e, f"write {args.topic or 'foliowatch.samples.v1'}")
        if refused:
            raise refused from None
        raise ServiceError(f"{settings.name('bootstrap')} {','.join(settings.bootstrap)}: "
                           f"producing failed ({type(e).__name__}: {e}); is the broker "
                           "running?") from None
    result.update(scenario=sc.name, seed=sc.seed, hosts=sc.hosts)
    print(json.dumps(result))
    return 0
