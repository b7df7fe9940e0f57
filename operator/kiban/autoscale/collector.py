"""Read one model's vLLM load from Prometheus and turn it into a policy Observation.

The only module of the autoscaler that talks to Prometheus. Two layers:

- pure: `label_selector`, `build_queries`, `parse_vector`, `observation_from`, `decode_pairs`
  build PromQL on vLLM's own metric names (label `model_name`, never `model`) and read the
  HTTP API's JSON; unit-tested without a server;
- I/O: `PrometheusQuery` is the small Protocol the collector needs (one instant query), and
  `PrometheusHttp` implements it over Prometheus's HTTP API. `Collector` runs the queries.

Arrival rate: completed requests per second plus the growth of requests in the engine
(running + waiting) over the window, so an overloaded engine, whose completions are capped
by its throughput, still shows the real demand. Fail safe: Prometheus unreachable, an error
answer, no series for the model, or a NaN rate give an Observation with
metrics_available=False and the reason; the policy then never scales.

Optional inputs (`observed_ttft_slo_percentile_s`, `prompt_mix`): their queries run after the
others, and a failed query, no series or a NaN leaves them None; they never make metrics
unavailable.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

import requests

from kiban.autoscale.policy import Observation
from kiban.drift.histograms import bin_midpoints
from kiban.drift.tracker import histogram_from_increase

# Machine-readable reasons for metrics_available=False (also the MetricsAvailable condition's reason).
UNREACHABLE = "PrometheusUnreachable"
QUERY_FAILED = "PrometheusQueryFailed"
NO_SERIES = "NoMetrics"
INVALID = "InvalidMetrics"

ITL_NAMES = ("vllm:inter_token_latency_seconds", "vllm:time_per_output_token_seconds")  # new, old
KV_USAGE_NAMES = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")  # new, old


class PrometheusUnavailable(Exception):
    """A query could not be answered; `reason` is one of the CamelCase reasons above."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class Sample:
    """One element of an instant vector: its labels and value (NaN and ±Inf kept as floats)."""

    labels: Mapping[str, str]
    value: float


class PrometheusQuery(Protocol):
    """What the collector needs from Prometheus: one instant query evaluated at `time_s`."""

    def query(self, promql: str, time_s: float) -> list[Sample]: ...


# -- pure: PromQL ------------------------------------------------------------------------------


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def label_selector(model_name: str, namespace: str | None = None) -> str:
    """`model_name="x",namespace="ns"`: the matchers every query carries (namespace when scraped with it)."""
    if not model_name:
        raise ValueError("model_name must not be empty")
    matchers = [f'model_name="{_escape(model_name)}"']
    if namespace:
        matchers.append(f'namespace="{_escape(namespace)}"')
    return ",".join(matchers)


def promql_duration(seconds: float) -> str:
    """A PromQL range duration: whole seconds as '30s', fractions as milliseconds ('1500ms')."""
    if not (isinstance(seconds, (int, float)) and math.isfinite(seconds) and seconds > 0):
        raise ValueError(f"window_s must be a finite number > 0, got {seconds!r}")
    if float(seconds).is_integer():
        return f"{int(seconds)}s"
    return f"{max(1, round(seconds * 1000))}ms"


def _rate_either(names: Sequence[str], suffix: str, selector: str, window: str) -> str:
    """rate() of the first metric name that exists per series (a renamed metric, old name as fallback)."""
    return " or ".join(f"rate({name}{suffix}{{{selector}}}[{window}])" for name in names)


def _increase_either(names: Sequence[str], suffix: str, selector: str, window: str) -> str:
    return " or ".join(f"increase({name}{suffix}{{{selector}}}[{window}])" for name in names)


def bucket_increase_query(names: Sequence[str], selector: str, window: str) -> str:
    """A histogram's bucket counts over the window, summed over pods by `le` (increase() handles
    counter resets and pods that appeared in the window)."""
    return f"sum by (le) ({_increase_either(names, '_bucket', selector, window)})"


def ttft_key(percentile: float) -> str:
    """The build_queries key of TTFT at `percentile` (95 → 'ttft_p95')."""
    return f"ttft_p{percentile:g}"


def _ttft_quantile(percentile: float, selector: str, window: str) -> str:
    return (f"histogram_quantile({percentile / 100:g}, "
            f"sum by (le) (rate(vllm:time_to_first_token_seconds_bucket{{{selector}}}[{window}])))")


