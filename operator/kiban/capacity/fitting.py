"""Fit the workload and the engine profile from Prometheus numbers, with the profile as prior.

Inputs are plain numbers (the collector turns PromQL results into them): histogram windows
(cumulative buckets, sum and count, as vLLM exports `vllm:request_prompt_tokens` and
friends), one engine's counter increases over a window (EngineWindow), and the model's pods'
creation and Ready times. The engine fit is Bayesian and linear: the datasheet profile is a
Gaussian prior, each window adds what its mean inter-token latency and mean prefill time are
expected to be in terms of the step model (see `engine_rows`), and the posterior mode and sd
are the learned profile and its uncertainty. The cold start is learned from the pods.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from kiban.capacity.engine_profile import EngineProfile



@dataclass(frozen=True)
class HistogramWindow:
    """A Prometheus histogram (or its increase over a window): cumulative buckets, sum, count."""

    buckets: tuple[tuple[float, float], ...]  # (le upper bound, cumulative count), le ascending
    sum: float
    count: float

    def __post_init__(self) -> None:
        bounds = [le for le, _ in self.buckets]
        if bounds != sorted(bounds):
            raise ValueError("buckets must be ordered by their le bound")
        counts = [c for _, c in self.buckets]
        if any(b < a - 1e-9 for a, b in zip(counts, counts[1:])):
            raise ValueError("buckets must hold cumulative counts (non-decreasing)")
        if self.count < 0 or math.isnan(self.count):
            raise ValueError(f"count must be >= 0, got {self.count!r}")


def histogram_delta(later: HistogramWindow, earlier: HistogramWindow) -> HistogramWindow:
    """What a histogram gained between two scrapes; a counter reset is an error, not a negative."""
    if [le for le, _ in later.buckets] != [le for le, _ in earlier.buckets]:
        raise ValueError("buckets differ between the two histograms")
    if later.count < earlier.count or later.sum < earlier.sum:
        raise ValueError("histogram went backwards (counter reset): use the later window alone")
    return HistogramWindow(
        buckets=tuple((le, a - b) for (le, a), (_, b) in zip(later.buckets, earlier.buckets)),
        sum=later.sum - earlier.sum,
        count=later.count - earlier.count,
    )


def histogram_mean(window: HistogramWindow) -> float | None:
    """sum / count; None when nothing was observed (0/0 is not a mean)."""
    return window.sum / window.count if window.count > 0 else None


def histogram_quantile(window: HistogramWindow, quantile: float) -> float | None:
    """Prometheus histogram_quantile: linear inside the bucket, the last finite bound for +Inf."""
    if not 0 <= quantile <= 1:
        raise ValueError(f"quantile must be in [0, 1], got {quantile!r}")
    if not window.buckets or window.buckets[-1][1] <= 0:
        return None
    rank = quantile * window.buckets[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for le, cumulative in window.buckets:
        if cumulative >= rank:
            if math.isinf(le):
                return lower_bound
            if cumulative == lower_count:
                return le
            return lower_bound + (le - lower_bound) * (rank - lower_count) / (cumulative - lower_count)
        lower_bound, lower_count = le, cumulative
    return lower_bound


def rate_per_s(count_delta: float, window_s: float) -> float:
    """Events per second from a counter's increase over window_s."""
    if window_s <= 0:
        raise ValueError(f"window_s must be > 0, got {window_s!r}")
    if count_delta < 0:
        raise ValueError(f"count_delta must be >= 0 (counter reset?), got {count_delta!r}")
    return count_delta / window_s


@dataclass(frozen=True)
class WorkloadEstimate:
    """What the policy needs about traffic: rate and mean request shape."""

    arrival_rate_rps: float
    mean_prompt_tokens: float | None  # None when no request finished in the window
    mean_output_tokens: float | None


