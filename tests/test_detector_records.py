"""Rollouts inferred from host windows, and the regression state machine."""

from __future__ import annotations

from datetime import timedelta

from foliowatch.detector import attribution
from foliowatch.detector.analysis import DetectorConfig, analyze
from foliowatch.detector.records import RegressionState
from test_detector_helpers import T0, fleet_frame


def test_kernel_changes_and_rollback_are_inferred_from_reboots():
    df = fleet_frame(n_hosts=50, minutes=120, canary_hosts=5, reboot_minute=30, rollback_minute=90)
    rollouts = attribution.infer_rollouts(df)
    fwd = [r for r in rollouts if not r.is_rollback]
    back = [r for r in rollouts if r.is_rollback]
    assert [(r.kernel_from, r.kernel_to, r.hosts) for r in fwd] == [("6.12.0", "6.18.0", 5)]
    assert [(r.kernel_from, r.kernel_to, r.hosts) for r in back] == [("6.18.0", "6.12.0", 5)]
    assert fwd[0].waves[0].start <= T0 + timedelta(minutes=35)
    a = attribution.attribute(T0 + timedelta(minutes=40), rollouts, ("db", "primary", "arm64", 4096))
    assert a.kind == "rollout" and a.kernel_to == "6.18.0"
    assert attribution.attribute(T0 + timedelta(minutes=5), rollouts,
                                 ("db", "primary", "arm64", 4096)).kind == "no_rollout"


def test_state_announces_each_transition_once_and_rollback_resolves(tmp_path):
    df = fleet_frame(minutes=200, write_factor=0.75, stall_factor=4.0, rollback_minute=150)
    state_path = str(tmp_path / "state.json")
    cfg = DetectorConfig(changepoints=False)
    announced = []
    for minute in (70, 100, 130, 140, 199):
        a = analyze(df, as_of=T0 + timedelta(minutes=minute), config=cfg)
        state = RegressionState(state_path)          # reloaded: survives restarts
        for t in state.update(a.candidates, a.rolled_back, a.as_of):
            announced.append((minute, t.previous, t.record.status))
        state.save()
    statuses = [s for _m, _p, s in announced]
    assert statuses.count("confirmed") == 1, announced
    assert statuses[-1] == "resolved" and announced[-1][0] == 199
    rec = RegressionState(state_path).records["db/primary/arm64/4096/xfs/6.12.0->6.18.0"]
    assert rec.status == "resolved" and rec.resolution == "rolled back to 6.12.0"
