"""Runs the local demo end to end and owns every process it starts.

DemoStack (a context manager) brings up, in order: the dev control plane (real etcd,
kube-apiserver, controller-manager, scheduler; kwok GPU nodes), the CRDs from crds/, Prometheus
(scraping the backed pods through file_sd, the operator and the gateway), the PodBacker (one
kiban-sim per Running engine pod, on the pod's own loopback IP), the operator itself
(`python -m kiban run`, models exposed through the gateway by default) and the Kiban gateway
(`python -m kiban gateway`), as child processes. `apply_model()` applies examples/model.yaml;
`run_load()` replays the trace ramp through the gateway while sampling what the operator
decides. Leaving the context stops everything in reverse order, on success, error or Ctrl-C.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import yaml

from kiban_dev.devcluster import ControlPlane, PrometheusServer, tool_path, wait_crds_established
from kiban_dev.devcluster.processes import Component, free_port, pid_alive, start_component, stop_components
from kiban_dev.devcluster.prometheus import build_config
from kiban_dev.demo.backer import PodBacker
from kiban_dev.demo.record import DemoConfig, DemoResult, Sample
from kiban_dev.demo.schedule import ScaleEvent, no_ready_windows, phase_at, ramp, scale_events_from_api, windowed_rate
from kiban_serving.loadgen.client import replay
from kiban_serving.loadgen.report import summarize
from kiban_serving.loadgen.trace import read_azure_trace

log = logging.getLogger("kiban_dev.demo")

REPO = Path(__file__).resolve().parents[3]
FM_GROUP, FM_VERSION, FM_PLURAL = "kiban.dev", "v1alpha1", "foundationmodels"
ENGINE_JOB = "vllm"

def prometheus_config(file_sd_dir: Path, scrape_interval: str, operator_metrics: str | None,
                      gateway_metrics: str | None = None) -> dict:
    """Engines from file_sd (their own model_name label wins: honor_labels), plus the operator and the gateway."""
    jobs: list[dict] = [{
        "job_name": ENGINE_JOB,
        "honor_labels": True,
        "file_sd_configs": [{"files": [str(file_sd_dir / "*.json")], "refresh_interval": "1s"}],
    }]
    if operator_metrics:
        jobs.append({"job_name": "kiban-operator", "static_configs": [{"targets": [operator_metrics]}]})
    if gateway_metrics:
        jobs.append({"job_name": "kiban-gateway", "honor_labels": True,
                     "static_configs": [{"targets": [gateway_metrics]}]})
    return build_config(jobs, scrape_interval)


def model_manifest(path: Path, namespace: str, stabilization_window_s: int,
                   drift: dict | None = None, min_replicas: int | None = None) -> dict:
    """examples/model.yaml in `namespace`, with the demo's short scale-down window, drift windows
    and (min_replicas 0) applied at zero replicas, to be woken by the load's first request."""
    body = yaml.safe_load(path.read_text())
    body.setdefault("metadata", {})["namespace"] = namespace
    body["spec"].setdefault("scaling", {})["stabilizationWindowSeconds"] = stabilization_window_s
    if min_replicas is not None:
        body["spec"]["scaling"]["minReplicas"] = min_replicas
    if drift is not None:
        body["spec"]["drift"] = {**(body["spec"].get("drift") or {}), **drift}
    return body


def demo_drift_spec(config: DemoConfig) -> dict:
    return {"enabled": True, "windowSeconds": config.drift_window_s,
            "referenceWindowSeconds": config.drift_reference_s}


