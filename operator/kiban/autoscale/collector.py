"""Read every model's vLLM load from Prometheus in one batch and turn it into policy Observations.

The only module of the autoscaler that talks to Prometheus. One pass asks one query per signal
for all models at once, grouped `by (namespace, model_name)` (vLLM's own label, never `model`),
and splits the answers per model. Three layers, the first two pure (no I/O, unit-tested without
a server, and what the benchmark drives from simulated scrapes):

- queries: `batch_queries(window_s, ...)` → {signal: PromQL} for all models (`build_queries`
  is the same PromQL for one selector); `batch_drift_queries` for the drift histograms.
  The PromQL stays inside the subset docs/autoscaling.md lists (instant selectors with `=`
  matchers, rate/increase/delta/avg_over_time over a range, sum/max/count by, histogram_quantile
  over summed bucket rates, + - / between matching vectors, `or`).
- answers: `collect_from_answers(answers, failures, targets, ...)` → {SeriesKey: Collected},
  the per-model Observation with every value checked (`check_values`: NaN, ±Inf, negative
  counters and values no engine can produce make metrics unavailable, never a decision);
  `drift_from_answers` likewise for drift windows.
- I/O: `PrometheusQuery` is the one-method Protocol the collector needs
  (`query(promql, time_s) -> list[Sample]`); `PrometheusHttp` implements it over the HTTP API,
  `GuardedPrometheus` adds a circuit breaker (kiban.autoscale.breaker). `Collector` runs the
  queries: `collect_all` one after another (the benchmark), `collect_all_async` concurrently on
  an executor the caller owns (the operator: never the reconciler's I/O pool).

Arrival rate: completed requests per second plus the growth of requests in the engine
(running + waiting) over the window, so an overloaded engine, whose completions are capped
by its throughput, still shows the real demand. Fail safe: Prometheus unreachable, an error
answer, an answer for another evaluation time (stale), no series for the model, or a value no
engine can produce give an Observation with metrics_available=False and the reason; the policy
then never scales.

Optional inputs (`observed_ttft_slo_percentile_s`, `prompt_mix`, KV usage, decode pairs): a
failed query, no series or a bad value leaves them None; they never make metrics unavailable.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

import requests

from kiban.autoscale.breaker import CircuitBreaker
from kiban.autoscale.engine_counters import COUNTERS as ENGINE_COUNTERS
from kiban.autoscale.engine_counters import engine_queries, engine_windows
from kiban.autoscale.policy import Observation
from kiban.capacity.fitting import EngineWindow
from kiban.drift.histograms import bin_midpoints
from kiban.drift.tracker import histogram_from_increase

# Machine-readable reasons for metrics_available=False (also the MetricsAvailable condition's reason).
UNREACHABLE = "PrometheusUnreachable"
QUERY_FAILED = "PrometheusQueryFailed"
NO_SERIES = "NoMetrics"
INVALID = "InvalidMetrics"
STALE = "StaleMetrics"

ITL_NAMES = ("vllm:inter_token_latency_seconds", "vllm:time_per_output_token_seconds")  # new, old
KV_USAGE_NAMES = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")  # new, old

# The labels every batched query groups by: one result per model (namespace "" when the scrape
# adds no namespace label). A model is found in the answers by its SeriesKey.
GROUP_LABELS = ("namespace", "model_name")
SeriesKey = tuple[str, str]  # (namespace, model_name) as the engines' series carry them

# What no vLLM engine can produce (physical bounds, not tuned on any data): a value beyond them
# is a broken exporter or Prometheus, and must never size a fleet or stay in the policy's memory.
MAX_RPS_PER_ENGINE = 10_000.0  # requests completed per second by one engine
MAX_TOKENS_PER_REQUEST = 10_000_000.0  # the longest context windows are ~1e7 tokens
MAX_REQUESTS_PER_ENGINE = 1_000_000.0  # running + waiting in one engine
MAX_LATENCY_S = 86_400.0  # a day


class PrometheusUnavailable(Exception):
    """A query could not be answered; `reason` is one of the CamelCase reasons above."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class Sample:
    """One element of an instant vector: its labels and value (NaN and ±Inf kept as floats).

    `time_s`: the evaluation time Prometheus answered for (None when the source has none)."""

    labels: Mapping[str, str]
    value: float
    time_s: float | None = field(default=None, compare=False)


class PrometheusQuery(Protocol):
    """What the collector needs from Prometheus: one instant query evaluated at `time_s`.

    Return the instant vector (a scalar as one label-less Sample); raise PrometheusUnavailable
    when the query cannot be answered."""

    def query(self, promql: str, time_s: float) -> list[Sample]: ...


