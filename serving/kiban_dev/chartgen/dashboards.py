"""Grafana dashboards for Kiban, built with Grafana's own Python SDK (grafana-foundation-sdk).

Two dashboards:
- fleet overview (`kiban-fleet`): models, replicas, GPUs in use, GPU-hours, SLO attainment per
  model, and the operator's own health;
- per model (`kiban-model`, variable `model_name`): arrival rate, TTFT and ITL percentiles
  against the SLO, queue and running requests, KV-cache usage, desired vs actual replicas with
  the reasons a decision was capped, predicted vs observed latency, drift scores, and the engine
  as learned online (fitted step times against the datasheet prior with their sd, the capacity
  that moves, the learned cold start).

Each panel is first written as a `PanelSpec` (title, unit, PromQL queries) so the same queries
feed the Grafana JSON, the integration test that runs every query against a real Prometheus,
and render.py's PNG. vLLM series are selected with `model_name` (vLLM's label; `model` would
match nothing) and joined to the operator's kiban_* series `on (model_name)`.
SLO attainment reads the chart's recording rules (kiban:ttft_slo_errors:ratio_rate*, see rules.py).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from grafana_foundation_sdk.builders import common as common_builder
from grafana_foundation_sdk.builders import dashboard as dashboard_builder
from grafana_foundation_sdk.builders import prometheus, stat, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as dashboard_model

DATASOURCE_VARIABLE = "datasource"
MODEL_VARIABLE = "model_name"
FLEET_UID = "kiban-fleet"
MODEL_UID = "kiban-model"
TAGS = ["kiban", "vllm"]
DATASOURCE = dashboard_model.DataSourceRef(type_val="prometheus", uid=f"${{{DATASOURCE_VARIABLE}}}")

M = f'model_name="${MODEL_VARIABLE}"'  # the per-model selector, vLLM's label
ITL_BUCKETS = '{__name__=~"vllm:inter_token_latency_seconds_bucket|vllm:time_per_output_token_seconds_bucket", %s}'
KV_CACHE = '{__name__=~"vllm:kv_cache_usage_perc|vllm:gpu_cache_usage_perc", %s}'


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str = ""


@dataclass(frozen=True)
class PanelSpec:
    """One panel: what it shows and the PromQL behind it; `kind` is timeseries or stat."""

    title: str
    queries: tuple[Query, ...]
    unit: str = "short"
    kind: str = "timeseries"
    description: str = ""
    width: int = 12
    height: int = 8
    dashed: tuple[str, ...] = field(default=())  # legend prefixes drawn as dashed reference lines
    min_value: float | None = None
    max_value: float | None = None


def _quantiles(metric_buckets: str, label: str) -> tuple[Query, ...]:
    return tuple(
        Query(f"histogram_quantile({q}, sum by (le) (rate({metric_buckets}[$__rate_interval])))", f"{label} p{int(q * 100)}")
        for q in (0.5, 0.95, 0.99)
    )


def fleet_panels() -> list[PanelSpec]:
    """The fleet overview's panels, top to bottom."""
    gpus = "kiban_current_replicas * kiban_gpus_per_replica"
    return [
        PanelSpec("Models", (Query("count(max by (namespace, foundationmodel) (kiban_current_replicas))", "models"),),
                  kind="stat", width=4, height=4, description="FoundationModels the operator reports on."),
        PanelSpec("Replicas (ready / current)",
                  (Query("sum(kiban_ready_replicas)", "ready"), Query("sum(kiban_current_replicas)", "current")),
                  kind="stat", width=5, height=4),
        PanelSpec("GPUs in use", (Query(f"sum({gpus})", "GPUs"),), kind="stat", width=5, height=4,
                  description="Sum over models of replicas x GPUs per replica."),
        PanelSpec("GPU-hours (time range)",
                  (Query(f"sum_over_time(sum({gpus})[$__range:1m]) / 60", "GPU-hours"),),
                  kind="stat", width=5, height=4, unit="none",
                  description="GPUs in use integrated over the dashboard's time range, at one-minute steps."),
        PanelSpec("Reconcile errors /s", (Query('sum(rate(kiban_reconcile_total{result="error"}[$__rate_interval]))', "errors"),),
                  kind="stat", width=5, height=4, unit="reqps"),
        PanelSpec("SLO attainment per model (1h)",
                  (Query("1 - kiban:ttft_slo_errors:ratio_rate1h", "{{model_name}} {{percentile}}"),),
                  unit="percentunit", width=12, min_value=0, max_value=1,
                  description="Share of requests whose TTFT fell in the vLLM bucket at the model's SLO threshold, "
                              "over the last hour (recording rules of the chart's PrometheusRule)."),
        PanelSpec("GPUs in use per model",
                  (Query(f"sum by (namespace, model_name) ({gpus})", "{{namespace}}/{{model_name}}"),), width=12),
        PanelSpec("Replicas per model: desired vs current",
                  (Query("sum by (model_name) (kiban_desired_replicas)", "{{model_name}} desired"),
                   Query("sum by (model_name) (kiban_current_replicas)", "{{model_name}} current")), width=12),
        PanelSpec("Requests/s per model",
                  (Query("sum by (model_name) (rate(vllm:request_success_total[$__rate_interval]))", "{{model_name}}"),),
                  unit="reqps", width=12),
        PanelSpec("TTFT p95 per model vs SLO",
                  (Query("histogram_quantile(0.95, sum by (model_name, le) "
                         "(rate(vllm:time_to_first_token_seconds_bucket[$__rate_interval])))", "{{model_name}} p95"),
                   Query("max by (model_name, percentile) (kiban_slo_ttft_seconds)", "SLO {{model_name}} {{percentile}}")),
                  unit="s", width=12, dashed=("SLO",)),
        PanelSpec("Capped or blind models",
                  (Query("max by (model_name, reason) (kiban_scaling_limited)", "{{model_name}} limited by {{reason}}"),
                   Query("min by (model_name) (kiban_metrics_available)", "{{model_name}} metrics available")),
                  width=12, min_value=0, max_value=1),
        PanelSpec("Gateway requests/s per model",
                  (Query("sum by (model_name, code) (rate(kiban_gateway_requests_total[$__rate_interval]))",
                         "{{model_name}} {{code}}"),), unit="reqps", width=12,
                  description="Requests the Kiban gateway answered, by HTTP status."),
        PanelSpec("Gateway: held and in flight",
                  (Query("sum by (model_name) (kiban_gateway_queued_requests)", "{{model_name}} held"),
                   Query("sum by (model_name) (kiban_gateway_in_flight_requests)", "{{model_name}} in flight")),
                  width=12, description="Held: waiting for a ready replica (waking from zero)."),
        PanelSpec("Operator reconcile passes",
                  (Query("sum by (result) (rate(kiban_reconcile_total[$__rate_interval]))", "{{result}}"),
                   Query("histogram_quantile(0.95, sum by (le) (rate(kiban_reconcile_duration_seconds_bucket"
                         "[$__rate_interval])))", "p95 duration (s)")),
                  width=12),
        PanelSpec("Autoscaler pass over every model",
                  (Query("histogram_quantile(0.99, sum by (le) (rate(kiban_autoscaler_pass_duration_seconds_bucket"
                         "[$__rate_interval])))", "p99 pass (s)"),
                   Query("max(kiban_autoscaler_pass_models)", "models per pass")),
                  width=12, description="One task decides for every model each interval (leader only); a pass "
                                        "longer than the interval delays the next."),
        PanelSpec("Prometheus query latency and event-loop lag",
                  (Query("histogram_quantile(0.99, sum by (le, result) (rate("
                         "kiban_prometheus_query_duration_seconds_bucket[$__rate_interval])))", "query p99 {{result}}"),
                   Query("histogram_quantile(0.99, sum by (le) (rate(kiban_event_loop_lag_seconds_bucket"
                         "[$__rate_interval])))", "event-loop lag p99")),
                  unit="s", width=12,
                  description="Queries run on the autoscaler's own executor behind a circuit breaker; lag on the "
                              "event loop delays every handler and the leader Lease's renewal."),
        PanelSpec("Leader and writes by field manager",
                  (Query("max(kiban_leader)", "a leader holds the Lease"),
                   Query("sum by (field_manager) (rate(kiban_api_writes_total[$__rate_interval]))",
                         "writes/s {{field_manager}}")),
                  width=12, description="Exactly one replica leads and writes; a standby's write rate stays 0."),
    ]


