"""Pure parts of the PNG renderer: legends, durations, matrix results to series, plotting."""

from __future__ import annotations

import pytest

from kiban_dev.chartgen import render
from kiban_dev.chartgen.dashboards import PanelSpec, Query


def test_legend_fills_labels_like_grafana():
    assert render.legend_for("{{model_name}} {{percentile}}", {"model_name": "m", "percentile": "p95"}) == "m p95"
    assert render.legend_for("limited by {{reason}}", {}) == "limited by "


@pytest.mark.parametrize(("text", "seconds"), [("30s", 30), ("15m", 900), ("2h", 7200), ("500ms", 0.5)])
def test_parse_duration(text, seconds):
    assert render.parse_duration(text) == seconds


def test_parse_duration_names_the_flag():
    with pytest.raises(ValueError, match="--range"):
        render.parse_duration("fifteen minutes")


def test_panel_series_drops_nan_points_and_marks_dashed_reference_lines():
    spec = PanelSpec("TTFT", (Query("a", "p95"), Query("b", "SLO {{percentile}}")), dashed=("SLO",))
    results = [
        [{"metric": {}, "values": [[1, "0.2"], [2, "NaN"], [3, "0.3"]]}],
        [{"metric": {"percentile": "p95"}, "values": [[1, "0.5"], [3, "0.5"]]},
         {"metric": {"percentile": "p99"}, "values": [[1, "NaN"]]}],
    ]
    series = render.panel_series(spec, results)
    assert [(s.legend, s.times, s.values, s.dashed) for s in series] == [
        ("p95", (1.0, 3.0), (0.2, 0.3), False),
        ("SLO p95", (1.0, 3.0), (0.5, 0.5), True),
    ]


def test_plot_writes_a_png_including_empty_panels(tmp_path):
    spec = PanelSpec("one", (Query("a", "x"),))
    drawn = [(spec, [render.Series("x", (1.0, 2.0), (1.0, 2.0))]), (PanelSpec("empty", (Query("b"),)), [])]
    out = render.plot(drawn, "title", tmp_path / "p.png")
    assert out.read_bytes()[:4] == b"\x89PNG"
