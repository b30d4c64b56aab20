"""Known answers for the change-point module: level shifts are found where they are,
and a trend, a daily cycle or autocorrelated noise are not level shifts."""

from __future__ import annotations

import numpy as np
import pytest

from foliowatch.detector import changepoint
from foliowatch.detector.changepoint import (CostL2, CostLinear, LevelShifts, Pelt,
                                             SmoothBaseline, max_bridge_pvalue, noise_scale)
from foliowatch.errors import InputError

SEEDS = range(12)


def _ar1(rng, n, rho):
    e = rng.normal(0, 1, n)
    x = np.empty(n)
    x[0] = e[0] / np.sqrt(1 - rho * rho)
    for i in range(1, n):
        x[i] = rho * x[i - 1] + e[i]
    return x


@pytest.mark.parametrize("seed", SEEDS)
def test_no_change_point_on_a_linear_trend(seed):
    rng = np.random.default_rng(seed)
    for n, rise in ((60, 30.0), (500, 30.0), (500, -200.0), (2000, 50.0)):
        x = np.linspace(0, rise, n) + rng.normal(0, 1, n)
        assert LevelShifts().fit_predict(x) == [], (n, rise)


def test_no_change_point_on_a_daily_cycle():
    # two days of minutes, and a week of quarter-hours. Each change point must beat the
    # smooth baseline without it at p 0.001, and 36 series may meet one that does: at
    # most one may show a shift (0 of 200 per kind measured, see the results; seed 10's
    # 10-sd cycle shows a step whose sum of squares beside the cycle has p 0.0006)
    shown = []
    for seed in SEEDS:
        rng = np.random.default_rng(100 + seed)
        for n, period, amplitude in ((2880, 1440, 3.0), (672, 96, 3.0), (500, 96, 10.0)):
            t = np.arange(n)
            x = amplitude * np.sin(2 * np.pi * t / period + rng.uniform(0, 2 * np.pi)) + rng.normal(0, 1, n)
            if LevelShifts().fit_predict(x):
                shown.append((seed, n, period, amplitude))
    assert len(shown) <= 1, shown


def test_no_change_point_on_autocorrelated_noise():
    # rho 0.9 wanders for tens of points: 200 of them cannot always tell it from shifts
    # (see the calibration in the results), 1,000 can. Over these 120 series at most
    # one may show a shift: the rate measured over 200 seeds per kind is 0-0.5% (AR(1)
    # 0.5 of 200 points: 1 in 200).
    shown = []
    for seed in range(30):
        rng = np.random.default_rng(200 + seed)
        for rho, n in ((0.5, 200), (0.5, 1000), (0.9, 1000), (0.9, 3000)):
            if LevelShifts().fit_predict(_ar1(rng, n, rho)):
                shown.append((seed, rho, n))
    assert len(shown) <= 1, shown


def test_strongly_autocorrelated_noise_is_not_read_as_shifts_for_want_of_its_scale():
    # AR(1) 0.9 of 1,000 points carries about 50 points' worth of information about its
    # own long-run sd: the estimate falls to 0.6-0.7 of the truth in one series in
    # twenty. Read as a z, that showed a shift in 3.5% of 200 series; read as a t with
    # the estimate's degrees of freedom, in none of 200.
    shown = [seed for seed in range(100)
             if LevelShifts().fit_predict(_ar1(np.random.default_rng(1000 + seed), 1000, 0.9))]
    assert len(shown) <= 1, shown


def test_a_two_sd_shift_with_30_points_on_each_side_is_found_within_3_points():
    hits = 0
    for seed in range(40):
        rng = np.random.default_rng(300 + seed)
        x = np.r_[rng.normal(0, 1, 30), rng.normal(2.0, 1, 30)]
        cps = LevelShifts().fit_predict(x)
        assert len(cps) <= 1
        hits += bool(cps) and abs(cps[0].index - 30) <= 3 and cps[0].shift > 1.0
    assert hits >= 32, hits


