"""The simulator's tracepoint counters (``tp_*``) for the three kernel classes of
``[[kernel]]`` tables: on fragmenting hosts an affected kernel's large-folio share falls
and its costly-order direct compaction attempts per GiB rise from zero; a fixed kernel's
share falls but it never attempts costly direct compaction; an unaffected kernel's
share and attempts do not move. Undeclared kernels are unaffected; a wrong class or an
unknown kernel is rejected naming the key."""
from __future__ import annotations

import textwrap

import numpy as np
import polars as pl
import pytest

from foliowatch.schema import TRACEPOINT_COUNTERS
from foliowatch.simulator import ScenarioError, load_scenario, simulate_frame
from foliowatch.simulator.mechanism import (COMPACTION_SUCCESS, LARGE_REQUEST_SHARE,
                                            ORDER_1M, REQUEST_ORDER)

BASE = "6.1.0-1"
KERNELS = {"affected": "7.0.0-1", "fixed": "7.3.0-1", "unaffected": "6.5.0-1"}


def _fleet(cls: str, kernel: str) -> str:
    return textwrap.dedent(f"""
        [[fleet]]
        name = "db-{cls}"
        role = "postgres"
        workload = "database"
        uptime_days = [5, 30]
          [[fleet.group]]
          hosts = 12
          arch = "arm64"
          fs = "xfs"
          instance_types = ["m7g.16xlarge"]
          kernel = "{BASE}"
        [[rollout]]
        fleet = "db-{cls}"
        kernel_from = "{BASE}"
        kernel_to = "{kernel}"
        start_h = 0.1
        waves = [1.0]
        reboot_spread_min = 5
        [[kernel]]
        version = "{kernel}"
        mechanism = "{cls}"
    """)


SCENARIO = textwrap.dedent("""
    name = "mechanism-classes"
    hours = 5
    interval_s = 60
    seed = 3
    [faults]
    outlier_share = 0.0
""") + "".join(_fleet(c, k) for c, k in KERNELS.items())


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    p = tmp_path_factory.mktemp("sc") / "mechanism.toml"
    p.write_text(SCENARIO)
    frame = pl.concat(list(simulate_frame(load_scenario(p))))
    tp = {c: pl.col(f"counters.{c}") for c in TRACEPOINT_COUNTERS}
    total = sum(tp[f"tp_pagecache_bytes_{b}"] for b in ("order_0", "order_1_3", "order_4_7",
                                                         "order_8_up"))
    return frame.with_columns(
        pl.col("kernel").str.split(".aarch64").list.first().alias("version"),
        (pl.col("gauges.frag_unusable_1m")).alias("frag"),
        total.alias("tp_bytes"),
        (tp["tp_pagecache_bytes_order_4_7"] + tp["tp_pagecache_bytes_order_8_up"]).alias("large"),
        tp["tp_compact_try_costly_direct"].alias("costly"))


def _by_state(df: pl.DataFrame, version: str):
    """(fresh, fragmented) pooled (large-folio share, costly attempts per GiB)."""
    out = []
    for sel in (pl.col("frag") < 0.1, pl.col("frag") > 0.5):
        part = df.filter((pl.col("version") == version) & sel)
        assert part.height >= 50, (version, part.height)
        out.append((part["large"].sum() / part["tp_bytes"].sum(),
                    part["costly"].sum() / part["mount.write_bytes"].sum() * 2 ** 30))
    return out


def test_every_record_carries_the_tracepoint_counters_and_bytes_add_up(records):
    for c in TRACEPOINT_COUNTERS:
        assert records[f"counters.{c}"].null_count() == 0 and records[f"counters.{c}"].min() >= 0
    assert (records["tp_bytes"] == records["mount.write_bytes"]).all()
    assert (records["counters.tp_compact_try_order_0"] == 0).all()   # order 0 never compacts
    assert (records["counters.tp_compact_try_order_4_7"]
            + records["counters.tp_compact_try_order_8_up"] == records["costly"]).all()


