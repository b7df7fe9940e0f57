"""The simulator's metrics carry vLLM's names, types, labels and bucket boundaries."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from kiban.capacity.profiles import PROFILES
from kiban_serving.sim.engine import Engine
from kiban_serving.sim.metrics import VllmMetrics, build_1_2_5_buckets

from vllm_reference import VLLM_MD_METRICS  # tests/vllm_reference.py


def exercised_metrics() -> dict:
    registry = CollectorRegistry()
    metrics = VllmMetrics(registry, "llama", max_model_len=4096)
    engine = Engine(PROFILES["nvidia-l4/8B"], max_num_seqs=2)
    for i in range(4):
        engine.submit(f"r{i}", 100 + i, 5, 0.0)
    while engine.next_step_needed():
        step = engine.step(0.0)
        metrics.observe_scheduler(engine)
        metrics.observe_step(step)
    text = generate_latest(registry).decode()
    return {family.name: family for family in text_string_to_metric_families(text)}


def test_every_documented_metric_has_the_right_type_and_labels():
    families = exercised_metrics()
    for name, kind in VLLM_MD_METRICS.items():
        assert name in families, name
        family = families[name]
        assert family.type == kind, name
        for sample in family.samples:
            assert sample.labels["model_name"] == "llama" and sample.labels["engine"] == "0", sample
    counter_samples = {s.name for s in families["vllm:prompt_tokens"].samples}
    assert "vllm:prompt_tokens_total" in counter_samples
    reasons = {s.labels["finished_reason"] for s in families["vllm:request_success"].samples if s.name.endswith("_total")}
    assert {"stop", "length", "abort"} <= reasons


def test_observed_values_are_consistent_with_the_workload():
    families = exercised_metrics()

    def value(name, sample_name, **labels):
        return next(
            s.value for s in families[name].samples
            if s.name == sample_name and all(s.labels.get(k) == v for k, v in labels.items())
        )  # fmt: skip

    assert value("vllm:request_success", "vllm:request_success_total", finished_reason="length") == 4
    assert value("vllm:prompt_tokens", "vllm:prompt_tokens_total") == 100 + 101 + 102 + 103
    assert value("vllm:generation_tokens", "vllm:generation_tokens_total") == 20
    assert value("vllm:time_to_first_token_seconds", "vllm:time_to_first_token_seconds_count") == 4
    assert value("vllm:inter_token_latency_seconds", "vllm:inter_token_latency_seconds_count") == 16
    assert value("vllm:request_queue_time_seconds", "vllm:request_queue_time_seconds_sum") > 0  # 2 waited
    assert value("vllm:num_requests_running", "vllm:num_requests_running") == 0


def test_bucket_boundaries_match_vllm():
    families = exercised_metrics()

    def bounds(name):
        return [float(s.labels["le"]) for s in families[name].samples if s.name == name + "_bucket"][:-1]

    assert bounds("vllm:time_to_first_token_seconds")[:3] == [0.001, 0.005, 0.01]
    assert bounds("vllm:time_to_first_token_seconds")[-1] == 2560.0
    assert bounds("vllm:inter_token_latency_seconds")[-1] == 80.0
    assert bounds("vllm:e2e_request_latency_seconds")[-1] == 7680.0
    assert bounds("vllm:request_prompt_tokens") == [float(b) for b in build_1_2_5_buckets(4096)]
    assert bounds("vllm:iteration_tokens_total")[-1] == 16384


def test_1_2_5_buckets():
    assert build_1_2_5_buckets(100) == [1, 2, 5, 10, 20, 50, 100]
    assert build_1_2_5_buckets(8192)[-1] == 5000


def test_simulator_buckets_agree_with_the_drift_detectors_reading_of_vllm():
    """Both were read from vLLM's loggers.py independently; the operator parses what we expose."""
    from kiban.drift import histograms as drift
    from kiban_serving.sim import metrics as sim

    assert tuple(sim.TTFT_BUCKETS) == tuple(drift.ttft_seconds_buckets())
    assert tuple(sim.ITL_BUCKETS) == tuple(drift.itl_seconds_buckets())
    assert tuple(sim.REQUEST_LATENCY_BUCKETS) == tuple(drift.request_latency_seconds_buckets())
    assert tuple(float(b) for b in sim.build_1_2_5_buckets(8192)) == tuple(drift.token_count_buckets(8192))
