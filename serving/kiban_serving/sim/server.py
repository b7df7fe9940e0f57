"""kiban-sim: an OpenAI-compatible HTTP server in front of the simulated engine.

Looks to clients, Prometheus and the operator like `vllm serve` 0.33: /v1/completions and
/v1/chat/completions (streaming SSE or not, with `usage`), /v1/models, /health, /metrics with
vLLM's metric names. It is a simulator: no model runs and the text is placeholder words (see
tokens.py for the tokenisation rule).

Time: the engine runs on engine time = (wall seconds since start) x speedup. With --speedup K a
step the profile says takes 70 ms holds the HTTP stream for 70/K ms of wall time. Everything
the server reports (/metrics histograms, startup) is in engine seconds, i.e. what the simulated
GPU would report; a client measuring wall time sees latencies K times smaller.
--startup-seconds is engine seconds too: /health answers 503 for startup/K wall seconds.

Output length: with `ignore_eos: true` a request produces exactly max_tokens tokens (finish
reason "length"), as in vLLM. Otherwise the simulator draws a seeded "end of sequence" length
(geometric, mean --mean-output-tokens), clamped to [min_tokens, max_tokens] (reason "stop"
when it ends before max_tokens).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import random
import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from kiban.capacity.engine_profile import EngineProfile
from kiban.capacity.profiles import get_profile_by_name
from kiban_serving.sim.engine import Engine, FinishedRequest
from kiban_serving.sim.metrics import VllmMetrics
from kiban_serving.sim.true_engine import perturbed_profile
from kiban_serving.sim.tokens import (
    PromptError,
    count_chat_tokens,
    count_prompt_tokens,
    placeholder_text,
    placeholder_token,
)

log = logging.getLogger("kiban_serving.sim")

DEFAULT_MAX_MODEL_LEN = 8192
DEFAULT_MEAN_OUTPUT_TOKENS = 128


@dataclass(frozen=True)
class SimConfig:
    """Everything one simulator instance needs; startup_s and times are engine seconds."""

    served_model_name: str
    profile: EngineProfile
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    max_model_len: int | None = None
    startup_s: float | None = None  # None: the profile's startup_s
    speedup: float = 1.0
    seed: int = 0
    step_jitter: float = 0.0
    mean_output_tokens: int = DEFAULT_MEAN_OUTPUT_TOKENS

    def effective_max_model_len(self) -> int:
        return self.max_model_len or min(DEFAULT_MAX_MODEL_LEN, self.profile.kv_cache_tokens)

    def effective_startup_s(self) -> float:
        return self.profile.startup_s if self.startup_s is None else self.startup_s


class ApiError(Exception):
    """An OpenAI-style error response."""

    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param = status, message, param


_ERROR_TYPES = {400: "BadRequestError", 404: "NotFoundError", 405: "MethodNotAllowed", 503: "ServiceUnavailableError"}


def error_response(status: int, message: str, param: str | None = None) -> web.Response:
    """{"error": {"message", "type", "param", "code"}} as vLLM's OpenAI server writes it."""
    body = {"error": {"message": message, "type": _ERROR_TYPES.get(status, "InternalServerError"), "param": param, "code": status}}
    return web.json_response(body, status=status)


@dataclass
class _Pending:
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)


