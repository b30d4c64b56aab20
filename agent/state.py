"""The agent's small persistent state: the counter baseline, the time of the last write
probe, the kernel release last run and since when, and ``next_seq`` as a floor; and where
``seq`` resumes after a stop or a crash.

Stored as JSON in ``<state_dir>/state.json`` and replaced atomically and durably
(``foliowatch.files.atomic_write``), but only when the agent starts, after a write probe
ran, and when it stops cleanly: never per sample (that fsync was a quarter of the
agent's CPU per interval).

``seq`` comes from the spool (``resume_seq``): a sample is accepted when its record is
fsync'd in the spool, and the spool keeps its newest record on disk even once it is
sent (``spool.py``). So ``seq`` resumes right after the newest spooled record: a crash
at any point neither reuses a ``seq`` nor skips one. ``next_seq`` in the file is a floor
for the one case where the spool holds no record (a new spool folder).

The baseline is only kept when it is the reading of the newest spooled record or later
(``baseline_ts``): after a clean stop it is, and the first interval after the restart
spans the downtime; after a crash the file is older than the spool, and the agent takes
a new baseline (the time between the last record and the restart is not reported; no
``seq`` is missing).

``kernel_release`` and ``kernel_since`` say whether this host is in its first hours on a
kernel release it had not run before (``new_kernel_since``), when the write probe runs
more often: the canary wave of a rollout.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, Optional, Tuple

from foliowatch.files import atomic_write

STATE_FILE = "state.json"
SPOOL_DIR = "spool"


class AgentState:
    def __init__(self, directory: str):
        self.path = os.path.join(directory, STATE_FILE)
        self.next_seq = 0
        self.host_id: Optional[str] = None
        self.baseline: Dict[str, Any] = {}
        self.last_probe_ts = 0.0   # wall time of the last write probe (none: 0)
        self.baseline_ts = 0.0     # wall time of the reading the baseline holds
        self.kernel_release: Optional[str] = None   # uname -r when the agent last started
        # wall time this host began running kernel_release after running another one
        # (None: never seen it change)
        self.kernel_since: Optional[float] = None
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
        # absent in files written before the agent kept them: as on a first install
        release = d.get("kernel_release")
        self.kernel_release = release if isinstance(release, str) and release else None
        since = d.get("kernel_since")
        self.kernel_since = float(since) if isinstance(since, (int, float)) else None

    def save(self) -> None:
        data = json.dumps({"next_seq": self.next_seq, "host_id": self.host_id,
                           "last_probe_ts": self.last_probe_ts,
                           "kernel_release": self.kernel_release,
                           "kernel_since": self.kernel_since,
                           "baseline_ts": self.baseline_ts, "baseline": self.baseline},
                          separators=(",", ":")).encode()
        atomic_write(self.path, data, mode=0o600)


def new_kernel_since(stored_release: Optional[str], stored_since: Optional[float],
                     release: str, booted_at: float) -> Tuple[str, Optional[float]]:
    """``(release, since)`` to store, from what the state file holds and the running
    kernel (``labels.running_kernel``). ``since`` is when this host began running a
    release other than the one it ran before: this boot when the release changed (a
    rollback too: that it resolved a regression shows in the probe as well); kept as
    stored when it did not (an agent restart or a reboot into the same release do not
    start it again); ``None`` when no release was recorded (a first install, or a state
    file from before the agent kept one): a fresh install is not a rollout."""
    if stored_release is None:
        return release, None
    if stored_release != release:
        return release, booted_at
    return release, stored_since


def newest_record(newest: Optional[bytes]) -> Optional[Tuple[int, float]]:
    """``(seq, ts)`` of the spool's newest record (``spool.newest_payload``), or ``None``
    when there is none or it cannot be read as a record."""
    if newest is None:
        return None
    try:
        record = json.loads(newest)
        seq, ts = record["seq"], float(record["ts"])
    except (ValueError, KeyError, TypeError):
        return None
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
        return None
    return seq, ts


def resume(state: AgentState, newest: Optional[bytes]) -> bool:
    """Bring ``state`` up to the spool's newest record ``newest``: ``next_seq`` right
    after it (never below the file's floor). Returns whether the stored baseline may be
    used: only if it is the reading of that record or a later one."""
    found = newest_record(newest)
    if found is None:
        return True
    seq, ts = found
    state.next_seq = max(state.next_seq, seq + 1)
    return state.baseline_ts >= ts


def resume_seq(state_dir: str) -> int:
    """The ``seq`` the agent of ``state_dir`` uses next; every ``seq`` below it was given
    to an accepted sample. Read only: safe while the agent runs."""
    from foliowatch.agent.spool import newest_payload
    if not os.path.isdir(state_dir):
        return 0
    state = AgentState(state_dir)
    resume(state, newest_payload(os.path.join(state_dir, SPOOL_DIR)))
    return state.next_seq
