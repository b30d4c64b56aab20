"""The accounting harness itself: on a clean run it accounts for every sample (late ones
in the DLQ with their reason), and it notices a window file gone (lost), a window file
written twice under two names (counted twice), and one sample swapped for another in a
window (same count, different interval sum)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import polars as pl
import pytest

from accounting import Ledger, account


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory):
    """A small simulated fleet (with the simulator's late and duplicated deliveries)
    through the pipeline from a file; its ledger, dataset and dead letters."""
    from foliowatch.pipeline.engine import Pipeline, PipelineConfig
    from foliowatch.pipeline.files import run_files
    from foliowatch.pipeline.sinks import DatasetWriter, FileDLQ
    from foliowatch.simulator import load_scenario
    from foliowatch.simulator.frames import simulate_frame, to_wire_json

    tmp = tmp_path_factory.mktemp("acct")
    sc = load_scenario("seed-iomap-arm64-xfs", hosts=6, hours=0.25, interval_s=10, seed=4,
                       faults={"late": 0.03, "duplicate": 0.03, "lost": 0.0,
                               "late_min_s": 400.0, "late_max_s": 900.0})
    src = tmp / "samples.jsonl"
    with open(src, "w") as f:
        for chunk in simulate_frame(sc):
            f.writelines(v + "\n" for v in to_wire_json(chunk).to_list())
    ledger = Ledger()
    ledger.add_simulator(sc)
    out = tmp / "ds"
    dlq = FileDLQ(tmp / "dlq.jsonl")
    run_files(Pipeline(PipelineConfig(output=str(out)), DatasetWriter(str(out)), dlq),
              [src], batch_records=200)
    return ledger, out, (tmp / "dlq.jsonl").read_bytes().splitlines()


def copy_dataset(out: Path, tmp: Path) -> Path:
    dst = tmp / "copy"
    shutil.copytree(out, dst)
    return dst


def test_a_clean_run_accounts_for_every_sample_late_ones_in_the_dlq(clean_run):
    """The harness on a clean run (simulated fleet with late and duplicated
    deliveries): every sample aggregated or in the DLQ as late, none lost or twice."""
    ledger, out, dlq = clean_run
    acc = account("clean", "", ledger, out, dlq)
    acc.assert_exact()
    assert acc.produced == len(ledger.samples) > 300
    assert acc.dlq.get("late", 0) > 0 and set(acc.dlq) == {"late"}, acc.summary()


def test_a_missing_window_file_is_reported_lost(clean_run, tmp_path):
    """The harness: a window file deleted from the dataset shows as exactly its samples lost."""
    ledger, out, dlq = clean_run
    ds = copy_dataset(out, tmp_path)
    victim = sorted(ds.glob("level=host/window_s=60/*/*.parquet"))[3]
    n = pl.read_parquet(victim)["samples"].sum()
    victim.unlink()
    acc = account("lost", "", ledger, ds, dlq)
    assert acc.lost == n and acc.twice == 0, acc.summary()
    with pytest.raises(AssertionError, match="lost"):
        acc.assert_exact()


def test_a_window_written_under_two_names_is_reported_counted_twice(clean_run, tmp_path):
    """The harness: a window file copied under a second name shows as counted twice."""
    ledger, out, dlq = clean_run
    ds = copy_dataset(out, tmp_path)
    f = sorted(ds.glob("level=host/window_s=3600/*/*.parquet"))[0]
    shutil.copy(f, f.with_name(f.name.replace(".parquet", "9.parquet")))
    acc = account("twice", "", ledger, ds, dlq)
    # at least the window's samples less those that went late to the DLQ (a parked
    # sample may have had an aggregated copy too, so the harness does not count those)
    n, parked = pl.read_parquet(f)["samples"].sum(), sum(acc.dlq.values())
    assert n - parked <= acc.twice <= n and acc.lost == 0, acc.summary()


def test_a_sample_swapped_for_another_in_a_window_is_noticed(clean_run, tmp_path):
    """The harness: a window with the right count but another interval sum shows as one
    sample lost and one counted twice."""
    ledger, out, dlq = clean_run
    ds = copy_dataset(out, tmp_path)
    late = {json.loads(line)["offset"] for line in dlq}
    assert late
    f = sorted(ds.glob("level=host/window_s=60/*/*.parquet"))[5]
    df = pl.read_parquet(f)
    df.with_columns(pl.col("interval_s_sum") + 3.0).write_parquet(f)
    acc = account("swap", "", ledger, ds, dlq)
    assert acc.lost >= 1 and acc.twice >= 1, acc.summary()
