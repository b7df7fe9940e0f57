"""kiban-sim as a process: OpenAI wire format, vLLM metrics, health during startup, errors.

Starts local simulator processes only (no Kubernetes). Engine time runs faster than wall
time (--speedup) to keep the tests short.
"""

from __future__ import annotations

import asyncio
import json

import aiohttp
import openai
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from kiban_serving.sim.process import SimulatorProcess

from vllm_reference import (  # tests/vllm_reference.py
    HTTP_METRICS,
    LABELS_EXCEPTIONS,
    VLLM_DEFAULT_METRICS,
    VLLM_EXTRA_LABELS,
)

MODEL = "llama-sim"


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    log = tmp_path_factory.mktemp("sim") / "sim.log"
    args = ["--speedup", "50", "--startup-seconds", "0", "--max-num-seqs", "8", "--model", "hf/org-llama"]
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
    with pytest.raises(openai.BadRequestError, match="greedy sampling"):
        client.completions.create(model=MODEL, prompt="a", n=2, temperature=0)


def test_n_batch_logprobs_and_stop_through_the_openai_client(sim):
    client = openai.OpenAI(base_url=sim.url + "/v1", api_key="unused", max_retries=0)
    batch = client.completions.create(model=MODEL, prompt=["a b", "c d e"], n=2, max_tokens=3, temperature=0.7,
                                      logprobs=2, extra_body={"ignore_eos": True})
    assert [c.index for c in batch.choices] == [0, 1, 2, 3]  # prompt-major, then samples
    assert batch.usage.prompt_tokens == 5 and batch.usage.completion_tokens == 12  # prompts once, not x n
    assert batch.choices[0].logprobs.tokens == [" lorem", " ipsum", " dolor"]
    # the engine's dict is the sampled token plus the top 2; the sampled one is the most likely here, so
    # the two collapse and the first logprobs + 1 entries are 2 keys (completion_top_logprobs_limit)
    assert all(len(top) == 2 for top in batch.choices[0].logprobs.top_logprobs)
    stopped = client.completions.create(model=MODEL, prompt="a", max_tokens=20, stop=["sit"])
    assert stopped.choices[0].finish_reason == "stop" and stopped.choices[0].text == " lorem ipsum dolor "
    chat = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "a"}], n=3,
                                          max_tokens=2, logprobs=True, top_logprobs=2, temperature=1.0)
    assert sorted(c.index for c in chat.choices) == [0, 1, 2]
    assert [len(t.top_logprobs) for t in chat.choices[0].logprobs.content][:1] == [2]
    echo = client.completions.create(model=MODEL, prompt="one two", max_tokens=1, echo=True)
    assert echo.choices[0].text.startswith("one two")


def test_stream_ends_with_the_finish_on_the_last_token_chunk(sim):
    body = {"model": MODEL, "prompt": "a b", "max_tokens": 3, "ignore_eos": True, "stream": True,
            "stream_options": {"include_usage": True}}
    events = [line[6:] for line in requests.post(sim.url + "/v1/completions", json=body, timeout=10).text.split("\n\n")
              if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    token_chunks = [c for c in chunks if c["choices"]]
    assert [c["choices"][0]["text"] for c in token_chunks] == [" lorem", " ipsum", " dolor"]
    assert [c["choices"][0]["finish_reason"] for c in token_chunks] == [None, None, "length"]
    assert chunks[-1]["usage"] == {"prompt_tokens": 2, "total_tokens": 5, "completion_tokens": 3}
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "a"}], "max_tokens": 2, "ignore_eos": True,
            "stream": True}
    events = [json.loads(line[6:]) for line in
              requests.post(sim.url + "/v1/chat/completions", json=chat, timeout=10).text.split("\n\n")
              if line.startswith("data: {")]
    assert [list(e["choices"][0]["delta"]) for e in events] == [["role", "content"], ["content"], ["content"]]
    assert events[-1]["choices"][0]["finish_reason"] == "length"