class Simulator:
    """One engine, its metrics and the asyncio loop that steps it in (scaled) real time."""

    def __init__(self, config: SimConfig) -> None:
        if config.speedup <= 0 or not math.isfinite(config.speedup):
            raise ValueError(f"speedup must be a positive number, got {config.speedup}")
        self.config = config
        self.max_model_len = config.effective_max_model_len()
        self.engine = Engine(
            config.profile,
            max_num_seqs=config.max_num_seqs,
            max_num_batched_tokens=config.max_num_batched_tokens,
            seed=config.seed,
            step_jitter=config.step_jitter,
        )
        self.registry = CollectorRegistry()
        self.metrics = VllmMetrics(self.registry, config.served_model_name, self.max_model_len)
        self.metrics.observe_scheduler(self.engine)
        self._rng = random.Random(config.seed)
        self._pending: dict[str, _Pending] = {}
        self._wake = asyncio.Event()
        self._t0 = time.monotonic()
        self._task: asyncio.Task | None = None

    def engine_now(self) -> float:
        return (time.monotonic() - self._t0) * self.config.speedup

    def ready(self) -> bool:
        return self.engine_now() >= self.config.effective_startup_s()

    async def start(self, _app: web.Application | None = None) -> None:
        self._t0 = time.monotonic()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self, _app: web.Application | None = None) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    def output_length(self, max_tokens: int, min_tokens: int, ignore_eos: bool) -> tuple[int, int | None]:
        """(max_output_tokens, stop_at_tokens) for the engine; see the module docstring."""
        if ignore_eos or min_tokens >= max_tokens:
            return max_tokens, None
        p = 1.0 / max(self.config.mean_output_tokens, 1)
        natural = 1 + int(math.log(1.0 - self._rng.random()) / math.log(1.0 - p)) if p < 1 else 1
        return max_tokens, max(natural, min_tokens, 1)

    def submit(self, prompt_tokens: int, max_tokens: int, stop_at: int | None) -> tuple[str, asyncio.Queue]:
        request_id = uuid.uuid4().hex
        pending = _Pending()
        self._pending[request_id] = pending
        self.engine.submit(request_id, prompt_tokens, max_tokens, self.engine_now(), stop_at)
        self.metrics.observe_scheduler(self.engine)
        self._wake.set()
        return request_id, pending.queue

    def abort(self, request_id: str) -> None:
        if self._pending.pop(request_id, None) is not None and self.engine.abort(request_id):
            self.metrics.observe_scheduler(self.engine)
            log.info("Aborted request request_id=%s", request_id)

    async def _run(self) -> None:
        """Step the engine back to back while it has work; sleep until each step's end."""
        speedup = self.config.speedup
        busy = False
        while True:
            if not self.engine.next_step_needed():
                busy = False
                self.metrics.observe_scheduler(self.engine)
                self._wake.clear()
                await self._wake.wait()
                continue
            now = self.engine_now()
            # While busy, steps run back to back on the engine clock (as on a GPU), so the
            # event loop's wake-up lateness does not leak into the simulated timeline.
            result = self.engine.step(self.engine.clock_s if busy else now)
            self.metrics.observe_scheduler(self.engine)
            if result.end_s > result.start_s:
                busy = True
                await asyncio.sleep(max(0.0, (result.end_s - self.engine_now()) / speedup))
            else:
                busy = False
                await asyncio.sleep(0)
            self.metrics.observe_step(result)
            for token in result.tokens:
                pending = self._pending.get(token.request_id)
                if pending:
                    pending.queue.put_nowait(("token", token.index))
            for done in result.finished:
                pending = self._pending.pop(done.request_id, None)
                if pending:
                    pending.queue.put_nowait(("finish", done))


# ------------------------------------------------------------------ request parsing (pure)


@dataclass(frozen=True)
class ParsedRequest:
    prompt_tokens: int
    max_tokens: int
    min_tokens: int
    ignore_eos: bool
    stream: bool
    include_usage: bool