def test_a_one_sd_shift_is_found_within_3_points_once_it_has_the_points():
    # 100 points a side give z 7 before the search over splits: found in 98% of runs
    # (see the results). Where a one-sd step begins is uncertain by a few points whatever
    # the method (the argmax of a random walk with drift -1/2 per point): within 3
    # points in about 70%.
    found = within = 0
    for seed in range(60):
        rng = np.random.default_rng(400 + seed)
        x = np.r_[rng.normal(0, 1, 100), rng.normal(1.0, 1, 100)]
        cps = LevelShifts().fit_predict(x)
        assert len(cps) <= 1, (seed, cps)
        found += len(cps)
        within += any(abs(c.index - 100) <= 3 for c in cps)
    assert found >= 51 and within >= 33, (found, within)


def test_a_one_sd_shift_with_30_points_a_side_is_found_as_often_as_the_noise_allows():
    # The most any detector of one shift at p 0.001 can do here: the least-squares
    # split, with the noise sd known and the threshold of the maximum over the splits
    # simulated at this length, lies within 3 points of the shift and passes in 39% of
    # runs. The default estimates the noise sd from the same 60 points and counts that
    # estimate's uncertainty (or white noise of 60 points would show a shift in 0.43% of
    # runs, not 0.1%): 0.25-0.27 measured over 200-400 seeds; held to half the best.
    rng = np.random.default_rng(12)
    k = np.arange(5, 56)

    def largest_z(x):
        cs = np.cumsum(x, axis=1)
        left, total = cs[:, k - 1], cs[:, -1:]
        z = np.abs(left / k - (total - left) / (60 - k)) / np.sqrt(1 / k + 1 / (60 - k))
        return z.max(axis=1), k[z.argmax(axis=1)]

    threshold = np.quantile(largest_z(rng.normal(size=(100_000, 60)))[0], 0.999)
    step = np.r_[np.zeros(30), np.ones(30)]
    z, at = largest_z(rng.normal(size=(20_000, 60)) + step)
    best = float(np.mean((z > threshold) & (np.abs(at - 30) <= 3)))
    assert 0.35 < best < 0.43, best
    within = 0
    for seed in range(200):
        rng = np.random.default_rng(500 + seed)
        cps = LevelShifts().fit_predict(rng.normal(0, 1, 60) + step)
        within += any(abs(c.index - 30) <= 3 for c in cps)
    assert within / 200 >= best / 2, (within, best)


def test_a_one_sd_shift_with_30_points_a_side_at_p_01():
    hits = 0
    for seed in range(40):
        rng = np.random.default_rng(500 + seed)
        x = np.r_[rng.normal(0, 1, 30), rng.normal(1.0, 1, 30)]
        cps = LevelShifts(max_pvalue=0.01).fit_predict(x)
        hits += any(abs(c.index - 30) <= 3 for c in cps)
    assert hits >= 16, hits


@pytest.mark.parametrize("seed", range(5))
def test_series_of_20_points_are_handled(seed):
    rng = np.random.default_rng(600 + seed)
    assert LevelShifts().fit_predict(rng.normal(0, 1, 20)) == []
    x = np.r_[rng.normal(0, 1, 10), rng.normal(4.0, 1, 10)]
    cps = LevelShifts().fit_predict(x)
    assert [abs(c.index - 10) <= 1 for c in cps] == [True]
    assert LevelShifts().fit_predict([1.0, 2.0, 3.0]) == []
    assert LevelShifts().fit_predict(np.full(20, 3.0)) == []


@pytest.mark.parametrize("seed", range(5))
def test_steps_inside_a_trend_and_a_cycle_are_found(seed):
    rng = np.random.default_rng(700 + seed)
    t = np.arange(2880)
    x = 0.3 * np.sin(2 * np.pi * t / 1440) + 0.0002 * t + rng.normal(0, 0.02, t.size)
    x[1500:] -= 0.2
    cps = LevelShifts().fit_predict(x)
    assert [abs(c.index - 1500) <= 3 for c in cps] == [True]
    assert cps[0].shift < -0.15


