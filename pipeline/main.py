"""``foliowatch pipeline``: consume samples (Kafka, or files with ``--from-files``),
validate, aggregate per window and cohort, write the Parquet dataset, serve /metrics."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from foliowatch import dataset as contract
from foliowatch.errors import ConfigError, ServiceError
from foliowatch.flags import add_metrics_addr, add_output
from foliowatch.kafka_io import TOPIC_DLQ, TOPIC_SAMPLES, add_kafka_arguments, settings_from_args

from .kafka_client import (CLIENTS, DEFAULT_CLIENT, DEFAULT_FETCH_MAX_BYTES,
                           DEFAULT_PARTITION_FETCH_BYTES)


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_output(p, required=True,
               help="dataset root: a local folder, or an s3:// URL (polars cloud support)")
    p.add_argument("--from-files", nargs="+", metavar="PATH",
                   help="read JSON lines / Parquet files or folders instead of Kafka")
    p.add_argument("--windows", default=",".join(str(w) for w in contract.DEFAULT_WINDOWS_S),
                   help="window lengths in seconds, comma-separated (default %(default)s)")
    p.add_argument("--lateness", type=float, default=300.0, metavar="SECONDS",
                   help="how far behind a partition's newest record a record may be and still "
                        "update its window (default %(default)s); later ones go to the DLQ")
    p.add_argument("--max-future", type=float, default=None, metavar="SECONDS",
                   help="reject records stamped more than this far ahead of this machine's "
                        "clock (0: off; default 600 from Kafka, off with --from-files, "
                        "whose data may be recorded or simulated at any time)")
    p.add_argument("--batch-records", type=int, default=10_000,
                   help="micro-batch size bound (default %(default)s; peak memory grows "
                        "with it: about 0.3 GB at 10k records of ~1.4 KB, for the same CPU "
                        "per record as larger batches)")
    p.add_argument("--batch-seconds", type=float, default=1.0,
                   help="micro-batch time bound (default %(default)s); a batch is also "
                        "handed over as soon as the consumer has caught up")
    add_kafka_arguments(p, "consume the samples from Kafka (unless --from-files)")
    k = p.add_argument_group("Kafka consumer")
    k.add_argument("--topic", default=TOPIC_SAMPLES)
    k.add_argument("--dlq-topic", default=TOPIC_DLQ)
    k.add_argument("--group", default="foliowatch-pipeline", help="consumer group id")
    k.add_argument("--state-dir", help="checkpoint folder (default OUTPUT/_state; required "
                                       "when OUTPUT is an object store URL)")
    k.add_argument("--checkpoint-seconds", type=float, default=5.0,
                   help="checkpoint + commit at most this often (default %(default)s)")
    k.add_argument("--until-idle", type=float, default=0.0, metavar="SECONDS",
                   help="stop after SECONDS with nothing to read, closing every window as the "
                        "end of the stream (one-shot runs over a finite topic)")
    k.add_argument("--max-poll-records", type=int, default=10_000)
    k.add_argument("--max-partition-fetch-bytes", type=int,
                   default=DEFAULT_PARTITION_FETCH_BYTES, help="default %(default)s")
    k.add_argument("--fetch-max-bytes", type=int, default=DEFAULT_FETCH_MAX_BYTES,
                   help="default %(default)s (larger fetches raise peak memory, not speed)")
    k.add_argument("--session-timeout-ms", type=int, default=10_000)
    k.add_argument("--kafka-client", choices=CLIENTS, default=DEFAULT_CLIENT,
                   help="Kafka client library (default %(default)s, librdkafka: measured "
                        "faster; kafka-python is pure Python)")
    add_metrics_addr(p, "127.0.0.1:9466",
                     help="serve /metrics on host:port (default %(default)s; 'off' to disable)")
    p.add_argument("--dlq-file", help="--from-files: this run's dead letters as JSON lines "
                                      "in this file, replacing its contents (default: one "
                                      "file per input, OUTPUT/_dlq/from-files-p<partition>"
                                      ".jsonl, rewritten when that input is run again)")
    p.add_argument("--log-level", default="INFO")


def _windows(text: str):
    try:
        ws = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise ConfigError(f"--windows: expected seconds like 60,3600, got {text!r}")
    if not ws or any(w <= 0 for w in ws):
        raise ConfigError(f"--windows: expected positive seconds, got {text!r}")
    return ws


def run(args) -> int:
    from foliowatch.malloc import tune_glibc_malloc
    tune_glibc_malloc()   # large blocks go back to the kernel when freed (peak RSS)
    logging.basicConfig(level=getattr(logging, str(args.log_level).upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from .engine import Pipeline, PipelineConfig
    from .exporter import PipelineMetrics
    from .sinks import DatasetWriter, FileDLQ, StateStore, is_remote

    if args.batch_records <= 0:
        raise ConfigError(f"--batch-records: expected > 0, got {args.batch_records}")
    if not 0 < args.batch_seconds < float("inf"):     # nan fails both comparisons
        raise ConfigError(f"--batch-seconds: expected a number of seconds > 0, got "
                          f"{args.batch_seconds}; the default is 1")
    max_future = args.max_future
    if max_future is None:
        max_future = 0.0 if args.from_files else 600.0
    cfg = PipelineConfig(output=args.output, windows_s=_windows(args.windows),
                         lateness_s=args.lateness, max_future_s=max_future)
    if cfg.lateness_s < 0:
        raise ConfigError(f"--lateness: expected >= 0 seconds, got {args.lateness}")
    paths = None
    if args.from_files:
        from .files import expand_inputs
        paths = expand_inputs(args.from_files)   # bad inputs fail before anything starts
    writer = DatasetWriter(args.output)
    metrics = PipelineMetrics()
    if args.metrics_addr != "off":
        try:
            metrics.serve(args.metrics_addr)
        except OSError as e:
            raise ConfigError(f"--metrics-addr {args.metrics_addr}: cannot listen "
                              f"({e.strerror}); pick a free port or 'off'") from None

    if paths is not None:
        from .files import run_files
        if args.dlq_file:
            dlq = FileDLQ(Path(args.dlq_file))
        elif is_remote(args.output):
            raise ConfigError("--from-files with an object-store --output: give "
                              "--dlq-file (a local path) for the dead letters")
        else:
            dlq = FileDLQ(Path(args.output) / "_dlq", per_input=True)
        pipeline = Pipeline(cfg, writer, dlq, metrics)
        totals = run_files(pipeline, paths, args.batch_records)
        totals["dlq_files"] = dlq.files()
        print(json.dumps(totals), file=sys.stdout)
        return 0

    from .consumer import ConsumerConfig, KafkaRunner, make_kafka_dlq
    settings = settings_from_args(args, client_id="foliowatch-pipeline")
    if args.state_dir:
        state_dir = args.state_dir
    elif is_remote(args.output):
        raise ConfigError("--output is an object store URL: give --state-dir (a local "
                          "or shared folder) for the partition checkpoints")
    else:
        state_dir = str(Path(args.output) / "_state")
    store = StateStore(state_dir, f"{args.group}.{args.topic}")
    from foliowatch.kafka_access import preflight, refusal
    preflight(settings)
    try:
        dlq = make_kafka_dlq(settings, args.dlq_topic)
    except ServiceError:
        raise
    except Exception as e:
        refused = refusal(settings, e, f"write the dead-letter topic {args.dlq_topic}")
        if refused:
            raise refused from None
        raise ServiceError(f"--bootstrap {','.join(settings.bootstrap)}: cannot reach Kafka "
                           f"({type(e).__name__}: {e}); is the broker running?") from None
    pipeline = Pipeline(cfg, writer, dlq, metrics)
    ccfg = ConsumerConfig(topic=args.topic, group=args.group,
                          batch_records=args.batch_records, batch_seconds=args.batch_seconds,
                          checkpoint_seconds=args.checkpoint_seconds,
                          until_idle_s=args.until_idle,
                          session_timeout_ms=args.session_timeout_ms,
                          max_partition_fetch_bytes=args.max_partition_fetch_bytes,
                          fetch_max_bytes=args.fetch_max_bytes,
                          max_poll_records=args.max_poll_records,
                          client=args.kafka_client)
    try:
        totals = KafkaRunner(settings, ccfg, pipeline, store, metrics).run()
    except Exception as e:
        refused = refusal(settings, e, f"read {args.topic} in group {args.group} and write "
                                       f"{args.dlq_topic}")
        if refused:
            raise refused from None
        raise
    print(json.dumps(totals), file=sys.stdout)
    return 0
