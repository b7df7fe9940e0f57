"""kiban-bench: GPU-hours each autoscaler spends to hold a TTFT SLO on real LLM traces.

  kiban-bench --out bench/results                  the three standard traces, table + JSON + plots
  kiban-bench --trace a.csv [--trace b.csv] --slo-ttft-ms 2000 --json out.json
                                                    any Azure-format trace(s), played back to back
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from tqdm import tqdm

from kiban_dev.benchmark import matrix, report
from kiban_dev.benchmark.oracle import SloUnattainable
from kiban_dev.benchmark.run import (
    DEFAULT_TRACE_DIR,
    PEER_CANDIDATES,
    BenchConfig,
    TraceSpec,
    run_benchmark,
    standard_traces,
)

log = logging.getLogger("kiban.bench")


def build_parser() -> argparse.ArgumentParser:
    defaults = BenchConfig()
    p = argparse.ArgumentParser(prog="kiban-bench", description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--trace", action="append", default=[], metavar="FILE",
                   help="Azure-format CSV (TIMESTAMP, ContextTokens, GeneratedTokens); repeat to play several in turn. "
                        f"Default: conv, code and conv+code from {DEFAULT_TRACE_DIR}")
    p.add_argument("--slo-ttft-ms", type=float, default=defaults.slo_ttft_ms, help="TTFT target (ms)")
    p.add_argument("--attainment", type=float, default=defaults.attainment,
                   help="share of requests that must meet the TTFT target (default 0.99)")
    p.add_argument("--profile", default=defaults.profile, help="engine profile '<gpu>/<size>B'")
    p.add_argument("--rate-factor", type=float, default=defaults.rate_factor,
                   help="multiply each trace's arrival rate by this (seeded replication)")
    p.add_argument("--cold-start-s", type=float, default=defaults.cold_start_s,
                   help="seconds from requesting a replica to it serving (billed, serves nothing); "
                        "default: drawn per seed from [60, 300] (120 with --home)")
    p.add_argument("--home", action="store_true",
                   help="the home game: the fleet runs the datasheet profile itself (no true engine)")
    p.add_argument("--matrix", action="store_true",
                   help="the matrix: conv, code, conv+code x A100/8B, H100/70B, L4/8B x rate 1, 4, seeds 0-2 "
                        "(with --quick: two short cells, two seeds)")
    p.add_argument("--traces", type=_names, help="--matrix: only these traces (comma-separated: conv,code,conv+code)")
    p.add_argument("--profiles", type=_names, help="--matrix: only these profiles (comma-separated)")
    p.add_argument("--rates", type=_floats, help="--matrix: only these rate factors (comma-separated: 1,4)")
    p.add_argument("--seeds", type=lambda v: tuple(int(x) for x in _names(v)),
                   help="--matrix: these seeds instead of the matrix's (comma-separated)")
    p.add_argument("--resume", action="store_true",
                   help="--matrix: keep the cells already in OUT/cells/ and run only the others; the report covers all of them")
    p.add_argument("--warmup-s", type=float, default=defaults.warmup_s,
                   help="policies observe from t=0 but act from here (they start with history)")
    p.add_argument("--max-replicas", type=int, default=defaults.max_replicas)
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--quick", action="store_true", help="only the first 5 minutes of each trace and one knob value per peer, no tuning "
                        "(checks that everything runs; its numbers mean nothing)")
    p.add_argument("--jobs", type=int, default=defaults.jobs, help="traces simulated in parallel processes")
    p.add_argument("--json", type=Path, help="write the result rows as a JSON list here")
    p.add_argument("--out", type=Path, help="write results.md, results.json, bar.json and PNG plots here")
    return p


def _names(value: str) -> tuple[str, ...]:
    names = tuple(v.strip() for v in value.split(",") if v.strip())
    if not names:
        raise argparse.ArgumentTypeError("expected a comma-separated list")
    return names


def _floats(value: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in _names(value))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected numbers: {value!r}") from exc


def specs_from(paths: list[str]) -> list[TraceSpec]:
    if not paths:
        return standard_traces()
    missing = [p for p in paths if not Path(p).is_file()]
    if missing:
        raise ValueError(f"--trace: no such file: {', '.join(missing)}")
    return [TraceSpec("+".join(Path(p).stem for p in paths), tuple(paths))]


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    args = build_parser().parse_args(argv)
    try:
        bench = BenchConfig(
            profile=args.profile, slo_ttft_ms=args.slo_ttft_ms, attainment=args.attainment,
            cold_start_s=args.cold_start_s, warmup_s=args.warmup_s, rate_factor=args.rate_factor, seed=args.seed,
            max_replicas=args.max_replicas, quick=args.quick and not args.matrix, jobs=args.jobs,
            true_engine=not args.home,
        )
        specs = specs_from(args.trace)
    except (ValueError, KeyError) as exc:
        print(f"kiban-bench: {exc}", file=sys.stderr)
        return 2
    try:
        if args.matrix:
            return _matrix(bench, args)
        return _single(bench, specs, args)
    except SloUnattainable as exc:
        print(f"kiban-bench: {exc}", file=sys.stderr)
        return 2


def _matrix(bench: BenchConfig, args: argparse.Namespace) -> int:
    out = args.out or (Path("bench/results/matrix-quick") if args.quick else Path("bench/results/matrix"))
    chosen = matrix.cells(args.quick, args.traces, args.profiles, args.rates)
    if not chosen:
        print("kiban-bench: --traces/--profiles/--rates select no cell of the matrix", file=sys.stderr)
        return 2
    cell_dir = out / "cells"

    def kept(cell: matrix.Cell) -> Path:
        return cell_dir / f"{matrix.cell_slug(cell)}.json"

    todo = [c for c in chosen if not (args.resume and kept(c).is_file())]

    def keep(cell: matrix.Cell, rows: list) -> None:
        report.write_json(rows, kept(cell))

    started = time.monotonic()
    with tqdm(total=len(todo), desc="kiban-bench --matrix", unit="cell", file=sys.stderr) as bar:
        rows = matrix.run_matrix(bench, quick=args.quick, seeds=args.seeds, chosen=todo, cell_done=keep,
                                 progress=lambda label: (bar.set_postfix_str(label), bar.update(1))) if todo else []
    elapsed = time.monotonic() - started
    log.info("Ran matrix cells=%d kept=%d rows=%d seconds=%.1f", len(todo), len(chosen) - len(todo), len(rows), elapsed)
    if args.resume:  # the report covers every cell kept in OUT/cells, from this run and earlier ones
        rows = report.read_cells(cell_dir)
        elapsed = None
    reported = {matrix.cell_key(r) for r in rows}  # a cell is "not run" when no row of the report is from it
    text = report.write_matrix(rows, bench, out, elapsed_s=elapsed, quick=args.quick,
                               missing=[c.label for c in matrix.cells(args.quick)
                                        if (c.trace, c.profile, c.rate_factor) not in reported])
    if args.json:
        report.write_json(rows, args.json)
    print(text)
    return 0


def _single(bench: BenchConfig, specs: list[TraceSpec], args: argparse.Namespace) -> int:
    # oracle, clairvoyant, about two static-peak tries, kiban, then the peers' targets (an estimate)
    runs_per_trace = 1 + 1 + 2 + 1 + 5 * len(PEER_CANDIDATES)
    total = len(specs) if bench.jobs > 1 and len(specs) > 1 else len(specs) * runs_per_trace
    started = time.monotonic()
    with tqdm(total=total, desc="kiban-bench", unit="run", file=sys.stderr) as bar:
        def tick(label: str) -> None:
            bar.set_postfix_str(label[:40])
            bar.update(1)

        rows = run_benchmark(specs, bench, tick)
        bar.total = bar.n
        bar.refresh()
    log.info("Ran benchmark traces=%s rows=%d seconds=%.1f", ",".join(s.name for s in specs), len(rows),
             time.monotonic() - started)
    if args.json:
        report.write_json(rows, args.json)
        log.info("Wrote results path=%s", args.json)
    if args.out:
        written = report.write_all(rows, bench, args.out)
        log.info("Wrote results dir=%s files=%s", args.out, ",".join(p.name for p in written.values()))
    print(report.markdown(rows, bench))
    return 0


if __name__ == "__main__":
    sys.exit(main())
