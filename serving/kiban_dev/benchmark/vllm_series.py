"""One fleet replica's vLLM metrics, as Prometheus scrapes them from a vLLM 0.33 pod.

Names, label names and bucket bounds are kiban-sim's (kiban_serving.sim.metrics, which follows
vLLM's PrometheusStatLogger), with the target labels a PodMonitor scrape adds (namespace, pod,
instance, job). The values are cumulative as vLLM's are, observed when vLLM observes them:
request-level histograms and `request_success` when a request finishes, TTFT and
`prompt_tokens` when its first token appears, gauges at the scrape. Exported families (what the
operator's collector and the engine fit read):

  gauges      vllm:num_requests_running, vllm:num_requests_waiting, vllm:kv_cache_usage_perc
  counters    vllm:request_success_total{finished_reason}, vllm:prompt_tokens_total,
              vllm:prompt_tokens_cached_total, vllm:generation_tokens_total,
              vllm:num_preemptions_total
  histograms  vllm:time_to_first_token_seconds, vllm:request_prompt_tokens,
              vllm:request_generation_tokens, vllm:request_prefill_time_seconds,
              vllm:request_queue_time_seconds, vllm:request_prefill_kv_computed_tokens
              (_bucket, _sum, _count)
  _sum/_count vllm:inter_token_latency_seconds, vllm:iteration_tokens_total: the fleet's engine
              jumps over runs of identical decode steps and keeps no per-token or per-step
              record, so these two export no _bucket series (nothing the operator asks for).

A scrape sees the engine as of its last step boundary at or after the scrape time (within one
engine step, tens of milliseconds).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
from prometheus_client.utils import floatToGoString

from kiban_dev.benchmark.promql import NAME, SampleStore, label_set
from kiban_serving.sim.engine import Engine, FinishedRequest
from kiban_serving.sim.metrics import (
    FINISH_REASONS,
    REQUEST_LATENCY_BUCKETS,
    TTFT_BUCKETS,
    build_1_2_5_buckets,
)

MODEL_CONTEXT_TOKENS = 131_072  # vLLM's default max_model_len for the Llama 3.1 / 3.3 models profiled
SCRAPE_INTERVAL_S = 15.0  # the chart's PodMonitor interval


def max_model_len(kv_cache_tokens: int) -> int:
    """vLLM's max_model_len: the model's context, or what fits the KV cache if that is less."""
    return int(min(MODEL_CONTEXT_TOKENS, kv_cache_tokens))


@dataclass
class _Histogram:
    """Counts per bucket (the last is +Inf), sum and count, as prometheus_client keeps them."""

    bounds: tuple[float, ...]
    counts: np.ndarray = field(init=False)
    total: float = 0.0
    observed: int = 0

    def __post_init__(self) -> None:
        self.counts = np.zeros(len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1  # le: value <= bound
        self.total += value
        self.observed += 1

    def exposed(self) -> np.ndarray:
        """The _bucket values: counts cumulative in le, +Inf last."""
        return np.cumsum(self.counts)


@dataclass(frozen=True)
class SeriesLayout:
    """The label ids of one replica's series, per exposed metric name (interned once)."""

    ids: dict[str, np.ndarray]


HISTOGRAMS = ("vllm:time_to_first_token_seconds", "vllm:request_prompt_tokens", "vllm:request_generation_tokens",
              "vllm:request_prefill_time_seconds", "vllm:request_queue_time_seconds",
              "vllm:request_prefill_kv_computed_tokens")
SUM_COUNT_ONLY = ("vllm:inter_token_latency_seconds", "vllm:iteration_tokens_total")
GAUGES = ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc")
COUNTERS = ("vllm:prompt_tokens_total", "vllm:prompt_tokens_cached_total", "vllm:generation_tokens_total",
            "vllm:num_preemptions_total")


