"""Mechanism evidence: a cohort whose new kernel attempts costly-order direct compaction
(tracepoint counters) that its baseline never shows is suspected on that alone, never
confirmed on it alone, and not suspected when the baseline shows it too; beside a
throughput drop it is the joint evidence that confirms, and a drop too small to be
significant across the run confirms it when each of at least two canaries shows it
against its own time on the old kernel (a drop between a few hosts and the baseline
does not)."""
from __future__ import annotations

from datetime import timedelta

import numpy as np
import polars as pl

from foliowatch.detector import evidence
from foliowatch.detector.analysis import DetectorConfig, analyze
from foliowatch.detector.cohort import Comparison, MetricTest
from foliowatch.detector.evidence import EvidencePolicy
from foliowatch.detector.mechanism import (ATTEMPTS, METRIC, WRITTEN, CostlyCompaction,
                                           MechanismPolicy)
from test_detector_helpers import T0, fleet_frame, with_probe

NEW = "6.18.0"


def with_tracepoints(df: pl.DataFrame, base_share: float = 0.0, seed: int = 1) -> pl.DataFrame:
    """The host windows with the tracepoint sums: new-kernel hosts attempt costly direct
    compaction in proportion to their fragmentation (about 200 a window when fully
    fragmented); baseline hosts never, except a ``base_share`` of them that do as much."""
    rng = np.random.default_rng(seed)
    hosts = df["host_id"].unique().sort()
    showing_base = set(hosts.sample(fraction=base_share, seed=seed).to_list()) if base_share else set()
    on = ((df["kernel"] == NEW) | df["host_id"].is_in(list(showing_base))).to_numpy()
    lam = np.where(on, 200.0 * df["frag_unusable_1m"].to_numpy() ** 2, 0.0)
    return df.with_columns(pl.Series(ATTEMPTS, rng.poisson(lam).astype(float)),
                           (pl.col("write_mib_s") * 60.0 * (1 << 20)).alias(WRITTEN))


def analyse(df: pl.DataFrame, minute: int = 149):
    return analyze(df, as_of=T0 + timedelta(minutes=minute),
                   config=DetectorConfig(changepoints=False))


def test_costly_compaction_the_baseline_never_shows_is_suspected_on_that_alone_never_confirmed():
    plain = fleet_frame(minutes=150)            # no throughput or stall effect at all
    assert analyse(plain).candidates == []
    df = with_tracepoints(plain)
    a = analyse(df)
    assert len(a.candidates) == 1
    r = a.candidates[0]
    assert (r.kernel_to, r.metric, r.statistic) == (NEW, METRIC, "hosts_showing")
    # mechanism alone never confirms, however many hosts and windows it rests on
    assert r.status == "suspected" and r.windows >= 15 and r.hosts_new >= 3
    assert any("costly-order direct compaction" in x and "mechanism alone" in x for x in r.reasons)
    assert any("confirmation needs" in x for x in r.reasons)
    assert "costly direct compaction" in r.headline
    # the known answer: every canary shows it, no baseline host does
    e = a.comparisons[0].costly_compaction
    since = df.filter(pl.col("kernel") == NEW)["window_start"].min()
    recent = df.filter((pl.col("window_start") >= since)
                       & (pl.col("window_start") <= T0 + timedelta(minutes=149)))
    new = recent.filter(pl.col("kernel") == NEW)
    assert (e.new_showing, e.new_reporting) == (10, 10)
    base_hosts = recent.filter(pl.col("kernel") != NEW)["host_id"].n_unique()  # canaries too,
    assert e.base_showing == 0 and e.base_reporting == base_hosts        # before their reboot
    assert abs(e.new_per_gib - new[ATTEMPTS].sum() / new[WRITTEN].sum() * 2 ** 30) < 1e-9
    assert e.base_per_gib == 0.0


def test_not_suspected_when_the_baseline_shows_costly_compaction_too():
    a = analyse(with_tracepoints(fleet_frame(minutes=150), base_share=0.2))
    assert a.candidates == []
    e = a.comparisons[0].costly_compaction
    assert e.new_showing == 10 and e.base_showing > 0.1 * e.base_reporting


