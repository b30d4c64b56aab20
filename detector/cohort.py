"""Host-level comparison of new-kernel hosts against baseline-kernel hosts of the same
group (fleet, role, arch, page size, filesystem) over the same windows.

Per metric, each host-window value is put on a log scale and centred on the baseline
hosts' median in the same window, so load, time of day and traffic shifts that hit
both kernels cancel. Each host then contributes one value per statistic (not one per
window: windows of one host are not independent):

- ``level``: the host's median centred value (the typical interval),
- ``tail``: its 90th percentile in the worse direction (compaction stalls are tail
  events; a median test passes when only a few intervals get 100x worse),
- ``bad_share``: the share of its windows worse than the baseline's own 90th percentile
  of that window (10% expected on an unchanged kernel),
- ``within_host``: its level minus its own level on the baseline kernel before the
  rollout (canaries' pre-reboot windows; baseline hosts' same period): a host-level
  difference in differences that removes the large host-to-host spread. Tested on the
  probe only (``frames.WITHIN_HOST_METRICS`` says why).

Like is compared with like. Windows count only in memory states the baseline hosts
occupy (fragmentation bins seen on at least ``MIN_STATE_HOSTS`` baseline hosts): a
canary minutes after its reboot is not compared until its memory is in a state the
fleet is seen in. New-kernel hosts of an instance type fewer than ``min_type_hosts``
baseline hosts share are left out (and named).

Host values are adjusted for covariates with a ridge regression fitted on baseline hosts
only (instance type, cpus, memory, and for the mechanism metrics the write load), and
window values for memory state (``MemoryStateModel``, fragmentation): canaries that just
rebooted (unfragmented memory) or run on newer hardware are compared with what baseline
hosts like them do. Baseline residuals are out-of-fold so the
baseline spread is not understated. The test is a one-sided Mann-Whitney U (new worse),
the effect a Hodges-Lehmann shift with its distribution-free interval, reported as a
ratio (level, tail) or a difference of shares (bad_share).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import polars as pl
from scipy import stats as sstats

from .frames import (LOG_FLOOR, MECHANISM_METRICS, STATE_METRIC, TESTED_METRICS,
                     WITHIN_HOST_METRICS, worse_direction)

STATISTICS = ("level", "tail", "bad_share", "within_host")
# Memory state (fragmentation, the reboot bonus) is adjusted at the window level by
# MemoryStateModel; uptime is deliberately not a host-level covariate as well: canaries
# sit at the edge of (or outside) the baseline hosts' uptime range, where a host-level
# slope is extrapolation and turned fresh hosts' better tails into "worse" residuals.
BASE_COVARIATES = ("instance_type", "cpus", "mem_bytes")


@dataclass
class MetricTest:
    metric: str
    statistic: str                 # level | tail | bad_share
    n_new: int
    n_base: int
    p_value: float                 # one-sided: new kernel worse
    effect: float                  # ratio new/base (level, tail) or share difference
    ci_low: float
    ci_high: float
    effect_kind: str               # "ratio" or "share_diff"
    adjusted: bool
    q_value: float = 1.0           # filled by evidence.benjamini_hochberg

    def worse_by(self) -> float:
        """How much worse the new kernel is, >0 worse: relative for ratios."""
        d = worse_direction(self.metric)
        if self.effect_kind == "ratio":
            return (self.effect - 1.0) if d > 0 else (1.0 - self.effect)
        return self.effect


@dataclass
class Comparison:
    group: Tuple                   # fleet, role, arch, page_size, fs
    kernel_from: str
    kernel_to: str
    n_new: int
    n_base: int
    windows: int
    first_window: Optional[datetime]
    last_window: Optional[datetime]
    new_first_seen: Optional[datetime]
    tests: List[MetricTest] = field(default_factory=list)
    # memory-state coverage for the verdict: fragmentation seen on each kernel
    frag_new_p75: Optional[float] = None
    frag_base_median: Optional[float] = None
    new_hosts_at_fleet_frag: int = 0
    new_max_uptime_h: float = 0.0
    uptime_h_at_fleet_frag: Optional[float] = None
    unmatched_instance_types: List[str] = field(default_factory=list)
    level_sd: Dict[str, float] = field(default_factory=dict)   # host-level spread (log)
    # new-kernel hosts with windows in comparable memory states (the tests' hosts)
    n_new_compared: int = 0
    # new-kernel hosts left out: their instance type is (nearly) absent on the baseline
    n_new_unmatched: int = 0


def hodges_lehmann(new: np.ndarray, base: np.ndarray, alpha: float = 0.05,
                   max_pairs: int = 2_000_000, seed: int = 0) -> Tuple[float, float, float]:
    """Hodges-Lehmann shift (median of pairwise differences new - base) and its
    distribution-free (1 - alpha) interval from the Mann-Whitney order statistics."""
    new = np.asarray(new, dtype=float)
    base = np.asarray(base, dtype=float)
    n1, n2 = new.size, base.size
    if n1 * n2 > max_pairs:
        rng = np.random.default_rng(seed)
        base = rng.choice(base, size=max(1, max_pairs // n1), replace=False)
        n2 = base.size
    d = (new[:, None] - base[None, :]).ravel()
    N = d.size
    z = sstats.norm.ppf(1 - alpha / 2)
    k = int(np.floor(N / 2.0 - z * np.sqrt(n1 * n2 * (n1 + n2 + 1) / 12.0)))
    k = max(k, 0)
    hi_idx = min(N - 1 - k, N - 1)
    part = np.partition(d, sorted({k, hi_idx, N // 2, (N - 1) // 2}))
    est = 0.5 * (part[N // 2] + part[(N - 1) // 2])
    return float(est), float(part[k]), float(part[hi_idx])


def _centred(df: pl.DataFrame, metric: str, base_kernel: str) -> pl.DataFrame:
    """Host windows of ``metric`` on a log scale, centred on the baseline hosts' median of
    the same window (windows with fewer than 3 baseline hosts are dropped)."""
    floor = LOG_FLOOR[metric]
    cols = ["window_start", "host_id", "kernel",
            (pl.col(metric).clip(lower_bound=0) + floor).log().alias("y")]
    if STATE_METRIC in df.columns:
        cols.append(pl.col(STATE_METRIC).alias("frag"))
    x = df.filter(pl.col(metric).is_not_null() & pl.col(metric).is_finite()).select(cols)
    centre = (x.filter(pl.col("kernel") == base_kernel).group_by("window_start")
              .agg(pl.col("y").median().alias("centre"), pl.len().alias("nb"))
              .filter(pl.col("nb") >= 3))
    return (x.join(centre, on="window_start", how="inner")
            .with_columns((pl.col("y") - pl.col("centre")).alias("z")))


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
    extrapolation. Too little within-host variation: no adjustment."""

    def __init__(self, max_rows: int = 400_000, min_within_sd: float = 0.01):
        self.max_rows = max_rows
        self.min_within_sd = min_within_sd
        self.model = None
        self.lo = self.hi = 0.0

    def fit(self, reference: pl.DataFrame) -> "MemoryStateModel":
        r = reference.filter(pl.col("frag").is_not_null() & pl.col("frag").is_finite()
                             & pl.col("z").is_finite())
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


