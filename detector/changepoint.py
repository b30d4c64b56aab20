"""Change points in fleet series, with significance tests. Two methods:

- ``Mosum`` (used by the detector): moving-sum two-sample statistic with the Gumbel
  limit of its maximum; local, so a sharp step stands out of a diurnal cycle, and
  streaming (``IncrementalMosum``) and vectorised over many series (``detect_many``).
- ``BinarySegmentation``: binary segmentation on the standardized CUSUM (two-sample t
  statistic at every split) with a Brownian-bridge p-value; global, the more powerful
  on series without a daily cycle (hourly means, de-seasonalised contrasts).

About the second:

Why this test: the maximum over split points of a t statistic is not t-distributed
(otava sidesteps that with a strict max_pvalue; permutations cost too much at fleet
scale). Under no change, the standardized two-sample statistic across splits behaves
like a standardized Brownian bridge, whose maximum over ``[t0, t1]`` has the tail
approximation (James, James & Siegmund 1987)

    P(max |Z| > c) ~= c phi(c) (1 - 1/c^2) log(t1 (1 - t0) / (t0 (1 - t1))) + 4 phi(c) / c

Telemetry windows are autocorrelated (load drifts slowly), so the statistic is deflated
by the AR(1) long-run variance factor (1 + rho) / (1 - rho) estimated from the residuals
around the split; heavy tails are tamed by winsorizing at 5 MADs. Everything is O(n) per
split and vectorises over many series at once (``scan_many``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np

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


def max_bridge_pvalue(c: np.ndarray, t0: np.ndarray) -> np.ndarray:
    """Tail probability of the maximum of |standardized Brownian bridge| over [t0, 1-t0]."""
    c = np.asarray(c, dtype=float)
    t0 = np.clip(np.asarray(t0, dtype=float), 1e-9, 0.5 - 1e-9)
    t1 = 1.0 - t0
    phi = np.exp(-0.5 * c * c) / _SQRT_2PI
    span = np.log(t1 * (1.0 - t0) / (t0 * (1.0 - t1)))
    with np.errstate(divide="ignore", invalid="ignore"):
        p = c * phi * (1.0 - 1.0 / (c * c)) * span + 4.0 * phi / c
    # The approximation is for the tail; below c ~ 2.5 the answer is "not significant".
    p = np.where(c < 2.5, 1.0, p)
    return np.clip(np.nan_to_num(p, nan=1.0), 0.0, 1.0)


def winsorize(X: np.ndarray, k: float = 5.0) -> np.ndarray:
    """Clip each row at median +- k * 1.4826 MAD (heavy-tailed telemetry: one noisy
    neighbour must not create a change point)."""
    med = np.nanmedian(X, axis=-1, keepdims=True)
    mad = np.nanmedian(np.abs(X - med), axis=-1, keepdims=True) * 1.4826
    mad = np.where(mad > 0, mad, np.nanstd(X, axis=-1, keepdims=True) + 1e-12)
    return np.clip(X, med - k * mad, med + k * mad)


def scan_many(X: np.ndarray, min_segment: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Best single split of every row of ``X`` (series x time, no NaN).

    Returns (split index, p-value, t statistic after the autocorrelation correction).
    """
    X = np.asarray(X, dtype=np.float64)
    S, n = X.shape
    if n < 2 * min_segment:
        return np.zeros(S, dtype=np.int64), np.ones(S), np.zeros(S)
    c1 = np.cumsum(X, axis=1)
    c2 = np.cumsum(X * X, axis=1)
    m = min_segment
    tot1 = c1[:, -1:]
    tot2 = c2[:, -1:]
    left1 = c1[:, m - 1:n - m]                             # left part sizes m .. n-m
    nl = np.arange(m, n - m + 1, dtype=np.float64)[None, :]
    nr = n - nl
    # t^2 = (diff of means)^2 / (pooled var * (1/nl + 1/nr)); pooled SSQ = total SSQ -
    # between-groups SSQ, and the between part is nl*nr/n * diff^2.
    diff = (tot1 - left1) / nr - left1 / nl
    between = diff * diff * (nl * nr / n)
    total_ssq = tot2 - tot1 * tot1 / n
    t2 = between * (n - 2) / np.maximum(total_ssq - between, 1e-18 * np.maximum(total_ssq, 1e-300))
    best = np.argmax(t2, axis=1)
    rows = np.arange(S)
    split = best + m
    nlb = split.astype(np.float64)
    mean_l = c1[rows, split - 1] / nlb
    mean_r = (tot1[:, 0] - c1[rows, split - 1]) / (n - nlb)
    t_best = np.sqrt(t2[rows, best])
    # lag-1 autocorrelation of the residuals around the two segment means
    idx = np.arange(n)[None, :]
    resid = X - np.where(idx < split[:, None], mean_l[:, None], mean_r[:, None])
    num = np.einsum("ij,ij->i", resid[:, 1:], resid[:, :-1])
    den = np.einsum("ij,ij->i", resid, resid) + 1e-18
    rho = np.clip(num / den, 0.0, 0.95)
    c = t_best * np.sqrt((1.0 - rho) / (1.0 + rho))
    p = max_bridge_pvalue(c, np.full(S, m / n))
    # A constant series has no change point.
    p = np.where(total_ssq[:, 0] <= 1e-18, 1.0, p)
    return split, p, c


