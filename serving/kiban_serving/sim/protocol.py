"""vLLM 0.33.0's OpenAI request validation, read from the release's source (pure: dicts in, dataclasses out).

Every check, message and error flavour below names where vLLM has it (paths under vllm/):
  * request types, lax coercion ("16" -> 16) and type errors: the pydantic models of
    entrypoints/openai/completion/protocol.py `CompletionRequest` and chat_completion/protocol.py
    `ChatCompletionRequest`, re-typed here for the fields the simulator reads (others are
    accepted and ignored: `extra="allow"`, serve/engine/protocol.py `OpenAIBaseModel`); their
    errors are formatted as serve/exception_handling/handlers/validation.py
    `validation_exception_handler` does: type "Bad Request", param the cleaned `loc`;
  * the `mode="before"` validators of those models (`check_logprobs`, `validate_stream_options`,
    `validate_prompt_and_prompt_embeds`, `validate_prompt_list_length`, `normalize_null_max_tokens`):
    `VLLMValidationError` (exceptions.py: message + " (parameter=X, value=Y)"), type BadRequestError;
  * the model name (serve/engine/serving.py `_check_model`): 404 NotFoundError;
  * context length (renderers/params.py `TokenizeParams`): max_tokens > max_model_len and
    prompts longer than max_model_len; the max_tokens clamp (serve/utils/api_utils.py
    `get_max_tokens`): a request asking for more than the context leaves is served up to it;
  * sampling_params.py `SamplingParams._verify_args`, `_verify_greedy_sampling`, in its order;
  * checks vLLM runs lazily inside `generate()` (sampling_params.py `verify` -> `_validate_logprobs`,
    stop_token_ids vocabulary check): `deferred_error`, a 400 when not streaming, an in-stream
    error event when streaming (entrypoints/openai/generate/base/serving.py).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from kiban_serving.sim.tokens import (
    VOCAB_SIZE,
    PromptError,
    chat_text,
    prompt_token_ids,
    split_prompts,
    text_token_ids,
)

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
MAX_STOP_STRINGS = 4  # envs.VLLM_MAX_STOP_STRINGS
MAX_COMPLETION_PROMPTS = 1024  # envs.VLLM_MAX_COMPLETION_PROMPTS
MAX_N_SEQUENCES = 16384  # envs.VLLM_MAX_N_SEQUENCES
DEFAULT_MAX_LOGPROBS = 20  # config/model.py max_logprobs
SAMPLING_EPS = 1e-5  # sampling_params.py _SAMPLING_EPS: below it sampling is greedy
MAX_REPORTED_ERRORS = 10


class ApiError(Exception):
    """An error response: {"error": {"message", "type", "param", "code"}} with HTTP status `status`."""

    def __init__(self, status: int, message: str, param: str | None = None, kind: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param = status, message, param
        self.kind = kind or {400: "BadRequestError", 404: "NotFoundError", 503: "ServiceUnavailableError",
                             501: "NotImplementedError"}.get(status, "InternalServerError")

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.status}}


def vllm_validation_error(message: str, parameter: str | None = None, value: Any = None) -> ApiError:
    """exceptions.py VLLMValidationError.__str__: the text plus ' (parameter=X, value=Y)'."""
    extras = []
    if parameter is not None:
        extras.append(f"parameter={parameter}")
    if value is not None:
        extras.append(f"value={value}")
    text = f"{message} ({', '.join(extras)})" if extras else message
    return ApiError(400, text, parameter)


_INTERNAL_LOC_MARKERS = frozenset({
    "function-wrap", "function-after", "function-before", "function-plain", "json-or-python", "lax-or-strict",
    "chain", "default", "nullable", "tagged-union", "union", "call", "arguments", "is-instance", "is-subclass",
    "callable", "str", "int", "float", "bool", "bytes", "bytearray", "list", "tuple", "dict", "set", "frozenset",
    "complex", "none", "nonetype",
})


def clean_loc(loc: tuple) -> str:
    """validation.py clean_loc_for_param: the dotted loc without pydantic's union/wrapper markers."""
    parts = [str(p) for p in loc
             if not (re.search(r"[\[\]{}()]", str(p)) or str(p).lower() in _INTERNAL_LOC_MARKERS)]
    return ".".join(parts) if parts else ".".join(str(p) for p in loc)


