"""One evaluation of the host windows as of a time: rollouts, cohort comparisons, FDR,
joint evidence, change points and their attribution, regression candidates."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Dict, List, Optional, Sequence, Set, Tuple

import numpy as np
import polars as pl

from foliowatch.polars_engine import IN_MEMORY

from . import attribution, cohort, evidence, mechanism
from .changepoint import LevelShifts
from .headline import headline, level_effects
from .frames import GROUP_KEYS, LOG_FLOOR, STATE_METRIC, TESTED_METRICS
from .records import RegressionRecord, record_id
from .reference_state import ReferenceState

CHANGEPOINT_METRICS = ("write_mib_s", "compact_stall_per_s")


@dataclass
class DetectorConfig:
    lookback: timedelta = timedelta(hours=6)
    policy: evidence.EvidencePolicy = field(default_factory=evidence.EvidencePolicy)
    metrics: Sequence[str] = TESTED_METRICS
    adjust: bool = True
    changepoints: bool = True
    cp_max_pvalue: float = 0.001
    cp_min_size: int = 5                # shortest segment, windows
    cp_min_shift: float = 0.03          # log scale: ~3% level shift
    # a rolled-back kernel must have left the group for this long before "resolved"
    rollback_quiet: timedelta = timedelta(minutes=5)
    reference_history: timedelta = timedelta(hours=48)
    reference_hosts: int = 400


@dataclass
class GroupChangePoint:
    group: Tuple
    metric: str
    at: datetime
    p_value: float
    shift_log: float
    attribution: attribution.Attribution

    def to_dict(self) -> dict:
        a = self.attribution
        return {"metric": self.metric, "at": self.at.isoformat(), "p_value": self.p_value,
                "shift_ratio": float(np.exp(self.shift_log)), "attributed_to": a.kind,
                "kernel_from": a.kernel_from, "kernel_to": a.kernel_to,
                "wave_start": a.wave_start.isoformat() if a.wave_start else None}


@dataclass
class AnalysisCache:
    """What the continuous detector keeps between runs, so that one new window costs a
    new window's work: the boots seen so far (kernel changes are read from boots, and a
    new window adds only its new boots) and, per group and kernel pair, the reference
    states built from the baseline history (memory-state model, comparable-state
    threshold, pre-rollout host levels), rebuilt every ``refresh`` of data time. A run
    for an earlier time than the last one starts the cache afresh."""
    refresh: timedelta = timedelta(minutes=60)
    boots: Optional[pl.DataFrame] = None
    boots_until: Optional[datetime] = None
    references: Dict[Tuple, Tuple[datetime, Dict[str, ReferenceState]]] = \
        field(default_factory=dict)

    def rollouts(self, host_windows: pl.DataFrame, as_of: datetime) -> List[attribution.Rollout]:
        upto = pl.col("window_start") <= as_of
        if "boot_id" not in host_windows.columns:
            return attribution.infer_rollouts(host_windows.filter(upto))
        if self.boots is None or self.boots_until is None or as_of < self.boots_until:
            self.references.clear()
            self.boots = attribution.boots(host_windows.filter(upto))
        else:
            new = host_windows.filter(upto & (pl.col("window_start") > self.boots_until))
            if not new.is_empty():
                self.boots = attribution.merge_boots(self.boots, attribution.boots(new))
        self.boots_until = as_of
        return attribution.infer_rollouts(changes=attribution.changes_from_boots(self.boots))

    def reference_states(self, key: Tuple, as_of: datetime) -> Optional[Dict[str, ReferenceState]]:
        hit = self.references.get(key)
        if hit is not None and hit[0] <= as_of < hit[0] + self.refresh:
            return hit[1]
        return None


@dataclass
class Analysis:
    as_of: datetime
    comparisons: List[cohort.Comparison]
    judgements: List[evidence.Judgement]           # ranked, only flagged ones
    candidates: List[RegressionRecord]
    rollouts: List[attribution.Rollout]
    change_points: List[GroupChangePoint]
    rolled_back: Set[Tuple[str, str]]               # (group id, kernel) left after rollback
    hosts_by_group: Dict[Tuple, int]


def analyze(host_windows: pl.DataFrame, as_of: Optional[datetime] = None,
            config: Optional[DetectorConfig] = None,
            cache: Optional[AnalysisCache] = None,
            reference_windows: Optional[pl.DataFrame] = None) -> Analysis:
    """Evaluate ``host_windows`` as of ``as_of`` (default: its last window). ``cache``:
    state kept between the runs of a continuous detector (``AnalysisCache``). Every
    group's windows are in ``host_windows``; a one-shot evaluation that reads one group
    at a time (``run.evaluate_by_group``) calls ``evaluate_group`` and ``conclude``.
    ``reference_windows``: the windows the reference is chosen and built from, with at
    least ``REFERENCE_HISTORY_COLUMNS`` (a continuous detector holds the reference
    history in those columns only, and ``host_windows`` only over the lookback; then the
    boots over ``--history`` are in ``cache``); default: ``host_windows``."""
    config = config or DetectorConfig()
    if host_windows.is_empty():
        raise ValueError("host windows: empty frame; nothing to analyse")
    if as_of is None:
        as_of = host_windows["window_start"].max()
    recent = host_windows.filter((pl.col("window_start") <= as_of)
                                 & (pl.col("window_start") > as_of - config.lookback))
    _references: List[ReferenceWindows] = []

    def references() -> "ReferenceWindows":     # once per evaluation, only when needed
        if not _references:
            _references.append(ReferenceWindows.of(
                host_windows if reference_windows is None else reference_windows, as_of, config))
        return _references[0]

    rollouts = cache.rollouts(host_windows, as_of) if cache is not None \
        else attribution.infer_rollouts(host_windows.filter(pl.col("window_start") <= as_of))
    groups = [scan_group(part, tuple(key), rollouts, as_of, config, cache, references)
              for key, part in recent.group_by(list(GROUP_KEYS), maintain_order=True)]
    tasks = [t for g in groups for t in g.tasks]
    # Comparisons are independent (each fills only its own reference states) and spend
    # their time in polars, which releases the GIL: one per core.
    if len(tasks) > 1 and (os.cpu_count() or 1) > 1:
        with ThreadPoolExecutor(max_workers=min(len(tasks), os.cpu_count() or 1)) as pool:
            results = list(pool.map(lambda t: compare_task(t, config), tasks))
    else:
        results = [compare_task(t, config) for t in tasks]
    done = iter(results)
    for g in groups:
        g.comparisons = [c for c in (next(done) for _ in g.tasks) if c is not None]
        g.tasks = []
    return conclude(groups, rollouts, as_of, config)


@dataclass
class GroupEvaluation:
    """What one group (``frames.GROUP_KEYS``) contributes to an evaluation: its hosts in
    the lookback, its kernel comparisons (``tasks`` until they are run), the rollbacks
    it has completed and its change points. Groups are independent until ``conclude``
    takes the false discovery rate across all of them."""
    key: Tuple
    hosts: int
    rolled_back: Set[Tuple[str, str]]
    change_points: List[GroupChangePoint]
    tasks: List[Tuple] = field(default_factory=list)
    comparisons: List[cohort.Comparison] = field(default_factory=list)


def scan_group(part: pl.DataFrame, key: Tuple, rollouts: List[attribution.Rollout],
               as_of: datetime, config: DetectorConfig, cache: Optional[AnalysisCache],
               references) -> GroupEvaluation:
    """One group's lookback windows ``part``: its comparisons to run (``compare_task``),
    rollbacks and change points. ``references``: returns the evaluation's
    ``ReferenceWindows`` (called only when a reference is not cached)."""
    g = GroupEvaluation(key, part["host_id"].n_unique(),
                        _rolled_back(part, rollouts, key, as_of, config.rollback_quiet),
                        _group_change_points(part, key, rollouts, config)
                        if config.changepoints else [])
    for base, new in attribution.kernel_pairs(part, rollouts, key[:4]):
        start = min((r.first_change for r in rollouts if r.key == key[:4]
                     and (r.kernel_from, r.kernel_to) == (base, new)), default=None)
        states = cache.reference_states((key, base, new), as_of) if cache is not None else None
        reference = None
        if states is None and config.adjust:
            reference = references().reference(key, base, new, config)
            states = {}
            if cache is not None:
                cache.references[(key, base, new)] = (as_of, states)
        g.tasks.append((part, key, base, new, reference, start, states))
    return g


def evaluate_group(part: pl.DataFrame, key: Tuple, rollouts: List[attribution.Rollout],
                   as_of: datetime, config: DetectorConfig, references) -> GroupEvaluation:
    """``scan_group`` and its comparisons, one after the other; only their results are
    kept (not the group's windows)."""
    g = scan_group(part, key, rollouts, as_of, config, None, references)
    g.comparisons = [c for c in (compare_task(t, config) for t in g.tasks) if c is not None]
    g.tasks = []
    return g


def compare_task(task: Tuple, config: DetectorConfig) -> Optional[cohort.Comparison]:
    """One kernel comparison of ``scan_group``'s, with its mechanism summary."""
    part, key, base, new, reference, start, states = task
    c = cohort.compare(part, key, base, new, config.metrics, adjust=config.adjust,
                       reference=reference, rollout_start=start, reference_states=states,
                       before_after_policy=config.policy.before_after,
                       fresh_policy=config.policy.fresh_reference)
    if c is not None:
        c.costly_compaction = mechanism.costly_compaction(part, base, new, config.policy.mechanism)
    return c


def conclude(groups: Sequence[GroupEvaluation], rollouts: List[attribution.Rollout],
             as_of: datetime, config: DetectorConfig) -> Analysis:
    """The evaluation from its groups' comparisons (in the groups' order): the false
    discovery rate across all of them, judgements, regression candidates."""
    hosts_by_group = {g.key: g.hosts for g in groups}
    comparisons = [c for g in groups for c in g.comparisons]
    change_points = [cp for g in groups for cp in g.change_points]
    rolled_back = set().union(*(g.rolled_back for g in groups))
    evidence.apply_fdr(comparisons)
    judgements = evidence.rank(evidence.judge(c, config.policy, hosts_by_group[c.group])
                               for c in comparisons)
    candidates = [_record(j, as_of, hosts_by_group[j.comparison.group], change_points)
                  for j in judgements]
    return Analysis(as_of, comparisons, judgements, candidates, rollouts, change_points,
                    rolled_back, hosts_by_group)


# What a reference needs of a window (``reference_state``): its time, host and kernel,
# the tested metrics and the memory state. Nothing else of the history is held.
REFERENCE_COLUMNS = ("window_start", "host_id", "kernel", *TESTED_METRICS, STATE_METRIC)
# What a reference needs of each window of the reference history: its rows
# (``ReferenceWindows.select``) and the choice of its hosts (``reference_summary``).
REFERENCE_HISTORY_COLUMNS = (*GROUP_KEYS, *REFERENCE_COLUMNS, "uptime_s")
# Hosts up for less than this within the reference history show the fresh-memory
# states; they are always in the reference.
FRESH_UPTIME_S = 6 * 3600.0
REFERENCE_HOST_SEED = 7


def reference_summary(host_windows: pl.LazyFrame, as_of: datetime, config: "DetectorConfig"
                      ) -> pl.LazyFrame:
    """One row per (group, kernel, host) seen up to ``as_of``: whether it has windows
    within the reference history (``in_reference``) and whether any of them is from a
    fresh boot (``fresh``). All that choosing a reference's hosts needs; rows of slices
    read one after the other combine with ``merge_reference_summaries``."""
    in_ref = pl.col("window_start") > as_of - config.reference_history
    names = host_windows.collect_schema().names()
    fresh = (in_ref & (pl.col("uptime_s") < FRESH_UPTIME_S)) if "uptime_s" in names \
        else pl.lit(False)
    return (host_windows.filter(pl.col("window_start") <= as_of)
            .group_by(*GROUP_KEYS, "kernel", "host_id")
            .agg(in_ref.any().alias("in_reference"), fresh.any().fill_null(False).alias("fresh")))


def merge_reference_summaries(parts: Sequence[pl.DataFrame]) -> pl.DataFrame:
    keys = [*GROUP_KEYS, "kernel", "host_id"]
    return (pl.concat(parts, how="diagonal_relaxed").group_by(keys)
            .agg(pl.col("in_reference").any(), pl.col("fresh").any()))


def _sampled(hosts: pl.Series, config: "DetectorConfig") -> pl.Series:
    """A stable hash sample of about ``reference_hosts`` of ``hosts`` (distinct ids):
    the same hosts every run."""
    return hosts.filter(hosts.hash(seed=REFERENCE_HOST_SEED) % 1000
                        < 1000 * config.reference_hosts / hosts.len())


def reference_hosts(summary: pl.DataFrame, base: str, new: Optional[str],
                    config: "DetectorConfig") -> Optional[pl.Series]:
    """The hosts of one group's reference for ``base`` -> ``new`` (None: every host on
    ``base``): at most ``reference_hosts`` hosts of those with ``base`` windows in the
    reference history (a stable hash sample) plus every host that has run the ``new``
    kernel (its windows before it are its own "before") and every host that booted
    within it (the few that show the fresh-memory states). ``summary``: the group's rows
    of ``reference_summary``."""
    on_base = summary.filter((pl.col("kernel") == base) & pl.col("in_reference"))
    if on_base.height <= config.reference_hosts:
        return None
    extra = [_sampled(on_base["host_id"], config)]
    if new is not None:
        extra.append(summary.filter(pl.col("kernel") == new)["host_id"].unique())
    extra.append(on_base.filter(pl.col("fresh"))["host_id"])
    return pl.concat(extra).unique()


def reference_read_keys(summary: pl.DataFrame, config: "DetectorConfig") -> pl.DataFrame:
    """(host_id, kernel) of every window some reference of this evaluation can use,
    whichever kernels it compares: per group and kernel, the hosts ``reference_hosts``
    would keep with any other kernel of the group as the new one. What a one-shot
    evaluation reads of the reference history beyond its lookback."""
    keys = [*GROUP_KEYS, "kernel"]
    s = summary.filter(pl.col("in_reference"))
    s = s.with_columns(
        pl.len().over(keys).alias("n"),
        pl.Series("h", s["host_id"].hash(seed=REFERENCE_HOST_SEED) % 1000))
    other = (summary.group_by(*GROUP_KEYS, "host_id").agg(pl.col("kernel").n_unique().alias("kernels")))
    s = s.join(other, on=[*GROUP_KEYS, "host_id"], how="left")
    keep = ((pl.col("n") <= config.reference_hosts)
            | (pl.col("h") < 1000 * config.reference_hosts / pl.col("n"))
            | pl.col("fresh") | (pl.col("kernels") > 1))
    return s.filter(keep).select("host_id", "kernel").unique()


@dataclass
class ReferenceWindows:
    """The baseline histories one evaluation models memory state and pre-rollout levels
    from: the ``REFERENCE_COLUMNS`` of the windows in the last ``reference_history``
    before ``as_of`` (all of them, or a one-shot read's subset that holds every reference
    host's), each row tagged with its group (``groups``: group key -> tag). ``summary``:
    the ``reference_summary`` of every group when the windows are such a subset;
    otherwise a group's is taken from ``host_windows`` when its baseline has more hosts
    than a reference keeps."""
    as_of: datetime
    windows: pl.DataFrame                     # with each row's group tag, ``_group``
    groups: Dict[Tuple, int]                  # group key -> tag
    summary: Optional[pl.DataFrame] = None
    host_windows: Optional[pl.DataFrame] = None

    @classmethod
    def of(cls, host_windows: pl.DataFrame, as_of: datetime, config: "DetectorConfig"
           ) -> "ReferenceWindows":
        return cls.from_windows(as_of, cls.select(host_windows.lazy(), as_of, config)
                                .collect(engine=IN_MEMORY),
                                host_windows=host_windows)

    @classmethod
    def from_windows(cls, as_of: datetime, windows: pl.DataFrame,
                     summary: Optional[pl.DataFrame] = None,
                     host_windows: Optional[pl.DataFrame] = None) -> "ReferenceWindows":
        """From ``select``'s rows, kept in the order read (a memory-state model samples
        rows). Groups are tagged by a hash of their keys: partitioning millions of rows
        on five string columns took longer than the comparisons."""
        tagged = windows.with_columns(pl.struct(*GROUP_KEYS).hash().alias("_group"))
        tags = tagged.group_by("_group").agg(pl.col(k).first() for k in GROUP_KEYS)
        groups = {tuple(row[1:]): row[0] for row in tags.iter_rows()}
        return cls(as_of, tagged.drop(GROUP_KEYS), groups, summary, host_windows)

    @staticmethod
    def select(host_windows: pl.LazyFrame, as_of: datetime, config: "DetectorConfig"
               ) -> pl.LazyFrame:
        names = host_windows.collect_schema().names()
        return (host_windows.filter((pl.col("window_start") <= as_of)
                                    & (pl.col("window_start") > as_of - config.reference_history))
                .select(*GROUP_KEYS, *[c for c in REFERENCE_COLUMNS if c in names]))

    def reference(self, key: Tuple, base: str, new: Optional[str], config: "DetectorConfig"
                  ) -> pl.DataFrame:
        """Baseline-kernel windows of group ``key`` for the memory-state model and the
        hosts' own pre-rollout levels (``reference_hosts`` chooses the hosts)."""
        is_group = pl.all_horizontal([pl.col(k) == v for k, v in zip(GROUP_KEYS, key)])
        # the group first (one integer compare a row), then the kernel on its rows
        tag = self.groups.get(tuple(key))
        ref = (self.windows.filter(pl.col("_group") == tag) if tag is not None
               else self.windows.clear()).drop("_group")
        ref = ref.filter(pl.col("kernel") == base)
        if self.summary is not None:
            summary = self.summary.filter(is_group)
        elif ref["host_id"].n_unique() <= config.reference_hosts:
            return ref
        else:
            summary = reference_summary(self.host_windows.lazy().filter(is_group), self.as_of,
                                        config).collect(engine=IN_MEMORY)
        keep = reference_hosts(summary, base, new, config)
        if keep is not None:
            ref = ref.filter(pl.col("host_id").is_in(keep.implode()))
        return ref


def _rolled_back(part: pl.DataFrame, rollouts, key: Tuple, as_of: datetime,
                 quiet: timedelta) -> Set[Tuple[str, str]]:
    out = set()
    gid = record_id(key, "x", "y").rsplit("/", 1)[0]
    for r in rollouts:
        if r.key != key[:4] or not r.is_rollback or r.first_change > as_of:
            continue
        left = r.kernel_from       # the kernel rolled back from
        still = part.filter((pl.col("kernel") == left)
                            & (pl.col("window_start") > as_of - quiet)).height
        if still == 0:
            out.add((gid, left))
    return out


def _group_change_points(part: pl.DataFrame, key: Tuple, rollouts, config: DetectorConfig
                         ) -> List[GroupChangePoint]:
    out = []
    hosts_in_slice = part["host_id"].n_unique()
    for metric in CHANGEPOINT_METRICS:
        if metric not in part.columns:
            continue
        s = (part.group_by("window_start")
             .agg((pl.col(metric).clip(lower_bound=0) + LOG_FLOOR[metric]).log().median().alias("y"))
             .sort("window_start").drop_nulls())
        if s.height < 2 * config.cp_min_size:
            continue
        times = s["window_start"].to_list()
        seg = LevelShifts(config.cp_max_pvalue, config.cp_min_size, min_shift=config.cp_min_shift)
        for cp in seg.fit_predict(s["y"].to_numpy()):
            at = times[cp.index]
            out.append(GroupChangePoint(key, metric, at, cp.p_value, cp.shift,
                                        attribution.attribute(at, rollouts, key[:4],
                                                              hosts_in_slice=hosts_in_slice)))
    return out


def _record(j: evidence.Judgement, as_of: datetime, hosts_in_group: int,
            change_points: List[GroupChangePoint]) -> RegressionRecord:
    c = j.comparison
    t = j.primary
    fleet, role, arch, page_size, fs = c.group
    cps = [cp.to_dict() for cp in change_points
           if cp.group == c.group and cp.attribution.kernel_to == c.kernel_to]
    now = as_of.isoformat()
    levels = level_effects(c.tests)
    return RegressionRecord(
        id=record_id(c.group, c.kernel_from, c.kernel_to), fleet=fleet, role=role, arch=arch,
        page_size=int(page_size), fs=fs, kernel_from=c.kernel_from, kernel_to=c.kernel_to,
        status=j.status, metric=t.metric, statistic=t.statistic, effect=t.effect,
        ci_low=t.ci_low, ci_high=t.ci_high, effect_kind=t.effect_kind, p_value=t.p_value,
        q_value=t.q_value, hosts_new=c.n_new, hosts_base=c.n_base,
        hosts_in_group=hosts_in_group, impact=j.impact, windows=c.windows,
        first_detected_at=now, updated_at=now,
        new_kernel_first_seen=c.new_first_seen.isoformat() if c.new_first_seen else None,
        metrics=[{"metric": s.metric, "statistic": s.statistic, "effect": s.effect,
                  "ci_low": s.ci_low, "ci_high": s.ci_high, "effect_kind": s.effect_kind,
                  "p_value": s.p_value, "q_value": s.q_value, "adjusted": s.adjusted}
                 for s in j.significant],
        change_points=cps, reasons=j.reasons, levels=levels,
        headline=_with_mechanism(headline(levels, c.n_new, c.n_base,
                                          fallback=None if t.metric == mechanism.METRIC
                                          else vars(t)), j))


def _with_mechanism(text: str, j: evidence.Judgement) -> str:
    """The headline, with the costly direct compaction figure when it is evidence."""
    if not j.costly_compaction:
        return text
    effect, _, hosts = text.rpartition(", ")
    parts = [effect] if effect else []
    return ", ".join(parts + [j.comparison.costly_compaction.headline(), hosts])