def parse_generation_request(body: Any, *, chat: bool, model_name: str, max_model_len: int) -> ParsedRequest:
    """Validate an OpenAI completions/chat body; raise ApiError naming the bad field."""
    if not isinstance(body, dict):
        raise ApiError(400, "request body must be a JSON object")
    model = body.get("model")
    if model is not None and model != model_name:
        raise ApiError(404, f"The model `{model}` does not exist.", "model")
    try:
        if chat:
            if "messages" not in body:
                raise ApiError(400, "field required: messages", "messages")
            prompt_tokens = count_chat_tokens(body["messages"])
        else:
            if "prompt" not in body:
                raise ApiError(400, "field required: prompt", "prompt")
            prompt_tokens = count_prompt_tokens(body["prompt"])
    except PromptError as exc:
        raise ApiError(400, str(exc), exc.param) from None
    if prompt_tokens < 1:
        raise ApiError(400, "the prompt must contain at least one token", "messages" if chat else "prompt")
    if prompt_tokens >= max_model_len:
        raise ApiError(
            400,
            f"This model's maximum context length is {max_model_len} tokens. However, your request "
            f"has {prompt_tokens} input tokens. Please reduce the length of the input messages.",
            "messages" if chat else "prompt",
        )
    max_field = "max_completion_tokens" if chat and body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = _optional_int(body, max_field, minimum=1)
    if max_tokens is None:
        max_tokens = max_model_len - prompt_tokens
    if prompt_tokens + max_tokens > max_model_len:
        raise ApiError(
            400,
            f"This model's maximum context length is {max_model_len} tokens. However, you requested "
            f"{prompt_tokens + max_tokens} tokens ({prompt_tokens} in the input, {max_tokens} in the "
            f"completion). Please reduce the length of the input or completion.",
            max_field,
        )
    min_tokens = _optional_int(body, "min_tokens", minimum=0) or 0
    if min_tokens > max_tokens:
        raise ApiError(400, f"min_tokens ({min_tokens}) must be <= {max_field} ({max_tokens})", "min_tokens")
    n = _optional_int(body, "n", minimum=1)
    if n not in (None, 1):
        raise ApiError(400, "the simulator supports n=1 only", "n")
    ignore_eos = _optional_bool(body, "ignore_eos")
    stream = _optional_bool(body, "stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise ApiError(400, "stream_options must be an object", "stream_options")
    include_usage = bool(options.get("include_usage", False))
    return ParsedRequest(prompt_tokens, max_tokens, min_tokens, ignore_eos, stream, include_usage)


def _optional_int(body: dict, name: str, minimum: int) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ApiError(400, f"{name} must be an integer >= {minimum}, got {value!r}", name)
    return value


def _optional_bool(body: dict, name: str) -> bool:
    value = body.get(name, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise ApiError(400, f"{name} must be a boolean, got {value!r}", name)
    return value


# ------------------------------------------------------------------ response bodies (pure)


def usage_body(prompt_tokens: int, completion_tokens: int) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def completion_chunk(rid: str, created: int, model: str, text: str, finish: str | None) -> dict:
    return {
        "id": rid, "object": "text_completion", "created": created, "model": model,
        "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish, "stop_reason": None}],
    }  # fmt: skip


def chat_chunk(rid: str, created: int, model: str, delta: dict, finish: str | None) -> dict:
    return {
        "id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }  # fmt: skip


# ------------------------------------------------------------------ HTTP handlers


def create_app(config: SimConfig) -> web.Application:
    """The aiohttp application for one simulated vLLM server (run in-process or via main)."""
    sim = Simulator(config)
    app = web.Application(middlewares=[_json_errors])
    app.on_startup.append(sim.start)
    app.on_cleanup.append(sim.stop)
    model = config.served_model_name

    async def health(_request: web.Request) -> web.Response:
        if not sim.ready():
            return error_response(503, "the engine is still starting")
        return web.Response(status=200)

    async def metrics(_request: web.Request) -> web.Response:
        sim.metrics.observe_scheduler(sim.engine)
        body = generate_latest(sim.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def models(_request: web.Request) -> web.Response:
        created = int(time.time())
        card = {
            "id": model, "object": "model", "created": created, "owned_by": "vllm", "root": model,
            "parent": None, "max_model_len": sim.max_model_len, "permission": [],
        }  # fmt: skip
        return web.json_response({"object": "list", "data": [card]})

    async def completions(request: web.Request) -> web.StreamResponse:
        return await _generate(request, chat=False)

    async def chat_completions(request: web.Request) -> web.StreamResponse:
        return await _generate(request, chat=True)

    async def _generate(request: web.Request, chat: bool) -> web.StreamResponse:
        if not sim.ready():
            raise ApiError(503, "the engine is still starting")
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ApiError(400, "request body is not valid JSON") from None
        parsed = parse_generation_request(body, chat=chat, model_name=model, max_model_len=sim.max_model_len)
        max_out, stop_at = sim.output_length(parsed.max_tokens, parsed.min_tokens, parsed.ignore_eos)
        try:
            request_id, queue = sim.submit(parsed.prompt_tokens, max_out, stop_at)
        except ValueError as exc:
            raise ApiError(400, str(exc), "max_tokens") from None
        rid = ("chatcmpl-" if chat else "cmpl-") + request_id
        created = int(time.time())
        try:
            if parsed.stream:
                return await _stream(request, queue, rid, created, chat, parsed)
            done = await _wait_finished(queue)
        except BaseException:
            sim.abort(request_id)
            raise
        return web.json_response(_final_body(rid, created, chat, parsed.prompt_tokens, done))

    async def _stream(request, queue, rid, created, chat, parsed) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)

        async def send(obj: Any) -> None:
            await response.write(b"data: " + json.dumps(obj).encode() + b"\n\n")

        if chat:
            await send(chat_chunk(rid, created, model, {"role": "assistant", "content": ""}, None))
        while True:
            kind, payload = await queue.get()
            if kind == "token":
                text = placeholder_token(payload)
                if chat:
                    await send(chat_chunk(rid, created, model, {"content": text}, None))
                else:
                    await send(completion_chunk(rid, created, model, text, None))
                continue
            done: FinishedRequest = payload
            if chat:
                await send(chat_chunk(rid, created, model, {}, done.finish_reason))
            else:
                await send(completion_chunk(rid, created, model, "", done.finish_reason))
            if parsed.include_usage:
                obj = chat_chunk(rid, created, model, {}, None) if chat else completion_chunk(rid, created, model, "", None)
                obj["choices"] = []
                obj["usage"] = usage_body(parsed.prompt_tokens, done.output_tokens)
                await send(obj)
            await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
            return response

    def _final_body(rid: str, created: int, chat: bool, prompt_tokens: int, done: FinishedRequest) -> dict:
        text = placeholder_text(done.output_tokens)
        if chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                      "finish_reason": done.finish_reason}  # fmt: skip
            obj = "chat.completion"
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": done.finish_reason, "stop_reason": None}
            obj = "text_completion"
        return {
            "id": rid, "object": obj, "created": created, "model": model, "choices": [choice],
            "usage": usage_body(prompt_tokens, done.output_tokens),
        }  # fmt: skip

    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/chat/completions", chat_completions)
    return app


async def _wait_finished(queue: asyncio.Queue) -> FinishedRequest:
    while True:
        kind, payload = await queue.get()
        if kind == "finish":
            return payload


@web.middleware
async def _json_errors(request: web.Request, handler) -> web.StreamResponse:
    """Every error leaves as OpenAI-style JSON, including unknown paths and methods."""
    try:
        return await handler(request)
    except ApiError as exc:
        log.info("Rejected request path=%s status=%s reason=%s", request.path, exc.status, exc.message)
        return error_response(exc.status, exc.message, exc.param)
    except web.HTTPMethodNotAllowed:
        return error_response(405, f"method {request.method} is not allowed on {request.path}")
    except web.HTTPNotFound:
        return error_response(404, f"no route for {request.path}")


# ------------------------------------------------------------------ command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kiban-sim", description="vLLM-compatible engine simulator (no model runs).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--served-model-name", required=True)
    parser.add_argument("--profile", required=True, help="engine profile, e.g. nvidia-l4/8B")
    parser.add_argument("--max-num-seqs", type=int, default=None)
    parser.add_argument("--max-num-batched-tokens", type=int, default=None)
    parser.add_argument("--max-model-len", type=int, default=None)
    parser.add_argument("--startup-seconds", type=float, default=None, help="engine seconds until /health is 200")
    parser.add_argument("--speedup", type=float, default=1.0, help="engine time runs K times faster than wall time")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--step-jitter", type=float, default=0.0, help="uniform +/- fraction on each step time")
    parser.add_argument("--mean-output-tokens", type=int, default=DEFAULT_MEAN_OUTPUT_TOKENS)
    parser.add_argument("--true-engine-seed", type=int, default=None,
                        help="serve a perturbed 'true' engine: each step-time parameter and the KV capacity "
                             "x a seeded log-uniform factor in [0.7, 1.4] (kiban_serving.sim.true_engine)")
    parser.add_argument("--log-level", default="INFO")
    return parser


def profile_from_args(args: argparse.Namespace) -> EngineProfile:
    """The datasheet profile named by --profile, or its true engine with --true-engine-seed."""
    profile = get_profile_by_name(args.profile)
    if args.true_engine_seed is not None:
        profile = perturbed_profile(profile, args.true_engine_seed)
    return profile


def config_from_args(args: argparse.Namespace) -> SimConfig:
    return SimConfig(
        served_model_name=args.served_model_name,
        profile=profile_from_args(args),
        max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens,
        max_model_len=args.max_model_len,
        startup_s=args.startup_seconds,
        speedup=args.speedup,
        seed=args.seed,
        step_jitter=args.step_jitter,
        mean_output_tokens=args.mean_output_tokens,
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        config = config_from_args(args)
        app = create_app(config)
    except (KeyError, ValueError) as exc:
        print(f"kiban-sim: {exc.args[0] if exc.args else exc}", file=sys.stderr)
        return 2
    log.info(
        "Started simulator model=%s profile=%s host=%s port=%s speedup=%s",
        config.served_model_name, config.profile.name, args.host, args.port, config.speedup,
    )  # fmt: skip
    web.run_app(app, host=args.host, port=args.port, print=None, access_log=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
