"""kiban-sim: an OpenAI-compatible HTTP server in front of the simulated engine.

Looks to clients, Prometheus and the operator like `vllm serve` 0.33.0, read from the release's
own source: /v1/completions (one prompt or a batch, n samples, logprobs, echo, stop strings)
and /v1/chat/completions, streaming or not, with vLLM's validation and error bodies
(protocol.py), body and chunk layout (responses.py), /v1/models, /health, /ping, /version,
/load, /tokenize, /detokenize, /metrics with every default vLLM family (metrics.py) and the
API server's HTTP metrics (http_metrics.py). Automatic prefix caching is on, as in vLLM
(--no-enable-prefix-caching turns it off). It is a simulator: no model runs and the text is
placeholder words (tokens.py has the tokenisation rule).

API key: with --api-key or VLLM_API_KEY (the flag wins), every path under /v1, /v2, /inference
and /cohere needs `Authorization: Bearer <key>` (401 `{"error": "Unauthorized"}` otherwise), and
nothing else is guarded: /invocations (SageMaker's route), /health and /metrics stay open, as
vLLM 0.33's AuthenticationMiddleware (entrypoints/serve/middleware/authenticate.py) does.
LoRA adapters (--lora-modules NAME=PATH) are served by the base model's engine under their own
name: a model card each (root the path, parent the base model), and `model` in a response is
the name the request used (openai/models/serving.py).

Time: the engine runs on engine time = (wall seconds since start) x speedup. With --speedup K a
step the profile says takes 70 ms holds the HTTP stream for 70/K ms of wall time. Everything
the server reports (/metrics histograms, startup) is in engine seconds, i.e. what the simulated
GPU would report; a client measuring wall time sees latencies K times smaller.
--startup-seconds is engine seconds too: /health answers 503 for startup/K wall seconds (real
vLLM does not listen until it is ready: a connection is refused instead).

Output length: with `ignore_eos: true` a request produces exactly max_tokens tokens (finish
reason "length"), as in vLLM. Otherwise the simulator draws a seeded "end of sequence" length
(geometric, mean --mean-output-tokens), at least min_tokens; the EOS token counts in usage but
has no text (vLLM's detokenizer skips it). A stop string ends a sample where the placeholder
text first contains it (after min_tokens), cut as vLLM's detokenizer cuts it.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import logging
import math
import os
import random
import secrets
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from kiban.capacity.engine_profile import EngineProfile
from kiban.capacity.profiles import get_profile_by_name
from kiban_serving.sim import responses as rsp
from kiban_serving.sim.engine import DEFAULT_BLOCK_SIZE, Engine, FinishedRequest
from kiban_serving.sim.http_metrics import HttpMetrics
from kiban_serving.sim.metrics import VllmMetrics, add_process_collectors
from kiban_serving.sim.protocol import (
    DEFAULT_MAX_LOGPROBS,
    ApiError,
    GenerationRequest,
    Prompt,
    find_stop,
    parse_generation_request,
    parse_json_body,
    request_validation_error,
    vllm_validation_error,
)
from kiban_serving.sim.true_engine import perturbed_profile
from kiban_serving.sim.tokens import (
    EOS_TOKEN_ID,
    PromptError,
    block_hashes,
    chat_text,
    detokenize,
    id_word,
    placeholder_token,
    placeholder_token_id,
    prompt_token_ids,
    text_token_ids,
)

log = logging.getLogger("kiban_serving.sim")

DEFAULT_MAX_MODEL_LEN = 8192
DEFAULT_MEAN_OUTPUT_TOKENS = 128
ABORT_POLL_S = 0.25  # how often a non-streaming handler checks that its client is still there
GUARDED_PREFIXES = ("/v1", "/v2", "/inference", "/cohere")  # vLLM 0.33's AuthenticationMiddleware


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
    enable_prefix_caching: bool = True  # vLLM's default (config/cache.py)
    block_size: int = DEFAULT_BLOCK_SIZE
    max_logprobs: int = DEFAULT_MAX_LOGPROBS
    model: str | None = None  # `vllm serve MODEL`: the /v1/models root; default the served name
    extra_served_names: tuple[str, ...] = ()  # further --served-model-name aliases
    enable_log_requests: bool = False
    enable_prompt_tokens_details: bool = False
    api_key: str | None = None  # guards GUARDED_PREFIXES only, as in vLLM
    lora_modules: tuple[tuple[str, str], ...] = ()  # (name, path): served beside the base model (same engine)
    shutdown_timeout_s: int = 0  # vLLM's --shutdown-timeout: on SIGTERM 0 aborts, N drains for up to N s

    @property
    def adapters(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.lora_modules)

    def effective_max_model_len(self) -> int:
        return self.max_model_len or min(DEFAULT_MAX_MODEL_LEN, self.profile.kv_cache_tokens)

    def effective_startup_s(self) -> float:
        return self.profile.startup_s if self.startup_s is None else self.startup_s

    @property
    def served_names(self) -> list[str]:
        return [self.served_model_name, *self.extra_served_names]

    @property
    def accepted_names(self) -> list[str]:
        return [*self.served_names, *self.adapters]


def key_allows(path: str, authorization: str | None, api_key: str | None) -> bool:
    """vLLM's rule: without a key everything passes; with one, guarded paths need the Bearer token."""
    if not api_key or not path.startswith(GUARDED_PREFIXES):
        return True
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(hashlib.sha256(token.encode()).digest(), hashlib.sha256(api_key.encode()).digest())