# Memory states compared: fragmentation in bins of this width; a bin is comparable when
# at least this many distinct baseline hosts were seen in it (see ``comparable_states``).
FRAG_BIN = 0.05
MIN_STATE_HOSTS = 10
# New-kernel hosts are compared only on instance types this many baseline hosts share.
MIN_TYPE_HOSTS = 10


@dataclass(frozen=True)
class StateSupport:
    """The fragmentation bins the baseline hosts occupy (on ``MIN_STATE_HOSTS`` hosts)."""
    bins: Tuple[int, ...]

    def expr(self) -> pl.Expr:
        """True for windows in a supported bin, or without the gauge (nothing to match)."""
        b = (pl.col("frag") / FRAG_BIN).floor().cast(pl.Int64)
        return (pl.col("frag").is_null() | ~pl.col("frag").is_finite()
                | b.is_in(list(self.bins)))


def state_support(x: pl.DataFrame, base_kernel: str, min_hosts: int = MIN_STATE_HOSTS
                  ) -> Optional[StateSupport]:
    """Bins of fragmentation where at least ``min_hosts`` baseline hosts have windows
    (None: no fragmentation gauge, no gate)."""
    if "frag" not in x.columns:
        return None
    b = (x.filter((pl.col("kernel") == base_kernel) & pl.col("frag").is_finite())
         .group_by((pl.col("frag") / FRAG_BIN).floor().cast(pl.Int64).alias("bin"))
         .agg(pl.col("host_id").n_unique().alias("hosts")))
    if b.is_empty():
        return None
    return StateSupport(tuple(sorted(b.filter(pl.col("hosts") >= min_hosts)["bin"].to_list())))


