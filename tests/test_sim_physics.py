"""Alternative simulator physics (simulator/physics.py): the default is the model's own
relations; random ones are deterministic per seed, differ from it, and stay in range."""

import numpy as np
import polars as pl

from foliowatch.simulator import load_scenario, simulate_frame
from foliowatch.simulator.physics import DEFAULT, Physics, frag_onset_times


def _frame(physics):
    sc = load_scenario("seed-iomap-arm64-xfs", hosts=60, hours=1, interval_s=60, seed=3)
    sc.physics = physics
    return pl.concat(list(simulate_frame(sc)))


def test_default_physics_is_the_model_without_physics():
    assert _frame(None).equals(_frame(DEFAULT))


def test_random_physics_is_deterministic_and_differs_from_the_default():
    assert Physics.random(5) == Physics.random(5)
    assert len({Physics.random(s).summary() for s in range(20)}) > 10
    a, b = _frame(Physics.random(5)), _frame(None)
    assert a["mount.write_bytes"].mean() != b["mount.write_bytes"].mean()
    for s in range(30):
        f = _frame(Physics.random(s)) if s < 3 else None
        ph = Physics.random(s)
        frag = ph.fragmentation(np.array([0.9]), np.array([1e7]), np.array([3600.0]))
        assert 0.0 < frag[0] < 1.0, ph
        if f is not None:
            share = f["counters.psi_memory_some_us"] / (f["interval_s"] * 1e6)
            assert share.min() >= 0 and share.max() <= 1.0


def test_frag_onset_times_inverts_the_fragmentation_curve():
    ph = Physics(frag_form="hill", frag_shape=2.0)
    fmax, tau = np.array([0.8, 0.5]), np.array([3600.0, 7200.0])
    t = frag_onset_times(ph, fmax, tau, 0.6)
    # hill: 0.8 x^2 / (1 + x^2) = 0.6 at x = sqrt(3); 0.5 never reaches 0.6
    assert abs(t[0] - 3600.0 * np.sqrt(3.0)) < 1.0 and np.isinf(t[1])
