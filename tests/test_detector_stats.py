"""Known-answer tests of the detector's statistical pieces."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import polars as pl
import pytest

from foliowatch.detector import covariates, evidence, memory_state, rank_test
from foliowatch.detector.analysis import DetectorConfig, analyze
from test_detector_helpers import T0, fleet_frame


def test_benjamini_hochberg_matches_the_textbook_example():
    p = [0.01, 0.04, 0.03, 0.005]
    q = evidence.benjamini_hochberg(p)
    # sorted p 0.005, 0.01, 0.03, 0.04 -> p*m/rank 0.02, 0.02, 0.04, 0.04 (monotone)
    assert np.allclose(q, [0.02, 0.04, 0.04, 0.02])


def test_hodges_lehmann_recovers_a_pure_shift_and_covers_it():
    rng = np.random.default_rng(3)
    base = rng.normal(0, 1, 400)
    new = rng.normal(0, 1, 300) + 0.5
    est, lo, hi = rank_test.hodges_lehmann(new, base)
    assert abs(est - 0.5) < 0.15
    assert lo < 0.5 < hi and hi - lo < 0.5
    # exact answer on a deterministic case: differences {1,2,3} x {0} -> median 2
    assert rank_test.hodges_lehmann(np.array([1.0, 2.0, 3.0]), np.array([0.0]))[0] == 2.0


def test_covariate_adjuster_removes_a_hardware_effect_fitted_on_baseline_hosts():
    rng = np.random.default_rng(0)
    n = 300
    itype = np.where(rng.random(n) < 0.5, "old", "new")
    is_base = np.ones(n, dtype=bool)
    is_base[:30] = False
    itype[:30] = "new"
    y = np.where(itype == "new", 0.25, 0.0) + rng.normal(0, 0.02, n)
    hosts = pl.DataFrame({"instance_type": itype, "cpus": np.full(n, 64.0)})
    r, adjusted = covariates.CovariateAdjuster(["instance_type", "cpus"]).residuals(hosts, y, is_base)
    assert adjusted
    assert abs(np.median(r[~is_base]) - np.median(r[is_base])) < 0.02


def test_memory_state_model_fits_within_hosts_so_host_differences_do_not_leak_in():
    rng = np.random.default_rng(1)
    rows = []
    for h in range(60):
        frag = np.clip(rng.uniform(0.2, 0.9) + np.linspace(-0.15, 0.15, 200), 0.05, 0.95)
        # hosts that sit at high fragmentation are also faster for unrelated reasons:
        # a cross-sectional fit would find a positive slope
        z = 0.6 * frag.mean() - 0.3 * frag + rng.normal(0, 0.05, frag.size)
        rows.append(pl.DataFrame({"host_id": [f"h{h}"] * frag.size, "frag": frag, "z": z}))
    m = memory_state.MemoryStateModel().fit(pl.concat(rows))
    assert abs((m.predict(np.array([0.3])) - m.predict(np.array([0.8])))[0] - 0.15) < 0.03
    # below the baseline's range the curve is held, not extended
    assert abs(m.predict(np.array([0.0]))[0] - m.predict(np.array([0.05]))[0]) < 1e-9


def _flagged(df, minutes):
    a = analyze(df, as_of=T0 + timedelta(minutes=minutes), config=DetectorConfig(changepoints=False))
    return a.candidates


def test_a_large_regression_on_canaries_is_confirmed_with_the_right_effect():
    df = fleet_frame(write_factor=0.75, stall_factor=4.0, minutes=150)
    recs = _flagged(df, 149)
    assert len(recs) == 1
    r = recs[0]
    assert (r.arch, r.fs, r.kernel_from, r.kernel_to) == ("arm64", "xfs", "6.12.0", "6.18.0")
    assert r.status == "confirmed"
    levels = [m for m in r.metrics if m["metric"] == "write_mib_s" and m["statistic"] == "level"]
    assert levels and levels[0]["ci_low"] < 0.80 and levels[0]["effect"] < 0.85


@pytest.mark.parametrize("kwargs", [
    {},                                               # same kernel behaviour
    {"write_factor": 1.2, "stall_factor": 0.5},       # an improvement
    {"load_shift": (62, 1.6)},                        # load shift on both kernels at the rollout
    {"new_instance_type": "m8g.24xlarge", "new_hw_speedup": 1.25},   # canaries on new hardware
], ids=["null", "improvement", "load-shift", "new-hardware"])
def test_changes_that_are_not_regressions_raise_nothing(kwargs):
    df = fleet_frame(minutes=150, **kwargs)
    assert _flagged(df, 149) == []


def test_a_tail_only_regression_is_found_by_the_tail_statistics():
    # most windows unchanged, one in five on the new kernel 3x stalls: Kayenta's blind spot
    df = fleet_frame(minutes=180, canary_hosts=30, seed=5)
    rng = np.random.default_rng(9)
    storm = (df["kernel"] == "6.18.0").to_numpy() & (rng.random(df.height) < 0.2)
    df = df.with_columns(pl.Series("compact_stall_per_s",
                                   np.where(storm, df["compact_stall_per_s"].to_numpy() * 3 + 1.0,
                                            df["compact_stall_per_s"].to_numpy())))
    recs = _flagged(df, 179)
    assert recs and {m["statistic"] for m in recs[0].metrics} & {"tail", "bad_share"}
