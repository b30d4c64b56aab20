"""The rollout gate is a pure read: `foliowatch verdict` never writes or creates the
regression state, however often a rollout playbook calls it; `foliowatch detect` is the
state's only writer, honours --min-consecutive, and exports the gate's decision per fleet
and new kernel on its /metrics (`foliowatch_rollout_verdict`), the same decision
`verdict` exits with. On the simulator's seed scenario, through files and the pipeline."""

from __future__ import annotations

import json
import os
import re

import pytest

from foliowatch.shell import cli


AS_OF = "2026-11-02T21:55:00Z"
FLEET = "payments-db"
ARM_KERNEL = "6.12.40-63.aarch64"
X86_KERNEL = "6.12.40-63.x86_64"


# the shared seed dataset (conftest: simulator + pipeline, a few minutes on a loaded machine) and
# a handful of full evaluations: more than the default per-test limit when cores are shared
pytestmark = pytest.mark.timeout(1800)


def _verdict(capsys, dataset, state, kernel, *extra):
    capsys.readouterr()
    code = cli.main(["verdict", "--dataset", str(dataset), "--state", str(state),
                     "--as-of", AS_OF, "--fleet", FLEET, "--kernel", kernel, "--json", *extra])
    return code, json.loads(capsys.readouterr().out)


def _detect(capsys, dataset, state, *extra) -> dict:
    capsys.readouterr()
    assert cli.main(["detect", "--dataset", str(dataset), "--state", str(state), "--json",
                     *extra]) == 0
    return json.loads(capsys.readouterr().out)


def _snapshot(path):
    st = os.stat(path)
    return path.read_bytes(), st.st_mtime_ns, st.st_ino


def test_verdict_never_writes_the_state_and_detect_is_its_only_writer(seed_dataset, tmp_path,
                                                                       capsys):
    state, metrics = tmp_path / "state.json", tmp_path / "metrics.prom"
    # no state yet: the gate decides from the dataset alone and creates nothing
    code, body = _verdict(capsys, seed_dataset, state, ARM_KERNEL)
    assert code == 1, body
    assert list(tmp_path.iterdir()) == []           # no state file, no temp file either

    out = _detect(capsys, seed_dataset, state, "--as-of", AS_OF, "--metrics-file", str(metrics))
    assert out["transitions"] and state.exists()    # detect writes it
    before = _snapshot(state)
    # detect exports the gate's decision per fleet and new kernel; verdict, called as a
    # playbook would between waves, exits with the same codes and leaves the state alone
    exported = {(m.group(1), m.group(2)): int(float(m.group(3))) for m in re.finditer(
        r'^foliowatch_rollout_verdict\{fleet="([^"]+)",kernel="([^"]+)"\} (\S+)$',
        metrics.read_text(), re.M)}
    assert exported[(FLEET, ARM_KERNEL)] == 1, exported
    assert exported[(FLEET, X86_KERNEL)] == 2, exported     # fresh canaries: never "safe"
    for (fleet, kernel), value in exported.items():
        capsys.readouterr()
        code = cli.main(["verdict", "--dataset", str(seed_dataset), "--state", str(state),
                         "--as-of", AS_OF, "--fleet", fleet, "--kernel", kernel, "--json"])
        body = json.loads(capsys.readouterr().out)
        assert code == value, (fleet, kernel, body)
        if kernel == ARM_KERNEL:    # the record detect wrote is read
            assert any("confirmed regression since" in r for g in body["groups"]
                       for r in g["reasons"]), body
        assert _snapshot(state) == before           # bytes, mtime and inode unchanged
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.prom", "state.json"]


def test_detect_honours_min_consecutive(seed_dataset, tmp_path, capsys):
    state = tmp_path / "state.json"
    first = _detect(capsys, seed_dataset, state, "--as-of", "2026-11-02T21:45:00Z",
                    "--min-consecutive", "2")
    assert first["regressions"], first               # seen ...
    assert first["transitions"] == []                # ... but not announced the first time
    second = _detect(capsys, seed_dataset, state, "--as-of", AS_OF, "--min-consecutive", "2")
    announced = {t["id"] for t in second["transitions"] if t["from"] is None}
    assert announced & {r["id"] for r in first["regressions"]}, second["transitions"]
