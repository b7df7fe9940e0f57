"""Plain helpers the integration tests share (fixtures live in conftest.py next to this file).

Imported as `from support import ...`: pytest's default import mode puts this directory on
sys.path for the test modules here, as tests/unit/builders does with fm_cases.py.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from kiban_serving.loadgen.client import replay
from kiban_serving.sim.process import SimulatorProcess

REPO = Path(__file__).resolve().parents[2]
CRDS = Path(os.environ.get("KIBAN_DEV_CRDS", REPO / "crds"))


def wait_for(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.5) -> Any:
    """Poll `check` until it returns something truthy; fail naming `what` and the last value."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}; last seen: {last!r}")


def kubectl(kubeconfig: Path, *args: str, input_text: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """The pinned kubectl on `kubeconfig`; fails the test on a non-zero exit unless check=False."""
    from kiban_dev.devcluster import tool_path

    done = subprocess.run(
        [str(tool_path("kubectl")), f"--kubeconfig={kubeconfig}", *args],
        input=input_text, capture_output=True, text=True, timeout=60,
    )
    if check and done.returncode != 0:
        pytest.fail(f"kubectl {' '.join(args)} failed: {done.stderr}")
    return done


class LoggedProcess:
    """A child process (`self.args`, `self.env`) logging to `self.log_path`, stopped with SIGTERM
    (SIGKILL after 20 s). As a context manager it starts on enter and, on exit, stops and prints
    the log's tail (shown by pytest only when the test failed)."""

    args: list[str]
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen | None = None
    tail_chars = 20000

    def spawn(self) -> None:
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.args, env=self.env, stdout=self.log, stderr=subprocess.STDOUT, cwd=REPO)

    def start(self):
        self.spawn()
        return self

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        self.proc = None

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
        print(self.logs()[-self.tail_chars:])


class OperatorProcess(LoggedProcess):
    """`python -m kiban run -n NAMESPACE` as a child process, logs to a file, stopped with SIGTERM.

    Default flags but a 5 s resync (leader election is always on: the Lease lives in the watched
    namespace); `env` is added to os.environ (with KUBECONFIG and PYTHONUNBUFFERED), `unset`
    names variables removed from it. `launcher` is the command that `run ...` follows: this
    interpreter's `python -m kiban`, or a `podman run ... IMAGE` of the operator image (whose
    container then gets none of `env`). As a context manager it starts on enter and, on exit,
    stops and prints the log's tail (shown by pytest when the test failed).
    """

    def __init__(self, kubeconfig: Path, namespace: str, log_path: Path, *extra: str,
                 env: dict[str, str] | None = None, unset: tuple[str, ...] = (), metrics_port: int = 0,
                 launcher: Sequence[str] = (sys.executable, "-m", "kiban")) -> None:
        self.args = [
            *launcher, "run", "-n", namespace,
            "--metrics-port", str(metrics_port), "--resync-seconds", "5", *extra,
        ]
        self.env = {**os.environ, "KUBECONFIG": str(kubeconfig), "PYTHONUNBUFFERED": "1", **(env or {})}
        for name in unset:
            self.env.pop(name, None)
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None

    def kill(self) -> None:
        """kill -9: no cleanup, no Lease release (as a node failure or an OOM kill)."""
        if self.proc is None:
            return
        self.proc.kill()
        self.proc.wait()
        self.log.close()
        self.proc = None


# ---- FoundationModels: a body, typed reads and writes, waiting for a condition

FM_GROUP, FM_VERSION, FM_PLURAL = "kiban.dev", "v1alpha1", "foundationmodels"


def model_body(name: str, **spec_overrides: Any) -> dict:
    spec: dict[str, Any] = {
        "model": {"uri": "hf://Qwen/Qwen2.5-0.5B-Instruct", "parameters": "500M"},
        "accelerator": {"profile": "nvidia-l4"},
        "scaling": {"autoscaling": False, "minReplicas": 1, "maxReplicas": 4},
    }
    for key, value in spec_overrides.items():
        spec[key] = {**spec.get(key, {}), **value} if isinstance(value, dict) else value
    return {"apiVersion": f"{FM_GROUP}/{FM_VERSION}", "kind": "FoundationModel", "metadata": {"name": name}, "spec": spec}


