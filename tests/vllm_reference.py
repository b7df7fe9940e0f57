"""What vLLM 0.33.0 exports by default: metric family name -> Prometheus type.

VLLM_MD_METRICS is shared/reference/vllm.md's table; VLLM_DEFAULT_METRICS adds every other
family vLLM 0.33.0 registers by default for one engine (vllm/v1/metrics/loggers.py
PrometheusStatLogger.__init__, read for /work/notes/vllm-fidelity.md §9.1), and HTTP_METRICS the
API server's prometheus-fastapi-instrumentator families (§9.2). Every vLLM series carries
model_name and engine labels except those in LABELS_EXCEPTIONS. Written down here from those
sources, not read from the simulator, so the simulator's tests check it against an independent
expectation; tests/ is on sys.path through the root conftest.
"""

VLLM_MD_METRICS = {
    "vllm:num_requests_running": "gauge",
    "vllm:num_requests_waiting": "gauge",
    "vllm:kv_cache_usage_perc": "gauge",
    "vllm:prompt_tokens": "counter",
    "vllm:generation_tokens": "counter",
    "vllm:request_success": "counter",
    "vllm:num_preemptions": "counter",
    "vllm:prefix_cache_queries": "counter",
    "vllm:prefix_cache_hits": "counter",
    "vllm:time_to_first_token_seconds": "histogram",
    "vllm:inter_token_latency_seconds": "histogram",
    "vllm:request_time_per_output_token_seconds": "histogram",
    "vllm:e2e_request_latency_seconds": "histogram",
    "vllm:request_queue_time_seconds": "histogram",
    "vllm:request_prefill_time_seconds": "histogram",
    "vllm:request_decode_time_seconds": "histogram",
    "vllm:request_inference_time_seconds": "histogram",
    "vllm:request_prompt_tokens": "histogram",
    "vllm:request_generation_tokens": "histogram",
    "vllm:iteration_tokens_total": "histogram",
    "vllm:request_params_max_tokens": "histogram",
}

VLLM_DEFAULT_METRICS = {
    **VLLM_MD_METRICS,
    "vllm:num_requests_waiting_by_reason": "gauge",
    "vllm:engine_sleep_state": "gauge",
    "vllm:cache_config_info": "gauge",
    "vllm:external_prefix_cache_queries": "counter",
    "vllm:external_prefix_cache_hits": "counter",
    "vllm:mm_cache_queries": "counter",
    "vllm:mm_cache_hits": "counter",
    "vllm:prompt_tokens_by_source": "counter",
    "vllm:prompt_tokens_cached": "counter",
    "vllm:prompt_tokens_cached_by_source": "counter",
    "vllm:admission_rejections": "counter",
    "vllm:estimated_flops_per_gpu": "counter",  # declared as ..._total: prometheus_client strips it
    "vllm:estimated_read_bytes_per_gpu": "counter",
    "vllm:estimated_write_bytes_per_gpu": "counter",
    "vllm:request_max_num_generation_tokens": "histogram",
    "vllm:request_params_n": "histogram",
    "vllm:request_num_preemptions": "histogram",
    "vllm:request_prefill_kv_computed_tokens": "histogram",
}

# family -> (extra label, its values) for the labelled families
VLLM_EXTRA_LABELS = {
    "vllm:num_requests_waiting_by_reason": ("reason", {"capacity", "deferred"}),
    "vllm:engine_sleep_state": ("sleep_state", {"awake", "weights_offloaded", "discard_all"}),
    "vllm:prompt_tokens_by_source": ("source", {"local_compute", "local_cache_hit", "external_kv_transfer"}),
    "vllm:prompt_tokens_cached_by_source": ("source", {"device", "host", "p2p", "disk", "external_unspecified"}),
    "vllm:request_success": ("finished_reason", {"stop", "length", "abort", "error", "repetition"}),
}
LABELS_EXCEPTIONS = {"vllm:cache_config_info": {"engine"}, "vllm:admission_rejections": {"model_name", "reason"}}

HTTP_METRICS = {
    "http_requests": ("counter", {"method", "status", "handler"}),
    "http_request_size_bytes": ("summary", {"handler"}),
    "http_response_size_bytes": ("summary", {"handler"}),
    "http_request_duration_highr_seconds": ("histogram", set()),
    "http_request_duration_seconds": ("histogram", {"method", "handler"}),
}
