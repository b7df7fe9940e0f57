"""Operator scale benchmark, autoscaling on: 200, then 1,000 FoundationModels applied at once
on a fresh local control plane, with a real Prometheus answering for every model.

Prometheus scrapes a stand-in exporter (`FleetExporter`, named so: it is not vLLM and not the
simulator) that serves vLLM-shaped series (vLLM 0.33's names and labels: request counters,
running/waiting gauges, TTFT and prompt-token histograms, token sums) for every model, with
Poisson-drawn increments at a per-model rate, so the autoscaler's batched PromQL, its capacity
maths and its status writes run for real on every model. Every model autoscales (8B on H100,
TTFT p95 <= 500 ms, 1-2 replicas; the load is sized for one replica), so each has one pod:
the kwok node pool is sized to hold them.

Reported per round: time until every model has its Deployment ("all"), until every model is
converged (Deployment, the reconciler's status at the model's generation and the autoscaler's
first decision in status.scaling), p50/p99 of create -> Deployment, the operator's peak RSS
(with its capacity worker process), and the autoscaler's pass time over every model (the
operator's own "Autoscaler pass" log lines, the largest pass that covered the whole fleet).

Run: python -m kiban_dev.operator_bench [--sizes 200 1000] [--out bench/results/operator_scale.json]
     python -m kiban_dev.operator_bench --write-cost   # ms per status write, per CRD variant (docs/operations.md)
Targets: p99 <= 2 s at 200; all 1,000 converged within 60 s; peak RSS <= 300 MB at 1,000; one
autoscaler pass over 1,000 models <= 5 s. A benchmark, not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import http.server
import json
import math
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
GROUP, VERSION, PLURAL = "kiban.dev", "v1alpha1", "foundationmodels"


SCRAPE_INTERVAL = "5s"
AUTOSCALE_INTERVAL_S = 15
TTFT_BOUNDS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
TTFT_SHARES = (0.05, 0.35, 0.45, 0.12, 0.02, 0.01)  # of requests in each TTFT bucket (the last: above 1 s)
PROMPT_BOUNDS = (16, 64, 256, 1024, 4096)


def model(name: str) -> dict:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "FoundationModel",
        "metadata": {"name": name},
        "spec": {
            "model": {"uri": "hf://meta-llama/Llama-3.1-8B-Instruct", "parameters": "8B"},
            "accelerator": {"profile": "nvidia-h100-80gb"},
            "scaling": {"minReplicas": 1, "maxReplicas": 2, "replicas": 1, "slo": {"ttftP95Ms": 500}},
        },
    }


def model_rate(index: int) -> float:
    """Requests/s of model `index` (0.2 to 2.0 req/s, a spread of classes; one H100 replica
    sustains several times the largest)."""
    return 0.2 + (index % 10) * 0.2


class FleetExporter:
    """A stand-in exporter (not vLLM, not the simulator): vLLM 0.33-shaped series for every model
    of every round on one /metrics, advanced by Poisson draws at each model's rate on each scrape.
    Label `model_name` is the served name (the FoundationModel's name), `namespace` its
    namespace (kept with honor_labels, as a PodMonitor scrape would set it)."""

    def __init__(self, models: list[tuple[str, str, float]], seed: int = 7) -> None:
        self.models = models
        self.rng = random.Random(seed)
        self.state = {(ns, name): {"done": 0.0, "prompt": 0.0, "output": 0.0, "ttft": [0.0] * len(TTFT_SHARES),
                                   "prompts": [0.0] * (len(PROMPT_BOUNDS) + 1), "itl_sum": 0.0, "itl_count": 0.0}
                      for ns, name, _ in models}
        self.last = time.monotonic()
        self.lock = threading.Lock()
        exporter = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                body = exporter.render().encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def _poisson(self, mean: float) -> int:
        if mean > 30:  # normal approximation: a scrape interval of a busy model
            return max(0, round(self.rng.gauss(mean, math.sqrt(mean))))
        limit, k, product = math.exp(-mean), 0, self.rng.random()
        while product > limit:
            k += 1
            product *= self.rng.random()
        return k

    def render(self) -> str:
        with self.lock:
            now = time.monotonic()
            elapsed, self.last = now - self.last, now
            lines = []
            for ns, name, rate in self.models:
                st = self.state[(ns, name)]
                done = self._poisson(rate * elapsed)
                st["done"] += done
                st["prompt"] += done * 200.0
                st["output"] += done * 64.0
                for i, share in enumerate(TTFT_SHARES):
                    st["ttft"][i] += done * share
                for i, share in enumerate((0.05, 0.15, 0.5, 0.25, 0.05, 0.0)):
                    st["prompts"][i] += done * share
                st["itl_sum"] += done * 64 * 0.012
                st["itl_count"] += done * 64
                labels = f'model_name="{name}",namespace="{ns}",engine="0"'
                running = rate * 1.2
                lines += [
                    f"vllm:num_requests_running{{{labels}}} {running:.3f}",
                    f"vllm:num_requests_waiting{{{labels}}} 0",
                    f"vllm:kv_cache_usage_perc{{{labels}}} {min(0.95, 0.05 + rate / 10):.3f}",
                    f'vllm:request_success_total{{{labels},finished_reason="stop"}} {st["done"]:.0f}',
                    f"vllm:request_prompt_tokens_sum{{{labels}}} {st['prompt']:.0f}",
                    f"vllm:request_prompt_tokens_count{{{labels}}} {st['done']:.0f}",
                    f"vllm:request_generation_tokens_sum{{{labels}}} {st['output']:.0f}",
                    f"vllm:request_generation_tokens_count{{{labels}}} {st['done']:.0f}",
                    f"vllm:inter_token_latency_seconds_sum{{{labels}}} {st['itl_sum']:.3f}",
                    f"vllm:inter_token_latency_seconds_count{{{labels}}} {st['itl_count']:.0f}",
                ]
                cumulative = 0.0
                for bound, count in zip((*TTFT_BOUNDS, "+Inf"), st["ttft"]):
                    cumulative += count
                    lines.append(f'vllm:time_to_first_token_seconds_bucket{{{labels},le="{bound}"}} {cumulative:.0f}')
                cumulative = 0.0
                for bound, count in zip((*(float(b) for b in PROMPT_BOUNDS), "+Inf"), st["prompts"]):
                    cumulative += count
                    lines.append(f'vllm:request_prompt_tokens_bucket{{{labels},le="{bound}"}} {cumulative:.0f}')
            return "\n".join(lines) + "\n"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def process_tree(pid: int) -> list[int]:
    """pid and its descendants (the capacity worker process), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        todo.extend(children.get(current, []))
    return out


class RssSampler(threading.Thread):
    """Peak VmRSS of one process and its children together (the operator and its capacity worker),
    sampled every 0.5 s from /proc; the operator's own peak apart."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak, self.peak_main, self.peak_children, self._stop = pid, 0, 0, 0, threading.Event()

    @staticmethod
    def _rss(pid: int) -> int:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 0

    def run(self) -> None:
        while not self._stop.wait(0.5):
            if not Path(f"/proc/{self.pid}").exists():
                return
            main = self._rss(self.pid)
            children = sum(self._rss(p) for p in process_tree(self.pid)[1:])
            self.peak_main = max(self.peak_main, main)
            self.peak_children = max(self.peak_children, children)
            self.peak = max(self.peak, main + children)

    def stop(self) -> None:
        self._stop.set()


def _stamp(text: str) -> float:
    """An RFC 3339 creationTimestamp (whole seconds) as epoch seconds."""
    from datetime import datetime

    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def converged_models(custom, namespace: str) -> int:
    """Models with the reconciler's status at their generation and the autoscaler's decision."""
    items = json.loads(custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL,
                                                            _preload_content=False).data)["items"]
    done = 0
    for item in items:
        status = item.get("status") or {}
        if status.get("observedGeneration") == item["metadata"]["generation"] and (status.get("scaling") or {}).get(
                "desiredReplicas") is not None:
            done += 1
    return done


def autoscaler_passes(log_path: Path) -> list[tuple[int, float]]:
    """(models, seconds) of every "Autoscaler pass" line the operator logged."""
    found = []
    for line in log_path.read_text(errors="replace").splitlines():
        match = re.search(r'"Autoscaler pass" models=(\d+) seconds=([0-9.]+)', line)
        if match:
            found.append((int(match.group(1)), float(match.group(2))))
    return found


def run_round(api, namespace: str, count: int, timeout: float) -> dict:
    """Create `count` models at once from a thread pool and time each until its Deployment exists.

    Two latencies per model: the client's (create call returned -> Deployment ADDED seen on a
    watch, millisecond clock, the headline p50/p99) and the server's (FoundationModel
    creationTimestamp -> Deployment creationTimestamp, whole seconds, a cross-check immune to
    this process's own scheduling). Responses stay raw JSON (`_preload_content=False`): turning
    1,000 objects into client models took more CPU than the creates themselves.
    """
    from kubernetes import client
    from kubernetes.watch.watch import iter_resp_lines

    core, custom, apps = client.CoreV1Api(api), client.CustomObjectsApi(api), client.AppsV1Api(api)
    core.create_namespace({"metadata": {"name": namespace}}, _preload_content=False)
    seen: dict[str, float] = {}
    deployment_stamp: dict[str, float] = {}
    done = threading.Event()

    def watch_deployments() -> None:
        while not done.is_set() and len(seen) < count:  # a dropped watch is reopened (it lists again)
            try:
                resp = apps.list_namespaced_deployment(namespace, watch=True, timeout_seconds=30, _preload_content=False)
                for line in iter_resp_lines(resp):
                    event = json.loads(line)
                    metadata = event["object"].get("metadata") or {}
                    if event["type"] in ("ADDED", "MODIFIED") and "name" in metadata:
                        seen.setdefault(metadata["name"], time.monotonic())
                        deployment_stamp.setdefault(metadata["name"], _stamp(metadata["creationTimestamp"]))
                    if len(seen) >= count or done.is_set():
                        resp.close()
                        return
            except Exception as exc:  # noqa: BLE001 - keep measuring through API hiccups
                print(f"deployment watch reopened after {type(exc).__name__}", file=sys.stderr)

    watcher = threading.Thread(target=watch_deployments, daemon=True)
    watcher.start()
    time.sleep(0.5)  # let the watch open before the burst
    created: dict[str, float] = {}
    model_stamp: dict[str, float] = {}

    def create(index: int) -> None:
        name = f"m-{index:04d}"
        resp = custom.create_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, model(name), _preload_content=False
        )
        created[name] = time.monotonic()
        model_stamp[name] = _stamp(json.loads(resp.data)["metadata"]["creationTimestamp"])

    started = time.monotonic()
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(create, range(count)))
    applied = time.monotonic() - started
    deadline = started + timeout
    while len(seen) < count and time.monotonic() < deadline:
        time.sleep(0.1)
    done.set()
    all_deployments = round(max(seen.values()) - started, 2) if len(seen) >= count else None
    converged_at = None
    while time.monotonic() < deadline + 120:
        if converged_models(custom, namespace) >= count:
            converged_at = round(time.monotonic() - started, 2)
            break
        time.sleep(1.0)
    latencies = [seen[name] - created[name] for name in created if name in seen]
    server = [deployment_stamp[name] - model_stamp[name] for name in created if name in deployment_stamp]
    return {
        "converged_seconds": converged_at,
        "models": count,
        "apply_seconds": round(applied, 2),
        "deployments": len(latencies),
        "all_deployments_seconds": all_deployments,
        "p50_seconds": round(statistics.median(latencies), 3) if latencies else None,
        "p99_seconds": round(percentile(latencies, 0.99), 3) if latencies else None,
        "server_p50_seconds": statistics.median(server) if server else None,
        "server_p99_seconds": percentile(server, 0.99) if server else None,
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def crd_variants(crd: dict) -> dict[str, dict]:
    """The FoundationModel CRD as shipped, without its CEL rules, and with no schema at all, each
    under its own name: what a status write costs the API server for each (write_cost)."""
    import copy

    def renamed(kind: str) -> dict:
        out = copy.deepcopy(crd)
        plural = kind.lower() + "s"
        out["metadata"]["name"] = f"{plural}.{GROUP}"
        out["spec"]["names"] = {"plural": plural, "singular": kind.lower(), "kind": kind, "listKind": kind + "List"}
        return out

    def strip_rules(node: object) -> None:
        if isinstance(node, dict):
            node.pop("x-kubernetes-validations", None)
            for value in node.values():
                strip_rules(value)
        elif isinstance(node, list):
            for value in node:
                strip_rules(value)

    no_rules = renamed("NoRulesModel")
    strip_rules(no_rules)
    no_schema = renamed("NoSchemaModel")
    for version in no_schema["spec"]["versions"]:
        version.pop("additionalPrinterColumns", None)
        version["schema"] = {"openAPIV3Schema": {"type": "object", "properties": {
            part: {"type": "object", "x-kubernetes-preserve-unknown-fields": True} for part in ("spec", "status")}}}
    return {PLURAL: crd, "norulesmodels": no_rules, "noschemamodels": no_schema}


def write_cost(count: int = 100, rounds: int = 2) -> list[dict]:
    """Milliseconds per status write (server-side apply and merge patch, 1 and 8 client threads)
    and per GET, on a fresh control plane with nothing else running in it, for the shipped CRD
    and the two variants of crd_variants: what bounds the operator's write rate on this machine."""
    import yaml
    from kubernetes import client, config, dynamic

    from kiban_dev.devcluster import ControlPlane, tool_path, wait_crds_established

    shipped = yaml.safe_load((REPO / "crds" / "kiban.dev_foundationmodels.yaml").read_text())
    variants = crd_variants(shipped)
    rows = []
    with ControlPlane(node_pool={"cpu": 1}, startup_timeout=300) as cluster:
        kubectl = [str(tool_path("kubectl")), f"--kubeconfig={cluster.kubeconfig}"]
        for crd in variants.values():
            subprocess.run([*kubectl, "apply", "--server-side", "-f", "-"], input=yaml.safe_dump(crd).encode(),
                           check=True, capture_output=True)
        wait_crds_established(cluster.kubeconfig)
        api = config.new_client_from_config(config_file=str(cluster.kubeconfig))
        client.CoreV1Api(api).create_namespace({"metadata": {"name": "cost"}})
        custom, dyn = client.CustomObjectsApi(api), dynamic.DynamicClient(api)
        for plural, crd in variants.items():
            kind = crd["spec"]["names"]["kind"]
            for i in range(count):
                custom.create_namespaced_custom_object(GROUP, VERSION, "cost", plural,
                                                       {**model(f"m-{i:04d}"), "kind": kind})

        def status(i: int, k: int) -> dict:
            return {"scaling": {"desiredReplicas": 1, "arrivalRateRps": 0.1 * k + i * 0.001,
                                "reason": f"λ={k} req/s → 1 replicas"},
                    "conditions": [{"type": t, "status": "True", "reason": "R", "message": f"m {k}",
                                    "lastTransitionTime": "2026-12-02T00:00:00Z", "observedGeneration": 1}
                                   for t in ("MetricsAvailable", "ScalingActive")]}

        for k in range(rounds):
            for plural, crd in variants.items():
                kind = crd["spec"]["names"]["kind"]
                resource = dyn.resources.get(api_version=f"{GROUP}/{VERSION}", kind=kind)
                calls = {
                    "apply": lambda i: dyn.server_side_apply(
                        resource.subresources["status"], name=f"m-{i:04d}", namespace="cost",
                        body={"apiVersion": f"{GROUP}/{VERSION}", "kind": kind,
                              "metadata": {"name": f"m-{i:04d}", "namespace": "cost"}, "status": status(i, k)},
                        field_manager="kiban-autoscaler", force_conflicts=True),
                    "merge": lambda i: custom.patch_namespaced_custom_object_status(
                        GROUP, VERSION, "cost", plural, f"m-{i:04d}", {"status": status(i, k + 100)}),
                    "get": lambda i: custom.get_namespaced_custom_object(GROUP, VERSION, "cost", plural, f"m-{i:04d}"),
                }
                for call, fn in calls.items():
                    for threads in (1, 8):
                        started = time.perf_counter()
                        with ThreadPoolExecutor(threads) as pool:
                            list(pool.map(fn, range(count)))
                        ms = 1000 * (time.perf_counter() - started) / count
                        rows.append({"round": k, "crd": plural, "call": call, "threads": threads,
                                     "ms_per_call": round(ms, 1), "load_average": list(os.getloadavg())})
                        print(json.dumps(rows[-1]), flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[200, 1000])
    parser.add_argument("--write-cost", action="store_true",
                        help="only measure what one status write costs the API server (write_cost), per CRD variant")
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds to wait per round")
    parser.add_argument("--passes", type=int, default=3, help="autoscaler passes to time after each round")
    parser.add_argument("--out", type=Path, help="also write the results as JSON here")
    parser.add_argument("--memtrace", type=Path, metavar="DIR",
                        help="run the operator under kiban_dev.memtrace (tracemalloc) and dump a snapshot "
                             "and its memory figures into DIR after every round (slower: not for timings)")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the control plane on SIGTERM too
    if args.write_cost:
        rows = write_cost()
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(rows, indent=2) + "\n")
        return 0

    from kubernetes import config

    from kiban_dev.devcluster import ControlPlane, PrometheusServer, tool_path, wait_crds_established
    from kiban_dev.devcluster.prometheus import build_config, file_sd_scrape_config
    from kiban_dev.devcluster.processes import free_port

    total = sum(args.sizes)
    fleet = [(f"bench-{size}", f"m-{i:04d}", model_rate(i)) for size in args.sizes for i in range(size)]
    exporter = FleetExporter(fleet)
    nodes = {"h100": math.ceil(total / 8) + 2, "cpu": 1}  # one GPU per model's replica, and room
    with ControlPlane(node_pool=nodes, startup_timeout=300) as cluster, tempfile.TemporaryDirectory() as work:
        scrape = {**file_sd_scrape_config("fleet", Path(work) / "file_sd"), "honor_labels": True}
        prometheus = PrometheusServer(build_config([scrape], SCRAPE_INTERVAL), workdir=Path(work),
                                      scrape_interval=SCRAPE_INTERVAL)
        prometheus.start()
        prometheus.set_targets("fleet", [f"127.0.0.1:{exporter.port}"])
        kubectl = [str(tool_path("kubectl")), f"--kubeconfig={cluster.kubeconfig}"]
        for path in sorted((REPO / "crds").glob("*.yaml")):
            subprocess.run([*kubectl, "apply", "--server-side", "-f", str(path)], check=True, capture_output=True)
        wait_crds_established(cluster.kubeconfig)
        api = config.new_client_from_config(config_file=str(cluster.kubeconfig))
        log_path = Path(tempfile.gettempdir()) / "kiban-operator-scale.log"
        print(f"operator log: {log_path}; Prometheus {prometheus.url} scraping the stand-in exporter "
              f"({len(fleet)} models) every {SCRAPE_INTERVAL}", flush=True)
        log = open(log_path, "w")
        metrics_port = free_port()
        launcher = ["-m", "kiban_dev.memtrace", str(args.memtrace)] if args.memtrace else ["-m", "kiban"]
        operator = subprocess.Popen(
            [sys.executable, *launcher, "run", "--all-namespaces", "--metrics-port", str(metrics_port)],
            env={**os.environ, "KUBECONFIG": str(cluster.kubeconfig), "KIBAN_PROMETHEUS_URL": prometheus.url,
                 "KIBAN_AUTOSCALE_INTERVAL_SECONDS": str(AUTOSCALE_INTERVAL_S), "PYTHONUNBUFFERED": "1"},
            stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
        )
        sampler = RssSampler(operator.pid)
        sampler.start()
        time.sleep(8)  # the operator's first list/watch and the Lease
        results = []
        try:
            present = 0
            for size in args.sizes:
                result = run_round(api, f"bench-{size}", size, args.timeout)
                present += size
                before = len(autoscaler_passes(log_path))
                deadline = time.monotonic() + args.passes * AUTOSCALE_INTERVAL_S * 3 + 60
                while time.monotonic() < deadline:
                    passes = [p for p in autoscaler_passes(log_path)[before:] if p[0] >= present]
                    if len(passes) >= args.passes:
                        break
                    time.sleep(2)
                full = [seconds for models, seconds in autoscaler_passes(log_path)[before:] if models >= present]
                result["models_in_cluster"] = present
                result["autoscaler_pass_seconds_max"] = max(full) if full else None
                result["autoscaler_pass_seconds_median"] = statistics.median(full) if full else None
                result["autoscaler_passes_timed"] = len(full)
                result["operator_peak_rss_mb"] = round(sampler.peak / 2**20, 1)
                result["operator_main_process_peak_rss_mb"] = round(sampler.peak_main / 2**20, 1)
                result["operator_children_peak_rss_mb"] = round(sampler.peak_children / 2**20, 1)
                result["operator_main_rss_mb_now"] = round(RssSampler._rss(operator.pid) / 2**20, 1)
                result["operator_children_rss_mb_now"] = round(
                    sum(RssSampler._rss(p) for p in process_tree(operator.pid)[1:]) / 2**20, 1)
                if args.memtrace:
                    result["memtrace"] = memtrace_dump(operator.pid, args.memtrace, len(results) + 1)
                result["operator_metrics"] = operator_metrics(metrics_port)
                results.append(result)
                print(json.dumps(result), flush=True)
        finally:
            sampler.stop()
            operator.terminate()
            try:
                operator.wait(timeout=30)
            except subprocess.TimeoutExpired:
                operator.kill()
                operator.wait()
            log.close()
            prometheus.stop()
            exporter.stop()
    print(f"{'models':>7} {'all (s)':>8} {'converged (s)':>14} {'p50 (s)':>8} {'p99 (s)':>8} {'pass (s)':>9} "
          f"{'peak RSS (MB)':>14} {'load avg':>16}")
    for r in results:
        print(f"{r['models']:>7} {str(r['all_deployments_seconds']):>8} {str(r['converged_seconds']):>14} "
              f"{str(r['p50_seconds']):>8} {str(r['p99_seconds']):>8} {str(r['autoscaler_pass_seconds_max']):>9} "
              f"{r['operator_peak_rss_mb']:>14} {' '.join(str(x) for x in r['load_average']):>16}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


def memtrace_dump(pid: int, directory: Path, number: int, timeout: float = 120.0) -> str | None:
    """Ask the operator running under kiban_dev.memtrace for snapshot `number`; its stats file."""
    os.kill(pid, signal.SIGUSR1)
    path = directory / f"stats-{number}.json"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (directory / f"snap-{number}.pickle").exists():  # written (renamed) after the stats
            return str(path)
        time.sleep(0.5)
    return None


def operator_metrics(port: int) -> dict:
    """A few of the operator's own figures from its /metrics (pass time, Prometheus latency, loop lag)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            text = response.read().decode()
    except OSError:
        return {}
    values = {}
    for name in ("kiban_autoscaler_pass_duration_seconds", "kiban_event_loop_lag_seconds",
                 'kiban_prometheus_query_duration_seconds{result="ok"}'):
        base, _, labels = name.partition("{")
        total = count = 0.0
        for line in text.splitlines():
            if line.startswith(f"{base}_sum") and (not labels or labels.rstrip("}") in line):
                total = float(line.rsplit(" ", 1)[1])
            elif line.startswith(f"{base}_count") and (not labels or labels.rstrip("}") in line):
                count = float(line.rsplit(" ", 1)[1])
        values[base + "_mean"] = round(total / count, 4) if count else None
    return values


if __name__ == "__main__":
    sys.exit(main())