class ReplicaSeries:
    """The cumulative vLLM metrics of one replica and its scrape into a SampleStore."""

    def __init__(self, store: SampleStore, target_labels: dict[str, str], model_name: str, context_tokens: int,
                 engine: str = "0") -> None:
        token_buckets = tuple(float(b) for b in build_1_2_5_buckets(context_tokens))
        self.histograms = {
            "vllm:time_to_first_token_seconds": _Histogram(tuple(TTFT_BUCKETS)),
            "vllm:request_prompt_tokens": _Histogram(token_buckets),
            "vllm:request_generation_tokens": _Histogram(token_buckets),
            "vllm:request_prefill_time_seconds": _Histogram(tuple(REQUEST_LATENCY_BUCKETS)),
            "vllm:request_queue_time_seconds": _Histogram(tuple(REQUEST_LATENCY_BUCKETS)),
            "vllm:request_prefill_kv_computed_tokens": _Histogram(token_buckets),
        }
        self.cached_finished = 0  # prompt tokens from the prefix cache, of requests settled here
        self.success = dict.fromkeys(FINISH_REASONS, 0)
        self.itl_sum = 0.0
        self.itl_count = 0
        self.ttft_seen: set[str] = set()  # requests whose first token is counted, not yet finished
        base = {**target_labels, "model_name": model_name, "engine": engine}
        self.target = target_labels["instance"]
        self.layout = self._layout(store, base)

    def _layout(self, store: SampleStore, base: dict[str, str]) -> SeriesLayout:
        intern = store.labels.intern

        def one(name: str, **extra: str) -> int:
            return intern(label_set({**base, **extra, NAME: name}))

        ids: dict[str, np.ndarray] = {}
        for name in GAUGES + COUNTERS:
            ids[name] = np.array([one(name)], dtype=np.int64)
        ids["vllm:request_success_total"] = np.array(
            [one("vllm:request_success_total", finished_reason=r) for r in FINISH_REASONS], dtype=np.int64)
        for name, histogram in self.histograms.items():
            les = [floatToGoString(b) for b in histogram.bounds] + ["+Inf"]
            ids[f"{name}_bucket"] = np.array([one(f"{name}_bucket", le=le) for le in les], dtype=np.int64)
        for name in HISTOGRAMS + SUM_COUNT_ONLY:
            ids[f"{name}_sum"] = np.array([one(f"{name}_sum")], dtype=np.int64)
            ids[f"{name}_count"] = np.array([one(f"{name}_count")], dtype=np.int64)
        return SeriesLayout(ids)

    # -- observations (vLLM's moments) ---------------------------------------------------------------

    def first_token(self, request_id: str, ttft_s: float) -> None:
        """A request's first token: TTFT is observed now (once per request)."""
        if request_id not in self.ttft_seen:
            self.ttft_seen.add(request_id)
            self.histograms["vllm:time_to_first_token_seconds"].observe(ttft_s)

    def finished(self, done: FinishedRequest) -> None:
        """A request finished: the request-level histograms and the success counter."""
        if done.request_id in self.ttft_seen:
            self.ttft_seen.discard(done.request_id)
        else:
            self.histograms["vllm:time_to_first_token_seconds"].observe(done.ttft_s)
        self.success[done.finish_reason] += 1
        h = self.histograms
        h["vllm:request_prompt_tokens"].observe(done.prompt_tokens)
        h["vllm:request_generation_tokens"].observe(done.output_tokens)
        h["vllm:request_prefill_time_seconds"].observe(done.prefill_s)
        h["vllm:request_queue_time_seconds"].observe(done.queue_s)
        h["vllm:request_prefill_kv_computed_tokens"].observe(done.prompt_tokens - done.cached_tokens)
        self.cached_finished += done.cached_tokens
        if done.output_tokens > 1:
            self.itl_sum += done.decode_s
            self.itl_count += done.output_tokens - 1

    # -- the scrape --------------------------------------------------------------------------------------

    def scrape(self, store: SampleStore, time_s: float, engine: Engine, in_flight: Iterable[FinishedRequest]) -> None:
        """One scrape at time_s. `in_flight`: this replica's requests the engine finished beyond
        time_s that the fleet has not settled yet (their first token and decode so far count)."""
        itl_sum, itl_count, cached = self.itl_sum, self.itl_count, self.cached_finished
        for req in getattr(engine, "_running", ()):
            if req.first_token_s is not None:
                self.first_token(req.request_id, req.first_token_s - req.arrival_s)
                cached += req.cached_tokens
                if req.num_output > 1:
                    itl_sum += req.last_token_s - req.first_token_s
                    itl_count += req.num_output - 1
        for done in in_flight:
            self.first_token(done.request_id, done.ttft_s)
            cached += done.cached_tokens
            if done.output_tokens > 1:
                itl_sum += done.decode_s
                itl_count += done.output_tokens - 1
        ids = self.layout.ids
        scalar = {
            "vllm:num_requests_running": float(engine.num_running),
            "vllm:num_requests_waiting": float(engine.num_waiting),
            "vllm:kv_cache_usage_perc": engine.kv_usage,
            "vllm:prompt_tokens_total": float(engine.prompt_tokens_total),
            "vllm:prompt_tokens_cached_total": float(cached),
            "vllm:generation_tokens_total": float(engine.generation_tokens_total),
            "vllm:num_preemptions_total": float(engine.num_preemptions),
            "vllm:inter_token_latency_seconds_sum": itl_sum,
            "vllm:inter_token_latency_seconds_count": float(itl_count),
            # a step's new prompt tokens (uncached) and tokens generated; counted per step that
            # emitted a token, as vLLM 0.33's IterationStats (and kiban-sim's metrics) do
            "vllm:iteration_tokens_total_sum": float(engine.prompt_tokens_total - cached + engine.generation_tokens_total),
            "vllm:iteration_tokens_total_count": float(engine.token_steps),
        }
        families = [(name, ids[name], np.array([value])) for name, value in scalar.items()]
        families.append(("vllm:request_success_total", ids["vllm:request_success_total"],
                         np.array([float(self.success[r]) for r in FINISH_REASONS])))
        for name, histogram in self.histograms.items():
            families.append((f"{name}_bucket", ids[f"{name}_bucket"], histogram.exposed()))
            families.append((f"{name}_sum", ids[f"{name}_sum"], np.array([histogram.total])))
            families.append((f"{name}_count", ids[f"{name}_count"], np.array([float(histogram.observed)])))
        store.scrape(self.target, time_s, families)
