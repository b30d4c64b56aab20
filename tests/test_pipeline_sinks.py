"""Local writes of the pipeline's sinks: a window file in a new partition folder is
durable together with the folders created for it (each one fsynced in its parent)."""

from __future__ import annotations

import threading

import polars as pl

from foliowatch.pipeline.aggregate import PartitionMeta
from foliowatch.files import atomic_write, make_dirs_durable
from foliowatch.pipeline.sinks import StateStore


def test_a_new_partition_folder_is_fsynced_in_every_parent_created_for_it(tmp_path):
    root = tmp_path / "ds"
    day1 = root / "level=host" / "window_s=60" / "date=2026-01-01"
    created = atomic_write(day1 / "part-p0-0-9.parquet", b"one", tmp_dir=root / "_tmp")
    # deepest first, up to the folder that already existed (tmp_path)
    assert created == [day1, day1.parent, day1.parent.parent, root]
    assert (day1 / "part-p0-0-9.parquet").read_bytes() == b"one"
    # the same folder again: nothing created, nothing to fsync but the folder itself
    assert atomic_write(day1 / "part-p0-10-19.parquet", b"two", tmp_dir=root / "_tmp") == []
    # the next day: only its own folder is new
    day2 = day1.parent / "date=2026-01-02"
    assert atomic_write(day2 / "part-p0-20-29.parquet", b"three",
                        tmp_dir=root / "_tmp") == [day2]
    assert sorted(p.name for p in day1.iterdir()) == ["part-p0-0-9.parquet",
                                                      "part-p0-10-19.parquet"]


def test_writer_threads_racing_for_one_new_folder_create_it_once(tmp_path):
    """DatasetWriter encodes and writes on several threads: exactly one of them creates
    (and fsyncs) a new folder; the others find it only after that."""
    target = tmp_path / "level=cohort" / "window_s=300" / "date=2026-02-03"
    results, start = [], threading.Barrier(8)

    def make():
        start.wait()
        results.append(make_dirs_durable(target))
    threads = [threading.Thread(target=make) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    made = [r for r in results if r]
    assert len(results) == 8 and made == [[target, target.parent, target.parent.parent]]


def test_a_checkpoint_store_in_a_new_folder_creates_it_durably(tmp_path):
    store = StateStore(str(tmp_path / "state"), "group.topic")
    assert store.dir.is_dir()
    assert make_dirs_durable(store.dir) == []
    empty = pl.DataFrame()
    store.save(3, PartitionMeta(42, None, None), empty, empty)
    assert store.load_meta(3).next_offset == 42