@dataclass(frozen=True)
class Target:
    """One model a pass collects for: where its series are, and what the policy needs beside them.

    `namespace` is matched only when the scrape adds a namespace label (Collector's
    namespace_label); `ttft_percentiles` are the SLO's (95 is always collected)."""

    namespace: str
    model_name: str
    current_replicas: int
    ready_replicas: int = 0
    ttft_percentiles: tuple[float, ...] = ()


def series_key(namespace: str | None, model_name: str, namespace_label: bool = True) -> SeriesKey:
    """How a model's series are keyed in batched answers."""
    return ((namespace or "") if namespace_label else "", model_name)


def group_labels(namespace_label: bool = True) -> tuple[str, ...]:
    return GROUP_LABELS if namespace_label else ("model_name",)


# -- pure: PromQL ------------------------------------------------------------------------------


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def label_selector(model_name: str, namespace: str | None = None) -> str:
    """`model_name="x",namespace="ns"`: one model's matchers (namespace when scraped with it)."""
    if not model_name:
        raise ValueError("model_name must not be empty")
    matchers = [f'model_name="{_escape(model_name)}"']
    if namespace:
        matchers.append(f'namespace="{_escape(namespace)}"')
    return ",".join(matchers)


def scope_selector(namespace: str | None = None) -> str:
    """The batched queries' matchers: none (every model), or one namespace's models."""
    return f'namespace="{_escape(namespace)}"' if namespace else ""


def promql_duration(seconds: float) -> str:
    """A PromQL range duration: whole seconds as '30s', fractions as milliseconds ('1500ms')."""
    if not (isinstance(seconds, (int, float)) and math.isfinite(seconds) and seconds > 0):
        raise ValueError(f"window_s must be a finite number > 0, got {seconds!r}")
    if float(seconds).is_integer():
        return f"{int(seconds)}s"
    return f"{max(1, round(seconds * 1000))}ms"


def _series(name: str, selector: str) -> str:
    return f"{name}{{{selector}}}" if selector else name


def _agg(op: str, by: Sequence[str], expr: str) -> str:
    """`sum(expr)`, or `sum by (a, b) (expr)` when grouping."""
    return f"{op} by ({', '.join(by)}) ({expr})" if by else f"{op}({expr})"


def _rate_either(names: Sequence[str], suffix: str, selector: str, window: str) -> str:
    """rate() of the first metric name that exists per series (a renamed metric, old name as fallback)."""
    return " or ".join(f"rate({_series(name + suffix, selector)}[{window}])" for name in names)


def _increase_either(names: Sequence[str], suffix: str, selector: str, window: str) -> str:
    return " or ".join(f"increase({_series(name + suffix, selector)}[{window}])" for name in names)


def bucket_increase_query(names: Sequence[str], selector: str, window: str, by: Sequence[str] = ()) -> str:
    """A histogram's bucket counts over the window, summed over pods by `le` (and `by`); increase()
    handles counter resets and pods that appeared in the window."""
    return _agg("sum", ("le", *by), _increase_either(names, "_bucket", selector, window))


def ttft_key(percentile: float) -> str:
    """The build_queries key of TTFT at `percentile` (95 → 'ttft_p95')."""
    return f"ttft_p{percentile:g}"


def _ttft_quantile(percentile: float, selector: str, window: str, by: Sequence[str] = ()) -> str:
    buckets = _agg("sum", ("le", *by), f"rate({_series('vllm:time_to_first_token_seconds_bucket', selector)}[{window}])")
    return f"histogram_quantile({percentile / 100:g}, {buckets})"


PROMPT_BUCKETS = "prompt_buckets"  # key of the prompt-token histogram's window bucket counts (prompt_mix)
# answers with one sample per engine, not per model (the engine fit's counters: engine_counters)
PER_ENGINE = ("batch_by_engine", "itl_by_engine", *ENGINE_COUNTERS)
REQUIRED = ("engines", "completion_rate", "in_engine_growth", "mean_prompt_tokens", "mean_output_tokens",
            "running", "waiting", "ttft_p95")


def optional_query(key: str) -> bool:
    """Queries whose failure leaves their Observation field None instead of making metrics unavailable."""
    return key not in REQUIRED


