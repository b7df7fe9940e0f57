"""`kiban capacity plan|mmc|vllm|compare`: the capacity planner on the command line.

The work is done by the pure functions `plan_founding`, `mmc_report`, `vllm_plan` and
`compare.compare`; this module only parses arguments, reads a trace file, prints (a table, or
JSON with --json) and draws the optional chart (matplotlib, developer tooling, imported only
when --chart is given).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, dataclass, replace

from kiban.capacity import erlang
from kiban.capacity.batching import Slo, max_arrival_rate, predict, replicas_needed
from kiban.capacity.engine_profile import EngineProfile
from kiban.capacity.founding import plan_founding, require_positive, users_for_capacity

CHART_NEEDS = ("the chart needs matplotlib, which is part of Kiban's developer tooling, not the runtime: "
               "install it (`pip install matplotlib`, or `make venv` in a checkout) or leave out --chart")


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


def parse_model(text: str):
    """NAME=SIZE[:PRECISION], e.g. llama-8b=8B or llama-70b=70B:fp8 (precision: dtype or quantization)."""
    from kiban.api.v1alpha1 import Dtype, Quantization, parameter_count
    from kiban.capacity.compare import ModelCandidate

    name, sep, rest = text.partition("=")
    if not sep or not name or not rest:
        raise ValueError(f"--model: expected NAME=SIZE[:PRECISION] (e.g. llama-8b=8B:fp8), got {text!r}")
    size, _, precision = rest.partition(":")
    try:
        params_b = parameter_count(size) / 1e9
    except ValueError as exc:
        raise ValueError(f"--model {text!r}: {exc}") from None
    dtype, quantization = Dtype.auto, Quantization.none
    if precision:
        if precision in {d.value for d in Dtype}:
            dtype = Dtype(precision)
        elif precision in {q.value for q in Quantization}:
            quantization = Quantization(precision)
        else:
            choices = ", ".join([d.value for d in Dtype] + [q.value for q in Quantization if q != Quantization.none])
            raise ValueError(f"--model {text!r}: precision must be one of {choices}, got {precision!r}")
    return ModelCandidate(name, params_b, dtype, quantization)


def parse_gpu(text: str, profiles: dict):
    """PROFILE=PRICE, e.g. nvidia-l4=0.80 (US dollars per GPU-hour)."""
    from kiban.capacity.compare import AcceleratorCandidate

    name, sep, price = text.partition("=")
    if not sep:
        raise ValueError(f"--gpu: expected PROFILE=PRICE_PER_GPU_HOUR (e.g. nvidia-l4=0.80), got {text!r}")
    if name not in profiles:
        raise ValueError(f"--gpu {text!r}: unknown accelerator profile {name!r}; known: {', '.join(sorted(profiles))}")
    try:
        value = float(price)
    except ValueError:
        raise ValueError(f"--gpu {text!r}: price must be a number (dollars per GPU-hour), got {price!r}") from None
    if not (value >= 0 and math.isfinite(value)):
        raise ValueError(f"--gpu {text!r}: price must be >= 0, got {price!r}")
    return AcceleratorCandidate(profiles[name], value)


def parse_mix(text: str) -> list[tuple[float, float, float]]:
    """PROMPT:OUTPUT[:WEIGHT],... e.g. 512:128:0.7,2048:256:0.3."""
    classes = []
    for item in filter(None, (i.strip() for i in text.split(","))):
        parts = item.split(":")
        try:
            if len(parts) not in (2, 3):
                raise ValueError
            values = [float(v) for v in parts] + ([1.0] if len(parts) == 2 else [])
        except ValueError:
            raise ValueError(f"--mix: expected PROMPT:OUTPUT[:WEIGHT] items separated by commas, got {item!r}") from None
        classes.append(tuple(values))
    return classes


def read_azure_load(path: str, rate_multiplier: float, peak_factor: float):
    """An Azure LLM inference trace CSV (TIMESTAMP,ContextTokens,GeneratedTokens) as a Load."""
    import csv
    from datetime import datetime, timezone

    from kiban.capacity.compare import load_from_requests

    arrivals, prompts, outputs = [], [], []
    with open(path, newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None or [h.strip() for h in header] != ["TIMESTAMP", "ContextTokens", "GeneratedTokens"]:
            raise ValueError(f"{path}:1: expected the header TIMESTAMP,ContextTokens,GeneratedTokens, got {header!r}")
        for line, row in enumerate(reader, start=2):
            try:
                stamp, _, fraction = row[0].strip().partition(".")
                whole = datetime.fromisoformat(stamp).replace(tzinfo=timezone.utc).timestamp()
                arrivals.append(whole + (int(fraction) / 10 ** len(fraction) if fraction else 0.0))
                prompts.append(int(row[1]))
                outputs.append(int(row[2]))
            except (ValueError, IndexError):
                raise ValueError(f"{path}:{line}: cannot read {row!r} as TIMESTAMP,ContextTokens,GeneratedTokens") \
                    from None
    load = load_from_requests(arrivals, prompts, outputs, peak_factor)
    return replace(load, rate_rps=load.rate_rps * rate_multiplier)


def compare_report(results, load, slo, target_utilization: float) -> dict:
    """The --json document: the inputs and one entry per pair (pure)."""
    pairs = []
    for r in results:
        entry = {k: v for k, v in asdict(r).items() if k != "engine_profile"}
        entry["engine_profile"] = r.engine_profile.name if r.engine_profile is not None else None
        pairs.append(entry)
    return {
        "load": {"rate_rps": load.rate_rps, "mean_prompt_tokens": load.prompt_tokens,
                 "mean_output_tokens": load.output_tokens, "peak_factor": load.peak_factor},
        "slo": slo.describe(), "target_utilization": target_utilization, "pairs": pairs,
    }


def compare_table(results) -> str:
    """A fixed-width table: feasible pairs cheapest first, then the pairs that cannot serve and why."""
    header = (f"{'model':<26}{'accelerator':<20}{'GPU/rep':>8}{'replicas':>9}{'GPU-h/day':>10}{'$/day':>10}"
              f"{'$/M out':>9}{'TTFT p95':>10}")
    lines = [header]
    for r in results:
        if r.feasible:
            ttft = "-" if r.predicted_ttft_p95_ms is None else f"{r.predicted_ttft_p95_ms:.0f} ms"
            lines.append(f"{r.model:<26}{r.accelerator:<20}{r.gpus_per_replica:>8}{r.replicas:>9}"
                         f"{r.gpu_hours_per_day:>10.0f}{r.cost_per_day:>10.2f}"
                         f"{r.cost_per_million_output_tokens:>9.3f}{ttft:>10}")
    infeasible = [r for r in results if not r.feasible]
    if infeasible:
        lines.append("cannot meet the SLO:")
        lines.extend(f"  {r.model} on {r.accelerator}: {r.reason}" for r in infeasible)
    return "\n".join(lines)


def draw_compare_chart(results, slo, path: str) -> str:
    """Cost per day against predicted TTFT p95, one labelled point per feasible pair (PNG)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ValueError(CHART_NEEDS) from None
    feasible = [r for r in results if r.feasible and r.predicted_ttft_p95_ms is not None]
    fig, ax = plt.subplots(figsize=(8, 5))
    for index, r in enumerate(feasible):
        ax.scatter(r.predicted_ttft_p95_ms, r.cost_per_day, s=40)
        ax.annotate(f"{r.model}\n{r.accelerator} x{r.gpus}", (r.predicted_ttft_p95_ms, r.cost_per_day),
                    fontsize=7, xytext=(5, 6 if index % 2 else -18), textcoords="offset points")
    ax.set_xscale("log")
    if slo.ttft_ms is not None:
        ax.axvline(slo.ttft_ms, color="black", ls="--", lw=1, label=f"SLO TTFT p{slo.ttft_percentile} {slo.ttft_ms:g} ms")
        ax.legend(fontsize=8)
    ax.set_xlabel("predicted TTFT p95 at the planned replicas (ms, log scale)")
    ax.set_ylabel("cost per day (USD)")
    ax.set_title("kiban capacity compare: cost against latency")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _run_compare(args: argparse.Namespace) -> int:
    import os

    from kiban.capacity.compare import Load, compare, load_from_mix
    from kiban.config import load_config

    profiles = load_config(os.environ).accelerator_profiles
    models = [parse_model(text) for text in args.model]
    gpus = [parse_gpu(text, profiles) for text in args.gpu]
    if args.trace:
        load = read_azure_load(args.trace, args.rate_multiplier, args.peak_factor)
    else:
        if args.rate is None:
            raise ValueError("give the load: --rate with --prompt-tokens/--output-tokens or --mix, or --trace")
        require_positive(args.rate, "rate")
        if args.mix:
            load = load_from_mix(args.rate, parse_mix(args.mix), args.peak_factor)
        elif args.prompt_tokens is not None and args.output_tokens is not None:
            load = Load(args.rate, args.prompt_tokens, args.output_tokens, None, args.peak_factor)
        else:
            raise ValueError("--rate needs --prompt-tokens and --output-tokens, or --mix")
    slo = Slo(ttft_ms=args.ttft_p95_ms, ttft_percentile=95, itl_ms=args.itl_p95_ms, itl_percentile=95)
    results = compare(models, gpus, load, slo, args.utilization)
    if args.json:
        print(json.dumps(compare_report(results, load, slo, args.utilization), indent=2))
    else:
        print(f"load {load.rate_rps:.3g} req/s x peak {load.peak_factor:g}, mean {load.prompt_tokens:.0f} prompt / "
              f"{load.output_tokens:.0f} output tokens; SLO {slo.describe()}; target utilisation {args.utilization:g}")
        print(compare_table(results))
    if args.chart:
        print(f"chart: {draw_compare_chart(results, slo, args.chart)}", file=sys.stderr)
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
    capacity = subparsers.add_parser("capacity",
                                     help="capacity planner (founding M/M/1, M/M/c, vLLM fleets, cost comparison)")
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

    cmp = commands.add_parser(
        "compare", help="candidate models x accelerators for one load and SLO: GPUs, replicas, cost",
        description="For each model and accelerator: GPUs per replica (the operator's sizing), replicas at the "
                    "SLO (the autoscaler's capacity model), GPU-hours and cost per day, cost per million output "
                    "tokens, and why a pair cannot meet the SLO. --chart draws cost against latency; it needs "
                    "matplotlib, from Kiban's developer tooling (not in the runtime image).")
    cmp.add_argument("--model", action="append", required=True, metavar="NAME=SIZE[:PRECISION]",
                     help="a candidate, e.g. llama-8b=8B or llama-70b=70B:fp8 (precision: auto, bfloat16, "
                          "float16, fp8, awq, gptq, bitsandbytes); repeat for more")
    cmp.add_argument("--gpu", action="append", required=True, metavar="PROFILE=PRICE",
                     help="an accelerator profile and its price per GPU-hour, e.g. nvidia-l4=0.80; repeat for more")
    cmp.add_argument("--rate", type=float, default=None, help="requests per second (mean)")
    cmp.add_argument("--prompt-tokens", type=float, default=None, help="mean prompt tokens")
    cmp.add_argument("--output-tokens", type=float, default=None, help="mean generated tokens")
    cmp.add_argument("--mix", default=None, metavar="P:O[:W],...", help="request classes instead of the two means")
    cmp.add_argument("--trace", default=None, help="an Azure-format trace CSV: its rate and token mix")
    cmp.add_argument("--rate-multiplier", type=float, default=1.0, help="scale a trace's rate")
    cmp.add_argument("--peak-factor", type=float, default=1.0, help="plan for rate x this (>= 1)")
    cmp.add_argument("--ttft-p95-ms", type=float, required=True)
    cmp.add_argument("--itl-p95-ms", type=float, default=None)
    cmp.add_argument("--utilization", type=float, default=0.75, help="target utilisation per replica (autoscaler's)")
    cmp.add_argument("--json", action="store_true")
    cmp.add_argument("--chart", default=None, metavar="PNG",
                     help="write cost against latency as a PNG (needs matplotlib: developer tooling)")
    cmp.set_defaults(func=_guarded(_run_compare))
