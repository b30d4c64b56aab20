"""Known answers for the like-with-like references that exist from a canary's first
hour: each host's own before and after under the monotone assumption (``before_after``),
and the few baseline hosts rebooted into the same fresh-memory states
(``fresh_matched``, which only corroborates)."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import polars as pl

from foliowatch.detector import evidence
from foliowatch.detector.analysis import DetectorConfig, analyze
from foliowatch.detector.before_after import BeforeAfterPolicy, before_after, before_buckets
from foliowatch.detector.cohort import Comparison, MetricTest
from foliowatch.detector.frames import LOG_FLOOR
from test_detector_helpers import T0, fleet_frame, with_probe

REBOOT = 180           # minutes of old-kernel history before the canaries reboot
AS_OF = REBOOT + 35    # 30 minutes into the new kernel: canaries' memory still fresh


def _canaries(probe_factor: float, frag_penalty: float = 0.15) -> pl.DataFrame:
    # no baseline host rebooted recently (fresh_share 0): every baseline host sits at
    # fragmentation 0.55-0.9, where the canaries arrive only hours after their reboot
    df = fleet_frame(n_hosts=200, minutes=AS_OF + 1, reboot_minute=REBOOT, canary_hosts=10,
                     fresh_share=0.0, seed=3)
    return with_probe(df, probe_factor, frag_penalty)


def _flags(df: pl.DataFrame):
    a = analyze(df, as_of=T0 + timedelta(minutes=AS_OF), config=DetectorConfig(changepoints=False))
    return a, [(r.metric, r.statistic, r.status) for r in a.candidates]


def test_a_canary_on_fresh_memory_writing_below_its_own_old_kernel_level_is_suspected():
    a, flags = _flags(_canaries(probe_factor=0.8))
    # the comparison between hosts sees too few canaries in memory states the baseline
    # hosts occupy to flag anything
    (c,) = a.comparisons
    assert c.n_new_compared < evidence.EvidencePolicy().min_hosts
    assert ("probe_mib_s", "before_after", "suspected") in flags
    t = next(t for t in c.tests if t.metric == "probe_mib_s" and t.statistic == "before_after")
    # 0.8x, less the reboot bonus the canaries' fresher memory gives them (about 6 %)
    assert 0.8 < t.effect < 0.9 and t.n_new == 10


def test_the_reboot_bonus_alone_raises_nothing_even_when_large():
    for penalty in (0.15, 0.35):
        a, flags = _flags(_canaries(probe_factor=1.0, frag_penalty=penalty))
        assert flags == []
        t = next(t for t in a.comparisons[0].tests if t.statistic == "before_after"
                 and t.metric == "probe_mib_s")
        assert t.effect > 1.0 and t.p_value > 0.5


def test_a_new_kernel_host_counts_only_while_its_memory_is_fresher_than_before():
    policy = BeforeAfterPolicy()
    at = [T0 + timedelta(minutes=m) for m in range(0, 100, 5)]

    def rows(host, kernel, frag, y, minutes):
        return [{"window_start": t, "host_id": host, "kernel": kernel, "probe_mib_s": y,
                 "frag_unusable_1m": frag} for t in at if minutes[0] <= (t - T0).seconds // 60 < minutes[1]]
    before = rows("canary-fresh", "old", 0.7, 100.0, (0, 60)) + rows("canary-stale", "old", 0.5, 100.0, (0, 60))
    after = (rows("canary-fresh", "new", 0.3, 90.0, (60, 100))
             + rows("canary-stale", "new", 0.55, 90.0, (60, 100)))
    baseline = [rows(f"b{i}", "old", 0.7, 100.0, (0, 100)) for i in range(5)]
    df = pl.DataFrame(before + after + [r for b in baseline for r in b])
    ref = df.filter(pl.col("kernel") == "old")
    buckets = before_buckets(ref, "probe_mib_s", "old", T0 + timedelta(minutes=60), policy)
    h = before_after(df.filter(pl.col("window_start") >= T0 + timedelta(minutes=60)),
                     "probe_mib_s", "old", "new", buckets, policy)
    new = h.filter(pl.col("kernel") == "new")
    # the stale canary's memory is more fragmented than before: the bound says nothing there
    assert new["host_id"].to_list() == ["canary-fresh"]
    floor = LOG_FLOOR["probe_mib_s"]
    assert abs(float(new["before_after"][0]) - np.log((90.0 + floor) / (100.0 + floor))) < 1e-9
    assert h.filter(pl.col("kernel") == "old").height == 5


def _comparison(*tests, confounds=()):
    return Comparison(("db", "primary", "arm64", 4096, "xfs"), "6.12.0", "6.18.0", 8, 400,
                      60, T0, T0 + timedelta(hours=1), T0, tests=list(tests),
                      n_new_compared=0, confounds=list(confounds))


def _test(metric, effect, statistic, p=1e-9, n_base=400):
    return MetricTest(metric, statistic, 8, n_base, p, effect, effect * 0.9, effect * 1.1,
                      "ratio", False, q_value=p * 10)


def test_the_fresh_state_reference_corroborates_a_throughput_drop_and_never_raises_alone():
    policy = evidence.EvidencePolicy()
    stalls = _test("compact_stall_per_s", 8.0, "fresh_matched", p=0.006, n_base=3)
    assert evidence.judge(_comparison(stalls), policy, 408).status is None
    # even significant on its own, it stays corroboration
    assert evidence.judge(_comparison(_test("compact_stall_per_s", 8.0, "fresh_matched")),
                          policy, 408).status is None
    drop = _test("probe_mib_s", 0.85, "before_after")
    assert evidence.judge(_comparison(drop), policy, 408).status == "suspected"
    j = evidence.judge(_comparison(drop, stalls), policy, 408)
    assert j.status == "confirmed" and "on 8 new-kernel hosts" in j.reasons[-1]


def test_a_hosts_own_before_and_after_still_counts_beside_a_confound_between_hosts():
    remnant = ["only 5 baseline hosts remain beside 40 new-kernel hosts"]
    c = _comparison(_test("probe_mib_s", 0.85, "before_after"), confounds=remnant)
    assert evidence.judge(c, evidence.EvidencePolicy(), 408).status == "suspected"
