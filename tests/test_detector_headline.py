"""The headline: every regression record states its effect in the operator's terms
(write throughput ratio with interval, compaction stall ratio, hosts), whatever statistic
decided it; the same words reach /metrics, annotations and old state files."""

from __future__ import annotations

import json
from datetime import timedelta

from foliowatch.detector import outputs
from foliowatch.detector.analysis import DetectorConfig, analyze
from foliowatch.detector.headline import headline
from foliowatch.detector.records import RegressionState, Transition
from test_detector_helpers import T0, fleet_frame


def test_headline_words_and_numbers():
    levels = {"write_mib_s": {"effect": 0.7612, "ci_low": 0.7081, "ci_high": 0.8234,
                              "n_new": 12, "n_base": 1195},
              "compact_stall_per_s": {"effect": 3.61, "ci_low": 2.9, "ci_high": 4.4,
                                      "n_new": 12, "n_base": 1195}}
    assert headline(levels, 99, 99) == ("write throughput 0.76x [0.71, 0.82], direct compaction "
                                        "stalls 3.6x, 12 canaries vs 1,195 baseline hosts")
    levels["probe_mib_s"] = {"effect": 0.7, "ci_low": 0.65, "ci_high": 0.74, "n_new": 3, "n_base": 40}
    assert "probe MiB/s 0.70x [0.65, 0.74]" in headline(levels, 1, 1)
    # nothing measured in the user's terms: the deciding test, in words
    assert headline({}, 4, 800, fallback={"metric": "probe_mib_s", "statistic": "bad_share",
                                          "effect": 1.0, "effect_kind": "share_diff"}) == \
        "probe_mib_s (bad_share) +100% of intervals worse, 4 canaries vs 800 baseline hosts"


def test_every_record_leads_with_the_level_ratios_even_when_a_tail_decided(tmp_path):
    df = fleet_frame(minutes=200, write_factor=0.75, stall_factor=4.0)
    a = analyze(df, as_of=T0 + timedelta(minutes=199), config=DetectorConfig(changepoints=False))
    assert a.candidates
    rec = a.candidates[0]
    w = rec.levels["write_mib_s"]
    assert w["ci_low"] <= 0.75 <= w["ci_high"] or abs(w["effect"] - 0.75) < 0.05, w
    assert rec.levels["compact_stall_per_s"]["effect"] > 2.0
    assert rec.headline.startswith(f"write throughput {w['effect']:.2f}x [")
    assert "direct compaction stalls" in rec.headline and "canaries vs" in rec.headline
    # the Kafka message carries it
    assert json.loads(rec.to_json())["headline"] == rec.headline
    # the annotation leads with it; the deciding statistic follows as evidence
    state = RegressionState(str(tmp_path / "s.json"))
    transitions = state.update(a.candidates, a.rolled_back, a.as_of)
    state.save()
    text = outputs.grafana_annotations(transitions)[0]["text"]
    assert rec.headline in text and text.index(rec.headline) < text.index("Evidence:")
    # /metrics: info with the headline, ratios with their bounds, hosts per kernel
    page = outputs.metrics_text(str(tmp_path / "s.json"), {"wall": 1.0, "as_of": 2.0}).decode()
    assert f'headline="{rec.headline}"' in page
    for bound in ("estimate", "low", "high"):
        assert f'foliowatch_regression_write_ratio{{' in page and f'bound="{bound}"' in page
    assert "foliowatch_regression_compact_stall_ratio{" in page
    assert 'foliowatch_regression_compared_hosts{' in page and 'kernel="baseline"' in page
    assert "foliowatch_detector_evaluated_until_timestamp_seconds 2.0" in page


def test_old_state_files_without_levels_read_with_a_headline(tmp_path):
    df = fleet_frame(minutes=200, write_factor=0.75, stall_factor=4.0)
    a = analyze(df, as_of=T0 + timedelta(minutes=199), config=DetectorConfig(changepoints=False))
    old = json.loads(a.candidates[0].to_json())
    del old["levels"], old["headline"]
    path = tmp_path / "old.json"
    path.write_text(json.dumps({"version": 1, "records": [old], "streak": {}}))
    rec = next(iter(RegressionState(str(path)).records.values()))
    assert rec.headline.endswith(f"{old['hosts_new']} canaries vs {old['hosts_base']} baseline hosts")
    levels = [m for m in old["metrics"] if m["statistic"] == "level" and m["metric"] == "write_mib_s"]
    if levels:      # its significant level tests give the ratios in the user's terms
        assert rec.headline.startswith(f"write throughput {levels[0]['effect']:.2f}x [")
    else:
        assert rec.metric in rec.headline
