"""The pod backer: on the local dev cluster, each Running engine pod is backed by a kiban-sim process.

kwok plays the kubelet, so a "Running" pod of a FoundationModel runs nothing. The backer watches
those pods (label app.kubernetes.io/managed-by=kiban plus kiban.dev/model) and, while a pod is
Running and not being deleted, keeps one simulator process for it listening on the pod's own IP
and port (the dev cluster gives pods loopback IPs, kiban_dev.devcluster.cluster), started with
what the pod's own spec says (served model name and --max-num-seqs from the vLLM args, the
engine profile from the accelerator-profile and model-parameters annotations, VLLM_API_KEY from
the Secret its env names). It also plays the kubelet's readiness probe: the pod's Ready
condition is set False when its simulator starts and True once the simulator's /health answers
200, so a pod is Ready exactly when its engine would serve (kwok alone marks it Ready at once).
For each backed pod it writes a Prometheus file_sd JSON file carrying the pod's identity
(namespace, pod, foundationmodel, model_name), which is how a PodMonitor would label the same
target in a real cluster. When the pod is terminating (deletionTimestamp set), stops Running
or goes away, the backer does what the kubelet does: SIGTERM to the simulator, SIGKILL after the
pod's terminationGracePeriodSeconds; the simulator drains for the pod's --shutdown-timeout, as
vLLM does, and its file_sd entry is removed once it exits.

Pure parts (`backing_for_pod`, `file_sd_document`, `profile_name_for`) are separate from the
`PodBacker`, the one class here that starts processes, watches the API and writes files.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import threading
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kiban.api.v1alpha1 import parameter_count
from kiban.builders.labels import (
    ACCELERATOR_PROFILE_ANNOTATION,
    MODEL_LABEL,
    MODEL_PARAMETERS_ANNOTATION,
    SERVED_MODEL_NAME_ANNOTATION,
)
from kiban.capacity.profiles import get_profile
from kiban_serving.sim.process import SimulatorProcess

log = logging.getLogger("kiban_dev.demo.backer")

ENGINE_POD_SELECTOR = f"app.kubernetes.io/managed-by=kiban,{MODEL_LABEL}"
ENGINE_CONTAINER = "vllm"
HEALTH_POLL_SECONDS = 0.5
FAILURE_THRESHOLD = 3  # a readiness probe's default failureThreshold: one slow answer is not "unready"


class BackingError(ValueError):
    """A pod cannot be backed by a simulator; the message names the pod and the missing field."""


@dataclass(frozen=True)
class Backing:
    """What one simulator process needs to stand in for one pod."""

    namespace: str
    pod: str
    uid: str
    foundation_model: str
    served_model_name: str
    engine_profile: str  # kiban.capacity.profiles key, e.g. nvidia-l4/8B
    max_num_seqs: int | None
    host: str = "127.0.0.1"  # the pod's IP
    port: int = 8000  # the engine container's port
    api_key_secret: tuple[str, str] | None = None  # (Secret, key) the engine's VLLM_API_KEY comes from
    lora_modules: tuple[str, ...] = ()  # --lora-modules NAME=PATH values of the pod's args
    shutdown_timeout_s: int = 0  # vLLM's --shutdown-timeout from the pod's args (0: abort on SIGTERM)
    grace_period_s: float = 30.0  # the pod's terminationGracePeriodSeconds (Kubernetes' default 30)

    @property
    def key(self) -> str:
        """A file-name-safe identity of the pod (namespace and name are DNS labels, so '_' is free)."""
        return f"{self.namespace}_{self.pod}"


def _get(obj: Any, *path: str) -> Any:
    """Nested field of a plain dict (what the API returns with sanitize/deserialize off)."""
    for part in path:
        if not isinstance(obj, Mapping):
            return None
        obj = obj.get(part)
    return obj


def arg_value(args: Sequence[str], flag: str) -> str | None:
    """The value after `flag` ("--flag value" or "--flag=value") in a vLLM argument list."""
    for index, arg in enumerate(args):
        if arg == flag and index + 1 < len(args):
            return args[index + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


def profile_name_for(accelerator_profile: str, parameters: str) -> str:
    """The simulator's engine profile for an accelerator profile and a model size ('8B')."""
    params_b = parameter_count(parameters) / 1e9
    return get_profile(accelerator_profile, params_b).name


def pod_is_serving(pod: Mapping) -> bool:
    """Running with an IP and not being deleted: the pod's engine would be up (or starting)."""
    return (_get(pod, "status", "phase") == "Running" and bool(_get(pod, "status", "podIP"))
            and not _get(pod, "metadata", "deletionTimestamp"))


