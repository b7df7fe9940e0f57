"""The vLLM continuous-batching replica: a birth-death queue of requests over a chain of steps.

Two time scales, two models (docs/capacity-model.md has the derivation and the validation).

Requests (seconds to minutes). With n requests in flight (n <= B) a replica completes them at
    mu(n) = n / (prefill(n) + (out - 1) * decode(n)),
    prefill(n) = gamma + delta * in * n,   decode(n) = alpha + beta * n   (ms),
and at mu(B) once B are running and the rest wait (capacity-model.md section 2, the model of
IBM's inferno). B = min(max_num_seqs, kv_cache_tokens // (in + out)). By default the waiting
room is unbounded, as in vLLM: beyond B the chain is geometric with ratio r = lambda / mu(B),
so an arrival that finds k >= B waits for k - B + 1 departures at rate mu(B) (PASTA), an
Erlang delay whose geometric mixture is exponential with rate mu(B)(1 - r). A finite
`max_queue` gives the M/M/1/K form and sums the Erlang delays explicitly. Probabilities are
formed in log space so large B cannot overflow. This chain sets throughput, the batch size
and the share of arrivals that queue for a slot.

Steps (milliseconds). The engine runs one step after another, each
    step = max([D > 0] alpha, [P > 0] gamma) + beta * D + delta * P
with D decoding sequences and P prefill tokens, P at most the token budget left after the
decodes (max_num_batched_tokens - D; longer prompts are chunked over several steps). A new
request is prefilled in the step after the one it arrived in, together with every prompt
that arrived during that step and behind any backlog still being chunked. So its TTFT is the
residual of the step in progress plus one or more steps of prefill, and a step in progress
is itself long when it carries other prompts. With D fixed at the busy mean, the prefill
backlog at the start of each step is a Markov chain on a token grid: it loses the budget
and gains the compound-Poisson prompt tokens that arrive during the step, whose length it
sets. Its stationary law, seen by a Poisson arrival (length-biased: long steps are hit more
often, PASTA), gives the TTFT distribution of an arrival that finds a slot free: the residual
of the step, the steps its own and the earlier prompts take, and the final step's prompts
that arrived after it. An idle engine prefills a newcomer at once; one that finds B running
waits for a slot, then is prefilled with B - 1 decoding. ITL is the step length seen by a
decoding token: each step gives D tokens that gap, so it is the step chain weighted by D.
These step-level rules follow vLLM V1's scheduler, which kiban_serving.sim.engine follows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from kiban.capacity.engine_profile import EngineProfile
from kiban.capacity.erlang import require_percentile
from kiban.capacity.founding import require_positive

SLO_PERCENTILES = (50, 90, 95, 99)
DEFAULT_MAX_NUM_BATCHED_TOKENS = 2048  # vLLM V1's default token budget per step (chunked prefill)

PromptMix = tuple[tuple[float, float], ...]
"""Prompt lengths as (tokens, probability) pairs, e.g. a histogram's bucket means and shares.
Only its shape is used: it is rescaled to the mean prompt length the caller passes."""

# Resolution of the step chain: fixed, so a stricter input can never gain from rounding.
BINS_PER_STEP = 16  # token-grid cells per step budget (fewer when prompts span many steps)
MAX_GRID_CELLS = 256  # the backlog grid never exceeds this many cells
BACKLOG_STEPS = 4  # step budgets of backlog the grid holds beyond the longest prompt
ARRIVAL_SLICES = 4  # where in the step in progress an arrival lands: slices of equal width
MIN_BUDGET_SHARE = 0.125  # prefill budget never below this share of max_num_batched_tokens
STATE_FLOOR = 1e-9  # probability below which a step state is dropped from the sums


@dataclass(frozen=True)
class Slo:
    """Latency targets for one model; a target of None is not constrained."""

    ttft_ms: float | None = None
    ttft_percentile: int = 95
    itl_ms: float | None = None
    itl_percentile: int = 95

    def __post_init__(self) -> None:
        for field, value in (("ttft_ms", self.ttft_ms), ("itl_ms", self.itl_ms)):
            if value is not None:
                require_positive(value, field)
        for field, value in (
            ("ttft_percentile", self.ttft_percentile),
            ("itl_percentile", self.itl_percentile),
        ):
            if value not in SLO_PERCENTILES:
                raise ValueError(f"{field} must be one of {SLO_PERCENTILES}, got {value!r}")

    def describe(self) -> str:
        """'TTFT p95 ≤ 500 ms, ITL p95 ≤ 50 ms' for reasons and reports."""
        parts = []
        if self.ttft_ms is not None:
            parts.append(f"TTFT p{self.ttft_percentile} ≤ {self.ttft_ms:g} ms")
        if self.itl_ms is not None:
            parts.append(f"ITL p{self.itl_percentile} ≤ {self.itl_ms:g} ms")
        return ", ".join(parts) if parts else "no latency target"


@dataclass(frozen=True)
class Prediction:
    """Steady-state behaviour of one replica at one arrival rate (seconds, requests/s)."""

    arrival_rate_rps: float
    stable: bool  # False when arrivals outrun mu(B): the queue grows without bound
    ttft_mean_s: float
    ttft_p50_s: float
    ttft_p95_s: float
    ttft_p99_s: float
    itl_mean_s: float
    itl_p95_s: float
    utilization: float  # throughput / mu(B): the share of the replica's top throughput in use
    mean_batch: float  # time-averaged running sequences, E[min(N, B)]
    throughput_rps: float  # admitted arrivals (equal to the arrival rate when unbounded)
    wait_probability: float  # share of arrivals that find B running and must queue
    mean_wait_s: float
    batch_limit: int  # B
    max_throughput_rps: float  # mu(B)


# -- inputs ----------------------------------------------------------------------------------


def _require_tokens(prompt_tokens: float, output_tokens: float) -> tuple[float, float]:
    if not isinstance(prompt_tokens, (int, float)) or not math.isfinite(prompt_tokens) or prompt_tokens < 0:
        raise ValueError(f"mean_prompt_tokens must be a finite number >= 0, got {prompt_tokens!r}")
    if not isinstance(output_tokens, (int, float)) or not math.isfinite(output_tokens) or output_tokens < 1:
        raise ValueError(f"mean_output_tokens must be a finite number >= 1, got {output_tokens!r}")
    return float(prompt_tokens), float(output_tokens)


def _require_profile(profile: EngineProfile) -> None:
    if not profile.alpha_ms > 0:
        raise ValueError(f"profile {profile.name}: alpha_ms must be > 0, got {profile.alpha_ms!r}")
    for field in ("beta_ms", "gamma_ms", "delta_ms"):
        value = getattr(profile, field)
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"profile {profile.name}: {field} must be >= 0, got {value!r}")
    if profile.max_num_seqs < 1:
        raise ValueError(f"profile {profile.name}: max_num_seqs must be >= 1, got {profile.max_num_seqs!r}")


def _require_budget(max_num_batched_tokens: int) -> int:
    if isinstance(max_num_batched_tokens, bool) or not isinstance(max_num_batched_tokens, int) \
            or max_num_batched_tokens < 1:
        raise ValueError(f"max_num_batched_tokens must be a positive integer, got {max_num_batched_tokens!r}")
    return max_num_batched_tokens


def prompt_atoms(mean_prompt_tokens: float, prompt_mix: PromptMix | None = None) -> PromptMix:
    """The prompt-length law as (tokens, probability) pairs with mean `mean_prompt_tokens`.

    Without a mix every prompt has the mean length. A mix is normalised and rescaled to that
    mean, so the autoscaler can pass a histogram's shape with the mean it measured.
    """
    if prompt_mix is None:
        return ((float(mean_prompt_tokens), 1.0),)
    pairs = tuple(prompt_mix)
    for pair in pairs:
        if len(pair) != 2 or not all(isinstance(v, (int, float)) and math.isfinite(v) and v >= 0 for v in pair):
            raise ValueError(f"prompt_mix entries must be (tokens >= 0, probability >= 0), got {pair!r}")
    total = sum(p for _, p in pairs)
    if not total > 0:
        raise ValueError(f"prompt_mix needs a positive total probability, got {prompt_mix!r}")
    mix_mean = sum(t * p for t, p in pairs) / total
    if mix_mean == 0:
        return ((float(mean_prompt_tokens), 1.0),)
    scale = mean_prompt_tokens / mix_mean
    return tuple(sorted((t * scale, p / total) for t, p in pairs if p > 0))


# -- step and request times --------------------------------------------------------------------


def prefill_ms(profile: EngineProfile, prompt_tokens: float, batch: int) -> float:
    """Time to prefill a batch of `batch` prompts of `prompt_tokens` tokens each (inferno's term)."""
    return profile.gamma_ms + profile.delta_ms * prompt_tokens * batch


def decode_ms(profile: EngineProfile, batch: float) -> float:
    """Time of one decode step with `batch` sequences running: the inter-token latency."""
    return profile.alpha_ms + profile.beta_ms * batch


def step_ms(profile: EngineProfile, decoding: float, prefill_tokens: float) -> float:
    """One engine step that prefills (a chunk of) prompts: the fixed cost of a forward pass is
    paid once, whether the step also decodes or not."""
    fixed = profile.gamma_ms if decoding <= 0 else max(profile.alpha_ms, profile.gamma_ms)
    return fixed + profile.beta_ms * decoding + profile.delta_ms * prefill_tokens


def prefill_budget(max_num_batched_tokens: int, decoding: float) -> float:
    """Prompt tokens one step can take: the budget left after one token per decoding sequence."""
    return max(max_num_batched_tokens - decoding, MIN_BUDGET_SHARE * max_num_batched_tokens)


def prefill_alone_ms(profile: EngineProfile, prompt_tokens: float, decoding: float,
                     max_num_batched_tokens: int = DEFAULT_MAX_NUM_BATCHED_TOKENS) -> float:
    """First-token time of a prompt with nothing ahead of it, chunked over full-budget steps."""
    chunk = prefill_budget(max_num_batched_tokens, decoding)
    steps = max(1, math.ceil(prompt_tokens / chunk - 1e-9))
    last = prompt_tokens - (steps - 1) * chunk
    return (steps - 1) * step_ms(profile, decoding, chunk) + step_ms(profile, decoding, last)


def batch_limit(profile: EngineProfile, prompt_tokens: float, output_tokens: float) -> int:
    """B = min(max_num_seqs, kv_cache_tokens // (in + out)): how many sequences fit at once."""
    prompt, output = _require_tokens(prompt_tokens, output_tokens)
    limit = min(profile.max_num_seqs, int(profile.kv_cache_tokens // (prompt + output)))
    if limit < 1:
        raise ValueError(
            f"mean_prompt_tokens + mean_output_tokens ({prompt + output:g}) exceed the KV cache "
            f"of profile {profile.name} ({profile.kv_cache_tokens} tokens)"
        )
    return limit


def service_rate_rps(profile: EngineProfile, prompt_tokens: float, output_tokens: float, batch: int) -> float:
    """mu(n) = n / (prefill(n) + (out - 1) decode(n)), completions per second with n running."""
    busy_ms = prefill_ms(profile, prompt_tokens, batch) + (output_tokens - 1) * decode_ms(profile, batch)
    if busy_ms <= 0:
        raise ValueError(f"profile {profile.name}: a request takes no time (gamma, delta and out - 1 are 0)")
    return 1000.0 * batch / busy_ms


def _logsumexp(values: list[float]) -> float:
    top = max(values)
    if top == -math.inf:
        return top
    return top + math.log(sum(math.exp(v - top) for v in values))


# -- the step chain ------------------------------------------------------------------------------


def _on_grid(atoms: PromptMix, cell: float, size: int) -> np.ndarray:
    """Prompt law on the token grid, each length split between its two neighbouring cells so
    the mean is kept and a longer prompt never lands on a shorter cell."""
    pmf = np.zeros(size)
    for tokens, probability in atoms:
        position = min(tokens / cell, size - 1.0)
        low = int(math.floor(position))
        share = position - low
        pmf[low] += probability * (1.0 - share)
        if share > 0:
            pmf[low + 1] += probability * share
    return pmf


def _compound_poisson(means: np.ndarray, jump_hat: np.ndarray, fft_size: int, keep: int) -> np.ndarray:
    """pmfs (rows) of the prompt tokens from Poisson(mean) arrivals, first `keep` cells; the
    mass beyond is folded into the last cell, so a truncated backlog is never shorter."""
    pmfs = np.fft.irfft(np.exp(means[:, None] * (jump_hat[None, :] - 1.0)), n=fft_size)[:, :keep]
    pmfs = np.clip(pmfs, 0.0, None)
    pmfs[:, -1] += np.clip(1.0 - pmfs.sum(axis=1), 0.0, None)
    return pmfs


def _shifted(pmfs: np.ndarray, shifts: np.ndarray) -> np.ndarray:
    """Each row moved right by its shift, what falls off the end folded into the last cell."""
    size = pmfs.shape[1]
    index = np.arange(size)[None, :] - shifts[:, None]
    out = np.where(index >= 0, np.take_along_axis(pmfs, np.clip(index, 0, None), axis=1), 0.0)
    out[:, -1] += np.clip(1.0 - out.sum(axis=1), 0.0, None)
    return out


@dataclass(frozen=True)
class _Ramps:
    """A mixture of uniform laws, stored as ramps so its CDF is exact at any t."""

    positions: np.ndarray  # sorted ramp starts (ms)
    slope: np.ndarray  # cumulative slope after each position
    intercept: np.ndarray  # cumulative slope * position after each position
    total: float
    mean_ms: float

    @classmethod
    def of_uniforms(cls, low: np.ndarray, high: np.ndarray, weight: np.ndarray) -> _Ramps:
        density = weight / (high - low)
        positions = np.concatenate([low, high])
        slopes = np.concatenate([density, -density])
        order = np.argsort(positions, kind="stable")
        positions, slopes = positions[order], slopes[order]
        total = float(weight.sum())
        mean = float((weight * 0.5 * (low + high)).sum() / total) if total > 0 else 0.0
        return cls(positions, np.cumsum(slopes), np.cumsum(slopes * positions), total, mean)

    def tail(self, t_ms: float) -> float:
        """P(X > t) under the normalised mixture."""
        if self.total <= 0:
            return 0.0
        k = int(np.searchsorted(self.positions, t_ms, side="right")) - 1
        if k < 0:
            return 1.0
        below = self.slope[k] * t_ms - self.intercept[k]
        return min(1.0, max(0.0, 1.0 - below / self.total))

    @property
    def upper_ms(self) -> float:
        return float(self.positions[-1]) if len(self.positions) else 0.0


@dataclass(frozen=True)
class _Steps:
    """Stationary step chain at `decoding` running sequences: what arrivals and tokens see."""

    decoding: float
    cell_tokens: float  # tokens per backlog cell
    durations_ms: np.ndarray  # step length by backlog cell
    per_step: np.ndarray  # stationary share of steps that start with each backlog
    # TTFT of an arrival that finds a slot free and the engine busy: uniform on [low, high]
    # (ms) with probability weight, one entry per (step, slice of it, steps taken, last load)
    ttft_low: np.ndarray
    ttft_high: np.ndarray
    ttft_weight: np.ndarray


@dataclass(frozen=True)
class _Grid:
    """The token grid of one step chain: `bins` cells make one step's prefill budget."""

    bins: int
    size: int  # cells in all: the longest prompt plus BACKLOG_STEPS budgets of backlog
    cell: float  # tokens per cell
    fft_size: int
    jump_hat: np.ndarray  # rfft of one prompt's length law on the grid

    @classmethod
    def for_prompts(cls, atoms: PromptMix, budget: float) -> _Grid:
        spans = math.ceil(max(t for t, _ in atoms) / budget - 1e-9) + BACKLOG_STEPS
        bins = max(2, min(BINS_PER_STEP, MAX_GRID_CELLS // spans))
        size = bins * spans
        fft_size = 1 << (2 * size - 1).bit_length()
        return cls(bins, size, budget / bins, fft_size, np.fft.rfft(_on_grid(atoms, budget / bins, size), n=fft_size))


def _step_chain(profile: EngineProfile, rate_rps: float, atoms: PromptMix, decoding: float,
                budget_tokens: int) -> _Steps:
    """Solve the prefill-backlog chain and read off the TTFT law of a busy engine.

    A step that starts with a backlog of w cells prefills min(w, bins) of them and lasts
    step_ms(D, that); the prompts that arrive meanwhile (compound Poisson) join what is left
    for the next step.
    """
    budget = prefill_budget(budget_tokens, decoding)
    grid = _Grid.for_prompts(atoms, budget)
    bins, size, cell, fft_size, jump_hat = grid.bins, grid.size, grid.cell, grid.fft_size, grid.jump_hat
    backlog = np.arange(size)
    durations = np.where(backlog == 0, decode_ms(profile, decoding),
                         step_ms(profile, decoding, np.minimum(backlog, bins) * cell))
    carry = np.maximum(backlog - bins, 0)
    arrivals = _compound_poisson(rate_rps * durations[: bins + 1] / 1000.0, jump_hat, fft_size, size)
    per_step = _stationary(_shifted(arrivals[np.minimum(backlog, bins)], carry))
    low, high, weight = _busy_ttft_segments(profile, rate_rps, decoding, budget, grid, durations, per_step)
    return _Steps(decoding, cell, durations, per_step, low, high, weight)


def _busy_ttft_segments(profile: EngineProfile, rate_rps: float, decoding: float, budget: float, grid: _Grid,
                        durations: np.ndarray, per_step: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """TTFT of a Poisson arrival into the stationary step chain, as uniform segments.

    It lands in a step picked in proportion to its length, in one of ARRIVAL_SLICES slices
    of it; it waits the rest of that step (uniform within the slice), then full steps while
    the prompt tokens ahead of it and its own exceed a budget, then a last step holding its
    remainder and the later prompts that fit.
    """
    bins, size, cell, fft_size, jump_hat = grid.bins, grid.size, grid.cell, grid.fft_size, grid.jump_hat
    carry = np.maximum(np.arange(size) - bins, 0)
    seen = per_step * durations  # an arrival picks a step in proportion to its length
    seen /= seen.sum()
    states = np.nonzero(seen > STATE_FLOOR)[0]
    slices = (np.arange(ARRIVAL_SLICES) + 0.5) / ARRIVAL_SLICES
    state = np.repeat(states, ARRIVAL_SLICES)
    where = np.tile(slices, len(states))
    length = durations[state]
    # Prompt tokens up to and including the arrival's own: the backlog carried over, the
    # prompts that arrived earlier in this step, and its own.
    ahead_hat = np.exp((rate_rps * where * length / 1000.0)[:, None] * (jump_hat[None, :] - 1.0)) * jump_hat
    ahead = np.clip(np.fft.irfft(ahead_hat, n=fft_size)[:, :size], 0.0, None)
    ahead[:, -1] += np.clip(1.0 - ahead.sum(axis=1), 0.0, None)
    ahead = _shifted(ahead, carry[state])

    # Split them into whole budgets (full steps first) and the rest, prefilled in a last step.
    spans_needed = -(-(size - 1) // bins)
    padded = np.zeros((len(state), spans_needed * bins + 1))
    padded[:, :size] = ahead
    rest = np.zeros((len(state), spans_needed, bins + 1))
    rest[:, :, 1:] = padded[:, 1:].reshape(len(state), spans_needed, bins)
    rest[:, 0, 0] = padded[:, 0]
    # The last step fills its budget with prompts that came after the arrival's: the rest of
    # this step's and those of the full steps before it. Only min(budget, .) matters, so
    # every law is cut at one budget (its excess folded onto the budget).
    full_step = step_ms(profile, decoding, budget)
    later_here = _compound_poisson(rate_rps * (1.0 - where) * length / 1000.0, jump_hat, fft_size, bins + 1)
    later_full = _compound_poisson(rate_rps * np.arange(spans_needed) * full_step / 1000.0, jump_hat,
                                   fft_size, bins + 1)
    conv_size = 1 << (3 * bins + 2).bit_length()
    last_hat = (np.fft.rfft(rest, n=conv_size) * np.fft.rfft(later_here, n=conv_size)[:, None, :]
                * np.fft.rfft(later_full, n=conv_size)[None, :, :])
    last = np.clip(np.fft.irfft(last_hat, n=conv_size)[:, :, : 3 * bins + 1], 0.0, None)
    last[:, :, bins] += last[:, :, bins + 1:].sum(axis=2)
    last = last[:, :, : bins + 1]

    final_step = step_ms(profile, decoding, np.arange(bins + 1) * cell)
    finish = np.arange(spans_needed)[:, None] * full_step + final_step[None, :]  # after the residual
    weight = (seen[state] / ARRIVAL_SLICES)[:, None, None] * last
    residual_low = ((1.0 - where - 0.5 / ARRIVAL_SLICES) * length)[:, None, None]
    residual_high = ((1.0 - where + 0.5 / ARRIVAL_SLICES) * length)[:, None, None]
    mask = weight > STATE_FLOOR
    low = np.broadcast_to(finish[None] + residual_low, weight.shape)[mask]
    high = np.broadcast_to(finish[None] + residual_high, weight.shape)[mask]
    return low, high, weight[mask]


def _stationary(transition: np.ndarray) -> np.ndarray:
    """Stationary law of a row-stochastic matrix by Grassmann-Taksar-Heyman state reduction:
    no subtractions, so it stays accurate when the chain is nearly reducible, and plain
    numpy (no threaded BLAS call, which stalls on a busy machine)."""
    p = transition.astype(float, copy=True)
    size = p.shape[0]
    for k in range(size - 1, 0, -1):
        out = max(float(p[k, :k].sum()), 1e-300)
        p[:k, k] /= out
        p[:k, :k] += p[:k, k, None] * p[None, k, :k]
    pi = np.zeros(size)
    pi[0] = 1.0
    for k in range(1, size):
        pi[k] = float((pi[:k] * p[:k, k]).sum())
    return pi / pi.sum()


# -- the request chain -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Chain:
    """A solved chain: what an arrival sees and what the engine does, ready for percentiles."""

    profile: EngineProfile
    prompt_tokens: float
    output_tokens: float
    prompts: PromptMix
    budget_tokens: int
    arrival_rate_rps: float
    batch_limit: int
    max_rate_rps: float  # mu(B)
    below: tuple[float, ...]  # time-average P(N = k), k < B (arrivals see the same, PASTA)
    queued_states: tuple[float, ...]  # P(N = B + j), j = 0..K-B, finite queue only
    at_or_above: float  # P(N >= B)
    blocking: float  # P(N = K) for a finite queue, else 0
    geometric_rate: float  # mu(B)(1 - r): exponential wait rate of the unbounded queue

    # -- what an admitted arrival sees ------------------------------------------------------
    def _admitted(self, probability: float) -> float:
        return probability / (1.0 - self.blocking) if self.blocking < 1.0 else 0.0

    def wait_probability(self) -> float:
        if self.queued_states:
            return self._admitted(sum(self.queued_states[:-1]))
        return self.at_or_above

    def wait_tail(self, wait_s: float) -> float:
        """P(W > t) for an admitted arrival."""
        if wait_s < 0:
            return self.wait_probability()
        if not self.queued_states:
            return self.at_or_above * math.exp(-self.geometric_rate * wait_s)
        # sum over k of P(N=k) P(Poisson(mu_B t) < k - B + 1), reordered by Poisson term
        admitted = [self._admitted(p) for p in self.queued_states[:-1]]
        x = self.max_rate_rps * wait_s
        tail_after = sum(admitted)
        total = 0.0
        log_term = -x  # log P(Poisson(x) = 0)
        for i, weight in enumerate(admitted):
            total += math.exp(log_term) * tail_after
            tail_after -= weight
            log_term += (math.log(x) if x > 0 else -math.inf) - math.log(i + 1)
        return min(1.0, total)

    def mean_wait_s(self) -> float:
        if not self.queued_states:
            return self.at_or_above / self.geometric_rate if self.at_or_above > 0 else 0.0
        return sum(
            self._admitted(p) * (j + 1) / self.max_rate_rps for j, p in enumerate(self.queued_states[:-1])
        )

    # -- the three situations an arrival can find ---------------------------------------------
    @cached_property
    def _decoding_points(self) -> tuple[tuple[float, float], ...]:
        """Running sequences while the engine is busy, as (D, weight) points for the step
        chain: the busy mean. (A three-point rule on the busy spread moved TTFT p95 by under
        1 % against the simulator at three times the cost, so one point it is.)"""
        shares = np.array(self.below[1:] + (self.at_or_above,))
        if shares.sum() <= 0:
            return ((1.0, 1.0),)
        mean = float((shares * np.arange(1, self.batch_limit + 1)).sum() / shares.sum())
        return ((mean, 1.0),)

    @cached_property
    def _steps(self) -> tuple[tuple[_Steps, float], ...]:
        """The step chain at each busy D, with its weight; empty with no traffic."""
        if self.arrival_rate_rps <= 0:
            return ()
        return tuple((_step_chain(self.profile, self.arrival_rate_rps, self.prompts, d, self.budget_tokens), w)
                     for d, w in self._decoding_points)

    @cached_property
    def _busy_ttft(self) -> _Ramps | None:
        if not self._steps:
            return None
        return _Ramps.of_uniforms(np.concatenate([st.ttft_low for st, _ in self._steps]),
                                  np.concatenate([st.ttft_high for st, _ in self._steps]),
                                  np.concatenate([st.ttft_weight * w for st, w in self._steps]))

    def _alone_s(self, decoding: float) -> tuple[np.ndarray, np.ndarray]:
        """(TTFT s, probability) of a prompt prefilled with nothing ahead, per prompt length."""
        times = [prefill_alone_ms(self.profile, t, decoding, self.budget_tokens) / 1000.0 for t, _ in self.prompts]
        return np.array(times), np.array([p for _, p in self.prompts])

    @cached_property
    def _idle(self) -> tuple[np.ndarray, np.ndarray]:
        """An idle engine prefills a newcomer at once."""
        return self._alone_s(0)

    @cached_property
    def _after_wait(self) -> tuple[np.ndarray, np.ndarray]:
        """A queued request is prefilled as a departure frees its slot, B - 1 still decoding."""
        return self._alone_s(self.batch_limit - 1)

    @cached_property
    def _shares(self) -> tuple[float, float, float]:
        """(idle, busy with a slot free, must wait) shares of admitted arrivals."""
        return self._admitted(self.below[0]), self._admitted(sum(self.below[1:])), self.wait_probability()

    # -- time to first token -----------------------------------------------------------------
    def ttft_mean_s(self) -> float:
        idle_share, busy_share, wait_share = self._shares
        idle = float((self._idle[0] * self._idle[1]).sum())
        queued = float((self._after_wait[0] * self._after_wait[1]).sum())
        busy = self._busy_ttft.mean_ms / 1000.0 if self._busy_ttft is not None else 0.0
        return idle_share * idle + busy_share * busy + wait_share * queued + self.mean_wait_s()

    def ttft_tail(self, ttft_s: float) -> float:
        """P(TTFT > t): prefilled at once, behind a busy engine's steps, or after a wait."""
        idle_share, busy_share, wait_share = self._shares
        times, probabilities = self._idle
        tail = idle_share * float(probabilities[times > ttft_s].sum())
        if self._busy_ttft is not None and busy_share > 0:
            tail += busy_share * self._busy_ttft.tail(ttft_s * 1000.0)
        if wait_share > 0:
            times, probabilities = self._after_wait
            if self.queued_states:
                tail += sum(p * self.wait_tail(ttft_s - t) for t, p in zip(times, probabilities))
            else:  # exponential wait: vectorised
                wait = ttft_s - times
                waits = np.where(wait < 0, wait_share,
                                 self.at_or_above * np.exp(-self.geometric_rate * np.maximum(wait, 0.0)))
                tail += float((probabilities * waits).sum())
        return tail

    def ttft_percentile_s(self, percentile: float) -> float:
        allowed = 1.0 - require_percentile(percentile) / 100.0
        hi = max(float(self._idle[0].max()), float(self._after_wait[0].max()), 1e-6)
        if self._busy_ttft is not None:
            hi = max(hi, self._busy_ttft.upper_ms / 1000.0)
        while self.ttft_tail(hi) > allowed:
            hi *= 2.0
            if hi > 1e12:
                return math.inf
        lo = 0.0
        for _ in range(60):
            mid = 0.5 * (lo + hi)
            if self.ttft_tail(mid) > allowed:
                lo = mid
            else:
                hi = mid
            if hi - lo <= 1e-7 * hi:
                break
        return hi

    # -- inter-token latency -------------------------------------------------------------------
    @cached_property
    def _itl_distribution(self) -> tuple[np.ndarray, np.ndarray]:
        """(ITL ms, share of tokens), sorted by ITL.

        Every step gives each of its D decoding sequences one token whose gap is that step's
        length. The step chain nearest a batch of b gives the share of steps by prefill
        backlog; b shifts every step by beta (b - D) and carries a share P(b) b / E[step]
        of the tokens.
        """
        p_batch = np.array(self.below[1:] + (self.at_or_above,))
        if not self._steps or not p_batch.max() > 0:  # no traffic: a lone request decodes alone
            return np.array([decode_ms(self.profile, 1)]), np.array([1.0])
        batch = np.arange(1, self.batch_limit + 1)
        used = p_batch > STATE_FLOOR * p_batch.max()
        batch, p_batch = batch[used], p_batch[used]
        centres = np.array([st.decoding for st, _ in self._steps])
        nearest = np.argmin(np.abs(batch[:, None] - centres[None, :]), axis=1)
        values, weights = [], []
        for k, (steps, _) in enumerate(self._steps):
            mine = nearest == k
            if not mine.any():
                continue
            states = np.nonzero(steps.per_step > STATE_FLOOR)[0]
            running = batch[mine][:, None].astype(float)
            backlog = states[None, :] * steps.cell_tokens
            budget = np.maximum(self.budget_tokens - running, MIN_BUDGET_SHARE * self.budget_tokens)
            prefill = np.minimum(backlog, budget)
            mixed = max(self.profile.alpha_ms, self.profile.gamma_ms) + self.profile.delta_ms * prefill
            lengths = np.where(backlog > 0, mixed, self.profile.alpha_ms) + self.profile.beta_ms * running
            mean_length = (lengths * steps.per_step[states][None, :]).sum(axis=1)
            share = (p_batch[mine] * batch[mine] / mean_length)[:, None] * steps.per_step[states][None, :]
            values.append(lengths.ravel())
            weights.append(share.ravel())
        values, shares = np.concatenate(values), np.concatenate(weights)
        order = np.argsort(values, kind="stable")
        values, shares = values[order], shares[order]
        return values, shares / shares.sum()

    def itl_mean_s(self) -> float:
        values, shares = self._itl_distribution
        return float((values * shares).sum()) / 1000.0

    def itl_percentile_s(self, percentile: float) -> float:
        target = require_percentile(percentile) / 100.0
        values, shares = self._itl_distribution
        index = int(np.searchsorted(np.cumsum(shares), target - 1e-12))
        return float(values[min(index, len(values) - 1)]) / 1000.0

    def mean_batch(self) -> float:
        return sum(k * p for k, p in enumerate(self.below)) + self.batch_limit * self.at_or_above

    def throughput_rps(self) -> float:
        return self.arrival_rate_rps * (1.0 - self.blocking)


def _solve(
    profile: EngineProfile,
    arrival_rate_rps: float,
    prompt_tokens: float,
    output_tokens: float,
    max_queue: int | None,
    prompt_mix: PromptMix | None = None,
    max_num_batched_tokens: int = DEFAULT_MAX_NUM_BATCHED_TOKENS,
) -> _Chain | None:
    """Stationary distribution at rate lambda; None when an unbounded queue is unstable."""
    _require_profile(profile)
    prompt, output = _require_tokens(prompt_tokens, output_tokens)
    budget = _require_budget(max_num_batched_tokens)
    if not isinstance(arrival_rate_rps, (int, float)) or not math.isfinite(arrival_rate_rps) or arrival_rate_rps < 0:
        raise ValueError(f"arrival_rate_rps must be a finite number >= 0, got {arrival_rate_rps!r}")
    if max_queue is not None and (isinstance(max_queue, bool) or not isinstance(max_queue, int) or max_queue < 0):
        raise ValueError(f"max_queue must be an integer >= 0 or None, got {max_queue!r}")
    limit = batch_limit(profile, prompt, output)
    max_rate = service_rate_rps(profile, prompt, output, limit)
    common = dict(profile=profile, prompt_tokens=prompt, output_tokens=output,
                  prompts=prompt_atoms(prompt, prompt_mix), budget_tokens=budget,
                  arrival_rate_rps=float(arrival_rate_rps), batch_limit=limit, max_rate_rps=max_rate)
    if arrival_rate_rps == 0:
        below = (1.0,) + (0.0,) * (limit - 1)
        queued = (0.0,) * (max_queue + 1) if max_queue is not None else ()
        return _Chain(**common, below=below, queued_states=queued, at_or_above=0.0, blocking=0.0,
                      geometric_rate=max_rate)
    ratio = arrival_rate_rps / max_rate
    if max_queue is None and ratio >= 1.0:
        return None
    log_lam = math.log(arrival_rate_rps)
    log_weights = [0.0]
    for n in range(1, limit + 1):
        log_weights.append(log_weights[-1] + log_lam - math.log(service_rate_rps(profile, prompt, output, n)))
    if max_queue is None:
        log_tail = [log_weights[limit] - math.log1p(-ratio)]  # sum_{j>=0} w_B r^j
        queued_logs: list[float] = []
    else:
        log_ratio = math.log(ratio)
        queued_logs = [log_weights[limit] + j * log_ratio for j in range(max_queue + 1)]
        log_tail = queued_logs
    log_norm = _logsumexp(log_weights[:limit] + log_tail)
    below = tuple(math.exp(w - log_norm) for w in log_weights[:limit])
    queued = tuple(math.exp(w - log_norm) for w in queued_logs)
    at_or_above = math.exp(_logsumexp(log_tail) - log_norm)
    return _Chain(**common, below=below, queued_states=queued, at_or_above=at_or_above,
                  blocking=queued[-1] if queued else 0.0,
                  geometric_rate=max_rate * (1.0 - ratio) if max_queue is None else max_rate)


def predict(
    profile: EngineProfile,
    arrival_rate_rps: float,
    mean_prompt_tokens: float,
    mean_output_tokens: float,
    max_queue: int | None = None,
    *,
    prompt_mix: PromptMix | None = None,
    max_num_batched_tokens: int = DEFAULT_MAX_NUM_BATCHED_TOKENS,
) -> Prediction:
    """Latency and load of one replica fed `arrival_rate_rps`; infinite latencies when unstable."""
    chain = _solve(profile, arrival_rate_rps, mean_prompt_tokens, mean_output_tokens, max_queue,
                   prompt_mix, max_num_batched_tokens)
    if chain is None:
        limit = batch_limit(profile, mean_prompt_tokens, mean_output_tokens)
        max_rate = service_rate_rps(profile, mean_prompt_tokens, mean_output_tokens, limit)
        itl_s = decode_ms(profile, limit) / 1000.0
        return Prediction(
            arrival_rate_rps=float(arrival_rate_rps), stable=False, ttft_mean_s=math.inf,
            ttft_p50_s=math.inf, ttft_p95_s=math.inf, ttft_p99_s=math.inf, itl_mean_s=itl_s,
            itl_p95_s=itl_s, utilization=arrival_rate_rps / max_rate, mean_batch=float(limit),
            throughput_rps=max_rate, wait_probability=1.0, mean_wait_s=math.inf,
            batch_limit=limit, max_throughput_rps=max_rate,
        )
    return Prediction(
        arrival_rate_rps=chain.arrival_rate_rps,
        stable=True,
        ttft_mean_s=chain.ttft_mean_s(),
        ttft_p50_s=chain.ttft_percentile_s(50),
        ttft_p95_s=chain.ttft_percentile_s(95),
        ttft_p99_s=chain.ttft_percentile_s(99),
        itl_mean_s=chain.itl_mean_s(),
        itl_p95_s=chain.itl_percentile_s(95),
        utilization=chain.throughput_rps() / chain.max_rate_rps,
        mean_batch=chain.mean_batch(),
        throughput_rps=chain.throughput_rps(),
        wait_probability=chain.wait_probability(),
        mean_wait_s=chain.mean_wait_s(),
        batch_limit=chain.batch_limit,
        max_throughput_rps=chain.max_rate_rps,
    )


def ttft_percentile_s(profile: EngineProfile, arrival_rate_rps: float, mean_prompt_tokens: float,
                      mean_output_tokens: float, percentile: float, max_queue: int | None = None, *,
                      prompt_mix: PromptMix | None = None,
                      max_num_batched_tokens: int = DEFAULT_MAX_NUM_BATCHED_TOKENS) -> float:
    """Any TTFT percentile (e.g. 90) at one arrival rate; inf when the queue is unstable."""
    chain = _solve(profile, arrival_rate_rps, mean_prompt_tokens, mean_output_tokens, max_queue,
                   prompt_mix, max_num_batched_tokens)
    return math.inf if chain is None else chain.ttft_percentile_s(percentile)


def itl_percentile_s(profile: EngineProfile, arrival_rate_rps: float, mean_prompt_tokens: float,
                     mean_output_tokens: float, percentile: float, max_queue: int | None = None, *,
                     prompt_mix: PromptMix | None = None,
                     max_num_batched_tokens: int = DEFAULT_MAX_NUM_BATCHED_TOKENS) -> float:
    """Any token-weighted ITL percentile at one arrival rate."""
    chain = _solve(profile, arrival_rate_rps, mean_prompt_tokens, mean_output_tokens, max_queue,
                   prompt_mix, max_num_batched_tokens)
    if chain is None:
        limit = batch_limit(profile, mean_prompt_tokens, mean_output_tokens)
        return decode_ms(profile, limit) / 1000.0
    return chain.itl_percentile_s(percentile)


def _meets(chain: _Chain | None, slo: Slo, target_utilization: float) -> bool:
    if chain is None or chain.throughput_rps() / chain.max_rate_rps > target_utilization:
        return False
    if slo.ttft_ms is not None and chain.ttft_percentile_s(slo.ttft_percentile) > slo.ttft_ms / 1000.0:
        return False
    if slo.itl_ms is not None and chain.itl_percentile_s(slo.itl_percentile) > slo.itl_ms / 1000.0:
        return False
    return True


RATE_SEARCH_LOG_RANGE = (math.log(1e-6), math.log(1e6))  # requests/s one replica could ever take
RATE_SEARCH_STEPS = 14  # 2^-14 of the log range: about 0.17 % relative precision (the autoscaler's solves)
PRECISE_RATE_SEARCH_STEPS = 20  # 2^-20: about 3e-5, for capacities quoted to four digits (capacity compare)


def max_arrival_rate(
    profile: EngineProfile,
    mean_prompt_tokens: float,
    mean_output_tokens: float,
    slo: Slo,
    target_utilization: float = 0.75,
    max_queue: int | None = None,
    *,
    prompt_mix: PromptMix | None = None,
    max_num_batched_tokens: int = DEFAULT_MAX_NUM_BATCHED_TOKENS,
    search_steps: int = RATE_SEARCH_STEPS,
) -> float:
    """Largest requests/s one replica takes while meeting the SLO and utilisation <= target.

    Every constraint tightens as lambda grows, so bisection finds the edge. It runs on one
    fixed log-scale grid for every input (2^-search_steps of the log range; the result is at
    most that far below the edge), so a stricter input (tighter SLO, lower target, longer
    prompts) can never come out with more capacity through rounding. 0.0 means even a lone
    request misses the SLO: the SLO is unattainable on this engine.
    """
    if not isinstance(target_utilization, (int, float)) or not 0.0 < target_utilization <= 1.0:
        raise ValueError(f"target_utilization must be in (0, 1], got {target_utilization!r}")
    batch_limit(profile, mean_prompt_tokens, mean_output_tokens)  # validates the request shape

    def feasible(log_rate: float) -> bool:
        chain = _solve(profile, math.exp(log_rate), mean_prompt_tokens, mean_output_tokens, max_queue,
                       prompt_mix, max_num_batched_tokens)
        return _meets(chain, slo, target_utilization)

    lo, hi = RATE_SEARCH_LOG_RANGE
    if not feasible(lo):
        return 0.0
    step = (hi - lo) / 2**search_steps
    limit = batch_limit(profile, mean_prompt_tokens, mean_output_tokens)
    cap = target_utilization * service_rate_rps(profile, mean_prompt_tokens, mean_output_tokens, limit)
    cap_on_grid = lo + math.floor((math.log(cap) - lo) / step) * step
    if max_queue is None and feasible(cap_on_grid):  # the utilisation cap binds: bisection would land on this grid point
        return math.exp(cap_on_grid)
    for _ in range(search_steps):
        mid = 0.5 * (lo + hi)
        if feasible(mid):
            lo = mid
        else:
            hi = mid
    return math.exp(lo)


def replicas_needed(
    total_rate_rps: float,
    peak_factor: float,
    per_replica_rate_rps: float,
    min_replicas: int = 0,
    max_replicas: int | None = None,
) -> int:
    """ceil(lambda * P_c / lambda_max), clamped to [min_replicas, max_replicas]."""
    if not isinstance(total_rate_rps, (int, float)) or not math.isfinite(total_rate_rps) or total_rate_rps < 0:
        raise ValueError(f"total_rate_rps must be a finite number >= 0, got {total_rate_rps!r}")
    if not isinstance(peak_factor, (int, float)) or not math.isfinite(peak_factor) or peak_factor < 1:
        raise ValueError(f"peak_factor must be >= 1, got {peak_factor!r}")
    if min_replicas < 0 or (max_replicas is not None and max_replicas < min_replicas):
        raise ValueError(f"need 0 <= min_replicas <= max_replicas, got {min_replicas!r}, {max_replicas!r}")
    if total_rate_rps == 0:
        raw = 0
    else:
        if not per_replica_rate_rps > 0:
            raise ValueError(f"per_replica_rate_rps must be > 0 to serve traffic, got {per_replica_rate_rps!r}")
        raw = math.ceil(round(total_rate_rps * peak_factor / per_replica_rate_rps, 9))
    raw = max(raw, min_replicas)
    return raw if max_replicas is None else min(raw, max_replicas)
