"""`make bench-gateway`: what the Kiban gateway adds, measured side by side with kiban-sim alone.

One run, on this machine: two kiban-sim engines, the gateway's real server code
(kiban.gateway.server) in a process of its own pinned to one core, its routing table fed the two
engines by hand (the API watches cost nothing per request), and a load generator process
(aiohttp, pinned to the other core). For each concurrency (1, 64, 256, 1,024 streams) the same
load runs straight at the engines (the client spreads it over them round-robin) and through the
gateway, alternating, and the report gives requests/s, TTFT and end-to-end p50/p99 of both and
their difference, the gateway's CPU and resident memory, and the load generator's own CPU per
request (its ceiling, so a reader can see it was not the bottleneck). Short non-streaming
requests (max_tokens 1) measure the gateway's throughput: requests per CPU-second of the
gateway process is what one core of it serves. With --profile, the gateway process writes a
cProfile of a separate short-request run (not the measured ones: the profiler roughly
doubles the gateway's CPU cost).

A benchmark, never a test: the numbers depend on the machine and on whoever else shares it.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import pstats
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PROFILE = "nvidia-l4/8B"
MODEL = "bench"
CONCURRENCY = (1, 64, 256, 1024)


# ----------------------------------------------------------------------------- the gateway process


def serve_gateway(args: argparse.Namespace) -> int:
    """Child process: the gateway's servers over a hand-fed routing table of `--upstream` ports."""
    from kiban.gateway.server import Gateway, GatewaySettings, serve

    gateway = Gateway(GatewaySettings(), api=None)
    gateway.on_model(("bench", MODEL), None, {
        "apiVersion": "kiban.dev/v1alpha1", "kind": "FoundationModel", "metadata": {"name": MODEL, "namespace": "bench"},
        "spec": {"model": {"uri": "hf://org/model", "parameters": "8B"}, "accelerator": {"profile": "nvidia-l4"},
                 "scaling": {"minReplicas": 1, "maxReplicas": 2, "autoscaling": False},
                 "exposure": {"gateway": {"enabled": True}}}})
    for index, port in enumerate(args.upstream):
        gateway.on_pod(("bench", f"engine-{index}"), None, {
            "metadata": {"name": f"engine-{index}", "namespace": "bench", "labels": {"kiban.dev/model": MODEL}},
            "spec": {"containers": [{"name": "vllm", "ports": [{"name": "http", "containerPort": port}]}]},
            "status": {"phase": "Running", "podIP": "127.0.0.1", "conditions": [{"type": "Ready", "status": "True"}]}})

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        await serve(gateway, "127.0.0.1", args.port, "127.0.0.1", args.admin_port, stop, shutdown_timeout_s=2)

    from kiban.gateway.cli import run_loop

    profiler = cProfile.Profile() if args.profile else None
    if profiler:
        profiler.enable()
    run_loop(main())
    if profiler:
        profiler.disable()
        profiler.dump_stats(args.profile)
    return 0


# ----------------------------------------------------------------------------- the load generator


@dataclass
class Run:
    path: str  # "direct" or "gateway"
    concurrency: int
    stream: bool
    requests: int
    errors: int
    seconds: float
    rps: float
    ttft_p50_ms: float
    ttft_p99_ms: float
    e2e_p50_ms: float
    e2e_p99_ms: float
    loadgen_cpu_s: float
    gateway_cpu_s: float | None = None
    gateway_rss_mib: float | None = None


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


