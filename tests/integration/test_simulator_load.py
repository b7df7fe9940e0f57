"""kiban-load against a running kiban-sim agrees with the engine model's own prediction.

Each check replays the same requests twice: through the pure engine (Engine.advance_to, no
HTTP, no wall clock) and through the simulator process measured by the load generator.
Client latencies include HTTP and event-loop overhead on a shared CPU, which is why the
measured value may exceed the prediction by a small margin but never undercut it.
"""

from __future__ import annotations

import asyncio
import json

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from kiban.capacity.profiles import PROFILES
from kiban_serving.loadgen.cli import main as kiban_load
from kiban_serving.loadgen.client import replay
from kiban_serving.loadgen.report import percentile, summarize
from kiban_serving.loadgen.trace import TraceRequest, compress_time, poisson_requests
from kiban_serving.sim.engine import Engine
from kiban_serving.sim.process import SimulatorProcess

MODEL = "llama-sim"
PROFILE = "nvidia-l4/8B"


def predict(requests_: list[TraceRequest]):
    engine = Engine(PROFILES[PROFILE])
    done = []
    for i, r in enumerate(requests_):
        done += engine.advance_to(r.arrival_s)
        engine.submit(str(i), r.prompt_tokens, r.output_tokens, r.arrival_s)
    return done + engine.advance_to(float("inf"))


def test_lone_request_ttft_and_itl_match_prefill_and_decode_step(tmp_path):
    profile = PROFILES[PROFILE]
    reqs = [TraceRequest(0.9 * i, 1500, 4) for i in range(4)]  # never overlapping
    predicted_ttft_ms = profile.gamma_ms + profile.delta_ms * 1500
    predicted_itl_ms = profile.alpha_ms + profile.beta_ms
    assert [d.ttft_s * 1e3 for d in predict(reqs)] == pytest.approx([predicted_ttft_ms] * 4)

    args = ["--speedup", "1", "--startup-seconds", "0"]
    with SimulatorProcess(MODEL, PROFILE, args, log_path=tmp_path / "sim.log") as sim:
        sim.wait_healthy()
        results = asyncio.run(replay(sim.url, MODEL, reqs))
    report = summarize(results)
    assert report.failed == 0
    assert predicted_ttft_ms * 0.99 <= report.ttft.p50_ms <= predicted_ttft_ms * 1.10, report.to_table()
    assert report.itl.p50_ms == pytest.approx(predicted_itl_ms, rel=0.10), report.to_table()
    assert all(r.output_tokens == 4 for r in results)


def test_served_engine_matches_pure_engine_under_poisson_load(tmp_path):
    speedup = 4.0
    reqs = poisson_requests(rate_rps=2.0, duration_s=40.0, prompt_tokens=500, output_tokens=50, seed=11)
    predicted = predict(reqs)
    pred_ttft_ms = [d.ttft_s * 1e3 for d in predicted]

    args = ["--speedup", str(speedup), "--startup-seconds", "0"]
    with SimulatorProcess(MODEL, PROFILE, args, log_path=tmp_path / "sim.log") as sim:
        sim.wait_healthy()
        results = asyncio.run(replay(sim.url, MODEL, compress_time(reqs, speedup)))
        text = requests.get(sim.url + "/metrics", timeout=5).text
    samples = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}
    served_mean_ttft_ms = 1e3 * samples["vllm:time_to_first_token_seconds_sum"] / samples["vllm:time_to_first_token_seconds_count"]
    assert samples["vllm:time_to_first_token_seconds_count"] == len(reqs)
    # The server's own engine-time histogram: same engine, arrivals shifted only by send jitter.
    assert served_mean_ttft_ms == pytest.approx(sum(pred_ttft_ms) / len(pred_ttft_ms), rel=0.10)

    report = summarize(results, latency_scale=speedup)
    assert report.failed == 0
    pred_p95 = percentile(pred_ttft_ms, 95)
    # Client-side, scaled to engine time: HTTP overhead is multiplied by the speedup too.
    assert pred_p95 * 0.95 <= report.ttft.p95_ms <= pred_p95 * 1.25, (pred_p95, report.to_table())


def test_kiban_load_cli_prints_table_and_writes_json(tmp_path, capsys):
    args = ["--speedup", "20", "--startup-seconds", "0"]
    with SimulatorProcess(MODEL, PROFILE, args, log_path=tmp_path / "sim.log") as sim:
        sim.wait_healthy()
        out = tmp_path / "report.json"
        code = kiban_load([
            "--url", sim.url, "--model", MODEL, "--poisson-rps", "10", "--duration-s", "1",
            "--prompt-tokens", "100", "--output-tokens", "5", "--slo-ttft-ms", "60000",
            "--latency-scale", "20", "--json", str(out), "--no-progress", "--chat",
        ])  # fmt: skip
    assert code == 0
    assert "TTFT" in capsys.readouterr().out
    payload = json.loads(out.read_text())
    assert payload["report"]["failed"] == 0 and payload["report"]["slo_attainment"] == 1.0
    assert all(r["output_tokens"] == 5 for r in payload["results"])
