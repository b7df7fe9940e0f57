"""Does drift-triggered re-fitting help the autoscaler across a change of request mix?

Replays the end of Azure's conversation trace followed by the start of its code trace (long
prompts, short outputs) through the benchmark's simulated vLLM fleet
(kiban_dev.benchmark.fleet, the same engine as kiban-sim), and runs Kiban's policy
(kiban.autoscale.policy.decide) three ways, side by side in one run:

- `window 60 s`: token means over the last 60 s (the operator's default rate window, 4 x 15 s);
- `window W, no re-fit`: token means over a long window W (KIBAN_TOKEN_WINDOW_SECONDS), steady
  but slow to follow a new mix;
- `window W + drift re-fit`: the same, plus the operator's drift path (kiban.drift.tracker):
  each drift window goes through the detector; when workload drift is declared the policy gets
  the window's token means at once, until the long window has rolled over;
- `... + forget stabilisation`: the re-fit also drops the scale-down recommendations and the
  rate trend made before it (measured, not the operator's default).

Honest limits: the policy sees the fleet's counters (requests finished per tick, as the
collector reads Prometheus), but the detector's token histograms are binned from the trace at
arrival (as `kiban drift eval` does; the fleet exports no token histograms); real histograms
count at completion, about one request latency later. Prints a Markdown table; --json writes rows.

    .venv/bin/python -m kiban_dev.benchmark.drift_refit                 # ~20 min of conv, ~30 min of code
    .venv/bin/python -m kiban_dev.benchmark.drift_refit --conv-s 600 --code-s 900   # shorter
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kiban.autoscale.policy import Observation, PolicyState, ScalingConfig, decide
from kiban.capacity.batching import Slo
from kiban.capacity.profiles import get_profile_by_name
from kiban.drift import tracker as drift
from kiban.drift.detector import DetectorState, DriftConfig, WindowObservation, observe_window
from kiban.drift.histograms import bin_samples, token_count_buckets
from kiban_dev.benchmark.fleet import FleetConfig, simulate
from kiban_dev.benchmark.observe import FleetObservation
from kiban_dev.benchmark.traces import Trace, concatenate, load_azure_trace, scale_rate
from kiban_dev.shared_paths import azure_trace_dir

TRACES = azure_trace_dir()
TOKEN_BUCKETS = token_count_buckets(32768)


@dataclass
class TokenWindowPolicy:
    """Kiban's policy with token means over `token_window_s`, optionally re-fitted on drift."""

    trace: Trace
    profile: object
    slo_ttft_ms: float
    cold_start_s: float
    token_window_s: float
    refit: bool
    forget_recommendations: bool = False
    drift_config: DriftConfig = field(default_factory=DriftConfig)
    max_replicas: int = 64
    interval_s: float = 15.0
    name: str = ""
    state: PolicyState = field(default_factory=PolicyState)
    ticks: deque = field(default_factory=deque)  # (time, finished, prompt sum, output sum)
    detector: DetectorState = field(default_factory=lambda: DetectorState(generation=0))
    last_window_end: float = 0.0
    active_refit: drift.Refit | None = None
    refits: list = field(default_factory=list)

    def __post_init__(self) -> None:
        self.config = ScalingConfig(max_replicas=self.max_replicas, startup_s=self.cold_start_s,
                                    slo=Slo(ttft_ms=self.slo_ttft_ms, ttft_percentile=99))

    def _long_means(self, obs: FleetObservation) -> tuple[float | None, float | None]:
        n = obs.finished_in_window
        self.ticks.append((obs.now_s, n, (obs.mean_prompt_tokens or 0.0) * n, (obs.mean_output_tokens or 0.0) * n))
        while self.ticks and obs.now_s - self.ticks[0][0] >= self.token_window_s:
            self.ticks.popleft()
        finished = sum(t[1] for t in self.ticks)
        if not finished:
            return None, None
        return sum(t[2] for t in self.ticks) / finished, sum(t[3] for t in self.ticks) / finished

    def _drift_window(self, now: float, before: tuple[float | None, float | None]) -> None:
        lo, hi = np.searchsorted(self.trace.arrival_s, [self.last_window_end, now], side="right")
        self.last_window_end = now
        if hi <= lo:
            return
        window = WindowObservation(now, 0, {
            "prompt_tokens": bin_samples(self.trace.prompt_tokens[lo:hi], TOKEN_BUCKETS),
            "generation_tokens": bin_samples(self.trace.output_tokens[lo:hi], TOKEN_BUCKETS),
        })
        self.detector, assessment = observe_window(self.detector, window, self.drift_config)
        new = drift.refit_for(assessment, window, before, token_window_s=self.token_window_s,
                              drift_window_s=self.drift_config.window_s, min_samples=self.drift_config.min_samples)
        if new is not None:
            self.active_refit = new
            self.state = drift.reset_policy_state(self.state, forget_recommendations=self.forget_recommendations)
            self.refits.append((now, assessment.message))
        else:
            self.active_refit = drift.follow_refit(self.active_refit, window, self.drift_config.min_samples, assessment)

    def desired_replicas(self, obs: FleetObservation) -> int:
        prompt, output = self._long_means(obs)
        observation = Observation(
            time_s=obs.now_s, metrics_available=True, arrival_rate_rps=obs.arrival_rate_rps,
            mean_prompt_tokens=prompt, mean_output_tokens=output, running=float(obs.running_total),
            waiting=float(obs.waiting_total + obs.front_queue), observed_ttft_p95_s=obs.ttft_quantile_s(0.95),
            current_replicas=obs.replicas, ready_replicas=obs.ready_replicas,
        )
        if self.refit and obs.now_s - self.last_window_end >= self.drift_config.window_s:
            used = drift.observation_with_refit(observation, self.active_refit)
            self._drift_window(obs.now_s, (used.mean_prompt_tokens, used.mean_output_tokens))
        if self.refit:
            observation = drift.observation_with_refit(observation, self.active_refit)
        decision, self.state = decide(observation, self.config, self.state, self.profile)
        return decision.replicas