PROMPT_BUCKETS = "prompt_buckets"  # key of the prompt-token histogram's window bucket counts (prompt_mix)


def optional_query(key: str) -> bool:
    """Queries whose failure leaves their Observation field None instead of making metrics unavailable."""
    return key == PROMPT_BUCKETS or (key.startswith("ttft_p") and key != ttft_key(95))


def build_queries(selector: str, window_s: float, token_window_s: float | None = None,
                  ttft_percentiles: Sequence[float] = ()) -> dict[str, str]:
    """The PromQL for one model, by the field of the Observation it feeds (pure).

    Token means and the prompt mix use `token_window_s` (default: the rate window): a longer
    window gives the capacity model steadier means, and drift re-fitting (kiban.drift.tracker)
    covers the time such a window needs to follow a real change of mix. `ttft_percentiles`
    (the SLO's, e.g. 99 for ttftP99Ms) add `ttft_key(p)` queries; 95 is always there. Optional
    queries (optional_query) come last.
    """
    w = promql_duration(window_s)
    tw = promql_duration(token_window_s) if token_window_s is not None else w
    s = selector
    queries = {
        # engines scraped for this model: no engine, no data (a gauge always present in vLLM)
        "engines": f"count(vllm:num_requests_running{{{s}}})",
        "completion_rate": f"sum(rate(vllm:request_success_total{{{s}}}[{w}]))",
        # growth of requests inside the engines over the window (arrivals not yet completed)
        "in_engine_growth": (
            f"sum(delta(vllm:num_requests_running{{{s}}}[{w}])) + sum(delta(vllm:num_requests_waiting{{{s}}}[{w}]))"
        ),
        "mean_prompt_tokens": (
            f"sum(rate(vllm:request_prompt_tokens_sum{{{s}}}[{tw}])) / "
            f"sum(rate(vllm:request_prompt_tokens_count{{{s}}}[{tw}]))"
        ),
        "mean_output_tokens": (
            f"sum(rate(vllm:request_generation_tokens_sum{{{s}}}[{tw}])) / "
            f"sum(rate(vllm:request_generation_tokens_count{{{s}}}[{tw}]))"
        ),
        "running": f"sum(vllm:num_requests_running{{{s}}})",
        "waiting": f"sum(vllm:num_requests_waiting{{{s}}})",
        ttft_key(95): _ttft_quantile(95, s, w),
        "kv_cache_usage": "max(" + " or ".join(f"{name}{{{s}}}" for name in KV_USAGE_NAMES) + ")",
        # per engine, for re-fitting alpha/beta: time-averaged batch and mean inter-token latency
        "batch_by_engine": f"avg_over_time(vllm:num_requests_running{{{s}}}[{w}])",
        "itl_by_engine": (
            f"({_rate_either(ITL_NAMES, '_sum', s, w)}) / ({_rate_either(ITL_NAMES, '_count', s, w)})"
        ),
    }
    for percentile in ttft_percentiles:
        queries.setdefault(ttft_key(percentile), _ttft_quantile(percentile, s, w))
    # the window's prompt-length law: the same query as the prompt_tokens drift signal's buckets
    queries[PROMPT_BUCKETS] = bucket_increase_query(DRIFT_HISTOGRAMS["prompt_tokens"], s, tw)
    return queries


# Drift signals (kiban.drift) and the vLLM histograms they come from (new name first, old as fallback).
# vLLM 0.33 has no per-request prefill-seconds-per-token histogram, so that signal is not collected.
DRIFT_HISTOGRAMS: dict[str, tuple[str, ...]] = {
    "prompt_tokens": ("vllm:request_prompt_tokens",),
    "generation_tokens": ("vllm:request_generation_tokens",),
    "itl_seconds": ITL_NAMES,
}


def build_drift_queries(selector: str, window_s: float) -> dict[str, str]:
    """Per drift signal, the window's bucket counts summed over pods by `le`, and its `_sum`.

    increase() already handles counter resets (a restarted pod) and pods that appeared in the
    window, so one query per signal gives the model's window (docs/drift.md).
    """
    w = promql_duration(window_s)
    queries: dict[str, str] = {}
    for signal, names in DRIFT_HISTOGRAMS.items():
        queries[f"{signal}:buckets"] = bucket_increase_query(names, selector, w)
        queries[f"{signal}:sum"] = f"sum({_increase_either(names, '_sum', selector, w)})"
    return queries


# -- pure: answers -----------------------------------------------------------------------------


