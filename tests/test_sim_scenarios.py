"""Scenario files: every named scenario loads; a broken file is rejected with an error
that names the key and says what to do; overrides scale the fleet and the clock."""
from __future__ import annotations

import textwrap

import pytest

from foliowatch.simulator import ScenarioError, ground_truth, list_scenarios, load_scenario

REQUIRED = {"seed-iomap-arm64-xfs", "control-no-regression", "load-shift", "improvement",
            "rollback", "small-effect-10", "small-effect-5", "small-effect-2",
            "canary-new-hardware"}

GOOD = textwrap.dedent("""
    name = "tiny"
    hours = 1
    [[fleet]]
    name = "db"
    role = "postgres"
    workload = "database"
      [[fleet.group]]
      hosts = 10
      arch = "arm64"
      page_size = 65536
      fs = "xfs"
      instance_types = ["m7g.16xlarge"]
      kernel = "6.6.87-101"
    [[rollout]]
    fleet = "db"
    kernel_from = "6.6.87-101"
    kernel_to = "6.12.40-63"
    start_h = 0.5
""")


def write(tmp_path, text):
    p = tmp_path / "s.toml"
    p.write_text(text)
    return p


def test_named_scenarios_exist_and_load():
    names = set(list_scenarios())
    assert REQUIRED <= names, REQUIRED - names
    for name in names:
        sc = load_scenario(name)
        assert sc.name == name and sc.hosts > 0 and sc.steps > 0
        truth = ground_truth(sc)
        assert any(t["type"] == "rollout" and t["action"] == "start" for t in truth)


def test_seed_scenario_truth_names_the_cohort_and_kernels():
    truth = ground_truth(load_scenario("seed-iomap-arm64-xfs"))
    regs = [t for t in truth if t["type"] == "change" and t["kind"] == "regression"]
    main = [t for t in regs if t["page_size"] == 4096]
    assert len(main) == 1
    r = main[0]
    assert (r["fleet"], r["arch"], r["fs"]) == ("payments-db", "arm64", "xfs")
    assert (r["kernel_from"], r["kernel_to"]) == ("6.6.87-101.aarch64", "6.12.40-63.aarch64")
    assert r["effect"] == 0.75 and r["metric"] == "write_mib_s"
    assert r["metrics"]["compact_stall_per_s"] > 1
    sixtyfour = [t for t in regs if t["page_size"] == 65536]
    assert sixtyfour and sixtyfour[0]["kernel_to"] == "6.12.40-63.aarch64+64k"
    cohorts = {(t["arch"], t["fs"], t["page_size"]): t["expected"] for t in truth
               if t["type"] == "cohort"}
    assert cohorts[("x86_64", "xfs", 4096)] == "none"
    assert cohorts[("arm64", "ext4", 4096)] == "none"
    waves = [t["wave_fraction"] for t in truth if t["type"] == "rollout"]
    assert waves == [0.01, 0.10, 0.50, 1.0]


def test_overrides_scale_hosts_and_clock(tmp_path):
    sc = load_scenario("seed-iomap-arm64-xfs", hosts=200, hours=2, interval_s=30, seed=9)
    assert 195 <= sc.hosts <= 205
    assert (sc.hours, sc.interval_s, sc.seed) == (2.0, 30.0, 9)
    assert sc.steps == 240
    assert load_scenario(write(tmp_path, GOOD)).hosts == 10
    assert load_scenario(sc, start="2027-01-04T06:00:00Z").start_ts == 1799042400.0
    assert abs(load_scenario(sc, start="now").start_ts - __import__("time").time()) < 5
    with pytest.raises(ScenarioError, match="override start"):
        load_scenario(sc, start="yesterday")