def request_validation_error(errors: list) -> ApiError:
    """validation.py validation_exception_handler: 'N validation error(s):' then each error dict."""
    param = None
    if errors and isinstance(errors[0], dict) and errors[0].get("loc"):
        param = clean_loc(tuple(errors[0]["loc"]))
    label = "error" if len(errors) == 1 else "errors"
    lines = [f"{len(errors)} validation {label}:"]
    for error in errors[:MAX_REPORTED_ERRORS]:
        if isinstance(error, dict):
            error = dict(error)
            error["loc"] = clean_loc(tuple(error.get("loc", ())))
            if "input" in error:
                error["input"] = _summarize(error["input"])
        lines.append(f"  {error}")
    if len(errors) > MAX_REPORTED_ERRORS:
        lines.append(f"  ...and {len(errors) - MAX_REPORTED_ERRORS} more {label}")
    return ApiError(400, "\n".join(lines), param, kind="Bad Request")


def _summarize(value: Any) -> Any:
    if isinstance(value, str):
        return value if len(value) <= 200 else value[:200] + "...[truncated]"
    if isinstance(value, (list, tuple, set, frozenset, dict)):
        return f"<{type(value).__name__} of {len(value)} items>"
    text = str(value)
    return text if len(text) <= 200 else text[:200] + "...[truncated]"


def parse_json_body(raw: bytes, content_type: str) -> Any:
    """serve/utils/api_utils.py validate_json_request, then FastAPI's JSON decoding."""
    if content_type.lower().split(";", 1)[0].strip() != "application/json":
        raise request_validation_error(["Unsupported Media Type: Only 'application/json' is allowed"])
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        pos = getattr(exc, "pos", 0)
        msg = getattr(exc, "msg", str(exc))
        raise request_validation_error([{"type": "json_invalid", "loc": ("body", pos), "msg": "JSON decode error",
                                         "input": {}, "ctx": {"error": msg}}]) from None


# ------------------------------------------------------------------ the request models (types only)

TokenId = Annotated[int, Field(ge=0)]
StopParam = str | Annotated[list[str], Field(max_length=MAX_STOP_STRINGS)] | None


class _Body(BaseModel):
    model_config = ConfigDict(extra="allow")


class StreamOptions(_Body):
    include_usage: bool | None = False
    continuous_usage_stats: bool | None = False


class _Sampling(_Body):
    model: str | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    seed: int | None = Field(None, ge=INT64_MIN, le=INT64_MAX)
    stop: StopParam = []
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    stop_token_ids: list[int] | None = []
    include_stop_str_in_output: bool = False
    ignore_eos: bool = False
    min_tokens: int = 0
    prompt_logprobs: int | None = None
    return_token_ids: bool | None = False
    cache_salt: str | None = None
    request_id: str | None = None


class CompletionBody(_Sampling):
    prompt: list[TokenId] | list[list[TokenId]] | str | list[str] | None = None
    echo: bool | None = False
    logprobs: int | None = None
    max_tokens: int | None = 16
    n: int = 1
    suffix: str | None = None


class ChatBody(_Sampling):
    messages: list[dict]
    logprobs: bool | None = False
    top_logprobs: int | None = 0
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    n: int | None = 1
    echo: bool = False


# ------------------------------------------------------------------ the parsed request


@dataclass(frozen=True)
class Prompt:
    """One prompt of a request: its token ids, text (for echo) and effective max_tokens."""

    token_ids: tuple[int, ...]
    text: str
    max_tokens: int


@dataclass(frozen=True)
class GenerationRequest:
    chat: bool
    prompts: tuple[Prompt, ...]
    n: int
    min_tokens: int
    ignore_eos: bool
    stop: tuple[str, ...]
    include_stop_str_in_output: bool
    stream: bool
    include_usage: bool
    continuous_usage_stats: bool
    echo: bool
    logprobs: int | None  # top logprobs per position (completions `logprobs`; chat `top_logprobs`)
    seed: int | None
    return_token_ids: bool
    cache_salt: str | None
    skip_prefix_cache: bool  # prompt_logprobs asked: vLLM skips reading the prefix cache
    request_id: str | None
    deferred_error: ApiError | None = None  # raised inside generate(): in-stream when streaming