def test_a_shared_prefix_hits_the_cache_and_prefills_faster(sim):
    prefix = " ".join(f"w{i}" for i in range(480))
    before = scrape(sim.url)

    def counter(families, name):
        return sum(s.value for s in families[name].samples if s.name == name + "_total")

    for question in ("first question here", "another question there"):
        body = {"model": MODEL, "prompt": prefix + " " + question, "max_tokens": 1}
        assert requests.post(sim.url + "/v1/completions", json=body, timeout=10).status_code == 200
    after = scrape(sim.url)
    hits = counter(after, "vllm:prefix_cache_hits") - counter(before, "vllm:prefix_cache_hits")
    assert hits == 480  # 30 whole blocks of 16 shared; the differing question is recomputed
    cached = counter(after, "vllm:prompt_tokens_cached") - counter(before, "vllm:prompt_tokens_cached")
    assert cached == 480


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "expected"),
    [
        ("post", "/v1/completions", b"{not json", 400, "Bad Request"),
        ("post", "/v1/completions", b'{"model": "llama-sim"}', 400, "BadRequestError"),
        ("post", "/v1/chat/completions", b'{"model": "llama-sim", "messages": "hi"}', 400, "Bad Request"),
    ],
)
def test_bad_requests_get_vllms_json_errors(sim, method, path, body, status, expected):
    response = getattr(requests, method)(sim.url + path, data=body, timeout=5,
                                         headers={"Content-Type": "application/json"})
    assert response.status_code == status
    error = response.json()["error"]
    assert list(error) == ["message", "type", "param", "code"] and error["code"] == status
    assert error["type"] == expected


def test_routes_vllm_serves_besides_generation(sim):
    assert requests.get(sim.url + "/v1/nothing-here", timeout=5).json() == {"detail": "Not Found"}
    assert requests.get(sim.url + "/v1/completions", timeout=5).json() == {"detail": "Method Not Allowed"}
    assert requests.get(sim.url + "/version", timeout=5).json() == {"version": "0.33.0"}
    ping = requests.get(sim.url + "/ping", timeout=5)
    assert ping.status_code == 200 and ping.content == b""
    tokens = requests.post(sim.url + "/tokenize", json={"prompt": "hi lorem x"}, timeout=5).json()
    assert tokens["count"] == 3 and tokens["max_model_len"] == 8192
    text = requests.post(sim.url + "/detokenize", json={"tokens": tokens["tokens"]}, timeout=5).json()
    assert text == {"prompt": "hi lorem x"}
    card = requests.get(sim.url + "/v1/models", timeout=5).json()["data"][0]
    assert card["root"] == "hf/org-llama" and card["permission"][0]["object"] == "model_permission"


def test_every_vllm_metric_is_exposed_with_type_and_labels(sim):
    client = openai.OpenAI(base_url=sim.url + "/v1", api_key="unused")
    client.completions.create(model=MODEL, prompt="x y", max_tokens=3, extra_body={"ignore_eos": True})
    families = scrape(sim.url)
    for name, kind in VLLM_DEFAULT_METRICS.items():
        assert name in families, f"{name} missing from /metrics"
        assert families[name].type == kind, name
        assert families[name].samples, name
        extra, values = VLLM_EXTRA_LABELS.get(name, (None, None))
        for sample in families[name].samples:
            expected = LABELS_EXCEPTIONS.get(name, {"model_name", "engine"})
            assert expected <= set(sample.labels), (name, sample)
            if "model_name" in expected:
                assert sample.labels["model_name"] == MODEL, sample
        if extra is not None:
            assert {s.labels[extra] for s in families[name].samples} == values, name
    assert "vllm:gpu_cache_usage_perc" not in families  # vLLM 0.33 exposes kv_cache_usage_perc only
    for name, (kind, labels) in HTTP_METRICS.items():
        assert families[name].type == kind, name
        assert any(set(s.labels) - {"le"} == labels for s in families[name].samples), name
    handlers = {s.labels["handler"] for s in families["http_requests"].samples}
    assert "/v1/completions" in handlers and "/metrics" not in handlers and "/health" not in handlers
    assert "process_resident_memory_bytes" in families
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


