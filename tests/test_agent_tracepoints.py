"""The tracepoint collector: its parsers against this kernel's captured tracefs format
files, and its counts on the real kernel (root), checked against ``perf stat`` with the
same filters, on ext4 and on a loop-mounted XFS; without privilege it says it is off
and why while the other collectors keep working."""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from foliowatch.agent.collectors import tracepoints as tp
from foliowatch.agent.config import AgentConfig, TracepointsConfig, load
from foliowatch.agent.deltas import Baseline
from foliowatch.agent.sampler import Sampler

pytestmark = pytest.mark.agent39

MIB = 1 << 20
FIX = Path(__file__).resolve().parent / "fixtures" / "agent" / "x86_64-6.18-4k"
TRACEFS_FIX = FIX / "sys/kernel/tracing"
DEFAULT = tp.parse_buckets(tp.DEFAULT_BUCKETS)


def _formats(root: Path = TRACEFS_FIX):
    out = {}
    for ev in tp.EVENTS:
        f = tp.read_event_format(str(root), ev)
        if f is not None:
            out[ev] = f
    return out


# -- parsers -------------------------------------------------------------------------
def test_buckets_parse_and_reject_gaps_overlaps_and_closed_ends():
    assert [b.name for b in DEFAULT] == ["order_0", "order_1_3", "order_4_7", "order_8_up"]
    assert [b.filter() for b in DEFAULT] == [
        "order == 0", "order >= 1 && order <= 3", "order >= 4 && order <= 7", "order >= 8"]
    assert tp.parse_buckets(["0-3", "4+"]) == [tp.Bucket(0, 3), tp.Bucket(4, None)]
    for bad, msg in ((["1-3", "4+"], "starting at order 0"), (["0", "2+"], "starting at order 1"),
                     (["0", "1-3"], "last range must be open"), (["0", "3-1", "4+"], "ends below"),
                     (["0+", "1+"], "only the last"), (["0", "x"], "not an order range"),
                     ([], "last range must be open")):
        with pytest.raises(ValueError, match=msg):
            tp.parse_buckets(bad)


def test_format_files_give_fields_and_the_kernels_flag_and_status_values():
    f = _formats()
    assert set(f) == set(tp.EVENTS)
    assert f[tp.EV_FILEMAP].fields["order"] == "unsigned char"
    assert f[tp.EV_FILEMAP].fields["s_dev"] == "dev_t"
    assert f[tp.EV_FILEMAP].id == 600
    try_fmt = f[tp.EV_TRY_COMPACT]
    assert try_fmt.fields["gfp_mask"] == "unsigned long"
    assert tp.flag_value(try_fmt.print_fmt, "__GFP_DIRECT_RECLAIM") == 1 << 10
    assert tp.flag_value(try_fmt.print_fmt, "__GFP_NORETRY") == 1 << 16
    assert tp.flag_value(try_fmt.print_fmt, "__GFP_RECLAIM") == (1 << 10) | (1 << 11)
    assert tp.flag_value(try_fmt.print_fmt, "__GFP_NOPE") is None
    assert tp.symbol_value(f[tp.EV_COMPACT_END].print_fmt, "success") == 8
    assert tp.symbol_value(f[tp.EV_COMPACT_END].print_fmt, "deferred") == 2


def test_plan_counts_pagecache_per_order_and_the_rest_per_bucket():
    specs, problems = tp.plan(_formats(), DEFAULT, max_order=9, devices=[(7 << 20) | 3])
    assert problems == []
    by_key = {s.key: s for s in specs}
    assert [k for k in by_key if k.startswith("pagecache_")] == \
        [f"pagecache_order_{o}" for o in range(10)]
    assert by_key["pagecache_order_4"].filter == "(s_dev == 7340035) && order == 4"
    assert by_key["pagecache_order_9"].filter == "(s_dev == 7340035) && order >= 9"
    assert by_key["compact_try_order_4_7"].filter == "order >= 4 && order <= 7"
    assert by_key["compact_try_costly_direct"].filter == "order > 3 && gfp_mask & 1024"
    assert by_key["compact_end_success"].filter == "status == 8"
    assert by_key["direct_reclaim"].filter == ""


def test_plan_names_each_missing_event_and_field_and_keeps_the_rest():
    f = _formats()
    del f[tp.EV_COMPACT_DEFERRED]
    old = f[tp.EV_FILEMAP]
    f[tp.EV_FILEMAP] = old._replace(fields={k: v for k, v in old.fields.items() if k != "order"})
    specs, problems = tp.plan(f, DEFAULT, max_order=9)
    keys = {s.key for s in specs}
    assert not any(k.startswith(("pagecache_", "compact_deferred")) for k in keys)
    assert "compact_try_order_0" in keys and "direct_reclaim" in keys
    assert any("compaction:mm_compaction_deferred: not in this kernel" in p for p in problems)
    assert any("filemap:mm_filemap_add_to_page_cache: no field order" in p for p in problems)


def test_wire_counters_sum_orders_into_buckets_with_exact_bytes():
    counts = {"pagecache_order_0": 5, "pagecache_order_2": 1, "pagecache_order_4": 2,
              "pagecache_order_8": 3, "pagecache_order_9": 1, "compact_try_order_4_7": 7}
    out = tp.wire_counters(counts, DEFAULT, 4096)
    assert out["tp_pagecache_folios_order_0"] == 5
    assert out["tp_pagecache_bytes_order_1_3"] == 4 * 4096
    assert out["tp_pagecache_folios_order_4_7"] == 2
    assert out["tp_pagecache_bytes_order_4_7"] == 2 * 16 * 4096
    assert out["tp_pagecache_folios_order_8_up"] == 4
    assert out["tp_pagecache_bytes_order_8_up"] == 3 * MIB + 2 * MIB
    assert out["tp_compact_try_order_4_7"] == 7


def test_kernel_dev_matches_the_tracepoints_encoding():
    assert tp.kernel_dev("254:0") == 254 << 20
    assert tp.kernel_dev("7:3") == (7 << 20) | 3


def test_config_defaults_off_and_names_bad_keys():
    assert AgentConfig().tracepoints.enabled is False
    _cfg, problems = load(environ={"FOLIOWATCH_AGENT_TRACEPOINTS_ORDER_BUCKETS": "0,2+",
                                   "FOLIOWATCH_AGENT_TRACEPOINTS_PAGECACHE_DEVICES": "some",
                                   "FOLIOWATCH_AGENT_TRACEPOINTS_TRACEFS": "tracing"})
    assert any(p.startswith("config agent.tracepoints.order_buckets: '2+'") for p in problems)
    assert any(p.startswith("config agent.tracepoints.pagecache_devices: expected") for p in problems)
    assert any(p.startswith("config agent.tracepoints.tracefs: expected an absolute path")
               for p in problems)
