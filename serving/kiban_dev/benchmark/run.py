"""One benchmark run: for each trace, the oracle, the oracle's counts played with real cold
starts (clairvoyant, a reference row), a peak-sized static fleet, Kiban, and each peer at the
per-pod target a careful user would pick, all on the same simulated fleet.

Pure orchestration over `fleet.simulate` and `oracle.oracle`; no files are written here
(report.py does that), so a test can run it and inspect the rows.
"""

from __future__ import annotations

import math
import random
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np

from kiban.capacity.batching import prefill_alone_ms
from kiban.capacity.engine_profile import EngineProfile
from kiban.capacity.profiles import get_profile_by_name
from kiban_dev.benchmark.replica_gpus import operator_gpus_per_replica
from kiban_dev.shared_paths import azure_trace_dir
from kiban_dev.benchmark.fleet import FleetConfig, FleetResult, MissBudget, allowed_misses, simulate
from kiban_dev.benchmark.oracle import (
    ClairvoyantSchedule,
    OracleResult,
    attainment_over,
    fewest_replicas,
    oracle,
)
from kiban_dev.benchmark.operator_policy import KibanPolicy, bench_model
from kiban_dev.benchmark.peers import (
    AibrixAPAPolicy,
    DynamoPlannerPolicy,
    KedaWaitingPolicy,
    KnativeKPAPolicy,
    KubeAIPolicy,
    LlmdSloPolicy,
    StaticPolicy,
)
from kiban_serving.sim.true_engine import perturbed_profile, true_cold_start_s, true_factors
from kiban_dev.benchmark.traces import Trace, concatenate, load_azure_trace, scale_rate

DEFAULT_TRACE_DIR = azure_trace_dir()
QUICK_DURATION_S = 300.0  # --quick: the first 5 minutes of each trace (its numbers mean nothing)

# Each peer's knob, tuned per cell by bisection in log space between these bounds to the cheapest
# value whose seed-mean attainment reaches the bar; every knob is cheaper when larger. "slo x"
# knobs are multiples of the TTFT target.
PEER_KNOBS: dict[str, tuple[float, float, str]] = {
    "kubeai": (1.0, 64.0, "targetRequests"),  # in-flight requests per replica (default 100)
    "knative-kpa": (1.0, 64.0, "target concurrency"),  # per pod (default 70)
    "production-stack-keda": (0.25, 16.0, "waiting threshold"),  # default 5
    "aibrix-apa": (0.01, 0.6, "KV-cache usage target"),  # examples use 0.3-0.5
    "llm-d": (0.05, 2.0, "TTFT target (x SLO)"),  # the SLO law's latency target
    "dynamo": (0.05, 2.0, "TTFT target (x SLO)"),  # the capacity its profile is read at
}
PEER_CANDIDATES = PEER_KNOBS  # families, in the order the report lists them
TUNE_STEPS = 5  # bisection steps after the two ends: 2^-5 of the log range
TUNE_ONE_POINT = -1  # tune_peer's steps for quick mode: one run at the knob's geometric middle, no search
TUNE_STEPS_QUICK = TUNE_ONE_POINT  # --quick checks rows and keys, never numbers: no tuning


