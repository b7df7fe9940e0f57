"""Replay a request stream against any OpenAI-compatible endpoint, streaming, and time it.

Works against real vLLM as well as kiban-sim: prompts are placeholder words (one word, one
token in the simulator; about one token each in a real tokenizer), each with a first KV block
of its own so that a prefix cache finds nothing the trace did not share (sim.tokens
`distinct_prompt`), and the exact output length is forced with vLLM's sampling extensions
`ignore_eos` and `min_tokens`.
Latencies are wall-clock seconds measured here, at the client.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp
from tqdm import tqdm

from kiban_serving.loadgen.trace import TraceRequest
from kiban_serving.sim.tokens import distinct_prompt


@dataclass
class RequestResult:
    """What the client saw for one request (seconds, wall clock)."""

    index: int
    scheduled_s: float  # when the trace says it should be sent (relative to replay start)
    sent_s: float  # when it was actually sent (later if the concurrency bound held it)
    prompt_tokens: int
    requested_output_tokens: int
    ok: bool = False
    status: int | None = None
    error: str | None = None
    ttft_s: float | None = None
    e2e_s: float | None = None
    itls_s: list[float] = field(default_factory=list)
    output_tokens: int = 0  # from the server's usage when given, else counted chunks
    finish_reason: str | None = None


def completion_payload(model: str, request: TraceRequest, chat: bool, key: int = 0) -> dict:
    """The JSON body that forces exactly request.output_tokens tokens; `key` makes the prompt's
    first block unique (distinct requests must have distinct keys)."""
    prompt = distinct_prompt(max(request.prompt_tokens, 1), key)
    out = max(request.output_tokens, 1)
    body: dict = {
        "model": model,
        "max_tokens": out,
        "min_tokens": out,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
        "temperature": 0.0,
    }
    if chat:
        body["messages"] = [{"role": "user", "content": prompt}]
    else:
        body["prompt"] = prompt
    return body


def parse_sse_data(line: bytes) -> dict | None:
    """The JSON object of one `data:` line; None for blank lines, comments and [DONE]."""
    text = line.decode("utf-8", errors="replace").strip()
    if not text.startswith("data:"):
        return None
    data = text[5:].strip()
    if data == "[DONE]" or not data:
        return None
    return json.loads(data)


def chunk_has_token(obj: dict, chat: bool) -> bool:
    """True when a streamed chunk carries generated text (not the role or usage chunk)."""
    for choice in obj.get("choices") or []:
        text = (choice.get("delta") or {}).get("content") if chat else choice.get("text")
        if text:
            return True
    return False


async def send_one(
    session: aiohttp.ClientSession,
    url: str,
    model: str,
    request: TraceRequest,
    result: RequestResult,
    chat: bool,
    clock=time.perf_counter,
    key: int = 0,
) -> RequestResult:
    """Send one streaming request and fill `result` with its timings."""
    endpoint = url.rstrip("/") + ("/v1/chat/completions" if chat else "/v1/completions")
    start = clock()
    last = None
    try:
        async with session.post(endpoint, json=completion_payload(model, request, chat, key)) as response:
            result.status = response.status
            if response.status != 200:
                result.error = (await response.text())[:500]
                return result
            async for line in response.content:
                obj = parse_sse_data(line)
                if obj is None:
                    continue
                now = clock()
                if chunk_has_token(obj, chat):
                    if last is None:
                        result.ttft_s = now - start
                    else:
                        result.itls_s.append(now - last)
                    last = now
                    result.output_tokens += 1
                for choice in obj.get("choices") or []:
                    if choice.get("finish_reason"):
                        result.finish_reason = choice["finish_reason"]
                if obj.get("usage"):
                    result.output_tokens = obj["usage"].get("completion_tokens", result.output_tokens)
        result.e2e_s = clock() - start
        result.ok = result.ttft_s is not None
        if not result.ok:
            result.error = "stream ended without any token"
    except (aiohttp.ClientError, asyncio.TimeoutError, json.JSONDecodeError) as exc:
        result.error = f"{type(exc).__name__}: {exc}"
    return result


async def replay(
    url: str,
    model: str,
    requests: list[TraceRequest],
    *,
    max_concurrency: int = 256,
    duration_s: float | None = None,
    chat: bool = False,
    api_key: str | None = None,
    request_timeout_s: float = 600.0,
    progress: bool = False,
    on_result: Callable[[RequestResult], None] | None = None,
) -> list[RequestResult]:
    """Send each request at its arrival time (seconds from now); return one result each.

    `on_result` is called with each result as its request finishes (a caller that cancels the
    replay keeps what finished).

    At most max_concurrency requests are in flight: a request due while the bound is full is
    sent when a slot frees (its `sent_s` records the delay). Requests due at or after
    duration_s are not sent; those already sent are awaited. Apply compress_time /
    multiply_rate (trace.py) beforehand to change the replay speed or the rate.
    """
    if max_concurrency < 1:
        raise ValueError(f"max_concurrency must be >= 1, got {max_concurrency}")
    todo = [r for r in requests if duration_s is None or r.arrival_s < duration_s]
    todo.sort(key=lambda r: r.arrival_s)
    slots = asyncio.Semaphore(max_concurrency)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    timeout = aiohttp.ClientTimeout(total=request_timeout_s)
    connector = aiohttp.TCPConnector(limit=max_concurrency)
    bar = tqdm(total=len(todo), unit="req", disable=not progress, desc="replay")
    results: list[RequestResult] = []
    salt = time.time_ns() & 0xFFFFFFFF  # replays to one server do not share prefixes either
    t0 = time.perf_counter()

    async def run(index: int, request: TraceRequest) -> RequestResult:
        try:
            result = RequestResult(index, request.arrival_s, time.perf_counter() - t0,
                                   request.prompt_tokens, request.output_tokens)  # fmt: skip
            done = await send_one(session, url, model, request, result, chat, key=salt + index)
            if on_result is not None:
                on_result(done)
            return done
        finally:
            slots.release()
            bar.update(1)

    async with aiohttp.ClientSession(headers=headers, timeout=timeout, connector=connector) as session:
        tasks = []
        for index, request in enumerate(todo):
            delay = request.arrival_s - (time.perf_counter() - t0)
            if delay > 0:
                await asyncio.sleep(delay)
            await slots.acquire()
            tasks.append(asyncio.create_task(run(index, request)))
        results = list(await asyncio.gather(*tasks))
    bar.close()
    return results