def model_panels() -> list[PanelSpec]:
    """The per-model dashboard's panels, top to bottom; every query selects model_name=$model_name."""
    ttft = f"vllm:time_to_first_token_seconds_bucket{{{M}}}"
    return [
        PanelSpec("Arrival rate and capacity",
                  (Query(f"sum(rate(vllm:request_success_total{{{M}}}[$__rate_interval]))", "completed (vLLM)"),
                   Query(f"max(kiban_observed_arrival_rate_rps{{{M}}})", "arrival rate (operator)"),
                   Query(f"max(kiban_capacity_per_replica_rps{{{M}}} * kiban_current_replicas{{{M}}})",
                         "capacity at current replicas")),
                  unit="reqps", dashed=("capacity",),
                  description="Requests/s finished by vLLM, the rate the autoscaler read, and what the current "
                              "replicas sustain within the SLO by the capacity model."),
        PanelSpec("SLO attainment",
                  (Query(f"1 - max by (percentile) (kiban:ttft_slo_errors:ratio_rate5m{{{M}}})", "{{percentile}} (5m)"),
                   Query(f"1 - max by (percentile) (kiban:ttft_slo_errors:ratio_rate1h{{{M}}})", "{{percentile}} (1h)")),
                  unit="percentunit", min_value=0, max_value=1),
        PanelSpec("Time to first token vs SLO",
                  (*_quantiles(ttft, "TTFT"),
                   Query(f"max by (percentile) (kiban_slo_ttft_seconds{{{M}}})", "SLO {{percentile}}")),
                  unit="s", dashed=("SLO",)),
        PanelSpec("Inter-token latency",
                  (*_quantiles(ITL_BUCKETS % M, "ITL"),
                   Query(f"max(kiban_predicted_itl_p95_seconds{{{M}}})", "predicted p95")),
                  unit="s", dashed=("predicted",)),
        PanelSpec("Requests waiting and running",
                  (Query(f"sum(vllm:num_requests_waiting{{{M}}})", "waiting (queue)"),
                   Query(f"sum(vllm:num_requests_running{{{M}}})", "running")),
                  unit="short"),
        PanelSpec("KV-cache usage per replica",
                  (Query(f"max by (instance) ({KV_CACHE % M})", "{{instance}}"),),
                  unit="percentunit", min_value=0, max_value=1),
        PanelSpec("Replicas: desired vs actual",
                  (Query(f"max(kiban_desired_replicas{{{M}}})", "desired"),
                   Query(f"max(kiban_current_replicas{{{M}}})", "current"),
                   Query(f"max(kiban_ready_replicas{{{M}}})", "ready")),
                  unit="short"),
        PanelSpec("Scaling: limits and scale events",
                  (Query(f"max by (reason) (kiban_scaling_limited{{{M}}})", "limited by {{reason}}"),
                   Query(f"sum by (direction) (increase(kiban_scale_events_total{{{M}}}[$__rate_interval]))",
                         "scaled {{direction}}")),
                  unit="short",
                  description="1 while the autoscaler's decision is capped (MaxReplicas or GpuBudget); scale "
                              "operations per interval. The decision's text reason is in status.scaling."),
        PanelSpec("Predicted vs observed TTFT p95",
                  (Query(f"histogram_quantile(0.95, sum by (le) (rate({ttft}[$__rate_interval])))", "observed p95"),
                   Query(f"max(kiban_predicted_ttft_p95_seconds{{{M}}})", "predicted p95"),
                   Query(f'max(kiban_slo_ttft_seconds{{{M}, percentile="p95"}})', "SLO p95")),
                  unit="s", dashed=("SLO",)),
        PanelSpec("Gateway: requests, held, in flight",
                  (Query(f"sum by (code) (rate(kiban_gateway_requests_total{{{M}}}[$__rate_interval]))", "{{code}}/s"),
                   Query(f"sum(kiban_gateway_in_flight_requests{{{M}}})", "in flight"),
                   Query(f"sum(kiban_gateway_queued_requests{{{M}}})", "held (no ready replica)"),
                   Query(f"sum(increase(kiban_gateway_held_at_zero_requests_total{{{M}}}[$__rate_interval]))",
                         "held at zero (new)")),
                  unit="short",
                  description="What the Kiban gateway answered, has in flight at the engines, and holds while "
                              "the model has no ready replica (each held request also wakes it from zero)."),
        PanelSpec("Gateway: wait and first byte",
                  (*_quantiles(f"kiban_gateway_queue_wait_seconds_bucket{{{M}}}", "held wait")[1:2],
                   *_quantiles(f"kiban_gateway_time_to_first_byte_seconds_bucket{{{M}}}", "first byte")),
                  unit="s", description="Time held before forwarding; time to the engine's first bytes, holding included."),
        PanelSpec("Gateway: routing and upstream errors",
                  (Query(f"sum by (decision) (rate(kiban_gateway_routing_decisions_total{{{M}}}[$__rate_interval]))",
                         "{{decision}}"),
                   Query(f"sum by (kind) (rate(kiban_gateway_upstream_errors_total{{{M}}}[$__rate_interval]))",
                         "upstream error: {{kind}}"),
                   Query(f"sum by (reason) (rate(kiban_gateway_rejected_requests_total{{{M}}}[$__rate_interval]))",
                         "refused: {{reason}}")),
                  unit="reqps",
                  description="Routing decisions (least_outstanding, prefix_affinity, prefix_overflow, retry); "
                              "engine pods that refused a connection or cut a stream; requests the gateway refused."),
        PanelSpec("Drift scores",
                  (Query(f"max by (signal, test) (kiban_drift_score{{{M}}})", "{{signal}} {{test}}"),
                   Query(f"max by (signal) (kiban_drift_detected{{{M}}})", "detected: {{signal}}")),
                  unit="short", dashed=("detected",)),
        PanelSpec("Engine fit against the datasheet",
                  (Query(f'max by (parameter) (kiban_engine_parameter_ms{{{M}, estimate="fitted"}}) / '
                         f'max by (parameter) (kiban_engine_parameter_ms{{{M}, estimate="prior"}})',
                         "{{parameter}} fitted / prior"),
                   Query(f'max by (parameter) (kiban_engine_parameter_ms{{{M}, estimate="sd"}}) / '
                         f'max by (parameter) (kiban_engine_parameter_ms{{{M}, estimate="prior"}})',
                         "sd / prior: {{parameter}}"),
                   Query(f"max(kiban_engine_fit_capacity_ratio{{{M}}})", "capacity per replica: fitted / prior")),
                  unit="short", dashed=("sd",),
                  description="Each step-time parameter the online fit learned from vLLM's metrics, as a multiple "
                              "of the datasheet profile's (1 = the prior), its posterior sd on the same scale, and "
                              "the capacity per replica the fit gives over the prior's at the current token means. "
                              "An EngineRefit Event marks a move of that capacity by more than 20 %."),
        PanelSpec("Engine parameters (ms): prior, fitted, sd",
                  (Query(f"max by (parameter, estimate) (kiban_engine_parameter_ms{{{M}}})",
                         "{{parameter}} {{estimate}}"),),
                  kind="stat", unit="ms",
                  description="alpha: decode step at zero batch; beta: per decoding sequence; gamma: fixed cost "
                              "of a step that prefills; delta: per prompt token. status.scaling.engine has them too."),
        PanelSpec("Cold start: prior vs learned",
                  (Query(f"max by (estimate) (kiban_engine_cold_start_seconds{{{M}}})", "{{estimate}}"),),
                  unit="s",
                  description="Creation to Ready of the model's own pods (the slowest recent one of the revision), "
                              "the look-ahead a scale-up plans with; prior: the engine profile's estimate."),
    ]