@pytest.mark.parametrize("edit, key, hint", [
    (lambda s: s.replace('hours = 1', 'hours = "one"'), "hours", "expected float"),
    (lambda s: s.replace('workload = "database"', 'workload = "oltp"'), "workload", "database"),
    (lambda s: s.replace('kernel = "6.6.87-101"', 'kernel = "6.6"'), "kernel", "6.6.87-101"),
    (lambda s: s.replace('instance_types = ["m7g.16xlarge"]', 'instance_types = ["m7i.24xlarge"]'),
     "instance_types", "arm64"),
    (lambda s: s.replace('instance_types = ["m7g.16xlarge"]', 'instance_types = ["m99.huge"]'),
     "instance_types", "unknown"),
    (lambda s: s.replace('kernel_from = "6.6.87-101"', 'kernel_from = "6.1.100-1"'),
     "kernel_from", "runs on no group"),
    (lambda s: s.replace('start_h = 0.5', 'start_h = 0.5\nwaves = [0.5, 0.1]'), "waves",
     "increasing"),
    (lambda s: s.replace('role = "postgres"', 'role = "postgres"\ncolour = "blue"'), "colour",
     "unknown key"),
    (lambda s: s.replace('page_size = 65536', 'page_size = 8192'), "page_size", "4096"),
    (lambda s: s + '[[change]]\nkind = "regression"\nwrite_throughput = 0.9\n', "kernel",
     "missing"),
    (lambda s: s + '[[change]]\nkind = "regression"\nkernel = "6.12.40-63"\n'
                   'write_throughput = 0.9\nfrag_onset = 0.5\nfrag_full = 0.2\n',
     "frag_full", "above frag_onset"),
    (lambda s: s.replace('start_h = 0.5', 'start_h = 0.5\ncontrol_per_canary = -1'),
     "control_per_canary", "must be a finite number >= 0"),
    (lambda s: s.replace('start_h = 0.5', 'start_h = 0.5\ncontrol_per_canary = inf'),
     "control_per_canary", "baseline hosts per canary"),
    (lambda s: s.replace('start_h = 0.5', 'start_h = 0.5\ncontrol_per_canary = "2"'),
     "control_per_canary", "expected float"),
])
def test_bad_scenario_error_names_the_key(tmp_path, edit, key, hint):
    with pytest.raises(ScenarioError) as e:
        load_scenario(write(tmp_path, edit(GOOD)))
    msg = str(e.value)
    assert f"{key}:" in msg and hint in msg, msg
    assert str(tmp_path) in msg


def test_unknown_scenario_lists_the_named_ones():
    with pytest.raises(ScenarioError) as e:
        load_scenario("no-such-scenario")
    assert "seed-iomap-arm64-xfs" in str(e.value)


def test_yaml_scenario_reads_like_toml(tmp_path):
    import tomllib

    import yaml
    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump(tomllib.loads(GOOD)))
    from_yaml, from_toml = load_scenario(p), load_scenario(write(tmp_path, GOOD))
    assert ground_truth(from_yaml) == ground_truth(from_toml)
    p.write_text("- just\n- a list\n")
    with pytest.raises(ScenarioError, match="expected a mapping"):
        load_scenario(p)


def test_not_toml_is_reported(tmp_path):
    with pytest.raises(ScenarioError, match="not valid TOML"):
        load_scenario(write(tmp_path, "name = [unclosed"))


def test_cli_lists_scenarios_and_writes_files(tmp_path, capsys):
    from foliowatch.shell import cli
    assert cli.main(["simulate", "--list"]) == 0
    assert "seed-iomap-arm64-xfs" in capsys.readouterr().out
    rc = cli.main(["simulate", "--scenario", "improvement", "--hosts", "20", "--hours", "0.05",
                   "--seed", "1", "--output", str(tmp_path), "--format", "parquet"])
    assert rc == 0
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["ground_truth.json", "ground_truth_hosts.csv", "samples-00000.parquet"]
    assert cli.main(["simulate", "--scenario", "improvement", "--realtime",
                     "--output", str(tmp_path)]) == 2
    assert cli.main(["simulate", "--scenario", "no-such", "--output", str(tmp_path)]) == 2
    assert "named scenarios:" in capsys.readouterr().err