def test_with_a_throughput_drop_it_is_the_joint_evidence_that_confirms():
    # throughput down, vmstat stalls unchanged: joint evidence only from the tracepoints
    df = fleet_frame(minutes=150, write_factor=0.75)
    assert analyse(df).candidates[0].status == "suspected"
    r = analyse(with_tracepoints(df)).candidates[0]
    assert r.status == "confirmed" and r.metric == "write_mib_s"
    assert any(f"worse together with {METRIC}" in x for x in r.reasons)


def test_a_drop_below_each_canarys_own_old_kernel_level_corroborates_it_and_confirms():
    # the probe 0.86x on the new kernel, less the fresh canaries' reboot bonus: each
    # host's own before and after 0.95x at p 0.0004, q 0.008 across the run (nothing
    # without tracepoints); with the mechanism on the same cohort it confirms
    df = with_probe(fleet_frame(n_hosts=200, minutes=216, reboot_minute=180, canary_hosts=10,
                                fresh_share=0.0, seed=3), probe_factor=0.86)
    assert analyse(df, 215).candidates == []
    r = analyse(with_tracepoints(df), 215).candidates[0]
    assert (r.status, r.metric, r.statistic) == ("confirmed", "probe_mib_s", "before_after")
    assert any("on 10 new-kernel hosts" in x and "corroborating the mechanism" in x
               for x in r.reasons)
    assert any("costly-order direct compaction" in x for x in r.reasons)


def test_a_drop_between_hosts_on_a_few_canaries_does_not_corroborate_it():
    # 3 canaries writing 0.7x, 2 of them in the baseline's memory states: p 0.0008
    # between hosts, but two hosts against the baseline are a draw from the fleet's
    # host-to-host spread (a kernel without any cost gave 0.66x at p 0.005)
    df = with_tracepoints(fleet_frame(minutes=150, write_factor=0.7, canary_hosts=3))
    a = analyse(df)
    write = next(t for t in a.comparisons[0].tests
                 if (t.metric, t.statistic) == ("write_mib_s", "level"))
    assert write.n_new == 2 and write.p_value <= 0.001 and write.worse_by() > 0.2
    r = a.candidates[0]
    assert (r.status, r.metric) == ("suspected", METRIC)
    assert any("mechanism alone" in x for x in r.reasons)


def test_corroboration_needs_two_hosts_own_before_and_after_worse_enough():
    policy = EvidencePolicy()

    def corroborates(statistic="before_after", n_new=2, p=0.0005, effect=0.95):
        t = MetricTest("probe_mib_s", statistic, n_new, 400, p, effect, effect, effect,
                       "ratio", adjusted=True)
        c = Comparison(("db", "primary", "arm64", 4096, "xfs"), "old", "new", 10, 400, 30,
                       None, None, None, tests=[t])
        return evidence.corroborating_throughput(c, policy) == [t]
    assert corroborates() and corroborates("within_host")
    assert not corroborates(n_new=1)                  # one host: its disk and neighbours
    assert not corroborates(p=0.002)                  # above MechanismPolicy.corroborating_p
    assert not corroborates(effect=0.995)             # below the smallest effect worth an alert
    assert not corroborates("level")                  # between hosts
    assert not corroborates("fresh_matched")          # only ever corroborates a significant drop


def test_policy_thresholds():
    policy = MechanismPolicy()

    def shows(new_showing, base_showing, base_reporting=100):
        return policy.shows(CostlyCompaction(8, new_showing, base_reporting, base_showing,
                                             500.0, 0.0, 30, 1e-6))
    assert shows(3, 0) and shows(3, 1)            # one stray baseline host in a hundred
    assert not shows(2, 0)                        # fewer than 3 new-kernel hosts
    assert not shows(3, 2)                        # the baseline shows it
    assert not shows(3, 0, base_reporting=9)      # too few baseline hosts to say "never"
    assert not policy.shows(None)                 # no host reports the counter
