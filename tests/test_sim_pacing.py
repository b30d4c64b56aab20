"""The one pacing rule (``simulator.outputs.Pacer``) that the simulator's ``--realtime``
and the demo share: history before the start goes at once, then slices wait for their
simulated time divided by the speed; a stop event cuts a wait short."""

import threading

import numpy as np
import pytest

from foliowatch.simulator import outputs


class FakeClock:
    """Wall time that only moves when something sleeps or waits."""

    def __init__(self):
        self.now = 1000.0
        self.waits = []

    def monotonic(self):
        return self.now

    def sleep(self, seconds):
        assert seconds > 0, "a negative or zero sleep means the clock was read twice"
        self.waits.append(seconds)
        self.now += seconds


@pytest.fixture
def clock(monkeypatch):
    c = FakeClock()
    monkeypatch.setattr(outputs.time, "monotonic", c.monotonic)
    monkeypatch.setattr(outputs.time, "sleep", c.sleep)
    return c


def test_history_goes_at_once_then_each_slice_waits_for_its_time(clock):
    emit = np.array([0.0, 30.0, 59.0, 100.0, 100.5, 160.0, 220.0])
    pacer = outputs.Pacer(sim_start=100.0, speed=60.0, step=60.0)
    sent = []
    for lo, hi in pacer.slices(emit):
        sent.append((lo, hi, clock.now - 1000.0))
    # the first minute (history) without a wait; from 100 s on, one simulated minute a
    # wall second
    assert sent == [(0, 3, 0.0), (3, 5, 0.0), (5, 6, 1.0), (6, 7, 2.0)]


def test_the_anchor_holds_across_calls(clock):
    pacer = outputs.Pacer(sim_start=0.0, speed=10.0, step=1.0)
    first = [(lo, hi, clock.now) for lo, hi in pacer.slices(np.array([0.0, 5.0]))]
    second = [(lo, hi, clock.now) for lo, hi in pacer.slices(np.array([20.0]))]
    assert [t - 1000.0 for *_, t in first] == [0.0, 0.5]
    assert [t - 1000.0 for *_, t in second] == [2.0]


def test_a_stop_cuts_the_wait_short():
    stop = threading.Event()
    pacer = outputs.Pacer(sim_start=0.0, speed=1.0, step=1.0, stop=stop)
    slices = pacer.slices(np.array([0.0, 3600.0]))
    assert next(slices) == (0, 1)
    threading.Timer(0.2, stop.set).start()
    assert next(slices) == (1, 2)       # yielded after the stop, not an hour later
    assert stop.is_set()


def test_speed_must_be_positive():
    with pytest.raises(ValueError, match="speed: must be > 0, got 0"):
        outputs.Pacer(sim_start=0.0, speed=0.0)