def estimate_workload(
    prompt_tokens: HistogramWindow, output_tokens: HistogramWindow, window_s: float,
    request_count: float | None = None,
) -> WorkloadEstimate:
    """Rate and token means from one window of the prompt/generation token histograms.

    The prompt histogram counts one observation per request, so its count delta is the
    request count unless a counter (e.g. vllm:request_success) is given.
    """
    count = prompt_tokens.count if request_count is None else request_count
    return WorkloadEstimate(
        arrival_rate_rps=rate_per_s(count, window_s),
        mean_prompt_tokens=histogram_mean(prompt_tokens),
        mean_output_tokens=histogram_mean(output_tokens),
    )


# -- online learning: the engine's step times and its cold start, the profile as prior -----------
#
# What vLLM 0.33 exports, and what it measures in terms of the engine's steps (each step lasts
#   max([D > 0] alpha, [P > 0] gamma) + beta D + delta P   ms, D decoding sequences, P prefill tokens,
# the step model of kiban.capacity.batching and kiban_serving.sim.engine):
#   - vllm:inter_token_latency_seconds: one observation per decoded token, the length of the step
#     it rode in. Its mean over a window is the step length weighted by D: steps carrying a
#     chunk of prefill weigh as much as the decodes riding in them.
#   - vllm:iteration_tokens_total_count: steps that produced a token.
#   - vllm:prompt_tokens_total, vllm:time_to_first_token_seconds_count: prompt tokens and requests
#     prefilled (counted at the first token).
#   - vllm:request_prefill_time_seconds (first scheduled to first token), vllm:request_prompt_tokens,
#     vllm:request_queue_time_seconds (arrival to first scheduled): once per request, when it
#     finishes. A prefill spans every step from admission to its first token: the chunks of its
#     own prompt (max_num_batched_tokens per step, less one token per decode), other prompts
#     admitted in the same steps, and the decodes riding along.
# The features below are what those sums are expected to be, linear in (alpha, gamma, beta, delta)
# once the regime is fixed: whether a step that mixes prefill with decodes pays gamma (gamma >=
# alpha) or alpha (gamma <= alpha). Both regimes are fitted; the more probable one wins.

PRIOR_RELATIVE_SD = 0.25  # a datasheet parameter is known to about ±25 % (one sd) before evidence
SAMPLING_CV = 1.0  # one ITL or prefill time scatters about its mean by about its own size
# The observation model's own error on a window mean, per row kind: the mean ITL's features are
# close (residuals within ~10 % on the design seeds, kiban_dev.benchmark.engine_fit), the mean
# prefill time's much cruder (budget sharing and co-admitted prompts at high load: up to ~25 %).
MODEL_ERROR = {"itl": 0.10, "prefill": 0.25}
FORGET_S = 1800.0  # evidence fades with this time constant, so the fit follows a drifting engine
FIT_FIELDS = ("alpha_ms", "gamma_ms", "beta_ms", "delta_ms")  # the order of every feature vector
DEFAULT_MAX_NUM_BATCHED_TOKENS = 2048  # vLLM V1's token budget per step (chunked prefill) by default
MIN_BUDGET_SHARE = 0.125  # the prefill budget never below this share (kiban.capacity.batching's rule)
REGIMES = ("gamma>=alpha", "gamma<=alpha")  # what a step mixing prefill and decodes pays as fixed cost


@dataclass(frozen=True)
class EngineWindow:
    """One engine's vLLM counters over one window (their increases), as Prometheus answers them.

    `itl_*`: vllm:inter_token_latency_seconds _sum/_count; `steps`: vllm:iteration_tokens_total
    _count; `prompt_tokens`: vllm:prompt_tokens_total; `prefill_*`: vllm:request_prefill_time_seconds
    _sum/_count; `request_prompt_*`: vllm:request_prompt_tokens _sum/_count; `first_tokens`:
    vllm:time_to_first_token_seconds_count; `queue_sum_s`: vllm:request_queue_time_seconds_sum;
    `window_s`: the window's length. The last three may be None (not collected): the rows then
    fall back to cruder estimates. `mean_running` (the batch gauge's average) is not used: a
    handful of scraped samples of it is noise next to the ITL sum, which integrates the batch."""

    mean_running: float
    itl_sum_s: float
    itl_count: float
    steps: float
    prompt_tokens: float
    prefill_sum_s: float
    prefill_count: float
    request_prompt_sum: float
    request_prompt_count: float
    first_tokens: float | None = None
    queue_sum_s: float | None = None
    window_s: float | None = None


