"""Conformance with a real client: kubernetes-sigs' inference-perf 0.7.0 against kiban-sim.

inference-perf runs from its own Python 3.12 virtualenv (kiban_dev.conformance: cached outside
the repo, built on first use; no Python 3.12 is a failure naming what to install, never a skip).
A short constant-rate, streaming, shared-prefix load goes to one simulator process; the
model-server metrics inference-perf reports are read through a real Prometheus scraping it.

What must hold, each from inference-perf's own report and log:
  * no failed request, and no token-count mismatch when it re-tokenises the streamed text;
  * its usage totals equal the simulator's own counters (vllm:prompt_tokens / generation_tokens);
  * every metric it queries answers, except the two families vLLM 0.33 itself only exports when
    asked to (vllm:corrupted_requests with VLLM_COMPUTE_NANS_IN_LOGITS, vllm:kv_block_* with
    --kv-cache-metrics: inference-perf's vllm_client.py says so beside them);
  * the shared prefixes hit the prefix cache (inference-perf reports the hit rate).
The report is recorded in docs/conformance.md.
"""

from __future__ import annotations

import json
import re

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from kiban_dev.conformance import (
    ConformanceSetupError,
    empty_prometheus_answers,
    ensure_inference_perf,
    inference_perf_config,
    run_inference_perf,
    write_tokenizer,
)
from kiban_serving.sim.process import SimulatorProcess

from pinned_tools import start_or_fail
from support import wait_for

MODEL = "llama-sim"
# inference-perf asks for rate(...[D])[D:D] at the end of a run of D seconds (18 s here): a
# subquery aligned to multiples of D, so its one point can lie up to D before the end and its
# window up to 2D. Prometheus must have scraped the simulator that long before the load starts,
# or the rates are empty for want of two samples, depending on the wall clock alone.
WARM_UP_SCRAPES = 40
NOT_EXPORTED_BY_DEFAULT = re.compile(r"vllm:(corrupted_requests|kv_block_(lifetime|idle_before_evict|reuse_gap)_seconds)")


@pytest.fixture(scope="module")
def inference_perf():
    try:
        return ensure_inference_perf()
    except ConformanceSetupError as exc:
        pytest.fail(str(exc), pytrace=False)


def counter_total(url: str, name: str) -> float:
    text = requests.get(url + "/metrics", timeout=5).text
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == name + "_total")


@pytest.mark.timeout(900)
def test_inference_perf_runs_clean_against_the_simulator(inference_perf, tmp_path):
    from kiban_dev.devcluster import PrometheusServer

    args = ["--startup-seconds", "0", "--speedup", "4", "--max-num-seqs", "64"]
    with SimulatorProcess(MODEL, "nvidia-h100-80gb/8B", args, log_path=tmp_path / "sim.log") as sim:
        sim.wait_healthy()
        prometheus = PrometheusServer(workdir=tmp_path / "prometheus", scrape_interval="1s")
        start_or_fail(prometheus.start)
        try:
            prometheus.set_targets("sim", [f"{sim.host}:{sim.port}"])
            history = f'count_over_time(vllm:num_requests_running{{model_name="{MODEL}"}}[2m])'
            wait_for(lambda: any(float(r["value"][1]) >= WARM_UP_SCRAPES for r in prometheus.query(history)),
                     120, what=f"{WARM_UP_SCRAPES} scrapes of the simulator in Prometheus")
            tokenizer = write_tokenizer(tmp_path / "tokenizer", max_model_len=8192)
            config = inference_perf_config(sim.url, MODEL, prometheus.url, tokenizer, tmp_path / "reports",
                                           rate=4.0, duration_s=12.0)
            run = run_inference_perf(inference_perf, tmp_path / "run", config)
            sim_prompt = counter_total(sim.url, "vllm:prompt_tokens")
            sim_generated = counter_total(sim.url, "vllm:generation_tokens")
            sim_hits = counter_total(sim.url, "vllm:prefix_cache_hits")
        finally:
            prometheus.stop()
    assert run.returncode == 0, run.log[-4000:]
    lifecycle = run.report("summary_lifecycle_metrics.json")
    successes, failures = lifecycle["successes"], lifecycle["failures"]
    assert failures["count"] == 0, json.dumps(failures, indent=1)[:3000]
    assert successes["count"] == 48, successes["count"]  # 4 req/s for 12 s
    assert successes["token_count_mismatches"] == 0
    assert successes["client_fallback_requests"] == {"prompt": 0, "output": 0}  # usage came from the server
    assert successes["prompt_tokens"]["total"] == sim_prompt, (successes["prompt_tokens"], sim_prompt)
    assert successes["output_tokens"]["total"] == sim_generated, (successes["output_tokens"], sim_generated)
    assert sim_generated == 48 * 24  # ignore_eos: every request produced output_len tokens

    missing = [q for q in empty_prometheus_answers(run.log) if not NOT_EXPORTED_BY_DEFAULT.search(q)]
    assert not missing, "inference-perf's queries that found no series:\n" + "\n".join(missing)
    server = run.report("summary_prometheus_metrics.json")["successes"]
    # 4 groups share 256-token system prompts (16 blocks), and 48 requests repeat the 32 prompts
    assert sim_hits > 0 and server["prefix_cache_hit_percent"]["mean"] > 50, server["prefix_cache_hit_percent"]
    assert server["prompt_tokens_cached"] > 0 and server["request_params_n"]["mean"] == 1.0
