"""Sample accounting for the fault suite, Jepsen style: every sample a producer made is
identified by ``(host_id, boot_id, seq)``; after a scenario the dataset (Parquet) and
the dead-letter topic are read back and every sample is put in exactly one class:

- ``aggregated``: counted in the dataset's host windows (once per window length);
- ``dlq``: not aggregated, parked in the DLQ with a reason (e.g. ``late``);
- ``dropped``: never reached Kafka and the producer says so (the agent's spool dropped
  its oldest samples when full, and counted them);
- ``lost``: produced, but neither aggregated, nor in the DLQ, nor counted as dropped;
- ``twice``: the dataset counts more samples for a host window than were produced for it.

The dataset does not keep ``seq`` (a host window is a sum of samples), so the check is
made per host window: for each ``(window length, host_id, boot_id, fs, window start)``
the samples the dataset counts (summed over every file that holds that window, so a
window written twice under two names shows up) are compared with the samples produced
for it. When no sample of the window went to the DLQ the count must match exactly and
so must the window's sum of intervals (a lost sample and a double-counted one in the
same window would keep the count but not that sum).

``Ledger`` collects what was produced: the simulator's records are regenerated from the
scenario and seed (deterministic), the real agent's from its state folder (every seq
below ``resume_seq`` was given to an accepted sample) and the records Kafka holds (their
timestamps). ``record_result`` appends a scenario's figures to the file named by
``FOLIOWATCH_FAULTS_RESULTS`` (``make faults`` renders them into docs/reliability.md).
"""

from __future__ import annotations

import base64
import json
import math
import os
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import polars as pl

from foliowatch import dataset as contract
from foliowatch import schema as wire

Ident = Tuple[str, str, int]          # (host_id, boot_id, seq)


@dataclass
class Sample:
    ts: float
    interval_s: float
    fs: Tuple[str, ...]
    source: str                        # "simulator", "agent", ...


@dataclass
class Accounting:
    scenario: str
    checked: str
    produced: int = 0
    aggregated: int = 0
    dlq: Dict[str, int] = field(default_factory=dict)      # reason -> samples
    dropped: int = 0                   # dropped by a producer and counted by it
    lost: int = 0
    twice: int = 0
    other_dlq: int = 0                 # DLQ records that are no produced sample (garbage)
    problems: List[str] = field(default_factory=list)      # the first few, for the message

    def summary(self) -> str:
        return (f"{self.scenario}: produced {self.produced}, aggregated {self.aggregated}, "
                f"in DLQ {sum(self.dlq.values())} {dict(self.dlq)}, dropped (counted) "
                f"{self.dropped}, lost {self.lost}, counted twice {self.twice}"
                + ("".join(f"\n  {p}" for p in self.problems[:10])))

    def assert_exact(self) -> None:
        assert self.lost == 0 and self.twice == 0, self.summary()
        assert self.aggregated + sum(self.dlq.values()) + self.dropped == self.produced, \
            self.summary()


class Ledger:
    """What the producers made, by identity."""

    def __init__(self):
        self.samples: Dict[Ident, Sample] = {}
        self.unseen: Dict[Ident, str] = {}     # assigned but never in Kafka: the source
        self.dropped_counted: Dict[str, int] = {}   # source -> samples it says it dropped

    def add(self, ident: Ident, sample: Sample) -> None:
        self.samples.setdefault(ident, sample)

    def add_simulator(self, scenario, seed: Optional[int] = None) -> int:
        """Every record of a (fault-free) simulated scenario, regenerated."""
        from foliowatch.simulator.frames import simulate_frame, to_wire_json
        n = 0
        for chunk in simulate_frame(scenario, seed):
            for value in to_wire_json(chunk).to_list():
                rec = json.loads(value)
                self.add(_ident(rec), _sample(rec, "simulator"))
                n += 1
        return n

    def add_agent(self, state_dir: Path, messages: Iterable[bytes], dropped: int = 0) -> int:
        """A real agent's samples: seq 0 .. resume_seq-1 of its host were all given to
        accepted samples (``state.py``); Kafka's copies give their timestamps. ``dropped``: what the agent reported dropping (spool full)."""
        from foliowatch.agent.state import resume_seq
        st = json.loads((Path(state_dir) / "state.json").read_text())
        host = st["host_id"]
        n_assigned = resume_seq(str(state_dir))
        seen: Dict[int, Tuple[Ident, dict]] = {}
        for value in messages:
            try:
                rec = wire.decode(value)
            except wire.SchemaError:
                continue
            if rec["host_id"] == host:
                seen.setdefault(rec["seq"], (_ident(rec), rec))
        for seq in range(n_assigned):
            if seq in seen:
                ident, rec = seen[seq]
                self.add(ident, _sample(rec, "agent"))
            else:
                self.unseen[(host, "?", seq)] = "agent"
        self.dropped_counted["agent"] = self.dropped_counted.get("agent", 0) + dropped
        return n_assigned


def _ident(rec: dict) -> Ident:
    return (rec["host_id"], rec["boot_id"], int(rec["seq"]))


def _sample(rec: dict, source: str) -> Sample:
    return Sample(float(rec["ts"]), float(rec["interval_s"]), tuple(wire.fs_of(rec)), source)


def read_dlq(messages: Iterable[bytes]) -> List[Tuple[Optional[Ident], str]]:
    """The DLQ topic's records as (identity of the original sample or None, reason)."""
    out = []
    for value in messages:
        d = json.loads(value)
        ident = None
        try:
            orig = json.loads(base64.b64decode(d["value_b64"]))
            ident = (orig["host_id"], orig["boot_id"], int(orig["seq"]))
        except (ValueError, KeyError, TypeError):
            pass
        out.append((ident, d["reason"].split(":")[0]))
    return out