@dataclass(frozen=True)
class ObservationRow:
    """One linear observation: y (ms) ~ features . (alpha, gamma, beta, delta), per regime."""

    kind: str  # "itl" or "prefill"
    features: tuple[tuple[float, float, float, float], tuple[float, float, float, float]]  # by REGIMES
    y_ms: float
    samples: float  # steps (itl) or requests (prefill) behind the mean


def _finite(*values: float | None) -> bool:
    return all(v is not None and math.isfinite(v) for v in values)


def chunks_per_prompt(mean_prompt: float, budget: float, prompt_mix: Sequence[tuple[float, float]] | None = None
                      ) -> float:
    """Steps a prompt's prefill takes on average, E[max(1, ceil(p / budget))]: over the prompt
    law (the mix, rescaled to `mean_prompt`), or, without one, an exponential law of that mean
    (then ceil(p / b) is geometric: 1 / (1 - exp(-b / mean)))."""
    if not mean_prompt > 0 or not budget > 0:
        return 1.0
    if prompt_mix:
        total = sum(p for _, p in prompt_mix if p > 0)
        mix_mean = sum(t * p for t, p in prompt_mix if p > 0) / total if total > 0 else 0.0
        if mix_mean > 0:
            scale = mean_prompt / mix_mean
            return sum(p * max(1.0, math.ceil(t * scale / budget - 1e-9)) for t, p in prompt_mix if p > 0) / total
    return 1.0 / -math.expm1(-budget / mean_prompt)