@dataclass(frozen=True)
class BenchConfig:
    """The fixed facts of one comparison; every policy runs under the same ones.

    With `true_engine` (the away game, default) the fleet runs a seeded engine that is not the
    datasheet (kiban_serving.sim.true_engine) and a cold start drawn from [60, 300] s unless
    `cold_start_s` fixes it; Kiban gets the datasheet profile and learns. Without it, the
    datasheet is the engine and the cold start is `cold_start_s` (120 s when unset).
    """

    profile: str = "nvidia-a100-80gb/8B"
    slo_ttft_ms: float = 2000.0
    attainment: float = 0.99
    cold_start_s: float | None = None
    warmup_s: float = 180.0
    rate_factor: float = 2.0
    seed: int = 0
    max_replicas: int = 40
    min_replicas: int = 1
    gpus_per_replica: int | None = None  # None: what the operator gives one replica (replica_gpus)
    quick: bool = False
    jobs: int = 2  # traces in parallel processes; results do not depend on it
    true_engine: bool = True
    cold_start_jitter: float = 0.1  # each replica's cold start within +-10 % of the run's (seeded)
    part: str = "full"  # which part of each trace file in time: full, first-half (scored), second-half (tuning)

    def __post_init__(self) -> None:
        profile = get_profile_by_name(self.profile)  # names the known profiles when it is wrong
        if self.gpus_per_replica is None:  # GPU-hours count the GPUs the operator would size
            object.__setattr__(self, "gpus_per_replica", operator_gpus_per_replica(profile))
        if not self.slo_ttft_ms > 0:
            raise ValueError(f"slo_ttft_ms must be > 0, got {self.slo_ttft_ms!r}")
        if not 0 < self.attainment <= 1:
            raise ValueError(f"attainment must be in (0, 1], got {self.attainment!r}")
        if not self.rate_factor > 0:
            raise ValueError(f"rate_factor must be > 0, got {self.rate_factor!r}")
        if self.jobs < 1:
            raise ValueError(f"jobs must be >= 1, got {self.jobs!r}")
        if self.cold_start_s is not None and not self.cold_start_s >= 0:
            raise ValueError(f"cold_start_s must be >= 0, got {self.cold_start_s!r}")
        if self.part not in TRACE_PARTS:
            raise ValueError(f"part must be one of {', '.join(TRACE_PARTS)}, got {self.part!r}")

    @property
    def slo_ttft_s(self) -> float:
        return self.slo_ttft_ms / 1000.0

    @property
    def prior(self) -> EngineProfile:
        """The datasheet profile the operator ships (Kiban's prior)."""
        return get_profile_by_name(self.profile)

    @property
    def engine(self) -> EngineProfile:
        """What the fleet's replicas run."""
        return perturbed_profile(self.prior, self.seed) if self.true_engine else self.prior

    @property
    def fleet_cold_start_s(self) -> float:
        if self.cold_start_s is not None:
            return self.cold_start_s
        return true_cold_start_s(self.seed) if self.true_engine else 120.0

    def fleet(self, initial_replicas: int) -> FleetConfig:
        return FleetConfig(
            profile=self.engine,
            gpus_per_replica=self.gpus_per_replica,
            cold_start_s=self.fleet_cold_start_s,
            initial_replicas=max(self.min_replicas, initial_replicas),
            min_replicas=self.min_replicas,
            max_replicas=self.max_replicas,
            warmup_s=self.warmup_s,
            cold_start_jitter=self.cold_start_jitter if self.true_engine else 0.0,
            seed=self.seed,
            scrape_phase_s=self.scrape_phase_s,
        )

    @property
    def scrape_phase_s(self) -> float:
        """Where in the 15 s scrape cycle Prometheus scrapes, against the operator's 15 s ticks (seeded)."""
        return random.Random(f"kiban-scrape-phase-{self.seed}").uniform(0.0, 15.0)

    def engine_facts(self) -> dict[str, object]:
        """True vs datasheet values of this run's engine (what the report lists)."""
        out: dict[str, object] = {"cold_start_true_s": round(self.fleet_cold_start_s, 2),
                                  "cold_start_prior_s": self.prior.startup_s}
        factors = true_factors(self.seed) if self.true_engine else {}
        for name in ("alpha_ms", "beta_ms", "gamma_ms", "delta_ms", "kv_cache_tokens"):
            out[f"{name}_prior"] = getattr(self.prior, name)
            out[f"{name}_true"] = round(getattr(self.engine, name), 6)
            out[f"{name}_factor"] = round(factors.get(name, 1.0), 4)
        return out


@dataclass(frozen=True)
class TraceSpec:
    """A named list of Azure-format files played one after another."""

    name: str
    paths: tuple[str, ...]


def standard_traces(trace_dir: Path = DEFAULT_TRACE_DIR) -> list[TraceSpec]:
    """conv, code, and conv followed by code (a real drift in the request mix)."""
    conv, code = str(trace_dir / "conv.csv"), str(trace_dir / "code.csv")
    return [TraceSpec("conv", (conv,)), TraceSpec("code", (code,)), TraceSpec("conv+code", (conv, code))]


TRACE_PARTS = ("full", "first-half", "second-half")


def trace_part(trace: Trace, part: str) -> Trace:
    """The whole trace, or the half of it in time the matrix scores (first) or tuning uses (second)."""
    if part == "full":
        return trace
    middle = trace.duration_s / 2.0
    half = trace.window(0.0, middle) if part == "first-half" else trace.window(middle, trace.duration_s + 1.0)
    return Trace(name=trace.name, arrival_s=half.arrival_s - (half.arrival_s[0] if len(half) else 0.0),
                 prompt_tokens=half.prompt_tokens, output_tokens=half.output_tokens)


