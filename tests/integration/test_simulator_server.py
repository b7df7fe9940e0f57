"""kiban-sim as a process: OpenAI wire format, vLLM metrics, health during startup, errors.

Starts local simulator processes only (no Kubernetes). Engine time runs faster than wall
time (--speedup) to keep the tests short.
"""

from __future__ import annotations

import asyncio

import aiohttp
import openai
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from kiban_serving.sim.process import SimulatorProcess

from vllm_reference import VLLM_MD_METRICS  # tests/vllm_reference.py

MODEL = "llama-sim"


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    log = tmp_path_factory.mktemp("sim") / "sim.log"
    args = ["--speedup", "50", "--startup-seconds", "0", "--max-num-seqs", "8"]
    with SimulatorProcess(MODEL, "nvidia-h100-80gb/8B", args, log_path=log) as proc:
        proc.wait_healthy()
        yield proc


def scrape(url: str) -> dict:
    text = requests.get(url + "/metrics", timeout=5).text
    return {family.name: family for family in text_string_to_metric_families(text)}


def test_openai_client_streams_completions_and_chat(sim):
    client = openai.OpenAI(base_url=sim.url + "/v1", api_key="unused")
    assert [m.id for m in client.models.list().data] == [MODEL]

    stream = client.completions.create(
        model=MODEL, prompt="one two three", max_tokens=6, stream=True, extra_body={"ignore_eos": True}
    )
    chunks = list(stream)
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert len(text.split()) == 6
    assert chunks[-1].choices[0].finish_reason == "length"

    chat = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hello there"}], max_completion_tokens=4,
        stream=True, stream_options={"include_usage": True}, extra_body={"min_tokens": 4},
    )  # fmt: skip
    chunks = list(chat)
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(content.split()) == 4
    assert chunks[-1].usage.prompt_tokens == 2 and chunks[-1].usage.completion_tokens == 4

    whole = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "a b c"}], max_tokens=3, extra_body={"ignore_eos": True}
    )
    assert whole.usage.completion_tokens == 3 and whole.choices[0].finish_reason == "length"
    assert len(whole.choices[0].message.content.split()) == 3


def test_openai_client_sees_typed_errors(sim):
    client = openai.OpenAI(base_url=sim.url + "/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="no-such-model", prompt="a", max_tokens=1)
    with pytest.raises(openai.BadRequestError, match="maximum context length"):
        client.completions.create(model=MODEL, prompt="a " * 9000, max_tokens=1)


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("post", "/v1/completions", b"{not json", 400),
        ("post", "/v1/completions", b'{"model": "llama-sim"}', 400),
        ("post", "/v1/chat/completions", b'{"model": "llama-sim", "messages": "hi"}', 400),
        ("get", "/v1/nothing-here", None, 404),
        ("get", "/v1/completions", None, 405),
    ],
)
def test_bad_requests_get_openai_style_json_errors(sim, method, path, body, status):
    response = getattr(requests, method)(sim.url + path, data=body, timeout=5)
    assert response.status_code == status
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == status


def test_every_vllm_metric_is_exposed_with_type_and_labels(sim):
    client = openai.OpenAI(base_url=sim.url + "/v1", api_key="unused")
    client.completions.create(model=MODEL, prompt="x y", max_tokens=3, extra_body={"ignore_eos": True})
    families = scrape(sim.url)
    for name, kind in VLLM_MD_METRICS.items():
        assert name in families, f"{name} missing from /metrics"
        assert families[name].type == kind, name
        assert families[name].samples, name
        for sample in families[name].samples:
            assert sample.labels.get("model_name") == MODEL and sample.labels.get("engine") == "0", sample
    assert "vllm:gpu_cache_usage_perc" not in families  # vLLM 0.33 exposes kv_cache_usage_perc only
    success = {s.labels["finished_reason"]: s.value for s in families["vllm:request_success"].samples
               if s.name == "vllm:request_success_total"}  # fmt: skip
    assert success["length"] >= 1


def test_waiting_gauge_rises_when_load_exceeds_max_num_seqs(tmp_path):
    args = ["--speedup", "5", "--startup-seconds", "0", "--max-num-seqs", "2"]
    with SimulatorProcess(MODEL, "nvidia-l4/8B", args, log_path=tmp_path / "sim.log") as proc:
        proc.wait_healthy()
        observed = asyncio.run(_load_and_watch(proc.url, concurrent=6))
    running, waiting = zip(*observed)
    assert max(waiting) >= 3, observed
    assert max(running) == 2, observed


async def _load_and_watch(url: str, concurrent: int) -> list[tuple[float, float]]:
    body = {"model": MODEL, "prompt": "w " * 50, "max_tokens": 40, "ignore_eos": True}
    observed: list[tuple[float, float]] = []
    async with aiohttp.ClientSession() as session:

        async def one() -> int:
            async with session.post(url + "/v1/completions", json=body) as response:
                await response.read()
                return response.status

        tasks = [asyncio.create_task(one()) for _ in range(concurrent)]
        while not all(t.done() for t in tasks):
            async with session.get(url + "/metrics") as response:
                text = await response.text()
            values = {
                s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples
                if s.name in ("vllm:num_requests_running", "vllm:num_requests_waiting")
            }  # fmt: skip
            observed.append((values["vllm:num_requests_running"], values["vllm:num_requests_waiting"]))
            await asyncio.sleep(0.02)
        assert [t.result() for t in tasks] == [200] * concurrent
    return observed


def test_health_is_503_until_startup_is_over(tmp_path):
    # 60 engine seconds of startup at speedup 20 = 3 wall seconds.
    args = ["--speedup", "20", "--startup-seconds", "60"]
    with SimulatorProcess(MODEL, "nvidia-l4/8B", args, log_path=tmp_path / "sim.log") as proc:
        assert proc.health_status() == 503
        response = requests.post(proc.url + "/v1/completions", json={"model": MODEL, "prompt": "a"}, timeout=5)
        assert response.status_code == 503 and response.json()["error"]["code"] == 503
        proc.wait_healthy(timeout_s=30)
        assert proc.health_status() == 200


def test_unknown_profile_exits_with_message(tmp_path):
    proc = SimulatorProcess(MODEL, "nvidia-l4/999B", log_path=tmp_path / "sim.log").start()
    assert proc.process.wait(timeout=30) == 2
    assert "nvidia-l4/8B" in (tmp_path / "sim.log").read_text()