def read_host_windows(root: Path, window_s: int) -> pl.DataFrame:
    """Every host row of one window length, summed over the files that hold it."""
    files = sorted(Path(root).glob(f"level=host/window_s={window_s}/*/*.parquet"))
    cols = ["host_id", "boot_id", "fs", "window_start", "samples", "interval_s_sum"]
    if not files:
        return pl.DataFrame(schema={"host_id": pl.String, "boot_id": pl.String,
                                    "fs": pl.String, "window_start": pl.Int64,
                                    "samples": pl.Int64, "interval_s_sum": pl.Float64,
                                    "files": pl.UInt32})
    df = pl.concat([pl.read_parquet(f, columns=cols, hive_partitioning=False) for f in files])
    return (df.with_columns(pl.col("window_start").dt.epoch("s"))
            .group_by("host_id", "boot_id", "fs", "window_start")
            .agg(pl.col("samples").sum(), pl.col("interval_s_sum").sum(),
                 pl.len().alias("files")))


def account(scenario: str, checked: str, ledger: Ledger, dataset: Path,
            dlq_messages: Iterable[bytes],
            windows_s: Sequence[int] = contract.DEFAULT_WINDOWS_S) -> Accounting:
    acc = Accounting(scenario, checked)
    dlq = read_dlq(dlq_messages)
    dlq_reason: Dict[Ident, str] = {}
    for ident, reason in dlq:
        if ident is not None and ident in ledger.samples:
            dlq_reason.setdefault(ident, reason)
        else:
            acc.other_dlq += 1
    produced_ids = set(ledger.samples) | set(ledger.unseen)
    acc.produced = len(produced_ids)
    # never reached Kafka: counted drops first, the rest is lost
    unseen_by_source = Counter(ledger.unseen.values())
    for source, n in unseen_by_source.items():
        counted = min(n, ledger.dropped_counted.get(source, 0))
        acc.dropped += counted
        if n > counted:
            acc.lost += n - counted
            acc.problems.append(f"{n - counted} {source} sample(s) assigned a seq but never "
                                f"in Kafka and not counted as dropped")
    if ledger.dropped_counted.get("agent", 0) > unseen_by_source.get("agent", 0):
        acc.problems.append(f"the agent counts {ledger.dropped_counted['agent']} dropped "
                            f"samples but only {unseen_by_source.get('agent', 0)} are missing")
    aggregated_per_level = []
    level_lost = 0
    for w in windows_s:
        expected: Dict[tuple, List[Tuple[Ident, Sample]]] = defaultdict(list)
        for ident, s in ledger.samples.items():
            for fs in s.fs:
                expected[(ident[0], ident[1], fs, int(math.floor(s.ts / w) * w))].append(
                    (ident, s))
        got = {(h, b, fs, ws): (n, iv, nf) for h, b, fs, ws, n, iv, nf in
               read_host_windows(dataset, w).iter_rows()}
        lost = twice = agg = 0
        for key in set(expected) | set(got):
            members = expected.get(key, [])
            n_got, iv_got, n_files = got.get(key, (0, 0.0, 0))
            parked = sum(1 for ident, _s in members if ident in dlq_reason)
            must = len(members) - parked           # at least these are aggregated
            if n_got > len(members):
                twice += n_got - len(members)
                acc.problems.append(f"window_s={w} {key}: {n_got} samples in {n_files} "
                                    f"file(s), {len(members)} produced")
            elif n_got < must:
                lost += must - n_got
                acc.problems.append(f"window_s={w} {key}: {n_got} samples, {must} expected")
            elif parked == 0:
                iv = sum(s.interval_s for _i, s in members)
                if abs(iv - iv_got) > 1e-6 * max(1.0, iv):
                    lost += 1
                    twice += 1
                    acc.problems.append(f"window_s={w} {key}: {n_got} samples as produced but "
                                        f"interval sum {iv_got} != {iv} (one lost, one twice)")
            agg += min(n_got, len(members))
        # a sample of several filesystems is counted once per filesystem: count samples
        multi = sum(len(s.fs) - 1 for s in ledger.samples.values())
        aggregated_per_level.append(agg - multi)
        level_lost = max(level_lost, lost)
        acc.twice = max(acc.twice, twice)
    acc.lost += level_lost
    acc.aggregated = min(aggregated_per_level) if aggregated_per_level else 0
    # samples counted in neither place (and not dropped) are lost as well
    reasons = Counter(dlq_reason[i] for i in ledger.samples if i in dlq_reason)
    acc.dlq = dict(sorted(reasons.items()))
    gap = acc.produced - acc.dropped - acc.aggregated - sum(reasons.values())
    if gap > 0 and acc.lost < gap:
        acc.problems.append(f"{gap} produced sample(s) neither aggregated, nor in the DLQ, "
                            "nor counted as dropped")
        acc.lost = gap
    return acc


def record_result(acc: Accounting, **extra) -> None:
    """Append the scenario's figures to $FOLIOWATCH_FAULTS_RESULTS (JSON lines)."""
    path = os.environ.get("FOLIOWATCH_FAULTS_RESULTS")
    if not path:
        return
    test = os.environ.get("PYTEST_CURRENT_TEST", "").rsplit(" ", 1)[0]
    row = {**asdict(acc), **extra, "test": test,
           "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    row["problems"] = row["problems"][:5]
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")
