"""Does the capacity model predict what the simulator serves? TTFT p95 at three Poisson loads.

Starts one kiban-sim (real process, real HTTP streaming, --speedup 1 so client wall time is
engine time), replays Poisson arrivals at fractions of the replica's top throughput mu(B)
with kiban-load's replay(), and compares the client-measured TTFT/ITL p95 with
kiban.capacity.batching.predict() for the same rate and request shape. A measurement, not a
test: it prints a Markdown table (and writes JSON with --json).

    .venv/bin/python -m kiban_dev.benchmark.model_vs_sim --profile nvidia-l4/8B --prompt-tokens 256 --output-tokens 16
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from kiban.capacity.batching import batch_limit, predict, service_rate_rps
from kiban.capacity.profiles import get_profile_by_name
from kiban_serving.loadgen.client import replay
from kiban_serving.loadgen.report import percentile, summarize
from kiban_serving.loadgen.trace import poisson_requests
from kiban_serving.sim.engine import Engine
from kiban_serving.sim.process import SimulatorProcess

MODEL = "bench-sim"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="nvidia-l4/8B")
    parser.add_argument("--prompt-tokens", type=int, default=256)
    parser.add_argument("--output-tokens", type=int, default=16)
    parser.add_argument("--loads", default="0.3,0.6,0.85", help="fractions of mu(B), comma-separated")
    parser.add_argument("--requests", type=int, default=400, help="requests per load level")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None)
    return parser.parse_args(argv)


def engine_ttft_p95_ms(profile, requests) -> float:
    """The same requests through the simulator's engine alone (no HTTP, no wall clock)."""
    engine, done = Engine(profile), []
    for index, request in enumerate(requests):
        done += engine.advance_to(request.arrival_s)
        engine.submit(str(index), request.prompt_tokens, request.output_tokens, request.arrival_s)
    done += engine.advance_to(float("inf"))
    return percentile([d.ttft_s * 1000 for d in done], 95)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    profile = get_profile_by_name(args.profile)
    prompt, output = args.prompt_tokens, args.output_tokens
    mu = service_rate_rps(profile, prompt, output, batch_limit(profile, prompt, output))
    rows = []
    with SimulatorProcess(MODEL, args.profile, ["--startup-seconds", "0"]) as sim:
        sim.wait_healthy()
        for load in (float(x) for x in args.loads.split(",")):
            rate = load * mu
            requests = poisson_requests(rate, args.requests / rate, prompt, output, seed=args.seed)
            results = asyncio.run(replay(sim.url, MODEL, requests))
            report = summarize(results)
            model = predict(profile, rate, prompt, output)
            rows.append({
                "load": load, "rate_rps": rate, "requests": report.succeeded, "failed": report.failed,
                "predicted_ttft_p95_ms": model.ttft_p95_s * 1000, "measured_ttft_p95_ms": report.ttft.p95_ms,
                "engine_ttft_p95_ms": engine_ttft_p95_ms(profile, requests),
                "predicted_itl_p95_ms": model.itl_p95_s * 1000, "measured_itl_p95_ms": report.itl.p95_ms,
                "predicted_ttft_mean_ms": model.ttft_mean_s * 1000, "measured_ttft_mean_ms": report.ttft.mean_ms,
            })
            print(f"load {load:.0%}: {report.to_table()}", file=sys.stderr, flush=True)
    print(f"{args.profile}, {prompt} prompt / {output} output tokens, mu(B) = {mu:.2f} req/s, "
          f"{args.requests} Poisson requests per load, kiban-sim --speedup 1\n")
    print("| load (of mu(B)) | λ req/s | TTFT p95 model ms | TTFT p95 measured ms | error | "
          "engine alone ms | error | ITL p95 model ms | ITL p95 measured ms | error |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        ttft_err = (r["measured_ttft_p95_ms"] - r["predicted_ttft_p95_ms"]) / r["predicted_ttft_p95_ms"]
        itl_err = (r["measured_itl_p95_ms"] - r["predicted_itl_p95_ms"]) / r["predicted_itl_p95_ms"]
        engine_err = (r["engine_ttft_p95_ms"] - r["predicted_ttft_p95_ms"]) / r["predicted_ttft_p95_ms"]
        print(f"| {r['load']:.0%} | {r['rate_rps']:.2f} | {r['predicted_ttft_p95_ms']:.0f} | "
              f"{r['measured_ttft_p95_ms']:.0f} | {ttft_err:+.1%} | {r['engine_ttft_p95_ms']:.0f} | "
              f"{engine_err:+.1%} | {r['predicted_itl_p95_ms']:.1f} | "
              f"{r['measured_itl_p95_ms']:.1f} | {itl_err:+.1%} |")
    if args.json:
        args.json.write_text(json.dumps({"profile": args.profile, "prompt_tokens": prompt, "output_tokens": output,
                                         "mu_rps": mu, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
