"""Render the per-model dashboard's panels to a PNG with matplotlib, from the same PromQL.

For the README and docs/observability.md, and for anyone without a Grafana at hand:

    python -m kiban_dev.chartgen.render --prometheus http://127.0.0.1:9090 \
        --model llama-8b --out docs/img/model-dashboard.png --range 15m

Queries come from kiban_dev.chartgen.dashboards.model_panels(), with Grafana's variables
replaced ($model_name, $__rate_interval, $__range), and are run as range queries.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from kiban_dev.chartgen.dashboards import PanelSpec, expand_variables, model_panels

UNIT_LABELS = {"s": "seconds", "reqps": "requests/s", "percentunit": "fraction", "short": "", "none": ""}


@dataclass(frozen=True)
class Series:
    legend: str
    times: tuple[float, ...]
    values: tuple[float, ...]
    dashed: bool = False


class QueryError(RuntimeError):
    """Prometheus refused a query; the message holds the query and its answer."""


def parse_duration(text: str) -> float:
    """'15m' -> 900.0; ValueError naming the text otherwise."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)", text.strip())
    if not match:
        raise ValueError(f"--range: expected a duration like 30s, 15m or 2h, got {text!r}")
    return float(match[1]) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}[match[2]]


def legend_for(template: str, labels: Mapping[str, str]) -> str:
    """Grafana's legendFormat: {{label}} replaced by the series' label value."""
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m[1], ""), template) or json.dumps(dict(labels))


def query_range(prometheus_url: str, expr: str, start: float, end: float, step: float) -> list[dict]:
    """Prometheus /api/v1/query_range; the `result` list of a matrix."""
    params = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": step})
    try:
        with urllib.request.urlopen(f"{prometheus_url.rstrip('/')}/api/v1/query_range?{params}", timeout=30) as response:
            body = json.load(response)
    except urllib.error.HTTPError as exc:
        raise QueryError(f"{expr}: {exc.code} {exc.read().decode(errors='replace')}") from None
    if body.get("status") != "success":
        raise QueryError(f"{expr}: {body}")
    return body["data"]["result"]


def panel_series(spec: PanelSpec, results: Sequence[Sequence[dict]]) -> list[Series]:
    """Matrix results of a panel's queries (same order) -> plottable series (pure)."""
    series: list[Series] = []
    for query, result in zip(spec.queries, results, strict=True):
        for item in result:
            legend = legend_for(query.legend, item.get("metric", {}))
            points = [(float(t), float(v)) for t, v in item.get("values", []) if math.isfinite(float(v))]
            if not points:
                continue
            series.append(Series(
                legend=legend,
                times=tuple(t for t, _ in points),
                values=tuple(v for _, v in points),
                dashed=any(legend.startswith(prefix) for prefix in spec.dashed),
            ))
    return series


def collect(prometheus_url: str, model_name: str, *, range_s: float, end: float | None = None,
            rate_interval: str = "1m", step: float | None = None) -> list[tuple[PanelSpec, list[Series]]]:
    """Every per-model panel with its series over [end - range_s, end]."""
    end = time.time() if end is None else end
    start = end - range_s
    step = step or max(1.0, range_s / 200)
    variables = {"model_name": model_name, "__rate_interval": rate_interval, "__range": f"{int(range_s)}s",
                 "datasource": ""}
    panels = []
    for spec in model_panels():
        results = [query_range(prometheus_url, expand_variables(q.expr, variables), start, end, step)
                   for q in spec.queries]
        panels.append((spec, panel_series(spec, results)))
    return panels


def plot(panels: Sequence[tuple[PanelSpec, list[Series]]], title: str, out: Path) -> Path:
    """Draw panels two to a row, Grafana's order, into a PNG at `out`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt
    from datetime import datetime

    columns = 2
    rows = math.ceil(len(panels) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(15, 3.3 * rows), squeeze=False)
    for index, (spec, series) in enumerate(panels):
        ax = axes[index // columns][index % columns]
        ax.set_title(spec.title, fontsize=11, loc="left")
        for item in series:
            ax.plot([datetime.fromtimestamp(t) for t in item.times], item.values, label=item.legend,
                    linestyle="--" if item.dashed else "-", linewidth=1.6)
        if not series:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="grey")
        ax.set_ylabel(UNIT_LABELS.get(spec.unit, spec.unit), fontsize=9)
        if spec.min_value is not None or spec.max_value is not None:
            ax.set_ylim(spec.min_value, spec.max_value if spec.max_value is None else spec.max_value * 1.05)
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S"))
        ax.tick_params(labelsize=8)
        if series:
            ax.legend(fontsize=8, loc="upper left", ncol=2)
    for index in range(len(panels), rows * columns):
        axes[index // columns][index % columns].axis("off")
    fig.suptitle(title, fontsize=14, x=0.01, ha="left")
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def render_model_dashboard(prometheus_url: str, model_name: str, out: Path, *, range_s: float = 900,
                           rate_interval: str = "1m", end: float | None = None) -> dict[str, int]:
    """Query, draw and save; returns panel title -> number of series drawn."""
    panels = collect(prometheus_url, model_name, range_s=range_s, end=end, rate_interval=rate_interval)
    plot(panels, f"Kiban / Model: {model_name}", out)
    return {spec.title: len(series) for spec, series in panels}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prometheus", required=True, help="Prometheus base URL")
    parser.add_argument("--model", required=True, help="served model name (vLLM's model_name label)")
    parser.add_argument("--out", type=Path, required=True, help="PNG to write")
    parser.add_argument("--range", default="15m", help="time range to draw, e.g. 15m")
    parser.add_argument("--rate-interval", default="1m", help="what $__rate_interval stands for")
    args = parser.parse_args(argv)
    try:
        counts = render_model_dashboard(args.prometheus, args.model, args.out, range_s=parse_duration(args.range),
                                        rate_interval=args.rate_interval)
    except (ValueError, QueryError, urllib.error.URLError) as exc:
        print(f"render: {exc}")
        return 2
    empty = [title for title, n in counts.items() if n == 0]
    print(f"wrote {args.out} ({len(counts)} panels{', empty: ' + ', '.join(empty) if empty else ''})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
