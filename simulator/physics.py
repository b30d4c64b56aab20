"""Alternative physics for the simulator: other functional forms and parameters for the
relations ``model.py`` steps, so that a detector can be examined on fleets it was not
written against.

``DEFAULT`` is the physics described in ``model.py``'s docstring, bit for bit (the
default simulation draws the same random numbers and computes the same values).
``Physics.random(seed)`` draws a physics from wide ranges, one choice per relation:

=====================  ====================================================================
relation               forms (parameters drawn per run)
=====================  ====================================================================
fragmentation growth   ``exp``: frag_max (1 - e^-x); ``hill``: frag_max x^a / (1 + x^a);
                       ``delayed``: nothing for a delay, then exponential; x = uptime/tau,
                       with frag_max and tau scaled
write vs fragmentation penalty 0-35 % at full fragmentation (the reboot bonus)
compaction stalls      ``power``: (frag/0.8)^k; ``exp``: e^(k (frag - 0.8)); load^a
reclaim                (c + frag)^k or e^(k frag) shapes; load^a
PSI memory some        idle share x load^b, plus per-stall and per-reclaim costs, linear
                       or saturating (1 - e^-x)
instance type          write speed hw^g (spread widened or narrowed); stalls and reclaim
                       x hw^-s (newer hardware stalls less or more)
diurnal shape          ``sine``, ``peaked`` (a sharp daytime peak), ``double`` (two peaks),
                       ``flat`` (a tenth of the amplitude); amplitude scaled
noise family           per-interval load noise: ``t3`` (the default), ``gaussian``,
                       ``heavy`` (t with 1.5-3 df), ``ar1`` (autocorrelated, rho
                       0.5-0.97); its scale; the per-host wander's scale and time constant
=====================  ====================================================================

The injected kernel changes keep their meaning (a ratio between like hosts once memory
is fragmented past ``frag_full``): the physics changes everything around them.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Dict

import numpy as np

FRAG_FORMS = ("exp", "hill", "delayed")
STALL_FORMS = ("power", "exp")
RECLAIM_FORMS = ("power", "exp")
DIURNAL_SHAPES = ("sine", "peaked", "double", "flat")
NOISE_FAMILIES = ("t3", "gaussian", "heavy", "ar1")
PSI_FORMS = ("linear", "saturating")


@dataclass(frozen=True)
class Physics:
    name: str = "default"
    # fragmentation: frag = frag_max * frag_max_scale * F(uptime / (tau * tau_scale))
    frag_form: str = "exp"
    frag_shape: float = 1.0          # hill exponent a; delayed: delay in units of tau
    frag_max_scale: float = 1.0
    frag_tau_scale: float = 1.0
    write_frag_penalty: float = 0.15
    # compaction stalls: stall_base * load^stall_load_exp * curve(frag)
    stall_form: str = "power"
    stall_exponent: float = 3.0
    stall_load_exp: float = 1.0
    # direct reclaim: alloc_base * load^reclaim_load_exp * curve(frag)
    reclaim_form: str = "power"
    reclaim_offset: float = 0.15
    reclaim_exponent: float = 2.0
    reclaim_load_exp: float = 1.0
    # PSI memory some, microseconds per microsecond of interval
    psi_form: str = "linear"
    psi_idle: float = 0.002
    psi_idle_load_exp: float = 1.0
    psi_per_stall_us: float = 3000.0
    psi_per_alloc_us: float = 5000.0
    # instance type: write speed hw^hw_write_exp, stalls and reclaim hw^-hw_stall_exp
    hw_write_exp: float = 1.0
    hw_stall_exp: float = 0.0
    # load
    diurnal_shape: str = "sine"
    diurnal_scale: float = 1.0
    noise_family: str = "t3"
    noise_sd: float = 0.06
    noise_df: float = 3.0            # heavy: degrees of freedom
    noise_rho: float = 0.0           # ar1: per-interval autocorrelation
    wander_sd: float = 0.12
    wander_tau_s: float = 1800.0

    @classmethod
    def random(cls, seed: int) -> "Physics":
        """A physics drawn from wide ranges (deterministic for ``seed``)."""
        r = np.random.default_rng([int(seed), 0xF1510])
        pick = lambda xs: str(xs[int(r.integers(0, len(xs)))])  # noqa: E731
        u = lambda lo, hi: float(r.uniform(lo, hi))  # noqa: E731
        frag_form = pick(FRAG_FORMS)
        noise = pick(NOISE_FAMILIES)
        return cls(
            name=f"random-{seed}",
            frag_form=frag_form,
            frag_shape=u(1.2, 3.0) if frag_form == "hill" else u(0.1, 0.8) if frag_form == "delayed" else 1.0,
            frag_max_scale=u(0.8, 1.08), frag_tau_scale=math.exp(u(math.log(0.3), math.log(3.0))),
            write_frag_penalty=u(0.0, 0.35),
            stall_form=pick(STALL_FORMS), stall_exponent=u(1.5, 5.0), stall_load_exp=u(0.5, 2.0),
            reclaim_form=pick(RECLAIM_FORMS), reclaim_offset=u(0.02, 0.4),
            reclaim_exponent=u(1.0, 4.0), reclaim_load_exp=u(0.5, 2.0),
            psi_form=pick(PSI_FORMS), psi_idle=math.exp(u(math.log(5e-4), math.log(0.02))),
            psi_idle_load_exp=u(0.5, 2.0), psi_per_stall_us=math.exp(u(math.log(500.0), math.log(20000.0))),
            psi_per_alloc_us=math.exp(u(math.log(500.0), math.log(20000.0))),
            hw_write_exp=u(0.3, 2.5), hw_stall_exp=u(-1.5, 2.0),
            diurnal_shape=pick(DIURNAL_SHAPES), diurnal_scale=u(0.4, 1.6),
            noise_family=noise, noise_sd=u(0.02, 0.15), noise_df=u(1.5, 3.0),
            noise_rho=u(0.5, 0.97) if noise == "ar1" else 0.0,
            wander_sd=u(0.03, 0.3), wander_tau_s=math.exp(u(math.log(600.0), math.log(6 * 3600.0))),
        )

    def to_dict(self) -> Dict[str, object]:
        return asdict(self)

    def summary(self) -> str:
        """One line: the forms chosen (for tables)."""
        return (f"frag {self.frag_form}, stalls {self.stall_form}^{self.stall_exponent:.1f}, "
                f"reclaim {self.reclaim_form}, psi {self.psi_form}, hw^{self.hw_write_exp:.1f}, "
                f"diurnal {self.diurnal_shape}, noise {self.noise_family}")

    # ------------------------------------------------------------------ relations
    def fragmentation(self, frag_max: np.ndarray, uptime_s: np.ndarray,
                      tau_s: np.ndarray) -> np.ndarray:
        if self.frag_max_scale == 1.0 and self.frag_tau_scale == 1.0 and self.frag_form == "exp":
            return frag_max * (1.0 - np.exp(-uptime_s / tau_s))
        fmax = np.minimum(frag_max * self.frag_max_scale, 0.97)
        x = uptime_s / (tau_s * self.frag_tau_scale)
        if self.frag_form == "hill":
            xa = x ** self.frag_shape
            return fmax * xa / (1.0 + xa)
        if self.frag_form == "delayed":
            return fmax * (1.0 - np.exp(-np.maximum(x - self.frag_shape, 0.0)))
        return fmax * (1.0 - np.exp(-x))

    def diurnal(self, hour: np.ndarray, amplitude: np.ndarray) -> np.ndarray:
        phase = (hour - 9.0) * (2.0 * math.pi / 24.0)
        if self.diurnal_shape == "sine" and self.diurnal_scale == 1.0:
            return 1.0 + amplitude * np.sin(phase)
        a = amplitude * self.diurnal_scale
        if self.diurnal_shape == "peaked":
            # a sharp daytime peak over a long flat night, mean near 1
            s = np.exp(3.0 * (np.sin(phase) - 1.0))
            return np.maximum(1.0 + a * (3.0 * s - 0.6), 0.05)
        if self.diurnal_shape == "double":
            return np.maximum(1.0 + a * 0.5 * (np.sin(phase) + np.sin(2.0 * phase + 1.0)), 0.05)
        if self.diurnal_shape == "flat":
            return 1.0 + 0.1 * a * np.sin(phase)
        return np.maximum(1.0 + a * np.sin(phase), 0.05)

    def interval_noise(self, rng: np.random.Generator, n: int,
                       state: Dict[str, np.ndarray]) -> np.ndarray:
        """Multiplicative per-interval load noise; ``state`` carries the AR(1) term."""
        if self.noise_family == "t3" and self.noise_sd == 0.06:
            return np.exp(0.06 * np.clip(rng.standard_t(3, n), -15, 15))
        if self.noise_family == "gaussian":
            e = rng.standard_normal(n)
        elif self.noise_family == "heavy":
            # scaled so that the interquartile range matches a unit normal's
            e = np.clip(rng.standard_t(self.noise_df, n), -60, 60) * 0.6
        elif self.noise_family == "ar1":
            prev = state.get("ar1")
            if prev is None or prev.shape[0] != n:
                prev = rng.standard_normal(n)
            rho = self.noise_rho
            e = rho * prev + math.sqrt(1.0 - rho * rho) * rng.standard_normal(n)
            state["ar1"] = e
        else:
            e = np.clip(rng.standard_t(3, n), -15, 15)
        return np.exp(self.noise_sd * e)

    def stall_curve(self, frag: np.ndarray) -> np.ndarray:
        if self.stall_form == "exp":
            return np.exp(self.stall_exponent * (frag - 0.8))
        return (frag / 0.8) ** self.stall_exponent

    def reclaim_curve(self, frag: np.ndarray) -> np.ndarray:
        if self.reclaim_form == "exp":
            return np.exp(self.reclaim_exponent * (frag - 0.85)) * (1.0 + self.reclaim_offset) ** 2
        return (self.reclaim_offset + frag) ** self.reclaim_exponent

    def load_power(self, load: np.ndarray, exponent: float) -> np.ndarray:
        return load if exponent == 1.0 else load ** exponent

    def psi_some_us(self, span_us: np.ndarray, load: np.ndarray, stalls: np.ndarray,
                    allocs: np.ndarray, frag: np.ndarray) -> np.ndarray:
        busy = (span_us * self.psi_idle * self.load_power(load, self.psi_idle_load_exp)
                + stalls * self.psi_per_stall_us * (1.0 + frag) + allocs * self.psi_per_alloc_us)
        if self.psi_form == "saturating":
            return span_us * (1.0 - np.exp(-busy / span_us))
        return np.minimum(busy, span_us)

    def hw_write(self, hw_speed: np.ndarray) -> np.ndarray:
        return hw_speed if self.hw_write_exp == 1.0 else hw_speed ** self.hw_write_exp

    def hw_stall(self, hw_speed: np.ndarray) -> np.ndarray:
        return np.ones_like(hw_speed) if self.hw_stall_exp == 0.0 else hw_speed ** (-self.hw_stall_exp)


DEFAULT = Physics()


def frag_onset_times(physics: Physics, frag_max: np.ndarray, tau_s: np.ndarray,
                     level: float, horizon_s: float = 30 * 86400.0) -> np.ndarray:
    """Uptime (s) at which each host's fragmentation first reaches ``level`` under
    ``physics`` (inf: never within ``horizon_s``). Fragmentation only grows with uptime,
    so a bisection per host suffices."""
    lo = np.zeros_like(frag_max, dtype=float)
    hi = np.full_like(frag_max, horizon_s, dtype=float)
    reach = physics.fragmentation(frag_max, hi, tau_s) >= level
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        above = physics.fragmentation(frag_max, mid, tau_s) >= level
        hi = np.where(above, mid, hi)
        lo = np.where(above, lo, mid)
    return np.where(reach, hi, np.inf)
