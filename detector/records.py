"""The regression record and its life: suspected -> confirmed -> resolved, kept in a
local state file so that each transition is announced once, a regression is not
re-announced every window, and a rollback of the kernel resolves it.
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Dict, Iterable, List, Optional, Set, Tuple

from foliowatch.errors import InputError
from foliowatch.files import atomic_write

_RANK = {"suspected": 1, "confirmed": 2}


@dataclass
class RegressionRecord:
    id: str
    fleet: str
    role: str
    arch: str
    page_size: int
    fs: str
    kernel_from: str
    kernel_to: str
    status: str
    metric: str                      # primary metric
    statistic: str
    effect: float                    # ratio new/base (or share difference)
    ci_low: float
    ci_high: float
    effect_kind: str
    p_value: float
    q_value: float
    hosts_new: int
    hosts_base: int
    hosts_in_group: int
    impact: float
    windows: int
    first_detected_at: str           # ISO 8601 UTC
    updated_at: str
    new_kernel_first_seen: Optional[str] = None
    metrics: List[dict] = field(default_factory=list)   # every significant test
    change_points: List[dict] = field(default_factory=list)
    reasons: List[str] = field(default_factory=list)
    resolved_at: Optional[str] = None
    resolution: Optional[str] = None
    # level effects by metric (``headline.level_effects``) and the effect in words;
    # records of older state files have neither and get the headline on reading
    levels: Dict[str, dict] = field(default_factory=dict)
    headline: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> "RegressionRecord":
        known = set(cls.__dataclass_fields__)
        rec = cls(**{k: v for k, v in d.items() if k in known})
        if not rec.headline:
            from .headline import record_headline
            rec.headline = record_headline(rec)
        return rec


def record_id(group: Tuple, kernel_from: str, kernel_to: str) -> str:
    fleet, role, arch, page_size, fs = group
    return f"{fleet}/{role}/{arch}/{page_size}/{fs}/{kernel_from}->{kernel_to}"


@dataclass
class Transition:
    record: RegressionRecord
    previous: Optional[str]          # status before (None: new)


class StateFileError(InputError):
    """The regression state file cannot be read as one."""


class RegressionState:
    """Open and resolved regressions by id, persisted as one JSON file (atomic replace).
    Only ``foliowatch detect`` saves it; ``read_only`` opens it for everyone else."""

    def __init__(self, path: Optional[str] = None):
        self.path = path
        self.records: Dict[str, RegressionRecord] = {}
        self.streak: Dict[str, int] = {}
        if path and os.path.exists(path):
            try:
                with open(path) as f:
                    data = json.load(f)
            except ValueError as e:
                raise StateFileError(f"state file {path}: not valid JSON ({e}); move it away "
                                     "to start fresh") from None
            if not isinstance(data, dict) or data.get("version") != 1:
                version = data.get("version") if isinstance(data, dict) else None
                raise StateFileError(f"state file {path}: version {version!r} "
                                     "is not 1; move it away to start fresh")
            self.records = {r["id"]: RegressionRecord.from_dict(r) for r in data["records"]}
            self.streak = dict(data.get("streak", {}))

    @classmethod
    def read_only(cls, path: Optional[str]) -> "RegressionState":
        """The state in ``path`` (empty when there is none), detached from the file:
        ``save`` does nothing, so no caller can write or create it by mistake."""
        state = cls(path)
        state.path = None
        return state

    def save(self) -> None:
        if not self.path:
            return
        atomic_write(self.path, json.dumps(
            {"version": 1, "records": [asdict(r) for r in self.records.values()],
             "streak": self.streak}, indent=1, sort_keys=True).encode())

    def open_records(self) -> List[RegressionRecord]:
        return [r for r in self.records.values() if r.status != "resolved"]

    def preview(self, candidates: Iterable[RegressionRecord], rolled_back: Set[Tuple[str, str]],
                as_of: datetime) -> List[RegressionRecord]:
        """The open records that ``update`` with one run's findings would leave (every
        candidate counted, whatever ``min_consecutive``), with this state, its file and
        the candidates left unchanged."""
        trial = RegressionState(None)
        trial.records = copy.deepcopy(self.records)
        trial.streak = dict(self.streak)
        trial.update(copy.deepcopy(list(candidates)), rolled_back, as_of)
        return trial.open_records()

    def update(self, candidates: Iterable[RegressionRecord], rolled_back: Set[Tuple[str, str]],
               as_of: datetime, min_consecutive: int = 1) -> List[Transition]:
        """Apply one run's candidates. ``rolled_back`` holds (record id prefix group, new
        kernel) pairs whose hosts went back to the baseline kernel and left the new one.
        Returns the transitions to announce; a record whose status did not change is
        updated silently.

        Transitions are idempotent: a run that brings no new evidence changes nothing, so
        re-running on the same or newer data announces nothing twice. For a resolved
        record, new evidence is a candidate in ``min_consecutive`` consecutive runs (at
        least one) after ``resolved_at`` in which the new kernel runs in the group again
        (its pair is not in ``rolled_back``: a new-kernel window within the rollback
        quiet time, hence after the resolution). A candidate while the new kernel is
        still gone comes from the windows before the rollback, which the lookback keeps
        for hours: it is the evidence already resolved, not a recurrence."""
        now = as_of.isoformat()
        out: List[Transition] = []
        seen = set()
        for cand in candidates:
            old = self.records.get(cand.id)
            if old is not None and old.status == "resolved" and not _recurs(old, cand, rolled_back, as_of):
                continue
            seen.add(cand.id)
            self.streak[cand.id] = self.streak.get(cand.id, 0) + 1
            if old is None or old.status == "resolved":
                if self.streak[cand.id] < min_consecutive:
                    continue
                cand.first_detected_at = now
                cand.updated_at = now
                self.records[cand.id] = cand
                out.append(Transition(cand, old.status if old else None))
                continue
            cand.first_detected_at = old.first_detected_at
            cand.updated_at = now
            if _RANK[cand.status] > _RANK[old.status]:
                self.records[cand.id] = cand
                out.append(Transition(cand, old.status))
            else:
                # never downgrade within an episode: keep the stronger status, fresh numbers
                cand.status = old.status
                self.records[cand.id] = cand
        for rid in list(self.streak):
            if rid not in seen:
                self.streak[rid] = 0
        for rec in self.records.values():
            if rec.status == "resolved":
                continue
            if (_group_prefix(rec.id), rec.kernel_to) in rolled_back:
                prev = rec.status
                rec.status = "resolved"
                rec.resolved_at = now
                rec.updated_at = now
                rec.resolution = f"rolled back to {rec.kernel_from}"
                self.streak[rec.id] = 0
                out.append(Transition(rec, prev))
        return out


def _group_prefix(rid: str) -> str:
    return rid.rsplit("/", 1)[0]


def _recurs(resolved: RegressionRecord, cand: RegressionRecord,
            rolled_back: Set[Tuple[str, str]], as_of: datetime) -> bool:
    """Whether ``cand`` is new evidence against the ``resolved`` record (see ``update``)."""
    if (_group_prefix(cand.id), cand.kernel_to) in rolled_back:
        return False
    if resolved.resolved_at is None:
        return True
    return as_of > datetime.fromisoformat(resolved.resolved_at)
