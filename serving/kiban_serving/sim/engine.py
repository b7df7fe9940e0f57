"""A continuously batching vLLM-like engine in pure Python, driven by an external clock.

One implementation serves two callers: the real-time simulator server (which sleeps until each
step's end) and discrete-event fleet simulations (which call `advance_to` and never sleep).
No asyncio, no wall clock: time only moves when the caller passes it in.

Scheduling follows vLLM V1's scheduler:
  * RUNNING requests are scheduled first, in order; each asks for its remaining prefill chunk
    or one decode token. If the KV cache cannot hold the new tokens, the newest running request
    is preempted (recompute mode: its KV is freed, it goes back to the FRONT of the waiting
    queue and recomputes prompt + generated tokens when it is rescheduled).
  * Then, only if nothing was preempted, WAITING requests are admitted FIFO while fewer than
    max_num_seqs run, token budget remains (chunked prefill: a prompt longer than the budget
    is split over steps) and the KV cache can hold the chunk (head-of-line blocking).
  * KV is allocated in blocks of `block_size` tokens (vLLM default 16).
  * Automatic prefix caching (off unless `enable_prefix_caching=True` and the request brings
    `block_hashes`), as vLLM V1 does it (vllm/v1/core/kv_cache_manager.py `get_computed_blocks`,
    single_type_kv_cache_manager.py `find_longest_cache_hit`, block_pool.py): the caller hashes
    the request's tokens in full blocks, each hash chained to the one before; a waiting request
    with nothing computed takes the longest run of leading blocks already in the cache, at most
    (tokens - 1) // block_size blocks (the last token is always recomputed for its logits), and
    skips their prefill. A block is registered when it is allocated and full (prompt or
    generated tokens), so a request scheduled later in the same step can hit it. Freed blocks
    keep their hash and stay hittable until evicted, least recently freed first, a request's
    tail blocks before its head (freed in reverse order). Cached but unused blocks count as
    free for kv_usage. Queries and hits are counted in tokens at a request's first admission
    (`PrefixCacheStats.record`; re-admissions after preemption are not counted, as vLLM does
    not export those).

Step time (ms), the capacity model's formulas (capacity-model.md section 2) applied to the
tokens one step actually runs:
    step = max([D > 0] * alpha, [P > 0] * gamma) + beta * D + delta * P
D = sequences decoding one token this step, P = prefill (or recompute) tokens this step.
A pure decode step is decode(D) = alpha + beta * D and a pure prefill step is
prefill = gamma + delta * P, exactly the capacity model's terms; a mixed step (chunked
prefill riding with decodes, as vLLM V1 runs them in one forward pass) pays the fixed
per-pass cost (streaming the weights) once, not twice. So a lone request of `in` prompt
tokens gets its first token after gamma + delta * in (if in <= max_num_batched_tokens), and
decodes at alpha + beta * n per token with n running. A step's tokens appear at its end.
"""

from __future__ import annotations

import random
from collections import OrderedDict, deque
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

from kiban.capacity.engine_profile import EngineProfile

DEFAULT_MAX_NUM_BATCHED_TOKENS = 2048  # vLLM V1 default for the OpenAI server (chunked prefill)
DEFAULT_BLOCK_SIZE = 16  # vLLM default KV block size (tokens)