def prepare_trace(spec: TraceSpec, bench: BenchConfig) -> Trace:
    """Load each file (its part in time: bench.part), join them, scale the rate, and in quick mode
    keep the first QUICK_DURATION_S."""
    files = [trace_part(load_azure_trace(p), bench.part) for p in spec.paths]
    trace = concatenate(files) if len(files) > 1 else files[0]
    trace = scale_rate(trace, bench.rate_factor, seed=bench.seed)
    if bench.quick:
        trace = trace.window(0.0, QUICK_DURATION_S)
    if len(trace) == 0:
        raise ValueError(f"trace {spec.name!r} has no requests after scaling and slicing")
    return Trace(name=spec.name, arrival_s=trace.arrival_s, prompt_tokens=trace.prompt_tokens,
                 output_tokens=trace.output_tokens)


@dataclass
class Row:
    """One policy configuration on one trace and seed: the numbers a user compares."""

    trace: str
    family: str
    policy: str
    gpu_hours: float
    ttft_slo_attainment: float  # over the attainable requests (see unattainable_share)
    p95_ttft_s: float
    p99_ttft_s: float
    p95_tpot_s: float | None
    scale_events: int
    max_replicas: int
    mean_replicas: float
    chosen: bool = True  # False for a tuning run that was not the family's pick
    complete: bool = True  # False: stopped once it could no longer reach the bar (numbers partial)
    warm_start_replicas: int | None = None  # the fleet every policy started from (same for all)
    seed: int = 0
    profile: str = ""
    rate_factor: float = 1.0
    unattainable_share: float = 0.0  # requests whose prefill alone on an idle true replica misses the target
    knob: float | None = None  # the tuned value of a peer's target (PEER_KNOBS)
    engine: dict[str, object] | None = None  # Kiban's rows: true, prior and learned engine values
    timeline: list[tuple[float, int, int]] = field(default_factory=list, repr=False)

    def public(self) -> dict[str, object]:
        """JSON-safe dict without the timeline."""
        out = asdict(self)
        out.pop("timeline")
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in out.items()}


def unattainable_mask(trace: Trace, engine: EngineProfile, slo_ttft_s: float) -> np.ndarray:
    """Per request: False when its prefill alone, on an idle replica of the true engine, takes
    longer than the TTFT target (no fleet can serve it in time), True otherwise."""
    lengths, index = np.unique(trace.prompt_tokens, return_inverse=True)
    alone_s = np.array([prefill_alone_ms(engine, float(n), 0.0) / 1000.0 for n in lengths])
    return (alone_s <= slo_ttft_s)[index]


def _percentile(values: np.ndarray, q: float) -> float:
    finite = values[~np.isnan(values)]
    return float(np.percentile(finite, q)) if len(finite) else math.nan


def summarize(result: FleetResult, family: str, bench: BenchConfig, attainable: np.ndarray | None = None,
              knob: float | None = None) -> Row:
    timeline = result.timeline
    area = 0.0
    for (t0, n, _), (t1, _, _) in zip(timeline, timeline[1:] + [(result.horizon_s, 0, 0)]):
        area += n * max(0.0, min(t1, result.horizon_s) - t0)
    return Row(
        trace=result.trace,
        family=family,
        policy=result.policy,
        gpu_hours=round(result.gpu_hours, 4),
        ttft_slo_attainment=round(attainment_over(result.ttft_s, bench.slo_ttft_s, attainable), 5),
        p95_ttft_s=round(_percentile(result.ttft_s, 95), 4),
        p99_ttft_s=round(_percentile(result.ttft_s, 99), 4),
        p95_tpot_s=round(_percentile(result.tpot_s, 95), 5),
        scale_events=result.scale_events,
        max_replicas=result.max_replicas,
        mean_replicas=round(area / result.horizon_s, 3),
        complete=not result.aborted,
        seed=bench.seed, profile=bench.profile, rate_factor=bench.rate_factor,
        unattainable_share=round(1.0 - float(np.mean(attainable)), 5) if attainable is not None and len(attainable) else 0.0,
        knob=knob,
        timeline=list(timeline),
    )