def shift_trace(conv_s: float, code_s: float, rate_factor: float, seed: int) -> tuple[Trace, float, Trace, Trace]:
    """The last conv_s of conv then the first code_s of code, the rate scaled; the switch time;
    and the two parts."""
    conv = load_azure_trace(TRACES / "conv.csv")
    code = load_azure_trace(TRACES / "code.csv")
    tail = conv.window(max(0.0, conv.duration_s - conv_s), conv.duration_s + 1)
    head = code.window(0.0, code_s)
    joined = concatenate([tail, head], gap_s=1.0)
    switch = tail.duration_s + 1.0
    return scale_rate(joined, rate_factor, seed=seed), switch, tail, head


def steady_trace(conv: Trace, code: Trace, switch_s: float, end_s: float, rate_rps: float, seed: int) -> Trace:
    """Poisson arrivals at a constant rate carrying token counts drawn from the conv part, then
    from the code part: the mix changes, the load's shape does not (isolates the capacity model)."""
    rng = np.random.default_rng(seed)
    arrivals = np.cumsum(rng.exponential(1.0 / rate_rps, int(end_s * rate_rps * 1.2)))
    arrivals = arrivals[arrivals < end_s]
    before = arrivals < switch_s
    pick_conv = rng.integers(0, len(conv), before.sum())
    pick_code = rng.integers(0, len(code), (~before).sum())
    return Trace("steady conv→code", arrivals,
                 np.concatenate([conv.prompt_tokens[pick_conv], code.prompt_tokens[pick_code]]),
                 np.concatenate([conv.output_tokens[pick_conv], code.output_tokens[pick_code]]))


