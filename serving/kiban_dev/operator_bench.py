"""Operator scale benchmark: 200, then 1,000 FoundationModels applied at once on a fresh
local control plane; reports time until every model has its Deployment, p50/p99 of the
apply-to-Deployment latency, and the operator's peak resident memory.

Run: python -m kiban_dev.operator_bench [--sizes 200 1000] [--out bench/results/operator_scale.json]
Targets: p99 < 2 s at 200; all 1,000 within 60 s; operator peak RSS < 300 MB.
"all" is measured from the first create; p50/p99 from each create's response to its
Deployment's watch event (and, as a cross-check, between the two creationTimestamps).

The models ask for 0 replicas (autoscaling off), so the figures measure the operator
(watch -> reconcile -> server-side apply -> status) rather than the scheduler and kwok moving
thousands of pods. A benchmark, not a test: it asserts nothing and prints what it measured.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
GROUP, VERSION, PLURAL = "kiban.dev", "v1alpha1", "foundationmodels"


def model(name: str) -> dict:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "FoundationModel",
        "metadata": {"name": name},
        "spec": {
            "model": {"uri": "hf://Qwen/Qwen2.5-0.5B-Instruct", "parameters": "500M"},
            "accelerator": {"profile": "nvidia-l4"},
            "scaling": {"autoscaling": False, "minReplicas": 0, "maxReplicas": 1},
        },
    }


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


class RssSampler(threading.Thread):
    """Peak VmRSS of one process, sampled every 0.2 s from /proc."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak, self._stop = pid, 0, threading.Event()

    def run(self) -> None:
        while not self._stop.wait(0.2):
            try:
                for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        self.peak = max(self.peak, int(line.split()[1]) * 1024)
            except OSError:
                return

    def stop(self) -> None:
        self._stop.set()


def _stamp(text: str) -> float:
    """An RFC 3339 creationTimestamp (whole seconds) as epoch seconds."""
    from datetime import datetime

    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


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
    latencies = [seen[name] - created[name] for name in created if name in seen]
    server = [deployment_stamp[name] - model_stamp[name] for name in created if name in deployment_stamp]
    return {
        "models": count,
        "apply_seconds": round(applied, 2),
        "deployments": len(latencies),
        "all_deployments_seconds": round(max(seen.values()) - started, 2) if len(latencies) == count else None,
        "p50_seconds": round(statistics.median(latencies), 3) if latencies else None,
        "p99_seconds": round(percentile(latencies, 0.99), 3) if latencies else None,
        "server_p50_seconds": statistics.median(server) if server else None,
        "server_p99_seconds": percentile(server, 0.99) if server else None,
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[200, 1000])
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds to wait per round")
    parser.add_argument("--out", type=Path, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the control plane on SIGTERM too

    from kubernetes import config

    from kiban_dev.devcluster import ControlPlane, tool_path, wait_crds_established

    with ControlPlane() as cluster:
        kubectl = [str(tool_path("kubectl")), f"--kubeconfig={cluster.kubeconfig}"]
        for path in sorted((REPO / "crds").glob("*.yaml")):
            subprocess.run([*kubectl, "apply", "--server-side", "-f", str(path)], check=True, capture_output=True)
        wait_crds_established(cluster.kubeconfig)
        api = config.new_client_from_config(config_file=str(cluster.kubeconfig))
        log_path = Path(tempfile.gettempdir()) / "kiban-operator-scale.log"
        print(f"operator log: {log_path}", flush=True)
        log = open(log_path, "w")
        operator = subprocess.Popen(
            [sys.executable, "-m", "kiban", "run", "--standalone", "--all-namespaces", "--metrics-port", "0"],
            env={**os.environ, "KUBECONFIG": str(cluster.kubeconfig)}, stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
        )
        sampler = RssSampler(operator.pid)
        sampler.start()
        time.sleep(5)  # the operator's first list/watch
        results = []
        try:
            for size in args.sizes:
                result = run_round(api, f"bench-{size}", size, args.timeout)
                result["operator_peak_rss_mb"] = round(sampler.peak / 2**20, 1)
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
    print(f"{'models':>7} {'all (s)':>8} {'p50 (s)':>8} {'p99 (s)':>8} {'server p99 (s)':>15} "
          f"{'peak RSS (MB)':>14} {'load avg':>16}")
    for r in results:
        print(f"{r['models']:>7} {str(r['all_deployments_seconds']):>8} {str(r['p50_seconds']):>8} "
              f"{str(r['p99_seconds']):>8} {str(r['server_p99_seconds']):>15} {r['operator_peak_rss_mb']:>14} "
              f"{' '.join(str(x) for x in r['load_average']):>16}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