@dataclass(frozen=True)
class FinishedRequest:
    """Timings of one completed request, all in engine seconds."""

    request_id: str
    arrival_s: float
    first_scheduled_s: float
    first_token_s: float
    finished_s: float
    prompt_tokens: int
    output_tokens: int
    max_output_tokens: int
    finish_reason: str  # "length" (max tokens reached) or "stop" (simulated EOS)
    preemptions: int
    max_itl_s: float
    cached_tokens: int = 0  # prompt tokens taken from the prefix cache at first admission

    @property
    def ttft_s(self) -> float:
        return self.first_token_s - self.arrival_s

    @property
    def e2e_s(self) -> float:
        return self.finished_s - self.arrival_s

    @property
    def queue_s(self) -> float:
        return self.first_scheduled_s - self.arrival_s

    @property
    def prefill_s(self) -> float:
        return self.first_token_s - self.first_scheduled_s

    @property
    def decode_s(self) -> float:
        return self.finished_s - self.first_token_s

    @property
    def inference_s(self) -> float:
        return self.finished_s - self.first_scheduled_s

    @property
    def mean_itl_s(self) -> float:
        """Mean time per output token after the first (vLLM's request_time_per_output_token)."""
        return self.decode_s / (self.output_tokens - 1) if self.output_tokens > 1 else 0.0


@dataclass(frozen=True)
class TokenEvent:
    """One output token emitted at `time_s`; itl_s is None for the first token."""

    request_id: str
    index: int
    time_s: float
    itl_s: float | None


@dataclass
class StepResult:
    """What one scheduler iteration did."""

    start_s: float
    end_s: float
    num_prefill_tokens: int = 0
    num_decode_tokens: int = 0
    tokens: list[TokenEvent] = field(default_factory=list)
    newly_scheduled: list[tuple[str, int]] = field(default_factory=list)  # (id, prompt tokens)
    # (id, tokens queried, tokens hit) at first admission; only with prefix caching on
    prefix_cache: list[tuple[str, int, int]] = field(default_factory=list)
    first_tokens: list[tuple[str, int, float]] = field(default_factory=list)  # (id, prompt, ttft_s)
    finished: list[FinishedRequest] = field(default_factory=list)
    preempted: list[str] = field(default_factory=list)

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s


@dataclass(eq=False)
class _Request:
    request_id: str
    prompt_tokens: int
    output_target: int  # tokens this request will produce
    max_output_tokens: int
    finish_reason: str
    arrival_s: float
    num_computed: int = 0  # tokens whose KV is in the cache
    num_output: int = 0
    blocks: int = 0
    first_scheduled_s: float | None = None
    first_token_s: float | None = None
    last_token_s: float | None = None
    max_itl_s: float = 0.0
    preemptions: int = 0
    block_hashes: tuple[Hashable, ...] | None = None  # full blocks of prompt + output, chained
    block_keys: list[Hashable | None] = field(default_factory=list)  # held blocks: hash or None
    registered: int = 0  # leading blocks whose hash has been offered to the cache
    cached_tokens: int = 0

    @property
    def known_tokens(self) -> int:
        return self.prompt_tokens + self.num_output