class Cluster:
    """Typed reads and writes the tests use (the test's own client, not the operator's)."""

    def __init__(self, api, namespace: str) -> None:
        from kubernetes import client

        self.namespace = namespace
        self.custom = client.CustomObjectsApi(api)
        self.apps = client.AppsV1Api(api)
        self.core = client.CoreV1Api(api)

    def create_model(self, body: dict) -> dict:
        return self.custom.create_namespaced_custom_object(FM_GROUP, FM_VERSION, self.namespace, FM_PLURAL, body)

    def model(self, name: str) -> dict:
        return self.custom.get_namespaced_custom_object(FM_GROUP, FM_VERSION, self.namespace, FM_PLURAL, name)

    def patch_model(self, name: str, patch: dict) -> dict:
        return self.custom.patch_namespaced_custom_object(FM_GROUP, FM_VERSION, self.namespace, FM_PLURAL, name, patch)

    def condition(self, name: str, type_: str) -> dict | None:
        for cond in (self.model(name).get("status") or {}).get("conditions") or []:
            if cond["type"] == type_:
                return cond
        return None

    def deployment(self, name: str):
        from kubernetes.client.exceptions import ApiException

        try:
            return self.apps.read_namespaced_deployment(name, self.namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def replica_sets(self, name: str) -> list:
        return [
            rs for rs in self.apps.list_namespaced_replica_set(self.namespace).items
            if any(ref.name == name for ref in rs.metadata.owner_references or [])
        ]

    def pods(self) -> list:
        return self.core.list_namespaced_pod(self.namespace).items

    def events(self, reason: str) -> list:
        return [e for e in self.core.list_namespaced_event(self.namespace).items if e.reason == reason]


def condition_is(cluster: Cluster, name: str, type_: str, status: str, reason: str | None = None):
    def check():
        cond = cluster.condition(name, type_)
        if cond and cond["status"] == status and (reason is None or cond["reason"] == reason):
            return cond
        return None

    return check


def ready_with_running_pods(cluster: Cluster, name: str, operator: OperatorProcess, timeout: float = 90.0) -> dict:
    def check():
        if operator.proc is not None and operator.proc.poll() is not None:
            pytest.fail(f"the operator exited with {operator.proc.returncode}:\n{operator.logs()[-5000:]}")
        return condition_is(cluster, name, "Ready", "True")()

    return wait_for(check, timeout, what=f"{name} Ready=True", interval=0.25)


class BackgroundReplay:
    """kiban-load's replay() of the same requests against each URL, in a thread of its own,
    until done or stopped: load that runs while the test polls the cluster."""

    def __init__(self, urls: list[str], model: str, requests: list) -> None:
        self.loop = asyncio.new_event_loop()
        self.urls, self.model, self.requests = urls, model, requests
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        async def every_url():
            await asyncio.gather(*(replay(url, self.model, self.requests) for url in self.urls))

        asyncio.set_event_loop(self.loop)
        self.task = self.loop.create_task(every_url())
        try:
            self.loop.run_until_complete(self.task)
        except asyncio.CancelledError:
            pass
        finally:
            pending = asyncio.all_tasks(self.loop)
            for task in pending:
                task.cancel()
            self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            self.loop.close()

    def start(self) -> BackgroundReplay:
        self.thread.start()
        return self

    def stop(self) -> None:
        if self.thread.is_alive():
            self.loop.call_soon_threadsafe(lambda: self.task.cancel())
            self.thread.join(timeout=30)


def healthy_simulators(model: str, profile: str, count: int, log_dir: Path, extra_args: tuple[str, ...] = ()):
    """`count` kiban-sim processes started and healthy; a generator for a fixture to yield from,
    stopping every one afterwards."""
    sims = [SimulatorProcess(model, profile, ["--startup-seconds", "0", *extra_args],
                             log_path=log_dir / f"sim{i}.log") for i in range(count)]
    for sim in sims:
        sim.start()
    try:
        for sim in sims:
            sim.wait_healthy()
        yield sims
    finally:
        for sim in sims:
            sim.stop()


class GatewayProcess(LoggedProcess):
    """`python -m kiban gateway` as a child process on free loopback ports, logs to a file.

    Started on enter (waits until /readyz answers 200: both watches listed), stopped with SIGTERM
    on exit (`kill()` sends SIGKILL, as a node failure would).
    """

    tail_chars = 10000

    def __init__(self, kubeconfig: Path, namespace: str, log_path: Path, *, pod_name: str,
                 env: dict[str, str] | None = None) -> None:
        from kiban_serving.sim.process import free_port

        self.port, self.admin_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.admin_url = f"http://127.0.0.1:{self.admin_port}"
        self.args = [sys.executable, "-m", "kiban", "gateway", "--kubeconfig", str(kubeconfig), "-n", namespace,
                     "--host", "127.0.0.1", "--port", str(self.port), "--admin-host", "127.0.0.1",
                     "--admin-port", str(self.admin_port), "--pod-name", pod_name, "--shutdown-timeout", "5"]
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None

    def start(self, timeout_s: float = 90.0) -> GatewayProcess:
        import urllib.error
        import urllib.request

        self.spawn()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"kiban gateway exited with {self.proc.returncode}:\n{self.logs()[-3000:]}")
            try:
                with urllib.request.urlopen(self.admin_url + "/readyz", timeout=1) as response:
                    if response.status == 200:
                        return self
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.1)
        pytest.fail(f"kiban gateway did not become ready in {timeout_s:.0f}s:\n{self.logs()[-3000:]}")

    def metric(self, name: str, **labels: str) -> float:
        """One sample of the gateway's /metrics (0 when absent)."""
        import urllib.request

        from prometheus_client.parser import text_string_to_metric_families

        with urllib.request.urlopen(self.admin_url + "/metrics", timeout=5) as response:
            text = response.read().decode()
        total = 0.0
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    total += sample.value
        return total

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()


