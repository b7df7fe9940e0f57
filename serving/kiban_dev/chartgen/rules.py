"""Prometheus recording and alerting rules for Kiban, generated so the SLO maths lives in one place.

The TTFT SLO of each model is read from the operator's `kiban_slo_ttft_seconds{percentile}`
series, so every FoundationModel brings its own threshold and no rule needs editing per model:

1. `kiban:slo_ttft_seconds:max` (one threshold per model and percentile, scrape labels dropped)
   and `kiban:slo_ttft_bucket:selected` (value 1, label `le`) picks, per model and percentile, the
   vLLM TTFT bucket at the SLO: the largest bucket boundary <= the threshold (so a threshold
   between two boundaries is judged conservatively). PromQL cannot turn a value into a label,
   so the rule is an `or` over vLLM's fixed bucket boundaries, one `label_replace` each.
2. `kiban:ttft_slo_errors:ratio_rate<window>`: the share of requests slower than that bucket.
3. Multi-window, multi-burn-rate alerts (Google SRE workbook, ch. 5): the objective follows the
   spec's percentile (p95 -> 95 % of requests within the threshold, p99 -> 99 %); page at
   14.4x burn over 1h and 5m, ticket at 6x over 6h and 30m.

`rule_groups()` returns plain dicts; `render_rules_yaml()` the rule file promtool and the chart use.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import yaml

TTFT_METRIC = "vllm:time_to_first_token_seconds"
# vLLM 0.33's TTFT bucket boundaries (vllm/v1/metrics/loggers.py), as kiban_serving.sim exports them.
VLLM_TTFT_BUCKETS: tuple[float, ...] = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
    10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
)  # fmt: skip
# spec percentile label -> objective (share of requests that must meet the threshold)
OBJECTIVES: dict[str, float] = {"p95": 0.95, "p99": 0.99}
MODEL_LABELS = "namespace, foundationmodel, model_name"
SLO_WINDOWS: tuple[str, ...] = ("5m", "30m", "1h", "6h")
SLO_THRESHOLD = "kiban:slo_ttft_seconds:max"
SELECTED_BUCKET = "kiban:slo_ttft_bucket:selected"
RUNBOOK_BASE = "https://github.com/kiban-dev/kiban/blob/main/docs/observability.md"


@dataclass(frozen=True)
class BurnRateAlert:
    """One multi-window burn-rate alert: both windows must burn faster than `factor`."""

    name: str
    long_window: str
    short_window: str
    factor: float
    severity: str
    for_: str


BURN_RATE_ALERTS: tuple[BurnRateAlert, ...] = (
    BurnRateAlert("KibanTTFTErrorBudgetBurnFast", "1h", "5m", 14.4, "critical", "2m"),
    BurnRateAlert("KibanTTFTErrorBudgetBurnSlow", "6h", "30m", 6.0, "warning", "15m"),
)


def le_label_values(boundary: float) -> tuple[str, ...]:
    """How a bucket boundary is spelled in the `le` label.

    prometheus_client (which vLLM uses) writes Go-style floats ("1.0", "0.5"); Prometheus 3
    normalises integral values on ingestion ("1"). Both spellings are selected, only the one
    present in the data joins.
    """
    text = repr(float(boundary))
    if boundary == int(boundary):
        return (text, str(int(boundary)))
    return (text,)


def error_ratio_record(window: str) -> str:
    return f"kiban:ttft_slo_errors:ratio_rate{window}"


def selected_bucket_expr(buckets: Sequence[float] = VLLM_TTFT_BUCKETS) -> str:
    """PromQL: one series per model and percentile, labelled with the `le` of its SLO bucket."""
    if not buckets or list(buckets) != sorted(set(buckets)):
        raise ValueError("buckets must be a non-empty, strictly increasing sequence")
    slo = SLO_THRESHOLD
    terms = []
    for index, boundary in enumerate(buckets):
        upper = buckets[index + 1] if index + 1 < len(buckets) else None
        selector = f"{slo} >= {boundary!r}" + (f" < {upper!r}" if upper is not None else "")
        for le in le_label_values(boundary):
            terms.append(f'label_replace(({selector}) * 0 + 1, "le", "{le}", "", "")')
    return "\n or ".join(terms)


def error_ratio_expr(window: str) -> str:
    """PromQL: share of requests (per model and SLO percentile) slower than the SLO bucket."""
    good = (
        f"sum by ({MODEL_LABELS}, percentile) (\n"
        f"  sum by (model_name, le) (rate({TTFT_METRIC}_bucket[{window}]))\n"
        f"  * on (model_name, le) group_right () {SELECTED_BUCKET}\n"
        f")"
    )
    total = f"sum by (model_name) (rate({TTFT_METRIC}_count[{window}]))"
    return f"1 - (\n{good}\n/ on (model_name) group_left () {total}\n)"


def burn_rate_expr(alert: BurnRateAlert) -> str:
    """PromQL: both windows burn the budget faster than `factor`, for any percentile objective."""
    terms = []
    for percentile, objective in OBJECTIVES.items():
        threshold = round(alert.factor * (1 - objective), 6)
        terms.append(
            f'({error_ratio_record(alert.long_window)}{{percentile="{percentile}"}} > {threshold}\n'
            f' and {error_ratio_record(alert.short_window)}{{percentile="{percentile}"}} > {threshold})'
        )
    return "\nor\n".join(terms)


def _alert(name: str, expr: str, for_: str, severity: str, summary: str, description: str) -> dict:
    return {
        "alert": name,
        "expr": expr,
        "for": for_,
        "labels": {"severity": severity},
        "annotations": {
            "summary": summary,
            "description": description,
            "runbook_url": f"{RUNBOOK_BASE}#{name.lower()}",
        },
    }


def slo_recording_group() -> dict:
    rules = [
        {"record": SLO_THRESHOLD, "expr": f"max by ({MODEL_LABELS}, percentile) (kiban_slo_ttft_seconds)"},
        {"record": SELECTED_BUCKET, "expr": selected_bucket_expr()},
    ]
    rules += [{"record": error_ratio_record(w), "expr": error_ratio_expr(w)} for w in SLO_WINDOWS]
    return {"name": "kiban-slo.rules", "rules": rules}


def slo_alert_group() -> dict:
    rules = [
        _alert(
            alert.name,
            burn_rate_expr(alert),
            alert.for_,
            alert.severity,
            "{{ $labels.model_name }} is burning its TTFT error budget "
            f"{alert.factor:g}x too fast",
            "{{ $labels.namespace }}/{{ $labels.foundationmodel }}: {{ $value | humanizePercentage }} of "
            "requests missed the {{ $labels.percentile }} TTFT threshold over the last "
            f"{alert.long_window} (and {alert.short_window}); at this rate the 30-day budget lasts "
            f"{30 / alert.factor:.1f} days.",
        )
        for alert in BURN_RATE_ALERTS
    ]
    return {"name": "kiban-slo.alerts", "rules": rules}


def operator_alert_group() -> dict:
    by_model = MODEL_LABELS
    return {
        "name": "kiban-operator.alerts",
        "rules": [
            _alert(
                "KibanScalingLimited",
                f"max by ({by_model}, reason) (kiban_scaling_limited) == 1",
                "15m",
                "warning",
                "{{ $labels.model_name }} needs more replicas than {{ $labels.reason }} allows",
                "{{ $labels.namespace }}/{{ $labels.foundationmodel }} has been capped by {{ $labels.reason }} "
                "for 15 minutes; its latency SLO is at risk. Raise spec.scaling.maxReplicas or the GPU budget.",
            ),
            _alert(
                "KibanMetricsUnavailable",
                f"max by ({by_model}) (kiban_metrics_available) == 0",
                "10m",
                "warning",
                "Kiban cannot read metrics for {{ $labels.model_name }}",
                "The autoscaler of {{ $labels.namespace }}/{{ $labels.foundationmodel }} has had no usable "
                "Prometheus data for 10 minutes and holds the replica count (fail safe).",
            ),
            _alert(
                "KibanDriftDetected",
                f"max by ({by_model}, signal) (kiban_drift_detected) == 1",
                "5m",
                "info",
                "Traffic of {{ $labels.model_name }} drifted ({{ $labels.signal }})",
                "The {{ $labels.signal }} distribution of {{ $labels.namespace }}/{{ $labels.foundationmodel }} "
                "moved away from its reference; capacity predictions may be off until the model refits.",
            ),
            _alert(
                "KibanReconcileErrors",
                'sum by (namespace, job) (rate(kiban_reconcile_total{result="error"}[5m])) > 0',
                "15m",
                "warning",
                "The Kiban operator keeps failing to reconcile",
                "{{ $value | printf \"%.2f\" }} reconcile passes per second have failed for 15 minutes "
                "(operator in {{ $labels.namespace }}); see its log and the FoundationModels' Events.",
            ),
        ],
    }


def rule_groups() -> list[dict]:
    """Every rule group, in the order they are written to the rule file."""
    return [slo_recording_group(), slo_alert_group(), operator_alert_group()]


class _LiteralDumper(yaml.SafeDumper):
    """Multi-line PromQL as YAML block scalars, so the rule file stays readable."""


def _str_representer(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_LiteralDumper.add_representer(str, _str_representer)


def render_rules_yaml() -> str:
    """The Prometheus rule file (`groups:`), as `promtool check rules` and the chart read it."""
    header = "# GENERATED by hack/chart/sync.py from serving/kiban_dev/chartgen/rules.py; do not edit.\n"
    body = yaml.dump({"groups": rule_groups()}, Dumper=_LiteralDumper, sort_keys=False, width=120)
    return header + body
