"""Level shifts in a series of any origin: where the mean jumps, with a p-value each.

One method, in the shape ruptures gave the field (a cost says how well one segment
fits, a search finds the segmentation that minimises total cost plus a penalty), so a
cost can be swapped without touching the search:

- costs: ``CostL2`` (piecewise-constant mean, the default) and ``CostLinear``
  (a straight line per segment, for series whose segments trend);
- search: ``Pelt`` (exact optimum of cost + penalty per change point, with pruning);
- null model: ``SmoothBaseline`` (what "no change point" may still do: a line plus a
  few Fourier terms, chosen by a penalised criterion), taken off before the search;
- ``LevelShifts``, the default detector: robust noise scale -> smooth baseline ->
  PELT with a penalty in units of that scale on what the baseline leaves -> a
  significance check of every candidate against its neighbours, which removes the
  weakest until all that remain hold.

Why each step:

- Noise scale. A penalty or test in units of the plain sd of the series reads a trend,
  a daily cycle or the level shifts themselves as noise, and one in units of the
  point-to-point sd reads an autocorrelated wander as shifts. The scale here is the
  long-run sd of an AR(1) noise, fitted to the robust variogram of the series (MAD of
  the differences at lags 1..K, K = n/8 up to 40, beside a k^2 term that takes up a
  smooth signal such as a cycle): differences ignore the level,
  medians ignore the few differences that straddle a shift, centring ignores a linear
  trend, and the lags beyond 1 measure how slowly the noise forgets (Chakar, Lebarbier,
  Levy-Leduc & Robin 2017 use lags 1 and 2 for the same reason). The estimate is
  itself noisy (strongly autocorrelated noise carries little information about its own
  scale), so a jump in its units is read as a t statistic with the estimate's degrees
  of freedom (``NoiseScale``), not as a z.
- Significance. PELT's penalty decides how many candidates to consider; each candidate
  then has to show (1) a jump between the means of its two neighbouring segments whose
  maximum-over-splits p-value (standardized Brownian bridge with the correction for a
  discrete number of splits, James, James & Siegmund 1987) is at most ``max_pvalue``, and (2) that two levels fit its neighbourhood better
  than one straight line does: a steady trend cut into a staircase fails (2), and so
  does the rising or falling flank of a cycle, while a step fits two levels better than
  any line. The weakest failing candidate is removed and its neighbours retested on
  their wider neighbourhood until every candidate holds. (3) Where the series trends or
  curves (lines per segment explain significant variance, or most of a staircase's
  jumps vanish between local lines), every candidate must also show a jump between a
  line fitted to at most ``local_points`` points before it and one fitted after it: a
  slow cycle continues through its staircase, a level shift does not.
- The smooth baseline. A trend plus a cycle of a few dozen to a few hundred points
  is, to a piecewise-constant model, a staircase, and the local-line check below can
  only reject it where the lines bend less than the cycle (62% of a 10-sd trend plus a
  3-sd cycle of 100 points in 200 were read as shifts without it). So the null is a
  smooth curve: a line plus 1-6 harmonics of a period read off the periodogram (any
  sampling interval; a curve longer than the series is part of a period), each term
  paid for at PELT's price of a change point. A step must not be absorbed by those
  terms: the baseline is always fitted together with a level step at each candidate,
  from several starts (the series' own PELT segmentation; steps added greedily beside
  the smooth fit, after each of the three best places for one), the best start by
  the penalised criterion is backfitted (segment the rest, refit the baseline around
  the candidates, until it holds still), and every change point must finally explain
  the series better than the baseline refitted without it (period and terms chosen
  again) by the same p. Where nothing cyclic pays (no term, or a line alone, or the
  steps explain the wave), the method is exactly the previous one: PELT on the series,
  whose checks tell a trend from a staircase. Measured in the results: no false shift
  in 200 trend-plus-cycle series of 200 points (124 before), a 2-sd shift inside it
  found within 3 points in 69% at 200 points and 96.5% at 1,000 (13% before); on the
  fleet series the flanks of the daily cycle no longer pass as steps (44 false -> 8).
  The price: AR(1) noise of 200-1,000 points, where a wander first passes for a wave,
  shows a shift in 1-3 of 200 series where it showed 0-1.
- Limits, measured (``benchmarks/detector_changepoints.py --calibration 200``, results
  in ``benchmarks/detector_results.md``): a 1-sd shift with 30 points a side is found
  within 3 points in about a quarter of runs at p 0.001, where the least-squares split
  with the noise sd known and an exact threshold reaches 0.39 and no threshold beats
  0.68 (where a 1-sd step begins is uncertain by several points); 100 a side: found in
  98% of runs. Under 64 points the noise is taken as uncorrelated (two lags cannot tell
  autocorrelation from shifts), and no smooth baseline is fitted (16 points is the
  shortest period). A wave seen less than twice in a series with strongly
  autocorrelated noise is not taken for a cycle (the series cannot tell the two apart).
  ``min_shift`` keeps steps of less than 3% out of ``analyze``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from scipy.linalg import solve_triangular
from scipy.special import ndtr, ndtri, stdtr

from foliowatch.errors import InputError

_SQRT_2PI = np.sqrt(2.0 * np.pi)


@dataclass(frozen=True)
class ChangePoint:
    index: int            # first index of the new segment
    p_value: float
    mean_before: float
    mean_after: float

    @property
    def shift(self) -> float:
        return self.mean_after - self.mean_before


# --- costs -------------------------------------------------------------------------

class CostL2:
    """Sum of squared deviations from the segment mean: a piecewise-constant model."""

    min_size = 2

    def fit(self, x: np.ndarray) -> "CostL2":
        x = np.asarray(x, dtype=np.float64)
        self._s1 = np.concatenate([[0.0], np.cumsum(x)])
        self._s2 = np.concatenate([[0.0], np.cumsum(x * x)])
        return self

    def errors(self, starts: np.ndarray, end: int) -> np.ndarray:
        """Cost of every segment [start, end) for the ``starts`` given."""
        n = end - starts
        s1 = self._s1[end] - self._s1[starts]
        return np.maximum(self._s2[end] - self._s2[starts] - s1 * s1 / n, 0.0)

    def error(self, start: int, end: int) -> float:
        return float(self.errors(np.array([start]), end)[0])


class CostLinear:
    """Residual sum of squares of a least-squares line per segment: a piecewise-linear
    model (a trend within a segment costs nothing)."""

    min_size = 3

    def fit(self, x: np.ndarray) -> "CostLinear":
        x = np.asarray(x, dtype=np.float64)
        t = np.arange(x.size, dtype=np.float64)
        z = np.zeros(1)
        self._t1 = np.concatenate([z, np.cumsum(t)])
        self._t2 = np.concatenate([z, np.cumsum(t * t)])
        self._y1 = np.concatenate([z, np.cumsum(x)])
        self._y2 = np.concatenate([z, np.cumsum(x * x)])
        self._ty = np.concatenate([z, np.cumsum(t * x)])
        return self

    def errors(self, starts: np.ndarray, end: int) -> np.ndarray:
        n = end - starts
        st = self._t1[end] - self._t1[starts]
        stt = self._t2[end] - self._t2[starts]
        sy = self._y1[end] - self._y1[starts]
        syy = self._y2[end] - self._y2[starts]
        sty = self._ty[end] - self._ty[starts]
        vtt = stt - st * st / n
        vty = sty - st * sy / n
        vyy = syy - sy * sy / n
        with np.errstate(divide="ignore", invalid="ignore"):
            explained = np.where(vtt > 0, vty * vty / vtt, 0.0)
        return np.maximum(vyy - explained, 0.0)

    def error(self, start: int, end: int) -> float:
        return float(self.errors(np.array([start]), end)[0])


# --- search ------------------------------------------------------------------------

class Pelt:
    """``Pelt(CostL2(), min_size=5).fit(x).predict(pen)``: the segmentation that
    minimises the sum of segment costs plus ``pen`` per change point (Killick, Fearnhead
    & Eckley 2012). Returns the first index of every new segment."""

    def __init__(self, cost=None, min_size: int = 5):
        self.cost = cost if cost is not None else CostL2()
        self.min_size = max(int(min_size), self.cost.min_size)

    def fit(self, x) -> "Pelt":
        self.n = int(np.asarray(x).size)
        self.cost.fit(x)
        return self

    def predict(self, pen: float) -> List[int]:
        n, m = self.n, self.min_size
        if n < 2 * m:
            return []
        F = np.full(n + 1, np.inf)
        F[0] = -pen
        last = np.zeros(n + 1, dtype=np.int64)
        R = np.zeros(0, dtype=np.int64)         # the starts in play
        # A segment ending at t starts at t - m or before, where F is known: the costs
        # of m consecutive ends are computed together, with one array operation each.
        for first in range(m, n + 1, m):
            ends = np.arange(first, min(first + m, n + 1))
            new = ends - m
            R = np.concatenate([R, new[(new == 0) | (new >= m)]])
            costs = F[R] + self.cost.errors(R[None, :], ends[:, None])
            opened = R[None, :] <= (ends - m)[:, None]
            R = R[self._choose(costs, opened, ends, R, F, last, pen)]
        out = []
        t = n
        while t > 0:
            t = int(last[t])
            if t > 0:
                out.append(t)
        return sorted(out)

    @staticmethod
    def _choose(costs: np.ndarray, opened: np.ndarray, ends: np.ndarray, R: np.ndarray,
                F: np.ndarray, last: np.ndarray, pen: float) -> np.ndarray:
        """The optimum at each of ``ends`` (rows of ``costs`` over the starts ``R``,
        ``opened``: the starts open to each end), written to F and last, and which
        starts stay in play: exactly as one end at a time. A start that cannot beat
        the optimum at an end never will (costs add up) and is pruned from then on;
        the optima of all ends are first taken with the starts pruned inside this
        block still in, which changes nothing unless one of them wins an end after its
        pruning: then end by end."""
        rows = np.arange(ends.size)
        k = np.where(opened, costs, np.inf).argmin(axis=1)
        best = costs[rows, k] + pen
        pruned = opened & ~(costs <= best[:, None])
        before = np.logical_or.accumulate(pruned, axis=0)
        if not before[rows[:-1], k[1:]].any():
            F[ends], last[ends] = best, R[k]
            return ~before[-1]
        alive = np.ones(R.size, dtype=bool)
        for t, cost, in_play in zip(ends, costs, opened):
            in_play = in_play & alive
            j = int(np.where(in_play, cost, np.inf).argmin())
            F[t] = cost[j] + pen
            last[t] = R[j]
            alive &= ~in_play | (cost <= F[t])
        return alive


# --- noise scale and tests ---------------------------------------------------------

def noise_scale(x: np.ndarray, max_rho: float = 0.98) -> Tuple[float, float]:
    """(long-run sd, lag-1 autocorrelation) of the noise of ``x``, robust to level
    shifts, outliers and a linear trend: an AR(1) variogram gamma0 (1 - rho^k) fitted
    to the squared MADs of the lag-k differences, k = 1 .. K (see the module
    docstring). The long-run sd is sqrt(gamma0 (1 + rho) / (1 - rho)): the sd that a
    mean of many consecutive points carries, per point."""
    x = np.asarray(x, dtype=np.float64)
    n = x.size
    K = int(np.clip(n // 8, 2, 40))
    lags = np.arange(1, K + 1)
    v = (1.4826 * _lag_difference_mads(x, lags)) ** 2 / 2.0
    if not np.isfinite(v).all() or v[0] <= 0:
        sd = float(np.std(x))
        return (sd if sd > 0 else 0.0), 0.0
    # rho is capped by what n points can tell apart from a drift (1 - 1 / sqrt(n));
    # under 64 points (fewer than 8 lags) two lags cannot tell autocorrelation from
    # shifts, and the noise is taken as uncorrelated.
    cap = min(max_rho, max(0.0, 1.0 - 1.0 / np.sqrt(n))) if K >= 8 else 0.0
    # A smooth signal (a cycle, a curve) adds about beta k^2 to the variogram: fitted
    # beside the noise so that it is not read as slowly forgetting noise. (It also takes
    # up part of an AR(1) 0.9 noise's own rise: the long-run sd comes out at 0.85 of the
    # truth, median over 1,000 points, which the degrees of freedom of ``NoiseScale``
    # answer for. Fitting it only where AR(1) alone fits badly read the daily cycle of
    # a fleet median as rho 0.92 noise and missed a 17-sd load shift.)
    drift = (lags * lags).astype(np.float64) if K >= 8 else np.zeros(K)
    _err, rho, g0 = _fit_variogram(v, lags, cap, drift)
    return float(np.sqrt(g0 * (1 + rho) / (1 - rho))), float(rho)


@dataclass(frozen=True)
class NoiseScale:
    """The long-run noise sd of a series and how many degrees of freedom its estimate
    carries: a jump in units of an estimated sd is a t statistic, not a z.

    Degrees of freedom, measured on 300 simulated series each from how far the estimate
    falls below the truth (its 5% quantile read as chi-square's), per point of n (1 -
    rho) / (1 + rho): 0.75 for white noise of 20 and 60 points (rho is not fitted under
    64 points); where rho is fitted, 1.1-1.5 for white noise of 200 and 1,000 points,
    0.41 for AR(1) 0.5 of 200, 0.24-0.78 for AR(1) 0.9 of 200-3,000. Taken as
    0.1 + 0.9 (1 - rho)^2, below those where rho is high because the fitted rho itself
    comes out low there (0.84-0.88 for 0.9). Without it, white noise of 20 points showed
    a shift at p 0.001 in 1.1% of 4,000 series, of 60 in 0.43%, of 200 in 0.2%; AR(1)
    0.9 of 1,000 points in 3.5% of 200 (with it: 0 of 200).
    """
    sd: float
    dof: float

    @classmethod
    def of(cls, sd: float, rho: float, n: int) -> "NoiseScale":
        share = 0.75 if n < 64 else (0.1 + 0.9 * (1.0 - rho) ** 2) * (1.0 - rho) / (1.0 + rho)
        return cls(sd, max(share * n, 1.0))

    def gaussian(self, z: float) -> float:
        """The Gaussian z with the same two-sided tail as ``z`` on t(dof)."""
        tail = stdtr(self.dof, -abs(z))
        return float(-ndtri(tail)) if tail > 0 else abs(z)


def _lag_difference_mads(x: np.ndarray, lags: np.ndarray) -> np.ndarray:
    """The MAD of the lag-k differences ``x[k:] - x[:-k]`` for every k in ``lags``
    (not yet scaled to an sd): the same numbers as ``np.median`` lag by lag (NaN
    included), with one sort per median over rows instead of a median per lag. The lags
    whose differences have one parity of length share a row width, each row padded with
    as many -inf before its differences as +inf after them, which leaves its median
    (one middle value, or the mean of two) in the middle of the row for all of them."""
    n = x.size
    mads = np.empty(lags.size)
    for parity in (0, 1):
        group = (lags % 2) == parity
        ks = lags[group]
        if not ks.size:
            continue
        width = n - parity                  # n - k differences and k - parity pads
        pads = (ks - parity) // 2           # on each side
        col = np.arange(width)[None, :]
        before, after = col < pads[:, None], col >= width - pads[:, None]
        d = np.full((ks.size, width), np.inf)
        d[before] = -np.inf
        for row, k in enumerate(ks):
            np.subtract(x[k:], x[:-k], out=d[row, pads[row]:width - pads[row]])
        with np.errstate(invalid="ignore"):     # an infinite x: as np.median would
            med = _middle(np.sort(d, axis=1))
            dev = np.where(before, -np.inf, np.where(after, np.inf, np.abs(d - med[:, None])))
            mads[group] = _middle(np.sort(dev, axis=1))
    return mads


def _middle(rows: np.ndarray) -> np.ndarray:
    """The median of each sorted row, as ``np.median`` gives it (NaN, sorted last,
    if the row has one)."""
    w = rows.shape[1]
    mid = rows[:, w // 2] if w % 2 else (rows[:, w // 2 - 1] + rows[:, w // 2]) / 2.0
    return np.where(np.isnan(rows[:, -1]), np.nan, mid)


# points of the variogram fit's grid of rho in [0, cap] (steps of 0.01 at the usual cap
# 0.98), as the method has always searched it
_VARIOGRAM_RHOS = 99


def _fit_variogram(v: np.ndarray, lags: np.ndarray, cap: float, drift: np.ndarray
                   ) -> Tuple[float, float, float]:
    """(squared error, rho, gamma0) of gamma0 (1 - rho^k) + beta ``drift`` fitted to the
    variogram ``v`` by least squares, over a grid of rho in [0, cap], beta >= 0 (where
    beta comes out negative, or gamma0 not positive: gamma0 alone). All rhos of the
    grid at once: ``drift`` is the same column for all, so it is projected out of ``v``
    and of each shape once (Gram-Schmidt on two columns, as least squares by QR does;
    the normal equations would square the condition that the k^2 column worsens)."""
    rhos = np.linspace(0.0, cap, _VARIOGRAM_RHOS)
    shape = 1.0 - rhos[:, None] ** lags[None, :]                 # one row per rho
    alone = (shape @ v) / np.einsum("rk,rk->r", shape, shape)   # gamma0 with beta 0
    gamma0, beta = alone, np.zeros_like(alone)
    drift_norm2 = float(drift @ drift)
    if drift_norm2 > 0:
        unit = drift / np.sqrt(drift_norm2)
        v_rest = v - unit * float(unit @ v)
        along = shape @ unit
        shape_rest = shape - along[:, None] * unit[None, :]
        with np.errstate(divide="ignore", invalid="ignore"):
            g = (shape_rest @ v_rest) / np.einsum("rk,rk->r", shape_rest, shape_rest)
            b = (float(unit @ v) - g * along) / np.sqrt(drift_norm2)
        both = (b >= 0) & (g > 0)
        gamma0, beta = np.where(both, g, alone), np.where(both, b, 0.0)
    resid = v[None, :] - gamma0[:, None] * shape - beta[:, None] * drift[None, :]
    err = np.einsum("rk,rk->r", resid, resid)
    err[np.isnan(err)] = np.inf
    k = int(np.argmin(err))             # the first of equals, as a scan with "<" keeps
    if not np.isfinite(err[k]):
        return np.inf, 0.0, float(v[0])
    return float(err[k]), float(rhos[k]), float(gamma0[k])


def max_bridge_pvalue(c, t0, m) -> np.ndarray:
    """Tail probability of the largest two-sample |z| over the splits of a segment of
    ``m`` points whose shortest allowed side is a share ``t0`` of it: the p-value of a
    jump found by searching the splits. The splits are the discrete ones a series has
    (Siegmund's overshoot correction nu of the Brownian-bridge approximation, James,
    James & Siegmund 1987):

        c phi(c) * integral over t in [t0, 1 - t0] of nu(c / sqrt(m t (1-t))) / (t (1-t)) dt

    Checked against 10^5 simulated Gaussian segments of 20, 60 and 200 points (min side
    5): at their simulated p 0.01 and 0.001 it gives 0.0082-0.0098 and 0.00085-0.00096,
    where the continuous bridge (nu = 1) gives 0.015-0.021 and 0.0015-0.0025; the
    largest |z| over the splits of 60 points reaches 4.06 once in 1,000, not 4.24."""
    c_in = np.asarray(c, dtype=float)
    c, t0, m = np.broadcast_arrays(np.atleast_1d(c_in), np.asarray(t0, dtype=float),
                                   np.asarray(m, dtype=float))
    t0 = np.clip(t0, 1e-9, 0.5 - 1e-9)
    phi = np.exp(-0.5 * c * c) / _SQRT_2PI
    # dt / (t (1 - t)) is du over the log-odds u of t; the integrand is symmetric about
    # u = 0, so twice the integral over [u0, 0], by Gauss-Legendre
    u0 = np.log(t0 / (1.0 - t0))
    u = (_GL_NODES + 1.0) / 2.0 * u0[..., None]
    t = 1.0 / (1.0 + np.exp(-u))
    nu = _overshoot(c[..., None] / np.sqrt(m[..., None] * t * (1.0 - t)))
    integral = -u0 * (nu * _GL_WEIGHTS).sum(axis=-1)
    p = c * phi * integral
    # The approximation is for the tail; below c ~ 2.5 the answer is "not significant".
    p = np.where(c < 2.5, 1.0, p)
    return np.clip(np.nan_to_num(p, nan=1.0), 0.0, 1.0).reshape(np.broadcast(c_in, p).shape
                                                               if c_in.ndim else ())


def _overshoot(x: np.ndarray) -> np.ndarray:
    """Siegmund's nu(x) for a Gaussian random walk seen at steps of x boundary units."""
    x = np.maximum(x, 1e-12)
    h = x / 2.0
    cdf = ndtr(h)
    return (2.0 / x) * (cdf - 0.5) / (h * cdf + np.exp(-0.5 * h * h) / _SQRT_2PI)