def comparable_states(x: pl.DataFrame, support: Optional[StateSupport]) -> pl.DataFrame:
    """Keep the windows whose memory state the baseline hosts occupy.

    A canary minutes after its reboot has unfragmented memory that few or no baseline
    hosts share: a model of the "reboot bonus" is extrapolation there (or rests on a
    handful of maintenance reboots), and a few percent of error in it reads as a
    regression or hides one. So windows of either kernel in a fragmentation bin that
    fewer than ``MIN_STATE_HOSTS`` baseline hosts occupy are left out: a canary enters
    the comparison once its memory is in a state the fleet is seen in, which for a
    long-running fleet is also when a fragmentation-gated regression shows."""
    if support is None or "frag" not in x.columns:
        return x
    return x.filter(support.expr())


@dataclass
class ReferenceState:
    """What a baseline ``reference`` history says for one metric: the memory-state model,
    the memory states the baseline occupies, and each host's own level on the baseline
    kernel before the rollout. Built once per reference and reused by runs that share it
    (``detector.analysis.AnalysisCache``)."""
    state: Optional[MemoryStateModel]
    support: Optional[StateSupport]
    pre: Optional[pl.DataFrame]      # host_id, pre_level, pre_n


def reference_state(reference: pl.DataFrame, metric: str, base_kernel: str,
                    before: Optional[datetime]) -> ReferenceState:
    ref = _centred(reference, metric, base_kernel)
    if "frag" not in ref.columns or ref.is_empty():
        return ReferenceState(None, None, None)
    # The model is fitted on, and only applied to, the comparable states: a curve fitted
    # across fresh memory as well is pulled by the floor that few-event counts sit on
    # there and came out twice too steep in the fragmented range (the demo's x86_64
    # canaries then looked 27% worse in compaction stalls on an unchanged kernel).
    support = state_support(ref, base_kernel)
    ref = comparable_states(ref, support)
    state = MemoryStateModel().fit(ref)
    if state.model is None:
        state = None
    else:
        ref = ref.with_columns(pl.Series("z", ref["z"].to_numpy()
                                         - state.predict(ref["frag"].to_numpy())))
    pre = None
    if before is not None:
        # each host's own level on the baseline kernel before the rollout reached the
        # group (canaries' pre-reboot windows, baseline hosts' same period), over the
        # same comparable memory states
        pre = (ref.filter(pl.col("window_start") < before).group_by("host_id")
               .agg(pl.col("z").median().alias("pre_level"), pl.len().alias("pre_n"))
               .filter(pl.col("pre_n") >= 10))
    return ReferenceState(state, support, pre)


