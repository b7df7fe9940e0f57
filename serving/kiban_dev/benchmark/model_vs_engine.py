"""Capacity model vs simulator engine: TTFT and ITL percentiles side by side, in simulated time.

The engine (kiban_serving.sim.engine) is stepped through simulated time on Poisson arrivals
with a fixed seed; nothing sleeps and no wall clock is read, so every run is reproducible.
Loads are shares (30 %, 60 %, 85 %) of the model's own capacity at the target utilisation,
max_arrival_rate(profile, ..., Slo(), 0.75) = 0.75 mu(B), so they mean the same thing for
every profile. Two request shapes: fixed 1000-token prompts with 130-token outputs, and
(prompt, output) pairs drawn from the real Azure conv trace, whose prompt histogram the model
receives as its prompt mix.

Run:  .venv/bin/python -m kiban_dev.benchmark.model_vs_engine [--requests 4000] [--markdown]
The test tests/unit/capacity/test_capacity_vs_engine.py imports this file's harness.
"""

from __future__ import annotations

import argparse
import csv
import random
import sys
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from kiban.capacity.batching import PromptMix, Slo, max_arrival_rate, predict
from kiban.capacity.profiles import get_profile_by_name
from kiban_serving.sim.engine import Engine
from kiban_dev.shared_paths import trace_path

CONV_TRACE = trace_path("conv.csv")
PROFILES = ("nvidia-l4/8B", "nvidia-h100-80gb/8B")
LOAD_SHARES = (0.30, 0.60, 0.85)
TARGET_UTILIZATION = 0.75
FIXED_SHAPE = (1000, 130)
MIX_BINS = 24  # quantile bins of the trace's prompt histogram handed to the model


@dataclass(frozen=True)
class Shape:
    """A request population: how (prompt, output) pairs are drawn and what the model is told."""

    name: str
    pairs: tuple[tuple[int, int], ...]  # drawn uniformly; one pair = fixed lengths

    @cached_property
    def mean_prompt(self) -> float:
        return sum(p for p, _ in self.pairs) / len(self.pairs)

    @cached_property
    def mean_output(self) -> float:
        return sum(o for _, o in self.pairs) / len(self.pairs)

    @cached_property
    def prompt_mix(self) -> PromptMix | None:
        """The prompt histogram the autoscaler would see: quantile bins with their means."""
        if len(self.pairs) == 1:
            return None
        prompts = np.sort(np.array([p for p, _ in self.pairs], dtype=float))
        return tuple(
            (float(chunk.mean()), len(chunk) / len(prompts)) for chunk in np.array_split(prompts, MIX_BINS)
        )


def fixed_shape(prompt: int = FIXED_SHAPE[0], output: int = FIXED_SHAPE[1]) -> Shape:
    return Shape(f"fixed {prompt}/{output}", ((prompt, output),))


def conv_shape(path: Path = CONV_TRACE) -> Shape:
    """Every (ContextTokens, GeneratedTokens) row of the conv trace, read in place."""
    with path.open(newline="") as handle:
        rows = [(max(1, int(r["ContextTokens"])), max(1, int(r["GeneratedTokens"]))) for r in csv.DictReader(handle)]
    return Shape("conv trace", tuple(rows))


@dataclass(frozen=True)
class Measured:
    """Latency percentiles in ms (ITL token-weighted, as vLLM's histogram counts it)."""

    ttft_p50: float
    ttft_p95: float
    ttft_p99: float
    itl_p95: float


def poisson_workload(shape: Shape, rate_rps: float, count: int, seed: int) -> list[tuple[float, int, int]]:
    """(arrival s, prompt, output) for `count` Poisson arrivals at rate_rps."""
    rng = random.Random(seed)
    t, out = 0.0, []
    for _ in range(count):
        t += rng.expovariate(rate_rps)
        prompt, output = shape.pairs[rng.randrange(len(shape.pairs))]
        out.append((t, prompt, output))
    return out