def random_uuid() -> str:
    """vllm/utils/__init__.py random_uuid: 16 hex characters."""
    return secrets.token_hex(8)


@dataclass
class _Sample:
    """One engine request: one sample (of n) of one prompt, and what the client has been sent."""

    engine_id: str
    index: int  # choice index in the response
    prompt: Prompt
    target: int  # tokens it will generate
    finish_reason: str
    stop_reason: str | int | None
    text_length: int | None  # a stop string cuts the text here; None: the tokens' whole text
    eos_last: bool  # the last token is EOS: counted, no text
    tokens: int = 0
    sent_chars: int = 0
    done: FinishedRequest | None = None
    started: bool = False
    _text: list[str] = field(default_factory=list)  # the detokenized pieces so far (grown, never rebuilt)
    _chars: int = 0

    def full_text(self, tokens: int) -> str:
        """The text of the first `tokens` generated tokens, as the detokenizer leaves it."""
        self._extend(tokens)
        text = "".join(self._text)
        if self.text_length is not None and tokens == self.target:
            text = text[: self.text_length]
        return text

    def _extend(self, tokens: int) -> None:
        shown = tokens - 1 if self.eos_last and tokens == self.target else tokens
        while len(self._text) < shown:
            piece = placeholder_token(len(self._text))
            self._text.append(piece)
            self._chars += len(piece)

    def text_between(self, start_char: int, end_char: int) -> str:
        """Characters [start_char, end_char) of the text so far (cheap for the last few pieces)."""
        out, position = [], self._chars
        for piece in reversed(self._text):
            if position <= start_char:
                break
            position -= len(piece)
            out.append(piece)
        joined = "".join(reversed(out))
        return joined[start_char - position:end_char - position]

    def visible_chars(self, tokens: int) -> int:
        """Length of the text after `tokens` tokens (a stop string's cut applied at the end)."""
        self._extend(tokens)
        if self.text_length is not None and tokens == self.target:
            return min(self._chars, self.text_length)
        return self._chars

    def token_ids(self, start: int, end: int) -> list[int]:
        return [EOS_TOKEN_ID if self.eos_last and i == self.target - 1 else placeholder_token_id(i)
                for i in range(start, end)]


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
            block_size=config.block_size,
            seed=config.seed,
            step_jitter=config.step_jitter,
            enable_prefix_caching=config.enable_prefix_caching,
        )
        self.registry = CollectorRegistry()
        add_process_collectors(self.registry)
        self.metrics = VllmMetrics(self.registry, config.served_model_name, self.max_model_len,
                                   cache_config=self.cache_config_labels())
        self.http_metrics = HttpMetrics(self.registry)
        self.metrics.observe_scheduler(self.engine)
        self.fingerprint = rsp.system_fingerprint(config.served_model_name, self.max_model_len, config.profile.name)
        self._rng = random.Random(config.seed)
        self._pending: dict[str, asyncio.Queue] = {}
        self._aborted: set[str] = set()
        self._wake = asyncio.Event()
        self._t0 = time.monotonic()
        self._task: asyncio.Task | None = None

    def cache_config_labels(self) -> dict[str, str]:
        """vllm:cache_config_info's labels: str() of CacheConfig's public fields (config/cache.py)."""
        c, engine = self.config, self.engine
        return {
            "block_size": str(c.block_size), "gpu_memory_utilization": "0.92", "cache_dtype": "auto",
            "is_attention_free": "False", "num_gpu_blocks_override": "None", "sliding_window": "None",
            "enable_prefix_caching": str(c.enable_prefix_caching), "prefix_caching_hash_algo": "sha256",
            "num_gpu_blocks": str(engine.total_blocks), "num_cpu_blocks": "None",
            "kv_cache_size_tokens": str(engine.total_blocks * c.block_size),
        }

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

    def natural_length(self, min_tokens: int) -> int:
        """A seeded end-of-sequence length: geometric with mean --mean-output-tokens, >= min_tokens."""
        p = 1.0 / max(self.config.mean_output_tokens, 1)
        natural = 1 + int(math.log(1.0 - self._rng.random()) / math.log(1.0 - p)) if p < 1 else 1
        return max(natural, min_tokens, 1)

    def plan_sample(self, engine_id: str, index: int, prompt: Prompt, request: GenerationRequest) -> _Sample:
        """How a sample ends: max_tokens, a simulated EOS or a stop string, whichever comes first."""
        limit = prompt.max_tokens
        target, reason, stop_reason, eos = limit, "length", None, False
        if not request.ignore_eos and request.min_tokens < limit:
            natural = self.natural_length(request.min_tokens)
            if natural < limit:
                target, reason, eos = natural, "stop", True
        text_length = None
        if request.stop:
            longest = max(len(s) for s in request.stop)
            horizon = min(limit, request.min_tokens + 2 * len(rsp.PLACEHOLDER_WORDS) + longest + 1)
            pieces = [placeholder_token(i) for i in range(horizon)]
            match = find_stop(pieces, request.stop, request.min_tokens, request.include_stop_str_in_output)
            if match is not None and match.tokens <= target:
                target, reason, stop_reason, eos = match.tokens, "stop", match.stop, False
                text_length = match.text_length
        return _Sample(engine_id, index, prompt, target, reason, stop_reason, text_length, eos)

    def submit(self, sample: _Sample, queue: asyncio.Queue, request: GenerationRequest) -> None:
        hashes = None
        if self.config.enable_prefix_caching and not request.skip_prefix_cache:
            tokens = list(sample.prompt.token_ids) + sample.token_ids(0, sample.target)
            salt = request.cache_salt.encode() if request.cache_salt else b""
            hashes = block_hashes(tokens, self.config.block_size, salt)
        self._pending[sample.engine_id] = queue
        stop_at = sample.target if sample.finish_reason == "stop" and sample.target < sample.prompt.max_tokens \
            else None
        self.engine.submit(sample.engine_id, len(sample.prompt.token_ids), sample.prompt.max_tokens,
                           self.engine_now(), stop_at, hashes)
        self.metrics.observe_scheduler(self.engine)
        self._wake.set()

    def abort(self, engine_ids: list[str], external_id: str) -> None:
        aborted = []
        for engine_id in engine_ids:
            if self._pending.pop(engine_id, None) is not None and self.engine.abort(engine_id):
                aborted.append(engine_id)
            self._aborted.add(engine_id)
        if aborted:
            self.metrics.observe_scheduler(self.engine)
            if self.config.enable_log_requests:  # v1/engine/async_llm.py abort(): two lines, only then
                log.info("Aborted request(s) %s.", ",".join(aborted))
                log.info("Request %s aborted.", external_id)

    async def _run(self) -> None:
        """Step the engine back to back while it has work; sleep until each step's end."""
        speedup = self.config.speedup
        busy = False
        while True:
            if not self.engine.next_step_needed():
                busy = False
                self.metrics.observe_scheduler(self.engine)
                self._aborted.clear()
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
            self.metrics.observe_step(result, frozenset(self._aborted))
            finished = {d.request_id: d for d in result.finished}
            for token in result.tokens:
                queue = self._pending.get(token.request_id)
                if queue is not None:
                    queue.put_nowait((token.request_id, token.index + 1, finished.get(token.request_id)))
            for request_id in finished:
                self._pending.pop(request_id, None)