def _host_frame(df: pl.DataFrame, metric: str, base_kernel: str,
                ref_state: Optional[ReferenceState] = None,
                cov: Optional[pl.DataFrame] = None,
                adjuster: Optional["CovariateAdjuster"] = None) -> Tuple[pl.DataFrame, bool]:
    """Per host: level, tail and bad_share of the window-centred log metric over the
    windows in comparable memory states, adjusted for memory state at the window level
    when a baseline reference is given (and its ``within_host`` change from ``pre``).

    With ``cov`` and an ``adjuster``, host covariates are removed at the window level
    too: each host's windows are shifted by what the ridge regression fitted on baseline
    hosts' levels predicts for a host like it (out of fold for baseline hosts), before
    the tail and the bad-interval share are taken. Tails and shares are non-linear in
    the windows, so adjusting them after the fact (as host statistics) leaves a faster
    instance type's windows on the wrong side of the baseline's thresholds. Returns the
    host frame and whether the covariate adjustment was applied."""
    d = worse_direction(metric)
    x = _centred(df, metric, base_kernel)
    support = (ref_state.support if ref_state is not None and ref_state.support is not None
               else state_support(x, base_kernel))
    x = comparable_states(x, support)
    pre = None
    if ref_state is not None and "frag" in x.columns and x.height:
        if ref_state.state is not None:
            x = x.with_columns(pl.Series("z", x["z"].to_numpy()
                                         - ref_state.state.predict(x["frag"].to_numpy())))
        pre = ref_state.pre
    levels = x.group_by("host_id", "kernel").agg(pl.col("z").median().alias("raw_level"))
    adjusted = False
    if adjuster is not None and cov is not None and levels.height:
        h = levels.join(cov, on=["host_id", "kernel"], how="left")
        is_base = (h["kernel"] == base_kernel).to_numpy()
        y = h["raw_level"].to_numpy().astype(float)
        r, adjusted = adjuster.residuals(h, y, is_base)
        if adjusted:
            off = h.select("host_id", "kernel", pl.Series("offset", y - r))
            x = (x.join(off, on=["host_id", "kernel"], how="left")
                 .with_columns((pl.col("z") - pl.col("offset").fill_null(0.0)).alias("z"))
                 .drop("offset"))
    q_bad = 0.9 if d > 0 else 0.1
    bad_at = (x.filter(pl.col("kernel") == base_kernel).group_by("window_start")
              .agg(pl.col("z").quantile(q_bad, "linear").alias("bad_at")))
    x = x.join(bad_at, on="window_start", how="inner")
    worse = (pl.col("z") > pl.col("bad_at")) if d > 0 else (pl.col("z") < pl.col("bad_at"))
    hosts = (x.with_columns(worse.alias("bad"))
             .group_by("host_id", "kernel")
             .agg(pl.col("z").median().alias("level"),
                  pl.col("z").quantile(q_bad, "linear").alias("tail"),
                  pl.col("bad").mean().alias("bad_share"),
                  pl.len().alias("n_windows"))
             .join(levels, on=["host_id", "kernel"], how="left"))
    if pre is not None and pre.height:
        # a host's own before/after difference: its covariates cancel, so from the level
        # before the covariate adjustment
        hosts = (hosts.join(pre, on="host_id", how="left")
                 .with_columns((pl.col("raw_level") - pl.col("pre_level")).alias("within_host")))
    return hosts, adjusted


def _covariates(df: pl.DataFrame) -> pl.DataFrame:
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