class BinarySegmentation:
    """``BinarySegmentation(max_pvalue=0.001, min_segment=10).fit_predict(series)``."""

    def __init__(self, max_pvalue: float = 0.001, min_segment: int = 10,
                 max_change_points: int = 20, winsorize_k: Optional[float] = 5.0,
                 min_shift: float = 0.0):
        if min_segment < 2:
            raise ValueError(f"min_segment: must be >= 2, got {min_segment}")
        self.max_pvalue = max_pvalue
        self.min_segment = min_segment
        self.max_change_points = max_change_points
        self.winsorize_k = winsorize_k
        # smallest level shift worth reporting (otava's min_magnitude): a fleet median
        # over thousands of hosts makes a 0.5% diurnal drift "significant"
        self.min_shift = min_shift

    def fit_predict(self, series) -> List[ChangePoint]:
        x = np.asarray(series, dtype=np.float64)
        x = _fill_missing(x)
        if x.size < 2 * self.min_segment:
            return []
        if self.winsorize_k:
            x = winsorize(x[None, :], self.winsorize_k)[0]
        found: List[ChangePoint] = []
        stack = [(0, x.size)]
        while stack and len(found) < self.max_change_points:
            a, b = stack.pop()
            if b - a < 2 * self.min_segment:
                continue
            split, p, _c = scan_many(x[None, a:b], self.min_segment)
            if p[0] > self.max_pvalue:
                continue
            cp = a + int(split[0])
            if abs(np.mean(x[cp:b]) - np.mean(x[a:cp])) < self.min_shift:
                continue
            found.append(ChangePoint(cp, float(p[0]), float(np.mean(x[a:cp])),
                                     float(np.mean(x[cp:b]))))
            stack.append((a, cp))
            stack.append((cp, b))
        found.sort(key=lambda c: c.index)
        return self._recompute_means(x, found)

    def _recompute_means(self, x: np.ndarray, cps: List[ChangePoint]) -> List[ChangePoint]:
        bounds = [0] + [c.index for c in cps] + [x.size]
        out = []
        for i, c in enumerate(cps):
            out.append(ChangePoint(c.index, c.p_value, float(np.mean(x[bounds[i]:c.index])),
                                   float(np.mean(x[c.index:bounds[i + 2]]))))
        return out


def _fill_missing(x: np.ndarray) -> np.ndarray:
    """Carry the last value forward (and the first one back) over missing windows."""
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