def _float(text: Any) -> float:
    """Prometheus sends values as strings, including 'NaN', '+Inf' and '-Inf'."""
    try:
        return float(text)
    except (TypeError, ValueError) as exc:
        raise PrometheusUnavailable(QUERY_FAILED, f"value {text!r} is not a number") from exc


def parse_vector(payload: Mapping[str, Any]) -> list[Sample]:
    """Samples of an /api/v1/query answer; an error answer or a non-vector raises PrometheusUnavailable."""
    if payload.get("status") != "success":
        raise PrometheusUnavailable(
            QUERY_FAILED, f"{payload.get('errorType', 'error')}: {payload.get('error', 'no error message')}"
        )
    data = payload.get("data") or {}
    kind = data.get("resultType")
    if kind == "scalar":
        return [Sample({}, _float(data["result"][1]))]
    if kind != "vector":
        raise PrometheusUnavailable(QUERY_FAILED, f"expected an instant vector, got {kind!r}")
    return [Sample(dict(item.get("metric") or {}), _float(item["value"][1])) for item in data.get("result") or ()]


def single_value(samples: Sequence[Sample]) -> float | None:
    """The value of a one-element aggregate; None when the vector is empty (no series)."""
    return samples[0].value if samples else None


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _engine_key(labels: Mapping[str, str]) -> tuple[str, str, str]:
    return (labels.get("namespace", ""), labels.get("instance", ""), labels.get("engine", ""))


def decode_pairs(batch_by_engine: Sequence[Sample], itl_by_engine: Sequence[Sample]) -> tuple[tuple[float, float], ...]:
    """(mean running batch, mean ITL in ms) per engine that decoded in the window: fit_profile's input."""
    batches = {_engine_key(s.labels): s.value for s in batch_by_engine}
    pairs = []
    for sample in itl_by_engine:
        batch = batches.get(_engine_key(sample.labels))
        if batch is not None and math.isfinite(batch) and batch > 0 and math.isfinite(sample.value) and sample.value > 0:
            pairs.append((batch, sample.value * 1000.0))
    return tuple(sorted(pairs))


def prompt_mix_from(buckets: Sequence[Sample]) -> tuple[tuple[float, float], ...] | None:
    """The window's prompt-length law as (tokens, probability) from the prompt-token histogram's
    bucket increase (PROMPT_BUCKETS): per bucket its midpoint, the +Inf bucket at the highest
    finite bound, probabilities normalised; empty buckets left out. None when there is nothing
    usable (no series, no request in the window, no +Inf or no finite bucket)."""
    pairs = [(s.labels["le"], s.value) for s in buckets if "le" in s.labels and math.isfinite(s.value)]
    try:
        histogram = histogram_from_increase(pairs, None) if pairs else None
    except ValueError:  # no +Inf bucket or a repeated le
        return None
    if histogram is None or not histogram.upper_bounds or not histogram.total > 0:
        return None
    total = histogram.total
    return tuple((float(t), c / total) for t, c in zip(bin_midpoints(histogram.upper_bounds), histogram.counts)
                 if c > 0)


def observation_from(
    values: Mapping[str, float | None],
    *,
    time_s: float,
    window_s: float,
    current_replicas: int,
    ready_replicas: int,
    model_name: str,
    ttft_slo_percentile: float | None = None,
    prompt_mix: tuple[tuple[float, float], ...] | None = None,
) -> tuple[Observation, str | None]:
    """The policy's Observation from the queries' values (None: no series), and the CamelCase reason
    when metrics are unavailable (no engine series, NaN or infinite rates).

    `ttft_slo_percentile` picks `values[ttft_key(p)]` for observed_ttft_slo_percentile_s;
    `prompt_mix` (prompt_mix_from) is passed through."""

    def unavailable(code: str, why: str) -> tuple[Observation, str]:
        return Observation(time_s=time_s, metrics_available=False, reason_unavailable=why,
                           current_replicas=current_replicas, ready_replicas=ready_replicas), code

    engines = values.get("engines")
    if not engines:
        return unavailable(NO_SERIES, f"no vLLM series with model_name={model_name!r} in Prometheus (is the model scraped?)")
    completion_rate = values.get("completion_rate")
    completion_rate = 0.0 if completion_rate is None else completion_rate  # no request finished yet
    growth = values.get("in_engine_growth") or 0.0
    if not math.isfinite(completion_rate) or not math.isfinite(growth):
        return unavailable(INVALID, f"arrival rate is not a number (completions {completion_rate}, growth {growth})")
    arrival = max(0.0, completion_rate + growth / window_s)
    running, waiting = values.get("running"), values.get("waiting")
    for name, value in (("running", running), ("waiting", waiting)):
        if value is not None and not math.isfinite(value):
            return unavailable(INVALID, f"vllm:num_requests_{name} is {value}")
    observation = Observation(
        time_s=time_s,
        metrics_available=True,
        arrival_rate_rps=arrival,
        rate_window_s=window_s,
        mean_prompt_tokens=_finite(values.get("mean_prompt_tokens")),
        mean_output_tokens=_finite(values.get("mean_output_tokens")),
        running=running,
        waiting=waiting,
        observed_ttft_p95_s=_finite(values.get(ttft_key(95))),
        observed_ttft_slo_percentile_s=(_finite(values.get(ttft_key(ttft_slo_percentile)))
                                        if ttft_slo_percentile is not None else None),
        prompt_mix=prompt_mix,
        current_replicas=current_replicas,
        ready_replicas=ready_replicas,
    )
    return observation, None


