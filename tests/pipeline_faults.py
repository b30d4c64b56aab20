"""Runs ``foliowatch pipeline`` with faults injected from outside the product, for the
crash and rebalance tests:

    python tests/pipeline_faults.py [--kill-after-windows N] [--batch-pause S] -- pipeline ARGS...

``--kill-after-windows N``: SIGKILL the process right after the N-th window's files are
durable and before the checkpoint that would cover them (the worst moment to crash).
``--batch-pause S``: sleep S seconds between micro-batches, so that a test can act
(SIGKILL, a second instance joining) while a run is under way.
What follows ``--`` is the command line of ``foliowatch`` (``pipeline`` and its arguments).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time


def inject(kill_after_windows: int, batch_pause_s: float) -> None:
    from foliowatch.pipeline.consumer import KafkaRunner
    from foliowatch.pipeline.engine import Pipeline

    if kill_after_windows:
        emit = Pipeline.emit
        written = [0]

        def emit_then_maybe_die(self, closed):
            n = emit(self, closed)           # returns once the windows' files are durable
            written[0] += n
            if written[0] >= kill_after_windows:
                os.kill(os.getpid(), signal.SIGKILL)
            return n
        Pipeline.emit = emit_then_maybe_die

    if batch_pause_s:
        fill = KafkaRunner._fill_batch

        def pause_between_batches(self):
            if getattr(self, "_faults_had_batch", False):
                time.sleep(batch_pause_s)
            n = fill(self)
            self._faults_had_batch = n > 0
            return n
        KafkaRunner._fill_batch = pause_between_batches


def main(argv) -> int:
    p = argparse.ArgumentParser(prog="pipeline_faults.py")
    p.add_argument("--kill-after-windows", type=int, default=0)
    p.add_argument("--batch-pause", type=float, default=0.0)
    p.add_argument("pipeline_args", nargs=argparse.REMAINDER)
    args = p.parse_args(argv)
    rest = args.pipeline_args[1:] if args.pipeline_args[:1] == ["--"] else args.pipeline_args
    inject(args.kill_after_windows, args.batch_pause)
    if rest[:1] != ["pipeline"]:
        p.error(f"expected `-- pipeline ARGS...`, got {rest[:1]}")
    from foliowatch.shell.cli import main as cli
    return cli(rest)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