def build_queries(selector: str, window_s: float, token_window_s: float | None = None,
                  ttft_percentiles: Sequence[float] = (), by: Sequence[str] = ()) -> dict[str, str]:
    """The PromQL by the field of the Observation it feeds (pure): for the series `selector`
    matches (empty: all), one result per `by` group (empty: one value).

    Token means and the prompt mix use `token_window_s` (default: the rate window): a longer
    window gives the capacity model steadier means, and drift re-fitting (kiban.drift.tracker)
    covers the time such a window needs to follow a real change of mix. `ttft_percentiles`
    (the SLO's, e.g. 99 for ttftP99Ms) add `ttft_key(p)` queries; 95 is always there. Optional
    queries (optional_query) come last.
    """
    w = promql_duration(window_s)
    tw = promql_duration(token_window_s) if token_window_s is not None else w
    s = selector

    def sum_rate(name: str, window: str) -> str:
        return _agg("sum", by, f"rate({_series(name, s)}[{window}])")

    def sum_delta(name: str) -> str:
        return _agg("sum", by, f"delta({_series(name, s)}[{w}])")

    queries = {
        # engines scraped for this model: no engine, no data (a gauge always present in vLLM)
        "engines": _agg("count", by, _series("vllm:num_requests_running", s)),
        "completion_rate": sum_rate("vllm:request_success_total", w),
        # growth of requests inside the engines over the window (arrivals not yet completed)
        "in_engine_growth": f"{sum_delta('vllm:num_requests_running')} + {sum_delta('vllm:num_requests_waiting')}",
        "mean_prompt_tokens": (f"{sum_rate('vllm:request_prompt_tokens_sum', tw)} / "
                               f"{sum_rate('vllm:request_prompt_tokens_count', tw)}"),
        "mean_output_tokens": (f"{sum_rate('vllm:request_generation_tokens_sum', tw)} / "
                               f"{sum_rate('vllm:request_generation_tokens_count', tw)}"),
        "running": _agg("sum", by, _series("vllm:num_requests_running", s)),
        "waiting": _agg("sum", by, _series("vllm:num_requests_waiting", s)),
        ttft_key(95): _ttft_quantile(95, s, w, by),
        "kv_cache_usage": _agg("max", by, " or ".join(_series(name, s) for name in KV_USAGE_NAMES)),
        # per engine, for re-fitting alpha/beta: time-averaged batch and mean inter-token latency
        "batch_by_engine": f"avg_over_time({_series('vllm:num_requests_running', s)}[{w}])",
        "itl_by_engine": (
            f"({_rate_either(ITL_NAMES, '_sum', s, w)}) / ({_rate_either(ITL_NAMES, '_count', s, w)})"
        ),
    }
    for percentile in ttft_percentiles:
        queries.setdefault(ttft_key(percentile), _ttft_quantile(percentile, s, w, by))
    # the window's prompt-length law: the same query as the prompt_tokens drift signal's buckets
    queries[PROMPT_BUCKETS] = bucket_increase_query(DRIFT_HISTOGRAMS["prompt_tokens"], s, tw, by)
    # per engine, for the online engine fit (kiban.capacity.fitting): each counter's increase
    queries.update(engine_queries(s, w))
    return queries


def batch_queries(window_s: float, token_window_s: float | None = None, ttft_percentiles: Sequence[float] = (),
                  *, namespace_label: bool = True, namespace: str | None = None) -> dict[str, str]:
    """The PromQL of one pass for every model at once, one query per signal, grouped
    `by (namespace, model_name)` (pure). `namespace` narrows them to one namespace's series (an
    operator watching one namespace); `ttft_percentiles`: every SLO percentile any model has."""
    return build_queries(scope_selector(namespace if namespace_label else None), window_s, token_window_s,
                         sorted(set(ttft_percentiles)), by=group_labels(namespace_label))


# Drift signals (kiban.drift) and the vLLM histograms they come from (new name first, old as fallback).
# vLLM 0.33 has no per-request prefill-seconds-per-token histogram, so that signal is not collected.
DRIFT_HISTOGRAMS: dict[str, tuple[str, ...]] = {
    "prompt_tokens": ("vllm:request_prompt_tokens",),
    "generation_tokens": ("vllm:request_generation_tokens",),
    "itl_seconds": ITL_NAMES,
}


DRIFT_BATCH = "batch:per_engine"


def build_drift_queries(selector: str, window_s: float, by: Sequence[str] = ()) -> dict[str, str]:
    """Per drift signal, the window's bucket counts summed over pods by `le` (and `by`), and its `_sum`.

    increase() already handles counter resets (a restarted pod) and pods that appeared in the
    window, so one query per signal gives the model's window (docs/drift.md).
    """
    w = promql_duration(window_s)
    queries: dict[str, str] = {}
    for signal, names in DRIFT_HISTOGRAMS.items():
        queries[f"{signal}:buckets"] = bucket_increase_query(names, selector, w, by)
        queries[f"{signal}:sum"] = _agg("sum", by, _increase_either(names, "_sum", selector, w))
    # the window's running batch per engine: inter-token latency is compared only at a comparable one
    queries[DRIFT_BATCH] = _agg("avg", by, f"avg_over_time({_series('vllm:num_requests_running', selector)}[{w}])")
    return queries


