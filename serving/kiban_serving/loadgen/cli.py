"""kiban-load: replay an Azure-format trace or a Poisson stream against an OpenAI endpoint."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from kiban_serving.loadgen.client import replay
from kiban_serving.loadgen.report import summarize
from kiban_serving.loadgen.trace import (
    TraceFormatError,
    compress_time,
    multiply_rate,
    poisson_requests,
    read_azure_trace,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kiban-load", description=__doc__)
    parser.add_argument("--url", required=True, help="base URL, e.g. http://127.0.0.1:8000")
    parser.add_argument("--model", required=True, help="served model name")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--trace", type=Path, help="Azure-format CSV (TIMESTAMP,ContextTokens,GeneratedTokens)")
    source.add_argument("--poisson-rps", type=float, help="Poisson arrival rate instead of a trace")
    parser.add_argument("--start-s", type=float, default=0.0, help="trace offset to start from (trace seconds)")
    parser.add_argument("--duration-s", type=float, default=None, help="trace seconds to replay (Poisson: required)")
    parser.add_argument("--prompt-tokens", type=int, default=512, help="Poisson: prompt tokens per request")
    parser.add_argument("--output-tokens", type=int, default=128, help="Poisson: output tokens per request")
    parser.add_argument("--time-scale", type=float, default=1.0, help="replay K times faster than the trace")
    parser.add_argument("--rate-multiplier", type=float, default=1.0, help="thin (<1) or replicate (>1) requests")
    parser.add_argument("--max-concurrency", type=int, default=256)
    parser.add_argument("--chat", action="store_true", help="use /v1/chat/completions instead of /v1/completions")
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--slo-ttft-ms", type=float, default=None)
    parser.add_argument("--slo-itl-ms", type=float, default=None)
    parser.add_argument(
        "--latency-scale", type=float, default=1.0,
        help="multiply measured latencies (set to the simulator's --speedup to report engine time)",
    )  # fmt: skip
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="write the report (and per-request results) here")
    parser.add_argument("--no-progress", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.trace is not None:
            requests = read_azure_trace(args.trace, start_s=args.start_s, duration_s=args.duration_s)
        else:
            if args.duration_s is None:
                print("kiban-load: --duration-s is required with --poisson-rps", file=sys.stderr)
                return 2
            requests = poisson_requests(
                args.poisson_rps, args.duration_s, args.prompt_tokens, args.output_tokens, args.seed
            )
        requests = multiply_rate(requests, args.rate_multiplier, args.seed)
        requests = compress_time(requests, args.time_scale)
    except (TraceFormatError, ValueError, OSError) as exc:
        print(f"kiban-load: {exc}", file=sys.stderr)
        return 2
    results = asyncio.run(
        replay(
            args.url, args.model, requests,
            max_concurrency=args.max_concurrency, chat=args.chat, api_key=args.api_key,
            progress=not args.no_progress,
        )
    )  # fmt: skip
    report = summarize(results, args.slo_ttft_ms, args.slo_itl_ms, args.latency_scale)
    print(report.to_table())
    if args.json is not None:
        payload = {"report": report.to_dict(), "results": [vars(r) for r in results]}
        args.json.write_text(json.dumps(payload, indent=2, default=str))
    return 0 if report.failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