def engine_rows(window: EngineWindow, max_num_batched_tokens: int = DEFAULT_MAX_NUM_BATCHED_TOKENS,
                max_num_seqs: int = 256, prompt_mix: Sequence[tuple[float, float]] | None = None
                ) -> list[ObservationRow]:
    """The window's linear observations: its mean ITL and its mean prefill time.

    Mean ITL (the step length seen by a decoding token), with d = decodes per step (itl_count /
    steps), b = the prefill budget left beside them and k = steps per prompt:
      - batch: the D-weighted mean of D, d + (1 - d / max_num_seqs) (a Poisson batch has
        E[D^2] / E[D] = d + 1; a full one does not vary);
      - prefill tokens seen by a decode: the prompt-token rate times the time its decoder was
        exposed to prefills, its decode time plus the last step of its own prefill (whose
        arrivals are prefilled in its first decode step) less its last decode step (whose
        arrivals come after it): (prompt_tokens / window) x (itl_sum + first_tokens x last) / itl_count;
      - steps mixing prefill with decodes, their D-weighted share phi = 1 - exp(-k x that rate of
        prefills), pay the mixed fixed cost (gamma if gamma >= alpha, else alpha).
    Mean prefill time (per finished request): k steps, each at the fixed cost of its kind (gamma
    when the request found the engine idle, with probability 1 - busy share), the time-averaged
    decodes riding along (itl_sum / window, PASTA), and its own prompt plus the prompts admitted
    with it: those that arrived during the step it arrived in, whose length-biased mean is twice
    the mean queue time (the residual an arrival waits), capped by the budget of its k steps.
    """
    rows: list[ObservationRow] = []
    budget = float(max_num_batched_tokens)
    n, c, s = window.steps, window.itl_count, window.itl_sum_s
    ptok = max(0.0, window.prompt_tokens)
    first = window.first_tokens if _finite(window.first_tokens) and window.first_tokens > 0 else None
    if first is None and window.prefill_count > 0:
        first = window.prefill_count  # requests finished: as many as prefilled, in a steady window
    decoded = n > 0 and c > 0 and s > 0
    d = c / n if decoded else 0.0
    b = max(budget - d, MIN_BUDGET_SHARE * budget)
    itl_s = s / c if decoded else 0.0
    busy_s = n * itl_s if decoded else 0.0
    if window.prefill_count > 0 and window.prefill_sum_s > 0:
        busy_s = max(busy_s, window.prefill_sum_s)
    span_s = window.window_s if _finite(window.window_s) and window.window_s > 0 else busy_s
    prompt_mean = (window.request_prompt_sum / window.request_prompt_count if window.request_prompt_count > 0
                   else (ptok / first if first else 0.0))
    prefill_s = window.prefill_sum_s / window.prefill_count if window.prefill_count > 0 else None
    arrival_rps = (first or 0.0) / span_s if span_s > 0 else 0.0
    prompt_all = ptok / first if first else prompt_mean
    if _finite(window.queue_sum_s) and window.queue_sum_s >= 0 and window.prefill_count > 0:
        # prompts admitted with a request: those that arrived in the step it arrived in, whose
        # length-biased mean length is twice the mean residual an arrival waits (its queue time)
        along = 2.0 * arrival_rps * prompt_all * window.queue_sum_s / window.prefill_count
    else:  # no queue time: an arrival's step is about one mean step long
        along = arrival_rps * prompt_all * itl_s
    k = chunks_per_prompt(prompt_mean, b, prompt_mix)
    if decoded and span_s > 0:
        last_s = max(0.0, prefill_s / k - itl_s) if prefill_s is not None else 0.0
        exposed_s = (s + (first or 0.0) * last_s) / c  # prefill exposure of one decoding token
        phi = -math.expm1(-arrival_rps * k * exposed_s)
        batch = d + max(0.0, 1.0 - d / max_num_seqs)
        prompt_seen = ptok / span_s * exposed_s
        rows.append(ObservationRow("itl", ((1.0 - phi, phi, batch, prompt_seen), (1.0, 0.0, batch, prompt_seen)),
                                   1000.0 * itl_s, n))
    if prefill_s is not None and window.request_prompt_count > 0 and span_s > 0:
        own = window.request_prompt_sum / window.request_prompt_count
        riding = s / span_s if decoded else 0.0
        idle = 1.0 - min(1.0, busy_s / span_s)
        tokens = own + min(along, max(0.0, k * b - own))
        rows.append(ObservationRow("prefill", ((0.0, k, k * riding, tokens),
                                               ((1.0 - idle) * k, idle * k, k * riding, tokens)),
                                   1000.0 * prefill_s, window.prefill_count))
    return [row for row in rows
            if row.y_ms > 0 and row.samples > 0 and all(math.isfinite(v) for f in row.features for v in f)]


_ZERO4 = ((0.0,) * 4,) * 4


@dataclass(frozen=True)
class EngineEvidence:
    """Sufficient statistics of the weighted least-squares fit in each regime (information matrix,
    vector, and the weighted sum of y^2 for comparing the regimes), decayed with time, so one
    tick's update is O(1) whatever the history."""

    information: tuple[tuple[tuple[float, ...], ...], ...] = (_ZERO4, _ZERO4)
    vector: tuple[tuple[float, ...], ...] = ((0.0,) * 4, (0.0,) * 4)
    yy: tuple[float, float] = (0.0, 0.0)
    time_s: float | None = None
    observations: float = 0.0  # decayed count of steps and requests behind the evidence