def compare(df: pl.DataFrame, group: Tuple, base_kernel: str, new_kernel: str,
            metrics: Sequence[str] = TESTED_METRICS, min_base_hosts: int = 3,
            adjust: bool = True, alpha_ci: float = 0.05,
            reference: Optional[pl.DataFrame] = None,
            rollout_start: Optional[datetime] = None,
            reference_states: Optional[Dict[str, ReferenceState]] = None,
            min_type_hosts: int = MIN_TYPE_HOSTS) -> Optional[Comparison]:
    """Compare ``new_kernel`` with ``base_kernel`` on one group's host windows ``df``.

    Only windows where both kernels report are used. Returns None when the new kernel
    has no host in such a window. ``reference``: the group's baseline-kernel host
    windows over a longer history, for the memory-state (fragmentation) adjustment and
    each host's level before ``rollout_start`` (default: the new kernel's first window).
    ``reference_states``: per-metric states already built from that reference (a cache:
    filled here for the metrics missing from it)."""
    df = df.filter(pl.col("kernel").is_in([base_kernel, new_kernel]))
    per_window = (df.group_by("window_start")
                  .agg((pl.col("kernel") == new_kernel).any().alias("has_new"),
                       pl.col("host_id").filter(pl.col("kernel") == base_kernel).n_unique().alias("nb")))
    shared = per_window.filter(pl.col("has_new") & (pl.col("nb") >= min_base_hosts))["window_start"]
    if shared.len() == 0:
        return None
    df = df.filter(pl.col("window_start").is_in(shared.implode()))
    cov = _covariates(df)
    is_new_k = pl.col("kernel") == new_kernel
    n_new = cov.filter(is_new_k).height
    n_base = cov.height - n_new
    comp = Comparison(group=tuple(group), kernel_from=base_kernel, kernel_to=new_kernel,
                      n_new=n_new, n_base=n_base, windows=shared.len(),
                      first_window=shared.min(), last_window=shared.max(),
                      new_first_seen=df.filter(is_new_k)["window_start"].min())
    _coverage(comp, df, cov, new_kernel)
    rollout_start = rollout_start or comp.new_first_seen
    if reference_states is None:
        reference_states = {}
    # Like with like: new-kernel hosts of an instance type that too few baseline hosts
    # share are left out of the tests. A regression model cannot adjust for hardware it
    # has barely seen on the baseline kernel (ridge shrinks a 3-host type's coefficient
    # towards zero), and waves often go to the newest hardware first.
    counts = cov.filter(~is_new_k).group_by("instance_type").len()
    matched = counts.filter(pl.col("len") >= min_type_hosts)["instance_type"]
    unmatched = cov.filter(is_new_k & ~pl.col("instance_type").is_in(matched.implode()))
    comp.unmatched_instance_types = sorted(set(unmatched["instance_type"].drop_nulls().to_list()))
    comp.n_new_unmatched = unmatched.height
    if unmatched.height:
        gone = unmatched["host_id"].implode()
        df = df.filter(~(is_new_k & pl.col("host_id").is_in(gone)))
        cov = cov.filter(~(is_new_k & pl.col("host_id").is_in(gone)))
    for metric in metrics:
        if metric not in df.columns or df[metric].null_count() == df.height:
            continue
        ref_state = None
        if adjust and (reference is not None or metric in reference_states):
            if metric not in reference_states:
                reference_states[metric] = reference_state(reference, metric, base_kernel,
                                                           rollout_start)
            ref_state = reference_states[metric]
        columns = list(BASE_COVARIATES)
        if metric in MECHANISM_METRICS and "log_dirtied_per_s" in cov.columns:
            columns.append("log_dirtied_per_s")
        hosts, cov_adjusted = _host_frame(df, metric, base_kernel, ref_state, cov,
                                          CovariateAdjuster(columns) if adjust else None)
        if hosts.is_empty():
            continue
        is_new = (hosts["kernel"] == new_kernel).to_numpy()
        if is_new.sum() == 0 or (~is_new).sum() < min_base_hosts:
            continue
        d = worse_direction(metric)
        for statistic in STATISTICS:
            if statistic not in hosts.columns or (statistic == "within_host"
                                                  and metric not in WITHIN_HOST_METRICS):
                continue
            y = hosts[statistic].to_numpy().astype(float)
            # oriented so that larger = worse
            yo = y * d if statistic != "bad_share" else y
            # covariates were removed at the window level (within_host: they cancel)
            r, adjusted = yo, cov_adjusted and statistic != "within_host"
            ok = np.isfinite(r)
            a, b = r[is_new & ok], r[~is_new & ok]
            if a.size == 0 or b.size < min_base_hosts:
                continue
            if statistic in ("level", "within_host") and b.size > 1:
                # the most precise host-level statistic sets the comparison's power
                sd = float(np.std(b, ddof=1))
                comp.level_sd[metric] = min(sd, comp.level_sd.get(metric, sd))
            p = float(sstats.mannwhitneyu(a, b, alternative="greater",
                                          method=_mwu_method(a.size, b.size, statistic)).pvalue)
            est, lo, hi = hodges_lehmann(a, b, alpha_ci)
            if statistic == "bad_share":
                effect, ci = est, (lo, hi)
                kind = "share_diff"
            else:
                # back from "oriented log shift" to a ratio new/base on the metric's scale
                effect = float(np.exp(est * d))
                ci = tuple(sorted((float(np.exp(lo * d)), float(np.exp(hi * d)))))
                kind = "ratio"
            comp.tests.append(MetricTest(metric, statistic, int(a.size), int(b.size), p,
                                         effect, ci[0], ci[1], kind, adjusted))
    comp.n_new_compared = max((t.n_new for t in comp.tests), default=0)
    return comp