def summarize(name: str, result, trace: Trace, switch_s: float, slo_s: float, refits: list) -> dict:
    after = trace.arrival_s >= switch_s
    ok = result.ttft_s <= slo_s
    # GPU-hours after the switch: replica-seconds from the timeline, cut at the switch
    timeline = result.timeline + [(result.horizon_s, 0, 0)]
    after_area = sum(n * max(0.0, min(t1, result.horizon_s) - max(t0, switch_s))
                     for (t0, n, _), (t1, _, _) in zip(timeline, timeline[1:]))
    return {
        "policy": name,
        "gpu_hours": round(result.gpu_hours, 3),
        "gpu_hours_after_switch": round(after_area / 3600.0, 3),
        "ttft_slo_attainment": round(float(np.mean(ok)), 4),
        "attainment_after_switch": round(float(np.mean(ok[after])), 4),
        "p99_ttft_after_switch_s": round(float(np.nanpercentile(result.ttft_s[after], 99)), 3),
        "scale_events": result.scale_events,
        "max_replicas": result.max_replicas,
        "refit_at_s_after_switch": [round(t - switch_s) for t, _ in refits],
    }


def markdown(rows: list[dict]) -> str:
    head = ("| arrivals | policy | GPU-hours | GPU-hours after switch | TTFT SLO attainment | attainment after switch "
            "| p99 TTFT after switch (s) | scale events | re-fit at (s after switch) |")
    lines = [head, "|" + "---|" * 9]
    for r in rows:
        refit = ", ".join(str(t) for t in r["refit_at_s_after_switch"]) or "—"
        lines.append(f"| {r['arrivals']} | {r['policy']} | {r['gpu_hours']} | {r['gpu_hours_after_switch']} | "
                     f"{r['ttft_slo_attainment']:.2%} | {r['attainment_after_switch']:.2%} | "
                     f"{r['p99_ttft_after_switch_s']} | {r['scale_events']} | {refit} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="nvidia-a100-80gb/8B")
    parser.add_argument("--slo-ttft-ms", type=float, default=2000.0)
    parser.add_argument("--cold-start-s", type=float, default=120.0)
    parser.add_argument("--rate-factor", type=float, default=2.0)
    parser.add_argument("--conv-s", type=float, default=1200.0, help="seconds of conv before the switch")
    parser.add_argument("--code-s", type=float, default=1800.0, help="seconds of code after it")
    parser.add_argument("--token-window-s", type=float, default=600.0)
    parser.add_argument("--steady-rps", type=float, default=30.0, help="rate of the steady-arrival scenario")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    profile = get_profile_by_name(args.profile)
    real, switch, conv, code = shift_trace(args.conv_s, args.code_s, args.rate_factor, args.seed)
    steady = steady_trace(conv, code, switch, real.duration_s, args.steady_rps, args.seed)
    scenarios = [(f"trace ({args.rate_factor:g}x)", real), (f"Poisson {args.steady_rps:g} req/s", steady)]
    fleet = FleetConfig(profile=profile, cold_start_s=args.cold_start_s, initial_replicas=4, warmup_s=180.0,
                        max_replicas=64)
    w = args.token_window_s
    variants = [
        ("window 60 s", 60.0, False, False),
        (f"window {w:.0f} s, no re-fit", w, False, False),
        (f"window {w:.0f} s + drift re-fit", w, True, False),
        (f"window {w:.0f} s + drift re-fit + forget stabilisation", w, True, True),
    ]
    rows = []
    for arrivals, trace in scenarios:
        for name, window, refit, forget in variants:
            started = time.monotonic()
            policy = TokenWindowPolicy(trace, profile, args.slo_ttft_ms, args.cold_start_s, window, refit,
                                       forget_recommendations=forget, name=name)
            result = simulate(trace, fleet, policy)
            row = summarize(name, result, trace, switch, args.slo_ttft_ms / 1000.0, policy.refits)
            rows.append({"arrivals": arrivals, "requests": len(trace), **row})
            for t, message in policy.refits:
                print(f"# {arrivals}, {name}: re-fit {t - switch:+.0f} s after the switch: {message}", file=sys.stderr)
            print(f"# {arrivals}, {name}: simulated in {time.monotonic() - started:.0f} s", file=sys.stderr)
    print(f"{args.profile}, TTFT p99 SLO {args.slo_ttft_ms:.0f} ms, cold start {args.cold_start_s:.0f} s, "
          f"conv {args.conv_s:.0f} s then code {args.code_s:.0f} s, seed {args.seed}; "
          f"{len(real)} and {len(steady)} requests\n")
    print(markdown(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