def oracle_row(trace: Trace, result: OracleResult, bench: BenchConfig, attainable: np.ndarray) -> Row:
    counts = result.counts
    timeline = [(i * result.interval_s, c, c) for i, c in enumerate(counts)]
    changes = sum(1 for a, b in zip(counts, counts[1:]) if a != b)
    return Row(
        trace=trace.name, family="oracle", policy="oracle (clairvoyant, instant start)",
        gpu_hours=round(result.gpu_hours, 4),
        ttft_slo_attainment=round(attainment_over(result.ttft_s, bench.slo_ttft_s, attainable), 5),
        p95_ttft_s=round(_percentile(result.ttft_s, 95), 4),
        p99_ttft_s=round(_percentile(result.ttft_s, 99), 4),
        p95_tpot_s=None, scale_events=changes, max_replicas=max(counts),
        mean_replicas=round(float(np.mean(counts)), 3), timeline=timeline,
        seed=bench.seed, profile=bench.profile, rate_factor=bench.rate_factor,
        unattainable_share=round(1.0 - float(np.mean(attainable)), 5),
    )


def clairvoyant_row(trace: Trace, best: OracleResult, bench: BenchConfig, attainable: np.ndarray) -> Row:
    """The oracle's counts, each replica ordered one cold start ahead, on a real fleet.

    It needs no history, so it acts from t=0 (no warm-up) and starts with what it asks for
    then. What it costs over the oracle is the price of cold starts alone, with a perfect
    forecast (of the mean cold start; each replica's own varies by the jitter); its attainment
    shows what carrying queues across intervals does to the oracle's counts.
    """
    schedule = ClairvoyantSchedule(counts=best.counts, interval_s=best.interval_s, lead_s=bench.fleet_cold_start_s)
    config = replace(bench.fleet(schedule.at(0.0)), warmup_s=0.0)
    return summarize(simulate(trace, config, schedule), "clairvoyant", bench, attainable)


def peer_policy(family: str, knob: float, bench: BenchConfig):
    """A fresh peer policy of this family at this knob value."""
    if family == "kubeai":
        return KubeAIPolicy(target_requests=knob)
    if family == "knative-kpa":
        return KnativeKPAPolicy(target_concurrency=knob)
    if family == "production-stack-keda":
        return KedaWaitingPolicy(threshold=knob)
    if family == "aibrix-apa":
        return AibrixAPAPolicy(target_kv_usage=knob)
    if family == "llm-d":
        return LlmdSloPolicy(ttft_target_s=knob * bench.slo_ttft_s)
    if family == "dynamo":  # its profiling sweep measures the real engine
        return DynamoPlannerPolicy(engine=bench.engine, ttft_target_s=knob * bench.slo_ttft_s)
    raise ValueError(f"unknown peer family {family!r}; known: {', '.join(PEER_KNOBS)}")


def _meets(row: Row, bench: BenchConfig) -> bool:
    return row.complete and row.ttft_slo_attainment >= bench.attainment


def _budget(trace: Trace, bench: BenchConfig, attainable: np.ndarray, share: float | None = None) -> MissBudget:
    share = (1.0 - bench.attainment) if share is None else share
    return MissBudget(bench.slo_ttft_s, allowed_misses(int(np.sum(attainable)), 1.0 - share), attainable)


@dataclass(frozen=True)
class SeedRun:
    """One seed of a cell: its bench settings, trace and attainable mask."""

    bench: BenchConfig
    trace: Trace
    attainable: np.ndarray


def seed_run(spec: TraceSpec, bench: BenchConfig, duration_s: float | None = None) -> SeedRun:
    trace = prepare_trace(spec, bench)
    if duration_s is not None:
        trace = trace.window(0.0, duration_s)
    return SeedRun(bench, trace, unattainable_mask(trace, bench.engine, bench.slo_ttft_s))


def find_static_peak(run: SeedRun, hint: int, tick: Callable[[str], None]) -> list[Row]:
    """The fewest always-on replicas meeting the SLO for the whole trace (search from hint)."""
    trace, bench = run.trace, run.bench
    tried: dict[int, Row] = {}

    def meets(n: int) -> tuple[bool, Row]:
        if n not in tried:
            config = replace(bench.fleet(n), min_replicas=n, max_replicas=max(n, bench.max_replicas))
            result = simulate(trace, config, StaticPolicy(n), miss_budget=_budget(trace, bench, run.attainable))
            tried[n] = summarize(result, "static-peak", bench, run.attainable)
            tick(tried[n].policy)
        return _meets(tried[n], bench), tried[n]

    n, _ = fewest_replicas(meets, 1, bench.max_replicas, max(1, hint))
    for count, row in tried.items():
        row.chosen = count == n
    return sorted(tried.values(), key=lambda r: r.gpu_hours)