class Engine:
    """One vLLM engine replica: submit requests, then step it (or advance it) through time."""

    def __init__(
        self,
        profile: EngineProfile,
        max_num_seqs: int | None = None,
        max_num_batched_tokens: int | None = None,
        *,
        kv_cache_tokens: int | None = None,
        block_size: int = DEFAULT_BLOCK_SIZE,
        seed: int = 0,
        step_jitter: float = 0.0,
        enable_prefix_caching: bool = False,
    ) -> None:
        self.profile = profile
        self.enable_prefix_caching = enable_prefix_caching
        self.max_num_seqs = _positive("max_num_seqs", max_num_seqs or profile.max_num_seqs)
        self.max_num_batched_tokens = _positive(
            "max_num_batched_tokens", max_num_batched_tokens or DEFAULT_MAX_NUM_BATCHED_TOKENS
        )
        self.block_size = _positive("block_size", block_size)
        kv_tokens = _positive("kv_cache_tokens", kv_cache_tokens or profile.kv_cache_tokens)
        self.total_blocks = kv_tokens // self.block_size
        if step_jitter < 0 or step_jitter >= 1:
            raise ValueError(f"step_jitter must be in [0, 1), got {step_jitter}")
        self.step_jitter = step_jitter
        self._rng = random.Random(seed)
        self._running: list[_Request] = []
        self._waiting: deque[_Request] = deque()
        self._ids: set[str] = set()
        self.used_blocks = 0
        self.clock_s = 0.0
        # Cumulative counters (vLLM counter semantics).
        self.num_preemptions = 0
        self.prompt_tokens_total = 0  # counted once per request, when its first token appears
        self.generation_tokens_total = 0
        self.num_steps = 0
        self.token_steps = 0  # steps that emitted a token (what vllm:iteration_tokens_total counts)
        self.prefix_cache_queries_total = 0  # tokens looked up at first admission
        self.prefix_cache_hits_total = 0  # of those, tokens found in the cache
        # Prefix cache: hashes of blocks in use (reference counts) and of free blocks that
        # still hold their KV, oldest first (evicted first). used_blocks counts blocks in use.
        self._held: dict[Hashable, int] = {}
        self._free_cached: OrderedDict[Hashable, None] = OrderedDict()

    # ----------------------------------------------------------------- inputs

    def submit(
        self,
        request_id: str,
        prompt_tokens: int,
        max_output_tokens: int,
        now_s: float,
        stop_at_tokens: int | None = None,
        block_hashes: Sequence[Hashable] | None = None,
    ) -> None:
        """Queue a request that arrived at now_s.

        It produces exactly max_output_tokens (finish reason "length"), or stop_at_tokens if
        that is smaller (finish reason "stop", a simulated end-of-sequence token).
        block_hashes: the chained hashes of the full blocks of its tokens (prompt, then the
        output it will generate), for the prefix cache; None (or caching off) skips the cache.
        """
        if request_id in self._ids:
            raise ValueError(f"request_id {request_id!r} is already in the engine")
        _positive("prompt_tokens", prompt_tokens)
        _positive("max_output_tokens", max_output_tokens)
        target, reason = max_output_tokens, "length"
        if stop_at_tokens is not None:
            _positive("stop_at_tokens", stop_at_tokens)
            if stop_at_tokens < max_output_tokens:
                target, reason = stop_at_tokens, "stop"
        blocks_needed = -(-(prompt_tokens + target) // self.block_size)
        if blocks_needed > self.total_blocks:
            raise ValueError(
                f"prompt_tokens + output tokens = {prompt_tokens + target} exceed the KV cache "
                f"({self.total_blocks * self.block_size} tokens); the request could never run"
            )
        if not self._running and not self._waiting:
            self.clock_s = max(self.clock_s, now_s)
        self._ids.add(request_id)
        request = _Request(request_id, prompt_tokens, target, max_output_tokens, reason, now_s)
        if self.enable_prefix_caching and block_hashes is not None:
            request.block_hashes = tuple(block_hashes)
        self._waiting.append(request)

    def abort(self, request_id: str) -> bool:
        """Drop a running or waiting request (client went away), freeing its KV blocks."""
        for queue in (self._running, self._waiting):
            for req in queue:
                if req.request_id == request_id:
                    queue.remove(req)
                    self._free(req)
                    self._ids.discard(request_id)
                    return True
        return False

    # ----------------------------------------------------------------- state

    @property
    def num_running(self) -> int:
        return len(self._running)

    @property
    def num_waiting(self) -> int:
        return len(self._waiting)

    @property
    def kv_usage(self) -> float:
        """Fraction of KV blocks in use, 0..1 (vllm:kv_cache_usage_perc); cached but unused
        blocks count as free, as in vLLM's BlockPool.get_usage."""
        return self.used_blocks / self.total_blocks if self.total_blocks else 0.0

    @property
    def cached_free_blocks(self) -> int:
        """Free blocks that still hold a prefix's KV (hittable until evicted)."""
        return len(self._free_cached)

    def next_step_needed(self) -> bool:
        """True while any request is running or waiting."""
        return bool(self._running or self._waiting)

    def step_time_s(self, num_decode_seqs: int, num_prefill_tokens: int) -> float:
        """Duration of a step with these tokens, from the profile (no jitter)."""
        p = self.profile
        fixed = max(p.alpha_ms if num_decode_seqs else 0.0, p.gamma_ms if num_prefill_tokens else 0.0)
        return (fixed + p.beta_ms * num_decode_seqs + p.delta_ms * num_prefill_tokens) / 1e3

    # ----------------------------------------------------------------- stepping

    def step(self, now_s: float, record_tokens: bool = True) -> StepResult:
        """Run one scheduler iteration starting at max(now_s, end of the previous step).

        record_tokens=False leaves StepResult.tokens empty (faster; used by advance_to).
        """
        start = max(now_s, self.clock_s)
        result = StepResult(start_s=start, end_s=start)
        scheduled = self._schedule(start, result)
        if not scheduled:
            self.clock_s = start
            return result
        duration = self.step_time_s(result.num_decode_tokens, result.num_prefill_tokens)
        if self.step_jitter:
            duration *= 1.0 + self._rng.uniform(-self.step_jitter, self.step_jitter)
        end = start + duration
        result.end_s = end
        self.clock_s = end
        self.num_steps += 1
        self._complete(scheduled, end, result, record_tokens)
        return result

    def advance_to(self, t_s: float) -> list[FinishedRequest]:
        """Run every step that starts before t_s; return the requests that finished.

        Runs of identical pure-decode steps are jumped in one go, so hours of trace cost
        time proportional to scheduling events, not to tokens. Per-token events are not
        returned; use `step` when they are needed.
        """
        finished: list[FinishedRequest] = []
        while self.next_step_needed() and self.clock_s < t_s:
            if not self._running and self._waiting and self._waiting[0].arrival_s >= t_s:
                break
            if self._try_decode_jump(t_s, finished):
                continue
            result = self.step(self.clock_s, record_tokens=False)
            finished.extend(result.finished)
            if result.end_s == result.start_s:  # nothing schedulable before the next arrival
                nxt = self._waiting[0].arrival_s if self._waiting else t_s
                if nxt >= t_s:
                    break
                self.clock_s = max(self.clock_s, nxt)
        return finished

    # ----------------------------------------------------------------- internals

    def _blocks_for(self, tokens: int) -> int:
        return -(-tokens // self.block_size)

    def _allocate(self, req: _Request, num_new: int) -> bool:
        extra = self._blocks_for(req.num_computed + num_new) - req.blocks
        if extra > 0:
            if self.used_blocks + extra > self.total_blocks:
                return False
            self._grow(req, extra)
        if req.block_hashes is not None:
            self._register(req, req.num_computed + num_new)
        return True

    def _grow(self, req: _Request, extra: int) -> None:
        """Give req `extra` more blocks (capacity already checked), evicting cached ones."""
        if self.enable_prefix_caching:
            empty = self.total_blocks - self.used_blocks - len(self._free_cached)
            for _ in range(max(0, extra - empty)):
                self._free_cached.popitem(last=False)  # least recently freed goes first
            req.block_keys.extend([None] * extra)
        req.blocks += extra
        self.used_blocks += extra

    def _free(self, req: _Request) -> None:
        if not self.enable_prefix_caching:
            self.used_blocks -= req.blocks
            req.blocks = 0
            return
        for key in reversed(req.block_keys):  # tail blocks become the first to be evicted
            if key is None:
                self.used_blocks -= 1
                continue
            self._held[key] -= 1
            if not self._held[key]:
                del self._held[key]
                self.used_blocks -= 1
                self._free_cached[key] = None
        req.block_keys = []
        req.blocks = 0
        req.registered = 0

    def _register(self, req: _Request, computed_tokens: int) -> None:
        """Offer req's newly full blocks to the cache (a hash already cached stays one copy)."""
        assert req.block_hashes is not None
        full = min(computed_tokens // self.block_size, len(req.block_hashes), len(req.block_keys))
        for index in range(req.registered, full):
            key = req.block_hashes[index]
            if req.block_keys[index] is None and key not in self._held and key not in self._free_cached:
                req.block_keys[index] = key
                self._held[key] = 1
        req.registered = max(req.registered, full)

    def _cache_hit_blocks(self, req: _Request) -> int:
        """Leading blocks of req already cached, at most (tokens - 1) // block_size."""
        if req.block_hashes is None or req.num_computed:
            return 0
        limit = min((req.known_tokens - 1) // self.block_size, len(req.block_hashes))
        hits = 0
        while hits < limit and (req.block_hashes[hits] in self._held or req.block_hashes[hits] in self._free_cached):
            hits += 1
        return hits

    def _admit(self, req: _Request, budget: int) -> int | None:
        """Allocate a waiting request's first chunk (after its cache hit); tokens scheduled,
        or None when the KV cache cannot hold it (nothing is changed then)."""
        hits = self._cache_hit_blocks(req)
        if not hits:
            num_new = min(req.known_tokens - req.num_computed, budget)
            return num_new if self._allocate(req, num_new) else None
        assert req.block_hashes is not None
        keys = req.block_hashes[:hits]
        touched_free = sum(1 for key in keys if key in self._free_cached)
        computed = hits * self.block_size
        num_new = min(req.known_tokens - computed, budget)
        extra = self._blocks_for(computed + num_new) - hits
        if self.used_blocks + touched_free + max(extra, 0) > self.total_blocks:
            return None
        for key in keys:
            if key in self._free_cached:
                del self._free_cached[key]
                self._held[key] = 1
                self.used_blocks += 1
            else:
                self._held[key] += 1
        req.block_keys = list(keys)
        req.blocks = hits
        req.registered = hits
        req.num_computed = computed
        if req.first_scheduled_s is None:
            req.cached_tokens = computed
        if extra > 0:
            self._grow(req, extra)
        self._register(req, computed + num_new)
        return num_new

    def _schedule(self, start: float, result: StepResult) -> list[tuple[_Request, int]]:
        budget = self.max_num_batched_tokens
        scheduled: list[tuple[_Request, int]] = []
        preempted = False
        i = 0
        while i < len(self._running) and budget > 0:
            req = self._running[i]
            num_new = min(req.known_tokens - req.num_computed, budget)
            while not self._allocate(req, num_new):
                victim = self._running.pop()
                self._preempt(victim, result)
                preempted = True
                if victim is req:
                    break
            else:
                scheduled.append((req, num_new))
                budget -= num_new
                i += 1
                continue
            break  # req preempted itself: nothing after it remains in the running list
        if not preempted:
            while (
                self._waiting
                and budget > 0
                and len(self._running) < self.max_num_seqs
                and self._waiting[0].arrival_s <= start
            ):
                req = self._waiting[0]
                num_new = self._admit(req, budget)
                if num_new is None:
                    break
                self._waiting.popleft()
                self._running.append(req)
                if req.first_scheduled_s is None:
                    req.first_scheduled_s = start
                    result.newly_scheduled.append((req.request_id, req.prompt_tokens))
                    if req.block_hashes is not None:
                        self.prefix_cache_queries_total += req.known_tokens
                        self.prefix_cache_hits_total += req.cached_tokens
                        result.prefix_cache.append((req.request_id, req.known_tokens, req.cached_tokens))
                scheduled.append((req, num_new))
                budget -= num_new
        for req, num_new in scheduled:
            if req.num_output > 0 and num_new == 1 and req.num_computed == req.known_tokens - 1:
                result.num_decode_tokens += 1
            else:
                result.num_prefill_tokens += num_new
        return scheduled

    def _preempt(self, req: _Request, result: StepResult) -> None:
        self._free(req)
        req.num_computed = 0
        req.preemptions += 1
        self.num_preemptions += 1
        self._waiting.appendleft(req)
        result.preempted.append(req.request_id)

    def _complete(
        self, scheduled: list[tuple[_Request, int]], end: float, result: StepResult, record_tokens: bool
    ) -> None:
        done: list[_Request] = []
        tokens = result.tokens
        emitted = False
        for req, num_new in scheduled:
            req.num_computed += num_new
            if req.num_computed < req.prompt_tokens + req.num_output:
                continue  # prefill chunk not finished yet: no token this step
            emitted = True
            itl = None if req.last_token_s is None else end - req.last_token_s
            if req.first_token_s is None:
                req.first_token_s = end
                self.prompt_tokens_total += req.prompt_tokens
                result.first_tokens.append((req.request_id, req.prompt_tokens, end - req.arrival_s))
            elif itl is not None and itl > req.max_itl_s:
                req.max_itl_s = itl
            req.last_token_s = end
            req.num_output += 1
            self.generation_tokens_total += 1
            if record_tokens:
                tokens.append(TokenEvent(req.request_id, req.num_output - 1, end, itl))
            if req.num_output >= req.output_target:
                done.append(req)
        self.token_steps += emitted
        for req in done:
            self._finish(req, end, result.finished)

    def _finish(self, req: _Request, end: float, out: list[FinishedRequest]) -> None:
        self._running.remove(req)
        self._free(req)
        self._ids.discard(req.request_id)
        assert req.first_scheduled_s is not None and req.first_token_s is not None
        out.append(
            FinishedRequest(
                request_id=req.request_id,
                arrival_s=req.arrival_s,
                first_scheduled_s=req.first_scheduled_s,
                first_token_s=req.first_token_s,
                finished_s=end,
                prompt_tokens=req.prompt_tokens,
                output_tokens=req.num_output,
                max_output_tokens=req.max_output_tokens,
                finish_reason=req.finish_reason,
                preemptions=req.preemptions,
                max_itl_s=req.max_itl_s,
                cached_tokens=req.cached_tokens,
            )
        )

    def _try_decode_jump(self, t_s: float, finished: list[FinishedRequest]) -> bool:
        """Jump k identical pure-decode steps when nothing else can happen in between."""
        if self.step_jitter or not self._running:
            return False
        if self._waiting and self._waiting[0].arrival_s < t_s and len(self._running) < self.max_num_seqs:
            return False  # an admission may happen at the next step boundary
        n = len(self._running)
        if n > self.max_num_batched_tokens:
            return False
        for req in self._running:
            if req.num_output == 0 or req.num_computed != req.known_tokens - 1:
                return False
        step_s = self.step_time_s(n, 0)
        k = min(req.output_target - req.num_output for req in self._running)
        horizon = (t_s - self.clock_s) / step_s
        if horizon < k:
            k = max(1, int(horizon))
        while k > 1 and not self._jump_fits(k):
            k //= 2
        if k < 2:
            return False
        self._apply_jump(k, step_s, finished)
        return True

    def _jump_fits(self, k: int) -> bool:
        extra = sum(self._blocks_for(r.num_computed + k) - r.blocks for r in self._running)
        return self.used_blocks + extra <= self.total_blocks

    def _apply_jump(self, k: int, step_s: float, finished: list[FinishedRequest]) -> None:
        n = len(self._running)
        for req in self._running:
            req.num_computed += k
            new_blocks = self._blocks_for(req.num_computed) - req.blocks
            if new_blocks > 0:
                self._grow(req, new_blocks)
            if req.block_hashes is not None:
                self._register(req, req.num_computed)
            req.num_output += k
            if step_s > req.max_itl_s:
                req.max_itl_s = step_s
        # Steps run back to back: step j ends at clock + j * step_s (summed like `step` does).
        end = self.clock_s
        for _ in range(k):
            end += step_s
        self.clock_s = end
        self.num_steps += k
        self.token_steps += k
        self.generation_tokens_total += n * k
        for req in list(self._running):
            req.last_token_s = end
            if req.num_output >= req.output_target:
                self._finish(req, end, finished)


def _positive(name: str, value: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value