class DemoStack:
    """Every process of the demo (see module doc). Pass `kubeconfig` to use a running cluster."""

    def __init__(self, config: DemoConfig, *, kubeconfig: Path | None = None, create_namespace: bool = True,
                 echo: Callable[[str], None] = print) -> None:
        self.config = config
        self.echo = echo
        self.workdir = Path(config.out_dir) / "work"
        self._external_kubeconfig = kubeconfig
        self._create_namespace = create_namespace
        self.control_plane: ControlPlane | None = None
        self.prometheus: PrometheusServer | None = None
        self.backer: PodBacker | None = None
        self.operator: Component | None = None
        self.gateway: Component | None = None
        self.gateway_url = ""
        self.api = None
        self.all_pids: set[int] = set()  # every process this stack started, for the "none left" check
        self.sim_pids: set[int] = set()  # the backer's simulators (the backer adds to this set)

    # ---- lifecycle ------------------------------------------------------------------------
    def __enter__(self) -> DemoStack:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def kubeconfig(self) -> Path:
        if self._external_kubeconfig is not None:
            return self._external_kubeconfig
        assert self.control_plane is not None
        return self.control_plane.kubeconfig

    def _start(self) -> None:
        from kubernetes import config as k8s_config

        self.workdir.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        if self._external_kubeconfig is None:
            self.echo("Starting the control plane (etcd, kube-apiserver, controller-manager, scheduler, kwok GPU nodes)...")
            self.control_plane = ControlPlane(workdir=self.workdir / "cluster")
            self.control_plane.start()
            self.all_pids.update(self.control_plane.pids.values())
        self.api = k8s_config.new_client_from_config(config_file=str(self.kubeconfig))
        self._install_crds()
        if self._create_namespace:
            self._ensure_namespace()
        operator_port, gateway_port, gateway_admin_port = free_port(), free_port(), free_port()
        self.prometheus = PrometheusServer(workdir=self.workdir / "prometheus", scrape_interval=self.config.scrape_interval)
        self.prometheus.config = prometheus_config(self.prometheus.file_sd_dir, self.config.scrape_interval,
                                                   f"127.0.0.1:{operator_port}", f"127.0.0.1:{gateway_admin_port}")
        self.prometheus.start()
        self.all_pids.add(self.prometheus.pid)
        self.backer = PodBacker(self.api, self.prometheus.file_sd_dir, self.workdir / "sims",
                                namespace=self.config.namespace, startup_seconds=self.config.sim_startup_s)
        self.sim_pids = self.backer.started_pids
        self.backer.start()
        self.operator = start_component("kiban-operator", [
            sys.executable, "-m", "kiban", "run", "--standalone", "-n", self.config.namespace,
            "--metrics-port", str(operator_port), "--resync-seconds", "10",
        ], self.workdir / "logs", env={
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "KIBAN_PROMETHEUS_URL": self.prometheus.url,
            "KIBAN_AUTOSCALE_INTERVAL_SECONDS": f"{self.config.autoscale_interval_s:g}",
            "KIBAN_GATEWAY_DEFAULT": "true",
            "KIBAN_GATEWAY_URL": f"http://127.0.0.1:{gateway_port}",
            "KIBAN_DRIFT_MIN_SAMPLES": str(self.config.drift_min_samples),
            "KIBAN_TOKEN_WINDOW_SECONDS": f"{self.config.token_window_s:g}",
            "PYTHONUNBUFFERED": "1",
        })
        self.all_pids.add(self.operator.pid)
        self.gateway = start_component("kiban-gateway", [
            sys.executable, "-m", "kiban", "gateway", "--kubeconfig", str(self.kubeconfig), "-n", self.config.namespace,
            "--host", "127.0.0.1", "--port", str(gateway_port), "--admin-host", "127.0.0.1",
            "--admin-port", str(gateway_admin_port), "--pod-name", "demo-gateway",
        ], self.workdir / "logs", env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.all_pids.add(self.gateway.pid)
        self.gateway_url = f"http://127.0.0.1:{gateway_port}"
        self.echo(f"Up in {time.monotonic() - started:.1f} s: Prometheus {self.prometheus.url}, operator pid "
                  f"{self.operator.pid} (log {self.operator.log_path}), gateway {self.gateway_url}, "
                  f"namespace {self.config.namespace}")

    def stop(self) -> None:
        """Stop in reverse order; each step runs even when an earlier one failed."""
        steps: list[tuple[str, Callable[[], None]]] = []
        if self.gateway is not None:
            steps.append(("gateway", lambda: stop_components([self.gateway])))
        if self.operator is not None:
            steps.append(("operator", lambda: stop_components([self.operator])))
        if self.backer is not None:
            steps.append(("backer", self.backer.stop))
        if self.prometheus is not None:
            steps.append(("prometheus", self.prometheus.stop))
        if self.api is not None:
            steps.append(("api client", self.api.close))
        if self.control_plane is not None:
            steps.append(("control plane", self.control_plane.stop))
        for name, step in steps:
            try:
                step()
            except Exception as exc:  # noqa: BLE001 - keep stopping the rest
                log.warning("Failed to stop %s: %r", name, exc)
        self.gateway = self.operator = self.backer = self.prometheus = self.api = self.control_plane = None

    def live_pids(self) -> list[int]:
        """Processes this stack started that are still alive (empty after stop())."""
        return sorted(pid for pid in self.all_pids | self.sim_pids if pid_alive(pid))

    # ---- cluster steps --------------------------------------------------------------------
    def _kubectl(self, *args: str) -> str:
        done = subprocess.run([str(tool_path("kubectl")), f"--kubeconfig={self.kubeconfig}", *args],
                              capture_output=True, text=True, timeout=90)
        if done.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)} failed: {done.stderr.strip()}")
        return done.stdout

    def kubectl_get(self) -> str:
        """`kubectl get fm,deploy,pods` in the demo's namespace, as a person would type it."""
        try:
            return self._kubectl("get", "fm,deploy,pods", "-n", self.config.namespace)
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            return f"(kubectl get failed: {exc})"

    def wait_ready_condition(self, name: str, timeout_s: float = 60.0) -> dict | None:
        """The model's Ready condition once it is True (None if it is not within timeout_s)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            conditions = (self.read_model(name).get("status") or {}).get("conditions") or []
            ready = next((c for c in conditions if c.get("type") == "Ready"), None)
            if ready and ready.get("status") == "True":
                return ready
            time.sleep(0.5)
        return None

    def _install_crds(self) -> None:
        for path in sorted((REPO / "crds").glob("*.yaml")):
            self._kubectl("apply", "--server-side", "--force-conflicts", "-f", str(path))
        wait_crds_established(self.kubeconfig)

    def _ensure_namespace(self) -> None:
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        core = client.CoreV1Api(self.api)
        try:
            core.create_namespace({"metadata": {"name": self.config.namespace}})
        except ApiException as exc:
            if exc.status != 409:
                raise
        deadline = time.monotonic() + 30
        while True:
            try:
                core.read_namespaced_service_account("default", self.config.namespace)
                return
            except ApiException as exc:
                if exc.status != 404 or time.monotonic() > deadline:
                    raise
            time.sleep(0.2)

    def apply_model(self) -> dict:
        """Create the FoundationModel from the manifest; return what the API server stored."""
        from kubernetes import client

        body = model_manifest(self.config.model_manifest, self.config.namespace, self.config.stabilization_window_s,
                              demo_drift_spec(self.config), self.config.min_replicas)
        custom = client.CustomObjectsApi(self.api)
        stored = custom.create_namespaced_custom_object(FM_GROUP, FM_VERSION, self.config.namespace, FM_PLURAL, body)
        at_zero = ", minReplicas 0: applied at zero replicas" if self.config.min_replicas == 0 else ""
        self.echo(f"Applied FoundationModel {self.config.namespace}/{stored['metadata']['name']} "
                  f"from {self.config.model_manifest.name} (stabilizationWindowSeconds "
                  f"{self.config.stabilization_window_s} and {self.config.drift_window_s} s drift windows for the demo"
                  f"{at_zero})")
        return stored

    def delete_model(self, name: str, timeout_s: float = 30.0) -> None:
        """Delete the FoundationModel and wait until the operator has released its finalizer."""
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        custom = client.CustomObjectsApi(self.api)
        deadline = time.monotonic() + timeout_s
        try:
            custom.delete_namespaced_custom_object(FM_GROUP, FM_VERSION, self.config.namespace, FM_PLURAL, name)
            while time.monotonic() < deadline:
                custom.get_namespaced_custom_object(FM_GROUP, FM_VERSION, self.config.namespace, FM_PLURAL, name)
                time.sleep(0.2)
        except ApiException as exc:
            if exc.status != 404:
                raise
            return
        raise TimeoutError(f"FoundationModel {self.config.namespace}/{name} still exists {timeout_s:.0f} s after delete")

    def read_model(self, name: str) -> dict:
        from kubernetes import client

        return client.CustomObjectsApi(self.api).get_namespaced_custom_object(
            FM_GROUP, FM_VERSION, self.config.namespace, FM_PLURAL, name)

    def read_deployment(self, name: str) -> dict | None:
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        try:
            raw = client.AppsV1Api(self.api).read_namespaced_deployment(name, self.config.namespace,
                                                                        _preload_content=False)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return json.loads(raw.data)

    def wait_serving(self, served_model_name: str, timeout_s: float = 120.0) -> float:
        """Until one backed pod of the model is ready; returns the seconds it took."""
        assert self.backer is not None and self.operator is not None
        started = time.monotonic()
        while not self.backer.ready_urls(served_model_name):
            self.operator.check_alive()
            if time.monotonic() - started > timeout_s:
                raise TimeoutError(f"no simulator for {served_model_name} became ready within {timeout_s:.0f} s; "
                                   f"operator log: {self.operator.log_path}")
            time.sleep(0.25)
        return time.monotonic() - started

    # ---- the load -------------------------------------------------------------------------
    def run_load(self, stored_model: dict, on_sample: Callable[[Sample], None] | None = None,
                 stop_when: Callable[[list[Sample]], bool] | None = None) -> DemoResult:
        """Replay the ramp through the Kiban gateway, sampling every config.sample_every_s.

        `stop_when(samples)` returning True ends the load early (in-flight requests are
        cancelled and the result has no client report): the short e2e form uses it.
        """
        return asyncio.run(self._run_load(stored_model, on_sample, stop_when))

    async def _run_load(self, stored: dict, on_sample: Callable[[Sample], None] | None,
                        stop_when: Callable[[list[Sample]], bool] | None) -> DemoResult:
        assert self.backer is not None
        config = self.config
        name = stored["metadata"]["name"]
        served = (stored["spec"].get("model") or {}).get("servedModelName") or name
        slo = float(((stored["spec"].get("scaling") or {}).get("slo") or {}).get("ttftP95Ms") or math.nan)
        mixes = {p.mix for p in config.phases}
        traces = {mix: read_azure_trace(path, max_rows=config.trace_rows)
                  for mix, path in config.traces.items() if mix in mixes}
        requests = ramp(traces, config.phases, config.time_compression, seed=config.seed)
        result = DemoResult(config, name, served, slo, offered_arrivals_s=[r.arrival_s for r in requests])
        self.echo(f"Replaying {len(requests)} requests of the Azure {'/'.join(sorted(mixes))} traces over "
                  f"{config.load_seconds:.0f} s (phases {', '.join(f'{p.duration_s:g}s@{p.rate_rps:g}rps {p.mix}' for p in config.phases)}, "
                  f"trace time compressed {config.time_compression:g}x) through the Kiban gateway {self.gateway_url}")
        started, wall_started = time.monotonic(), time.time()
        loop = asyncio.get_running_loop()
        finished: list = []  # results as requests finish, so an early stop keeps them
        replay_task = asyncio.create_task(replay(self.gateway_url, served, requests, max_concurrency=config.max_concurrency,
                                                 request_timeout_s=config.request_timeout_s,
                                                 on_result=finished.append))
        try:
            while not replay_task.done():
                await asyncio.wait({replay_task}, timeout=config.sample_every_s)
                now = time.monotonic() - started
                sample = await loop.run_in_executor(None, self._sample, name, served, now, result.offered_arrivals_s)
                result.samples.append(sample)
                if on_sample is not None:
                    on_sample(sample)
                if stop_when is not None and stop_when(result.samples):
                    result.stopped_early = True
                    break
            result.results = replay_task.result() if not result.stopped_early else list(finished)
        finally:
            if not replay_task.done():
                replay_task.cancel()
                await asyncio.gather(replay_task, return_exceptions=True)
            result.requests_by_backend = await loop.run_in_executor(None, self._requests_by_pod, served)
        result.kubectl_get = await loop.run_in_executor(None, self.kubectl_get)
        result.api_scale_events = await loop.run_in_executor(None, self._scale_events, name, wall_started)
        status = self.read_model(name).get("status") or {}
        resolved = status.get("resolved") or {}
        result.gpus_per_replica = int(resolved.get("gpusPerReplica") or 1)
        ready = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), {})
        result.ready_condition = (f"Ready {ready.get('status')} ({ready.get('reason')}: {ready.get('message')}); "
                                  f"{resolved.get('gpusPerReplica')} x {resolved.get('accelerator')} GPU per replica")
        result.wall_seconds = time.monotonic() - started
        changes = [(t - started, count) for t, model, count in list(self.backer.ready_changes) if model == served]
        result.no_ready_windows = no_ready_windows(changes, result.wall_seconds)
        held = result.held_results
        target = None if math.isnan(slo) else slo
        held_ids = {id(r) for r in held}
        result.report = summarize([r for r in result.results if id(r) not in held_ids], slo_ttft_ms=target)
        result.held_report = summarize(held, slo_ttft_ms=target) if held else None
        return result

    def _scale_events(self, name: str, wall_started: float) -> list[ScaleEvent]:
        """The model's Scaled Events, timed from the load's start."""
        from kubernetes import client

        events = client.CoreV1Api(self.api).list_namespaced_event(
            self.config.namespace, field_selector=f"involvedObject.name={name},reason=Scaled").items
        pairs = []
        for event in events:
            stamp = event.event_time or event.last_timestamp or event.first_timestamp
            if stamp is not None:
                pairs.append((round(stamp.timestamp() - wall_started, 1), event.message or ""))
        return scale_events_from_api(pairs)

    def _sample(self, name: str, served: str, now: float, arrivals: list[float]) -> Sample:
        assert self.backer is not None and self.prometheus is not None
        model = self.read_model(name)
        deployment = self.read_deployment(name) or {}
        scaling = (model.get("status") or {}).get("scaling") or {}
        drift = (model.get("status") or {}).get("drift") or {}
        phase = phase_at(self.config.phases, now)
        window = max(10.0, 2 * self.config.sample_every_s)
        return Sample(
            time_s=round(now, 1),
            desired_replicas=(deployment.get("spec") or {}).get("replicas"),
            autoscaler_replicas=scaling.get("desiredReplicas"),
            pods_running=len(self.backer.backed()),
            sims_ready=len(self.backer.ready_urls(served)),
            offered_rps=round(windowed_rate(arrivals, now, window), 3),
            observed_rps=scaling.get("arrivalRateRps"),
            prom_ttft_p95_ms=self._prom_ttft_p95_ms(served),
            reason=scaling.get("reason"),
            predicted_ttft_p95_ms=scaling.get("predictedTtftP95Ms"),
            drift_detected=drift.get("detected"),
            drift_message=drift.get("message"),
            mix=phase.mix if phase is not None else None,
        )

    def _requests_by_pod(self, served: str) -> dict[str, int]:
        """Requests each engine pod finished, from its own series (what the gateway sent it)."""
        assert self.prometheus is not None
        try:
            values = self.prometheus.query(
                f'sum by (pod) (vllm:request_success_total{{job="{ENGINE_JOB}",model_name="{served}"}})')
        except Exception as exc:  # noqa: BLE001 - the summary says nothing rather than fail
            log.debug("Failed to query Prometheus: %r", exc)
            return {}
        return {v["metric"].get("pod", "?"): int(float(v["value"][1])) for v in values}

    def _prom_ttft_p95_ms(self, served: str) -> float | None:
        assert self.prometheus is not None
        query = ("histogram_quantile(0.95, sum by (le) (rate(vllm:time_to_first_token_seconds_bucket"
                 f'{{job="{ENGINE_JOB}",model_name="{served}"}}[30s])))')
        try:
            values = self.prometheus.query(query)
        except Exception as exc:  # noqa: BLE001 - a missed sample is shown as '-', not fatal
            log.debug("Failed to query Prometheus: %r", exc)
            return None
        if not values:
            return None
        value = float(values[0]["value"][1])
        return None if math.isnan(value) else round(value * 1e3, 1)


def write_outputs(result: DemoResult, out_dir: Path) -> dict[str, Path]:
    """summary.json, samples.json and demo.png under out_dir."""
    from kiban_dev.demo.plot import plot_demo

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"summary": out_dir / "summary.json", "samples": out_dir / "samples.json", "plot": out_dir / "demo.png"}
    paths["summary"].write_text(json.dumps(result.summary(), indent=2, default=str))
    paths["samples"].write_text(json.dumps([asdict(s) for s in result.samples], indent=2))
    plot_demo(result, paths["plot"])
    return paths

