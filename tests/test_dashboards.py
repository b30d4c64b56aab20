"""The dashboards as code: the committed JSON is what the code generates, it survives a
round trip through grafana-foundation-sdk's typed models, and each dashboard has what
the operators were promised (variables, units, thresholds, the panels by name)."""

from __future__ import annotations

import json

import pytest
from grafana_foundation_sdk.cog import plugins
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import dashboard as mdash
from grafana_foundation_sdk.models import prometheus as mprom

from foliowatch.dashboards import config, generate, queries
from foliowatch.shell import cli

COMMITTED = {name: json.loads((generate.GENERATED_DIR / name).read_text())
             for name in generate.DASHBOARDS}


def _panels(d: dict):
    for p in d["panels"]:
        if p["type"] != "row":
            yield p


def test_committed_json_equals_what_the_code_generates():
    texts = generate.texts()
    assert sorted(texts) == sorted(p.name for p in generate.GENERATED_DIR.glob("*.json"))
    for name, text in texts.items():
        assert (generate.GENERATED_DIR / name).read_text() == text, (
            f"dashboards/generated/{name} is stale: run `foliowatch dashboards generate`")
    assert cli.main(["dashboards", "generate", "--check"]) == 0


def test_generate_check_fails_on_a_hand_edited_file(tmp_path, capsys):
    assert cli.main(["dashboards", "generate", "--output", str(tmp_path)]) == 0
    assert cli.main(["dashboards", "generate", "--output", str(tmp_path), "--check"]) == 0
    p = tmp_path / "health.json"
    p.write_text(p.read_text().replace('"cps"', '"short"', 1))
    capsys.readouterr()
    assert cli.main(["dashboards", "generate", "--output", str(tmp_path), "--check"]) == 1
    assert "health.json: differs from the code" in capsys.readouterr().err


@pytest.mark.parametrize("name", sorted(COMMITTED))
def test_json_round_trips_through_the_sdk_models_without_loss(name):
    plugins.register_default_plugins()
    original = COMMITTED[name]
    model = mdash.Dashboard.from_json(original)
    # decoded into the typed models, not kept as opaque dicts
    for p in model.panels:
        if p.type_val == "row":
            assert isinstance(p, mdash.RowPanel)
            continue
        assert p.targets and all(isinstance(t, mprom.Dataquery) for t in p.targets), p.title
        assert not isinstance(p.options, dict), (p.title, p.type_val)
    for v in model.templating.list_val:
        assert isinstance(v, mdash.VariableModel)
    again = json.loads(json.dumps(model, cls=JSONEncoder))
    assert again == original


def test_every_dashboard_has_the_cohort_variables_and_a_unit_on_every_panel():
    for name, d in COMMITTED.items():
        names = [v["name"] for v in d["templating"]["list"]]
        assert names == ["fleet", "arch", "fs", "kernel"], name
        for v in d["templating"]["list"]:
            assert v["includeAll"] and v["allValue"] == ".*" and v["multi"]
            assert v["datasource"] == {"type": "prometheus", "uid": config.DATASOURCE_UID}
        for p in _panels(d):
            assert p["datasource"]["uid"] == config.DATASOURCE_UID, p["title"]
            if p["type"] != "table":
                assert p["fieldConfig"]["defaults"].get("unit"), (name, p["title"])
            for t in p["targets"]:
                assert t["datasource"]["uid"] == config.DATASOURCE_UID
                queries.concrete(t["expr"])      # only known variables


def _panel(dashboard: str, title_start: str) -> dict:
    found = [p for p in _panels(COMMITTED[dashboard]) if p["title"].startswith(title_start)]
    assert len(found) == 1, [p["title"] for p in _panels(COMMITTED[dashboard])]
    return found[0]


def _steps(p: dict):
    return [(s["value"], s["color"]) for s in p["fieldConfig"]["defaults"]["thresholds"]["steps"]]