# -- I/O ---------------------------------------------------------------------------------------


def redact_url(url: str) -> str:
    """The URL without user:password, for messages that reach status, Events and logs."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit(parts._replace(netloc=netloc))


def auth_headers(bearer_token_file: str | None) -> dict[str, str]:
    """The Authorization header for a token file (never logged); none without a file."""
    if not bearer_token_file:
        return {}
    with open(bearer_token_file, encoding="utf-8") as handle:
        return {"Authorization": f"Bearer {handle.read().strip()}"}


@dataclass
class PrometheusHttp:
    """PrometheusQuery over the HTTP API (GET /api/v1/query); every failure is PrometheusUnavailable."""

    base_url: str
    timeout_s: float = 5.0
    bearer_token_file: str | None = None  # re-read per query: projected ServiceAccount tokens rotate
    ca_file: str | None = None  # None: the system trust store
    session: requests.Session = field(default_factory=requests.Session)

    def query(self, promql: str, time_s: float) -> list[Sample]:
        url = self.base_url.rstrip("/") + "/api/v1/query"
        try:
            response = self.session.get(url, params={"query": promql, "time": f"{time_s:.3f}"},
                                        headers=auth_headers(self.bearer_token_file),
                                        verify=self.ca_file or True, timeout=self.timeout_s)
        except requests.RequestException as exc:
            raise PrometheusUnavailable(UNREACHABLE, f"Prometheus at {redact_url(self.base_url)} is unreachable: "
                                                     f"{type(exc).__name__}") from exc
        except OSError as exc:  # the token file could not be read (RequestException is an OSError too: caught above)
            raise PrometheusUnavailable(UNREACHABLE, f"Prometheus token file {self.bearer_token_file} "
                                                     f"is unreadable: {type(exc).__name__}") from exc
        try:
            payload = response.json()
        except ValueError:
            raise PrometheusUnavailable(
                UNREACHABLE if response.status_code >= 500 else QUERY_FAILED,
                f"Prometheus at {redact_url(self.base_url)} answered HTTP {response.status_code} without JSON",
            ) from None
        return parse_vector(payload)

    def close(self) -> None:
        self.session.close()


@dataclass(frozen=True)
class Collected:
    """One collection: the policy's Observation plus what only status, logs and fitting use."""

    observation: Observation
    reason_code: str | None = None  # CamelCase why metrics are unavailable; None when available
    engines: int = 0
    kv_cache_usage: float | None = None
    decode_pairs: tuple[tuple[float, float], ...] = ()
    # TTFT in seconds at each SLO percentile asked for (None: no data), for one Observation per SLO
    ttft_slo_s: Mapping[float, float | None] = field(default_factory=dict)


@dataclass(frozen=True)
class DriftSeries:
    """One drift window as Prometheus answered it: per signal, (le, count) pairs and the `_sum`.

    A signal without series (not exported, or no request in the window) is left out.
    `reason_code`/`message` say why nothing could be read (Prometheus trouble).
    """

    time_s: float
    window_s: float
    buckets: Mapping[str, tuple[tuple[str, float], ...]] = field(default_factory=dict)
    sums: Mapping[str, float | None] = field(default_factory=dict)
    reason_code: str | None = None
    message: str | None = None