async def drive(urls: list[str], concurrency: int, total: int, stream: bool, max_tokens: int) -> tuple[list, int, float]:
    """`total` requests from `concurrency` workers, each pinned to one URL round-robin."""
    import aiohttp

    ttft: list[float] = []
    e2e: list[float] = []
    errors = 0
    remaining = total
    body = {"model": MODEL, "prompt": "hello", "max_tokens": max_tokens, "ignore_eos": True, "stream": stream}
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=300)) as session:
        async def worker(url: str) -> None:
            nonlocal remaining, errors
            while remaining > 0:
                remaining -= 1
                started = time.perf_counter()
                first = None
                try:
                    async with session.post(url + "/v1/completions", json=body) as response:
                        async for chunk in response.content.iter_any():
                            if first is None and chunk:
                                first = time.perf_counter()
                        if response.status != 200:
                            errors += 1
                            continue
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    errors += 1
                    continue
                end = time.perf_counter()
                ttft.append(((first or end) - started) * 1000)
                e2e.append((end - started) * 1000)

        started = time.perf_counter()
        await asyncio.gather(*(worker(urls[i % len(urls)]) for i in range(concurrency)))
        seconds = time.perf_counter() - started
    return [ttft, e2e], errors, seconds


def loadgen(args: argparse.Namespace) -> int:
    """Child process: one measured run; prints a JSON line."""
    cpu0 = time.process_time()
    (ttft, e2e), errors, seconds = asyncio.run(drive(args.url, args.concurrency, args.requests, args.stream,
                                                     args.max_tokens))
    cpu = time.process_time() - cpu0
    done = len(e2e)
    print(json.dumps({"requests": done, "errors": errors, "seconds": seconds, "rps": done / seconds,
                      "ttft_p50_ms": percentile(ttft, 50), "ttft_p99_ms": percentile(ttft, 99),
                      "e2e_p50_ms": percentile(e2e, 50), "e2e_p99_ms": percentile(e2e, 99), "loadgen_cpu_s": cpu}))
    return 0


# ----------------------------------------------------------------------------- the orchestration


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _pin(cpu: int | None) -> list[str]:
    return ["taskset", "-c", str(cpu)] if cpu is not None and os.cpu_count() and os.cpu_count() > 1 else []


def _wait_http(url: str, timeout_s: float = 30) -> None:
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer within {timeout_s:.0f}s")


def measured(path: str, urls: list[str], concurrency: int, requests: int, stream: bool, max_tokens: int,
             gateway_pid: int | None, loadgen_cpu: int | None) -> Run:
    cpu_before = _cpu_seconds(gateway_pid) if gateway_pid else None
    rss = [0.0]
    proc = subprocess.Popen([*_pin(loadgen_cpu), sys.executable, "-m", "kiban_dev.gateway_bench", "loadgen",
                             "--concurrency", str(concurrency), "--requests", str(requests),
                             "--max-tokens", str(max_tokens), *(["--stream"] if stream else []),
                             *[arg for url in urls for arg in ("--url", url)]], stdout=subprocess.PIPE, text=True)
    while proc.poll() is None:
        if gateway_pid:
            rss[0] = max(rss[0], _rss_mib(gateway_pid))
        time.sleep(0.2)
    lines = proc.stdout.read().strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"the load generator failed ({proc.returncode}) for {path} at concurrency {concurrency}")
    out = json.loads(lines[-1])
    run = Run(path=path, concurrency=concurrency, stream=stream, **out)
    if gateway_pid:
        run.gateway_cpu_s = _cpu_seconds(gateway_pid) - cpu_before
        run.gateway_rss_mib = rss[0]
    return run


