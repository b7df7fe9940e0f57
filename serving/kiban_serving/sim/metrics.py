"""vLLM's Prometheus metrics with their exact names, types, labels and bucket boundaries.

Names, help texts, labels and buckets are those of vLLM 0.33.0's V1 `PrometheusStatLogger`
(vllm/v1/metrics/loggers.py `__init__`, buckets from v1/metrics/buckets.py): every family vLLM
registers by default for one engine without LoRA, speculative decoding or a KV connector.
Every series carries `model_name` (the first served model name) and `engine` ("0") except
`vllm:cache_config_info` (no model_name, `log_metrics_info`) and `vllm:admission_rejections`
(model_name and reason only). Counters are declared without the `_total` suffix and exposed with
it, as prometheus_client does for vLLM. When each one moves follows v1/metrics/stats.py and
v1/engine/output_processor.py (see `observe_step`, `observe_finished`, `observe_parent`).
Each simulator instance owns its own CollectorRegistry; `add_process_collectors` adds the
process_*/python_* families vLLM's single API server exports from prometheus_client's
global registry (v1/metrics/prometheus.py).

Time-valued metrics are in engine seconds: with `--speedup K` they describe the simulated GPU,
not the wall clock (see server.py).
"""

from __future__ import annotations

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
)

from kiban_serving.sim.engine import Engine, FinishedRequest, StepResult

LABELS = ["model_name", "engine"]
FINISH_REASONS = ("stop", "length", "abort", "error", "repetition")  # vLLM FinishReason strings

TTFT_BUCKETS = [
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
    10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
]  # fmt: skip
ITL_BUCKETS = [
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0,
]  # fmt: skip
REQUEST_LATENCY_BUCKETS = [
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0,
    240.0, 480.0, 960.0, 1920.0, 7680.0,
]  # fmt: skip
ITERATION_TOKEN_BUCKETS = [1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384]
N_BUCKETS = [1, 2, 5, 10, 20]
NUM_PREEMPTIONS_BUCKETS = [1, 2, 3, 4, 5, 10, 20]
PROMPT_TOKEN_SOURCES = ("local_compute", "local_cache_hit", "external_kv_transfer")  # stats.PromptTokenStats
CACHE_HIT_SOURCES = ("device", "host", "p2p", "disk", "external_unspecified")  # cache_hit_source.CacheHitSource
ADMISSION_REASONS = ("max_num_queued_reqs", "max_num_queued_tokens")
SLEEP_STATES = ("awake", "weights_offloaded", "discard_all")


def build_1_2_5_buckets(max_value: int) -> list[int]:
    """1, 2, 5, 10, 20, 50, ... up to max_value (vLLM's token-count buckets)."""
    buckets: list[int] = []
    scale = 1
    while True:
        for mantissa in (1, 2, 5):
            value = mantissa * scale
            if value > max_value:
                return buckets
            buckets.append(value)
        scale *= 10