def api_key_secret(container: Mapping) -> tuple[str, str] | None:
    """(Secret, key) of the container's VLLM_API_KEY, when it comes from a Secret."""
    for var in container.get("env") or ():
        ref = _get(var, "valueFrom", "secretKeyRef")
        if var.get("name") == "VLLM_API_KEY" and ref:
            return ref.get("name"), ref.get("key")
    return None


def backing_for_pod(pod: Mapping) -> Backing:
    """What to start for `pod`; BackingError naming the field when the pod lacks one."""
    meta = pod.get("metadata") or {}
    name = f"{meta.get('namespace')}/{meta.get('name')}"
    labels = meta.get("labels") or {}
    annotations = meta.get("annotations") or {}
    containers = _get(pod, "spec", "containers") or []
    engine = next((c for c in containers if c.get("name") == ENGINE_CONTAINER), containers[0] if containers else {})
    args = list(engine.get("args") or [])
    model = labels.get(MODEL_LABEL)
    if not model:
        raise BackingError(f"pod {name}: metadata.labels[{MODEL_LABEL}] is missing")
    served = annotations.get(SERVED_MODEL_NAME_ANNOTATION) or arg_value(args, "--served-model-name")
    if not served:
        raise BackingError(f"pod {name}: neither annotation {SERVED_MODEL_NAME_ANNOTATION} nor --served-model-name")
    accelerator = annotations.get(ACCELERATOR_PROFILE_ANNOTATION)
    if not accelerator:
        raise BackingError(f"pod {name}: metadata.annotations[{ACCELERATOR_PROFILE_ANNOTATION}] is missing")
    parameters = annotations.get(MODEL_PARAMETERS_ANNOTATION)
    if not parameters:
        raise BackingError(f"pod {name}: metadata.annotations[{MODEL_PARAMETERS_ANNOTATION}] is missing")
    try:
        profile = profile_name_for(accelerator, parameters)
    except (KeyError, ValueError) as exc:
        raise BackingError(f"pod {name}: no engine profile for {accelerator} {parameters}: {exc.args[0]}") from None
    seqs = arg_value(args, "--max-num-seqs")
    if seqs is not None and not seqs.isdigit():
        raise BackingError(f"pod {name}: --max-num-seqs must be an integer, got {seqs!r}")
    host = _get(pod, "status", "podIP")
    if not host:
        raise BackingError(f"pod {name}: status.podIP is not set yet")
    port = next((p.get("containerPort") for p in engine.get("ports") or () if p.get("name") == "http"), 8000)
    shutdown = arg_value(args, "--shutdown-timeout") or "0"
    if not shutdown.isdigit():
        raise BackingError(f"pod {name}: --shutdown-timeout must be an integer >= 0, got {shutdown!r}")
    grace = _get(pod, "spec", "terminationGracePeriodSeconds")
    return Backing(
        namespace=meta["namespace"], pod=meta["name"], uid=meta.get("uid", ""), foundation_model=model,
        served_model_name=served, engine_profile=profile, max_num_seqs=int(seqs) if seqs else None,
        host=host, port=int(port), api_key_secret=api_key_secret(engine), lora_modules=lora_modules(args),
        shutdown_timeout_s=int(shutdown), grace_period_s=float(grace if grace is not None else 30),
    )


def lora_modules(args: Sequence[str]) -> tuple[str, ...]:
    """The NAME=PATH values after --lora-modules in a vLLM argument list."""
    out: list[str] = []
    taking = False
    for arg in args:
        if arg == "--lora-modules":
            taking = True
        elif arg.startswith("-"):
            taking = False
        elif taking:
            out.append(arg)
    return tuple(out)


def target_labels(backing: Backing) -> dict[str, str]:
    """The labels Prometheus attaches to the pod's series (as a PodMonitor's relabelling would)."""
    return {
        "namespace": backing.namespace,
        "pod": backing.pod,
        "foundationmodel": backing.foundation_model,
        "model_name": backing.served_model_name,
    }


def file_sd_document(backing: Backing, address: str) -> list[dict]:
    """The file_sd JSON for one backed pod at `address` ("127.0.0.1:PORT")."""
    return [{"targets": [address], "labels": target_labels(backing)}]


def seed_for(backing: Backing) -> int:
    """A stable per-pod seed, so two replicas do not draw identical jitter."""
    return zlib.crc32(backing.key.encode()) & 0x7FFFFFFF


