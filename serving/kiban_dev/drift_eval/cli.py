"""`kiban drift eval`: measure the drift detector on two real traces played back to back."""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import replace
from pathlib import Path

from kiban.drift.detector import DriftConfig
from kiban_dev.drift_eval.evaluate import evaluate_traces, format_table, load_azure_trace, phase_from_seed

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    drift = subparsers.add_parser("drift", help="workload drift statistics")
    drift_sub = drift.add_subparsers(dest="drift_command", required=True)
    evaluate = drift_sub.add_parser(
        "eval", help="detection delay and false alarms on trace A followed by trace B"
    )
    evaluate.add_argument("--trace", action="append", required=True, metavar="CSV",
                          help="Azure LLM trace CSV (TIMESTAMP, ContextTokens, GeneratedTokens); give exactly two")
    evaluate.add_argument("--window-s", type=float, default=None, help="window length in seconds (default: DriftConfig)")
    evaluate.add_argument("--policy", choices=("baseline", "rolling"), default=None, help="reference policy")
    evaluate.add_argument("--seed", type=int, default=None,
                          help="draws the window grid's phase (where the switch falls in a window); none: phase 0")
    evaluate.add_argument("--max-model-len", type=int, default=32768, help="top of vLLM's 1-2-5 token buckets")
    evaluate.add_argument("--json", required=True, type=Path, metavar="OUT", help="where to write the results")
    evaluate.set_defaults(func=run_eval)


def run_eval(args: argparse.Namespace) -> int:
    if len(args.trace) != 2:
        raise SystemExit(f"--trace must be given exactly twice (A then B), got {len(args.trace)}")
    config = DriftConfig()
    if args.window_s is not None:
        config = replace(config, window_s=args.window_s)
    if args.policy is not None:
        config = replace(config, reference_policy=args.policy)
    first, second = (load_azure_trace(path) for path in args.trace)
    result = evaluate_traces(first, second, config, phase_from_seed(args.seed, config.window_s), args.max_model_len)
    result["seed"] = args.seed
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(format_table(result))
    log.info("Wrote drift evaluation", extra={"path": str(args.json)})
    return 0