def _dashed_override(builder, prefix: str):
    return builder.override_by_regexp(
        f"^{re.escape(prefix)}.*",
        [dashboard_model.DynamicConfigValue(id_val="custom.lineStyle", value={"fill": "dash", "dash": [10, 10]})],
    )


def _target(query: Query, ref_id: str) -> prometheus.Dataquery:
    return prometheus.Dataquery().expr(query.expr).legend_format(query.legend or "__auto").ref_id(ref_id).range()


def _panel(spec: PanelSpec, panel_id: int):
    if spec.kind == "stat":
        builder = (stat.Panel().graph_mode(common.BigValueGraphMode.AREA)
                   .reduce_options(common_builder.ReduceDataOptions().calcs(["lastNotNull"])))
    elif spec.kind == "timeseries":
        builder = (timeseries.Panel().line_width(2).fill_opacity(8)
                   .legend(common_builder.VizLegendOptions().display_mode(common.LegendDisplayMode.TABLE)
                           .placement(common.LegendPlacement.BOTTOM).show_legend(True).calcs(["lastNotNull", "max"])))
    else:
        raise ValueError(f"PanelSpec.kind must be 'timeseries' or 'stat', got {spec.kind!r} ({spec.title})")
    builder = builder.id(panel_id).title(spec.title).datasource(DATASOURCE).unit(spec.unit).span(spec.width).height(spec.height)
    if spec.description:
        builder = builder.description(spec.description)
    if spec.min_value is not None:
        builder = builder.min(spec.min_value)
    if spec.max_value is not None:
        builder = builder.max(spec.max_value)
    for prefix in spec.dashed:
        builder = _dashed_override(builder, prefix)
    for index, query in enumerate(spec.queries):
        builder = builder.with_target(_target(query, chr(ord("A") + index)))
    return builder


