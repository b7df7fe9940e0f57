"""The gateway's Prometheus metrics, per model (docs/gateway.md lists them; the dashboards read them).

Labels: `namespace` and `model_name` (the FoundationModel's namespace and served name, as in
vLLM's own series), never a client's raw `model` string: a request for a name the gateway does
not serve is counted with empty labels, so clients cannot mint series.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
                   300.0, 600.0)
MODEL = ("namespace", "model_name")


class GatewayMetrics:
    """Every gateway metric, in one registry (a fresh one per instance unless given)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self._children: dict[tuple[int, tuple[str, ...]], object] = {}

    def child(self, metric, *labels: str):
        """metric.labels(*labels), cached: the lookup is most of a counter's cost per request."""
        key = (id(metric), labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found

    @classmethod
    def create(cls, registry: CollectorRegistry | None = None) -> GatewayMetrics:
        metrics = cls(registry or CollectorRegistry())
        r = metrics.registry
        metrics.requests = Counter("kiban_gateway_requests", "Requests answered, by HTTP status code.",
                                   (*MODEL, "code"), registry=r)
        metrics.in_flight = Gauge("kiban_gateway_in_flight_requests",
                                  "Requests forwarded to an engine pod and not finished.", MODEL, registry=r)
        metrics.queued = Gauge("kiban_gateway_queued_requests",
                               "Requests held now, waiting for a ready replica.", MODEL, registry=r)
        metrics.held = Counter("kiban_gateway_held_at_zero_requests",
                               "Requests that arrived while the model had no ready replica and were held.",
                               MODEL, registry=r)
        metrics.wait = Histogram("kiban_gateway_queue_wait_seconds",
                                 "Time a request was held before it was forwarded or refused.", MODEL,
                                 buckets=LATENCY_BUCKETS, registry=r)
        metrics.first_byte = Histogram("kiban_gateway_time_to_first_byte_seconds",
                                       "From arrival to the first body bytes from the engine (holding included).",
                                       MODEL, buckets=LATENCY_BUCKETS, registry=r)
        metrics.duration = Histogram("kiban_gateway_request_duration_seconds",
                                     "From arrival to the response's end.", MODEL, buckets=LATENCY_BUCKETS, registry=r)
        metrics.upstream_errors = Counter("kiban_gateway_upstream_errors",
                                          "Engine pods that failed a request: connect, or a stream cut midway.",
                                          (*MODEL, "kind"), registry=r)
        metrics.decisions = Counter("kiban_gateway_routing_decisions",
                                    "Routing decisions: least_outstanding, prefix_affinity, prefix_overflow, retry.",
                                    (*MODEL, "decision"), registry=r)
        metrics.rejected = Counter("kiban_gateway_rejected_requests",
                                   "Requests refused by the gateway itself, by reason.", (*MODEL, "reason"),
                                   registry=r)
        metrics.endpoints = Gauge("kiban_gateway_ready_endpoints", "Ready engine pods the gateway routes to.",
                                  MODEL, registry=r)
        return metrics

    # attributes set in create(); declared for readers and type checkers
    requests: Counter
    in_flight: Gauge
    queued: Gauge
    held: Counter
    wait: Histogram
    first_byte: Histogram
    duration: Histogram
    upstream_errors: Counter
    decisions: Counter
    rejected: Counter
    endpoints: Gauge

    def forget(self, namespace: str, model_name: str) -> None:
        """Drop a model's series once the gateway no longer serves it."""
        self._children = {k: v for k, v in self._children.items() if k[1][:2] != (namespace, model_name)}
        for metric, extra in ((self.requests, "code"), (self.decisions, "decision"),
                              (self.upstream_errors, "kind"), (self.rejected, "reason")):
            for labels in [key for key in list(metric._metrics) if key[:2] == (namespace, model_name)]:
                metric.remove(*labels)
        for metric in (self.in_flight, self.queued, self.held, self.wait, self.first_byte, self.duration,
                       self.endpoints):
            try:
                metric.remove(namespace, model_name)
            except KeyError:
                pass