def run_engine(profile_name: str, workload: list[tuple[float, int, int]], warmup: int) -> Measured:
    """Step the engine through the workload; percentiles over requests after the warm-up ones.

    Steps run back to back while anything runs, so every decode token of a step is that
    step's duration after its previous token: ITL is the step length, weighted by its decode
    tokens (no per-token events needed).
    """
    engine = Engine(get_profile_by_name(profile_name))
    measured_ids = {f"r{i}" for i in range(warmup, len(workload))}
    measured_from_s = workload[warmup][0]
    ttfts: list[float] = []
    step_lengths: list[float] = []
    step_tokens: list[int] = []
    i = 0
    while i < len(workload) or engine.next_step_needed():
        while i < len(workload) and workload[i][0] <= engine.clock_s:
            engine.submit(f"r{i}", workload[i][1], workload[i][2], workload[i][0])
            i += 1
        if not engine.next_step_needed():  # idle: the next arrival starts the clock again
            engine.submit(f"r{i}", workload[i][1], workload[i][2], workload[i][0])
            i += 1
            continue
        result = engine.step(engine.clock_s, record_tokens=False)
        ttfts.extend(ttft for rid, _, ttft in result.first_tokens if rid in measured_ids)
        if result.start_s >= measured_from_s and result.num_decode_tokens:
            step_lengths.append(result.duration_s)
            step_tokens.append(result.num_decode_tokens)
    ttft_ms = np.array(ttfts) * 1e3
    return Measured(*(float(v) for v in np.percentile(ttft_ms, [50, 95, 99])),
                    weighted_percentile(np.array(step_lengths) * 1e3, np.array(step_tokens), 95))


def weighted_percentile(values: np.ndarray, weights: np.ndarray, percentile: float) -> float:
    """The smallest value with at least `percentile` % of the weight at or below it."""
    order = np.argsort(values, kind="stable")
    cumulative = np.cumsum(weights[order]) / weights.sum()
    return float(values[order][np.searchsorted(cumulative, percentile / 100.0)])


def load_points(profile_name: str, shape: Shape) -> list[float]:
    """Arrival rates at LOAD_SHARES of the model's capacity at the target utilisation."""
    capacity = max_arrival_rate(get_profile_by_name(profile_name), shape.mean_prompt, shape.mean_output,
                                Slo(), TARGET_UTILIZATION)
    return [share * capacity for share in LOAD_SHARES]


def model_at(profile_name: str, shape: Shape, rate_rps: float) -> Measured:
    pred = predict(get_profile_by_name(profile_name), rate_rps, shape.mean_prompt, shape.mean_output,
                   prompt_mix=shape.prompt_mix)
    return Measured(pred.ttft_p50_s * 1e3, pred.ttft_p95_s * 1e3, pred.ttft_p99_s * 1e3, pred.itl_p95_s * 1e3)


@dataclass(frozen=True)
class Row:
    profile: str
    shape: str
    share: float
    rate_rps: float
    engine: Measured
    model: Measured

    def errors(self) -> dict[str, float]:
        """Model minus engine, relative to the engine, per metric."""
        return {name: (getattr(self.model, name) - getattr(self.engine, name)) / getattr(self.engine, name)
                for name in ("ttft_p50", "ttft_p95", "ttft_p99", "itl_p95")}


def compare(profile_name: str, shape: Shape, requests: int, seed: int = 1) -> list[Row]:
    rows = []
    for share, rate in zip(LOAD_SHARES, load_points(profile_name, shape)):
        engine = run_engine(profile_name, poisson_workload(shape, rate, requests, seed), warmup=requests // 10)
        rows.append(Row(profile_name, shape.name, share, rate, engine, model_at(profile_name, shape, rate)))
    return rows


def table(rows: list[Row]) -> str:
    """A markdown table: engine / model (error %) per metric."""
    head = ("| profile | requests | load | λ req/s | TTFT p50 ms | TTFT p95 ms | TTFT p99 ms | ITL p95 ms |\n"
            "|---|---|---|---|---|---|---|---|")
    lines = [head]
    for row in rows:
        errors = row.errors()
        cells = [f"{getattr(row.engine, m):.0f} / {getattr(row.model, m):.0f} ({errors[m]:+.0%})"
                 if getattr(row.engine, m) >= 20 else
                 f"{getattr(row.engine, m):.1f} / {getattr(row.model, m):.1f} ({errors[m]:+.0%})"
                 for m in ("ttft_p50", "ttft_p95", "ttft_p99", "itl_p95")]
        lines.append(f"| {row.profile} | {row.shape} | {row.share:.0%} | {row.rate_rps:.3g} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=4000, help="requests per load point")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    rows = []
    for profile_name in PROFILES:
        for shape in (fixed_shape(), conv_shape()):
            rows.extend(compare(profile_name, shape, args.requests, args.seed))
    print("engine / model (model error), TTFT and token-weighted ITL in ms")
    print(table(rows))
    worst = max(abs(e) for row in rows for e in row.errors().values())
    print(f"largest error: {worst:.0%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