def _datasource_variable():
    return (dashboard_builder.DatasourceVariable(DATASOURCE_VARIABLE).label("Data source").type("prometheus"))


def _base(title: str, uid: str, description: str):
    return (
        dashboard_builder.Dashboard(title).uid(uid).description(description).tags(TAGS)
        .refresh("30s").time("now-3h", "now").timezone("browser").editable()
        .tooltip(dashboard_model.DashboardCursorSync.CROSSHAIR)
        .with_variable(_datasource_variable())
        .link(dashboard_builder.DashboardLink("Kiban dashboards").type(dashboard_model.DashboardLinkType.DASHBOARDS)
              .tags(["kiban"]).as_dropdown(True).include_vars(False).keep_time(True))
    )


def fleet_dashboard() -> dict:
    """The fleet overview as a Grafana dashboard JSON model (a plain dict)."""
    builder = _base("Kiban / Fleet", FLEET_UID, "Every FoundationModel Kiban serves: replicas, GPUs, SLO attainment.")
    for panel_id, spec in enumerate(fleet_panels(), start=1):
        builder = builder.with_panel(_panel(spec, panel_id))
    return _to_dict(builder.build())


def model_dashboard() -> dict:
    """The per-model dashboard (variable model_name) as a Grafana dashboard JSON model."""
    variable = (
        dashboard_builder.QueryVariable(MODEL_VARIABLE).label("Model")
        .datasource(DATASOURCE)
        .query({"query": "label_values(kiban_current_replicas, model_name)", "refId": "model_name"})
        .refresh(dashboard_model.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(dashboard_model.VariableSort.ALPHABETICAL_ASC)
    )
    builder = _base("Kiban / Model", MODEL_UID,
                    "One served model: load, latency against its SLO, autoscaler decisions and drift.")
    builder = builder.with_variable(variable)
    for panel_id, spec in enumerate(model_panels(), start=1):
        builder = builder.with_panel(_panel(spec, panel_id))
    return _to_dict(builder.build())


def _to_dict(model) -> dict:
    return json.loads(json.dumps(model, cls=JSONEncoder))


def dashboards() -> dict[str, dict]:
    """File name -> dashboard JSON model, as the chart carries them."""
    return {"kiban-fleet.json": fleet_dashboard(), "kiban-model.json": model_dashboard()}


def render_dashboard_json(dashboard: Mapping) -> str:
    """Stable, diff-friendly JSON text for one dashboard."""
    return json.dumps(dashboard, indent=2, sort_keys=True) + "\n"


def panel_queries(dashboard: Mapping) -> list[tuple[str, str]]:
    """(panel title, PromQL) for every target of every panel, including panels inside rows."""
    found: list[tuple[str, str]] = []

    def walk(panels: Iterable[Mapping]) -> None:
        for panel in panels:
            for target in panel.get("targets") or ():
                if target.get("expr"):
                    found.append((panel.get("title", ""), target["expr"]))
            walk(panel.get("panels") or ())

    walk(dashboard.get("panels") or ())
    return found


def expand_variables(expr: str, values: Mapping[str, str]) -> str:
    """Replace Grafana's $name / ${name} variables in a query; KeyError naming any left unset."""

    def replace(match: re.Match) -> str:
        name = match.group(1) or match.group(2)
        if name not in values:
            raise KeyError(f"query uses ${name}, which has no value: {expr}")
        return values[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", replace, expr)
