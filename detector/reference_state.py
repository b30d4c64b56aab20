"""What a baseline-kernel history says for one metric, built once per reference and
reused: the memory-state model, the memory states the baseline occupies, and each host's
own level before the rollout."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Optional

import polars as pl

from .before_after import BeforeAfterPolicy, before_buckets
from .centring import centred_windows
from .fresh_reference import FreshReferencePolicy, reference_bins
from .memory_state import MemoryStateModel
from .state_support import StateSupport, comparable_states, state_support


@dataclass
class ReferenceState:
    """What a baseline ``reference`` history says for one metric: the memory-state model,
    the memory states the baseline occupies, and each host's own level on the baseline
    kernel before the rollout. Built once per reference and reused by runs that share it
    (``detector.analysis.AnalysisCache``)."""
    state: Optional[MemoryStateModel]
    support: Optional[StateSupport]
    pre: Optional[pl.DataFrame]      # host_id, pre_level, pre_n, pre_frag
    # each host's windows before the rollout, by half hour, for ``before_after``
    before: Optional[pl.DataFrame] = None
    # each baseline host's level per fragmentation bin, for ``fresh_matched``
    bins: Optional[pl.DataFrame] = None


def reference_state(reference: pl.DataFrame, metric: str, base_kernel: str,
                    before: Optional[datetime],
                    before_after: Optional[BeforeAfterPolicy] = None,
                    fresh: Optional[FreshReferencePolicy] = None) -> ReferenceState:
    """``before_after``, ``fresh``: keep what those statistics need (the hosts'
    pre-rollout windows; each baseline host's level per fragmentation bin) when
    ``metric`` is one of their metrics."""
    buckets = (before_buckets(reference, metric, base_kernel, before, before_after)
               if before_after is not None and metric in before_after.metrics else None)
    ref = centred_windows(reference, metric, base_kernel)
    bins = reference_bins(ref, base_kernel) if fresh is not None and metric in fresh.metrics \
        else None
    if "frag" not in ref.columns or ref.is_empty():
        return ReferenceState(None, None, None, buckets, bins)
    # The model is fitted on, and only applied to, the comparable states: a curve fitted
    # across fresh memory as well is pulled by the floor that few-event counts sit on
    # there and came out twice too steep in the fragmented range (the demo's x86_64
    # canaries then looked 27% worse in compaction stalls on an unchanged kernel).
    support = state_support(ref, base_kernel)
    ref = comparable_states(ref, support)
    pre = None
    if before is not None:
        # each host's own level on the baseline kernel before the rollout reached the
        # group (canaries' pre-reboot windows, baseline hosts' same period), over the
        # same comparable memory states, not adjusted for memory state (``within_host``
        # in ``host_statistics`` says why)
        pre = (ref.filter(pl.col("window_start") < before).group_by("host_id")
               .agg(pl.col("z").median().alias("pre_level"), pl.len().alias("pre_n"),
                    pl.col("frag").median().alias("pre_frag"))
               .filter(pl.col("pre_n") >= 10))
    state = MemoryStateModel().fit(ref)
    if state.model is None:
        state = None
    return ReferenceState(state, support, pre, buckets, bins)