# ------------------------------------------------------------------ one generation request


class Generation:
    """The samples of one completions/chat request, fanned out to the engine as vLLM does
    (one engine request per prompt and sample, v1/engine/parallel_sampling.py), and their output."""

    def __init__(self, sim: Simulator, request: GenerationRequest, base_id: str, model: str | None = None) -> None:
        self.sim, self.request = sim, request
        self.model = model if model in sim.config.adapters else sim.config.served_model_name
        self.rid = ("chatcmpl-" if request.chat else "cmpl-") + base_id
        self.created = int(time.time())
        self.queue: asyncio.Queue = asyncio.Queue()
        self.samples: list[_Sample] = []
        for p, prompt in enumerate(request.prompts):
            parent = f"{self.rid}-{p}" if not request.chat else self.rid
            for i in range(request.n):
                engine_id = f"{parent}-{random_uuid()[:8]}" if request.n == 1 else f"{i}_{parent}-{random_uuid()[:8]}"
                self.samples.append(sim.plan_sample(engine_id, p * request.n + i, prompt, request))
        self.by_engine_id = {s.engine_id: s for s in self.samples}
        self.logprobs = [rsp.Logprobs(request.logprobs, request.chat) if request.logprobs is not None else None
                         for _ in self.samples]

    def start(self) -> None:
        for sample in self.samples:
            self.sim.submit(sample, self.queue, self.request)

    def abort(self) -> None:
        self.sim.abort([s.engine_id for s in self.samples if s.done is None], self.rid)

    @property
    def finished(self) -> bool:
        return all(s.done is not None for s in self.samples)

    async def next_event(self) -> tuple[_Sample, int, FinishedRequest | None]:
        """(sample, tokens it had before this output, its FinishedRequest when this output ends it)."""
        engine_id, tokens, done = await self.queue.get()
        sample = self.by_engine_id[engine_id]
        previous, sample.tokens = sample.tokens, tokens
        if done is not None:
            sample.done = done
            self._parent_done(sample)
        return sample, previous, done

    def _parent_done(self, sample: _Sample) -> None:
        """vllm:request_params_n and _max_num_generation_tokens once per prompt, after its last sample."""
        siblings = [s for s in self.samples if s.prompt is sample.prompt]
        if all(s.done is not None for s in siblings):
            self.sim.metrics.observe_parent(self.request.n, max(s.done.output_tokens for s in siblings))

    def usage(self, continuous_sample: _Sample | None = None) -> dict:
        request = self.request
        if continuous_sample is not None:
            return rsp.usage(len(continuous_sample.prompt.token_ids), continuous_sample.tokens, full=False)
        prompt = sum(len(p.token_ids) for p in request.prompts)
        completion = sum(s.tokens for s in self.samples)
        cached = None
        if self.sim.config.enable_prompt_tokens_details:
            last = self.samples[-1].done
            cached = last.cached_tokens if last is not None else 0
        return rsp.usage(prompt, completion, cached, chat=request.chat)

    def logprob_block(self, sample: _Sample, start: int, end: int) -> dict | None:
        lp = self.logprobs[sample.index]
        if lp is None:
            return None
        pieces = []
        for i in range(start, end):
            text = "" if sample.eos_last and i == sample.target - 1 else placeholder_token(i)
            pieces.append(lp.piece(i, text))
        return lp.block(pieces)

    def body(self) -> dict:
        """The non-streaming response (completion/serving.py request_output_to_completion_response)."""
        request, model = self.request, self.model
        choices = []
        for sample in self.samples:
            text = sample.full_text(sample.tokens)
            if request.echo:
                text = sample.prompt.text + text
            token_ids = sample.token_ids(0, sample.tokens) if request.return_token_ids else None
            logprobs = self.logprob_block(sample, 0, sample.tokens)
            if request.chat:
                choices.append(rsp.chat_choice(sample.index, text, logprobs, sample.finish_reason,
                                               sample.stop_reason, token_ids))
            else:
                prompt_ids = list(sample.prompt.token_ids) if request.return_token_ids else None
                choices.append(rsp.completion_choice(sample.index, text, logprobs, sample.finish_reason,
                                                     sample.stop_reason, token_ids, prompt_ids))
        if request.chat:
            prompt_ids = list(request.prompts[0].token_ids) if request.return_token_ids else None
            return rsp.chat_body(self.rid, self.created, model, choices, self.usage(), self.sim.fingerprint,
                                 prompt_ids)
        return rsp.completion_body(self.rid, self.created, model, choices, self.usage(), self.sim.fingerprint)

    def chunks_for(self, sample: _Sample, previous_tokens: int, done: FinishedRequest | None) -> list[dict]:
        """The chunk(s) for one engine output of `sample` (the tokens since previous_tokens)."""
        request, model = self.request, self.model
        out: list[dict] = []
        if request.chat and not any(s.started for s in self.samples):
            for index in range(len(self.samples)):  # n role chunks at the request's first output
                usage_body = rsp.usage(len(self.samples[index].prompt.token_ids), 0, full=False) \
                    if request.continuous_usage_stats else None
                if usage_body is not None:
                    usage_body["completion_tokens_details"] = None
                out.append(rsp.chat_role_chunk(self.rid, self.created, model, index, usage_body))
        first = not sample.started
        sample.started = True
        finished = done is not None
        length = sample.visible_chars(sample.tokens)
        holdback = 0
        if request.stop and not request.include_stop_str_in_output and not finished:
            holdback = max(len(s) for s in request.stop) - 1
        visible = max(sample.sent_chars, length - holdback)
        delta = sample.text_between(sample.sent_chars, visible)
        sample.sent_chars = visible
        if first and request.echo:
            delta = sample.prompt.text + delta
        finish = sample.finish_reason if finished else None
        stop_reason = sample.stop_reason if finished else None
        token_ids = sample.token_ids(previous_tokens, sample.tokens) if request.return_token_ids else None
        usage_body = None
        if request.continuous_usage_stats:
            usage_body = self.usage(sample)
            if request.chat:
                usage_body["completion_tokens_details"] = None
        fingerprint = self.sim.fingerprint if finished and not request.include_usage else None
        logprobs = self.logprob_block(sample, previous_tokens, sample.tokens)
        if request.chat:
            out.append(rsp.chat_chunk(self.rid, self.created, model, sample.index, delta, logprobs, finish,
                                      stop_reason, token_ids=token_ids, usage_body=usage_body,
                                      fingerprint=fingerprint))
        else:
            prompt_ids = list(sample.prompt.token_ids) if request.return_token_ids and first else None
            out.append(rsp.completion_chunk(self.rid, self.created, model, sample.index, delta, logprobs, finish,
                                            stop_reason, token_ids=token_ids, prompt_token_ids=prompt_ids,
                                            usage_body=usage_body, fingerprint=fingerprint))
        return out

    def final_usage_chunk(self) -> dict:
        body = self.usage()
        if not self.request.chat:
            body = {k: v for k, v in body.items() if v is not None}  # exclude_none
        return rsp.final_usage_chunk(self.rid, self.created, self.model, self.request.chat, body,
                                     self.sim.fingerprint)