_GL_NODES, _GL_WEIGHTS = np.polynomial.legendre.leggauss(48)


def winsorize(x: np.ndarray, k: float = 5.0) -> np.ndarray:
    """Clip at median +- k * 1.4826 MAD of the differences (heavy-tailed telemetry: one
    noisy-neighbour minute must not make a segment), around a running median so that
    the clip follows level shifts and trends."""
    x = np.asarray(x, dtype=np.float64)
    if x.size < 5:
        return x
    d = np.diff(x)
    scale = 1.4826 * np.median(np.abs(d - np.median(d))) / np.sqrt(2.0)
    if scale <= 0:
        return x
    pad = np.r_[x[:1], x[:1], x, x[-1:], x[-1:]]
    local = np.median(np.lib.stride_tricks.sliding_window_view(pad, 5), axis=1)
    return np.clip(x, local - k * scale, local + k * scale)


def fill_missing(x: np.ndarray) -> np.ndarray:
    """Carry the last value forward (and the first one back) over missing points."""
    x = np.asarray(x, dtype=np.float64)
    mask = np.isnan(x)
    if not mask.any():
        return x
    if mask.all():
        return np.zeros_like(x)
    idx = np.where(~mask, np.arange(x.size), 0)
    np.maximum.accumulate(idx, out=idx)
    out = x[idx]
    first = np.flatnonzero(~mask)[0]
    out[:first] = x[first]
    return out


