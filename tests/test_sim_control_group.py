"""A rollout's control group (``[[rollout]] control_per_canary``): baseline hosts that
reboot with the first wave and keep the old kernel, one per canary in turn from the
canary's cohort and instance type; off by default, and then the fleet is drawn as before."""
from __future__ import annotations

import polars as pl

from foliowatch.simulator import ground_truth, host_table, load_scenario, simulate_frame
from foliowatch.simulator.fleet import REASON_CONTROL, build_plan

SEED = 7


def _scenario(control: float = None, rollback_h: float = None):
    sc = load_scenario("seed-iomap-arm64-xfs", hosts=600, hours=3, interval_s=60, seed=SEED)
    r = sc.rollouts[0]
    r.start_h, r.waves, r.wave_interval_h, r.rollback_h = 0.5, [0.02, 1.0], 8.0, rollback_h
    if control is not None:
        r.control_per_canary = control
    return sc


def test_control_hosts_match_the_canaries_and_keep_their_kernel():
    sc = _scenario(control=2.0)
    hosts = host_table(sc, SEED)
    canaries = hosts.filter(pl.col("rollout_wave") == 1)
    control = hosts.filter(pl.col("control_reboot_ts").is_not_null())
    assert canaries.height >= 5 and control.height == 2 * canaries.height
    assert not set(control["host_id"]) & set(canaries["host_id"])
    key = ["arch", "page_size", "fs", "instance_type"]
    assert (control.group_by(key).len().sort(key)
            .equals(canaries.group_by(key).len().with_columns(pl.col("len") * 2).sort(key)))
    # picked from the hosts the rollout moves last
    assert (control["rollout_wave"] == 2).all()
    event = next(t for t in ground_truth(sc, SEED) if t["type"] == "rollout"
                 and t["action"] == "control")
    assert event["hosts"] == control.height and event["kernel_to"] == event["kernel_from"]
    t0 = event["ts"]
    assert control["control_reboot_ts"].min() >= t0
    assert control["control_reboot_ts"].max() <= t0 + event["reboot_spread_s"]

    frame = pl.concat(list(simulate_frame(sc, SEED, rows_per_chunk=50_000)))
    seen = (frame.filter(pl.col("host_id").is_in(control["host_id"].implode()))
            .group_by("host_id").agg(pl.col("kernel").n_unique().alias("kernels"),
                                     pl.col("boot_id").n_unique().alias("boots"),
                                     pl.col("kernel").first().alias("kernel")))
    assert seen.height == control.height
    assert (seen["kernels"] == 1).all() and seen["kernel"].str.starts_with("6.6.87-101").all()
    # each rebooted (a random reboot may add one more)
    assert (seen["boots"] >= 2).all()


def test_a_rollback_cancels_control_reboots_not_yet_begun():
    """A rollback 10 min into the first wave's 20-min spread: the control reboots drawn
    after it do not happen, like the canaries'."""
    full = host_table(_scenario(control=2.0), SEED).filter(pl.col("control_reboot_ts").is_not_null())
    sc = _scenario(control=2.0, rollback_h=0.5 + 10 / 60)
    control = host_table(sc, SEED).filter(pl.col("control_reboot_ts").is_not_null())
    rollback = next(t for t in ground_truth(sc, SEED) if t.get("action") == "rollback")
    assert 0 < control.height < full.height
    assert control["control_reboot_ts"].max() < rollback["ts"]


def test_off_by_default_and_the_fleet_is_drawn_as_before():
    plain, off = _scenario(), _scenario(control=0.0)
    assert not (build_plan(off, SEED).reboot_reason == REASON_CONTROL).any()
    assert pl.concat(list(simulate_frame(off, SEED))).equals(
        pl.concat(list(simulate_frame(plain, SEED))))
    on = build_plan(_scenario(control=1.0), SEED)
    assert (on.reboot_reason == REASON_CONTROL).sum() > 0
