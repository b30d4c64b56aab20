"""An independent, pure-Python computation of what the pipeline must write, from the
raw messages (partition, offset, bytes): schema.decode for validity, schema.key_metrics
for the per-record values, the documented lateness and dedupe rules, and plain Python
statistics. The pipeline's tests compare its Parquet output with this.
"""

from __future__ import annotations

import math
import re
import statistics
import zlib
from collections import defaultdict
from pathlib import Path
from typing import Dict, Iterable, List, Sequence, Tuple

import polars as pl

from foliowatch import dataset as contract
from foliowatch import schema as wire

RATES = tuple(m.name for m in wire.KEY_METRIC_TABLE if m.rate)
GAUGES = tuple(m.name for m in wire.KEY_METRIC_TABLE if not m.rate)


def quantile_linear(values: Sequence[float], q: float) -> float:
    a = sorted(values)
    pos = q * (len(a) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return a[lo] + (a[hi] - a[lo]) * (pos - lo)


class Reference:
    def __init__(self, messages: Iterable[Tuple[int, int, bytes]],
                 windows: Sequence[int] = contract.DEFAULT_WINDOWS_S, lateness: float = 300.0):
        self.invalid: Dict[Tuple[int, int], str] = {}
        self.late: List[Tuple[int, int]] = []
        self.duplicates: List[Tuple[int, int]] = []
        self.accepted: List[Tuple[int, int, dict]] = []
        wm: Dict[int, float] = {}
        seen = set()
        msgs = sorted(messages, key=lambda m: (m[0], m[1]))
        self.total = len(msgs)
        for p, off, value in msgs:
            try:
                rec = wire.decode(value)
            except Exception as e:
                self.invalid[(p, off)] = str(e)
                continue
            if any("\n" in s for s in _strings(rec)):
                self.invalid[(p, off)] = "newline"
                continue
            ts = float(rec["ts"])
            if p in wm and ts < wm[p] - lateness:
                self.late.append((p, off))
                continue
            wm[p] = max(wm.get(p, ts), ts)
            ident = (p, rec["host_id"], rec["boot_id"], rec["seq"])
            if ident in seen:
                self.duplicates.append((p, off))
                continue
            seen.add(ident)
            self.accepted.append((p, off, rec))
        self._windows(windows)

    def _windows(self, windows: Sequence[int]) -> None:
        acc = defaultdict(lambda: defaultdict(list))
        offsets = defaultdict(list)
        for p, off, rec in self.accepted:
            lab = rec["labels"]
            for fs in wire.fs_of(rec):
                km = wire.key_metrics(rec, None if fs == "none" else fs)
                for w in windows:
                    start = int(math.floor(rec["ts"] / w) * w)
                    key = (p, w, start, lab["fleet"], lab["role"], lab["arch"],
                           lab["page_size"], fs, lab["kernel"], rec["host_id"], rec["boot_id"])
                    acc[key]["rec"].append((rec, km))
                    offsets[(p, w, start)].append(off)
        self.host_rows: Dict[tuple, dict] = {}
        for key, d in acc.items():
            recs = d["rec"]
            row = {"samples": len(recs),
                   "interval_s_sum": sum(r["interval_s"] for r, _ in recs),
                   "first_ts": min(r["ts"] for r, _ in recs),
                   "last_ts": max(r["ts"] for r, _ in recs),
                   "uptime_s": max((r["gauges"]["uptime_s"] for r, _ in recs
                                    if "uptime_s" in r["gauges"]), default=None)}
            for m in RATES:
                pairs = [(km[m], r["interval_s"]) for r, km in recs if km[m] is not None]
                row[m] = (sum(v * iv for v, iv in pairs) / sum(iv for _v, iv in pairs)
                          if pairs else None)
            for m in GAUGES:
                vals = [km[m] for _r, km in recs if km[m] is not None]
                row[m] = sum(vals) / len(vals) if vals else None
            self.host_rows[key] = row
        self.files = {k: (min(v), max(v)) for k, v in offsets.items()}
        groups = defaultdict(list)
        for key, row in self.host_rows.items():
            groups[key[:9]].append((key[9], row))
        self.cohort_rows: Dict[tuple, dict] = {}
        for ckey, members in groups.items():
            row = {"hosts": len({h for h, _ in members}),
                   "samples": sum(r["samples"] for _h, r in members)}
            for m in wire.KEY_METRICS:
                vals = [r[m] for _h, r in members if r[m] is not None]
                row[f"{m}_n"] = len(vals)
                if vals:
                    row[f"{m}_mean"] = sum(vals) / len(vals)
                    row[f"{m}_median"] = statistics.median(vals)
                    row[f"{m}_p90"] = quantile_linear(vals, 0.9)
                    row[f"{m}_p99"] = quantile_linear(vals, 0.99)
                    row[f"{m}_sum"] = sum(vals)
                    row[f"{m}_sumsq"] = sum(v * v for v in vals)
                else:
                    for s in ("mean", "median", "p90", "p99", "sum", "sumsq"):
                        row[f"{m}_{s}"] = None
            self.cohort_rows[ckey] = row


def _strings(obj):
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _strings(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _strings(v)


_FILE_RE = re.compile(r"part-p(\d+)-(\d+)-(\d+)\.parquet$")


def read_output(root: Path, level: str) -> pl.DataFrame:
    files = sorted(Path(root).glob(f"level={level}/window_s=*/date=*/*.parquet"))
    frames = []
    for f in files:
        m = _FILE_RE.search(f.name)
        assert m, f"unexpected file name {f}"
        frames.append(pl.read_parquet(f).with_columns(
            pl.lit(int(m.group(1))).alias("_partition"), pl.lit(int(m.group(2))).alias("_first"),
            pl.lit(int(m.group(3))).alias("_last")))
    return pl.concat(frames) if frames else pl.DataFrame()


def _close(a, b, what) -> None:
    if a is None or b is None:
        assert a is None and b is None, what
        return
    assert math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12), (what, a, b)


def assert_dataset_matches(root: Path, ref: Reference) -> None:
    """The dataset at ``root`` holds exactly the reference's host and cohort rows, with
    equal statistics, in files named from each window's partition and offsets."""
    hosts = read_output(root, "host")
    assert hosts.height == len(ref.host_rows)
    seen = set()
    for row in hosts.iter_rows(named=True):
        start = int(row["window_start"].timestamp())
        key = (row["_partition"], row["window_s"], start, row["fleet"], row["role"],
               row["arch"], row["page_size"], row["fs"], row["kernel"], row["host_id"],
               row["boot_id"])
        assert key in ref.host_rows, key
        assert key not in seen, f"host row twice: {key}"
        seen.add(key)
        exp = ref.host_rows[key]
        assert row["samples"] == exp["samples"], key
        assert (row["_first"], row["_last"]) == ref.files[key[:3]], key
        for c in ("interval_s_sum", "first_ts", "last_ts", "uptime_s", *wire.KEY_METRICS):
            _close(row[c], exp[c], (key, c))
    cohorts = read_output(root, "cohort")
    assert cohorts.height == len(ref.cohort_rows)
    for row in cohorts.iter_rows(named=True):
        start = int(row["window_start"].timestamp())
        key = (row["_partition"], row["window_s"], start, row["fleet"], row["role"],
               row["arch"], row["page_size"], row["fs"], row["kernel"])
        assert key in ref.cohort_rows, key
        exp = ref.cohort_rows[key]
        assert row["hosts"] == exp["hosts"] and row["samples"] == exp["samples"], key
        for m in wire.KEY_METRICS:
            assert row[f"{m}_n"] == exp[f"{m}_n"], (key, m)
            for s in ("mean", "median", "p90", "p99", "sum", "sumsq"):
                _close(row[f"{m}_{s}"], exp[f"{m}_{s}"], (key, m, s))


def file_messages(path: Path) -> List[Tuple[int, int, bytes]]:
    """(partition, offset, value) of a JSON-lines input as ``--from-files`` numbers them."""
    with open(path, "rb") as fh:         # the input's name and its first 64 KiB
        p = zlib.crc32(path.name.encode() + b"\0" + fh.read(64 * 1024)) & 0x7FFFFFFF
    out = []
    for i, line in enumerate(path.read_bytes().split(b"\n")):
        line = line.rstrip(b"\r")
        if line.strip():
            out.append((p, i, line))
    return out


def test_reference_quantiles_are_the_linear_interpolation():
    assert quantile_linear([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 0.9) == 9.1
    assert quantile_linear([5.0], 0.99) == 5.0
