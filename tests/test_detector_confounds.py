"""Known answers for the like-with-like rules: a late wave compared against the few
hosts the rollout left behind raises nothing and names the confound; compaction or
reclaim alone raise a suspicion only when far beyond what memory state and load leave
behind; pressure (PSI) never alone; the verdict's "not enough evidence" says what is
missing in one line."""

from __future__ import annotations

from datetime import timedelta

import polars as pl

from foliowatch.detector import evidence, gate
from foliowatch.detector.analysis import DetectorConfig, analyze
from foliowatch.detector.cohort import Comparison, MetricTest
from test_detector_helpers import T0, fleet_frame


def _late_wave():
    """50 of 60 hosts on the new kernel (no kernel effect); the 10 left behind are a
    lighter tenant: faster writes, a third of the compaction and reclaim."""
    df = fleet_frame(n_hosts=60, canary_hosts=50, minutes=200, seed=2)
    moved = df.filter(pl.col("kernel") == "6.18.0")["host_id"].unique().implode()
    remnant = ~pl.col("host_id").is_in(moved)
    return df.with_columns(
        pl.when(remnant).then(pl.col(c) * f).otherwise(pl.col(c)).alias(c)
        for c, f in (("write_mib_s", 1.3), ("compact_stall_per_s", 0.3),
                     ("allocstall_per_s", 0.3), ("pgscan_direct_per_s", 0.3)))


def test_a_late_wave_against_the_remnant_is_not_suspected_and_the_confound_is_named():
    a = analyze(_late_wave(), as_of=T0 + timedelta(minutes=199),
                config=DetectorConfig(changepoints=False))
    assert a.candidates == []
    (c,) = a.comparisons
    assert len(c.confounds) == 1 and c.confounds[0].startswith(
        "only 10 baseline hosts remain beside 50 new-kernel hosts")
    # the known answer is not vacuous: between hosts, the remnant makes the new kernel
    # look worse, and without the confound this comparison would be flagged
    c.confounds = []
    assert evidence.judge(c, evidence.EvidencePolicy(), 60).status is not None


def _comparison(*tests, confounds=()):
    return Comparison(("db", "primary", "arm64", 4096, "xfs"), "6.12.0", "6.18.0", 40, 400,
                      120, T0, T0 + timedelta(hours=2), T0, tests=list(tests),
                      n_new_compared=40, confounds=list(confounds))


def _test(metric, effect, statistic="level", kind="ratio"):
    return MetricTest(metric, statistic, 40, 400, 1e-9, effect, effect * 0.9, effect * 1.1,
                      kind, True, q_value=1e-8)


def test_compaction_alone_raises_a_suspicion_only_far_beyond_the_like_with_like_floor():
    policy = evidence.EvidencePolicy()
    assert evidence.judge(_comparison(_test("compact_stall_per_s", 1.3)), policy, 440).status is None
    assert evidence.judge(_comparison(_test("allocstall_per_s", 0.2, "bad_share", "share_diff")),
                          policy, 440).status is None
    assert evidence.judge(_comparison(_test("compact_stall_per_s", 3.0)), policy, 440).status == "suspected"


def test_pressure_never_raises_a_suspicion_alone_but_supports_a_throughput_drop():
    policy = evidence.EvidencePolicy()
    assert evidence.judge(_comparison(_test("psi_memory_some_share", 4.0)), policy, 440).status is None
    j = evidence.judge(_comparison(_test("write_mib_s", 0.8), _test("psi_memory_some_share", 1.5)),
                       policy, 440)
    assert j.status == "confirmed"


def test_a_confound_leaves_only_a_hosts_own_before_and_after():
    policy = evidence.EvidencePolicy()
    remnant = ["only 5 baseline hosts remain beside 40 new-kernel hosts"]
    c = _comparison(_test("write_mib_s", 0.8), _test("compact_stall_per_s", 3.0), confounds=remnant)
    assert evidence.judge(c, policy, 440).status is None
    c = _comparison(_test("probe_mib_s", 0.8, "within_host"), confounds=remnant)
    assert evidence.judge(c, policy, 440).status == "suspected"


def test_not_enough_evidence_names_what_is_missing_in_one_line():
    c = _comparison(confounds=["only 5 baseline hosts remain beside 40 new-kernel hosts"])
    c.level_sd = {"write_mib_s": 0.1}
    c.frag_base_median, c.new_hosts_at_fleet_frag = 0.7, 2
    gv = gate.judge_group(c, 0.001, gate.GatePolicy())
    d = gate.Decision("db", "6.18.0", gate.EXIT_WAIT, [gv], [])
    line = d.missing()
    assert "\n" not in line and line.startswith("missing: ")
    assert "4.0 more hours" in line                      # 2 h observed, 6 h needed
    assert "fragmentation reached on 2/5 hosts" in line
    assert "confound: only 5 baseline hosts remain" in line
    assert gate.Decision("db", "6.18.0", gate.EXIT_SAFE, [], []).missing() == ""
