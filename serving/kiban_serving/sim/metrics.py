"""vLLM's Prometheus metrics with their exact names, types, labels and bucket boundaries.

Names and buckets are those of vLLM's V1 `PrometheusStatLogger` (vllm/v1/metrics/loggers.py):
every series carries `model_name` (the served model name) and `engine` (engine index, "0").
Counters are declared without the `_total` suffix and exposed with it, as prometheus_client
does for vLLM. Each simulator instance owns its own CollectorRegistry.

Time-valued metrics are in engine seconds: with `--speedup K` they describe the simulated GPU,
not the wall clock (see server.py).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

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
        self, registry: CollectorRegistry, model_name: str, max_model_len: int, engine: str = "0"
    ) -> None:
        labels = (model_name, engine)
        token_buckets = build_1_2_5_buckets(max_model_len)

        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(name, doc, LABELS, registry=registry).labels(*labels)

        def counter(name: str, doc: str) -> Counter:
            return Counter(name, doc, LABELS, registry=registry).labels(*labels)

        def histogram(name: str, doc: str, buckets: list) -> Histogram:
            return Histogram(name, doc, LABELS, buckets=buckets, registry=registry).labels(*labels)

        self.running = gauge("vllm:num_requests_running", "Number of requests in model execution batches.")
        self.waiting = gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed.")
        self.kv_cache_usage = gauge("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.")
        self.prefix_cache_queries = counter(
            "vllm:prefix_cache_queries", "Prefix cache queries, in terms of number of queried tokens."
        )
        self.prefix_cache_hits = counter(
            "vllm:prefix_cache_hits", "Prefix cache hits, in terms of number of cached tokens."
        )
        self.preemptions = counter("vllm:num_preemptions", "Cumulative number of preemption from the engine.")
        self.prompt_tokens = counter("vllm:prompt_tokens", "Number of prefill tokens processed.")
        self.generation_tokens = counter("vllm:generation_tokens", "Number of generation tokens processed.")
        success = Counter(
            "vllm:request_success",
            "Count of successfully processed requests.",
            LABELS + ["finished_reason"],
            registry=registry,
        )
        self.request_success = {reason: success.labels(*labels, reason) for reason in FINISH_REASONS}
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
        self._last_preemptions = 0

    def observe_scheduler(self, engine: Engine) -> None:
        """Set the gauges from the engine's current state."""
        self.running.set(engine.num_running)
        self.waiting.set(engine.num_waiting)
        self.kv_cache_usage.set(engine.kv_usage)
        new_preemptions = engine.num_preemptions - self._last_preemptions
        if new_preemptions:
            self.preemptions.inc(new_preemptions)
            self._last_preemptions = engine.num_preemptions

    def observe_step(self, step: StepResult) -> None:
        """Record one engine step: iteration tokens, token latencies, finished requests."""
        if step.end_s > step.start_s:
            self.iteration_tokens.observe(step.num_prefill_tokens + step.num_decode_tokens)
        for _request_id, prompt_tokens in step.newly_scheduled:
            self.prefix_cache_queries.inc(prompt_tokens)  # no prefix caching: never a hit
        for _request_id, prompt_tokens, ttft_s in step.first_tokens:
            self.prompt_tokens.inc(prompt_tokens)
            self.ttft.observe(ttft_s)
        for token in step.tokens:
            if token.itl_s is not None:
                self.itl.observe(token.itl_s)
        if step.tokens:
            self.generation_tokens.inc(len(step.tokens))
        for done in step.finished:
            self.observe_finished(done)

    def observe_finished(self, done: FinishedRequest) -> None:
        """Record a FinishedRequest's per-request histograms and success counter."""
        self.request_success[done.finish_reason].inc()
        self.e2e.observe(done.e2e_s)
        self.queue_time.observe(done.queue_s)
        self.prefill_time.observe(done.prefill_s)
        self.decode_time.observe(done.decode_s)
        self.inference_time.observe(done.inference_s)
        self.request_prompt_tokens.observe(done.prompt_tokens)
        self.request_generation_tokens.observe(done.output_tokens)
        self.request_max_num_generation_tokens.observe(done.max_output_tokens)
        self.request_params_max_tokens.observe(done.max_output_tokens)
        self.request_params_n.observe(1)
        if done.output_tokens > 1:
            self.request_tpot.observe(done.mean_itl_s)
