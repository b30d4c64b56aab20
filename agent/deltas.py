"""Cumulative kernel counters -> deltas per interval, with honest baselines.

A delta is only emitted between two readings of the same boot taken less than
``max_interval_s`` apart. A new boot id (reboot: every counter restarted), a clock that
went backwards, or a gap longer than the schema allows starts a new baseline and emits
nothing for that interval. A single counter that went backwards (a block device
re-created, a 32-bit counter wrapped, a counter reset by hand) is left out of that one
interval and rebased; the others are unaffected. A counter seen for the first time (a
mount added, an XFS filesystem mounted) likewise only establishes its baseline.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

from foliowatch import schema


class Baseline:
    def __init__(self, max_interval_s: float = schema.MAX_INTERVAL_S):
        self.max_interval_s = max_interval_s
        self.boot_id: Optional[str] = None
        self.clock: Optional[float] = None     # CLOCK_BOOTTIME seconds of the last reading
        self.values: Dict[str, int] = {}
        self.resets = 0                        # counters rebased because they went backwards
        self._undo: Optional[Tuple[Dict[str, int], Optional[float], Optional[str], int]] = None

    def advance(self, boot_id: str, clock: float, current: Dict[str, int]
                ) -> Optional[Tuple[float, Dict[str, int]]]:
        """Take a reading; return ``(interval_s, deltas)`` or ``None`` for a new baseline."""
        prev, prev_clock, prev_boot = self.values, self.clock, self.boot_id
        self._undo = (prev, prev_clock, prev_boot, self.resets)
        self.values, self.clock, self.boot_id = dict(current), clock, boot_id
        if prev_boot != boot_id or prev_clock is None:
            return None
        interval = clock - prev_clock
        if not 0.0 < interval <= self.max_interval_s:
            return None
        deltas: Dict[str, int] = {}
        for name, value in current.items():
            before = prev.get(name)
            if before is None:
                continue
            if value < before:
                self.resets += 1
                continue
            deltas[name] = value - before
        return interval, deltas

    def undo(self) -> None:
        """Forget the last reading (its record could not be kept): the next interval
        starts where this one did."""
        if self._undo is not None:
            self.values, self.clock, self.boot_id, self.resets = self._undo
            self._undo = None

    def to_json(self) -> Dict[str, Any]:
        return {"boot_id": self.boot_id, "clock": self.clock, "values": self.values}

    @classmethod
    def from_json(cls, d: Any, max_interval_s: float = schema.MAX_INTERVAL_S) -> "Baseline":
        b = cls(max_interval_s)
        if isinstance(d, dict) and isinstance(d.get("values"), dict):
            b.boot_id = d.get("boot_id") if isinstance(d.get("boot_id"), str) else None
            clock = d.get("clock")
            b.clock = float(clock) if isinstance(clock, (int, float)) else None
            b.values = {k: v for k, v in d["values"].items()
                        if isinstance(k, str) and isinstance(v, int)}
        return b
