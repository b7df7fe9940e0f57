"""How well does the operator's online engine fit learn a true engine it was not told?

A workload drawn from a real trace is replayed on the simulator's engine
(kiban_serving.sim.engine) running a seeded true profile (kiban_serving.sim.true_engine), in
simulated time. Every 15 s a "scrape" records the engine's counters as vLLM 0.33 exports them
(vllm/v1/metrics/stats.py and loggers.py):
  - vllm:inter_token_latency_seconds: every decoded token observes the length of the step it
    rode in (a decoding request is scheduled in every step, so its gap is that step);
  - vllm:iteration_tokens_total_count: steps that produced at least one token (vLLM keeps no
    IterationStats for a step without output, e.g. a middle chunk of a lone long prompt);
  - vllm:prompt_tokens_total and vllm:time_to_first_token_seconds_count: at the first token;
  - vllm:request_prefill_time_seconds, _queue_time_seconds, _prompt_tokens: when a request ends.
A window is the counters' increase between two scrapes, which is what Prometheus's increase()
answers for scrapes on the window's edges; the fit (kiban.capacity.fitting, through
kiban.autoscale.learning as the operator runs it) sees nothing else.

The load per 5-minute segment is a Poisson rate drawn in [0.15, 1.0] x the datasheet profile's
capacity at the benchmark's SLO (TTFT p99 <= 2 s), so windows span light to near-full loads as
an autoscaled replica sees them. Requests are drawn from one half of a trace (the first half
was used to design the observation model, the second is for scoring).

`python -m kiban_dev.benchmark.engine_fit` (make bench-fit) writes the learned-vs-true table
per profile, mix and seed, and the capacity per replica at the SLO that each profile gives.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from kiban.autoscale.collector import Sample, prompt_mix_from
from kiban.autoscale.learning import LearningMemory, learn
from kiban.autoscale.policy import capacity_per_replica_rps, round_tokens_up
from kiban.capacity.batching import Slo
from kiban.capacity.engine_profile import EngineProfile
from kiban.capacity.fitting import FIT_FIELDS, EngineWindow
from kiban.capacity.profiles import get_profile_by_name
from kiban_dev.shared_paths import shared_dir
from kiban_serving.sim.engine import Engine
from kiban_serving.sim.metrics import build_1_2_5_buckets
from kiban_serving.sim.true_engine import perturbed_profile

SCRAPE_S = 15.0  # the chart's PodMonitor interval
SEGMENT_S = 300.0  # the load changes every 5 minutes
LOAD_RANGE = (0.15, 1.0)  # segment rates as a share of the datasheet capacity at the SLO
SLO = Slo(ttft_ms=2000.0, ttft_percentile=99)  # the benchmark's target
MIXES = ("conv", "code")
PROFILES = ("nvidia-a100-80gb/8B", "nvidia-l4/8B")
PROMPT_BUCKETS = build_1_2_5_buckets(1_000_000)


@dataclass
class Counters:
    """One engine's cumulative counters, vLLM 0.33's semantics (see the module docstring)."""

    itl_sum_s: float = 0.0
    itl_count: float = 0.0
    steps: float = 0.0
    prompt_tokens: float = 0.0
    first_tokens: float = 0.0
    prefill_sum_s: float = 0.0
    prefill_count: float = 0.0
    queue_sum_s: float = 0.0
    request_prompt_sum: float = 0.0
    request_output_sum: float = 0.0
    prompts: list[int] = field(default_factory=list)  # finished requests' prompt lengths (histogram)
    ttfts: list[float] = field(default_factory=list)  # time to first token, at the first token

    def copy(self) -> Counters:
        return replace(self, prompts=list(self.prompts), ttfts=list(self.ttfts))


@dataclass(frozen=True)
class Scrape:
    time_s: float
    counters: Counters
    running: int
    waiting: int = 0


def replay(profile: EngineProfile, requests: list[tuple[float, int, int]], until_s: float,
           scrape_s: float = SCRAPE_S) -> list[Scrape]:
    """Step one engine of `profile` through `requests` (arrival s, prompt, output) in simulated
    time and scrape its vLLM counters every `scrape_s` up to `until_s`. A step's tokens count
    at its end, so a scrape inside a step sees the counters from before it."""
    engine = Engine(profile)
    counters = Counters()
    scrapes: list[Scrape] = []
    next_scrape = scrape_s
    i, n = 0, len(requests)

    def scrape_until(t_s: float, inclusive: bool) -> None:
        nonlocal next_scrape
        while next_scrape < t_s or (inclusive and next_scrape == t_s):
            if next_scrape > until_s:
                return
            scrapes.append(Scrape(next_scrape, counters.copy(), engine.num_running, engine.num_waiting))
            next_scrape += scrape_s

    while next_scrape <= until_s:
        now = engine.clock_s
        if not engine.next_step_needed():
            if i >= n:
                scrape_until(until_s, inclusive=True)
                break
            now = max(now, requests[i][0])
        while i < n and requests[i][0] <= now:
            arrival, prompt, output = requests[i]
            engine.submit(str(i), prompt, output, arrival)
            i += 1
        scrape_until(now, inclusive=True)
        result = engine.step(now, record_tokens=False)
        if result.end_s == result.start_s:
            if i < n:
                engine.clock_s = max(engine.clock_s, requests[i][0])
                continue
            scrape_until(until_s, inclusive=True)
            break
        scrape_until(result.end_s, inclusive=False)
        duration = result.end_s - result.start_s
        decodes = result.num_decode_tokens
        counters.itl_sum_s += decodes * duration
        counters.itl_count += decodes
        if decodes or result.first_tokens:
            counters.steps += 1
        for _, prompt, ttft_s in result.first_tokens:
            counters.prompt_tokens += prompt
            counters.first_tokens += 1
            counters.ttfts.append(ttft_s)
        for done in result.finished:
            counters.prefill_sum_s += done.prefill_s
            counters.prefill_count += 1
            counters.queue_sum_s += done.queue_s
            counters.request_prompt_sum += done.prompt_tokens
            counters.request_output_sum += done.output_tokens
            counters.prompts.append(done.prompt_tokens)
    return scrapes


def prompt_mix_of(prompts: list[int]) -> tuple[tuple[float, float], ...] | None:
    """The prompt law as the collector reads it from vllm:request_prompt_tokens' buckets."""
    if not prompts:
        return None
    values = np.asarray(prompts)
    samples = [Sample({"le": f"{float(le)}"}, float((values <= le).sum())) for le in PROMPT_BUCKETS]
    samples.append(Sample({"le": "+Inf"}, float(len(values))))
    return prompt_mix_from(samples)


