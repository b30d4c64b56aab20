"""Fuzzing the pipeline with hostile batches for minutes (hypothesis): the property of
tests/faults/hostile.py, "never crashes, never lets a bad record into an aggregate",
over as many generated batches as fit in the time given.

    .venv/bin/python benchmarks/fuzz_pipeline.py --minutes 5 [--json out.json]

Prints (and with --json writes) the figures: batches and messages tried, messages by
outcome, crashes (an exception out of the pipeline) and property violations, with the
first failing input of each (hypothesis shrinks it). Exit 1 when anything failed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "faults"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=5.0)
    ap.add_argument("--chunk", type=int, default=200, help="examples per hypothesis run")
    ap.add_argument("--json", help="write the figures to this file")
    args = ap.parse_args(argv)

    import logging
    logging.disable(logging.WARNING)   # the pipeline's per-batch warnings (seq gaps, ...)
    from hypothesis import HealthCheck, given, settings

    from hostile import check_batch, messages

    figures = {"batches": 0, "messages": 0, "accepted": 0, "invalid": 0, "late": 0,
               "duplicates": 0, "crashes": 0, "violations": 0, "failures": [],
               "seconds": 0.0, "load_avg_1m": os.getloadavg()[0]}

    @settings(max_examples=args.chunk, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(messages())
    def fuzz(values):
        counts = check_batch(values)
        figures["batches"] += 1
        for k in ("accepted", "invalid", "late", "duplicates"):
            figures[k] += counts[k]
        figures["messages"] += counts["records"]

    t0 = time.monotonic()
    deadline = t0 + args.minutes * 60
    while time.monotonic() < deadline:
        try:
            fuzz()
        except AssertionError as e:
            figures["violations"] += 1
            figures["failures"].append({"kind": "violation", "error": str(e)[:2000]})
        except Exception as e:   # noqa: BLE001 - an exception out of the pipeline: a crash
            figures["crashes"] += 1
            figures["failures"].append({"kind": "crash", "error": "".join(
                traceback.format_exception_only(type(e), e))[:2000]})
    figures["seconds"] = round(time.monotonic() - t0, 1)
    text = json.dumps(figures, indent=1)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 1 if figures["crashes"] or figures["violations"] else 0


if __name__ == "__main__":
    sys.exit(main())