def drift_series_from(results: Mapping[str, Sequence[Sample]], *, time_s: float, window_s: float) -> DriftSeries:
    """DriftSeries from the answers of build_drift_queries (pure)."""
    buckets: dict[str, tuple[tuple[str, float], ...]] = {}
    sums: dict[str, float | None] = {}
    for signal in DRIFT_HISTOGRAMS:
        pairs = tuple((s.labels["le"], s.value) for s in results.get(f"{signal}:buckets", ())
                      if "le" in s.labels and math.isfinite(s.value))
        if pairs:
            buckets[signal] = pairs
            sums[signal] = _finite(single_value(results.get(f"{signal}:sum", ())))
    return DriftSeries(time_s, window_s, buckets, sums)


class Collector:
    """Runs build_queries against a PrometheusQuery at one evaluation time."""

    def __init__(self, prometheus: PrometheusQuery, window_s: float, namespace_label: bool = True,
                 token_window_s: float | None = None) -> None:
        promql_duration(window_s)  # a bad window fails here, naming the field
        if token_window_s is not None:
            promql_duration(token_window_s)
        self.prometheus = prometheus
        self.window_s = float(window_s)
        self.token_window_s = float(token_window_s) if token_window_s is not None else None
        self.namespace_label = namespace_label

    def collect_drift(self, model_name: str, namespace: str | None, *, time_s: float, window_s: float) -> DriftSeries:
        """The drift histograms of the window ending at time_s; never raises for Prometheus trouble."""
        selector = label_selector(model_name, namespace if self.namespace_label else None)
        results: dict[str, list[Sample]] = {}
        try:
            for key, promql in build_drift_queries(selector, window_s).items():
                results[key] = self.prometheus.query(promql, time_s)
        except PrometheusUnavailable as exc:
            why = exc.message if exc.reason == UNREACHABLE else f"query {key}: {exc.message}"
            return DriftSeries(time_s, window_s, reason_code=exc.reason, message=why)
        return drift_series_from(results, time_s=time_s, window_s=window_s)

    def collect(
        self, model_name: str, namespace: str | None, *, time_s: float, current_replicas: int, ready_replicas: int,
        ttft_percentiles: Sequence[float] = (),
    ) -> Collected:
        """Query Prometheus for one model; never raises for Prometheus trouble (it is in the result).

        `ttft_percentiles`: the SLO's TTFT percentiles (Collected.ttft_slo_s); with exactly one,
        the Observation's observed_ttft_slo_percentile_s is that one's.
        """
        selector = label_selector(model_name, namespace if self.namespace_label else None)
        queries = build_queries(selector, self.window_s, self.token_window_s, ttft_percentiles)
        results: dict[str, list[Sample]] = {}
        try:
            for key, promql in queries.items():
                if optional_query(key):
                    try:
                        results[key] = self.prometheus.query(promql, time_s)
                    except PrometheusUnavailable:
                        results[key] = []  # optional: its field stays None
                    continue
                results[key] = self.prometheus.query(promql, time_s)
                if key == "engines" and not results[key]:
                    break  # nothing scraped for this model: the other answers would be empty too
        except PrometheusUnavailable as exc:
            why = exc.message if exc.reason == UNREACHABLE else f"query {key}: {exc.message}"
            observation = Observation(time_s=time_s, metrics_available=False, reason_unavailable=why,
                                      current_replicas=current_replicas, ready_replicas=ready_replicas)
            return Collected(observation, reason_code=exc.reason)
        values = {key: single_value(samples) for key, samples in results.items()
                  if key not in ("batch_by_engine", "itl_by_engine", PROMPT_BUCKETS)}
        observation, reason_code = observation_from(
            values, time_s=time_s, window_s=self.window_s, current_replicas=current_replicas,
            ready_replicas=ready_replicas, model_name=model_name,
            ttft_slo_percentile=ttft_percentiles[0] if len(set(ttft_percentiles)) == 1 else None,
            prompt_mix=prompt_mix_from(results.get(PROMPT_BUCKETS, [])),
        )
        return Collected(
            observation=observation,
            reason_code=reason_code,
            engines=int(values.get("engines") or 0),
            kv_cache_usage=_finite(values.get("kv_cache_usage")),
            decode_pairs=decode_pairs(results.get("batch_by_engine", []), results.get("itl_by_engine", [])),
            ttft_slo_s=({p: _finite(values.get(ttft_key(p))) for p in ttft_percentiles}
                        if reason_code is None else {}),
        )