def add_evidence(evidence: EngineEvidence, windows: Sequence[EngineWindow], now_s: float,
                 forget_s: float = FORGET_S, *, weight: float = 1.0,
                 max_num_batched_tokens: int = DEFAULT_MAX_NUM_BATCHED_TOKENS, max_num_seqs: int = 256,
                 prompt_mix: Sequence[tuple[float, float]] | None = None) -> EngineEvidence:
    """The evidence decayed to now_s plus these windows' rows. Each row's noise is relative:
    sd = y * sqrt(SAMPLING_CV^2 / samples + MODEL_ERROR[kind]^2), so a window of few requests barely
    counts and many windows cannot out-vote the model's own error. `weight` (0-1) counts windows
    that overlap the previous ones only for their new share (a 60 s window read every 15 s: 1/4)."""
    if not 0 <= weight <= 1:
        raise ValueError(f"weight must be in [0, 1], got {weight!r}")
    decay = 1.0 if evidence.time_s is None else math.exp(-max(0.0, now_s - evidence.time_s) / forget_s)
    info = np.array(evidence.information, dtype=float) * decay
    vec = np.array(evidence.vector, dtype=float) * decay
    yy = np.array(evidence.yy, dtype=float) * decay
    count = evidence.observations * decay
    for window in windows:
        for row in engine_rows(window, max_num_batched_tokens, max_num_seqs, prompt_mix):
            precision = weight / (row.y_ms ** 2 * (SAMPLING_CV ** 2 / row.samples + MODEL_ERROR[row.kind] ** 2))
            for regime, features in enumerate(row.features):
                x = np.array(features)
                info[regime] += np.outer(x, x) * precision
                vec[regime] += x * row.y_ms * precision
                yy[regime] += row.y_ms ** 2 * precision
            count += weight * row.samples
    return EngineEvidence(tuple(tuple(map(tuple, m)) for m in info.tolist()),
                          tuple(map(tuple, vec.tolist())), (float(yy[0]), float(yy[1])), now_s, count)


@dataclass(frozen=True)
class EngineFit:
    """The prior, the fitted profile and each fitted parameter's posterior sd (same units)."""

    prior: EngineProfile
    profile: EngineProfile
    sd: dict[str, float]
    observations: float
    regime: str = REGIMES[1]

    def relative_sd(self, name: str) -> float:
        value = getattr(self.profile, name)
        return self.sd[name] / value if value else math.inf


def _regime_map(mean0: np.ndarray, precision0: np.ndarray, info: np.ndarray, vec: np.ndarray, yy: float,
                sign: float) -> tuple[np.ndarray, float, np.ndarray]:
    """The posterior mode within a regime (sign +1: gamma >= alpha, -1: gamma <= alpha; on the
    boundary gamma = alpha when the free mode lies outside), its log posterior (up to a constant
    shared by both regimes) and the posterior information."""
    a = precision0 + info
    b = precision0 @ mean0 + vec
    theta = np.linalg.solve(a, b)
    if sign * (theta[1] - theta[0]) < 0:
        tie = np.array([[1.0, 0, 0], [1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]])  # gamma = alpha
        theta = tie @ np.linalg.solve(tie.T @ a @ tie, tie.T @ b)
    log_post = -0.5 * (theta @ a @ theta - 2.0 * theta @ b + yy + mean0 @ precision0 @ mean0)
    return theta, float(log_post), a


def fit_engine(prior: EngineProfile, evidence: EngineEvidence, relative_sd: float = PRIOR_RELATIVE_SD) -> EngineFit:
    """Posterior mode of (alpha, gamma, beta, delta): Gaussian prior at the profile (sd =
    relative_sd x value), linear evidence in each regime, the regime with the more probable mode
    kept; evidence overrides the prior as it accumulates. Parameters stay within [0.1, 10] x the
    prior (a step never costs nothing). A parameter no evidence touches (gamma when it hides under
    alpha, and no prefill found the engine idle) keeps its prior value and sd."""
    mean0 = np.array([getattr(prior, name) for name in FIT_FIELDS], dtype=float)
    precision0 = np.diag(1.0 / np.maximum(relative_sd * mean0, 1e-9) ** 2)
    best: tuple[np.ndarray, float, np.ndarray, int] | None = None
    for regime, sign in ((1, -1.0), (0, 1.0)):  # gamma <= alpha first: the datasheet's gamma = alpha
        theta, log_post, info = _regime_map(mean0, precision0, np.array(evidence.information[regime], dtype=float),
                                            np.array(evidence.vector[regime], dtype=float),
                                            float(evidence.yy[regime]), sign)
        if best is None or log_post > best[1] + 1e-9:
            best = (theta, log_post, info, regime)
    assert best is not None
    theta, _, info, regime = best
    mean = np.clip(theta, 0.1 * mean0, 10.0 * mean0)
    sd = np.sqrt(np.maximum(np.diag(np.linalg.inv(info)), 0.0))
    profile = replace(prior, **{name: float(v) for name, v in zip(FIT_FIELDS, mean)})
    return EngineFit(prior=prior, profile=profile, sd={n: float(v) for n, v in zip(FIT_FIELDS, sd)},
                     observations=evidence.observations, regime=REGIMES[regime])