def bench(args: argparse.Namespace) -> int:
    from kiban_serving.sim.process import SimulatorProcess, free_port

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sims = [SimulatorProcess(MODEL, PROFILE, ["--startup-seconds", "0", "--speedup", str(args.speedup),
                                              "--max-num-seqs", "1024", "--log-level", "WARNING"],
                             log_path=Path(tempfile.gettempdir()) / f"kiban-gateway-bench-sim-{i}.log")
            for i in range(args.engines)]
    gateway_port, admin_port = free_port(), free_port()
    gateway = None
    runs: list[Run] = []
    try:
        for sim in sims:
            sim.start()
        for sim in sims:
            sim.wait_healthy()
        def start_gateway(port: int, admin: int, profile: Path | None) -> subprocess.Popen:
            proc = subprocess.Popen([*_pin(args.gateway_cpu), sys.executable, "-m", "kiban_dev.gateway_bench",
                                     "serve-gateway", "--port", str(port), "--admin-port", str(admin),
                                     *(["--profile", str(profile)] if profile else []),
                                     *[a for sim in sims for a in ("--upstream", str(sim.port))]])
            _wait_http(f"http://127.0.0.1:{admin}/healthz", timeout_s=120)
            return proc

        gateway = start_gateway(gateway_port, admin_port, None)  # measured without a profiler
        direct = [sim.url for sim in sims]
        through = [f"http://127.0.0.1:{gateway_port}"]
        plan = [(c, True, args.max_tokens, max(args.requests, 4 * c)) for c in args.concurrency]
        plan += [(c, False, 1, args.short_requests) for c in (64, 256)]
        for concurrency, stream, tokens, total in plan:
            for repeat in range(args.repeats):
                for path, urls, pid in (("direct", direct, None), ("gateway", through, gateway.pid)):
                    run = measured(path, urls, concurrency, total, stream, tokens, pid, args.loadgen_cpu)
                    runs.append(run)
                    print(f"{'stream' if stream else 'short '} c={concurrency:<5} {path:<8} {run.rps:8.0f} req/s "
                          f"ttft p50 {run.ttft_p50_ms:7.2f} p99 {run.ttft_p99_ms:7.2f} ms  e2e p99 "
                          f"{run.e2e_p99_ms:7.2f} ms  errors {run.errors}"
                          + (f"  gateway cpu {run.gateway_cpu_s:.2f}s rss {run.gateway_rss_mib:.0f}MiB"
                             if run.gateway_cpu_s is not None else ""), flush=True)
        if args.profile:  # a separate, unmeasured run under cProfile (it roughly doubles the CPU cost)
            port, admin = free_port(), free_port()
            profiled = start_gateway(port, admin, out / "gateway.pstats")
            measured("profiled", [f"http://127.0.0.1:{port}"], 64, args.short_requests, False, 1, None,
                     args.loadgen_cpu)
            profiled.send_signal(signal.SIGTERM)
            profiled.wait(timeout=60)
    finally:
        if gateway is not None:
            gateway.send_signal(signal.SIGTERM)
            gateway.wait(timeout=60)
        for sim in sims:
            sim.stop()
    (out / "gateway.json").write_text(json.dumps([asdict(r) for r in runs], indent=1))
    report = render(runs, args)
    if args.profile and (out / "gateway.pstats").exists():
        report += "\n## Where the gateway's CPU goes (cProfile of a separate short run at 64, by own time, top 25)\n\n```\n" + _top(out / "gateway.pstats") + "```\n"
    (out / "gateway.md").write_text(report)
    print(report)
    return 0


def _top(path: Path) -> str:
    import io

    stream = io.StringIO()
    pstats.Stats(str(path), stream=stream).sort_stats("tottime").print_stats(25)
    return "\n".join(line for line in stream.getvalue().splitlines() if line.strip())[-6000:] + "\n"


def _median(runs: list[Run], field: str) -> float:
    return statistics.median(getattr(r, field) for r in runs)


