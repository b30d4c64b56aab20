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


SEP = "\x1f"   # joins a section and a counter's name in the state file


class Baseline:
    """The last reading's cumulative counters by section (the sampler's: its counters,
    and each watched mount's), ``{section: {name: value}}``."""

    def __init__(self, max_interval_s: float = schema.MAX_INTERVAL_S):
        self.max_interval_s = max_interval_s
        self.boot_id: Optional[str] = None
        self.clock: Optional[float] = None     # CLOCK_BOOTTIME seconds of the last reading
        self.values: Dict[str, Dict[str, int]] = {}
        self.resets = 0                        # counters rebased because they went backwards
        self._undo: Optional[Tuple[Dict[str, Dict[str, int]], Optional[float], Optional[str],
                                   int]] = None

    def advance(self, boot_id: str, clock: float, current: Dict[str, Dict[str, int]]
                ) -> Optional[Tuple[float, Dict[str, Dict[str, int]]]]:
        """Take a reading; return ``(interval_s, deltas by section)`` or ``None`` for a
        new baseline. The reading's dicts are kept as they are: the caller must not
        change them afterwards."""
        prev, prev_clock, prev_boot = self.values, self.clock, self.boot_id
        self._undo = (prev, prev_clock, prev_boot, self.resets)
        self.values, self.clock, self.boot_id = dict(current), clock, boot_id
        if prev_boot != boot_id or prev_clock is None:
            return None
        interval = clock - prev_clock
        if not 0.0 < interval <= self.max_interval_s:
            return None
        deltas: Dict[str, Dict[str, int]] = {}
        for section, now in current.items():
            before = prev.get(section, {})
            d = {name: value - was for name, value in now.items()
                 if (was := before.get(name)) is not None and value >= was}
            if len(d) < len(now):   # new counters (no delta yet) or ones that went back
                self.resets += sum(1 for name, value in now.items()
                                   if name in before and value < before[name])
            deltas[section] = d
        return interval, deltas

    def undo(self) -> None:
        """Forget the last reading (its record could not be kept): the next interval
        starts where this one did."""
        if self._undo is not None:
            self.values, self.clock, self.boot_id, self.resets = self._undo
            self._undo = None

    def to_json(self) -> Dict[str, Any]:
        return {"boot_id": self.boot_id, "clock": self.clock,
                "values": {f"{section}{SEP}{name}": value
                           for section, values in self.values.items()
                           for name, value in values.items()}}

    @classmethod
    def from_json(cls, d: Any, max_interval_s: float = schema.MAX_INTERVAL_S) -> "Baseline":
        b = cls(max_interval_s)
        if isinstance(d, dict) and isinstance(d.get("values"), dict):
            b.boot_id = d.get("boot_id") if isinstance(d.get("boot_id"), str) else None
            clock = d.get("clock")
            b.clock = float(clock) if isinstance(clock, (int, float)) else None
            for key, value in d["values"].items():
                if isinstance(key, str) and SEP in key and isinstance(value, int):
                    section, _, name = key.rpartition(SEP)
                    b.values.setdefault(section, {})[name] = value
        return b
