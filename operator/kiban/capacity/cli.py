"""`kiban capacity plan|mmc|vllm`: the capacity planner on the command line.

The work is done by the pure functions `plan_founding`, `mmc_report` and `vllm_plan`; this
module only parses arguments and prints (a table, or JSON with --json).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, dataclass

from kiban.capacity import erlang
from kiban.capacity.batching import Slo, max_arrival_rate, predict, replicas_needed
from kiban.capacity.engine_profile import EngineProfile
from kiban.capacity.founding import plan_founding, require_positive, users_for_capacity


def mmc_report(arrival_rate: float, service_rate: float, servers: int) -> dict[str, float]:
    """The M/M/c numbers the planner prints."""
    return {
        "arrival_rate": arrival_rate,
        "service_rate": service_rate,
        "servers": servers,
        "utilization": erlang.utilization(arrival_rate, service_rate, servers),
        "wait_probability": erlang.wait_probability(arrival_rate, service_rate, servers),
        "mean_wait": erlang.mean_wait(arrival_rate, service_rate, servers),
        "p95_wait": erlang.wait_percentile(arrival_rate, service_rate, servers, 95),
        "p99_wait": erlang.wait_percentile(arrival_rate, service_rate, servers, 99),
    }


@dataclass(frozen=True)
class VllmPlan:
    """A fleet sized for a vLLM workload, and what it costs and supports."""

    profile: str
    capacity_per_replica_rps: float
    replicas: int
    gpus: int
    gpu_hours_per_day: float
    per_replica_rate_rps: float
    predicted_ttft_p95_ms: float | None
    predicted_itl_p95_ms: float | None
    predicted_utilization: float
    users_per_day: int  # founding formula with the fleet's lambda_max
    requests_per_day_capacity: float


def vllm_plan(
    profile: EngineProfile,
    slo: Slo,
    prompt_tokens: float,
    output_tokens: float,
    arrival_rate_rps: float,
    peak_factor: float = 1.0,
    target_utilization: float = 0.75,
    gpus_per_replica: int = 1,
    hours_per_day: float = 24.0,
    access_probability: float = 1.0,
    jobs_per_user: float = 1.0,
) -> VllmPlan:
    """Size a fleet: replicas = ceil(lambda P_c / lambda_max); users = founding N at lambda_max."""
    require_positive(arrival_rate_rps, "arrival_rate")
    if gpus_per_replica < 1:
        raise ValueError(f"gpus_per_replica must be >= 1, got {gpus_per_replica!r}")
    capacity = max_arrival_rate(profile, prompt_tokens, output_tokens, slo, target_utilization)
    if capacity <= 0:
        raise ValueError(f"{slo.describe()} is unattainable on {profile.name}: a lone request misses it")
    replicas = replicas_needed(arrival_rate_rps, peak_factor, capacity, min_replicas=1)
    per_replica = arrival_rate_rps * peak_factor / replicas
    prediction = predict(profile, per_replica, prompt_tokens, output_tokens)
    fleet_per_hour = replicas * capacity * 3600.0  # already at the target utilisation
    users = users_for_capacity(fleet_per_hour, hours_per_day, access_probability, jobs_per_user, peak_factor)

    def ms(seconds: float) -> float | None:
        return round(seconds * 1000.0, 3) if math.isfinite(seconds) else None

    return VllmPlan(
        profile=profile.name,
        capacity_per_replica_rps=capacity,
        replicas=replicas,
        gpus=replicas * gpus_per_replica,
        gpu_hours_per_day=replicas * gpus_per_replica * 24.0,
        per_replica_rate_rps=per_replica,
        predicted_ttft_p95_ms=ms(prediction.ttft_p95_s),
        predicted_itl_p95_ms=ms(prediction.itl_p95_s),
        predicted_utilization=prediction.utilization,
        users_per_day=math.floor(users + 1e-9),
        requests_per_day_capacity=replicas * capacity * 3600.0 * hours_per_day,
    )


def _print(data: dict[str, object], as_json: bool) -> None:
    if as_json:
        print(json.dumps(data, indent=2))
        return
    width = max(len(k) for k in data)
    for key, value in data.items():
        shown = f"{value:.4g}" if isinstance(value, float) else str(value)
        print(f"{key.replace('_', ' '):<{width}}  {shown}")


def _run_plan(args: argparse.Namespace) -> int:
    plan = plan_founding(args.processing_minutes, args.utilization, args.hours,
                         args.access_probability, args.jobs_per_user, args.peak_factor)
    _print(asdict(plan), args.json)
    return 0


def _run_mmc(args: argparse.Namespace) -> int:
    _print(mmc_report(args.arrival_rate, args.service_rate, args.servers), args.json)
    return 0


def _run_vllm(args: argparse.Namespace) -> int:
    from kiban.capacity.profiles import get_profile

    profile = get_profile(args.gpu, args.params_b)
    slo = Slo(ttft_ms=args.ttft_p95_ms, ttft_percentile=95, itl_ms=args.itl_p95_ms, itl_percentile=95)
    plan = vllm_plan(profile, slo, args.prompt_tokens, args.output_tokens, args.arrival_rate,
                     args.peak_factor, args.utilization, args.gpus_per_replica, args.hours,
                     args.access_probability, args.jobs_per_user)
    _print(asdict(plan), args.json)
    return 0


def _guarded(run):
    """Print a bad input as one line naming the field, exit 2, instead of a traceback."""

    def wrapper(args: argparse.Namespace) -> int:
        try:
            return run(args)
        except (ValueError, KeyError) as exc:
            print(f"kiban capacity: error: {exc.args[0] if exc.args else exc}", file=sys.stderr)
            return 2

    return wrapper


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `capacity plan|mmc|vllm` to the kiban CLI."""
    capacity = subparsers.add_parser("capacity", help="capacity planner (founding M/M/1, M/M/c, vLLM fleets)")
    commands = capacity.add_subparsers(dest="capacity_command", required=True)

    plan = commands.add_parser("plan", help="users one GPU server supports (founding M/M/1 model)")
    plan.add_argument("--processing-minutes", type=float, required=True, help="t_p, minutes per job")
    plan.add_argument("--utilization", type=float, default=0.7, help="target utilisation rho (0-1)")
    plan.add_argument("--peak-factor", type=float, default=1.0, help="P_c, busiest hour / average")
    plan.add_argument("--hours", type=float, default=24.0, help="H, operating hours per day")
    plan.add_argument("--access-probability", type=float, required=True, help="P_a, share of users active a day")
    plan.add_argument("--jobs-per-user", type=float, required=True, help="F, jobs per active user per day")
    plan.add_argument("--json", action="store_true")
    plan.set_defaults(func=_guarded(_run_plan))

    mmc = commands.add_parser("mmc", help="M/M/c (Erlang C) waiting figures")
    mmc.add_argument("--arrival-rate", type=float, required=True)
    mmc.add_argument("--service-rate", type=float, required=True, help="per server, same time unit")
    mmc.add_argument("--servers", type=int, required=True)
    mmc.add_argument("--json", action="store_true")
    mmc.set_defaults(func=_guarded(_run_mmc))

    vllm = commands.add_parser("vllm", help="size a vLLM fleet for a latency SLO (batching model)")
    vllm.add_argument("--gpu", required=True, help="accelerator profile, e.g. nvidia-l4")
    vllm.add_argument("--params-b", type=float, required=True, help="model size, billions of parameters")
    vllm.add_argument("--ttft-p95-ms", type=float, required=True)
    vllm.add_argument("--itl-p95-ms", type=float, default=None)
    vllm.add_argument("--prompt-tokens", type=float, required=True, help="mean prompt tokens")
    vllm.add_argument("--output-tokens", type=float, required=True, help="mean generated tokens")
    vllm.add_argument("--arrival-rate", type=float, required=True, help="mean requests per second")
    vllm.add_argument("--peak-factor", type=float, default=1.0)
    vllm.add_argument("--utilization", type=float, default=0.75, help="target utilisation per replica")
    vllm.add_argument("--gpus-per-replica", type=int, default=1)
    vllm.add_argument("--hours", type=float, default=24.0, help="operating hours per day (users figure)")
    vllm.add_argument("--access-probability", type=float, default=1.0, help="P_a for the users figure")
    vllm.add_argument("--jobs-per-user", type=float, default=1.0, help="F, requests per active user per day")
    vllm.add_argument("--json", action="store_true")
    vllm.set_defaults(func=_guarded(_run_vllm))