def test_thresholds_come_from_the_one_config():
    t = config.THRESHOLDS
    ratio = _panel("kernel-rollout.json", "Write throughput, new kernel / baseline")
    assert _steps(ratio) == [(None, "red"), (t.write_ratio_bad, "orange"), (t.write_ratio_warn, "green")]
    frag = _panel("write-health.json", "Fragmentation")
    assert _steps(frag) == [(None, "green"), (t.frag_warn, "orange"), (t.frag_bad, "red")]
    assert frag["fieldConfig"]["defaults"]["unit"] == "percentunit"
    silent = _panel("health.json", "Agents silent")
    assert f"> bool {t.agent_silent_s:g}" in silent["targets"][0]["expr"]
    assert str(t.agent_silent_intervals) in silent["title"]
    stale = _panel("health.json", "Detector last run")
    assert _steps(stale)[1:] == [(t.detector_stale_warn_s, "orange"), (t.detector_stale_bad_s, "red")]
    assert stale["fieldConfig"]["defaults"]["unit"] == "s"


def test_the_rollout_dashboard_shows_regressions_with_their_headline_and_the_verdict():
    table = _panel("kernel-rollout.json", "Open regressions")
    assert table["type"] == "table"
    expr = table["targets"][0]["expr"]
    assert expr.startswith("max by (fleet, role, arch, page_size, fs, kernel_from, kernel_to, headline, status)")
    assert "foliowatch_regression_info" in expr and 'kernel_to=~"$kernel"' in expr
    organize = [t for t in table["transformations"] if t["id"] == "organize"][0]["options"]
    assert organize["renameByName"]["headline"] == "Effect"
    verdict = _panel("kernel-rollout.json", "Rollout verdict")
    shown = verdict["fieldConfig"]["defaults"]["mappings"][0]["options"]
    assert {k: v["text"] for k, v in shown.items()} == {"0": "safe", "1": "regression", "2": "wait"}
    hosts = _panel("kernel-rollout.json", "Hosts per kernel per fleet")
    assert hosts["targets"][0]["expr"].startswith("sum by (fleet, kernel) (foliowatch_pipeline_cohort_hosts{")


def test_the_write_health_dashboard_annotates_regressions():
    d = COMMITTED["write-health.json"]
    ann = d["annotations"]["list"]
    stored = [a for a in ann if a["datasource"]["type"] == "grafana"]
    assert stored and stored[0]["target"]["tags"] == config.ANNOTATION_TAGS
    live = [a for a in ann if a.get("expr")]
    assert live and "foliowatch_regression_open" in live[0]["expr"]
    # the push posts annotations with the tags the dashboards filter on
    from foliowatch.detector.outputs import grafana_annotations  # noqa: F401
    legends = {p["title"]: p["targets"][0]["legendFormat"] for p in _panels(d)}
    for title, legend in legends.items():
        for label in ("kernel", "arch", "page_size", "fs"):
            assert "{{%s}}" % label in legend, title


def test_concrete_replaces_variables_and_refuses_unknown_ones():
    expr = 'sum(rate(x{fleet=~"$fleet",arch=~"${arch}"}[$__rate_interval]))'
    assert queries.concrete(expr, {"fleet": "payments-db"}, rate_interval="30s") == \
        'sum(rate(x{fleet=~"payments-db",arch=~".*"}[30s]))'
    with pytest.raises(ValueError, match=r"\$region"):
        queries.concrete('x{region=~"$region"}')


def test_provisioning_files_name_the_datasource_and_folder_the_dashboards_use():
    import yaml
    root = generate.GENERATED_DIR.parents[1] / "deploy" / "grafana" / "provisioning"
    ds = yaml.safe_load((root / "datasources" / "foliowatch.yaml").read_text())
    (source,) = ds["datasources"]
    assert (source["uid"], source["type"]) == (config.DATASOURCE_UID, config.DATASOURCE_TYPE)
    prov = yaml.safe_load((root / "dashboards" / "foliowatch.yaml").read_text())
    (provider,) = prov["providers"]
    assert provider["type"] == "file" and provider["folderUid"] == config.FOLDER_UID
    assert provider["allowUiUpdates"] is False


def test_render_names_an_unreachable_prometheus_in_one_line(tmp_path, capsys):
    from foliowatch.shell.services import free_port
    url = f"http://127.0.0.1:{free_port()}"
    assert cli.main(["dashboards", "render", "--prometheus", url, "--out",
                     str(tmp_path / "x.png"), "--start", "0", "--end", "60"]) == 2
    err = capsys.readouterr().err
    assert f"Prometheus at {url}: cannot reach it" in err and err.count("\n") == 1
    assert not (tmp_path / "x.png").exists()