def windows_of(scrapes: list[Scrape]) -> list[tuple[float, EngineWindow, tuple[tuple[float, float], ...] | None]]:
    """(time, window, prompt mix of the requests finished in it) between consecutive scrapes."""
    out = []
    for before, after in zip(scrapes, scrapes[1:]):
        a, b = after.counters, before.counters
        window = EngineWindow(
            mean_running=0.5 * (after.running + before.running),
            itl_sum_s=a.itl_sum_s - b.itl_sum_s, itl_count=a.itl_count - b.itl_count, steps=a.steps - b.steps,
            prompt_tokens=a.prompt_tokens - b.prompt_tokens, prefill_sum_s=a.prefill_sum_s - b.prefill_sum_s,
            prefill_count=a.prefill_count - b.prefill_count, request_prompt_sum=a.request_prompt_sum - b.request_prompt_sum,
            request_prompt_count=a.prefill_count - b.prefill_count, first_tokens=a.first_tokens - b.first_tokens,
            queue_sum_s=a.queue_sum_s - b.queue_sum_s, window_s=after.time_s - before.time_s)
        out.append((after.time_s, window, prompt_mix_of(a.prompts[len(b.prompts):])))
    return out


def trace_pairs(mix: str, half: int) -> list[tuple[int, int]]:
    """(prompt, output) of one half (0: first, 1: second, by arrival) of the Azure trace `mix`."""
    path = shared_dir() / "traces" / "azure-llm-2023" / f"{mix}.csv"
    with path.open(newline="") as handle:
        reader = csv.reader(handle)
        next(reader)
        rows = [(max(1, int(r[1])), max(1, int(r[2]))) for r in reader]
    middle = len(rows) // 2
    return rows[:middle] if half == 0 else rows[middle:]


def capacity_rps(profile: EngineProfile, pairs: list[tuple[int, int]]) -> float:
    """Capacity per replica at the SLO for the mix's means and prompt law (0: unattainable)."""
    prompt = round_tokens_up(float(np.mean([p for p, _ in pairs])))
    output = round_tokens_up(float(np.mean([o for _, o in pairs])))
    return capacity_per_replica_rps(profile, prompt, output, SLO, 1.0, prompt_mix_of([p for p, _ in pairs]))


