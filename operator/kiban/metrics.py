"""The operator's own Prometheus metrics, exactly the names in docs/metrics.md.

One `OperatorMetrics` per operator instance (and per test), each with its own
CollectorRegistry: no module-level collectors, so two operators in one process (or two tests)
never share series. Per-model series carry namespace, foundationmodel and model_name so they
join vLLM's series `on (model_name)`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

MODEL_LABELS = ("namespace", "foundationmodel", "model_name")

# gauge attribute -> (metric name, help, extra label names); the table in docs/metrics.md
_MODEL_GAUGES: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "desired_replicas": ("kiban_desired_replicas", "Replicas the autoscaler decided.", ()),
    "current_replicas": ("kiban_current_replicas", "Replicas of the Deployment.", ()),
    "ready_replicas": ("kiban_ready_replicas", "Ready replicas of the Deployment.", ()),
    "gpus_per_replica": ("kiban_gpus_per_replica", "Resolved GPUs per replica.", ()),
    "slo_ttft_seconds": ("kiban_slo_ttft_seconds", "The TTFT target from the spec.", ("percentile",)),
    "predicted_ttft_p95_seconds": (
        "kiban_predicted_ttft_p95_seconds",
        "The capacity model's TTFT p95 at the observed load.",
        (),
    ),
    "predicted_itl_p95_seconds": (
        "kiban_predicted_itl_p95_seconds",
        "The capacity model's ITL p95 at the observed load.",
        (),
    ),
    "capacity_per_replica_rps": (
        "kiban_capacity_per_replica_rps",
        "Largest arrival rate one replica sustains within the SLO.",
        (),
    ),
    "observed_arrival_rate_rps": (
        "kiban_observed_arrival_rate_rps",
        "Arrival rate read from Prometheus.",
        (),
    ),
    "metrics_available": (
        "kiban_metrics_available",
        "1 when the last collection succeeded, else 0.",
        (),
    ),
    "scaling_limited": ("kiban_scaling_limited", "1 while the decision is capped.", ("reason",)),
    "drift_score": (
        "kiban_drift_score",
        "Latest drift statistic per signal and test.",
        ("signal", "test"),
    ),
    "drift_detected": ("kiban_drift_detected", "1 while drift is declared for the signal.", ("signal",)),
    "engine_parameter_ms": (
        "kiban_engine_parameter_ms",
        "The engine's step-time parameters (alpha, beta, gamma, delta; ms): the datasheet prior, the "
        "online fit and its sd.",
        ("parameter", "estimate"),
    ),
    "engine_cold_start_seconds": (
        "kiban_engine_cold_start_seconds",
        "Creation to Ready of the model's pods: the profile's prior and the learned value.",
        ("estimate",),
    ),
    "engine_fit_capacity_ratio": (
        "kiban_engine_fit_capacity_ratio",
        "Capacity per replica with the fitted engine over the datasheet prior's, at the current token means.",
        (),
    ),
}


class ModelKey(NamedTuple):
    """Who a per-model series is about."""

    namespace: str
    foundationmodel: str
    model_name: str


@dataclass(frozen=True)
class _Series:
    attribute: str
    labels: tuple[str, ...]


class OperatorMetrics:
    """All of the operator's collectors, registered in one registry owned by this instance."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.reconcile_total = Counter(
            "kiban_reconcile_total",
            "Reconcile passes.",
            ["result"],
            registry=self.registry,
        )
        self.reconcile_duration_seconds = Histogram(
            "kiban_reconcile_duration_seconds",
            "Time of one reconcile pass.",
            registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
        )
        self.scale_events_total = Counter(
            "kiban_scale_events_total",
            "Scale operations performed.",
            ["namespace", "foundationmodel", "model_name", "direction"],
            registry=self.registry,
        )
        # the operator's own health: the autoscaler's one pass, Prometheus, the event loop, leadership
        self.autoscaler_pass_duration_seconds = Histogram(
            "kiban_autoscaler_pass_duration_seconds",
            "Time of one autoscaler pass over every model.",
            registry=self.registry,
            buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 30.0, 60.0),
        )
        self.autoscaler_pass_models = Gauge(
            "kiban_autoscaler_pass_models", "Models the last autoscaler pass decided for.", registry=self.registry,
        )
        self.prometheus_query_duration_seconds = Histogram(
            "kiban_prometheus_query_duration_seconds",
            "Latency of one Prometheus query, by outcome.",
            ["result"],
            registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
        )
        self.event_loop_lag_seconds = Histogram(
            "kiban_event_loop_lag_seconds",
            "How late the operator's event loop ran a timer (CPU work on the loop shows here).",
            registry=self.registry,
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
        )
        self.leader = Gauge("kiban_leader", "1 while this operator replica holds the leader Lease.",
                            registry=self.registry)
        self.api_writes_total = Counter(
            "kiban_api_writes_total", "Writes to the Kubernetes API, by field manager.", ["field_manager"],
            registry=self.registry,
        )
        self.resyncs_total = Counter(
            "kiban_resyncs_total", "Periodic re-reads of every model and child from the API.", ["result"],
            registry=self.registry,
        )
        self._gauges: dict[str, Gauge] = {}
        for attribute, (name, help_text, extra) in _MODEL_GAUGES.items():
            gauge = Gauge(name, help_text, [*MODEL_LABELS, *extra], registry=self.registry)
            self._gauges[attribute] = gauge
            setattr(self, attribute, gauge)
        # every label set written per model, so a deleted model's series can all be removed
        self._written: dict[tuple[str, str], set[_Series]] = {}

    def record_reconcile(self, *, succeeded: bool, seconds: float) -> None:
        """Count one reconcile pass and observe how long it took."""
        self.reconcile_total.labels(result="success" if succeeded else "error").inc()
        self.reconcile_duration_seconds.observe(seconds)

    def set_model_gauge(self, attribute: str, key: ModelKey, value: float, **extra: str) -> None:
        """Set one per-model gauge, e.g. set_model_gauge("slo_ttft_seconds", key, 0.5, percentile="p95")."""
        if attribute not in self._gauges:
            raise ValueError(f"unknown per-model gauge {attribute!r}; known: {', '.join(self._gauges)}")
        _, _, extra_names = _MODEL_GAUGES[attribute]
        if set(extra) != set(extra_names):
            raise ValueError(
                f"gauge {attribute!r} needs labels {list(extra_names)}, got {sorted(extra)}"
            )
        labels = (*key, *(str(extra[name]) for name in extra_names))
        self._gauges[attribute].labels(*labels).set(value)
        self._written.setdefault((key.namespace, key.foundationmodel), set()).add(
            _Series(attribute, labels)
        )

    def count_scale_event(self, key: ModelKey, direction: str) -> None:
        """One scale operation, direction "up" or "down"."""
        if direction not in ("up", "down"):
            raise ValueError(f"direction must be 'up' or 'down', got {direction!r}")
        labels = (*key, direction)
        self.scale_events_total.labels(*labels).inc()
        self._written.setdefault((key.namespace, key.foundationmodel), set()).add(
            _Series("scale_events_total", labels)
        )

    def forget_model(self, namespace: str, foundationmodel: str) -> None:
        """Drop every series of a deleted FoundationModel so dashboards stop showing it."""
        for series in self._written.pop((namespace, foundationmodel), set()):
            collector = getattr(self, series.attribute)
            try:
                collector.remove(*series.labels)
            except KeyError:
                pass

    def serve(self, port: int, addr: str = "0.0.0.0"):
        """Serve /metrics on `port` in a background thread; returns (server, thread)."""
        return start_http_server(port, addr=addr, registry=self.registry)