# --- the null model: a smooth baseline ----------------------------------------------

@dataclass(frozen=True)
class Baseline:
    """The smooth part of a series that is not a level shift: a straight line plus
    ``harmonics`` Fourier terms of ``period`` points (``terms`` 1: the line alone;
    0: nothing, ``values`` is zero)."""
    values: np.ndarray
    period: float
    harmonics: int
    terms: int                  # fitted parameters beside the level
    rss: float = float("nan")   # residual sum of squares beside the steps it was fitted with

    @classmethod
    def none(cls, n: int) -> "Baseline":
        return cls(np.zeros(n), 0.0, 0, 0)

    def columns(self) -> List[np.ndarray]:
        return _smooth_columns(self.values.size, self.period, self.harmonics) if self.terms else []


def _smooth_columns(n: int, period: float, harmonics: int) -> List[np.ndarray]:
    """A centred line and ``harmonics`` cosine/sine pairs of ``period`` points."""
    return list(_smooth_design(n, np.array([period]), harmonics)[0])


def _smooth_design(n: int, periods: np.ndarray, harmonics: int) -> np.ndarray:
    """The columns of ``_smooth_columns`` for each of ``periods`` at once: an array
    (period, column, point)."""
    t = np.arange(n, dtype=np.float64)
    out = np.empty((periods.size, 1 + 2 * harmonics, n))
    out[:, 0] = (t - (n - 1) / 2.0) / n
    if harmonics:
        angle = 2.0 * np.pi * t[None, :] / periods[:, None]
        unit = np.empty(angle.shape, dtype=np.complex128)
        unit.real, unit.imag = np.cos(angle), np.sin(angle)
        wave = unit
        for h in range(harmonics):
            out[:, 1 + 2 * h], out[:, 2 + 2 * h] = wave.real, wave.imag
            wave = wave * unit
    return out