def batch_drift_queries(window_s: float, *, namespace_label: bool = True,
                        namespace: str | None = None) -> dict[str, str]:
    """The drift histograms' PromQL for every model whose drift window spans `window_s` (pure)."""
    return build_drift_queries(scope_selector(namespace if namespace_label else None), window_s,
                               by=group_labels(namespace_label))


def drift_range_s(range_s: float) -> float:
    """A drift window's query range rounded to whole seconds, so the models due in one pass share
    one query per signal (a pass's jitter of a fraction of a second would split them)."""
    return float(max(1, round(range_s)))


# -- pure: answers -----------------------------------------------------------------------------


def _float(text: Any) -> float:
    """Prometheus sends values as strings, including 'NaN', '+Inf' and '-Inf'."""
    try:
        return float(text)
    except (TypeError, ValueError) as exc:
        raise PrometheusUnavailable(QUERY_FAILED, f"value {text!r} is not a number") from exc


def _time(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def parse_vector(payload: Mapping[str, Any]) -> list[Sample]:
    """Samples of an /api/v1/query answer; an error answer, a non-vector or a malformed one raises
    PrometheusUnavailable."""
    if not isinstance(payload, Mapping):
        raise PrometheusUnavailable(QUERY_FAILED, f"expected a JSON object, got {type(payload).__name__}")
    if payload.get("status") != "success":
        raise PrometheusUnavailable(
            QUERY_FAILED, f"{payload.get('errorType', 'error')}: {payload.get('error', 'no error message')}"
        )
    data = payload.get("data") or {}
    kind = data.get("resultType") if isinstance(data, Mapping) else None
    try:
        if kind == "scalar":
            return [Sample({}, _float(data["result"][1]), _time(data["result"][0]))]
        if kind != "vector":
            raise PrometheusUnavailable(QUERY_FAILED, f"expected an instant vector, got {kind!r}")
        return [Sample(dict(item.get("metric") or {}), _float(item["value"][1]), _time(item["value"][0]))
                for item in data.get("result") or ()]
    except (KeyError, IndexError, TypeError, AttributeError) as exc:
        raise PrometheusUnavailable(QUERY_FAILED, f"malformed answer: {type(exc).__name__}: {exc}") from None


def check_fresh(samples: Sequence[Sample], time_s: float, max_age_s: float | None) -> None:
    """Raise StaleMetrics when the answer is for another evaluation time than asked (a cache or a
    proxy in front of Prometheus answering an old result); samples without a time pass."""
    if max_age_s is None:
        return
    for sample in samples:
        if sample.time_s is not None and abs(time_s - sample.time_s) > max_age_s:
            raise PrometheusUnavailable(
                STALE, f"Prometheus answered for {sample.time_s:.0f}, {time_s - sample.time_s:.0f} s away from "
                       f"the evaluation time asked ({time_s:.0f})")


def single_value(samples: Sequence[Sample]) -> float | None:
    """The value of a one-element aggregate; None when the vector is empty (no series)."""
    return samples[0].value if samples else None


def by_series(samples: Iterable[Sample], namespace_label: bool = True) -> dict[SeriesKey, list[Sample]]:
    """A batched answer split per model (by its SeriesKey); samples without model_name are dropped."""
    out: dict[SeriesKey, list[Sample]] = {}
    for sample in samples:
        name = sample.labels.get("model_name")
        if name:
            out.setdefault(series_key(sample.labels.get("namespace"), name, namespace_label), []).append(sample)
    return out


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _sane(value: float | None, high: float) -> float | None:
    """A value an optional field may carry: finite, >= 0, at most `high`; else None."""
    return value if value is not None and math.isfinite(value) and 0 <= value <= high else None


def _engine_key(labels: Mapping[str, str]) -> tuple[str, str, str]:
    return (labels.get("namespace", ""), labels.get("instance", ""), labels.get("engine", ""))


def decode_pairs(batch_by_engine: Sequence[Sample], itl_by_engine: Sequence[Sample]) -> tuple[tuple[float, float], ...]:
    """(mean running batch, mean ITL in ms) per engine that decoded in the window: fit_profile's input."""
    batches = {_engine_key(s.labels): s.value for s in batch_by_engine}
    pairs = []
    for sample in itl_by_engine:
        batch = batches.get(_engine_key(sample.labels))
        if (batch is not None and math.isfinite(batch) and 0 < batch <= MAX_REQUESTS_PER_ENGINE
                and math.isfinite(sample.value) and 0 < sample.value <= MAX_LATENCY_S):
            pairs.append((batch, sample.value * 1000.0))
    return tuple(sorted(pairs))


def prompt_mix_from(buckets: Sequence[Sample]) -> tuple[tuple[float, float], ...] | None:
    """The window's prompt-length law as (tokens, probability) from the prompt-token histogram's
    bucket increase (PROMPT_BUCKETS): per bucket its midpoint, the +Inf bucket at the highest
    finite bound, probabilities normalised; empty buckets left out. None when there is nothing
    usable (no series, no request in the window, no +Inf or no finite bucket, a negative count)."""
    pairs = [(s.labels["le"], s.value) for s in buckets if "le" in s.labels and math.isfinite(s.value)]
    if any(count < 0 for _, count in pairs):
        return None
    try:
        histogram = histogram_from_increase(pairs, None) if pairs else None
    except ValueError:  # no +Inf bucket or a repeated le
        return None
    if histogram is None or not histogram.upper_bounds or not histogram.total > 0:
        return None
    total = histogram.total
    return tuple((float(t), c / total) for t, c in zip(bin_midpoints(histogram.upper_bounds), histogram.counts)
                 if c > 0)


def check_values(values: Mapping[str, float | None], engines: float, window_s: float) -> str | None:
    """Why the required values cannot be trusted (None: they can): NaN or ±Inf, a negative
    counter rate, gauge or token mean, or more than any engine can produce (MAX_* above)."""
    limits = {
        "completion_rate": ("requests completed per second", MAX_RPS_PER_ENGINE * engines),
        "mean_prompt_tokens": ("mean prompt tokens", MAX_TOKENS_PER_REQUEST),
        "mean_output_tokens": ("mean output tokens", MAX_TOKENS_PER_REQUEST),
        "running": ("vllm:num_requests_running", MAX_REQUESTS_PER_ENGINE * engines),
        "waiting": ("vllm:num_requests_waiting", MAX_REQUESTS_PER_ENGINE * engines),
    }
    for key, (what, high) in limits.items():
        value = values.get(key)
        if value is None or (key.startswith("mean_") and math.isnan(value)):
            continue  # no series; a token mean of 0/0 is NaN while idle
        if not math.isfinite(value):
            return f"{what} is not a number ({value}, query {key})"
        if value < 0:
            return f"{what} is negative ({value:.6g}, query {key})"
        if value > high:
            return f"{what} is {value:.6g}, more than {engines:.0f} engine(s) can produce (query {key})"
    growth = values.get("in_engine_growth")
    if growth is not None:
        if not math.isfinite(growth):
            return f"growth of requests in the engines is not a number ({growth}, query in_engine_growth)"
        if abs(growth) > 2 * MAX_REQUESTS_PER_ENGINE * engines:
            return f"growth of requests in the engines is {growth:.6g} (query in_engine_growth)"
    return None


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
    when metrics are unavailable (no engine series, or values check_values refuses).

    `ttft_slo_percentile` picks `values[ttft_key(p)]` for observed_ttft_slo_percentile_s;
    `prompt_mix` (prompt_mix_from) is passed through."""

    def unavailable(code: str, why: str) -> tuple[Observation, str]:
        return Observation(time_s=time_s, metrics_available=False, reason_unavailable=why,
                           current_replicas=current_replicas, ready_replicas=ready_replicas), code

    engines = values.get("engines")
    if engines is not None and not (math.isfinite(engines) and 0 <= engines <= 1e6):
        return unavailable(INVALID, f"engine count is {engines}")
    if not engines:
        return unavailable(NO_SERIES, f"no vLLM series with model_name={model_name!r} in Prometheus (is the model scraped?)")
    problem = check_values(values, engines, window_s)
    if problem is not None:
        return unavailable(INVALID, problem)
    completion_rate = values.get("completion_rate")
    completion_rate = 0.0 if completion_rate is None else completion_rate  # no request finished yet
    growth = values.get("in_engine_growth") or 0.0
    arrival = max(0.0, completion_rate + growth / window_s)
    if arrival > MAX_RPS_PER_ENGINE * engines:
        return unavailable(INVALID, f"arrival rate {arrival:.6g} req/s is more than {engines:.0f} engine(s) can take")
    observation = Observation(
        time_s=time_s,
        metrics_available=True,
        arrival_rate_rps=arrival,
        rate_window_s=window_s,
        mean_prompt_tokens=_finite(values.get("mean_prompt_tokens")),
        mean_output_tokens=_finite(values.get("mean_output_tokens")),
        running=values.get("running"),
        waiting=values.get("waiting"),
        observed_ttft_p95_s=_sane(values.get(ttft_key(95)), MAX_LATENCY_S),
        observed_ttft_slo_percentile_s=(_sane(values.get(ttft_key(ttft_slo_percentile)), MAX_LATENCY_S)
                                        if ttft_slo_percentile is not None else None),
        prompt_mix=prompt_mix,
        current_replicas=current_replicas,
        ready_replicas=ready_replicas,
    )
    return observation, None


@dataclass(frozen=True)
class Collected:
    """One collection: the policy's Observation plus what only status, logs and fitting use."""

    observation: Observation
    reason_code: str | None = None  # CamelCase why metrics are unavailable; None when available
    engines: int = 0
    kv_cache_usage: float | None = None
    decode_pairs: tuple[tuple[float, float], ...] = ()
    # per engine, its vLLM counters over the rate window (the online engine fit's evidence)
    engine_windows: tuple[EngineWindow, ...] = ()
    # TTFT in seconds at each SLO percentile asked for (None: no data), for one Observation per SLO
    ttft_slo_s: Mapping[float, float | None] = field(default_factory=dict)


def unavailable_for(target: Target, time_s: float, reason: str, message: str) -> Collected:
    """A Collected saying why nothing could be read for `target` (replicas held by the policy)."""
    observation = Observation(time_s=time_s, metrics_available=False, reason_unavailable=message,
                              current_replicas=target.current_replicas, ready_replicas=target.ready_replicas)
    return Collected(observation, reason_code=reason)


def collected_for(
    answers: Mapping[str, Sequence[Sample]], target: Target, *, time_s: float, window_s: float,
) -> Collected:
    """One model's Collected from its own part of every answer (by_series), pure.

    `answers` may lack a key (an optional query that failed: its field stays None)."""
    values = {key: single_value(samples) for key, samples in answers.items()
              if key not in PER_ENGINE and key != PROMPT_BUCKETS}
    percentiles = target.ttft_percentiles
    observation, reason_code = observation_from(
        values, time_s=time_s, window_s=window_s, current_replicas=target.current_replicas,
        ready_replicas=target.ready_replicas, model_name=target.model_name,
        ttft_slo_percentile=percentiles[0] if len(set(percentiles)) == 1 else None,
        prompt_mix=prompt_mix_from(answers.get(PROMPT_BUCKETS, [])),
    )
    if reason_code is not None:
        return Collected(observation, reason_code=reason_code)
    return Collected(
        observation=observation,
        engines=int(values.get("engines") or 0),
        kv_cache_usage=_sane(values.get("kv_cache_usage"), 1.0),
        decode_pairs=decode_pairs(answers.get("batch_by_engine", []), answers.get("itl_by_engine", [])),
        engine_windows=engine_windows(answers, window_s, {_engine_key(s.labels): s.value
                                                          for s in answers.get("batch_by_engine", [])}),
        ttft_slo_s={p: _sane(values.get(ttft_key(p)), MAX_LATENCY_S) for p in percentiles},
    )


def collect_from_answers(
    answers: Mapping[str, Sequence[Sample]],
    failures: Mapping[str, PrometheusUnavailable],
    targets: Iterable[Target],
    *,
    time_s: float,
    window_s: float,
    namespace_label: bool = True,
) -> dict[SeriesKey, Collected]:
    """Every target's Collected from the answers to batch_queries (pure): the benchmark's and the
    operator's one way from PromQL answers to Observations.

    `answers`: {query key: the whole batched vector}; `failures`: {query key: why it failed}. A
    failed required query makes every model unavailable with its reason (it is Prometheus's
    trouble, not a model's); a failed optional one leaves its field None.
    """
    targets = list(targets)
    required = [key for key in failures if not optional_query(key)]
    if required:
        exc = failures[required[0]]
        why = exc.message if exc.reason in (UNREACHABLE, STALE) else f"query {required[0]}: {exc.message}"
        return {series_key(t.namespace, t.model_name, namespace_label): unavailable_for(t, time_s, exc.reason, why)
                for t in targets}
    split = {key: by_series(samples, namespace_label) for key, samples in answers.items()}
    out: dict[SeriesKey, Collected] = {}
    for target in targets:
        key = series_key(target.namespace, target.model_name, namespace_label)
        mine = {query: parts.get(key, []) for query, parts in split.items()}
        out[key] = collected_for(mine, target, time_s=time_s, window_s=window_s)
    return out


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
    batch_per_engine: float | None = None  # mean running requests per engine over the window


def drift_series_from(results: Mapping[str, Sequence[Sample]], *, time_s: float, window_s: float) -> DriftSeries:
    """DriftSeries from one model's part of the answers to the drift queries (pure)."""
    buckets: dict[str, tuple[tuple[str, float], ...]] = {}
    sums: dict[str, float | None] = {}
    for signal in DRIFT_HISTOGRAMS:
        pairs = tuple((s.labels["le"], s.value) for s in results.get(f"{signal}:buckets", ())
                      if "le" in s.labels and math.isfinite(s.value) and s.value >= 0)
        if pairs:
            buckets[signal] = pairs
            sums[signal] = _sane(single_value(results.get(f"{signal}:sum", ())), math.inf)
    batch = _sane(single_value(results.get(DRIFT_BATCH, ())), MAX_REQUESTS_PER_ENGINE)
    return DriftSeries(time_s, window_s, buckets, sums, batch_per_engine=batch)


def drift_from_answers(
    answers: Mapping[str, Sequence[Sample]], failures: Mapping[str, PrometheusUnavailable],
    keys: Iterable[SeriesKey], *, time_s: float, window_s: float, namespace_label: bool = True,
) -> dict[SeriesKey, DriftSeries]:
    """Every model's DriftSeries from the answers to batch_drift_queries (pure)."""
    keys = list(keys)
    if failures:
        name, exc = next(iter(failures.items()))
        why = exc.message if exc.reason in (UNREACHABLE, STALE) else f"query {name}: {exc.message}"
        return {key: DriftSeries(time_s, window_s, reason_code=exc.reason, message=why) for key in keys}
    split = {query: by_series(samples, namespace_label) for query, samples in answers.items()}
    return {key: drift_series_from({q: parts.get(key, []) for q, parts in split.items()},
                                   time_s=time_s, window_s=window_s) for key in keys}


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
        if response.status_code >= 500:
            raise PrometheusUnavailable(UNREACHABLE, f"Prometheus at {redact_url(self.base_url)} answered "
                                                     f"HTTP {response.status_code}")
        try:
            payload = response.json()
        except ValueError:
            raise PrometheusUnavailable(
                QUERY_FAILED, f"Prometheus at {redact_url(self.base_url)} answered HTTP {response.status_code} "
                              "without JSON",
            ) from None
        return parse_vector(payload)

    def close(self) -> None:
        self.session.close()


@dataclass
class GuardedPrometheus:
    """A PrometheusQuery behind a circuit breaker: after `breaker.threshold` unreachable answers in
    a row every query fails at once (PrometheusUnreachable, "circuit open") until the breaker's
    cool-down lets one probe through. Only Prometheus being down or overloaded (UNREACHABLE)
    counts; a bad query or answer is not a reason to stop asking."""

    prometheus: PrometheusQuery
    breaker: CircuitBreaker = field(default_factory=CircuitBreaker)

    def query(self, promql: str, time_s: float) -> list[Sample]:
        if not self.breaker.allow():
            raise PrometheusUnavailable(UNREACHABLE, f"not asking Prometheus: {self.breaker.describe()}")
        try:
            samples = self.prometheus.query(promql, time_s)
        except PrometheusUnavailable as exc:
            if exc.reason == UNREACHABLE:
                self.breaker.failed()
            else:
                self.breaker.succeeded()
            raise
        self.breaker.succeeded()
        return samples


# run(fn) -> an awaitable of fn(): how collect_all_async runs a blocking query (an executor of its own)
Runner = Callable[[Callable[[], list[Sample]]], Awaitable[list[Sample]]]


class Collector:
    """Runs the batched queries against a PrometheusQuery at one evaluation time.

    The benchmark calls `collect_all` (queries one after another); the operator
    `collect_all_async` (concurrently, through a runner on its own bounded executor). Both go
    through batch_queries → PrometheusQuery → collect_from_answers.
    """

    def __init__(self, prometheus: PrometheusQuery, window_s: float, namespace_label: bool = True,
                 token_window_s: float | None = None, namespace: str | None = None,
                 stale_after_s: float | None = None) -> None:
        promql_duration(window_s)  # a bad window fails here, naming the field
        if token_window_s is not None:
            promql_duration(token_window_s)
        self.prometheus = prometheus
        self.window_s = float(window_s)
        self.token_window_s = float(token_window_s) if token_window_s is not None else None
        self.namespace_label = namespace_label
        self.namespace = namespace  # one watched namespace narrows every query to it
        self.stale_after_s = stale_after_s if stale_after_s is not None else self.window_s

    def queries(self, targets: Iterable[Target]) -> dict[str, str]:
        """The pass's PromQL for these targets (their SLO percentiles decide the TTFT queries)."""
        percentiles = {p for t in targets for p in t.ttft_percentiles}
        return batch_queries(self.window_s, self.token_window_s, sorted(percentiles),
                             namespace_label=self.namespace_label, namespace=self.namespace)

    def _ask(self, promql: str, time_s: float) -> list[Sample]:
        samples = self.prometheus.query(promql, time_s)
        check_fresh(samples, time_s, self.stale_after_s)
        return samples

    def _finish(self, answers, failures, targets, time_s) -> dict[SeriesKey, Collected]:
        return collect_from_answers(answers, failures, targets, time_s=time_s, window_s=self.window_s,
                                    namespace_label=self.namespace_label)

    def collect_all(self, targets: Sequence[Target], *, time_s: float) -> dict[SeriesKey, Collected]:
        """Every target's Collected, keyed by series_key; never raises for Prometheus trouble."""
        answers: dict[str, list[Sample]] = {}
        failures: dict[str, PrometheusUnavailable] = {}
        for key, promql in self.queries(targets).items():
            try:
                answers[key] = self._ask(promql, time_s)
            except PrometheusUnavailable as exc:
                failures[key] = exc
                if not optional_query(key):
                    break  # every model is unavailable anyway
            if key == "engines" and not answers[key]:
                break  # nothing scraped at all: the other answers would be empty too
        return self._finish(answers, failures, targets, time_s)

    async def _ask_all(self, queries: Mapping[str, str], time_s: float,
                       run: Runner) -> tuple[dict[str, list[Sample]], dict[str, PrometheusUnavailable]]:
        """Every query in flight at once through `run`; answers and failures by key (an
        unexpected exception is a failure of its query, never of the pass)."""
        outcomes = await asyncio.gather(
            *(run(lambda promql=promql: self._ask(promql, time_s)) for promql in queries.values()),
            return_exceptions=True)
        answers: dict[str, list[Sample]] = {}
        failures: dict[str, PrometheusUnavailable] = {}
        for key, outcome in zip(queries, outcomes):
            if isinstance(outcome, PrometheusUnavailable):
                failures[key] = outcome
            elif isinstance(outcome, BaseException):
                failures[key] = PrometheusUnavailable(QUERY_FAILED, f"{type(outcome).__name__}: {outcome}")
            else:
                answers[key] = outcome
        return answers, failures

    async def collect_all_async(self, targets: Sequence[Target], *, time_s: float,
                                run: Runner) -> dict[SeriesKey, Collected]:
        """collect_all with every query in flight at once through `run` (its executor bounds them)."""
        answers, failures = await self._ask_all(self.queries(targets), time_s, run)
        return self._finish(answers, failures, targets, time_s)

    def collect(
        self, model_name: str, namespace: str | None, *, time_s: float, current_replicas: int, ready_replicas: int,
        ttft_percentiles: Sequence[float] = (),
    ) -> Collected:
        """One model's Collected (collect_all for one target); never raises for Prometheus trouble.

        `ttft_percentiles`: the SLO's TTFT percentiles (Collected.ttft_slo_s); with exactly one,
        the Observation's observed_ttft_slo_percentile_s is that one's.
        """
        target = Target(namespace or "", model_name, current_replicas, ready_replicas, tuple(ttft_percentiles))
        return self.collect_all([target], time_s=time_s)[series_key(namespace, model_name, self.namespace_label)]

    def drift_queries(self, window_s: float) -> dict[str, str]:
        return batch_drift_queries(window_s, namespace_label=self.namespace_label, namespace=self.namespace)

    def collect_drift_all(self, keys: Sequence[SeriesKey], *, time_s: float,
                          window_s: float) -> dict[SeriesKey, DriftSeries]:
        """The drift histograms of the window ending at time_s for every model key; never raises."""
        answers: dict[str, list[Sample]] = {}
        failures: dict[str, PrometheusUnavailable] = {}
        for key, promql in self.drift_queries(window_s).items():
            try:
                answers[key] = self._ask(promql, time_s)
            except PrometheusUnavailable as exc:
                failures[key] = exc
                break
        return drift_from_answers(answers, failures, keys, time_s=time_s, window_s=window_s,
                                  namespace_label=self.namespace_label)

    async def collect_drift_all_async(self, keys: Sequence[SeriesKey], *, time_s: float, window_s: float,
                                      run: Runner) -> dict[SeriesKey, DriftSeries]:
        answers, failures = await self._ask_all(self.drift_queries(window_s), time_s, run)
        return drift_from_answers(answers, failures, keys, time_s=time_s, window_s=window_s,
                                  namespace_label=self.namespace_label)

    def collect_drift(self, model_name: str, namespace: str | None, *, time_s: float, window_s: float) -> DriftSeries:
        """One model's drift window (collect_drift_all for one key)."""
        key = series_key(namespace, model_name, self.namespace_label)
        return self.collect_drift_all([key], time_s=time_s, window_s=window_s)[key]