def _robust_parts(X: np.ndarray, bandwidth: int, clip_k: float = 4.0
                  ) -> Tuple[np.ndarray, np.ndarray]:
    """(X with outliers clipped, long-run noise sd) for every row, from one pass of
    residuals around a centred moving mean of +-bandwidth (robust to level shifts and to
    slow trends such as the diurnal load):

    - points further than ``clip_k`` MADs from their moving mean are clipped to it: one
      stall storm or noisy-neighbour minute must not move a window mean, a level shift
      moves all of them and survives;
    - the noise sd is the sd of the clipped residuals (the MAD understates the spread of
      heavy-tailed noise, ~30% for Student-t(4)), inflated by the AR(1) long-run variance
      factor (1 + rho) / (1 - rho)."""
    S, n = X.shape
    w = 2 * bandwidth + 1
    if n < w + 2:
        sd = np.std(X, axis=1) + 1e-12
        return X, sd
    c = np.cumsum(X, axis=1)
    inner = np.empty((S, n - w + 1))
    inner[:, 0] = c[:, w - 1]
    inner[:, 1:] = c[:, w:] - c[:, :-w]
    inner /= w
    local = np.empty_like(X)
    local[:, bandwidth:n - bandwidth] = inner
    local[:, :bandwidth] = inner[:, :1]
    local[:, n - bandwidth:] = inner[:, -1:]
    r = X - local
    step = max(1, n // 4096)                  # the MAD from a regular subsample
    sub = r[:, ::step]
    med = np.median(sub, axis=1, keepdims=True)
    mad = np.median(np.abs(sub - med), axis=1, keepdims=True) * 1.4826
    lim = clip_k * np.maximum(mad, 1e-12)
    np.clip(r, -lim, lim, out=r)
    mid = r[:, bandwidth:n - bandwidth]
    num = np.einsum("ij,ij->i", mid[:, 1:], mid[:, :-1])
    den = np.einsum("ij,ij->i", mid, mid) + 1e-18
    rho = np.clip(num / den, 0.0, 0.9)
    sd = np.sqrt(den / mid.shape[1] * w / (w - 1))
    r += local
    return r, np.maximum(sd, 1e-12) * np.sqrt((1 + rho) / (1 - rho))


def _mosum_scale(X: np.ndarray, bandwidth: int) -> np.ndarray:
    return _robust_parts(np.asarray(X, dtype=np.float64), bandwidth)[1]


def mosum_pvalue(T: np.ndarray, n: int, bandwidth: int) -> np.ndarray:
    """P(max_t T_t > T) under no change, from the Gumbel limit of the MOSUM maximum
    (Eichinger & Kirch 2018, Bernoulli 24(1)): a = sqrt(2 log(n/G)),
    b = 2 log(n/G) + log log(n/G) / 2 + log(3/2) - log(pi) / 2."""
    L = np.log(max(n / bandwidth, np.e))
    a = np.sqrt(2 * L)
    b = 2 * L + 0.5 * np.log(L) + np.log(1.5) - 0.5 * np.log(np.pi)
    return -np.expm1(-2.0 * np.exp(np.clip(b - a * np.asarray(T, dtype=float), -700, 700)))


class Mosum:
    """Moving-sum change points: at every t, the difference between the means of the
    ``bandwidth`` points after and before t, standardized by a robust long-run noise sd;
    local maxima whose Gumbel p-value is at most ``max_pvalue`` (and whose shift is at
    least ``min_shift``) are change points, at most one per ``bandwidth`` neighbourhood.

    Unlike a global CUSUM it tests each change against its own neighbourhood, so a
    sharp step stands out of a diurnal cycle (which a global mean-shift test splits
    into spurious steps), and a new window only touches the last 2 * bandwidth points."""

    def __init__(self, bandwidth: int = 15, max_pvalue: float = 0.001, min_shift: float = 0.0):
        if bandwidth < 3:
            raise ValueError(f"bandwidth: must be >= 3 points, got {bandwidth}")
        self.bandwidth = bandwidth
        self.max_pvalue = max_pvalue
        self.min_shift = min_shift

    def statistic(self, X: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """(T, signed mean difference) for every row of X at t = G .. n - G."""
        X = np.atleast_2d(np.asarray(X, dtype=np.float64))
        G = self.bandwidth
        Xc, sigma = _robust_parts(X, G)
        c = np.cumsum(Xc, axis=1)
        c = np.concatenate([np.zeros((X.shape[0], 1)), c], axis=1)
        n = X.shape[1]
        diff = (c[:, 2 * G:] - 2 * c[:, G:n - G + 1] + c[:, :n - 2 * G + 1]) / G
        return np.abs(diff) / (sigma[:, None] * np.sqrt(2.0 / G)), diff

    def fit_predict(self, series) -> List[ChangePoint]:
        x = _fill_missing(np.asarray(series, dtype=np.float64))
        G = self.bandwidth
        n = x.size
        if n < 4 * G:
            return []
        T, diff = self.statistic(x[None, :])
        T, diff = T[0], diff[0]
        p = mosum_pvalue(T, n, G)
        out: List[ChangePoint] = []
        cand = np.flatnonzero((p <= self.max_pvalue) & (np.abs(diff) >= self.min_shift))
        taken = np.zeros(T.size, dtype=bool)
        for i in cand[np.argsort(-T[cand])]:
            if taken[max(0, i - G):i + G + 1].any():
                continue
            taken[i] = True
            t = i + G
            out.append(ChangePoint(int(t), float(p[i]), float(x[t - G:t].mean()), float(x[t:t + G].mean())))
        return sorted(out, key=lambda c: c.index)


def detect_many(X: np.ndarray, bandwidth: int = 15, max_pvalue: float = 0.001,
                min_shift: float = 0.0, chunk_rows: int = 64) -> List[List[ChangePoint]]:
    """MOSUM change points of every row of ``X`` (series x time), vectorised over rows in
    chunks; O(n) per series."""
    X = np.asarray(X, dtype=np.float64)
    S, n = X.shape
    det = Mosum(bandwidth, max_pvalue, min_shift)
    result: List[List[ChangePoint]] = [[] for _ in range(S)]
    if n < 4 * bandwidth:
        return result
    G = bandwidth
    for lo in range(0, S, chunk_rows):
        block = X[lo:lo + chunk_rows]
        if np.isnan(block).any():
            block = np.vstack([_fill_missing(r) for r in block])
        T, diff = det.statistic(block)
        p_max = mosum_pvalue(T.max(axis=1), n, G)
        for i in np.flatnonzero(p_max <= max_pvalue):
            # the few rows with a change: pick local maxima as in fit_predict
            p = mosum_pvalue(T[i], n, G)
            cand = np.flatnonzero((p <= max_pvalue) & (np.abs(diff[i]) >= min_shift))
            taken = np.zeros(T.shape[1], dtype=bool)
            for j in cand[np.argsort(-T[i, cand])]:
                if taken[max(0, j - G):j + G + 1].any():
                    continue
                taken[j] = True
                t = j + G
                result[lo + i].append(ChangePoint(int(t), float(p[j]), float(block[i, t - G:t].mean()),
                                                  float(block[i, t:t + G].mean())))
            result[lo + i].sort(key=lambda c: c.index)
    return result


class IncrementalMosum:
    """Streaming MOSUM over many series (continuous runs): each new window costs one
    O(series x bandwidth) update. The noise scale of every series is re-estimated from
    its last ``scale_window`` points every ``rescale_every`` windows."""

    def __init__(self, n_series: int, bandwidth: int = 15, max_pvalue: float = 0.001,
                 min_shift: float = 0.0, scale_window: int = 720, rescale_every: int = 60,
                 horizon: int = 43_200):
        self.G = bandwidth
        self.max_pvalue = max_pvalue
        self.min_shift = min_shift
        self.scale_window = scale_window
        self.rescale_every = rescale_every
        self.horizon = horizon          # n used for the Gumbel threshold (30 days of minutes)
        self.buffer = np.full((n_series, scale_window), np.nan)
        self.pos = 0                    # ring buffer: next column to write
        self.sigma = np.full(n_series, np.nan)
        self.last_hit = np.full(n_series, -10**9, dtype=np.int64)
        self.seen = 0

    def _recent(self, k: int) -> np.ndarray:
        idx = (self.pos - k + np.arange(k)) % self.scale_window
        return self.buffer[:, idx]

    def append(self, column: np.ndarray) -> List[Tuple[int, ChangePoint]]:
        G = self.G
        self.buffer[:, self.pos] = column
        self.pos = (self.pos + 1) % self.scale_window
        self.seen += 1
        if self.seen < 2 * G:
            return []
        if self.seen % self.rescale_every == 0 or np.isnan(self.sigma).all():
            have = min(self.seen, self.scale_window)
            if have >= 4 * G:
                block = self._recent(have)
                if np.isnan(block).any():
                    block = np.vstack([_fill_missing(r) for r in block])
                self.sigma = _mosum_scale(block, G)
        if np.isnan(self.sigma).all():
            return []
        tail = self._recent(2 * G)
        diff = np.nanmean(tail[:, G:], axis=1) - np.nanmean(tail[:, :G], axis=1)
        T = np.abs(diff) / (self.sigma * np.sqrt(2.0 / G))
        p = mosum_pvalue(T, self.horizon, G)
        hit = np.flatnonzero((p <= self.max_pvalue) & (np.abs(diff) >= self.min_shift)
                             & (self.seen - self.last_hit > 2 * G))
        out = []
        for r in hit:
            self.last_hit[r] = self.seen
            out.append((int(r), ChangePoint(self.seen - G, float(p[r]), float(np.nanmean(tail[r, :G])),
                                            float(np.nanmean(tail[r, G:])))))
        return out