class SmoothBaseline:
    """``SmoothBaseline().fit(x, sd, steps)``: the smooth model the null hypothesis of
    "no level shift" is made of, chosen by a penalised criterion.

    Candidates: nothing; a line; a line plus 1..``max_harmonics`` Fourier terms at each
    of the ``peaks`` strongest periods of the periodogram of what a line and the
    ``steps`` leave (zero-padded 8x: periods from 2 n down to ``min_period`` points, so a
    daily cycle is found whatever the sampling interval, and a curve longer than the
    series is part of a period), each period refined on the full model. Each candidate
    is fitted by least squares *together with a level step at every index of*
    ``steps``, so a shift is not absorbed into the smooth terms, and costs ``penalty``
    log(n) long-run noise variances per parameter (PELT's price of a change point):
    what a regressor of low frequency takes from noise is chi-square in long-run
    variance units, whatever the autocorrelation. The smallest residual sum of squares
    plus penalty wins."""

    def __init__(self, penalty: float = 2.0, max_harmonics: int = 6, min_period: int = 16,
                 peaks: int = 3):
        self.penalty = penalty
        self.max_harmonics = max_harmonics
        self.min_period = min_period
        self.peaks = peaks

    def fit(self, x: np.ndarray, sd: float, steps: Sequence[int] = (),
            near: Optional[float] = None) -> Baseline:
        """The best baseline beside ``steps``; ``near``: a period found before, searched
        only within +-3% of it (the periodogram is not consulted)."""
        x = np.asarray(x, dtype=np.float64)
        n = x.size
        if n < 4 * self.min_period or not sd > 0:
            return Baseline.none(n)
        price = self.penalty * np.log(n) * sd * sd
        # every candidate is fitted beside the level and the steps: both are projected
        # out first (Frisch-Waugh-Lovell; projecting on a level per segment is taking
        # each segment's mean), a candidate's own columns then cost a k x k solve
        starts = np.array([0] + sorted(set(int(c) for c in steps if 0 < c < n)))
        rest = _less_segment_means(x, starts)
        base_rss = float(rest @ rest)

        lengths = np.diff(np.r_[starts, n])

        def normal(periods: Sequence[float], harmonics: int
                   ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
            """(columns, Gram matrices, products with ``rest``) of the smooth model at
            each of ``periods`` less its segment means, stacked: one call for a grid of
            periods. Less the means, the Gram matrix is C C' less each segment's sums'
            outer product over its length, and the products with ``rest`` (whose
            segment means are zero) are C rest: the columns are not centred one by one."""
            C = _smooth_design(n, np.asarray(periods, dtype=np.float64), harmonics)
            sums = np.add.reduceat(C, starts, axis=-1)
            G = C @ C.transpose(0, 2, 1) - (sums / lengths) @ sums.transpose(0, 2, 1)
            return C, G, C @ rest

        def rss(G: np.ndarray, g: np.ndarray, k: int) -> Tuple[float, np.ndarray]:
            """Residual sum of squares and coefficients of the first k columns."""
            try:
                coef = np.linalg.solve(G[:k, :k], g[:k])
            except np.linalg.LinAlgError:
                coef = np.linalg.lstsq(G[:k, :k], g[:k], rcond=None)[0]
            return max(base_rss - float(g[:k] @ coef), 0.0), coef

        def nested_rss(G: np.ndarray, g: np.ndarray) -> np.ndarray:
            """The residual sum of squares of the first k columns, for every k, from
            one Cholesky factor L of G: the first k rows of L are the factor of the
            first k columns, and what those explain is the sum of the first k squares
            of L^-1 g."""
            try:
                w = solve_triangular(np.linalg.cholesky(G), g, lower=True)
            except np.linalg.LinAlgError:
                return np.array([rss(G, g, k)[0] for k in range(1, g.size + 1)])
            return np.maximum(base_rss - np.cumsum(w * w), 0.0)

        # each period's model as evaluated, (columns, Gram matrix, products with
        # ``rest``): the period chosen is not fitted again
        models: Dict[float, Tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

        def errs_at(periods: Sequence[float], harmonics: int) -> np.ndarray:
            """The residual sum of squares at each of ``periods`` (one batched solve)."""
            C, G, g = normal(periods, harmonics)
            models.update((float(p), (C[i], G[i], g[i])) for i, p in enumerate(periods))
            try:
                coef = np.linalg.solve(G, g[:, :, None])[:, :, 0]
            except np.linalg.LinAlgError:       # a singular one: each on its own
                return np.array([rss(G[i], g[i], G.shape[1])[0] for i in range(len(G))])
            return np.maximum(base_rss - np.einsum("pk,pk->p", g, coef), 0.0)

        best_crit, best = base_rss, Baseline(np.zeros(n), 0.0, 0, 0, base_rss)
        C, G, g = normal([1.0], 0)
        err, coef = rss(G[0], g[0], 1)
        if err + price < best_crit:
            best_crit, best = err + price, Baseline(coef @ C[0], 0.0, 0, 1, err)
        peaks = [near] if near else self._periods(rest)
        tops = [max(1, min(self.max_harmonics, int(peak / (self.min_period / 2.0))))
                for peak in peaks]
        far = [False] * len(peaks)
        if peaks and not near:
            # a peak far from paying for one harmonic is not refined (the peaks in one
            # call, each with its own number of harmonics)
            _C, G, g = normal(peaks, max(tops))
            far = [base_rss - rss(G[i], g[i], 1 + 2 * top)[0] < 1.5 * price
                   for i, top in enumerate(tops)]
        for peak, top, skip in zip(peaks, tops, far):
            if skip:
                continue
            models.clear()
            # the periodogram's peak is biased by the steps and the other harmonics:
            # refined on the full model, within +-12% and then +-3%, then at the vertex
            # of a parabola through the best and its neighbours (a large cycle needs its
            # period to a fraction of a percent, or a step stands in for its drifting
            # phase)
            period = peak
            for width in ((0.03,) if near else (0.12, 0.03)):
                grid = period * (1.0 + np.linspace(-width, width, 7))
                errs = errs_at(grid, top)
                k = int(np.argmin(errs))
                period = float(grid[k])
            step, e1 = float(grid[1] - grid[0]), float(errs[k])
            e0, e2 = (errs[k - 1], errs[k + 1]) if 0 < k < 6 else (np.inf, np.inf)
            for _ in range(3):
                curve = e0 - 2.0 * e1 + e2
                if not (np.isfinite(curve) and curve > 0):
                    break
                vertex = float(period + 0.5 * (e0 - e2) / curve * step)
                ev = float(errs_at([vertex], top)[0])
                if ev < e1:
                    period, e1 = vertex, ev
                # a sharp minimum is not a parabola over the whole grid step: again,
                # four times closer
                step /= 4.0
                e0, e2 = errs_at([period - step, period + step], top)
            C, G, g = models[period]
            errs = nested_rss(G, g)
            chosen = 0
            for h in range(1, top + 1):
                crit = errs[2 * h] + price * (1 + 2 * h)
                if crit < best_crit:
                    best_crit, chosen = crit, h
            if chosen:
                k = 1 + 2 * chosen
                _err, coef = rss(G, g, k)
                best = Baseline(coef @ C[:k], period, chosen, k, float(errs[k - 1]))
        return best

    @staticmethod
    def step_gains(x: np.ndarray, baseline: Baseline, steps: Sequence[int], min_size: int
                   ) -> Tuple[np.ndarray, np.ndarray]:
        """(t, the residual sum of squares a level step at t takes beside the
        baseline's smooth terms and ``steps``) for every t ``min_size`` from the ends."""
        n = x.size
        ts = np.arange(min_size, n - min_size + 1)
        A = np.column_stack([_step_columns(n, steps)] + baseline.columns())
        Q, _r = np.linalg.qr(A)
        r = x - Q @ (Q.T @ x)
        # a step at t less its projection on the model: its product with the residual
        # is the residual's sum from t, its squared norm (n - t) less the squared norm
        # of the model's orthonormal columns summed from t
        tail_r = np.cumsum(r[::-1])[::-1][ts]
        tail_q = np.cumsum(Q[::-1], axis=0)[::-1][ts]
        norm = (n - ts) - np.sum(tail_q * tail_q, axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            gain = np.where(norm > 1e-9, tail_r * tail_r / norm, 0.0)
        for c in steps:
            gain[np.abs(ts - c) < min_size] = 0.0
        return ts, gain

    def steps(self, x: np.ndarray, baseline: Baseline, pen: float, min_size: int,
              first: Optional[int] = None, most: int = 10) -> List[int]:
        """Level steps added one at a time (after ``first``, if given), each where it
        explains most beside the baseline's smooth terms and the steps before it, while
        it explains more than ``pen``: the shifts a smooth fit alone has partly taken up."""
        out: List[int] = [] if first is None else [int(first)]
        while len(out) < most:
            ts, gain = self.step_gains(x, baseline, out, min_size)
            k = int(np.argmax(gain))
            if gain[k] <= pen:
                break
            out.append(int(ts[k]))
        return sorted(out)

    def first_steps(self, x: np.ndarray, baseline: Baseline, min_size: int,
                    count: int = 3) -> List[int]:
        """The ``count`` best places for one step beside the baseline (local maxima of
        the gain at least 2 ``min_size`` apart), significant or not: where a step and
        the smooth terms trade off, each is a start of its own."""
        ts, gain = self.step_gains(x, baseline, [], min_size)
        out: List[int] = []
        for k in np.argsort(gain)[::-1]:
            if len(out) == count or gain[k] <= 0:
                break
            if all(abs(int(ts[k]) - c) >= 2 * min_size for c in out):
                out.append(int(ts[k]))
        return out

    def _periods(self, rest: np.ndarray) -> List[float]:
        """The ``peaks`` periods (points) of the largest local maxima of the
        periodogram of ``rest`` (what the level and the steps leave) less a line."""
        n = rest.size
        t = np.arange(n, dtype=np.float64) - (n - 1) / 2.0
        detrended = rest - t * float(t @ rest) / float(t @ t)
        power = np.abs(np.fft.rfft(detrended, 8 * n)) ** 2
        cycles = np.arange(power.size) / 8.0            # cycles per n points
        ok = (cycles >= 0.5) & (cycles <= n / self.min_period)
        inner = np.zeros(power.size, dtype=bool)
        inner[1:-1] = (power[1:-1] >= power[:-2]) & (power[1:-1] >= power[2:])
        idx = np.flatnonzero(ok & inner)
        top = idx[np.argsort(power[idx])[::-1][:self.peaks]]
        return [n / cycles[i] for i in top]


def _less_segment_means(v: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """``v`` (a vector, or an array of them along its last axis) less its mean over
    each segment beginning at ``starts``."""
    lengths = np.diff(np.r_[starts, v.shape[-1]])
    means = np.add.reduceat(v, starts, axis=-1) / lengths
    return v - np.repeat(means, lengths, axis=-1)


def _step_columns(n: int, steps: Sequence[int]) -> np.ndarray:
    """The level and a unit step at each of ``steps``."""
    t = np.arange(n)
    return np.column_stack([np.ones(n)] + [(t >= c).astype(np.float64) for c in steps])


# --- the default detector ----------------------------------------------------------

class LevelShifts:
    """The default change-point method: ``LevelShifts().fit_predict(series)``.

    ``max_pvalue``: significance of each reported jump (maximum over the splits of its
    neighbourhood, in long-run noise units). ``min_size``: shortest segment, points.
    ``min_shift``: smallest jump worth reporting, in the series' units (a fleet median
    over thousands of hosts makes a 0.5% drift "significant"). ``cost``: the segment
    model of the search (``CostL2``; ``CostLinear`` for trending segments).
    ``penalty``: PELT's penalty per change point in units of the long-run noise
    variance times log(n); candidates it finds must still pass the checks.
    ``baseline``: the smooth null model (``SmoothBaseline``; None: a constant, the
    search on the series itself).

    Cost: O(n) per point searched while PELT prunes (change points present), up to
    O(n^2) elementary operations on a series without any; where a smooth baseline pays,
    PELT runs two or three times and the baseline is fitted about ten times, each fit a
    few dozen k x k least-squares problems (the steps enter through their segment sums,
    a grid of periods is one batched solve). Side by side with the method without a
    baseline (``--timing`` in the benchmark): see the results.
    """

    def __init__(self, max_pvalue: float = 0.001, min_size: int = 5, min_shift: float = 0.0,
                 cost=None, penalty: float = 2.0, winsorize_k: Optional[float] = 5.0,
                 local_points: int = 60, baseline: Optional[SmoothBaseline] = SmoothBaseline()):
        if min_size < 2:
            raise InputError(f"min_size: must be >= 2 points, got {min_size}")
        if not 0 < max_pvalue < 1:
            raise InputError(f"max_pvalue: must be in (0, 1), got {max_pvalue}")
        self.max_pvalue = max_pvalue
        self.min_size = min_size
        self.min_shift = min_shift
        self.cost = cost
        self.penalty = penalty
        self.winsorize_k = winsorize_k
        self.local_points = local_points
        self.baseline = baseline

    def fit_predict(self, series: Sequence[float]) -> List[ChangePoint]:
        x = fill_missing(np.asarray(series, dtype=np.float64))
        n = x.size
        if n < 2 * self.min_size:
            return []
        if self.winsorize_k:
            x = winsorize(x, self.winsorize_k)
        sigma, rho = noise_scale(x)
        if not sigma > 0:
            return []               # constant: no change point
        cost = self.cost if self.cost is not None else CostL2()
        search = Pelt(cost, self.min_size)
        baseline = Baseline.none(n)
        smooth = self.baseline.fit(x, sigma) if self.baseline else baseline
        if self.baseline and not smooth.terms:
            # The variogram of a series with a strong cycle can read it as slowly
            # forgetting noise (a long-run sd ten times the truth), which prices every
            # smooth term out. So also: a baseline priced in the point-to-point sd (which
            # a smooth signal hardly touches), then again in the long-run sd of what it
            # leaves. Taken only for a wave seen at least twice (the series itself cannot
            # tell a slower one from an autocorrelated wander: AR(1) 0.9 of 200 points
            # then showed shifts in 5 of 20 series) that takes at least half of the long-run
            # sd with it (a wave of 30 points fitted to AR(1) 0.5 noise takes a quarter,
            # and left shifts in 2 of 30 series of 200 points).
            d = np.diff(x)
            point_sd = 1.4826 * float(np.median(np.abs(d - np.median(d)))) / np.sqrt(2.0)
            trial = self.baseline.fit(x, point_sd)
            if trial.harmonics and trial.period <= 0.55 * n:
                left = noise_scale(x - trial.values)[0]
                if left < 0.5 * sigma:
                    trial = self.baseline.fit(x, left)
                    if trial.harmonics and trial.period <= 0.55 * n:
                        smooth = trial
        if not smooth.harmonics:
            # nothing cyclic pays for itself: the search on the series itself, whose
            # checks already tell a trend from a staircase (taking the line off first
            # lost that and showed shifts on 1 in 200 linear trends)
            pen = self.penalty * sigma * sigma * np.log(max(n, 3))
            return self._check(x, search.fit(x).predict(pen), NoiseScale.of(sigma, rho, n),
                               np.zeros(n))
        plain = (sigma, rho)
        sigma, rho = noise_scale(x - smooth.values)
        pen = self.penalty * sigma * sigma * np.log(max(n, 3))
        cand = search.fit(x).predict(pen)
        # Starts, each a baseline refitted beside a set of steps: the level shifts of
        # the series itself (which keeps a lone step from being taken up by a line or
        # a long wave), and the steps the smooth fit leaves unexplained, added one at
        # a time after nothing or after each of the best places for one step (where a
        # step and the smooth terms trade off, a step and a wave can fit about
        # equally well in two places). The best by the penalised criterion is then
        # backfitted: segment what the baseline leaves, refit the baseline with a
        # step at every candidate, until it holds still.
        step_sets = [cand, []]
        for first in [None] + self.baseline.first_steps(x, smooth, self.min_size):
            steps = self.baseline.steps(x, smooth, pen, self.min_size, first)
            if steps not in step_sets:
                step_sets.append(steps)
        starts = [(self.baseline.fit(x, sigma, st, near=smooth.period), st)
                  for st in step_sets]
        baseline, steps = min(starts, key=lambda s: s[0].rss + pen * (s[0].terms + len(s[1])))
        baseline, cand = self._backfit(x, baseline, cand if steps is cand else None,
                                       search, sigma, pen)
        beside: Dict[int, float] = {}
        if baseline.terms:
            sigma, rho = self._residual_noise(x, baseline, cand)
            kept, beside = self._beside_baseline(x, baseline.period, self._check(
                x - baseline.values, cand, NoiseScale.of(sigma, rho, n), baseline.values),
                NoiseScale.of(sigma, rho, n))
            if kept != cand:
                cand = kept
                baseline = self.baseline.fit(x, sigma, cand, near=baseline.period)
                if baseline.terms:
                    sigma, rho = self._residual_noise(x, baseline, cand)
        if not baseline.harmonics:
            # the steps explain what looked cyclic: the search on the series itself,
            # in its own noise scale
            sigma, rho = plain
            pen = self.penalty * sigma * sigma * np.log(max(n, 3))
            return self._check(x, search.fit(x).predict(pen), NoiseScale.of(sigma, rho, n),
                               np.zeros(n))
        # A change point's p is that of the weakest test it passed: its level shift in
        # what the baseline leaves, and its step beside the baseline refitted without it
        # (the first alone read 5e-15 for a step whose second test gave 0.0006).
        return [replace(cp, p_value=max(cp.p_value, beside.get(cp.index, 0.0)))
                for cp in self._check(x - baseline.values, cand, NoiseScale.of(sigma, rho, n),
                                      baseline.values)]

    @staticmethod
    def _residual_noise(x: np.ndarray, baseline: Baseline, cand: List[int]) -> Tuple[float, float]:
        """The noise scale of what the baseline and the candidates' levels leave: where
        the smooth model misses a little (a period 2% off over two cycles), the misfit
        and the steps would otherwise read as slowly forgetting noise at the long lags
        of the variogram."""
        starts = np.array([0] + list(cand))
        return noise_scale(_less_segment_means(x - baseline.values, starts))

    def _beside_baseline(self, x: np.ndarray, period: float, found: List[ChangePoint],
                         noise: "NoiseScale") -> Tuple[List[int], Dict[int, float]]:
        """The change points that explain the series better than the smooth baseline
        does without them: each one's step is dropped, the baseline refitted (its terms
        chosen again, its period within +-3% of ``period``: a step and a slightly wrong
        period can stand in for each other), and the residual sum of squares it gains read as a squared z, with the
        maximum over the splits between its neighbours; the weakest failing is removed
        until all hold. The sums of squares carry the baseline's penalty for its terms:
        where the baseline needs more terms to stand in for the step, it pays for them.
        Returns the steps kept and each one's p in this test.
        """
        price = self.baseline.penalty * np.log(x.size) * noise.sd ** 2

        def criterion(steps: List[int]) -> float:
            fit = self.baseline.fit(x, noise.sd, steps, near=period)
            return fit.rss + price * fit.terms

        steps = [c.index for c in found]
        pvalues: Dict[int, float] = {}
        while steps:
            full = criterion(steps)
            bounds = [0] + steps + [x.size]
            scores = []
            pvalues = {}
            for i, t in enumerate(steps):
                gained = criterion(steps[:i] + steps[i + 1:]) - full
                z = np.sqrt(max(gained, 0.0)) / noise.sd
                span = bounds[i + 2] - bounds[i]
                p = float(max_bridge_pvalue(noise.gaussian(z), self.min_size / span, span))
                pvalues[t] = p
                scores.append(np.log(self.max_pvalue / max(p, 1e-300)))
            worst = int(np.argmin(scores))
            if scores[worst] >= 0:
                break
            del steps[worst]
        return steps, pvalues

    def _backfit(self, x: np.ndarray, baseline: Baseline, cand: Optional[List[int]],
                 search: Pelt, sigma: float, pen: float) -> Tuple[Baseline, List[int]]:
        """Segment what the baseline leaves and refit the baseline with a step at every
        candidate, until the baseline holds still: (baseline, candidates). ``cand``:
        the segmentation of what ``baseline`` leaves, if known."""
        for _ in range(4):
            if cand is None or baseline.terms:
                cand = search.fit(x - baseline.values).predict(pen)
            refit = self.baseline.fit(x, sigma, cand, near=baseline.period)
            if refit.terms == baseline.terms and refit.period == baseline.period:
                break
            baseline = refit
            cand = None
        if cand is None:
            cand = search.fit(x - baseline.values).predict(pen)
        return baseline, cand

    def _check(self, x: np.ndarray, cand: List[int], noise: "NoiseScale",
               baseline: np.ndarray) -> List[ChangePoint]:
        s1 = np.concatenate([[0.0], np.cumsum(x)])
        l2 = CostL2().fit(x)
        line = CostLinear().fit(x)
        def step(a, t, b):
            return min(self._level(s1, a, t, b, noise), self._two_levels(l2, line, a, t, b, noise))
        level = self._eliminate(x, list(cand), step)
        smooth = bool(level) and self._smooth(x, l2, line, level, noise)
        if smooth:
            # the series trends or curves: only a jump that a local line on each side
            # does not explain is a level shift
            level = self._eliminate(x, list(cand), lambda a, t, b: min(
                self._level(s1, a, t, b, noise), self._local_jump(x, a, t, b, noise)))
        bounds = [0] + level + [x.size]
        out = []
        for i in range(1, len(bounds) - 1):
            a, t, b = bounds[i - 1], bounds[i], bounds[i + 1]
            p = self._level_p(s1, a, t, b, noise)
            if smooth:      # the levels either side of the jump, not of a whole cycle
                before, after, _z = self._local_lines(x, a, t, b, noise)
            else:
                before, after = (s1[t] - s1[a]) / (t - a), (s1[b] - s1[t]) / (b - t)
            out.append(ChangePoint(t, p, float(before + baseline[t]), float(after + baseline[t])))
        return out

    @staticmethod
    def _eliminate(x: np.ndarray, cand: List[int], margin) -> List[int]:
        """Remove the candidate with the most negative ``margin(a, t, b)`` (t between
        its neighbours a and b) until none is negative. A removal changes only its
        neighbours' margins: the others are kept from the round before."""
        margins: Dict[Tuple[int, int, int], float] = {}
        while cand:
            bounds = [0] + cand + [x.size]
            for abc in zip(bounds, bounds[1:], bounds[2:]):
                if abc not in margins:
                    margins[abc] = margin(*abc)
            scores = [margins[abc] for abc in zip(bounds, bounds[1:], bounds[2:])]
            worst = int(np.argmin(scores))
            if scores[worst] >= 0:
                break
            del cand[worst]
        return cand

    def _level_p(self, s1: np.ndarray, a: int, t: int, b: int, noise: "NoiseScale") -> float:
        nl, nr = t - a, b - t
        diff = (s1[b] - s1[t]) / nr - (s1[t] - s1[a]) / nl
        z = abs(diff) / (noise.sd * np.sqrt(1.0 / nl + 1.0 / nr))
        return float(max_bridge_pvalue(noise.gaussian(z), self.min_size / (b - a), b - a))

    def _level(self, s1: np.ndarray, a: int, t: int, b: int, noise: "NoiseScale") -> float:
        """Log of max_pvalue / p of the jump between the neighbouring segments' means
        (negative: not significant), or negative if smaller than ``min_shift``."""
        diff = (s1[b] - s1[t]) / (b - t) - (s1[t] - s1[a]) / (t - a)
        if abs(diff) < self.min_shift:
            return -1e-9
        return float(np.log(self.max_pvalue / max(self._level_p(s1, a, t, b, noise), 1e-300)))

    @staticmethod
    def _two_levels(l2: CostL2, line: CostLinear, a: int, t: int, b: int, noise: "NoiseScale") -> float:
        """How much better two levels (split at t) fit [a, b) than one straight line,
        in long-run noise variances (negative: the line fits better, a trend)."""
        return float((line.error(a, b) - l2.error(a, t) - l2.error(t, b)) / (noise.sd ** 2))

    def _smooth(self, x: np.ndarray, l2: CostL2, line: CostLinear, cand: List[int],
                noise: "NoiseScale") -> bool:
        """Whether the series between the candidates trends or curves: the variance a
        line per segment explains beyond its mean is significant (chi-square, one
        degree of freedom per segment, in long-run noise units), or a staircase of at
        least three candidates most of whose jumps vanish once each side's local line
        is extrapolated (a cycle cut into short flat segments)."""
        from scipy.stats import chi2
        bounds = [0] + cand + [x.size]
        gain = sum(l2.error(a, b) - line.error(a, b) for a, b in zip(bounds, bounds[1:]))
        if float(chi2.sf(gain / (noise.sd ** 2), len(bounds) - 1)) <= self.max_pvalue:
            return True
        if len(cand) < 3:
            return False
        vanish = sum(self._local_jump(x, a, t, b, noise) < 0
                     for a, t, b in zip(bounds, bounds[1:], bounds[2:]))
        return vanish > len(cand) / 2

    def _local_jump(self, x: np.ndarray, a: int, t: int, b: int, noise: "NoiseScale") -> float:
        """Log of max_pvalue / p of the jump at ``t`` between a line fitted to the
        points before it and one fitted to the points after it, each at most
        ``local_points`` long and within the neighbours: a trend or a slow cycle
        continues through t and leaves no jump, a level shift does."""
        h = min(t - a, b - t, max(self.local_points, 2 * self.min_size))
        if h < 3:
            return -1.0
        _before, _after, z = self._local_lines(x, a, t, b, noise)
        p = float(max_bridge_pvalue(noise.gaussian(z), self.min_size / (2.0 * h), 2 * h))
        return float(np.log(self.max_pvalue / max(p, 1e-300)))

    def _local_lines(self, x: np.ndarray, a: int, t: int, b: int, noise: "NoiseScale"
                     ) -> Tuple[float, float, float]:
        """(left line's value at t, right line's value at t, z of their difference)."""
        h = min(t - a, b - t, max(self.local_points, 2 * self.min_size))
        if h < 2:
            return float(x[t - 1]), float(x[t]), 0.0
        u = np.arange(h, dtype=np.float64)
        left = np.polyfit(u, x[t - h:t], 1)
        right = np.polyfit(u, x[t:t + h], 1)
        before, after = left[1] + left[0] * h, right[1]
        # the variance of a least-squares line's value one step past its end, and at
        # its start, per unit noise variance
        su = h * (h - 1) / 2.0
        suu = (h - 1) * h * (2 * h - 1) / 6.0
        det = h * suu - su * su
        var = (suu - 2 * h * su + h * h * h) / det + suu / det
        return float(before), float(after), float(abs(after - before) / (noise.sd * np.sqrt(var)))
