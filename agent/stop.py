"""The agent's stop flag: ``threading.Event``'s ``set``/``is_set``/``wait``, with a timed
wait that is one C call.

The sampling thread sleeps on it between ticks, once per interval for the agent's whole
life. ``threading.Event.wait`` is Python: a ``Condition``, a new lock made, appended,
acquired with the timeout and discarded on every call. Here the flag is a lock held
while the flag is clear: ``wait`` is one ``acquire(True, timeout)``, and ``set`` releases
it, so every waiter acquires it in turn and hands it on. From cold caches, with its
wake-up: 70-75 us per wait against Event's 103-104 (3.11), 92-100 against 143-146 (3.9)
(benchmarks/agent_vs_node_exporter.md, fourth session of 2026-12-03).

``set`` may be called from a signal handler (SIGTERM, SIGINT): the handler runs in the
main thread, which an ``acquire`` with a timeout lets run (POSIX), and the ``acquire``
then takes the lock just released. Once set, the flag stays set.
"""

from __future__ import annotations

import threading
from typing import Optional


class StopFlag:
    def __init__(self) -> None:
        self._set = False
        self._clear = threading.Lock()   # held while the flag is clear
        self._clear.acquire()
        self._acquire = self._clear.acquire

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        if self._set:
            return
        self._set = True
        self._hand_on()

    def wait(self, timeout: Optional[float] = None) -> bool:
        """True once the flag is set; False when ``timeout`` seconds passed first. The
        fewest Python steps: this runs once per interval from cold caches (a set flag's
        lock is free, so no test of ``_set`` comes first)."""
        if self._acquire(True, -1 if timeout is None else max(0.0, timeout)):
            self._hand_on()   # to the next waiter
            return True
        return self._set

    def _hand_on(self) -> None:
        try:
            self._clear.release()
        except RuntimeError:   # already released: a second set(), or a waiter's hand-on
            pass