class VllmMetrics:
    """The metric families one vLLM engine exposes, bound to one model and engine index."""

    def __init__(
        self, registry: CollectorRegistry, model_name: str, max_model_len: int, engine: str = "0",
        cache_config: dict[str, str] | None = None,
    ) -> None:
        labels = (model_name, engine)
        token_buckets = build_1_2_5_buckets(max_model_len)

        def labelled(kind, name: str, doc: str, extra: str, values) -> dict:
            family = kind(name, doc, LABELS + [extra], registry=registry)
            return {value: family.labels(*labels, value) for value in values}

        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(name, doc, LABELS, registry=registry).labels(*labels)

        def counter(name: str, doc: str) -> Counter:
            return Counter(name, doc, LABELS, registry=registry).labels(*labels)

        def histogram(name: str, doc: str, buckets: list) -> Histogram:
            return Histogram(name, doc, LABELS, buckets=buckets, registry=registry).labels(*labels)

        self.running = gauge("vllm:num_requests_running", "Number of requests in model execution batches.")
        self.waiting = gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed.")
        self.waiting_by_reason = labelled(
            Gauge, "vllm:num_requests_waiting_by_reason",
            "Number of waiting requests by reason. Reason labels: 'capacity' = waiting for scheduling capacity; "
            "'deferred' = deferred by transient constraints (LoRA budget, KV transfer, blocked status). "
            "Sum of all reasons equals vllm:num_requests_waiting.", "reason", ("capacity", "deferred"))
        sleep = labelled(
            Gauge, "vllm:engine_sleep_state",
            "Engine sleep state; awake = 0 means engine is sleeping; awake = 1 means engine is awake; "
            "weights_offloaded = 1 means sleep level 1; discard_all = 1 means sleep level 2.",
            "sleep_state", SLEEP_STATES)
        sleep["awake"].set(1)
        self.kv_cache_usage = gauge("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.")
        info = dict(cache_config or {})
        info["engine"] = engine
        Gauge("vllm:cache_config_info", "Information of the LLMEngine CacheConfig", list(info),
              registry=registry).labels(**info).set(1)
        self.prefix_cache_queries = counter(
            "vllm:prefix_cache_queries", "Prefix cache queries, in terms of number of queried tokens."
        )
        self.prefix_cache_hits = counter(
            "vllm:prefix_cache_hits", "Prefix cache hits, in terms of number of cached tokens."
        )
        counter("vllm:external_prefix_cache_queries",
                "External prefix cache queries from KV connector cross-instance cache sharing, in terms of "
                "number of queried tokens.")  # no KV connector: stays 0
        counter("vllm:external_prefix_cache_hits",
                "External prefix cache hits from KV connector cross-instance cache sharing, in terms of "
                "number of cached tokens.")
        counter("vllm:mm_cache_queries", "Multi-modal cache queries, in terms of number of queried items.")
        counter("vllm:mm_cache_hits", "Multi-modal cache hits, in terms of number of cached items.")
        self.preemptions = counter("vllm:num_preemptions", "Cumulative number of preemption from the engine.")
        self.prompt_tokens = counter("vllm:prompt_tokens", "Number of prefill tokens processed.")
        self.prompt_tokens_by_source = labelled(
            Counter, "vllm:prompt_tokens_by_source", "Number of prompt tokens by source.", "source",
            PROMPT_TOKEN_SOURCES)
        self.prompt_tokens_cached = counter("vllm:prompt_tokens_cached",
                                            "Number of cached prompt tokens (local + external).")
        self.prompt_tokens_cached_by_source = labelled(
            Counter, "vllm:prompt_tokens_cached_by_source",
            "Prefix-cache hit tokens by the cache tier that supplied them: device (local HBM), host (offloaded "
            "to DRAM), disk, p2p (transferred from another vLLM instance) or external_unspecified. Counted at "
            "admission; sums to vllm:prefix_cache_hits + vllm:external_prefix_cache_hits.", "source",
            CACHE_HIT_SOURCES)
        self.generation_tokens = counter("vllm:generation_tokens", "Number of generation tokens processed.")
        success = Counter(
            "vllm:request_success",
            "Count of successfully processed requests.",
            LABELS + ["finished_reason"],
            registry=registry,
        )
        self.request_success = {reason: success.labels(*labels, reason) for reason in FINISH_REASONS}
        rejections = Counter("vllm:admission_rejections",
                             "Number of admission attempts rejected by a queue limit, by reason.",
                             ["model_name", "reason"], registry=registry)
        for reason in ADMISSION_REASONS:  # no queue limits configured: never rejected
            rejections.labels(model_name, reason)
        for what in ("flops", "read_bytes", "write_bytes"):  # declared with _total; 0 without --enable-mfu-metrics
            noun = "floating point operations" if what == "flops" else \
                f"bytes {'read from' if what == 'read_bytes' else 'written to'} memory"
            counter(f"vllm:estimated_{what}_per_gpu_total",
                    f"Estimated number of {noun} per GPU (for Model Flops Utilization calculations).")
        self.request_prompt_tokens = histogram(
            "vllm:request_prompt_tokens", "Number of prefill tokens processed.", token_buckets
        )
        self.request_generation_tokens = histogram(
            "vllm:request_generation_tokens", "Number of generation tokens processed.", token_buckets
        )
        self.iteration_tokens = histogram(
            "vllm:iteration_tokens_total", "Histogram of number of tokens per engine_step.", ITERATION_TOKEN_BUCKETS
        )
        self.request_max_num_generation_tokens = histogram(
            "vllm:request_max_num_generation_tokens",
            "Histogram of maximum number of requested generation tokens.",
            token_buckets,
        )
        self.request_params_n = histogram("vllm:request_params_n", "Histogram of the n request parameter.", N_BUCKETS)
        self.request_params_max_tokens = histogram(
            "vllm:request_params_max_tokens", "Histogram of the max_tokens request parameter.", token_buckets
        )
        self.ttft = histogram("vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.", TTFT_BUCKETS)
        self.itl = histogram("vllm:inter_token_latency_seconds", "Histogram of inter-token latency in seconds.", ITL_BUCKETS)
        self.request_tpot = histogram(
            "vllm:request_time_per_output_token_seconds",
            "Histogram of time_per_output_token_seconds per request.",
            ITL_BUCKETS,
        )
        self.e2e = histogram(
            "vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.", REQUEST_LATENCY_BUCKETS
        )
        self.queue_time = histogram(
            "vllm:request_queue_time_seconds",
            "Histogram of time spent in WAITING phase for request.",
            REQUEST_LATENCY_BUCKETS,
        )
        self.inference_time = histogram(
            "vllm:request_inference_time_seconds",
            "Histogram of time spent in RUNNING phase for request.",
            REQUEST_LATENCY_BUCKETS,
        )
        self.prefill_time = histogram(
            "vllm:request_prefill_time_seconds",
            "Histogram of time spent in PREFILL phase for request.",
            REQUEST_LATENCY_BUCKETS,
        )
        self.decode_time = histogram(
            "vllm:request_decode_time_seconds",
            "Histogram of time spent in DECODE phase for request.",
            REQUEST_LATENCY_BUCKETS,
        )
        self.request_num_preemptions = histogram(
            "vllm:request_num_preemptions", "Histogram of the number of times a request was preempted.",
            NUM_PREEMPTIONS_BUCKETS)
        self.request_prefill_kv_computed = histogram(
            "vllm:request_prefill_kv_computed_tokens",
            "Histogram of new KV tokens computed during prefill (excluding cached tokens).", token_buckets)
        self._last_preemptions = 0
        self._cached_at_admission: dict[str, int] = {}

    def observe_scheduler(self, engine: Engine) -> None:
        """Set the gauges from the engine's current state."""
        self.running.set(engine.num_running)
        self.waiting.set(engine.num_waiting)
        self.waiting_by_reason["capacity"].set(engine.num_waiting)
        self.kv_cache_usage.set(engine.kv_usage)
        new_preemptions = engine.num_preemptions - self._last_preemptions
        if new_preemptions:
            self.preemptions.inc(new_preemptions)
            self._last_preemptions = engine.num_preemptions

    def observe_step(self, step: StepResult, aborted: frozenset[str] = frozenset()) -> None:
        """Record one engine step as vLLM's scheduler and output processor would.

        Prefix-cache queries and hits at admission (SchedulerStats.prefix_cache_stats); for the
        requests whose first token is in this step, the prompt counters by source, TTFT, and
        `iteration_tokens_total` = their uncached prompt tokens + this step's generated tokens
        (IterationStats: the whole prompt is credited at the first token, not per chunk);
        ITL per output; finished requests. `aborted`: engine ids whose client went away,
        whose outputs the frontend drops (output_processor.py) and so never reach the metrics.
        """
        for request_id, queried, hits in step.prefix_cache:
            self.prefix_cache_queries.inc(queried)
            self.prefix_cache_hits.inc(hits)
            self.prompt_tokens_cached_by_source["device"].inc(hits)
            self._cached_at_admission[request_id] = hits
        new_prompt_tokens = 0
        for request_id, prompt_tokens, ttft_s in step.first_tokens:
            if request_id in aborted:
                continue
            cached = self._cached_at_admission.pop(request_id, 0)
            self.prompt_tokens.inc(prompt_tokens)
            self.prompt_tokens_by_source["local_compute"].inc(prompt_tokens - cached)
            self.prompt_tokens_by_source["local_cache_hit"].inc(cached)
            self.prompt_tokens_cached.inc(cached)
            self.ttft.observe(ttft_s)
            new_prompt_tokens += prompt_tokens - cached
        generated = 0
        for token in step.tokens:
            if token.request_id in aborted:
                continue
            generated += 1
            if token.itl_s is not None:
                self.itl.observe(token.itl_s)
        if generated:
            self.generation_tokens.inc(generated)
        if generated or new_prompt_tokens:
            self.iteration_tokens.observe(new_prompt_tokens + generated)
        for done in step.finished:
            if done.request_id not in aborted:
                self.observe_finished(done)

    def observe_parent(self, n: int, max_generated_tokens: int) -> None:
        """Once per parent request (all n samples of one prompt finished, parallel_sampling.py):
        the n parameter and the most tokens any sample generated."""
        self.request_params_n.observe(n)
        self.request_max_num_generation_tokens.observe(max_generated_tokens)

    def observe_finished(self, done: FinishedRequest) -> None:
        """Record a FinishedRequest's per-request histograms and success counter (per sample)."""
        self.request_success[done.finish_reason].inc()
        self.e2e.observe(done.e2e_s)
        self.queue_time.observe(done.queue_s)
        self.prefill_time.observe(done.prefill_s)
        self.decode_time.observe(done.decode_s)
        self.inference_time.observe(done.inference_s)
        self.request_prompt_tokens.observe(done.prompt_tokens)
        self.request_generation_tokens.observe(done.output_tokens)
        self.request_params_max_tokens.observe(done.max_output_tokens)
        self.request_tpot.observe(done.mean_itl_s)  # 0 for a one-token request, still observed
        self.request_num_preemptions.observe(done.preemptions)
        self.request_prefill_kv_computed.observe(done.prompt_tokens - done.cached_tokens)


def add_process_collectors(registry: CollectorRegistry) -> None:
    """process_*, python_gc_* and python_info, as on vLLM's single API server's /metrics."""
    for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
        registry.register(collector)