def _validate(model: type[BaseModel], body: Any) -> BaseModel:
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        errors = [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False)]
        raise request_validation_error(errors) from None


def _before_validators(body: dict, chat: bool) -> None:
    """The models' mode="before" validators (run on the raw dict, before the type checks)."""
    int_fields = ("prompt_logprobs", "top_logprobs") if chat else ("prompt_logprobs", "logprobs")
    for name in int_fields:
        value = body.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise vllm_validation_error(f"`{name}` must be an integer.", name, value)
    prompt_logprobs = body.get("prompt_logprobs")
    if prompt_logprobs is not None:
        if body.get("stream") and (prompt_logprobs > 0 or prompt_logprobs == -1):
            raise vllm_validation_error("`prompt_logprobs` are not available when `stream=True`.", "prompt_logprobs")
        if prompt_logprobs < 0 and prompt_logprobs != -1:
            raise vllm_validation_error("`prompt_logprobs` must be a positive value or -1.", "prompt_logprobs",
                                        prompt_logprobs)
    if chat:
        top = body.get("top_logprobs")
        if top is not None:
            if top < 0 and top != -1:
                raise vllm_validation_error("`top_logprobs` must be a positive value or -1.", "top_logprobs", top)
            if (top == -1 or top > 0) and not body.get("logprobs"):
                raise vllm_validation_error("when using `top_logprobs`, `logprobs` must be set to true.",
                                            "top_logprobs")
    else:
        logprobs = body.get("logprobs")
        if logprobs is not None and logprobs < 0 and logprobs != -1:
            raise vllm_validation_error("`logprobs` must be a positive value or -1.", "logprobs", logprobs)
    if body.get("stream_options") and not body.get("stream"):
        raise vllm_validation_error("Stream options can only be defined when `stream=True`.", "stream_options")
    if not chat:
        prompt = body.get("prompt")
        if prompt is None or prompt == "":
            raise vllm_validation_error("Either prompt or prompt_embeds must be provided and non-empty.", "prompt")
        if isinstance(prompt, list) and prompt and not all(isinstance(p, int) for p in prompt) \
                and len(prompt) > MAX_COMPLETION_PROMPTS:
            raise vllm_validation_error(
                f"prompt list length {len(prompt)} exceeds the maximum allowed count of {MAX_COMPLETION_PROMPTS}. "
                "To increase this limit, set the VLLM_MAX_COMPLETION_PROMPTS environment variable.", "prompt")


def _check_model(requested: str | None, served: list[str]) -> None:
    if requested is not None and requested not in served:
        raise ApiError(404, f"The model `{requested}` does not exist. Valid aliases: {', '.join(served)}.", "model")


def _context_checks(token_ids: list[int], requested_max: int | None, max_model_len: int, is_text: bool) -> None:
    """renderers/params.py: max_tokens above the context, then a prompt longer than the context."""
    if requested_max is not None and requested_max > max_model_len:
        raise vllm_validation_error(
            f"max_tokens={requested_max} cannot be greater than max_model_len={max_model_len}. "
            "Please request fewer output tokens.", "max_tokens", requested_max)
    if len(token_ids) > max_model_len:
        # text is tokenised with truncation at max_model_len + 1, so it always shows that many
        shown = max_model_len + 1 if is_text else len(token_ids)
        at_least = "at least " if shown == max_model_len + 1 else ""
        raise vllm_validation_error(
            f"This model's maximum context length is {max_model_len} tokens. However, your prompt contains "
            f"{at_least}{shown} input tokens, which exceeds this limit even without any output tokens. "
            "Please reduce the length of the input prompt.", "input_tokens", shown)


