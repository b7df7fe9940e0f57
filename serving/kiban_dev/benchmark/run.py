"""One benchmark run: for each trace, the oracle, the oracle's counts played with real cold
starts (clairvoyant, a reference row), a peak-sized static fleet, Kiban, and each peer at the
per-pod target a careful user would pick, all on the same simulated fleet.

Pure orchestration over `fleet.simulate` and `oracle.oracle`; no files are written here
(report.py does that), so a test can run it and inspect the rows.
"""

from __future__ import annotations

import math
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np

from kiban.capacity.profiles import get_profile_by_name
from kiban_dev.benchmark.replica_gpus import operator_gpus_per_replica
from kiban_dev.shared_paths import azure_trace_dir
from kiban_dev.benchmark.fleet import FleetConfig, FleetResult, MissBudget, allowed_misses, simulate
from kiban_dev.benchmark.oracle import ClairvoyantSchedule, OracleResult, fewest_replicas, oracle
from kiban_dev.benchmark.peers import (
    AibrixAPAPolicy,
    KedaWaitingPolicy,
    KibanPolicy,
    KnativeKPAPolicy,
    KubeAIPolicy,
    StaticPolicy,
)
from kiban_dev.benchmark.traces import Trace, concatenate, load_azure_trace, scale_rate

DEFAULT_TRACE_DIR = azure_trace_dir()
QUICK_DURATION_S = 600.0

# Per-pod targets a user tunes, tried from the cheapest (largest target) down; the first that
# reaches the attainment bar is kept, as a user tuning by hand would stop there.
PEER_CANDIDATES: dict[str, tuple[float, ...]] = {
    "kubeai": (16.0, 8.0, 4.0),  # in-flight requests per replica (KubeAI's default, 100, is for one-at-a-time servers)
    "knative-kpa": (16.0, 8.0, 4.0),  # concurrency per pod (Knative's default 70 = 100 x 0.7)
    "production-stack-keda": (5.0, 1.0),  # waiting requests (production-stack's default, 5, first)
    "aibrix-apa": (0.1, 0.05, 0.03),  # KV-cache usage per pod (AIBrix's examples use 0.3-0.5)
}


@dataclass(frozen=True)
class BenchConfig:
    """The fixed facts of one comparison; every policy runs under the same ones."""

    profile: str = "nvidia-a100-80gb/8B"
    slo_ttft_ms: float = 2000.0
    attainment: float = 0.99
    cold_start_s: float = 120.0
    warmup_s: float = 180.0
    rate_factor: float = 2.0
    seed: int = 0
    max_replicas: int = 40
    min_replicas: int = 1
    gpus_per_replica: int | None = None  # None: what the operator gives one replica (replica_gpus)
    quick: bool = False
    jobs: int = 2  # traces in parallel processes; results do not depend on it

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

    @property
    def slo_ttft_s(self) -> float:
        return self.slo_ttft_ms / 1000.0

    def fleet(self, initial_replicas: int) -> FleetConfig:
        return FleetConfig(
            profile=get_profile_by_name(self.profile),
            gpus_per_replica=self.gpus_per_replica,
            cold_start_s=self.cold_start_s,
            initial_replicas=max(self.min_replicas, initial_replicas),
            min_replicas=self.min_replicas,
            max_replicas=self.max_replicas,
            warmup_s=self.warmup_s,
        )


@dataclass(frozen=True)
class TraceSpec:
    """A named list of Azure-format files played one after another."""

    name: str
    paths: tuple[str, ...]


def standard_traces(trace_dir: Path = DEFAULT_TRACE_DIR) -> list[TraceSpec]:
    """conv, code, and conv followed by code (a real drift in the request mix)."""
    conv, code = str(trace_dir / "conv.csv"), str(trace_dir / "code.csv")
    return [TraceSpec("conv", (conv,)), TraceSpec("code", (code,)), TraceSpec("conv+code", (conv, code))]


def prepare_trace(spec: TraceSpec, bench: BenchConfig) -> Trace:
    """Load, join, scale the rate, and in quick mode keep the first 10 minutes."""
    trace = concatenate([load_azure_trace(p) for p in spec.paths]) if len(spec.paths) > 1 else load_azure_trace(spec.paths[0])
    trace = scale_rate(trace, bench.rate_factor, seed=bench.seed)
    if bench.quick:
        trace = trace.window(0.0, QUICK_DURATION_S)
    if len(trace) == 0:
        raise ValueError(f"trace {spec.name!r} has no requests after scaling and slicing")
    return Trace(name=spec.name, arrival_s=trace.arrival_s, prompt_tokens=trace.prompt_tokens,
                 output_tokens=trace.output_tokens)


