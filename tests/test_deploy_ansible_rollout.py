"""playbooks/rollout-kernel.yml against five local test hosts of fleet payments-db
(arm64, XFS), gated by a real `foliowatch verdict` on simulated data: the clean rollout
proceeds through all four waves; the seed's regression stops it at the canary wave,
naming the cohort and the effect, and rolls the canary back; a verdict without enough
evidence stops it after the wait limit with the verdict's reasons; check mode and a dry
run print the plan and change nothing. Also: ansible-lint (production profile) and
--syntax-check of every playbook.

The kernel switch and reboot are the test seam tests/ansible_plays/seam-switch-kernel.yml
(each test host reports the kernel written in its own file). The datasets are made once
(simulate -> pipeline --from-files -> detect, as the central services would) and the
playbook's verdict reads them as of the end of the simulated day."""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from ansible_run import ANSIBLE_DIR, TEST_PLAYS, VENV_BIN, ansible_env, local_inventory, playbook

ROLLOUT = ANSIBLE_DIR / "playbooks" / "rollout-kernel.yml"
SEAM = TEST_PLAYS / "seam-switch-kernel.yml"
OLD, NEW = "6.6.87-101.aarch64", "6.12.40-63.aarch64"
AS_OF = "2026-11-02T13:55:00Z"
HOSTS = [f"canary-{i}" for i in range(1, 6)]
COHORT = "payments-db/postgres/arm64/4096/xfs"

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

# One arm64 XFS group; a quarter of it moved to the new kernel at hour 2, so by hour 14
# the canaries have fragmented memory. The seed's regression or nothing.
SCENARIO = """\
name = "rollout-gate-{name}"
description = "arm64 XFS fleet, 6.6.87-101 -> 6.12.40-63 ({name})"
start = "2026-11-02T00:00:00Z"
hours = 14
interval_s = 60
seed = 5

[[fleet]]
name = "payments-db"
role = "postgres"
workload = "database"
uptime_days = [1, 60]
timezone_offset_h = -5

  [[fleet.group]]
  hosts = 200
  arch = "arm64"
  page_size = 4096
  fs = "xfs"
  instance_types = ["m7g.16xlarge", "m8g.24xlarge"]
  kernel = "6.6.87-101"

[[rollout]]
fleet = "payments-db"
kernel_from = "6.6.87-101"
kernel_to = "6.12.40-63"
start_h = 2
waves = [0.25, 1.0]
wave_interval_h = 40
reboot_spread_min = 20
"""
SEED_CHANGE = """
[[change]]
kind = "regression"
fleet = "payments-db"
arch = "arm64"
page_size = 4096
fs = "xfs"
kernel = "6.12.40-63"
write_throughput = 0.75
compact_stall = 8.0
direct_reclaim = 3.0
frag_onset = 0.10
frag_full = 0.40
"""


def make_dataset(root: Path, name: str, regression: bool) -> dict:
    """simulate -> pipeline --from-files -> one detector evaluation; returns the paths."""
    root.mkdir(parents=True)
    scenario = root / f"{name}.toml"
    scenario.write_text(SCENARIO.format(name=name) + (SEED_CHANGE if regression else ""))
    fw = str(VENV_BIN / "foliowatch")
    files, dataset, state = root / "files", root / "dataset", root / "detector-state.json"
    for argv in ([fw, "simulate", "--scenario", str(scenario), "--hosts", "200", "--hours", "14",
                  "--interval", "60", "--seed", "5", "--out", str(files), "--format", "parquet"],
                 [fw, "pipeline", "--from-files", str(files), "--output", str(dataset),
                  "--windows", "60", "--metrics-addr", "off"],
                 [fw, "detect", "--dataset", str(dataset), "--state", str(state),
                  "--as-of", AS_OF]):
        run = subprocess.run(argv, capture_output=True, text=True)
        assert run.returncode == 0, (argv[1], run.stdout[-2000:], run.stderr[-3000:])
    return {"dataset": str(dataset), "state": str(state)}


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("rollout-data")
    with ThreadPoolExecutor(2) as pool:
        clean = pool.submit(make_dataset, root / "clean", "clean", False)
        seed = pool.submit(make_dataset, root / "seed", "seed", True)
        return {"clean": clean.result(), "seed": seed.result()}


def fleet(tmp: Path):
    """Five local test hosts of payments-db, each reporting OLD from its own file."""
    hosts = {}
    for h in HOSTS:
        kernel_file = tmp / "hosts" / h / "kernel"
        kernel_file.parent.mkdir(parents=True)
        kernel_file.write_text(OLD + "\n")
        hosts[h] = {"rollout_test_kernel_file": str(kernel_file),
                    "foliowatch_agent_fleet": "payments-db"}
    return local_inventory(tmp / "hosts.ini", hosts)


def kernels(tmp: Path) -> dict:
    return {h: (tmp / "hosts" / h / "kernel").read_text().strip() for h in HOSTS}