def render(runs: list[Run], args: argparse.Namespace) -> str:
    lines = [
        "# Gateway benchmark (`make bench-gateway`)", "",
        f"{args.engines} kiban-sim engines (profile {PROFILE}, speedup {args.speedup:g}); gateway pinned to CPU "
        f"{args.gateway_cpu}, load generator to CPU {args.loadgen_cpu}; medians of {args.repeats} alternating runs. "
        "Added = gateway − direct.", "",
        "| load | concurrency | direct req/s | gateway req/s | TTFT p50 direct / gw (ms) | added TTFT p99 (ms) "
        "| e2e p50 direct / gw (ms) | added e2e p99 (ms) | gateway CPU s / 1k req | gateway RSS (MiB) | loadgen CPU s / 1k req |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    keys = sorted({(r.stream, r.concurrency) for r in runs}, key=lambda k: (not k[0], k[1]))
    for stream, concurrency in keys:
        d = [r for r in runs if r.path == "direct" and r.stream == stream and r.concurrency == concurrency]
        g = [r for r in runs if r.path == "gateway" and r.stream == stream and r.concurrency == concurrency]
        per_k = statistics.median(r.gateway_cpu_s / max(1, r.requests) * 1000 for r in g)
        lg = statistics.median(r.loadgen_cpu_s / max(1, r.requests) * 1000 for r in g + d)
        lines.append(
            f"| {'stream ' + str(args.max_tokens) + ' tok' if stream else 'short (1 tok)'} | {concurrency} "
            f"| {_median(d, 'rps'):.0f} | {_median(g, 'rps'):.0f} "
            f"| {_median(d, 'ttft_p50_ms'):.2f} / {_median(g, 'ttft_p50_ms'):.2f} "
            f"| {_median(g, 'ttft_p99_ms') - _median(d, 'ttft_p99_ms'):+.2f} "
            f"| {_median(d, 'e2e_p50_ms'):.2f} / {_median(g, 'e2e_p50_ms'):.2f} "
            f"| {_median(g, 'e2e_p99_ms') - _median(d, 'e2e_p99_ms'):+.2f} "
            f"| {per_k:.3f} | {max(r.gateway_rss_mib or 0 for r in g):.0f} | {lg:.3f} |")
    short = [r for r in runs if r.path == "gateway" and not r.stream]
    if short:
        per_core = statistics.median(r.requests / r.gateway_cpu_s for r in short if r.gateway_cpu_s)
        loadgen = statistics.median(r.requests / r.loadgen_cpu_s for r in runs if not r.stream and r.loadgen_cpu_s)
        lines += ["", f"Short requests the gateway serves per CPU-second (one core): **{per_core:.0f} req/s** "
                      f"(median over its short runs; target ≥ 1,500). The load generator alone costs "
                      f"{1000 / loadgen:.3f} CPU-ms per request, a ceiling of {loadgen:.0f} req/s on its core."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kiban_dev.gateway_bench", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command")
    run = sub.add_parser("run", help="the benchmark (default)")
    run.add_argument("--out", default=str(REPO / "bench" / "results"))
    run.add_argument("--concurrency", type=int, nargs="+", default=list(CONCURRENCY))
    run.add_argument("--requests", type=int, default=400, help="streamed requests per run (at least 4 x concurrency)")
    run.add_argument("--short-requests", type=int, default=3000)
    run.add_argument("--max-tokens", type=int, default=16)
    run.add_argument("--engines", type=int, default=2)
    run.add_argument("--speedup", type=float, default=200.0)
    run.add_argument("--repeats", type=int, default=2)
    run.add_argument("--gateway-cpu", type=int, default=0)
    run.add_argument("--loadgen-cpu", type=int, default=1)
    run.add_argument("--profile", action="store_true")
    gw = sub.add_parser("serve-gateway")
    gw.add_argument("--port", type=int, required=True)
    gw.add_argument("--admin-port", type=int, required=True)
    gw.add_argument("--upstream", type=int, action="append", required=True)
    gw.add_argument("--profile", default=None)
    lg = sub.add_parser("loadgen")
    lg.add_argument("--url", action="append", required=True)
    lg.add_argument("--concurrency", type=int, required=True)
    lg.add_argument("--requests", type=int, required=True)
    lg.add_argument("--max-tokens", type=int, default=16)
    lg.add_argument("--stream", action="store_true")
    args = parser.parse_args(argv if argv is not None else (sys.argv[1:] or ["run"]))
    if args.command in (None, "run"):
        if args.command is None:
            args = parser.parse_args(["run"])
        return bench(args)
    return serve_gateway(args) if args.command == "serve-gateway" else loadgen(args)


if __name__ == "__main__":
    sys.exit(main())