def load_reference_rps(profile: EngineProfile, pairs: list[tuple[int, int]]) -> float:
    """The rate the load is drawn around: the datasheet's capacity at the SLO, or, where the SLO
    is unattainable on it, its throughput at 75 % utilisation (what the autoscaler then sizes for)."""
    capacity = capacity_rps(profile, pairs)
    if capacity > 0:
        return capacity
    prompt = round_tokens_up(float(np.mean([p for p, _ in pairs])))
    output = round_tokens_up(float(np.mean([o for _, o in pairs])))
    return capacity_per_replica_rps(profile, prompt, output, Slo(), 0.75)


def workload(pairs: list[tuple[int, int]], capacity: float, seconds: float, seed: int) -> list[tuple[float, int, int]]:
    """Poisson arrivals, a rate drawn per segment in LOAD_RANGE x capacity, requests drawn from `pairs`."""
    rng = np.random.default_rng(seed)
    requests: list[tuple[float, int, int]] = []
    start = 0.0
    while start < seconds:
        rate = max(1e-3, capacity) * float(rng.uniform(*LOAD_RANGE))
        t = start
        while True:
            t += float(rng.exponential(1.0 / rate))
            if t >= min(start + SEGMENT_S, seconds):
                break
            prompt, output = pairs[int(rng.integers(len(pairs)))]
            requests.append((t, prompt, output))
        start += SEGMENT_S
    return requests


@dataclass(frozen=True)
class FitCase:
    """One profile x mix x seed: the true engine, the prior, what was learned, and capacities."""

    profile: str
    mix: str
    seed: int
    prior: EngineProfile
    true: EngineProfile
    learned: EngineProfile
    sd: dict[str, float]
    regime: str
    windows: int

    def error(self, name: str, which: str = "learned") -> float:
        return getattr(getattr(self, which), name) / getattr(self.true, name) - 1.0


def run_case(profile_name: str, mix: str, seed: int, minutes: float = 30.0, half: int = 1) -> FitCase:
    """Replay, learn as the operator does (kiban.autoscale.learning.learn per window), report."""
    prior = get_profile_by_name(profile_name)
    true = perturbed_profile(prior, seed)
    pairs = [(p, o) for p, o in trace_pairs(mix, half) if p + o <= true.kv_cache_tokens // 2]
    requests = workload(pairs, load_reference_rps(prior, pairs), minutes * 60.0, seed)
    memory, learned = LearningMemory(), None
    windows = windows_of(replay(true, requests, minutes * 60.0))
    for time_s, window, mix_law in windows:
        memory, learned = learn(memory, prior, [window], [], time_s, prompt_mix=mix_law)
    if learned is None:
        raise ValueError(f"{profile_name} {mix} seed {seed}: no window to learn from")
    return FitCase(profile_name, mix, seed, prior, true, learned.fit.profile, learned.fit.sd, learned.fit.regime,
                   len(windows))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kiban_dev.benchmark.engine_fit", description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="5,6,7,8,9", help="true-engine seeds (0-4 were used to design the model)")
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--half", type=int, default=1, choices=(0, 1), help="trace half the requests come from")
    parser.add_argument("--profiles", default=",".join(PROFILES))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    rows = []
    for profile in args.profiles.split(","):
        for mix in MIXES:
            for seed in (int(s) for s in args.seeds.split(",")):
                case = run_case(profile, mix, seed, args.minutes, args.half)
                pairs = [(p, o) for p, o in trace_pairs(mix, args.half) if p + o <= case.true.kv_cache_tokens // 2]
                caps = {which: capacity_rps(getattr(case, which), pairs) for which in ("true", "prior", "learned")}
                row = {"profile": profile, "mix": mix, "seed": seed, "regime": case.regime, "windows": case.windows,
                       **{f"{n}_prior_error": round(case.error(n, "prior"), 4) for n in FIT_FIELDS},
                       **{f"{n}_learned_error": round(case.error(n), 4) for n in FIT_FIELDS},
                       **{f"{n}_relative_sd": round(case.sd[n] / getattr(case.learned, n), 4) for n in FIT_FIELDS},
                       **{f"capacity_{k}_rps": round(v, 4) for k, v in caps.items()}}
                rows.append(row)
                cap = caps["true"]
                line = " ".join(f"{n.split('_')[0]} {row[f'{n}_prior_error']:+.0%}→{row[f'{n}_learned_error']:+.0%}"
                                for n in FIT_FIELDS)
                caps_text = ("unattainable" if cap <= 0 else
                             f"capacity {cap:.3g} req/s: prior {caps['prior'] / cap - 1:+.0%}, "
                             f"learned {caps['learned'] / cap - 1:+.0%}")
                print(f"{profile} {mix} seed {seed} ({case.regime}): {line}; {caps_text}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
