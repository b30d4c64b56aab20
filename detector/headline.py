"""The headline of a regression: its effect in the operator's terms, whatever statistic
decided it.

A record is decided by whichever test is strongest (often a tail or a bad-interval
share: "probe_mib_s (bad_share) +1.000"), which is evidence, not something an operator
can act on. The headline states what the new kernel does to the typical interval:
buffered write throughput (and the write probe where hosts run it) as a ratio
new/baseline with its 95% interval, direct compaction stalls as a ratio, and how many
hosts on each kernel it rests on:

    write throughput 0.76x [0.71, 0.82], direct compaction stalls 3.6x,
    12 canaries vs 1,195 baseline hosts

The ratios are the comparison's ``level`` statistics (each host's median window,
adjusted for memory state and hardware, Hodges-Lehmann shift), reported whether or not
that test alone was significant.
"""

from __future__ import annotations

import math
from typing import Dict, Iterable, Optional

# metric -> words in the headline, in the order shown
HEADLINE_METRICS = {
    "write_mib_s": "write throughput",
    "probe_mib_s": "probe MiB/s",
    "compact_stall_per_s": "direct compaction stalls",
}
# the throughput ratios carry their interval; the stall ratio is the mechanism, shown short
WITH_INTERVAL = ("write_mib_s", "probe_mib_s")


def level_effects(tests: Iterable) -> Dict[str, dict]:
    """The ``level`` tests of a comparison (``cohort.MetricTest``) by metric, as plain
    dicts kept in the record."""
    out = {}
    for t in tests:
        if t.statistic == "level" and t.effect_kind == "ratio":
            out[t.metric] = {"effect": t.effect, "ci_low": t.ci_low, "ci_high": t.ci_high,
                             "p_value": t.p_value, "n_new": t.n_new, "n_base": t.n_base}
    return out


def basis(levels: Dict[str, dict]) -> Optional[dict]:
    """The level test whose hosts the headline counts: the first headline metric measured."""
    return next((levels[m] for m in HEADLINE_METRICS if m in levels and "n_new" in levels[m]), None)


def _ratio(x: float) -> str:
    # two decimals tell 0.76 from 0.75; above 10x a decimal is noise
    return f"{x:.2f}x" if x < 1.995 else f"{x:.1f}x" if x < 9.95 else f"{x:.0f}x"


def _finite(*xs) -> bool:
    return all(isinstance(x, (int, float)) and math.isfinite(x) for x in xs)


def headline(levels: Dict[str, dict], hosts_new: int, hosts_base: int,
             fallback: Optional[dict] = None) -> str:
    """The effect in words. ``levels``: ``level_effects`` of the comparison;
    ``fallback``: the deciding test (metric, statistic, effect, ci_low, ci_high,
    effect_kind), shown when no headline metric was measured (old records, fleets without
    write counters)."""
    parts = []
    # the hosts the ratios rest on (comparable memory states, matched hardware) when known
    b = basis(levels)
    if b:
        hosts_new, hosts_base = int(b["n_new"]), int(b["n_base"])
    for metric, words in HEADLINE_METRICS.items():
        e = levels.get(metric)
        if not e or not _finite(e.get("effect")):
            continue
        text = f"{words} {_ratio(e['effect'])}"
        if metric in WITH_INTERVAL and _finite(e.get("ci_low"), e.get("ci_high")):
            text += f" [{e['ci_low']:.2f}, {e['ci_high']:.2f}]"
        parts.append(text)
    if not parts and fallback:
        f = fallback
        if f.get("effect_kind") == "share_diff":
            parts.append(f"{f['metric']} ({f['statistic']}) {f['effect']:+.0%} of intervals worse")
        elif _finite(f.get("effect")):
            parts.append(f"{f['metric']} ({f['statistic']}) {_ratio(f['effect'])}")
    parts.append(f"{hosts_new:,} {'canary' if hosts_new == 1 else 'canaries'} vs "
                 f"{hosts_base:,} baseline hosts")
    return ", ".join(parts)


def record_headline(record) -> str:
    """The headline of a ``RegressionRecord`` (or its dict form)."""
    r = record if isinstance(record, dict) else vars(record)
    levels = r.get("levels") or {}
    if not levels:
        # older records kept only their significant tests: use the level ratios among them
        levels = {m["metric"]: m for m in r.get("metrics") or []
                  if m.get("statistic") == "level" and m.get("effect_kind") == "ratio"}
    return headline(levels, int(r.get("hosts_new") or 0), int(r.get("hosts_base") or 0),
                    fallback=r)