def rollout_vars(data: dict, **extra) -> dict:
    return {"rollout_hosts": "test_hosts", "rollout_kernel": NEW,
            "rollout_switch_tasks": str(SEAM),
            "rollout_foliowatch": str(VENV_BIN / "foliowatch"),
            "rollout_verdict_dataset": data["dataset"], "rollout_verdict_state": data["state"],
            # the simulated day ends at AS_OF; a 200-host fleet resolves 20 %, not 5 %
            "rollout_verdict_args": ["--as-of", AS_OF, "--target-effect", "0.2",
                                     "--min-hours", "4"],
            "rollout_evidence_wait_s": 0, "rollout_verdict_poll_s": 1,
            "rollout_verdict_max_wait_s": 2, **extra}


def test_ansible_lint_production_profile_passes():
    run = subprocess.run([str(VENV_BIN / "ansible-lint"), "--profile", "production", "--offline"],
                         cwd=ANSIBLE_DIR, env=ansible_env(ANSIBLE_DIR), capture_output=True,
                         text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-5000:] + run.stderr[-5000:]
    assert "Profile 'production' was required, and it passed" in run.stdout + run.stderr


@pytest.mark.parametrize("play", sorted(p.name for p in (ANSIBLE_DIR / "playbooks").glob("*.yml")))
def test_playbook_syntax_check(play, tmp_path):
    run = subprocess.run([str(VENV_BIN / "ansible-playbook"), "--syntax-check",
                          f"playbooks/{play}"], cwd=ANSIBLE_DIR, env=ansible_env(tmp_path),
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr


def test_wave_plan_cuts_hosts_as_serial_does():
    sys.path.insert(0, str(ANSIBLE_DIR / "playbooks" / "filter_plugins"))
    try:
        from rollout_waves import foliowatch_waves
    finally:
        sys.path.pop(0)
    hosts = [f"h{i}" for i in range(200)]
    waves = foliowatch_waves(hosts, ["1%", "10%", "50%", "100%"])
    assert [len(w) for w in waves] == [2, 20, 100, 78]
    assert [len(w) for w in foliowatch_waves(HOSTS, ["1%", "10%", "50%", "100%"])] == [1, 1, 2, 1]
    assert [len(w) for w in foliowatch_waves(hosts[:7], [1, 3])] == [1, 3, 3]


def test_clean_rollout_proceeds_through_every_wave(datasets, tmp_path):
    run = playbook(tmp_path, ROLLOUT, fleet(tmp_path), rollout_vars(datasets["clean"]))
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    for n in range(1, 5):
        assert f"Wave {n}/4 passed the verdict for payments-db" in run.stdout
    assert kernels(tmp_path) == {h: NEW for h in HOSTS}


def test_seed_regression_stops_at_the_canary_wave_naming_cohort_and_effect(datasets, tmp_path):
    run = playbook(tmp_path, ROLLOUT, fleet(tmp_path),
                   rollout_vars(datasets["seed"], rollout_rollback_on_regression=True))
    assert run.returncode != 0
    out = run.stdout
    assert "STOP at wave 1/4: foliowatch verdict found a regression" in out, out[-6000:]
    assert f"cohort {COHORT} 6.6.87-101" in out and "6.12.40-63" in out
    assert "confirmed regression" in out and "probe_mib_s" in out
    assert "Wave 2/4" not in out
    # the canary went to the new kernel and was rolled back; no other host was touched
    assert kernels(tmp_path) == {h: OLD for h in HOSTS}


def test_not_enough_evidence_waits_then_stops_with_the_verdicts_message(datasets, tmp_path):
    vars_ = rollout_vars(datasets["clean"])
    vars_["rollout_verdict_args"] = ["--as-of", AS_OF]      # 5 % target: unresolvable here
    run = playbook(tmp_path, ROLLOUT, fleet(tmp_path), vars_)
    assert run.returncode != 0
    assert "STOP at wave 1/4: not enough evidence" in run.stdout, run.stdout[-6000:]
    assert "cannot resolve a 5% effect" in run.stdout or "hosts to see 5%" in run.stdout
    assert run.stdout.count("FAILED - RETRYING") >= 2          # asked again before stopping
    assert kernels(tmp_path)["canary-1"] == NEW and kernels(tmp_path)["canary-2"] == OLD


@pytest.mark.parametrize("mode", ["check", "dry-run"])
def test_check_mode_and_dry_run_print_the_plan_and_change_nothing(mode, tmp_path):
    data = {"dataset": str(tmp_path / "none"), "state": str(tmp_path / "none.json")}
    if mode == "check":
        run = playbook(tmp_path, ROLLOUT, fleet(tmp_path), rollout_vars(data), args=["--check"])
    else:
        run = playbook(tmp_path, ROLLOUT, fleet(tmp_path), rollout_vars(data, rollout_dry_run=True))
    assert run.returncode == 0, run.stdout[-6000:]
    assert "5 hosts in 4 waves (dry run: nothing changes)" in run.stdout
    for line in ("wave 1/4: 1 host(s) canary-1", "wave 2/4: 1 host(s) canary-2",
                 "wave 3/4: 2 host(s) canary-3, canary-4", "wave 4/4: 1 host(s) canary-5"):
        assert line in run.stdout, run.stdout[-4000:]
    assert "TEST SEAM" not in run.stdout and "verdict for each fleet" not in run.stdout
    assert kernels(tmp_path) == {h: OLD for h in HOSTS}
