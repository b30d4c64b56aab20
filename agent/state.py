"""The agent's small persistent state: the next ``seq`` and the counter baseline.

Stored as JSON in ``<state_dir>/state.json`` and replaced atomically
(``foliowatch.files.atomic_write``), so a crash leaves either the old or the new state,
never a torn one. ``seq`` is reserved here *before* the
sample carrying it is spooled: a crash in between costs a gap in ``seq``, never a reuse.

The per-sample save fsyncs the file but not the directory: if a crash loses the rename,
the previous state (complete, one sample older) comes back, and the agent repairs it
from the spool, whose newest record is always on disk: ``seq`` resumes after that
record, and a baseline older than it is discarded (it would make the next interval
overlap intervals already sent).
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, Optional

from foliowatch.files import atomic_write

STATE_FILE = "state.json"


class AgentState:
    def __init__(self, directory: str):
        self.path = os.path.join(directory, STATE_FILE)
        self.next_seq = 0
        self.host_id: Optional[str] = None
        self.baseline: Dict[str, Any] = {}
        self.last_probe_ts = 0.0   # wall time of the last write probe (none: 0)
        self.baseline_ts = 0.0     # wall time of the reading the baseline holds
        os.makedirs(directory, mode=0o700, exist_ok=True)
        self._load()

    def _load(self) -> None:
        try:
            with open(self.path, "rb") as f:
                d = json.loads(f.read())
        except FileNotFoundError:
            return
        except ValueError as e:
            # Only reachable if someone edited the file: the rename makes torn writes
            # impossible. Refuse rather than restart seq at 0 and collide with old ids.
            raise RuntimeError(f"{self.path}: not valid JSON ({e}); fix or remove it (removing "
                               "restarts seq at 0: only do so with a new agent.host_id)") from None
        seq = d.get("next_seq")
        if isinstance(seq, int) and seq >= 0:
            self.next_seq = seq
        self.host_id = d.get("host_id") if isinstance(d.get("host_id"), str) else None
        self.baseline = d.get("baseline") if isinstance(d.get("baseline"), dict) else {}
        bts = d.get("baseline_ts")
        self.baseline_ts = float(bts) if isinstance(bts, (int, float)) else 0.0
        probe_ts = d.get("last_probe_ts")
        self.last_probe_ts = float(probe_ts) if isinstance(probe_ts, (int, float)) else 0.0

    def save(self) -> None:
        data = json.dumps({"next_seq": self.next_seq, "host_id": self.host_id,
                           "last_probe_ts": self.last_probe_ts,
                           "baseline_ts": self.baseline_ts, "baseline": self.baseline}, separators=(",", ":")).encode()
        atomic_write(self.path, data, fsync_folder=False, mode=0o600)
