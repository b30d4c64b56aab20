"""Host covariates (instance type, cpus, memory, write load, fragmentation) and the ridge
regression, fitted on baseline hosts only, that removes what they predict: canaries on
newer hardware are compared with what baseline hosts like them do."""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np
import polars as pl

from .frames import STATE_METRIC

# Memory state (fragmentation, the reboot bonus) is adjusted at the window level by
# MemoryStateModel; uptime is deliberately not a host-level covariate as well: canaries
# sit at the edge of (or outside) the baseline hosts' uptime range, where a host-level
# slope is extrapolation and turned fresh hosts' better tails into "worse" residuals.
BASE_COVARIATES = ("instance_type", "cpus", "mem_bytes")


def host_covariates(df: pl.DataFrame) -> pl.DataFrame:
    aggs = [pl.col("instance_type").mode().first().cast(pl.String).alias("instance_type") if "instance_type" in df.columns else pl.lit("unknown").alias("instance_type"),
            pl.col("cpus").median().cast(pl.Float64).alias("cpus") if "cpus" in df.columns else pl.lit(0.0).alias("cpus"),
            pl.col("mem_bytes").median().cast(pl.Float64).alias("mem_bytes") if "mem_bytes" in df.columns else pl.lit(0.0).alias("mem_bytes"),
            ((pl.col("uptime_s").mean().cast(pl.Float64) / 3600.0).log1p().alias("log_uptime_h")
             if "uptime_s" in df.columns else pl.lit(0.0).alias("log_uptime_h"))]
    if {"nr_dirtied_sum", "interval_s_sum"} <= set(df.columns):
        aggs.append((pl.col("nr_dirtied_sum").sum().cast(pl.Float64)
                     / pl.col("interval_s_sum").sum().cast(pl.Float64) + 1.0).log()
                    .alias("log_dirtied_per_s"))
    if STATE_METRIC in df.columns:
        aggs.append(pl.col(STATE_METRIC).mean().alias("frag"))
    return df.group_by("host_id", "kernel").agg(aggs)


class CovariateAdjuster:
    """Ridge regression of a host statistic on host covariates, fitted on baseline hosts.

    ``residuals`` returns observed minus predicted for every host, out-of-fold for the
    baseline hosts. With too few baseline hosts it returns the values unchanged."""

    def __init__(self, columns: Sequence[str], min_hosts: int = 20, alpha: float = 1.0,
                 folds: int = 5):
        self.columns = list(columns)
        self.min_hosts = min_hosts
        self.alpha = alpha
        self.folds = folds

    def _design(self, hosts: pl.DataFrame, is_base: np.ndarray) -> Optional[np.ndarray]:
        """Numeric covariates standardised on baseline hosts, plus one-hot instance types
        seen on baseline hosts (an unseen type gets all zeros: predicted from its cpus
        and memory alone)."""
        cols = []
        for c in self.columns:
            if c not in hosts.columns:
                continue
            if c == "instance_type":
                types = hosts[c].cast(pl.String).fill_null("unknown").to_numpy()
                seen = sorted(set(types[is_base]))
                if len(seen) > 1:
                    cols.extend((types == t).astype(float) for t in seen)
                continue
            v = hosts[c].cast(pl.Float64).to_numpy().astype(float)
            vb = v[is_base]
            if not np.isfinite(vb).any():
                continue
            med = float(np.nanmedian(vb))
            v = np.where(np.isfinite(v), v, med)
            # No extrapolation: a canary rebooted minutes ago is compared with the
            # freshest baseline hosts, not with a line extended far past them (a
            # slope fitted on 2..40-day uptimes says nothing about minute 5). Clipping
            # errs towards the reboot bonus, i.e. towards "not worse".
            v = np.clip(v, float(np.nanmin(vb)), float(np.nanmax(vb)))
            sd = float(np.std(v[is_base]))
            if sd > 0:
                cols.append((v - float(np.mean(v[is_base]))) / sd)
        return np.column_stack(cols) if cols else None

    def residuals(self, hosts: pl.DataFrame, y: np.ndarray, is_base: np.ndarray
                  ) -> Tuple[np.ndarray, bool]:
        n_base = int(is_base.sum())
        if n_base < self.min_hosts:
            return y, False
        X = self._design(hosts, is_base)
        if X is None:
            return y, False
        pred = _ridge_predict(X[is_base], y[is_base], X, self.alpha)
        # out-of-fold predictions for the baseline hosts (K folds, fixed shuffle)
        idx = np.flatnonzero(is_base)
        folds = np.random.default_rng(0).permutation(idx.size) % min(self.folds, idx.size)
        for k in range(folds.max() + 1):
            test = idx[folds == k]
            train = idx[folds != k]
            pred[test] = _ridge_predict(X[train], y[train], X[test], self.alpha)
        return y - pred, True


def _ridge_predict(X: np.ndarray, y: np.ndarray, X_new: np.ndarray, alpha: float) -> np.ndarray:
    """Ridge regression with an unpenalised intercept, closed form (a handful of host
    covariates: solving the normal equations is microseconds; sklearn's estimator
    machinery costs milliseconds per fit, and a run fits thousands)."""
    xm = X.mean(axis=0)
    ym = y.mean()
    Xc = X - xm
    A = Xc.T @ Xc + alpha * np.eye(X.shape[1])
    beta = np.linalg.solve(A, Xc.T @ (y - ym))
    return ym + (X_new - xm) @ beta
