"""The vLLM continuous-batching replica as a state-dependent birth-death queue.

With n requests in flight (n <= B) a replica completes them at
    mu(n) = n / (prefill(n) + (out - 1) * decode(n)),
    prefill(n) = gamma + delta * in * n,   decode(n) = alpha + beta * n   (ms),
and at mu(B) once B are running and the rest wait (capacity-model.md section 2, the model of
IBM's inferno). B = min(max_num_seqs, kv_cache_tokens // (in + out)).

By default the waiting room is unbounded, as in vLLM: beyond B the chain is geometric with
ratio r = lambda / mu(B), so an arrival that finds k >= B in the system waits for k - B + 1
departures at rate mu(B) (PASTA), an Erlang delay whose geometric mixture is exponential with
rate mu(B) (1 - r). A finite `max_queue` gives the M/M/1/K form (K = B + max_queue) and sums
the Erlang delays explicitly. Probabilities are formed in log space so large B cannot
overflow. Latencies come out in seconds; the profile is in milliseconds.

TTFT is W + prefill(m*) with m* the effective *prefill* batch: only newcomers are prefilled,
so an arrival that finds k < B running shares its prefill with the m* = 1 + lambda decode(k)
others that arrived during the same decode step (and waits half that step), and one admitted
from the queue is prefilled alone as a departure frees its slot. Using the running batch k as
the prefill batch instead would make a replica that already decodes 3 requests take 4 prompts'
prefill time for every newcomer, which public vLLM measurements do not show.
ITL is decode(n) read off the token-weighted distribution of the running batch n, stretched
by prefill(m) for the share of steps that also prefill a newcomer (vLLM mixes them).
These step-level choices follow vLLM V1's scheduler, which kiban_serving.sim also follows.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass

from kiban.capacity.engine_profile import EngineProfile
from kiban.capacity.erlang import require_percentile
from kiban.capacity.founding import require_positive

SLO_PERCENTILES = (50, 90, 95, 99)


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


def prefill_ms(profile: EngineProfile, prompt_tokens: float, batch: int) -> float:
    """Time to prefill a batch of `batch` prompts of `prompt_tokens` tokens each."""
    return profile.gamma_ms + profile.delta_ms * prompt_tokens * batch


def decode_ms(profile: EngineProfile, batch: int) -> float:
    """Time of one decode step with `batch` sequences running: the inter-token latency."""
    return profile.alpha_ms + profile.beta_ms * batch


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


def _suffix_sums(values: tuple[float, ...]) -> tuple[float, ...]:
    sums = [0.0]
    for value in reversed(values):
        sums.append(sums[-1] + value)
    return tuple(reversed(sums))


def _companions(arrival_rate_rps: float, batch: int, profile: EngineProfile) -> float:
    """Other prompts that arrive during one decode step at this batch and share its prefill."""
    return arrival_rate_rps * decode_ms(profile, batch) / 1000.0


def _fast_ttft_s(profile: EngineProfile, prompt_tokens: float, arrival_rate_rps: float, limit: int) -> tuple[float, ...]:
    """TTFT of an arrival that finds k < B requests in flight and so need not queue.

    An idle engine (k = 0) prefills it at once. Otherwise it waits for the step under way to
    end (half a step on average), then runs one step that decodes the k others and prefills
    it with the m = 1 + lambda decode(k) newcomers of that step: continuous batching prefills
    only newcomers, so the prefill batch is m, not the k already decoding.
    """
    times = [prefill_ms(profile, prompt_tokens, 1) / 1000.0]
    for k in range(1, limit):
        step_ms = decode_ms(profile, k)
        prefill = prefill_ms(profile, prompt_tokens, 1.0 + _companions(arrival_rate_rps, k, profile))
        times.append((1.5 * step_ms + prefill) / 1000.0)
    return tuple(times)


def _suffix_sums(values: tuple[float, ...]) -> tuple[float, ...]:
    sums = [0.0]
    for value in reversed(values):
        sums.append(sums[-1] + value)
    return tuple(reversed(sums))


def _fast_ttft_s(profile: EngineProfile, prompt_tokens: float, arrival_rate_rps: float, limit: int) -> tuple[float, ...]:
    """TTFT of an arrival that finds k < B requests in flight and so need not queue.

    An idle engine (k = 0) prefills it at once. Otherwise it waits for the decode step under
    way to end (half a step on average) and is prefilled together with the others that
    arrived during that step: m = 1 + lambda * decode(k) prompts. Continuous batching
    prefills only newcomers, so the prefill batch is m, not the k already decoding.
    """
    times = [prefill_ms(profile, prompt_tokens, 1) / 1000.0]
    for k in range(1, limit):
        step_ms = decode_ms(profile, k)
        companions = arrival_rate_rps * step_ms / 1000.0
        times.append((0.5 * step_ms + prefill_ms(profile, prompt_tokens, 1.0 + companions)) / 1000.0)
    return tuple(times)


@dataclass(frozen=True)
class _Chain:
    """A solved chain: what an arrival sees and what the engine does, ready for percentiles."""

    profile: EngineProfile
    prompt_tokens: float
    output_tokens: float
    arrival_rate_rps: float
    batch_limit: int
    max_rate_rps: float  # mu(B)
    below: tuple[float, ...]  # time-average P(N = k), k < B (arrivals see the same, PASTA)
    below_suffix: tuple[float, ...]  # sum of below[m:], m = 0..B, for O(log B) TTFT tails
    fast_ttft_s: tuple[float, ...]  # TTFT of an arrival finding k < B in the system (increasing)
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

    # -- time to first token -----------------------------------------------------------------
    def _prefill_s(self, batch: float) -> float:
        return prefill_ms(self.profile, self.prompt_tokens, batch) / 1000.0

    def _after_wait_s(self) -> float:
        """Once a departure frees a slot the queued request is prefilled alone in a step that
        also decodes the B - 1 others."""
        others = self.batch_limit - 1
        decode = decode_ms(self.profile, others) / 1000.0 if others > 0 else 0.0
        return decode + self._prefill_s(1)

    def ttft_mean_s(self) -> float:
        admitted_fast = sum(self._admitted(p) * t for p, t in zip(self.below, self.fast_ttft_s))
        return admitted_fast + self.wait_probability() * self._after_wait_s() + self.mean_wait_s()

    def ttft_tail(self, ttft_s: float) -> float:
        """P(TTFT > t): no wait below B (fast_ttft_s), else the Erlang wait then one step."""
        slow_below = self._admitted(self.below_suffix[bisect.bisect_right(self.fast_ttft_s, ttft_s)])
        return slow_below + self.wait_tail(ttft_s - self._after_wait_s())

    def ttft_percentile_s(self, percentile: float) -> float:
        allowed = 1.0 - require_percentile(percentile) / 100.0
        hi = max(self.fast_ttft_s[-1], self._after_wait_s(), 1e-6)
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
    def _itl_distribution(self) -> list[tuple[float, float]]:
        """(ITL ms, share of tokens), sorted by ITL.

        Tokens are emitted at rate b / decode(b) while b run, so batch b carries a share
        P(b) b / decode(b) of the tokens. A share f_b = min(1, admissions per second x
        decode(b)) of those steps also prefills a newcomer (vLLM mixes prefill into decode
        steps), which stretches that token's gap by prefill(m).
        """
        atoms: list[tuple[float, float]] = []
        for b in range(1, self.batch_limit + 1):
            p_b = self.below[b] if b < self.batch_limit else self.at_or_above
            if p_b <= 0:
                continue
            step = decode_ms(self.profile, b)
            tokens = p_b * b / step
            admissions_rps = self.arrival_rate_rps if b < self.batch_limit else self.max_rate_rps
            stalled = min(1.0, admissions_rps * step / 1000.0)
            companions = 1.0 + _companions(admissions_rps, b, self.profile)
            atoms.append((step, tokens * (1.0 - stalled)))
            atoms.append((step + prefill_ms(self.profile, self.prompt_tokens, companions), tokens * stalled))
        total = sum(w for _, w in atoms)
        if total <= 0:  # no load: a lone request decodes alone
            return [(decode_ms(self.profile, 1), 1.0)]
        return sorted((value, w / total) for value, w in atoms if w > 0)

    def itl_mean_s(self) -> float:
        return sum(value * w for value, w in self._itl_distribution()) / 1000.0

    def itl_percentile_s(self, percentile: float) -> float:
        target = require_percentile(percentile) / 100.0
        cumulative = 0.0
        distribution = self._itl_distribution()
        for value, w in distribution:
            cumulative += w
            if cumulative >= target - 1e-12:
                return value / 1000.0
        return distribution[-1][0] / 1000.0

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
) -> _Chain | None:
    """Stationary distribution at rate lambda; None when an unbounded queue is unstable."""
    _require_profile(profile)
    prompt, output = _require_tokens(prompt_tokens, output_tokens)
    if not isinstance(arrival_rate_rps, (int, float)) or not math.isfinite(arrival_rate_rps) or arrival_rate_rps < 0:
        raise ValueError(f"arrival_rate_rps must be a finite number >= 0, got {arrival_rate_rps!r}")
    if max_queue is not None and (isinstance(max_queue, bool) or not isinstance(max_queue, int) or max_queue < 0):
        raise ValueError(f"max_queue must be an integer >= 0 or None, got {max_queue!r}")
    limit = batch_limit(profile, prompt, output)
    max_rate = service_rate_rps(profile, prompt, output, limit)
    common = dict(profile=profile, prompt_tokens=prompt, output_tokens=output,
                  arrival_rate_rps=float(arrival_rate_rps), batch_limit=limit, max_rate_rps=max_rate)
    if arrival_rate_rps == 0:
        below = (1.0,) + (0.0,) * (limit - 1)
        queued = (0.0,) * (max_queue + 1) if max_queue is not None else ()
        return _Chain(**common, below=below, below_suffix=_suffix_sums(below),
                  fast_ttft_s=_fast_ttft_s(profile, prompt, arrival_rate_rps, limit), queued_states=queued,
                      at_or_above=0.0, blocking=0.0,
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
    return _Chain(**common, below=below, below_suffix=_suffix_sums(below),
                  fast_ttft_s=_fast_ttft_s(profile, prompt, arrival_rate_rps, limit), queued_states=queued,
                  at_or_above=at_or_above,
                  blocking=queued[-1] if queued else 0.0,
                  geometric_rate=max_rate * (1.0 - ratio) if max_queue is None else max_rate)


def predict(
    profile: EngineProfile,
    arrival_rate_rps: float,
    mean_prompt_tokens: float,
    mean_output_tokens: float,
    max_queue: int | None = None,
) -> Prediction:
    """Latency and load of one replica fed `arrival_rate_rps`; infinite latencies when unstable."""
    chain = _solve(profile, arrival_rate_rps, mean_prompt_tokens, mean_output_tokens, max_queue)
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
                      mean_output_tokens: float, percentile: float, max_queue: int | None = None) -> float:
    """Any TTFT percentile (e.g. 90) at one arrival rate; inf when the queue is unstable."""
    chain = _solve(profile, arrival_rate_rps, mean_prompt_tokens, mean_output_tokens, max_queue)
    return math.inf if chain is None else chain.ttft_percentile_s(percentile)


def itl_percentile_s(profile: EngineProfile, arrival_rate_rps: float, mean_prompt_tokens: float,
                     mean_output_tokens: float, percentile: float, max_queue: int | None = None) -> float:
    """Any token-weighted ITL percentile at one arrival rate."""
    chain = _solve(profile, arrival_rate_rps, mean_prompt_tokens, mean_output_tokens, max_queue)
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
RATE_SEARCH_STEPS = 20  # 2^-20 of the log range: about 3e-5 relative precision


def max_arrival_rate(
    profile: EngineProfile,
    mean_prompt_tokens: float,
    mean_output_tokens: float,
    slo: Slo,
    target_utilization: float = 0.75,
    max_queue: int | None = None,
) -> float:
    """Largest requests/s one replica takes while meeting the SLO and utilisation <= target.

    Every constraint tightens as lambda grows, so bisection finds the edge. It runs on one
    fixed log-scale grid for every input, so a stricter input (tighter SLO, lower target,
    longer prompts) can never come out with more capacity through rounding. 0.0 means even a
    lone request misses the SLO: the SLO is unattainable on this engine.
    """
    if not isinstance(target_utilization, (int, float)) or not 0.0 < target_utilization <= 1.0:
        raise ValueError(f"target_utilization must be in (0, 1], got {target_utilization!r}")
    batch_limit(profile, mean_prompt_tokens, mean_output_tokens)  # validates the request shape

    def feasible(log_rate: float) -> bool:
        chain = _solve(profile, math.exp(log_rate), mean_prompt_tokens, mean_output_tokens, max_queue)
        return _meets(chain, slo, target_utilization)

    lo, hi = RATE_SEARCH_LOG_RANGE
    if not feasible(lo):
        return 0.0
    step = (hi - lo) / 2**RATE_SEARCH_STEPS
    limit = batch_limit(profile, mean_prompt_tokens, mean_output_tokens)
    cap = target_utilization * service_rate_rps(profile, mean_prompt_tokens, mean_output_tokens, limit)
    cap_on_grid = lo + math.floor((math.log(cap) - lo) / step) * step
    if max_queue is None and feasible(cap_on_grid):  # the utilisation cap binds: bisection would land on this grid point
        return math.exp(cap_on_grid)
    for _ in range(RATE_SEARCH_STEPS):
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