def test_affected_kernel_share_falls_and_costly_attempts_rise_from_zero(records):
    (share_fresh, costly_fresh), (share_frag, costly_frag) = _by_state(records,
                                                                       KERNELS["affected"])
    assert share_fresh > 0.8 and share_frag < share_fresh - 0.2
    assert costly_fresh < 0.1 * costly_frag and costly_frag > 500
    # the model's own figures: share and attempts of each fragmented record, in expectation
    part = records.filter((pl.col("version") == KERNELS["affected"]) & (pl.col("frag") > 0.5))
    f = part["frag"].to_numpy()    # observed (within 0.01 of the true value)
    p_fail = f ** (ORDER_1M[4096] / REQUEST_ORDER[4096])
    share = LARGE_REQUEST_SHARE[4096] * (1 - p_fail * (1 - COMPACTION_SUCCESS * (1 - f)))
    got = (part["large"] / part["tp_bytes"]).to_numpy()
    assert np.abs(got - share).max() < 0.03
    tries = (part["mount.write_bytes"].to_numpy() * LARGE_REQUEST_SHARE[4096]
             / (4096 << REQUEST_ORDER[4096]) * p_fail)
    assert abs(part["costly"].sum() / tries.sum() - 1) < 0.05


def test_fixed_kernel_share_falls_but_never_attempts_costly_direct_compaction(records):
    (share_fresh, _), (share_frag, _) = _by_state(records, KERNELS["fixed"])
    assert share_fresh > 0.8 and share_frag < share_fresh - 0.2
    assert records.filter(pl.col("version") == KERNELS["fixed"])["costly"].sum() == 0


def test_unaffected_and_undeclared_kernels_move_neither(records):
    for version in (KERNELS["unaffected"], BASE):
        part = records.filter(pl.col("version") == version)
        assert part.height > 100
        assert part["large"].sum() == 0 and part["costly"].sum() == 0


def test_kernel_table_errors_name_the_key(tmp_path):
    bad = SCENARIO.replace('mechanism = "fixed"', 'mechanism = "patched"')
    p = tmp_path / "bad.toml"
    p.write_text(bad)
    with pytest.raises(ScenarioError, match=r"kernel\[7\.3\.0-1\]\.mechanism: 'patched' is not "
                                            r"one of affected, fixed, unaffected"):
        load_scenario(p)
    p.write_text(SCENARIO + '[[kernel]]\nversion = "7.9.0-1"\nmechanism = "fixed"\n')
    with pytest.raises(ScenarioError, match=r"kernel\[7\.9\.0-1\]\.version: '7\.9\.0-1' runs "
                                            r"nowhere.*fix the spelling"):
        load_scenario(p)
    p.write_text(SCENARIO + '[[kernel]]\nversion = "7.0.0-1"\nmechanism = "fixed"\n'
                            'arch = "arm64"\n')
    with pytest.raises(ScenarioError, match=r"kernel\[7\.0\.0-1\]\.arch: .*already declared"):
        load_scenario(p)


def test_seed_scenario_new_kernel_is_affected_on_arm64_only():
    sc = load_scenario("seed-iomap-arm64-xfs")
    assert sc.mechanism("6.12.40-63", "arm64") == "affected"
    assert sc.mechanism("6.12.40-63", "x86_64") == "unaffected"
    assert sc.mechanism("6.6.87-101", "arm64") == "unaffected"


def test_ground_truth_names_each_cohorts_mechanism():
    from foliowatch.simulator import ground_truth
    cohorts = {(t["arch"], t["page_size"], t["fs"]): t for t in
               ground_truth(load_scenario("seed-iomap-arm64-xfs", hosts=200, hours=12))
               if t["type"] == "cohort"}
    assert cohorts[("arm64", 4096, "xfs")]["mechanism_to"] == "affected"
    assert cohorts[("arm64", 65536, "xfs")]["mechanism_to"] == "affected"
    assert cohorts[("arm64", 4096, "ext4")]["mechanism_to"] == "unaffected"   # small folios
    assert cohorts[("x86_64", 4096, "xfs")]["mechanism_to"] == "unaffected"
    assert {c["mechanism_from"] for c in cohorts.values()} == {"unaffected"}