def test_a_client_that_goes_away_is_aborted_quietly(sim):
    """vLLM aborts the request (its KV freed, nothing in request_success) and logs nothing by
    default (v1/engine/async_llm.py abort: INFO lines only with --enable-log-requests)."""
    before = scrape(sim.url)

    def finished(families):
        return sum(s.value for s in families["vllm:request_success"].samples if s.name == "vllm:request_success_total")

    body = {"model": MODEL, "prompt": "a b c", "max_tokens": 4000, "ignore_eos": True, "stream": True}
    with requests.post(sim.url + "/v1/completions", json=body, stream=True, timeout=10) as response:
        lines = response.iter_lines()
        assert next(line for line in lines if line).startswith(b"data: {")
    # the connection is closed mid-stream; the simulator notices at its next write
    for _ in range(100):
        running = [s.value for s in scrape(sim.url)["vllm:num_requests_running"].samples]
        if running == [0.0]:
            break
        asyncio.run(asyncio.sleep(0.05))
    after = scrape(sim.url)
    assert [s.value for s in after["vllm:num_requests_running"].samples] == [0.0]
    assert finished(after) == finished(before)
    log = sim.log_path.read_text()
    assert "Traceback" not in log and "Aborted" not in log and "Error handling request" not in log, log[-2000:]


def _stream_through_sigterm(tmp_path, shutdown_timeout: int, tokens: int = 40) -> tuple[list[str], bool, bool]:
    """Start a stream of `tokens` tokens, SIGTERM the simulator after its first chunk; return the
    SSE data lines received, whether a new connection was refused meanwhile, and whether the
    process exited."""
    import socket
    import threading

    args = ["--speedup", "1", "--startup-seconds", "0", "--shutdown-timeout", str(shutdown_timeout)]
    with SimulatorProcess(MODEL, "nvidia-l4/8B", args, log_path=tmp_path / "sim.log") as proc:
        proc.wait_healthy()
        body = {"model": MODEL, "prompt": "one two", "max_tokens": tokens, "stream": True, "ignore_eos": True}
        lines: list[str] = []
        first = threading.Event()

        def read() -> None:
            try:
                with requests.post(proc.url + "/v1/completions", json=body, stream=True, timeout=30) as response:
                    for line in response.iter_lines():
                        if line.startswith(b"data: "):
                            lines.append(line[6:].decode())
                            first.set()
            except requests.RequestException:
                pass
            first.set()

        reader = threading.Thread(target=read)
        reader.start()
        assert first.wait(10), "no first chunk"
        proc.process.terminate()
        refused = False
        for _ in range(40):  # the listening socket closes within a moment of SIGTERM
            try:
                socket.create_connection((proc.host, proc.port), timeout=0.5).close()
            except OSError:
                refused = True
                break
            threading.Event().wait(0.05)
        reader.join(timeout=30)
        exited = proc.process.wait(timeout=30) is not None
    return lines, refused, exited


def test_sigterm_with_a_shutdown_timeout_lets_the_stream_finish_and_refuses_new_connections(tmp_path):
    """vLLM 0.33 with --shutdown-timeout N > 0 drains in-flight requests on SIGTERM."""
    lines, refused, exited = _stream_through_sigterm(tmp_path, shutdown_timeout=30)
    assert lines and lines[-1] == "[DONE]", lines[-3:]
    text = "".join(json.loads(x)["choices"][0]["text"] for x in lines[:-1] if json.loads(x).get("choices"))
    assert len(text.split()) == 40
    assert refused and exited


def test_sigterm_without_a_shutdown_timeout_aborts_the_stream(tmp_path):
    """vLLM 0.33's default --shutdown-timeout 0 aborts in-flight requests on SIGTERM."""
    lines, _refused, exited = _stream_through_sigterm(tmp_path, shutdown_timeout=0)
    assert "[DONE]" not in lines
    assert exited
