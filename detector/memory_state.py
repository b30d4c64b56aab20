"""The memory-state model: how the baseline kernel's centred metric depends on
fragmentation, so that a freshly rebooted canary is compared with what a baseline host
in the same memory state does (the reboot bonus removed, not mistaken for an
improvement)."""

from __future__ import annotations

import numpy as np
import polars as pl

from foliowatch.polars_engine import IN_MEMORY


class MemoryStateModel:
    """How the baseline kernel's centred metric depends on fragmentation, learnt from
    baseline host windows over the history. Subtracting it at the window level compares
    a canary minutes after its reboot with what a baseline host at the same
    fragmentation does, which removes the reboot bonus instead of mistaking it for an
    improvement (or letting it hide a regression).

    The slope is estimated within hosts (each host's windows demeaned by the host's own
    means: a fixed-effects fit), so only hosts whose fragmentation actually changed -
    rebooted for maintenance, or still building up - inform it. Across hosts,
    fragmentation is confounded with everything else that differs between hosts (a
    cross-sectional fit on the simulator's fleets made the reboot bonus 3x too large).
    Outside the fragmentation range seen on baseline hosts the curve is held constant: no
    extrapolation. Too little within-host variation: no adjustment. Its slope rests on
    few hosts and on a functional form the fleet need not follow, so the comparison
    between hosts applies it to new-kernel hosts only where it makes them look better
    (``host_statistics.state_adjusted``)."""

    def __init__(self, max_rows: int = 400_000, min_within_sd: float = 0.01):
        self.max_rows = max_rows
        self.min_within_sd = min_within_sd
        self.model = None
        self.lo = self.hi = 0.0

    def fit(self, reference: pl.DataFrame) -> "MemoryStateModel":
        r = (reference.lazy().filter(pl.col("frag").is_not_null() & pl.col("frag").is_finite()
                                     & pl.col("z").is_finite())
             .select("host_id", "frag", "z").collect(engine=IN_MEMORY))
        if r.height < 200:
            return self
        if r.height > self.max_rows:
            r = r.sample(self.max_rows, seed=0)
        f = r["frag"].to_numpy().astype(float)
        self.lo, self.hi = float(np.quantile(f, 0.005)), float(np.quantile(f, 0.995))
        if self.hi - self.lo < 0.02:
            return self
        # Two smooth terms, not a spline: frag is linear for throughput (a fragmented
        # host writes a little slower), log(frag) for compaction (stalls grow like a
        # power of it).
        F = self._features(f)
        w = (r.select("host_id", pl.Series("f0", F[:, 0]), pl.Series("f1", F[:, 1]), "z")
             .with_columns([(pl.col(c) - pl.col(c).mean().over("host_id")).alias(c)
                            for c in ("f0", "f1", "z")]))
        Fw = w.select("f0", "f1").to_numpy()
        if np.std(Fw[:, 0]) < self.min_within_sd:
            return self
        zw = w["z"].to_numpy()
        beta = np.linalg.solve(Fw.T @ Fw + 1e-3 * len(zw) * np.diag(Fw.var(axis=0) + 1e-12) * 0.01,
                               Fw.T @ zw)
        self._fit = (F.mean(axis=0), 0.0, beta)
        self.model = True
        return self

    def _features(self, f: np.ndarray) -> np.ndarray:
        f = np.clip(f, self.lo, self.hi)
        return np.column_stack([f, np.log(f + 0.02)])

    def predict(self, frag: np.ndarray) -> np.ndarray:
        if self.model is None:
            return np.zeros(len(frag))
        f = np.nan_to_num(np.asarray(frag, dtype=float), nan=(self.lo + self.hi) / 2)
        fm, zm, beta = self._fit
        return zm + (self._features(f) - fm) @ beta