def _verify_sampling(parsed: BaseModel, n: int, max_tokens: int, stop: list[str]) -> float:
    """sampling_params.py SamplingParams.__post_init__ / _verify_args; returns the temperature."""
    if not isinstance(n, int):
        raise vllm_validation_error(f"n must be an int, but is of type {type(n)}")
    if n < 1:
        raise vllm_validation_error(f"n must be at least 1, got {n}.")
    if n > MAX_N_SEQUENCES:
        raise vllm_validation_error(
            f"n must be at most {MAX_N_SEQUENCES}, got {n}. To increase this limit, set the "
            "VLLM_MAX_N_SEQUENCES environment variable.")
    presence = 0.0 if parsed.presence_penalty is None else parsed.presence_penalty
    frequency = 0.0 if parsed.frequency_penalty is None else parsed.frequency_penalty
    repetition = 1.0 if parsed.repetition_penalty is None else parsed.repetition_penalty
    temperature = 1.0 if parsed.temperature is None else parsed.temperature
    top_p = 1.0 if parsed.top_p is None else parsed.top_p
    top_k = 0 if parsed.top_k is None else parsed.top_k
    min_p = 0.0 if parsed.min_p is None else parsed.min_p
    if not -2.0 <= presence <= 2.0:
        raise vllm_validation_error(f"presence_penalty must be in [-2, 2], got {presence}.")
    if not -2.0 <= frequency <= 2.0:
        raise vllm_validation_error(f"frequency_penalty must be in [-2, 2], got {frequency}.")
    if not math.isfinite(repetition):
        raise vllm_validation_error(f"repetition_penalty must be a finite number, got {repetition}.")
    if repetition <= 0.0:
        raise vllm_validation_error(f"repetition_penalty must be greater than zero, got {repetition}.")
    if not math.isfinite(temperature):
        raise vllm_validation_error(f"temperature must be a finite number, got {temperature}.", "temperature",
                                    temperature)
    if temperature < 0.0:
        raise vllm_validation_error(f"temperature must be non-negative, got {temperature}.", "temperature",
                                    temperature)
    if temperature > 2.0:
        raise vllm_validation_error(f"temperature must be in [0, 2], got {temperature}.", "temperature", temperature)
    if not 0.0 < top_p <= 1.0:
        raise vllm_validation_error(f"top_p must be in (0, 1], got {top_p}.", "top_p", top_p)
    if top_k < -1:
        raise vllm_validation_error(f"top_k must be 0 (disable), or at least 1, got {top_k}.")
    if not 0.0 <= min_p <= 1.0:
        raise vllm_validation_error(f"min_p must be in [0, 1], got {min_p}.")
    if max_tokens < 1:
        raise vllm_validation_error(f"max_tokens must be at least 1, got {max_tokens}.", "max_tokens", max_tokens)
    if parsed.min_tokens < 0:
        raise vllm_validation_error(f"min_tokens must be greater than or equal to 0, got {parsed.min_tokens}.")
    if parsed.min_tokens > max_tokens:
        raise vllm_validation_error(
            f"min_tokens must be less than or equal to max_tokens={max_tokens}, got {parsed.min_tokens}.")
    if any(not s for s in stop):
        raise vllm_validation_error("stop cannot contain an empty string.")
    if temperature < SAMPLING_EPS and n > 1:
        raise vllm_validation_error(f"n must be 1 when using greedy sampling, got {n}.")
    return temperature


def _deferred_checks(logprobs: int | None, stop_token_ids: list[int], max_logprobs: int) -> ApiError | None:
    """sampling_params.py verify(): the logprobs bound and the stop_token_ids vocabulary check."""
    if logprobs is not None:
        asked = VOCAB_SIZE if logprobs == -1 else logprobs
        if max_logprobs != -1 and asked > max_logprobs:
            return vllm_validation_error(
                f"Requested sample logprobs of {asked}, which is greater than max allowed: {max_logprobs}",
                "logprobs", asked)
    bad = [t for t in stop_token_ids if t < 0 or t >= VOCAB_SIZE]
    if bad:
        return vllm_validation_error(
            f"token_id(s) {bad} in stop_token_ids contain out-of-vocab token ids. Vocabulary size: {VOCAB_SIZE}",
            "stop_token_ids", stop_token_ids)
    return None


