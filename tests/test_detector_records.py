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


REC_ID = "db/primary/arm64/4096/xfs/6.12.0->6.18.0"


def _redeployed(df, minute: int):
    """``df`` (a rollout rolled back) with its canaries back on the new kernel from
    ``minute`` on, with the same regression: a real recurrence."""
    import polars as pl
    canaries = df.filter(pl.col("kernel") == "6.18.0")["host_id"].unique().implode()
    again = pl.col("host_id").is_in(canaries) & (pl.col("window_start") >= T0 + timedelta(minutes=minute))
    return df.with_columns(
        pl.when(again).then(pl.lit("6.18.0")).otherwise(pl.col("kernel")).alias("kernel"),
        pl.when(again).then(pl.col("host_id") + "-b4").otherwise(pl.col("boot_id")).alias("boot_id"),
        pl.when(again).then(pl.col("write_mib_s") * 0.75).otherwise(pl.col("write_mib_s")).alias("write_mib_s"),
        pl.when(again).then(pl.col("compact_stall_per_s") * 4.0 + 0.5)
        .otherwise(pl.col("compact_stall_per_s")).alias("compact_stall_per_s"))


def _replay(df, minutes, state_path, min_consecutive=1):
    cfg = DetectorConfig(changepoints=False)
    announced = []
    for minute in minutes:
        a = analyze(df, as_of=T0 + timedelta(minutes=minute), config=cfg)
        state = RegressionState(state_path)
        for t in state.update(a.candidates, a.rolled_back, a.as_of, min_consecutive=min_consecutive):
            announced.append((minute, t.previous, t.record.status))
        state.save()
    return announced


def test_a_resolved_record_stays_resolved_without_new_evidence(tmp_path):
    # The lookback still holds the regressed windows from before the rollback for hours:
    # each later run sees the old candidate again. That is the evidence already resolved.
    df = fleet_frame(minutes=330, write_factor=0.75, stall_factor=4.0, rollback_minute=150)
    path = str(tmp_path / "state.json")
    first = _replay(df, (100, 130, 160), path)
    assert first[-1] == (160, "confirmed", "resolved"), first
    resolved = RegressionState(path).records[REC_ID]
    # the same as_of again, and newer data without the new kernel (and its effect)
    later = _replay(df, (160, 160, 170, 200, 260, 329, 329), path)
    assert later == []
    again = RegressionState(path).records[REC_ID]
    assert again.status == "resolved" and again.resolved_at == resolved.resolved_at


def test_a_real_recurrence_after_resolution_reopens_the_record_once(tmp_path):
    df = _redeployed(fleet_frame(minutes=330, write_factor=0.75, stall_factor=4.0,
                                 rollback_minute=150), 240)
    path = str(tmp_path / "state.json")
    announced = _replay(df, (100, 130, 160, 200, 230, 250, 270, 300, 329, 329), path)
    before = [a for a in announced if a[0] < 240]
    after = [a for a in announced if a[0] >= 240]
    assert before[-1] == (160, "confirmed", "resolved"), announced
    reopened = [a for a in after if a[1] == "resolved"]
    assert len(reopened) == 1, announced
    assert [s for _m, p, s in after if p != "resolved"] in ([], ["confirmed"]), announced
    assert RegressionState(path).records[REC_ID].status != "resolved"


def test_a_recurrence_needs_min_consecutive_runs_after_the_resolution():
    from datetime import datetime, timezone
    from foliowatch.detector.records import RegressionRecord
    t = datetime(2026, 11, 2, tzinfo=timezone.utc)

    def cand(status="confirmed"):
        return RegressionRecord(
            id=REC_ID, fleet="db", role="primary", arch="arm64", page_size=4096, fs="xfs",
            kernel_from="6.12.0", kernel_to="6.18.0", status=status, metric="write_mib_s",
            statistic="median", effect=0.75, ci_low=0.7, ci_high=0.8, effect_kind="ratio",
            p_value=1e-6, q_value=1e-5, hosts_new=10, hosts_base=190, hosts_in_group=200,
            impact=1.0, windows=100, first_detected_at="", updated_at="")
    gone = {(REC_ID.rsplit("/", 1)[0], "6.18.0")}
    state = RegressionState(None)
    assert [x.record.status for x in state.update([cand()], set(), t, 2)] == []
    assert [x.record.status for x in state.update([cand()], set(), t + timedelta(minutes=1), 2)] == ["confirmed"]
    assert [x.record.status for x in state.update([cand()], gone, t + timedelta(minutes=2), 2)] == ["resolved"]
    # the kernel is gone: the old candidate counts for nothing, however often it comes
    for m in range(3, 8):
        assert state.update([cand()], gone, t + timedelta(minutes=m), 2) == []
    # the kernel is back: the first run with the regression is one run, not two
    assert state.update([cand()], set(), t + timedelta(minutes=8), 2) == []
    assert state.update([], set(), t + timedelta(minutes=9), 2) == []
    assert state.update([cand()], set(), t + timedelta(minutes=10), 2) == []
    back = state.update([cand()], set(), t + timedelta(minutes=11), 2)
    assert [(x.previous, x.record.status) for x in back] == [("resolved", "confirmed")]
    assert state.update([cand()], set(), t + timedelta(minutes=12), 2) == []