# ------------------------------------------------------------------ HTTP handlers


def _json(obj: Any, status: int = 200) -> web.Response:
    """Starlette's JSONResponse: compact separators, UTF-8."""
    return web.Response(body=json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode(), status=status,
                        content_type="application/json")


def _sse(obj: Any, compact: bool = True) -> bytes:
    text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False) if compact else json.dumps(obj)
    return b"data: " + text.encode() + b"\n\n"


def create_app(config: SimConfig) -> web.Application:
    """The aiohttp application for one simulated vLLM server (run in-process or via main)."""
    sim = Simulator(config)

    @web.middleware
    async def authenticate(request: web.Request, handler) -> web.StreamResponse:
        if request.method != "OPTIONS" and not key_allows(request.path, request.headers.get("Authorization"),
                                                          config.api_key):
            return _json({"error": "Unauthorized"}, status=401)
        return await handler(request)

    # the instrumentator sits inside authentication: a 401 is not counted (vLLM's middleware order)
    app = web.Application(middlewares=[authenticate, sim.http_metrics.middleware(), _json_errors])
    app.on_startup.append(sim.start)
    app.on_shutdown.append(lambda _app: _log_shutdown(sim, config.shutdown_timeout_s))
    app.on_cleanup.append(sim.stop)
    model = config.served_model_name

    async def health(_request: web.Request) -> web.Response:
        if not sim.ready():
            return web.Response(status=503)
        return web.Response(status=200)

    async def version(_request: web.Request) -> web.Response:
        return _json({"version": rsp.VLLM_VERSION})

    async def load(_request: web.Request) -> web.Response:
        return _json({"server_load": 0})  # counts only with --enable-server-load-tracking

    async def metrics(_request: web.Request) -> web.Response:
        sim.metrics.observe_scheduler(sim.engine)
        return web.Response(body=generate_latest(sim.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def models(_request: web.Request) -> web.Response:
        created = int(time.time())
        root = config.model or model
        cards = [rsp.model_card(name, root, sim.max_model_len, created, f"modelperm-{random_uuid()}")
                 for name in config.served_names]
        for name, path in config.lora_modules:
            card = rsp.model_card(name, path, None, created, f"modelperm-{random_uuid()}")
            cards.append({**card, "parent": model})
        return _json({"object": "list", "data": cards})

    async def read_body(request: web.Request) -> Any:
        return parse_json_body(await request.read(), request.headers.get("Content-Type", ""))

    def check_model(body: dict) -> None:
        requested = body.get("model") if isinstance(body, dict) else None
        if requested is not None and requested not in config.accepted_names:
            raise ApiError(404, f"The model `{requested}` does not exist. Valid aliases: "
                                f"{', '.join(config.accepted_names)}.", "model")

    async def tokenize(request: web.Request) -> web.Response:
        """serve/tokenize/serving.py create_tokenize: completion or chat style."""
        body = await read_body(request)
        if not isinstance(body, dict):
            raise request_validation_error([{"type": "model_attributes_type", "loc": ("body",),
                                             "msg": "Input should be a valid dictionary or object to extract "
                                                    "fields from", "input": body}])
        check_model(body)
        try:
            if "messages" in body:
                ids = text_token_ids(chat_text(body["messages"]))
            elif "prompt" in body:
                ids = prompt_token_ids(body["prompt"])
            else:
                raise request_validation_error([{"type": "missing", "loc": ("body", "prompt"),
                                                 "msg": "Field required", "input": body}])
        except PromptError as exc:
            raise vllm_validation_error(str(exc), exc.param) from None
        strs = [id_word(t) for t in ids] if body.get("return_token_strs") else None
        return _json({"count": len(ids), "max_model_len": sim.max_model_len, "tokens": ids, "token_strs": strs})

    async def detokenize_handler(request: web.Request) -> web.Response:
        body = await read_body(request)
        if not isinstance(body, dict) or not isinstance(body.get("tokens"), list) or not all(
                isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in body["tokens"]):
            raise request_validation_error([{"type": "list_type", "loc": ("body", "tokens"),
                                             "msg": "Input should be a valid list of integers >= 0",
                                             "input": body.get("tokens") if isinstance(body, dict) else body}])
        check_model(body)
        return _json({"prompt": detokenize(body["tokens"])})

    async def completions(request: web.Request) -> web.StreamResponse:
        return await _generate(request, chat=False)

    async def chat_completions(request: web.Request) -> web.StreamResponse:
        return await _generate(request, chat=True)

    async def invocations(request: web.Request) -> web.StreamResponse:
        """serve/sagemaker/api_router.py: the body as a chat request, else a completion request."""
        body = await read_body(request)
        for chat in (True, False):
            try:
                return await _generate(request, chat, body)
            except ApiError as exc:
                if exc.kind != "Bad Request":  # it validated as this kind: its own error stands
                    raise
        raise ApiError(400, "Cannot find suitable handler for request. Expected one of: "
                            "['ChatCompletionRequest', 'CompletionRequest']")

    async def _generate(request: web.Request, chat: bool, body: Any = None) -> web.StreamResponse:
        if not sim.ready():
            raise ApiError(503, "The engine is currently starting; try again later.")
        if body is None:
            body = await read_body(request)
        parsed = parse_generation_request(body, chat=chat, served_model_names=config.accepted_names,
                                          max_model_len=sim.max_model_len, max_logprobs=config.max_logprobs)
        base = request.headers.get("X-Request-Id") or parsed.request_id or random_uuid()
        if parsed.deferred_error is not None and not parsed.stream:
            raise parsed.deferred_error
        generation = Generation(sim, parsed, base, body.get("model") if isinstance(body, dict) else None)
        if parsed.stream:
            return await _stream(request, generation)
        generation.start()
        try:
            while not generation.finished:
                try:
                    await asyncio.wait_for(generation.next_event(), ABORT_POLL_S)
                except asyncio.TimeoutError:
                    if request.transport is None or request.transport.is_closing():
                        generation.abort()  # with_cancellation: the client went away, nothing is sent
                        return web.Response(status=499)
        except BaseException:
            generation.abort()
            raise
        return _json(generation.body())

    async def _stream(request: web.Request, generation: Generation) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8"})
        await response.prepare(request)
        parsed = generation.request
        try:
            if parsed.deferred_error is not None:
                # generate/base/serving.py: the error surfaces when the generator is first iterated
                await response.write(_sse(parsed.deferred_error.body(), compact=parsed.chat))
            else:
                generation.start()
                while not generation.finished:
                    sample, previous, done = await generation.next_event()
                    for chunk in generation.chunks_for(sample, previous, done):
                        await response.write(_sse(chunk))
                if parsed.include_usage:
                    await response.write(_sse(generation.final_usage_chunk()))
            await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
        except ConnectionResetError:
            generation.abort()  # the client went away: vLLM aborts quietly (no log by default)
            return response
        except BaseException:
            generation.abort()
            raise
        return response

    async def not_allowed(request: web.Request) -> web.Response:
        return _json({"detail": "Method Not Allowed"}, status=405)

    app.router.add_get("/health", health)
    app.router.add_get("/ping", health)
    app.router.add_post("/ping", health)
    app.router.add_get("/version", version)
    app.router.add_get("/load", load)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/v1/models", models)
    app.router.add_post("/tokenize", tokenize)
    app.router.add_post("/detokenize", detokenize_handler)
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/invocations", invocations)
    return app


@web.middleware
async def _json_errors(request: web.Request, handler) -> web.StreamResponse:
    """ApiError as vLLM's error body; unknown paths and methods as FastAPI's default `{"detail": ...}`."""
    try:
        return await handler(request)
    except ApiError as exc:
        log.debug("Rejected request path=%s status=%s reason=%s", request.path, exc.status, exc.message)
        return _json(exc.body(), status=exc.status)
    except web.HTTPMethodNotAllowed:
        return _json({"detail": "Method Not Allowed"}, status=405)
    except web.HTTPNotFound:
        return _json({"detail": "Not Found"}, status=404)


# ------------------------------------------------------------------ command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kiban-sim", description="vLLM-compatible engine simulator (no model runs).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--served-model-name", required=True, nargs="+",
                        help="one or more aliases; metrics and responses use the first")
    parser.add_argument("--model", default=None, help="what `vllm serve` was given (the /v1/models root)")
    parser.add_argument("--profile", required=True, help="engine profile, e.g. nvidia-l4/8B")
    parser.add_argument("--max-num-seqs", type=int, default=None)
    parser.add_argument("--max-num-batched-tokens", type=int, default=None)
    parser.add_argument("--max-model-len", type=int, default=None)
    parser.add_argument("--max-logprobs", type=int, default=DEFAULT_MAX_LOGPROBS)
    parser.add_argument("--block-size", type=int, default=DEFAULT_BLOCK_SIZE)
    parser.add_argument("--enable-prefix-caching", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--enable-log-requests", action="store_true")
    parser.add_argument("--enable-prompt-tokens-details", action="store_true")
    parser.add_argument("--startup-seconds", type=float, default=None, help="engine seconds until /health is 200")
    parser.add_argument("--speedup", type=float, default=1.0, help="engine time runs K times faster than wall time")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--step-jitter", type=float, default=0.0, help="uniform +/- fraction on each step time")
    parser.add_argument("--mean-output-tokens", type=int, default=DEFAULT_MEAN_OUTPUT_TOKENS)
    parser.add_argument("--true-engine-seed", type=int, default=None,
                        help="serve a perturbed 'true' engine: each step-time parameter and the KV capacity "
                             "x a seeded log-uniform factor in [0.7, 1.4] (kiban_serving.sim.true_engine)")
    parser.add_argument("--api-key", default=None, help="guard /v1 paths with this key (default: $VLLM_API_KEY)")
    parser.add_argument("--lora-modules", nargs="+", default=[], metavar="NAME=PATH",
                        help="LoRA adapters served under NAME (the simulator serves them with the base model's engine)")
    parser.add_argument("--shutdown-timeout", type=int, default=0,
                        help="as vLLM's: on SIGTERM, 0 aborts in-flight requests, N > 0 lets them finish for up "
                             "to N engine seconds; new connections are refused either way")
    parser.add_argument("--log-level", default="INFO")
    return parser


def profile_from_args(args: argparse.Namespace) -> EngineProfile:
    """The datasheet profile named by --profile, or its true engine with --true-engine-seed."""
    profile = get_profile_by_name(args.profile)
    if args.true_engine_seed is not None:
        profile = perturbed_profile(profile, args.true_engine_seed)
    return profile


def config_from_args(args: argparse.Namespace) -> SimConfig:
    names = list(args.served_model_name)
    if args.shutdown_timeout < 0:
        raise ValueError(f"--shutdown-timeout must be >= 0, got {args.shutdown_timeout}")
    return SimConfig(
        served_model_name=names[0],
        extra_served_names=tuple(names[1:]),
        model=args.model,
        profile=profile_from_args(args),
        max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens,
        max_model_len=args.max_model_len,
        max_logprobs=args.max_logprobs,
        block_size=args.block_size,
        enable_prefix_caching=args.enable_prefix_caching,
        enable_log_requests=args.enable_log_requests,
        enable_prompt_tokens_details=args.enable_prompt_tokens_details,
        startup_s=args.startup_seconds,
        speedup=args.speedup,
        seed=args.seed,
        step_jitter=args.step_jitter,
        mean_output_tokens=args.mean_output_tokens,
        api_key=args.api_key or os.environ.get("VLLM_API_KEY") or None,
        lora_modules=tuple((m.split("=", 1)[0], m.split("=", 1)[1] if "=" in m else m) for m in args.lora_modules),
        shutdown_timeout_s=args.shutdown_timeout,
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
    drain_s = config.shutdown_timeout_s / config.speedup
    # backlog 2048: uvicorn's default, what `vllm serve` listens with. On SIGTERM aiohttp stops
    # listening, waits up to shutdown_timeout for the handlers in progress (the streams), then
    # cancels them; its 0 means "wait forever", so abort (vLLM's 0) is a millisecond's wait.
    web.run_app(app, host=args.host, port=args.port, print=None, access_log=None, backlog=2048,
                shutdown_timeout=drain_s if drain_s > 0 else 0.001)
    return 0


async def _log_shutdown(sim: Simulator, timeout_s: int) -> None:
    """vLLM's shutdown lines (v1/engine/core.py _handle_shutdown): the mode and what is in flight."""
    mode = "abort" if timeout_s == 0 else "drain"
    log.info("[shutdown] EngineCore: start mode=%s timeout=%ds", mode, timeout_s)
    in_flight = len(sim._pending)
    if in_flight:
        if timeout_s == 0:
            log.info("[shutdown] EngineCore: aborting in-flight requests count=%d", in_flight)
        else:
            log.info("[shutdown] EngineCore: draining in-flight requests count=%d timeout=%ds", in_flight, timeout_s)


if __name__ == "__main__":
    sys.exit(main())