class StandInPrometheus:
    """A stand-in for Prometheus's query API on loopback (NOT Prometheus): it answers the
    collector's PromQL from a table of values by the metric each query reads, with labels for
    one model, and can be switched into garbage modes a real Prometheus (or a proxy in front of
    one) may produce: down, 5xx, invalid JSON, NaN, Inf, negative, absurd, empty, stale.

    Real Prometheus is what the other tests use; a stand-in is needed only to produce garbage on
    demand."""

    MODES = ("sane", "down", "5xx", "invalid-json", "nan", "inf", "negative", "absurd", "empty", "stale")

    def __init__(self, namespace: str, model_name: str, values: dict[str, float]) -> None:
        import http.server

        self.labels = {"namespace": namespace, "model_name": model_name}
        self.values = dict(values)
        self.mode = "sane"
        self.queries = 0
        stand_in = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                from urllib.parse import parse_qs, urlsplit

                params = parse_qs(urlsplit(self.path).query)
                code, body = stand_in.answer(params.get("query", [""])[0], float(params.get("time", ["0"])[0]))
                data = body.encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def metric(self, promql: str) -> str:
        """Which value a query reads (works for the per-model and the batched PromQL alike)."""
        if "histogram_quantile" in promql:
            return "ttft"
        if "delta(" in promql:
            return "growth"
        if "request_success_total" in promql:
            return "completions"
        if "request_prompt_tokens_sum" in promql:
            return "prompt"
        if "request_generation_tokens_sum" in promql:
            return "output"
        if "_bucket" in promql:
            return "buckets"
        if "cache_usage" in promql:
            return "kv"
        if "avg_over_time" in promql:
            return "batch"
        if "inter_token_latency" in promql:
            return "itl"
        if "count" in promql:
            return "engines"
        if "num_requests_waiting" in promql:
            return "waiting"
        return "running"

    def answer(self, promql: str, time_s: float) -> tuple[int, str]:
        import json as _json

        self.queries += 1
        mode, metric = self.mode, self.metric(promql)
        if mode == "5xx":
            return 503, "overloaded"
        if mode == "invalid-json":
            return 200, '{"status": "success", "data": {"resultType": "vector", "result": [{'
        value = self.values.get(metric, 0.0)
        text = repr(float(value))
        if mode == "nan":
            text = "NaN"
        elif mode == "inf":
            text = "+Inf"
        elif mode == "negative" and metric in ("completions", "running", "prompt"):
            text = "-5"
        elif mode == "absurd" and metric == "completions":
            text = "1.22e+14"
        stamp = time_s - 3600 if mode == "stale" else time_s
        if mode == "empty":
            result = []
        elif metric == "buckets":
            result = [{"metric": {**self.labels, "le": le}, "value": [stamp, text if mode != "sane" else repr(c)]}
                      for le, c in (("128", 0.0), ("512", value), ("+Inf", value))]
        elif metric in ("batch", "itl"):
            result = [{"metric": {**self.labels, "instance": "10.0.0.1:8000"}, "value": [stamp, text]}]
        else:
            result = [{"metric": dict(self.labels), "value": [stamp, text]}]
        return 200, _json.dumps({"status": "success", "data": {"resultType": "vector", "result": result}})

    def set_mode(self, mode: str) -> None:
        if mode not in self.MODES:
            raise ValueError(f"mode {mode!r} is not one of {self.MODES}")
        if mode == "down" and self.mode != "down":
            self.server.shutdown()
            self.server.server_close()
        elif mode != "down" and self.mode == "down":
            self._restart()
        self.mode = mode

    def _restart(self) -> None:
        import http.server

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), self.server.RequestHandlerClass)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        if self.mode != "down":
            self.server.shutdown()
            self.server.server_close()
