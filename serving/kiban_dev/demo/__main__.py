"""`python -m kiban_dev.demo [--minutes N] [--out DIR]`: the README's first command."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import time
from dataclasses import replace
from pathlib import Path

from kiban_dev.demo.record import DEFAULT_TRACE, DemoConfig, format_sample, format_summary
from kiban_dev.demo.runner import DemoStack, write_outputs
from kiban_dev.demo.schedule import parse_phases


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m kiban_dev.demo", description=__doc__)
    parser.add_argument("--minutes", type=float, default=None,
                        help="stretch or shrink the default load phases to this many minutes of load (default 5)")
    parser.add_argument("--phases", default=None, help="explicit load phases SECONDS:RPS[:MIX],... with MIX conv or code (overrides --minutes)")
    parser.add_argument("--out", type=Path, default=Path("demo-out"), help="directory for demo.png, summary.json, logs")
    parser.add_argument("--trace", type=Path, default=DEFAULT_TRACE, help="Azure-format trace CSV (default: conv)")
    parser.add_argument("--time-compression", type=float, default=None, help="trace seconds per demo second")
    parser.add_argument("--sim-startup-seconds", type=float, default=None, help="simulated cold start of a pod")
    parser.add_argument("--stabilization-window", type=int, default=None, help="scale-down window, seconds")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every component step")
    return parser


def config_from_args(args: argparse.Namespace) -> DemoConfig:
    config = DemoConfig(out_dir=args.out, trace_path=args.trace)
    if args.phases:
        config = replace(config, phases=parse_phases(args.phases))
    elif args.minutes is not None:
        if args.minutes <= 0:
            raise ValueError(f"--minutes must be positive, got {args.minutes:g}")
        factor = args.minutes * 60 / config.load_seconds
        config = replace(config, phases=tuple(replace(p, duration_s=p.duration_s * factor) for p in config.phases))
    overrides = {"time_compression": args.time_compression, "sim_startup_s": args.sim_startup_seconds,
                 "stabilization_window_s": args.stabilization_window}
    return replace(config, **{k: v for k, v in overrides.items() if v is not None})


def _raise_interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        config = config_from_args(args)
    except ValueError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _raise_interrupt)  # `kill` cleans up like Ctrl-C does
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started with SIGINT ignored (`cmd &`)
    started = time.monotonic()
    try:
        with DemoStack(config) as stack:
            stored = stack.apply_model()
            served = stored["spec"]["model"].get("servedModelName") or stored["metadata"]["name"]
            if config.min_replicas == 0:
                print(zero_line(stack, stored["metadata"]["name"]), flush=True)
                print(f"The load's first request wakes it through the gateway (simulated cold start "
                      f"{config.sim_startup_s:g} s); requests sent before a replica is ready are held there.",
                      flush=True)
            else:
                print(f"Waiting for the first pod to be scheduled, backed and ready "
                      f"(simulated cold start {config.sim_startup_s:g} s)...", flush=True)
                print(f"First replica ready after {stack.wait_serving(served):.1f} s", flush=True)
                print(ready_line(stack, stored["metadata"]["name"]), flush=True)
            result = stack.run_load(stored, on_sample=lambda s: print(format_sample(s, result_slo(stored)), flush=True))
            print("Stopping every process...", flush=True)
        result.wall_seconds = time.monotonic() - started
        paths = write_outputs(result, config.out_dir)
    except KeyboardInterrupt:
        print("\nInterrupted: every process was stopped.", file=sys.stderr)
        return 130
    print("\nSummary\n" + format_summary(result.summary()))
    print(f"Plot: {paths['plot']}  summary: {paths['summary']}  logs: {config.out_dir / 'work'}")
    return 0


def ready_line(stack: DemoStack, name: str) -> str:
    """'Ready=True (...): 1 x nvidia-l4 GPU per replica, AutoSized: ...' from the model's status."""
    ready = stack.wait_ready_condition(name)
    status = stack.read_model(name).get("status") or {}
    resolved = status.get("resolved") or {}
    gpus = (f"{resolved.get('gpusPerReplica')} x {resolved.get('accelerator')} GPU per replica "
            f"({resolved.get('sizingReason')}: {resolved.get('sizingMessage')})")
    if ready is None:
        return f"FoundationModel {name} not Ready yet; {gpus}"
    return f"FoundationModel {name} Ready ({ready.get('reason')}: {ready.get('message')}); {gpus}"


def zero_line(stack: DemoStack, name: str, timeout_s: float = 60.0) -> str:
    """'FoundationModel ... at zero replicas (Ready False, ScaledToZero: ...); 1 x nvidia-l4 GPU ...'."""
    deadline = time.monotonic() + timeout_s
    status: dict = {}
    while time.monotonic() < deadline:
        status = stack.read_model(name).get("status") or {}
        if status.get("resolved") and any(c.get("type") == "Ready" for c in status.get("conditions") or []):
            break
        time.sleep(0.5)
    ready = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), {})
    resolved = status.get("resolved") or {}
    return (f"FoundationModel {name} at zero replicas (Ready {ready.get('status')}, {ready.get('reason')}: "
            f"{ready.get('message')}); {resolved.get('gpusPerReplica')} x {resolved.get('accelerator')} GPU per "
            f"replica ({resolved.get('sizingReason')}: {resolved.get('sizingMessage')})")


def result_slo(stored: dict) -> float:
    return float(((stored["spec"].get("scaling") or {}).get("slo") or {}).get("ttftP95Ms") or float("nan"))


if __name__ == "__main__":
    sys.exit(main())