PROFILE_GRID_RATIO = 1.05  # a fitted parameter is snapped to this geometric grid (capacity cache hits)


def snapped_profile(profile: EngineProfile, ratio: float = PROFILE_GRID_RATIO) -> EngineProfile:
    """The profile with alpha, beta, gamma, delta on a geometric grid: small moves of a fit give
    the same profile (and the same cached capacity); the grid is fine enough not to matter."""
    def snap(value: float) -> float:
        if not value > 0:
            return value
        return round(ratio ** round(math.log(value) / math.log(ratio)), 6)
    return replace(profile, **{name: snap(getattr(profile, name)) for name in FIT_FIELDS})


# -- cold start: creation to Ready of the model's own pods ----------------------------------------

STARTUP_MEMORY = 10  # creation-to-Ready durations kept per revision (the newest)


@dataclass(frozen=True)
class PodStart:
    """A pod of the model: its revision (pod-template hash), creation time and first Ready time."""

    revision: str
    created_s: float
    ready_s: float | None  # None: not Ready yet


@dataclass(frozen=True)
class StartupMemory:
    """Creation-to-Ready durations seen so far, per revision (newest last), and pods already counted."""

    durations: tuple[tuple[str, float], ...] = ()
    counted: frozenset[tuple[str, float]] = frozenset()


def remember_starts(memory: StartupMemory, pods: Sequence[PodStart], keep: int = STARTUP_MEMORY) -> StartupMemory:
    """Add the pods that became Ready since the last call (each pod once, by revision and creation)."""
    durations = list(memory.durations)
    counted = set(memory.counted)
    for pod in sorted(pods, key=lambda p: (p.ready_s if p.ready_s is not None else math.inf)):
        key = (pod.revision, pod.created_s)
        if pod.ready_s is None or key in counted or pod.ready_s < pod.created_s:
            continue
        counted.add(key)
        durations.append((pod.revision, pod.ready_s - pod.created_s))
    kept: list[tuple[str, float]] = []
    for revision in dict.fromkeys(r for r, _ in durations):
        kept += [d for d in durations if d[0] == revision][-keep:]
    live = {(p.revision, p.created_s) for p in pods}
    return StartupMemory(tuple(kept), frozenset(k for k in counted if k in live))


@dataclass(frozen=True)
class StartupEstimate:
    """The look-ahead a scale-up needs: prior, learned value, and what it rests on."""

    prior_s: float
    value_s: float
    samples: int
    revision: str | None
    waiting_longest_s: float = 0.0  # the oldest pod of the revision still not Ready


def estimate_startup(memory: StartupMemory, pods: Sequence[PodStart], prior_s: float, now_s: float,
                     revision: str | None = None) -> StartupEstimate:
    """Creation to Ready for the revision (the newest seen when None): the longest of its recent
    pods, since a look-ahead must cover the slow ones; a pod still starting for longer than that
    raises it (a censored observation), so a prior that is far too short is corrected before
    any pod is Ready. Without any pod of the revision, the other revisions', else the prior."""
    if revision is None:
        revision = memory.durations[-1][0] if memory.durations else (pods[-1].revision if pods else None)
    own = [d for r, d in memory.durations if r == revision]
    base = own or [d for _, d in memory.durations]
    value = max(base) if base else float(prior_s)
    waiting = max((now_s - p.created_s for p in pods if p.ready_s is None and p.revision == revision), default=0.0)
    return StartupEstimate(prior_s=float(prior_s), value_s=max(value, waiting), samples=len(own), revision=revision,
                           waiting_longest_s=waiting)