def warm_start_replicas(run: SeedRun, hint: int) -> int:
    """The fewest fixed replicas that serve the trace within the SLO until the first decision
    a policy may take (at the end of the warm-up) can have brought a replica up."""
    bench = run.bench
    end = max(bench.warmup_s + bench.fleet_cold_start_s, 1.0)
    head = run.trace.window(0.0, end)
    if len(head) == 0:
        return max(1, bench.min_replicas)
    mask = run.attainable[:len(head)]

    def meets(n: int) -> tuple[bool, None]:
        config = replace(bench.fleet(n), min_replicas=n, max_replicas=max(n, bench.max_replicas))
        result = simulate(head, config, StaticPolicy(n), miss_budget=_budget(head, bench, mask))
        return not result.aborted, None

    n, _ = fewest_replicas(meets, max(1, bench.min_replicas), bench.max_replicas, hint)
    return n


SETTINGS_OVERRIDES = ("token_window_s",)  # the collector window (AutoscaleSettings) a variant may set


def kiban_row(run: SeedRun, initial: int, overrides: dict[str, object] | None = None) -> Row:
    """Kiban with the operator's defaults, the datasheet as prior, learning as it goes.
    `overrides`: ScalingConfig fields, or the collector windows of SETTINGS_OVERRIDES, replaced
    (the held-out search only, heldout.py; the matrix never sets it)."""
    bench = run.bench
    model = bench_model(bench.profile, bench.slo_ttft_ms, bench.min_replicas, bench.max_replicas)
    policy = KibanPolicy(model=model, gpus_per_replica=bench.gpus_per_replica,
                         cold_start_s=None if bench.true_engine else bench.fleet_cold_start_s)
    if overrides:
        collector = {k: v for k, v in overrides.items() if k in SETTINGS_OVERRIDES}
        policy.settings = replace(policy.settings, **collector)  # read when the first pass makes the collector
        policy.configs = tuple(replace(c, **{k: v for k, v in overrides.items() if k not in collector})
                               for c in policy.configs)
    row = summarize(simulate(run.trace, bench.fleet(initial), policy), "kiban", bench, run.attainable)
    facts = bench.engine_facts()
    if policy.learned is not None:
        learned = policy.learned
        for name in ("alpha_ms", "beta_ms", "gamma_ms", "delta_ms"):
            facts[f"{name}_learned"] = round(getattr(learned.fit.profile, name), 6)
            facts[f"{name}_learned_sd"] = round(learned.fit.sd[name], 6)
        facts["kv_cache_tokens_learned"] = learned.profile.kv_cache_tokens  # not learned: the prior
        facts["cold_start_learned_s"] = round(learned.startup.value_s, 2)
        facts["cold_start_samples"] = learned.startup.samples
    row.engine = facts
    return row


def tune_peer(runs: list[SeedRun], family: str, initial: dict[int, int], tick: Callable[[str], None],
              steps: int = TUNE_STEPS) -> list[Row]:
    """Bisect the family's knob (log scale, PEER_KNOBS bounds, larger is cheaper) for the
    cheapest value whose mean attainment over the seeds reaches the bar. A candidate stops as
    soon as its seeds' misses exceed what the mean allows (S x 1 % of the requests in all).
    When not even the safest end reaches the bar, that end is run to completion and reported.
    steps=TUNE_ONE_POINT (quick mode) runs the knob's geometric middle once on every seed and
    picks it: rows to check, no search."""
    low, high, _ = PEER_KNOBS[family]
    bench0 = runs[0].bench
    tried: dict[float, list[Row]] = {}
    if steps == TUNE_ONE_POINT:
        middle = math.sqrt(low * high)
        rows = []
        for run in runs:
            result = simulate(run.trace, run.bench.fleet(initial[run.bench.seed]), peer_policy(family, middle, run.bench))
            rows.append(summarize(result, family, run.bench, run.attainable, knob=middle))
            tick(rows[-1].policy)
        return rows

    def attempt(knob: float, budgeted: bool = True) -> bool:
        if knob in tried and budgeted:
            return all(_meets_mean(tried[knob], bench0))
        rows, spent = [], 0.0
        allowance = len(runs) * (1.0 - bench0.attainment)
        for run in runs:
            budget = _budget(run.trace, run.bench, run.attainable, share=max(0.0, allowance - spent)) if budgeted else None
            result = simulate(run.trace, run.bench.fleet(initial[run.bench.seed]),
                              peer_policy(family, knob, run.bench), miss_budget=budget)
            row = summarize(result, family, run.bench, run.attainable, knob=knob)
            row.chosen = False
            rows.append(row)
            tick(row.policy)
            if not row.complete:
                break
            spent += 1.0 - row.ttft_slo_attainment
        tried[knob] = rows
        return _meets_mean(rows, bench0)[0]

    if attempt(high):
        best = high
    elif not attempt(low):
        attempt(low, budgeted=False)  # the safest end, run to the end on every seed and reported
        for row in tried[low]:
            row.chosen = True
        return [r for rows in tried.values() for r in rows]
    else:
        best, lo_fail = low, high
        for _ in range(steps):
            mid = math.exp(0.5 * (math.log(best) + math.log(lo_fail)))
            if attempt(mid):
                best = mid
            else:
                lo_fail = mid
    for row in tried[best]:
        row.chosen = True
    return [r for rows in tried.values() for r in rows]


