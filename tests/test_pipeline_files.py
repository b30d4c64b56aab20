"""``foliowatch pipeline --from-files``: the simulator's files (JSON lines and Parquet)
become the dataset the contract describes, equal to an independent computation."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import polars as pl
import pytest

from foliowatch.errors import ConfigError, InputError
from foliowatch.pipeline import main as pipeline_main

from test_pipeline_reference import Reference, assert_dataset_matches, file_messages, read_output


def run_pipeline(argv) -> int:
    p = argparse.ArgumentParser()
    pipeline_main.add_arguments(p)
    return pipeline_main.run(p.parse_args(argv))


@pytest.fixture(scope="module")
def sim_files(tmp_path_factory):
    from foliowatch.simulator import load_scenario, write_files
    sc = load_scenario("seed-iomap-arm64-xfs", hosts=60, hours=0.75, seed=7,
                       faults={"late": 0.01, "duplicate": 0.01})
    d = tmp_path_factory.mktemp("sim")
    jsonl = [p for p in write_files(sc, d / "jsonl", seed=7, fmt="jsonl")
             if p.suffix == ".jsonl"]
    parquet = [p for p in write_files(sc, d / "parquet", seed=7, fmt="parquet")
               if p.suffix == ".parquet"]
    return jsonl, parquet


def test_simulator_jsonl_becomes_the_reference_dataset(sim_files, tmp_path, capsys):
    jsonl, _ = sim_files
    out = tmp_path / "ds"
    assert run_pipeline(["--output", str(out), "--from-files", *map(str, jsonl),
                         "--metrics-addr", "off", "--batch-records", "5000"]) == 0
    totals = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    msgs = [m for f in jsonl for m in file_messages(f)]
    ref = Reference(msgs)
    assert ref.duplicates and ref.late, "the scenario should exercise duplicates and late records"
    assert totals["records"] == ref.total
    assert totals["accepted"] == len(ref.accepted)
    assert totals["duplicates"] == len(ref.duplicates)
    assert totals["late"] == len(ref.late) and totals["invalid"] == len(ref.invalid)
    assert_dataset_matches(out, ref)
    assert sorted(totals["dlq_files"]) == sorted(
        str(out / "_dlq" / f"from-files-p{p}.jsonl") for p in {m[0] for m in msgs})
    dlq = [json.loads(l) for f in totals["dlq_files"] for l in Path(f).read_text().splitlines()]
    assert sorted((d["partition"], d["offset"]) for d in dlq) == \
        sorted(list(ref.invalid) + ref.late)
    assert all(d["reason"] == "late" for d in dlq if (d["partition"], d["offset"]) in ref.late)


def test_parquet_input_gives_the_same_rows_as_jsonl(sim_files, tmp_path, capsys):
    jsonl, parquet = sim_files
    a, b = tmp_path / "a", tmp_path / "b"
    run_pipeline(["--output", str(a), "--from-files", *map(str, jsonl), "--metrics-addr", "off"])
    run_pipeline(["--output", str(b), "--from-files", *map(str, parquet), "--metrics-addr", "off"])
    for level in ("host", "cohort"):
        ra = read_output(a, level).drop("_partition", "_first", "_last")
        rb = read_output(b, level).drop("_partition", "_first", "_last")
        keys = [c for c in ra.columns if ra.schema[c] in (pl.String, pl.Int64)
                or c == "window_start"]
        assert ra.sort(keys).equals(rb.sort(keys)), level


def test_rerun_overwrites_instead_of_duplicating(sim_files, tmp_path, capsys):
    jsonl, _ = sim_files
    out = tmp_path / "ds"
    argv = ["--output", str(out), "--from-files", *map(str, jsonl), "--metrics-addr", "off"]
    run_pipeline(argv)
    first = {p.relative_to(out): p.read_bytes() for p in out.rglob("*.parquet")}
    run_pipeline(argv)
    second = {p.relative_to(out): p.read_bytes() for p in out.rglob("*.parquet")}
    assert first == second and first
    assert not list(out.glob("_tmp/*")), "no temporary files left behind"


def test_inputs_of_the_same_name_in_two_runs_keep_each_others_windows(sim_files, tmp_path,
                                                                       capsys):
    """Two inputs named alike (the simulator names every first file samples-00000), run
    one after the other into one dataset: the second overwrites none of the first's
    window files or dead letters, and the dataset holds both."""
    jsonl, _ = sim_files
    lines = jsonl[0].read_bytes().splitlines(keepends=True)
    halves = []
    for name, part in (("early", lines[:len(lines) // 2]), ("late", lines[len(lines) // 2:])):
        (tmp_path / name).mkdir()
        halves.append(tmp_path / name / jsonl[0].name)
        halves[-1].write_bytes(b"".join(part))
    out = tmp_path / "ds"
    run_pipeline(["--output", str(out), "--from-files", str(halves[0]), "--metrics-addr", "off"])
    first = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    run_pipeline(["--output", str(out), "--from-files", str(halves[1]), "--metrics-addr", "off"])
    assert first and all(p.read_bytes() == b for p, b in first.items()), \
        "the second input overwrote files of the first"
    msgs = file_messages(halves[0]) + file_messages(halves[1])
    assert len({m[0] for m in msgs}) == 2
    ref = Reference(msgs)
    assert_dataset_matches(out, ref)
    dlq = [json.loads(l) for f in (out / "_dlq").glob("from-files-p*.jsonl")
           for l in f.read_text().splitlines()]
    assert sorted((d["partition"], d["offset"]) for d in dlq) == \
        sorted(list(ref.invalid) + ref.late)
    # the same input named twice in one run is refused, naming both
    with pytest.raises(InputError) as e:
        run_pipeline(["--output", str(out), "--from-files", str(halves[0]),
                      str(_copy(halves[0], tmp_path / "copy")), "--metrics-addr", "off"])
    assert "the same input twice" in str(e.value) and "copy" in str(e.value)


def _copy(src: Path, folder: Path) -> Path:
    folder.mkdir()
    (folder / src.name).write_bytes(src.read_bytes())
    return folder / src.name


def test_bad_input_paths_are_named_with_what_to_do(tmp_path):
    with pytest.raises(InputError) as e:
        run_pipeline(["--output", str(tmp_path / "o"), "--from-files", str(tmp_path / "nope.jsonl"),
                      "--metrics-addr", "off"])
    assert "nope.jsonl" in str(e.value) and "no such file" in str(e.value)
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(InputError) as e:
        run_pipeline(["--output", str(tmp_path / "o"), "--from-files", str(tmp_path / "x.csv"),
                      "--metrics-addr", "off"])
    assert "x.csv" in str(e.value) and ".jsonl" in str(e.value)


def test_several_filesystems_no_mounts_and_probes_match_the_reference(tmp_path, capsys):
    """One host-window row per filesystem (write throughput per fs, host counters
    repeated), a "none" row for a host that watches no filesystem, probe means."""
    import random
    from test_pipeline_decode import varied_record
    from foliowatch import schema as wire
    rng = random.Random(17)
    recs = []
    for i in range(60):
        for h in range(6):
            r = varied_record(rng, i)
            r.update(host_id=f"multi-{h}", seq=i, ts=1764000000.0 + 10 * i + h)
            if h == 0:
                r["labels"] = wire.example_record()["labels"]
                r["mounts"] = [{"mount": "/a", "fs": "xfs", "device": "d1",
                                "counters": {"write_bytes": 1000 * i}},
                               {"mount": "/b", "fs": "ext4", "device": "d2",
                                "counters": {"write_bytes": 7 * i}},
                               {"mount": "/c", "fs": "xfs", "device": "d3",
                                "counters": {"write_bytes": 5}}]
            recs.append(wire.encode(r))
    f = tmp_path / "multi.jsonl"
    f.write_bytes(b"\n".join(recs) + b"\n")
    out = tmp_path / "ds"
    assert run_pipeline(["--output", str(out), "--from-files", str(f),
                         "--metrics-addr", "off"]) == 0
    ref = Reference(file_messages(f))
    assert_dataset_matches(out, ref)
    hosts = read_output(out, "host")
    h0 = hosts.filter((pl.col("host_id") == "multi-0") & (pl.col("window_s") == 3600))
    assert sorted(h0["fs"].to_list()) == ["ext4", "xfs"]
    assert h0["compact_stall_sum"].n_unique() == 1     # host counters repeated per fs
    assert "none" in hosts["fs"].to_list()


def test_a_simulator_output_folder_is_read_without_its_ground_truth(tmp_path):
    from foliowatch.pipeline.files import expand_inputs
    from foliowatch.simulator import load_scenario, write_files

    sc = load_scenario("control-no-regression", hosts=8, hours=0.1)
    write_files(sc, tmp_path / "sim", fmt="jsonl")
    assert (tmp_path / "sim" / "ground_truth.json").exists()
    names = [p.name for p in expand_inputs([str(tmp_path / "sim")])]
    assert names and all(n.startswith("samples-") for n in names)


@pytest.mark.parametrize("flag,value", [("--batch-seconds", "0"), ("--batch-seconds", "-1"),
                                        ("--batch-seconds", "nan"),
                                        ("--batch-seconds", "inf"),
                                        ("--batch-records", "0")])
def test_batch_bounds_that_cannot_bound_a_batch_are_refused(flag, value, tmp_path):
    with pytest.raises(ConfigError, match=f"^{flag}: expected .*got {value}"):
        run_pipeline(["--output", str(tmp_path / "ds"), "--from-files", str(tmp_path),
                      "--metrics-addr", "off", flag, value])
