"""Generated Grafana dashboards: valid against Grafana's schema (the SDK's models), well formed,
and selecting vLLM series by `model_name`. Their queries run against a real Prometheus in
tests/integration/test_dashboards_queries.py."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import Dashboard

from kiban_dev.chartgen import dashboards

ROOT = Path(__file__).resolve().parents[3]
ALL = dashboards.dashboards()


def _sync_module():
    spec = importlib.util.spec_from_file_location("chart_sync", ROOT / "hack" / "chart" / "sync.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", sorted(ALL))
def test_dashboard_round_trips_through_grafanas_schema_models(name):
    model = ALL[name]
    parsed = Dashboard.from_json(model)
    assert json.loads(json.dumps(parsed, cls=JSONEncoder)) == model


@pytest.mark.parametrize("name", sorted(ALL))
def test_panels_have_unique_ids_fit_the_grid_and_use_the_datasource_variable(name):
    panels = ALL[name]["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"], panel["title"]
        assert len({t["refId"] for t in panel["targets"]}) == len(panel["targets"])


def test_model_dashboard_is_templated_on_model_name_and_every_query_uses_it():
    model = ALL["kiban-model.json"]
    variables = {v["name"]: v for v in model["templating"]["list"]}
    assert variables["model_name"]["type"] == "query"
    assert "label_values(" in variables["model_name"]["query"]["query"]
    for title, expr in dashboards.panel_queries(model):
        assert 'model_name="$model_name"' in expr, title


@pytest.mark.parametrize("name", sorted(ALL))
def test_no_query_filters_on_a_model_label(name):
    for title, expr in dashboards.panel_queries(ALL[name]):
        assert not re.search(r"[{,]\s*model\s*[=!~]", expr), f"{title}: vLLM's label is model_name: {expr}"


def test_fleet_dashboard_counts_gpus_as_replicas_times_gpus_per_replica():
    exprs = [expr for _, expr in dashboards.panel_queries(ALL["kiban-fleet.json"])]
    assert "sum(kiban_current_replicas * kiban_gpus_per_replica)" in exprs


def test_expand_variables_names_a_missing_variable():
    assert dashboards.expand_variables('x{a="$model_name"}[${__range}]', {"model_name": "m", "__range": "5m"}) == 'x{a="m"}[5m]'
    with pytest.raises(KeyError, match="__rate_interval"):
        dashboards.expand_variables("rate(x[$__rate_interval])", {})


def test_panel_spec_rejects_an_unknown_kind():
    spec = dashboards.PanelSpec("odd", (dashboards.Query("up"),), kind="piechart")
    with pytest.raises(ValueError, match="piechart"):
        dashboards._panel(spec, 1)


def test_chart_generated_files_are_in_sync():
    assert _sync_module().stale() == [], "run: python hack/chart/sync.py"


def test_sync_check_reports_a_stale_dashboard(tmp_path):
    sync = _sync_module()
    (tmp_path / "crds").mkdir()
    (tmp_path / "crds" / "x.yaml").write_text("kind: CustomResourceDefinition\n")
    sync.write(tmp_path)
    assert sync.stale(tmp_path) == []
    dashboard = tmp_path / "charts" / "kiban" / "files" / "dashboards" / "kiban-fleet.json"
    dashboard.write_text("{}")
    (tmp_path / "charts" / "kiban" / "crds" / "old.yaml").write_text("")
    assert sync.stale(tmp_path) == [
        "outdated charts/kiban/files/dashboards/kiban-fleet.json",
        "leftover charts/kiban/crds/old.yaml",
    ]