def _mwu_method(n_new: int, n_base: int, statistic: str) -> str:
    """Exact Mann-Whitney for a handful of new-kernel hosts: the normal approximation is
    conservative by orders of magnitude in the far tail (4 canaries above 800 baseline
    hosts: exact p 1e-10, normal 3e-4), which is where a canary wave's evidence sits.
    The exact distribution assumes no ties, so the tie-heavy bad_share statistic keeps
    the tie-corrected normal approximation."""
    if n_new <= 8 and statistic != "bad_share":
        return "exact"
    return "asymptotic" if n_new + n_base > 60 else "auto"


def _coverage(comp: Comparison, df: pl.DataFrame, cov: pl.DataFrame, new_kernel: str) -> None:
    """Has the new kernel been seen at the fragmentation the fleet runs at?"""
    if "frag" not in cov.columns:
        return
    new = cov.filter(pl.col("kernel") == new_kernel)
    base = cov.filter(pl.col("kernel") != new_kernel)
    if base.is_empty() or new.is_empty():
        return
    fleet_frag = base["frag"].median()
    if fleet_frag is None:
        return
    comp.frag_base_median = float(fleet_frag)
    comp.frag_new_p75 = float(new["frag"].quantile(0.75)) if new["frag"].null_count() < new.height else None
    # a host counts as "at fleet fragmentation" when its own windows reach the fleet median
    hw = (df.filter(pl.col("kernel") == new_kernel).group_by("host_id")
          .agg(pl.col(STATE_METRIC).max().alias("fmax"), pl.col("uptime_s").max().alias("up")))
    comp.new_hosts_at_fleet_frag = int(hw.filter(pl.col("fmax") >= fleet_frag).height)
    comp.new_max_uptime_h = float((hw["up"].max() or 0) / 3600.0)
    # uptime at which hosts reach the fleet's median fragmentation, from hosts seen
    # crossing it (rebooted ones, either kernel): the frag build-up does not depend on
    # how long the long-running hosts have been up
    boot = "boot_id" if "boot_id" in df.columns else "host_id"
    seen = (df.select("host_id", boot, (pl.col("uptime_s") / 3600.0).alias("h"),
                      pl.col(STATE_METRIC).alias("f"))
            .drop_nulls().group_by("host_id", boot)
            .agg(pl.col("h").min().alias("first_h"),
                 pl.col("h").filter(pl.col("f") >= fleet_frag).min().alias("cross_h"))
            .filter((pl.col("first_h") < 2.0) & pl.col("cross_h").is_not_null()))
    if seen.height >= 3:
        comp.uptime_h_at_fleet_frag = float(seen["cross_h"].median())