@dataclass
class Row:
    """One policy configuration on one trace: the numbers a user compares."""

    trace: str
    family: str
    policy: str
    gpu_hours: float
    ttft_slo_attainment: float
    p95_ttft_s: float
    p99_ttft_s: float
    p95_tpot_s: float | None
    scale_events: int
    max_replicas: int
    mean_replicas: float
    chosen: bool = True  # False for a tuning run that was not the family's pick
    complete: bool = True  # False: stopped once it could no longer reach the bar (numbers partial)
    warm_start_replicas: int | None = None  # the fleet every policy started from (same for all)
    timeline: list[tuple[float, int, int]] = field(default_factory=list, repr=False)

    def public(self) -> dict[str, object]:
        """JSON-safe dict without the timeline."""
        out = asdict(self)
        out.pop("timeline")
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in out.items()}


def _percentile(values: np.ndarray, q: float) -> float:
    finite = values[~np.isnan(values)]
    return float(np.percentile(finite, q)) if len(finite) else math.nan


def summarize(result: FleetResult, family: str, slo_ttft_s: float) -> Row:
    timeline = result.timeline
    area = 0.0
    for (t0, n, _), (t1, _, _) in zip(timeline, timeline[1:] + [(result.horizon_s, 0, 0)]):
        area += n * max(0.0, min(t1, result.horizon_s) - t0)
    return Row(
        trace=result.trace,
        family=family,
        policy=result.policy,
        gpu_hours=round(result.gpu_hours, 4),
        ttft_slo_attainment=round(float(np.mean(result.ttft_s <= slo_ttft_s)), 5),
        p95_ttft_s=round(_percentile(result.ttft_s, 95), 4),
        p99_ttft_s=round(_percentile(result.ttft_s, 99), 4),
        p95_tpot_s=round(_percentile(result.tpot_s, 95), 5),
        scale_events=result.scale_events,
        max_replicas=result.max_replicas,
        mean_replicas=round(area / result.horizon_s, 3),
        complete=not result.aborted,
        timeline=list(timeline),
    )


def oracle_row(trace: Trace, result: OracleResult, slo_ttft_s: float, gpus_per_replica: int) -> Row:
    counts = result.counts
    timeline = [(i * result.interval_s, c, c) for i, c in enumerate(counts)]
    changes = sum(1 for a, b in zip(counts, counts[1:]) if a != b)
    return Row(
        trace=trace.name, family="oracle", policy="oracle (clairvoyant, instant start)",
        gpu_hours=round(result.gpu_hours, 4),
        ttft_slo_attainment=round(float(np.mean(result.ttft_s <= slo_ttft_s)), 5),
        p95_ttft_s=round(_percentile(result.ttft_s, 95), 4),
        p99_ttft_s=round(_percentile(result.ttft_s, 99), 4),
        p95_tpot_s=None, scale_events=changes, max_replicas=max(counts),
        mean_replicas=round(float(np.mean(counts)), 3), timeline=timeline,
    )


def clairvoyant_row(trace: Trace, best: OracleResult, bench: BenchConfig) -> Row:
    """The oracle's counts, each replica ordered one cold start ahead, on a real fleet.

    It needs no history, so it acts from t=0 (no warm-up) and starts with what it asks for
    then. What it costs over the oracle is the price of cold starts alone, with a perfect
    forecast; its attainment shows what carrying queues across intervals does to the oracle's
    counts (the oracle starts every interval empty).
    """
    schedule = ClairvoyantSchedule(counts=best.counts, interval_s=best.interval_s, lead_s=bench.cold_start_s)
    config = replace(bench.fleet(schedule.at(0.0)), warmup_s=0.0)
    return summarize(simulate(trace, config, schedule), "clairvoyant", bench.slo_ttft_s)


def peer_policy(family: str, target: float):
    """A fresh peer policy of this family at this per-pod target."""
    if family == "kubeai":
        return KubeAIPolicy(target_requests=target)
    if family == "knative-kpa":
        return KnativeKPAPolicy(target_concurrency=target)
    if family == "production-stack-keda":
        return KedaWaitingPolicy(threshold=target)
    if family == "aibrix-apa":
        return AibrixAPAPolicy(target_kv_usage=target)
    raise ValueError(f"unknown peer family {family!r}; known: {', '.join(PEER_CANDIDATES)}")


def _meets(row: Row, bench: BenchConfig) -> bool:
    return row.complete and row.ttft_slo_attainment >= bench.attainment


def _budget(trace: Trace, bench: BenchConfig) -> MissBudget:
    return MissBudget(bench.slo_ttft_s, allowed_misses(len(trace), bench.attainment))