def _trend_and_fast_cycle(rng, n):
    t = np.arange(n)
    return np.linspace(0, 10, n) + 3 * np.sin(4 * np.pi * t / n) + rng.normal(0, 1, n)


def test_no_change_point_on_a_trend_plus_a_cycle_of_half_the_series():
    # 200 points, a 10-sd trend and a 3-sd cycle of 100 points: cut into level segments
    # (a cycle of two periods is as slow as the local lines that tell a flank from a
    # step) it read as shifts in 62% of series; against a smooth baseline (line plus
    # Fourier terms) nothing is left to cut
    shown = [seed for seed in range(40)
             if LevelShifts().fit_predict(_trend_and_fast_cycle(np.random.default_rng(800 + seed), 200))]
    assert len(shown) <= 1, shown


@pytest.mark.parametrize("n, least", ((200, 13), (1000, 24)))
def test_a_two_sd_shift_inside_a_trend_plus_a_fast_cycle_is_found_within_3_points(n, least):
    # rejected with the cycle's staircase before (13% found within 3 points over 200
    # series, 1 and 2 of these 30): fitted beside the smooth baseline, the step is what
    # the baseline cannot explain. 16-17 and 28 of these 30; at 200 points a step and a
    # wave of 100 points still trade off (a step at t and a phase moved by a few points
    # fit about as well), at 1,000 they no longer do.
    hits = 0
    for seed in range(30):
        rng = np.random.default_rng(900 + seed)
        x = _trend_and_fast_cycle(rng, n)
        at = int(rng.integers(n // 4, 3 * n // 4))
        sign = rng.choice([-1, 1])
        x[at:] += 2.0 * sign
        cps = LevelShifts().fit_predict(x)
        assert len(cps) <= 2, (seed, cps)
        near = [c for c in cps if abs(c.index - at) <= 3]
        # the jump is the step's, not the cycle's: its size in the series' units
        hits += bool(near) and abs(near[0].shift - 2.0 * sign) < 0.8
    assert hits >= least, hits


def test_the_smooth_baseline_finds_the_cycle_and_leaves_a_step_to_the_steps():
    rng = np.random.default_rng(13)
    n = 400
    x = _trend_and_fast_cycle(rng, n)
    fit = SmoothBaseline().fit(x, 1.0)
    assert fit.period == pytest.approx(200, rel=0.03) and fit.harmonics >= 1
    assert np.std(x - fit.values) == pytest.approx(1.0, rel=0.1)
    # white noise has no smooth part worth its penalty
    assert SmoothBaseline().fit(rng.normal(0, 1, n), 1.0).terms == 0
    # a step fitted beside the smooth terms is not taken up by them
    step = np.r_[np.zeros(n // 2), np.full(n // 2, 3.0)] + rng.normal(0, 1, n)
    assert SmoothBaseline().fit(step, 1.0).terms > 0
    assert SmoothBaseline().fit(step, 1.0, [n // 2]).terms == 0
    assert SmoothBaseline.steps(SmoothBaseline(), step, SmoothBaseline().fit(step, 1.0),
                                2.0 * np.log(n), 5) == [n // 2]


def test_several_shifts_in_heavy_tailed_noise_are_all_found():
    rng = np.random.default_rng(8)
    level = np.r_[np.zeros(300), np.full(200, 2.0), np.full(300, -1.0)]
    x = level + rng.standard_t(3, level.size)
    cps = LevelShifts().fit_predict(x)
    assert len(cps) == 2
    assert all(abs(c.index - t) <= 5 for c, t in zip(cps, (300, 500))), cps
    assert cps[0].shift > 1.5 and cps[1].shift < -2.5


def test_min_shift_drops_small_jumps():
    rng = np.random.default_rng(9)
    x = np.r_[rng.normal(0, 0.01, 200), rng.normal(0.02, 0.01, 200)]
    assert len(LevelShifts().fit_predict(x)) == 1
    assert LevelShifts(min_shift=0.03).fit_predict(x) == []


def test_the_cost_is_swappable_and_pelt_finds_the_optimum():
    x = np.r_[np.zeros(20), np.full(20, 5.0), np.zeros(20)] + np.tile([0.1, -0.1], 30)
    assert Pelt(CostL2(), min_size=5).fit(x).predict(pen=1.0) == [20, 40]
    ramp = np.r_[np.arange(30.0), 30.0 - np.arange(30.0)]
    assert Pelt(CostLinear(), min_size=5).fit(ramp).predict(pen=1.0) == [30]
    assert len(Pelt(CostL2(), min_size=5).fit(ramp).predict(pen=1.0)) > 2
    c = CostLinear().fit(ramp)
    assert c.error(0, 30) == pytest.approx(0.0, abs=1e-9)


def test_noise_scale_reads_the_long_run_sd_of_ar1_noise_through_shifts():
    rng = np.random.default_rng(10)
    for rho in (0.0, 0.5, 0.9):
        x = _ar1(rng, 20000, rho)
        x[10000:] += 5.0
        sd, r = noise_scale(x)
        assert abs(r - rho) < 0.05
        assert sd == pytest.approx(np.sqrt(1 / (1 - rho) ** 2), rel=0.15)


def test_bridge_pvalue_is_monotone_and_bounded():
    c = np.linspace(2.5, 8, 30)
    p = max_bridge_pvalue(c, np.full(c.size, 0.02), 250)
    assert np.all(np.diff(p) < 0) and p[0] <= 1 and p[-1] > 0


def test_bridge_pvalue_matches_the_simulated_maximum_over_the_splits_of_60_points():
    # the largest two-sample |z| over the splits (5 points a side at least) of 60
    # Gaussian points: the p-value the detector gives it is the share of simulated
    # segments that reach it; the continuous bridge's is twice that
    rng = np.random.default_rng(11)
    x = rng.normal(size=(50_000, 60))
    k = np.arange(5, 56)
    cs = np.cumsum(x, axis=1)
    left, total = cs[:, k - 1], cs[:, -1:]
    z = (np.abs(left / k - (total - left) / (60 - k)) / np.sqrt(1 / k + 1 / (60 - k))).max(axis=1)
    for c in (3.0, 3.4, 3.8):
        simulated = float(np.mean(z > c))
        assert max_bridge_pvalue(c, 5 / 60, 60) == pytest.approx(simulated, rel=0.15), c


def test_bad_settings_are_refused_with_the_setting_named():
    with pytest.raises(InputError, match="min_size"):
        LevelShifts(min_size=1)
    with pytest.raises(InputError, match="max_pvalue"):
        LevelShifts(max_pvalue=2)


def test_a_step_beside_a_cycle_reports_the_p_of_its_weakest_test():
    # seed 10's 10-sd cycle of 96 points (the daily-cycle test above): a step passes the
    # level test in what the baseline leaves at p ~5e-15 but its test beside the baseline
    # refitted without it only at ~0.0008; the label must say the latter, not the former
    rng = np.random.default_rng(110)
    for n, period, amplitude in ((2880, 1440, 3.0), (672, 96, 3.0), (500, 96, 10.0)):
        t = np.arange(n)
        x = amplitude * np.sin(2 * np.pi * t / period + rng.uniform(0, 2 * np.pi)) + rng.normal(0, 1, n)
    cps = LevelShifts().fit_predict(x)
    assert [cp.index for cp in cps] == [246]
    assert 1e-4 < cps[0].p_value <= 0.001, cps


# --- the fast paths give the straightforward computation's answers ------------------

def _pelt_one_end_at_a_time(cost, x, pen, m):
    """PELT as written in the paper: one end at a time, pruning after each."""
    n = x.size
    cost.fit(x)
    F = np.full(n + 1, np.inf)
    F[0] = -pen
    last = np.zeros(n + 1, dtype=int)
    R = np.zeros(0, dtype=int)
    for t in range(m, n + 1):
        if t - m == 0 or t - m >= m:
            R = np.append(R, t - m)
        c = F[R] + cost.errors(R, t)
        k = int(np.argmin(c))
        F[t], last[t] = c[k] + pen, R[k]
        R = R[c <= F[t]]
    out, t = [], n
    while t > 0:
        t = int(last[t])
        if t > 0:
            out.append(t)
    return sorted(out)


def test_pelt_gives_the_segmentation_of_one_end_at_a_time():
    # Heavy tails (t with 1.2 df): a start pruned at one end of a block of min_size
    # ends wins a later end of the same block in about 6% of blocks, which the
    # blockwise search must hand to its end-by-end path.
    rng = np.random.default_rng(12)
    for i in range(30):
        x = rng.standard_t(1.2, int(rng.integers(20, 150)))
        for cost in (CostL2, CostLinear):
            for m in (3, 5):
                for pen in (0.5, 2.0, 8.0):
                    assert (Pelt(cost(), m).fit(x).predict(pen)
                            == _pelt_one_end_at_a_time(cost(), x, pen, max(m, cost.min_size))), (i, m, pen)


def test_the_noise_scale_takes_a_median_and_a_least_squares_fit_per_lag_and_rho():
    rng = np.random.default_rng(13)
    for n in (20, 63, 64, 65, 200, 361):
        x = np.round(rng.normal(0, 1, n), 1)        # ties, as in quantised telemetry
        K = int(np.clip(n // 8, 2, 40))
        lags = np.arange(1, K + 1)
        mads = [np.median(np.abs(x[k:] - x[:-k] - np.median(x[k:] - x[:-k]))) for k in lags]
        assert np.array_equal(changepoint._lag_difference_mads(x, lags), mads), n
        v = (1.4826 * np.asarray(mads)) ** 2 / 2.0
        drift = (lags * lags).astype(float) if K >= 8 else np.zeros(K)
        cap = 0.9 if K >= 8 else 0.0
        best = (np.inf, 0.0, 0.0)
        for rho in np.linspace(0.0, cap, 99):
            A = np.column_stack([1.0 - rho ** lags, drift])
            coef = np.linalg.lstsq(A, v, rcond=None)[0]
            if coef[1] < 0 or coef[0] <= 0:
                coef = np.array([float(A[:, 0] @ v / (A[:, 0] @ A[:, 0])), 0.0])
            err = float(np.sum((v - A @ coef) ** 2))
            if err < best[0]:
                best = (err, float(rho), float(coef[0]))
        err, rho, g0 = changepoint._fit_variogram(v, lags, cap, drift)
        assert rho == best[1] and g0 == pytest.approx(best[2], rel=1e-9), n


def test_the_baseline_is_the_least_squares_fit_beside_its_steps():
    # the normal equations are formed without the steps' columns (their segment sums
    # instead): the residual sum of squares is that of least squares on all columns
    rng = np.random.default_rng(14)
    n = 400
    t = np.arange(n)
    x = 3 * np.sin(2 * np.pi * t / 130) + np.where(t >= 170, 2.0, 0.0) + rng.normal(0, 1, n)
    steps = [170, 300]
    fit = SmoothBaseline().fit(x, 1.0, steps)
    assert fit.harmonics >= 1
    A = np.column_stack([changepoint._step_columns(n, steps)] + fit.columns())
    coef = np.linalg.lstsq(A, x, rcond=None)[0]
    assert fit.rss == pytest.approx(float(np.sum((x - A @ coef) ** 2)), rel=1e-9)
    smooth = np.column_stack(fit.columns()) @ coef[len(steps) + 1:]
    assert np.allclose(fit.values, smooth, atol=1e-8)