def _meets_mean(rows: list[Row], bench: BenchConfig) -> tuple[bool]:
    """All seeds ran to the end and their mean attainment reaches the bar."""
    if not rows or not all(r.complete for r in rows):
        return (False,)
    return (float(np.mean([r.ttft_slo_attainment for r in rows])) >= bench.attainment,)


def run_cell(spec: TraceSpec, bench: BenchConfig, seeds: tuple[int, ...],
             tick: Callable[[str], None] = lambda _: None, peers: tuple[str, ...] | None = None,
             tune_steps: int = TUNE_STEPS, duration_s: float | None = None) -> list[Row]:
    """Every policy on one (trace, profile, rate) over the seeds. Per seed: the oracle, the
    clairvoyant, the static fleet sized in hindsight (references) and Kiban, all from the same
    warm fleet; each peer tuned over all seeds at once."""
    runs = [seed_run(spec, replace(bench, seed=seed), duration_s) for seed in seeds]
    rows: list[Row] = []
    initial: dict[int, int] = {}
    for run in runs:
        fleet = run.bench.fleet(1)
        best = oracle(run.trace, fleet, run.bench.slo_ttft_s, run.bench.attainment, attainable=run.attainable)
        tick("oracle")
        rows += [oracle_row(run.trace, best, run.bench, run.attainable),
                 clairvoyant_row(run.trace, best, run.bench, run.attainable)]
        tick("clairvoyant")
        initial[run.bench.seed] = warm_start_replicas(run, hint=best.counts[0])
        rows += find_static_peak(run, max(best.counts), tick)
        rows.append(kiban_row(run, initial[run.bench.seed]))
        tick("kiban")
    for family in (peers if peers is not None else tuple(PEER_KNOBS)):
        rows += tune_peer(runs, family, initial, tick, steps=tune_steps)
    for row in rows:
        if row.family not in ("oracle", "clairvoyant", "static-peak"):  # those size their own start
            row.warm_start_replicas = initial[row.seed]
    return rows


def run_trace(trace_spec: TraceSpec, bench: BenchConfig, tick: Callable[[str], None] = lambda _: None) -> list[Row]:
    """One trace at the bench's seed (the single-cell form of run_cell)."""
    return run_cell(trace_spec, bench, (bench.seed,), tick, tune_steps=TUNE_STEPS_QUICK if bench.quick else TUNE_STEPS)


def _run_spec(args: tuple[TraceSpec, BenchConfig]) -> list[Row]:
    spec, bench = args
    return run_trace(spec, bench)


def run_benchmark(specs: list[TraceSpec], bench: BenchConfig, progress: Callable[[str], None] = lambda _: None) -> list[Row]:
    """All traces; with jobs > 1 the traces run in parallel processes (same results)."""
    if bench.jobs == 1 or len(specs) == 1:
        rows: list[Row] = []
        for spec in specs:
            rows += run_trace(spec, bench, progress)
        return rows
    # the longest trace (most files) first, so it is not left alone at the end
    order = sorted(range(len(specs)), key=lambda i: -len(specs[i].paths))
    by_index: dict[int, list[Row]] = {}
    with ProcessPoolExecutor(max_workers=min(bench.jobs, len(specs))) as pool:
        futures = {i: pool.submit(_run_spec, (specs[i], bench)) for i in order}
        for i in order:
            by_index[i] = futures[i].result()
            progress(specs[i].name)
    return [row for i in range(len(specs)) for row in by_index[i]]