@dataclass
class BackedPod:
    """A running simulator for one pod, and whether it has finished its (simulated) start-up."""

    backing: Backing
    process: SimulatorProcess
    started_monotonic: float
    healthy: bool = False
    failures: int = 0  # consecutive failed health checks

    @property
    def url(self) -> str:
        return self.process.url

    @property
    def address(self) -> str:
        return f"{self.process.host}:{self.process.port}"


class PodBacker:
    """Watches engine pods and keeps one kiban-sim process per Running pod (see module doc).

    start() runs the watch in a daemon thread; stop() ends it and every simulator. Thread-safe
    readers: `ready_urls(model_name)` (pods whose simulator answers /health 200), `pids()`.
    """

    def __init__(
        self,
        api_client: Any,
        file_sd_dir: Path,
        log_dir: Path,
        *,
        namespace: str | None = None,
        startup_seconds: float = 15.0,
        speedup: float = 1.0,
        extra_sim_args: Sequence[str] = (),
    ) -> None:
        self.api_client = api_client
        self.file_sd_dir = Path(file_sd_dir)
        self.log_dir = Path(log_dir)
        self.namespace = namespace
        self.startup_seconds = startup_seconds
        self.speedup = speedup
        self.extra_sim_args = list(extra_sim_args)
        self._pods: dict[str, dict] = {}  # uid -> pod dict as last seen
        self._backed: dict[str, BackedPod] = {}  # uid -> simulator
        self._rejected: set[str] = set()
        self._draining: dict[str, BackedPod] = {}  # uid -> simulator given SIGTERM, not yet exited
        self._drain_threads: list[threading.Thread] = []
        # (monotonic seconds, served model name, simulators ready for it) at every change: when a
        # model had no ready replica (a wake from zero), for the demo's held-request accounting
        self.ready_changes: list[tuple[float, str, int]] = []
        self._lock = threading.RLock()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self.started_total = 0
        self.stopped_total = 0
        self.started_pids: set[int] = set()  # every simulator ever started, for "none left behind" checks

    # ---- lifecycle ------------------------------------------------------------------------
    def start(self) -> PodBacker:
        self.file_sd_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for target, name in ((self._watch_loop, "pod-backer-watch"), (self._health_loop, "pod-backer-health")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        """Stop watching, then stop every simulator and remove its file_sd entry."""
        self._stopping.set()
        for thread in self._threads:
            thread.join(timeout=10)
        self._threads = []
        with self._lock:
            for uid in list(self._backed):
                self._unback(uid, why="backer stopped")
            draining = list(self._draining.values())
        for backed in draining:  # the demo is over: no grace left to give
            backed.process.stop()
        for thread in self._drain_threads:
            thread.join(timeout=15)
        self._drain_threads = []

    def __enter__(self) -> PodBacker:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # ---- readers --------------------------------------------------------------------------
    def _note_ready(self, model_name: str) -> None:
        """Record the model's ready count when it changed (called with the lock held)."""
        count = len(self.ready_urls(model_name))
        last = next((c for t, m, c in reversed(self.ready_changes) if m == model_name), None)
        if count != last:
            self.ready_changes.append((time.monotonic(), model_name, count))

    def ready_urls(self, model_name: str | None = None) -> list[str]:
        with self._lock:
            return [b.url for b in self._backed.values()
                    if b.healthy and (model_name is None or b.backing.served_model_name == model_name)]

    def backed(self) -> list[BackedPod]:
        with self._lock:
            return list(self._backed.values())

    def draining(self) -> list[BackedPod]:
        """Simulators of terminating pods, given SIGTERM and not yet exited."""
        with self._lock:
            return list(self._draining.values())

    def pids(self) -> list[int]:
        """Every simulator process this backer has started and not yet seen exit."""
        with self._lock:
            return [b.process.process.pid for b in [*self._backed.values(), *self._draining.values()]
                    if b.process.process is not None]

    # ---- the watch ------------------------------------------------------------------------
    def _watch_loop(self) -> None:
        """List, then watch from that resourceVersion; relist on expiry or error (level-based)."""
        from kubernetes import client, watch
        from kubernetes.client.exceptions import ApiException

        core = client.CoreV1Api(self.api_client)
        if self.namespace:
            lister = lambda **kw: core.list_namespaced_pod(self.namespace, **kw)  # noqa: E731
        else:
            lister = core.list_pod_for_all_namespaces
        while not self._stopping.is_set():
            try:
                listed = lister(label_selector=ENGINE_POD_SELECTOR, _preload_content=False)
                body = json.loads(listed.data)
                with self._lock:
                    self._pods = {p["metadata"]["uid"]: p for p in body.get("items") or []}
                    self._sync()
                stream = watch.Watch()
                for event in self._raw_watch(stream, lister, body["metadata"]["resourceVersion"]):
                    if self._stopping.is_set():
                        stream.stop()
                        break
                    self._on_event(event)
            except ApiException as exc:
                if exc.status != 410:  # 410 Gone: the resourceVersion expired, relist quietly
                    log.warning("Watch of engine pods failed status=%s reason=%s; relisting", exc.status, exc.reason)
                    self._stopping.wait(1.0)
            except Exception as exc:  # noqa: BLE001 - the watch must outlive a dropped connection
                if self._stopping.is_set():
                    break
                log.warning("Watch of engine pods failed error=%r; relisting", exc)
                self._stopping.wait(1.0)

    def _raw_watch(self, stream: Any, lister: Any, resource_version: str):
        """Watch events as plain dicts (the typed models drop nothing we need, but dicts are cheaper)."""
        for event in stream.stream(lister, label_selector=ENGINE_POD_SELECTOR, resource_version=resource_version,
                                   timeout_seconds=5):
            raw = event.get("raw_object")
            if raw is None:
                raw = self.api_client.sanitize_for_serialization(event["object"])
            yield {"type": event["type"], "object": raw}

    def _on_event(self, event: Mapping) -> None:
        pod = event["object"]
        uid = _get(pod, "metadata", "uid")
        if not uid:
            return
        with self._lock:
            if event["type"] == "DELETED":
                self._pods.pop(uid, None)
            else:
                self._pods[uid] = dict(pod)
            self._sync()

    # ---- reconcile processes to pods (called with the lock held) ---------------------------
    def _sync(self) -> None:
        wanted = {uid for uid, pod in self._pods.items() if pod_is_serving(pod)}
        for uid in list(self._backed):
            if uid not in wanted:
                pod = self._pods.get(uid)
                self._terminate(uid, why="pod deleted" if pod is None else "pod terminating or no longer Running")
        for uid in wanted - set(self._backed):
            if uid in self._rejected:
                continue
            try:
                backing = backing_for_pod(self._pods[uid])
            except BackingError as exc:
                self._rejected.add(uid)
                log.warning("Skipped pod: %s", exc)
                continue
            self._back(uid, backing)

    def _back(self, uid: str, backing: Backing) -> None:
        args = ["--startup-seconds", f"{self.startup_seconds:g}", "--speedup", f"{self.speedup:g}",
                "--seed", str(seed_for(backing)), "--log-level", "WARNING", *self.extra_sim_args]
        if backing.max_num_seqs is not None:
            args += ["--max-num-seqs", str(backing.max_num_seqs)]
        if backing.shutdown_timeout_s:
            args += ["--shutdown-timeout", str(backing.shutdown_timeout_s)]
        if backing.lora_modules:
            args += ["--lora-modules", *backing.lora_modules]
        env = dict(os.environ)
        env.pop("VLLM_API_KEY", None)
        if backing.api_key_secret is not None:
            key = self._secret_value(backing.namespace, *backing.api_key_secret)
            if key is not None:
                env["VLLM_API_KEY"] = key
        process = SimulatorProcess(backing.served_model_name, backing.engine_profile, args, host=backing.host,
                                   port=backing.port, log_path=self.log_dir / f"sim-{backing.key}.log",
                                   env=env).start()
        backed = BackedPod(backing, process, time.monotonic())
        self._set_ready(backing, False)
        self._backed[uid] = backed
        self.started_total += 1
        self.started_pids.add(process.process.pid)
        self._write_file_sd(backing, backed.address)
        log.info("Started simulator for pod pod=%s namespace=%s profile=%s address=%s pid=%s",
                 backing.pod, backing.namespace, backing.engine_profile, backed.address, process.process.pid)

    def _unback(self, uid: str, why: str) -> None:
        """Stop the pod's simulator at once (the backer is stopping)."""
        backed = self._backed.pop(uid)
        self._remove_file_sd(backed.backing)
        backed.process.stop()
        self.stopped_total += 1
        log.info("Stopped simulator for pod pod=%s namespace=%s reason=%r",
                 backed.backing.pod, backed.backing.namespace, why)

    def _terminate(self, uid: str, why: str) -> None:
        """The kubelet's pod termination: SIGTERM now, SIGKILL after the pod's grace period. The
        simulator drains by its own --shutdown-timeout (as vLLM does) while a thread waits; its
        file_sd entry stays until it exits, as a PodMonitor keeps scraping a terminating pod."""
        backed = self._backed.pop(uid)
        self._draining[uid] = backed
        self._note_ready(backed.backing.served_model_name)
        process = backed.process.process
        if process is not None and process.poll() is None:
            process.terminate()
        log.info("Terminating simulator for pod pod=%s namespace=%s reason=%r grace_seconds=%g shutdown_timeout=%s",
                 backed.backing.pod, backed.backing.namespace, why, backed.backing.grace_period_s,
                 backed.backing.shutdown_timeout_s)
        thread = threading.Thread(target=self._reap, args=(uid, backed), name=f"pod-backer-drain-{backed.backing.pod}",
                                  daemon=True)
        thread.start()
        self._drain_threads.append(thread)

    def _reap(self, uid: str, backed: BackedPod) -> None:
        process = backed.process.process
        started = time.monotonic()
        killed = False
        if process is not None:
            try:
                process.wait(timeout=backed.backing.grace_period_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
                killed = True
        backed.process.stop()  # closes its log
        with self._lock:
            self._draining.pop(uid, None)
            if uid not in self._backed:
                self._remove_file_sd(backed.backing)
            self.stopped_total += 1
        log.info("Simulator for pod exited pod=%s namespace=%s after_seconds=%.1f killed=%s",
                 backed.backing.pod, backed.backing.namespace, time.monotonic() - started, killed)

    def _secret_value(self, namespace: str, name: str, key: str) -> str | None:
        """The Secret's value under key, as the kubelet would put it in the env (None when missing)."""
        import base64

        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        try:
            secret = client.CoreV1Api(self.api_client).read_namespaced_secret(name, namespace)
        except ApiException as exc:
            log.warning("Cannot read Secret %s/%s for a simulator's VLLM_API_KEY: %s", namespace, name, exc.status)
            return None
        encoded = (secret.data or {}).get(key)
        return base64.b64decode(encoded).decode() if encoded else None

    def _set_ready(self, backing: Backing, ready: bool) -> None:
        """The kubelet's readiness result: the pod's Ready and ContainersReady conditions."""
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        value = "True" if ready else "False"
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        patch = {"status": {"conditions": [
            {"type": t, "status": value, "lastTransitionTime": now} for t in ("Ready", "ContainersReady")]}}
        try:
            client.CoreV1Api(self.api_client).patch_namespaced_pod_status(backing.pod, backing.namespace, patch)
        except ApiException as exc:
            if exc.status != 404:  # a deleted pod needs no readiness
                log.warning("Failed to set pod readiness pod=%s ready=%s status=%s", backing.pod, ready, exc.status)

    def _write_file_sd(self, backing: Backing, address: str) -> None:
        path = self.file_sd_dir / f"{backing.key}.json"
        staging = path.with_suffix(".json.tmp")
        staging.write_text(json.dumps(file_sd_document(backing, address)))
        os.replace(staging, path)  # atomic: Prometheus never reads half a file

    def _remove_file_sd(self, backing: Backing) -> None:
        (self.file_sd_dir / f"{backing.key}.json").unlink(missing_ok=True)

    # ---- health: the kubelet readiness probe's stand-in ------------------------------------
    def _health_loop(self) -> None:
        while not self._stopping.wait(HEALTH_POLL_SECONDS):
            for backed in self.backed():
                status = _health_status(backed.url)
                exited = backed.process.process is not None and backed.process.process.poll() is not None
                with self._lock:
                    if self._backed.get(backed.backing.uid) is not backed:
                        continue  # unbacked while we were asking: its exit was ours
                    was = backed.healthy
                    backed.failures = 0 if status == 200 else backed.failures + 1
                    if exited or (status != 200 and (not was or backed.failures >= FAILURE_THRESHOLD)):
                        backed.healthy = False
                    elif status == 200:
                        backed.healthy = True
                    if backed.healthy != was:
                        self._note_ready(backed.backing.served_model_name)
                if backed.healthy != was:
                    self._set_ready(backed.backing, backed.healthy)
                if backed.healthy and not was:
                    log.info("Simulator became ready pod=%s namespace=%s after_seconds=%.1f", backed.backing.pod,
                             backed.backing.namespace, time.monotonic() - backed.started_monotonic)
                if exited:
                    log.warning("Simulator exited pod=%s code=%s log=%s", backed.backing.pod,
                                backed.process.process.returncode, backed.process.log_path)


def _health_status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url + "/health", timeout=1) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return None
