"""The agent's stop flag: Event's behaviour, a timed wait that is one C call, and a stop
by signal that ends the wait."""

from __future__ import annotations

import functools
import os
import signal
import sys
import threading

import pytest

from foliowatch.agent import main as agent_main
from foliowatch.agent.stop import StopFlag

pytestmark = pytest.mark.agent39


def python_calls_during(fn) -> list:
    """Names of the Python functions (not C ones) that run inside ``fn()``."""
    calls = []

    def profile(frame, event, arg):
        if event == "call":
            calls.append(frame.f_code.co_name)
    sys.setprofile(profile)
    try:
        fn()
    finally:
        sys.setprofile(None)
    return calls


def test_the_wait_between_ticks_runs_no_python_but_its_own():
    """The sampling thread sleeps on the stop flag once per interval; its timed wait is
    one lock acquire (threading.Event's runs a Condition in Python: a new lock per call)."""
    stop = agent_main._stop_event()
    calls = python_calls_during(functools.partial(stop.wait, 0.01))
    assert calls == ["wait"], calls


def test_wait_times_out_unset_and_returns_at_once_once_set():
    stop = StopFlag()
    assert stop.wait(0.01) is False and not stop.is_set()
    assert stop.wait(0) is False
    stop.set()
    stop.set()                                 # a second stop is no error
    assert stop.is_set()
    assert stop.wait(0) is True and stop.wait(None) is True and stop.wait(5) is True


def test_set_from_another_thread_wakes_every_waiter():
    stop = StopFlag()
    woke = []
    waiters = [threading.Thread(target=lambda: woke.append(stop.wait(600)))
               for _ in range(3)]
    for w in waiters:
        w.start()
    stop.set()
    for w in waiters:
        w.join(30)
    assert woke == [True, True, True]
    assert stop.wait(0) is True                # still set after the waiters took it


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(),
                    reason="signal handlers run in the main thread")
def test_sigterm_ends_the_wait_of_the_main_thread():
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        stop = agent_main._stop_event()
        killer = threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGTERM))
        killer.start()
        assert stop.wait(600) is True          # not the 600 s: the handler set it
        killer.join()
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)