def find_static_peak(trace: Trace, bench: BenchConfig, hint: int, tick: Callable[[str], None]) -> list[Row]:
    """The fewest always-on replicas meeting the SLO for the whole trace (search from hint)."""
    tried: dict[int, Row] = {}

    def meets(n: int) -> tuple[bool, Row]:
        if n not in tried:
            config = replace(bench.fleet(n), min_replicas=n, max_replicas=max(n, bench.max_replicas))
            result = simulate(trace, config, StaticPolicy(n), miss_budget=_budget(trace, bench))
            tried[n] = summarize(result, "static-peak", bench.slo_ttft_s)
            tick(tried[n].policy)
        return _meets(tried[n], bench), tried[n]

    n, _ = fewest_replicas(meets, 1, bench.max_replicas, max(1, hint))
    for count, row in tried.items():
        row.chosen = count == n
    return sorted(tried.values(), key=lambda r: r.gpu_hours)


def warm_start_replicas(trace: Trace, bench: BenchConfig, hint: int) -> int:
    """The fewest fixed replicas that serve the trace within the SLO until the first decision
    a policy may take (at the end of the warm-up) can have brought a replica up."""
    head = trace.window(0.0, max(bench.warmup_s + bench.cold_start_s, 1.0))
    if len(head) == 0:
        return max(1, bench.min_replicas)

    def meets(n: int) -> tuple[bool, None]:
        config = replace(bench.fleet(n), min_replicas=n, max_replicas=max(n, bench.max_replicas))
        result = simulate(head, config, StaticPolicy(n), miss_budget=_budget(head, bench))
        return not result.aborted, None

    n, _ = fewest_replicas(meets, max(1, bench.min_replicas), bench.max_replicas, hint)
    return n


def tune_peer(trace: Trace, bench: BenchConfig, family: str, initial: int, tick: Callable[[str], None]) -> list[Row]:
    """Try the family's targets from cheapest to safest and keep the first that reaches the
    bar, as a user tuning by hand would stop there. Runs that can no longer reach it stop
    early; when none reaches it, the safest target is run to the end and reported."""
    rows = []
    for target in PEER_CANDIDATES[family]:
        result = simulate(trace, bench.fleet(initial), peer_policy(family, target), miss_budget=_budget(trace, bench))
        row = summarize(result, family, bench.slo_ttft_s)
        row.chosen = False
        rows.append(row)
        tick(row.policy)
        if _meets(row, bench):
            row.chosen = True
            return rows
    safest = PEER_CANDIDATES[family][-1]
    full = summarize(simulate(trace, bench.fleet(initial), peer_policy(family, safest)), family, bench.slo_ttft_s)
    tick(full.policy)
    rows[-1] = full
    return rows


def run_trace(trace: Trace, bench: BenchConfig, tick: Callable[[str], None] = lambda _: None) -> list[Row]:
    """Every policy on one trace, all starting from the same warm fleet (the fewest fixed
    replicas that carry the warm-up stretch within the SLO), held until decisions apply."""
    fleet = bench.fleet(1)
    best = oracle(trace, fleet, bench.slo_ttft_s, bench.attainment)
    tick("oracle")
    rows = [oracle_row(trace, best, bench.slo_ttft_s, bench.gpus_per_replica), clairvoyant_row(trace, best, bench)]
    tick("clairvoyant")
    initial = warm_start_replicas(trace, bench, hint=best.counts[0])
    rows += find_static_peak(trace, bench, max(best.counts), tick)
    kiban = KibanPolicy(
        profile=fleet.profile, slo_ttft_ms=bench.slo_ttft_ms, cold_start_s=bench.cold_start_s,
        min_replicas=bench.min_replicas, max_replicas=bench.max_replicas,
        gpus_per_replica=bench.gpus_per_replica,
    )
    rows.append(summarize(simulate(trace, bench.fleet(initial), kiban), "kiban", bench.slo_ttft_s))
    tick("kiban")
    for family in PEER_CANDIDATES:
        rows += tune_peer(trace, bench, family, initial, tick)
    for row in rows:
        if row.family not in ("oracle", "clairvoyant", "static-peak"):  # those size their own start
            row.warm_start_replicas = initial
    return rows


def _run_spec(args: tuple[TraceSpec, BenchConfig]) -> list[Row]:
    spec, bench = args
    return run_trace(prepare_trace(spec, bench), bench)


def run_benchmark(specs: list[TraceSpec], bench: BenchConfig, progress: Callable[[str], None] = lambda _: None) -> list[Row]:
    """All traces; with jobs > 1 the traces run in parallel processes (same results)."""
    if bench.jobs == 1 or len(specs) == 1:
        rows: list[Row] = []
        for spec in specs:
            rows += run_trace(prepare_trace(spec, bench), bench, progress)
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
