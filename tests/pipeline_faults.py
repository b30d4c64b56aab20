"""Runs ``foliowatch pipeline`` with faults injected from outside the product, for the
crash and rebalance tests:

    python tests/pipeline_faults.py [--kill-after-windows N] [--kill-at STEP --kill-after N]
                                    [--batch-pause S] -- pipeline ARGS...

``--kill-after-windows N``: SIGKILL the process right after the N-th window's files are
durable and before the checkpoint that would cover them (the worst moment to crash).
``--kill-at STEP``: SIGKILL it at the N-th (``--kill-after``, default 1) passage through
one step of a micro-batch: ``consume`` (records polled, not yet processed), ``decode``
(decoded and validated, not yet aggregated), ``write`` (window files durable, no
checkpoint yet), ``checkpoint`` (one partition's checkpoint saved, the others and the
offset commit not yet), ``commit`` (every checkpoint saved, the offset commit not sent).
``--batch-pause S``: sleep S seconds between micro-batches, so that a test can act
(SIGKILL, a second instance joining) while a run is under way.
``--slow-worker S --in-flight-file PATH``: the batch worker sleeps S seconds per batch
(the slower side), and PATH gets the largest number of batches alive at once (handed to
the worker and not yet processed, plus the one being filled), counted at the start of
each fill.
What follows ``--`` is the command line of ``foliowatch`` (``pipeline`` and its arguments).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time


STEPS = ("consume", "decode", "write", "checkpoint", "commit")


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _kill_on_nth(owner, name: str, n: int, before: bool = False,
                 counts=lambda result: True) -> None:
    """Wrap ``owner.name`` so that its n-th counted call SIGKILLs the process (after
    the call returns, or just before it runs with ``before``)."""
    original = getattr(owner, name)
    seen = [0]

    def wrapped(*args, **kwargs):
        if before:
            seen[0] += 1
            if seen[0] >= n:
                _die()
            return original(*args, **kwargs)
        result = original(*args, **kwargs)
        if counts(result):
            seen[0] += 1
            if seen[0] >= n:
                _die()
        return result
    setattr(owner, name, wrapped)


def inject_kill_at(step: str, n: int) -> None:
    from foliowatch.pipeline import engine, kafka_client
    from foliowatch.pipeline.consumer import KafkaRunner
    from foliowatch.pipeline.sinks import StateStore
    if step == "consume":
        _kill_on_nth(KafkaRunner, "_fill_batch", n, counts=lambda got: got > 0)
    elif step == "decode":
        _kill_on_nth(engine, "decode_batch", n)
    elif step == "write":
        _kill_on_nth(engine.Pipeline, "wait_durable", n, counts=lambda windows: windows > 0)
    elif step == "checkpoint":
        _kill_on_nth(StateStore, "save", n)
    elif step == "commit":
        # the consumer interface's commit, whichever Kafka client the pipeline runs on
        for client in (kafka_client.ConfluentConsumer, kafka_client.KafkaPythonConsumer):
            _kill_on_nth(client, "commit", n, before=True)
    else:
        raise SystemExit(f"--kill-at: one of {', '.join(STEPS)}, got {step!r}")


def inject(kill_after_windows: int, batch_pause_s: float) -> None:
    from foliowatch.pipeline.consumer import KafkaRunner
    from foliowatch.pipeline.engine import Pipeline

    if kill_after_windows:
        wait_durable = Pipeline.wait_durable
        written = [0]

        def durable_then_maybe_die(self):
            n = wait_durable(self)           # returns once the windows' files are durable
            written[0] += n
            if written[0] >= kill_after_windows:
                os.kill(os.getpid(), signal.SIGKILL)
            return n
        Pipeline.wait_durable = durable_then_maybe_die

    if batch_pause_s:
        fill = KafkaRunner._fill_batch

        def pause_between_batches(self):
            if getattr(self, "_faults_had_batch", False):
                time.sleep(batch_pause_s)
            n = fill(self)
            self._faults_had_batch = n > 0
            return n
        KafkaRunner._fill_batch = pause_between_batches


def count_in_flight(slow_worker_s: float, path: str) -> None:
    import atexit
    import threading

    from foliowatch.pipeline.consumer import KafkaRunner
    lock = threading.Lock()
    handed, most = [0], [0]
    fill, hand, work = (KafkaRunner._fill_batch, KafkaRunner._process_pending,
                        KafkaRunner._process_records)

    def counted_fill(self):
        with lock:
            most[0] = max(most[0], handed[0] + 1)   # + the batch this fill makes
        return fill(self)

    def counted_hand(self):
        if len(self.pending):
            with lock:
                handed[0] += 1
        return hand(self)

    def slow_work(self, *batch):
        time.sleep(slow_worker_s)
        try:
            return work(self, *batch)
        finally:
            with lock:
                handed[0] -= 1

    KafkaRunner._fill_batch = counted_fill
    KafkaRunner._process_pending = counted_hand
    KafkaRunner._process_records = slow_work

    def report():
        with open(path, "w") as f:
            f.write(str(most[0]))
    atexit.register(report)


def main(argv) -> int:
    p = argparse.ArgumentParser(prog="pipeline_faults.py")
    p.add_argument("--kill-after-windows", type=int, default=0)
    p.add_argument("--batch-pause", type=float, default=0.0)
    p.add_argument("--kill-at", choices=STEPS)
    p.add_argument("--kill-after", type=int, default=1)
    p.add_argument("--slow-worker", type=float, default=0.0)
    p.add_argument("--in-flight-file")
    p.add_argument("pipeline_args", nargs=argparse.REMAINDER)
    args = p.parse_args(argv)
    rest = args.pipeline_args[1:] if args.pipeline_args[:1] == ["--"] else args.pipeline_args
    inject(args.kill_after_windows, args.batch_pause)
    if args.kill_at:
        inject_kill_at(args.kill_at, args.kill_after)
    if args.in_flight_file:
        count_in_flight(args.slow_worker, args.in_flight_file)
    if rest[:1] != ["pipeline"]:
        p.error(f"expected `-- pipeline ARGS...`, got {rest[:1]}")
    from foliowatch.shell.cli import main as cli
    return cli(rest)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