def parse_generation_request(body: Any, *, chat: bool, served_model_names: list[str], max_model_len: int,
                             max_logprobs: int = DEFAULT_MAX_LOGPROBS) -> GenerationRequest:
    """Validate an OpenAI completions/chat body as vLLM 0.33 does; raise ApiError (see module doc)."""
    if isinstance(body, dict):
        _before_validators(body, chat)
        if not chat and body.get("max_tokens") is None:
            body = {**body, "max_tokens": 16}  # normalize_null_max_tokens
    parsed = _validate(ChatBody if chat else CompletionBody, body)
    _check_model(parsed.model, served_model_names)
    stop = [parsed.stop] if isinstance(parsed.stop, str) else list(parsed.stop or [])
    if chat:
        try:
            text = chat_text(parsed.messages)
        except PromptError as exc:
            raise vllm_validation_error(str(exc), exc.param) from None
        raw_prompts: list[tuple[list[int], str, bool]] = [(text_token_ids(text), text, True)]
        requested = parsed.max_completion_tokens if parsed.max_completion_tokens is not None else parsed.max_tokens
        n = 1 if parsed.n is None else parsed.n
        logprobs = (parsed.top_logprobs or 0) if parsed.logprobs else None
        echo = bool(parsed.echo)
    else:
        try:
            raw_prompts = []
            for prompt in split_prompts(parsed.prompt):
                raw_prompts.append((prompt_token_ids(prompt), prompt if isinstance(prompt, str) else "",
                                    isinstance(prompt, str)))
        except PromptError as exc:
            raise vllm_validation_error(str(exc), exc.param) from None
        requested = parsed.max_tokens
        n = parsed.n
        logprobs = parsed.logprobs
        echo = bool(parsed.echo)
        if echo and parsed.suffix is not None:
            raise vllm_validation_error("Echo is unsupported with suffix.", "suffix")
    prompts = []
    for token_ids, text, is_text in raw_prompts:
        _context_checks(token_ids, requested, max_model_len, is_text)
        remaining = max_model_len - len(token_ids)
        effective = remaining if requested is None else min(remaining, requested)  # get_max_tokens
        if echo and requested == 0:
            effective = 1  # echo with max_tokens 0: the engine still runs one token
        prompts.append(Prompt(tuple(token_ids), text, effective))
    for prompt in prompts:
        if not prompt.token_ids:
            raise vllm_validation_error("The decoder prompt cannot be empty", "prompt")
        _verify_sampling(parsed, n, prompt.max_tokens, stop)
    options = parsed.stream_options
    include_usage = bool(parsed.stream and options and options.include_usage)
    return GenerationRequest(
        chat=chat,
        prompts=tuple(prompts),
        n=n,
        min_tokens=parsed.min_tokens,
        ignore_eos=parsed.ignore_eos,
        stop=tuple(stop),
        include_stop_str_in_output=parsed.include_stop_str_in_output,
        stream=bool(parsed.stream),
        include_usage=include_usage,
        continuous_usage_stats=include_usage and bool(options.continuous_usage_stats),
        echo=echo,
        logprobs=logprobs,
        seed=None if parsed.seed in (None, -1) else parsed.seed,
        return_token_ids=bool(parsed.return_token_ids),
        cache_salt=parsed.cache_salt,
        skip_prefix_cache=parsed.prompt_logprobs is not None,
        request_id=parsed.request_id,
        deferred_error=_deferred_checks(logprobs, list(parsed.stop_token_ids or []), max_logprobs),
    )


# ------------------------------------------------------------------ stop strings (v1/engine/detokenizer.py)


@dataclass(frozen=True)
class StopMatch:
    """Where a stop string ends generation: after `tokens` tokens, text cut to `text_length` chars."""

    tokens: int
    stop: str
    text_length: int


def find_stop(token_texts: list[str], stop: tuple[str, ...], min_tokens: int, include: bool) -> StopMatch | None:
    """Append tokens one at a time and run check_stop_strings after min_tokens, as vLLM does.

    Returns the first match: the stop string that completes earliest, the number of tokens
    generated (the completing token counts) and the length the text is cut to.
    """
    if not stop:
        return None
    text = ""
    for index, piece in enumerate(token_texts):
        before = len(text)
        text += piece
        if index + 1 <= min_tokens:
            continue
        new_chars = len(text) - max(before, 0)
        best: tuple[int, int, str] | None = None
        for candidate in stop:
            start = text.find(candidate, max(0, len(text) - new_chars - len(candidate) + 1))
            if start != -1 and (best is None or start + len(candidate) < best[0]):
                best = (start + len(candidate), start, candidate)
        if best is not None:
            end, start, candidate = best
            return StopMatch(index + 1, candidate, end if include else start)
    return None
