"""A real Kubernetes control plane as local processes, with kwok simulating GPU nodes.

etcd, kube-apiserver, kube-controller-manager and kube-scheduler are the genuine binaries (the
way controller-runtime's envtest runs them); kwok plays the kubelets, moving nodes to Ready and
pods to Running/Ready with pod IPs from a loopback /20 (`pod_cidr`), where a simulator can
listen as the pod's engine. Everything listens on free loopback ports and writes into one
work directory; stop() ends every process group it started.
"""

from __future__ import annotations

import atexit
import logging
import random
import shutil
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path

import yaml

from kiban_dev.devcluster import nodes as node_builders
from kiban_dev.devcluster.leaderworkerset import LeaderWorkerSetError, start_leaderworkerset
from kiban_dev.devcluster.pki import ADMIN_USER, FRONT_PROXY_USER, Pki, create_pki
from kiban_dev.devcluster.processes import (
    Component,
    ComponentError,
    free_port,
    group_pids,
    rss_bytes,
    start_component,
    stop_components,
)
from kiban_dev.devcluster.tools import kwok_stages_path, lws_crd_paths, tool_path

log = logging.getLogger(__name__)

SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
SERVICE_CLUSTER_IP_RANGE = "10.96.0.0/16"
# Pod IPs come from a loopback /20 (kwok hands them out in order): a simulator standing in for a
# pod's engine listens on the pod's own IP, and tests send traffic only to this machine's
# loopback range. Each control plane draws its own /20 (4,094 pods: the 1,000-model operator
# benchmark fits), so two running at once are unlikely to collide.
POD_CIDR_TEMPLATE = "127.{}.{}.0/20"


def random_pod_cidr(rng: random.Random | None = None) -> str:
    """A loopback /20 in 127.64.0.0 - 127.254.240.0 (clear of 127.0.0.x, where servers bind)."""
    rng = rng or random.Random()
    return POD_CIDR_TEMPLATE.format(rng.randint(64, 254), 16 * rng.randint(0, 15))
# free ports are picked, released and then bound by the child; on a shared machine another process
# can take one in between, so a start that failed only for that reason is tried again
PORT_TAKEN = "address already in use"
START_ATTEMPTS = 3
# what the LeaderWorkerSet controller adds to a start: its 2.8 MB of CRDs take seconds to be
# Established on two busy cores (measured 7-21 s), then the controller and its webhooks
LWS_START_SECONDS = 60.0


class ControlPlaneError(RuntimeError):
    """The control plane could not start; the message names the component and its log tail."""


def admin_kubeconfig(server: str, pki: Pki, cluster_name: str = "kiban-dev") -> dict:
    """A kubeconfig for the system:masters admin (pure: paths, not embedded data)."""
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": cluster_name, "cluster": {"server": server, "certificate-authority": str(pki.ca_cert)}}],
        "users": [{"name": ADMIN_USER, "user": {
            "client-certificate": str(pki.admin_cert), "client-key": str(pki.admin_key)}}],
        "contexts": [{"name": cluster_name, "context": {"cluster": cluster_name, "user": ADMIN_USER}}],
        "current-context": cluster_name,
    }


def etcd_args(data_dir: Path, client_port: int, peer_port: int) -> list[str]:
    client, peer = f"http://127.0.0.1:{client_port}", f"http://127.0.0.1:{peer_port}"
    return [
        "--name=kiban", f"--data-dir={data_dir}",
        f"--listen-client-urls={client}", f"--advertise-client-urls={client}",
        f"--listen-peer-urls={peer}", f"--initial-advertise-peer-urls={peer}",
        f"--initial-cluster=kiban={peer}",
        "--unsafe-no-fsync=true",  # throwaway data: durability buys nothing, fsync costs seconds
        "--log-level=warn",
    ]


def apiserver_args(etcd_port: int, secure_port: int, pki: Pki) -> list[str]:
    return [
        f"--etcd-servers=http://127.0.0.1:{etcd_port}",
        "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", f"--secure-port={secure_port}",
        f"--tls-cert-file={pki.serving_cert}", f"--tls-private-key-file={pki.serving_key}",
        f"--client-ca-file={pki.ca_cert}",
        # request-header authentication, published in kube-system/extension-apiserver-authentication,
        # which the controller-manager and scheduler (and any aggregated API server) read
        f"--requestheader-client-ca-file={pki.ca_cert}",
        f"--requestheader-allowed-names={FRONT_PROXY_USER}",
        "--requestheader-username-headers=X-Remote-User",
        "--requestheader-group-headers=X-Remote-Group",
        "--requestheader-extra-headers-prefix=X-Remote-Extra-",
        f"--proxy-client-cert-file={pki.front_proxy_cert}", f"--proxy-client-key-file={pki.front_proxy_key}",
        "--authorization-mode=Node,RBAC",
        f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
        f"--service-account-key-file={pki.service_account_pub}",
        f"--service-account-signing-key-file={pki.service_account_key}",
        f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
        # a loopback address cannot be an Endpoints address; no in-cluster client needs it here
        "--endpoint-reconciler-type=none",
        "--allow-privileged=true",
        "--profiling=false",
    ]


def controller_manager_args(kubeconfig: Path, secure_port: int, pki: Pki) -> list[str]:
    return [
        f"--kubeconfig={kubeconfig}",
        f"--authentication-kubeconfig={kubeconfig}", f"--authorization-kubeconfig={kubeconfig}",
        "--controllers=*",
        "--leader-elect=false",
        "--bind-address=127.0.0.1", f"--secure-port={secure_port}",
        f"--service-account-private-key-file={pki.service_account_key}",
        f"--root-ca-file={pki.ca_cert}",
        f"--cluster-signing-cert-file={pki.ca_cert}", f"--cluster-signing-key-file={pki.ca_key}",
        f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
        "--kube-api-qps=200", "--kube-api-burst=400",
        "--profiling=false",
    ]


def scheduler_args(kubeconfig: Path, secure_port: int) -> list[str]:
    return [
        f"--kubeconfig={kubeconfig}",
        f"--authentication-kubeconfig={kubeconfig}", f"--authorization-kubeconfig={kubeconfig}",
        "--leader-elect=false",
        "--bind-address=127.0.0.1", f"--secure-port={secure_port}",
        "--kube-api-qps=200", "--kube-api-burst=400",
        "--profiling=false",
    ]


def kwok_args(kubeconfig: Path, stages: Path, pod_cidr: str) -> list[str]:
    return [
        f"--kubeconfig={kubeconfig}", f"--config={stages}",
        "--manage-all-nodes=false",
        "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
        "--node-lease-duration-seconds=40",  # kwok renews Leases, so the node controller keeps nodes Ready
        f"--cidr={pod_cidr}",
    ]


def wait_crds_established(kubeconfig: Path, *names: str, timeout_s: float = 60.0) -> None:
    """`kubectl wait --for=condition=Established crd NAMES` (every CRD without names), retried:
    kubectl's wait fails at once ("accessor error: <nil>") on a CRD the API server has not given
    a status yet, which a busy control plane shows for a moment after the apply."""
    args = [str(tool_path("kubectl")), f"--kubeconfig={kubeconfig}", "wait", "--for=condition=Established",
            "crd", *(names or ("--all",))]
    deadline = time.monotonic() + timeout_s
    while True:
        left = max(1, int(deadline - time.monotonic()))
        done = subprocess.run([*args, f"--timeout={left}s"], capture_output=True, text=True, timeout=left + 30)
        if done.returncode == 0:
            return
        if time.monotonic() >= deadline:
            raise ControlPlaneError(f"CRDs not Established within {timeout_s:.0f}s: {done.stderr.strip()}")
        time.sleep(0.5)


class ControlPlane:
    """etcd + kube-apiserver + controller-manager + scheduler + kwok with simulated GPU nodes.

    Use as a context manager, or call start() and stop(). `node_pool` maps node kinds
    (see kiban_dev.devcluster.nodes.NODE_KINDS) to counts; None gives the default pool.
    leaderworkerset: also run the real LeaderWorkerSet controller with its webhooks (or call
    start_leaderworkerset() on a running control plane).
    """

    def __init__(self, node_pool: Mapping[str, int] | None = None, workdir: Path | None = None,
                 startup_timeout: float = 60.0, pod_cidr: str | None = None,
                 leaderworkerset: bool = False) -> None:
        self.node_pool = dict(node_builders.DEFAULT_POOL if node_pool is None else node_pool)
        self._nodes = node_builders.build_pool(self.node_pool)  # validate early: bad input fails here
        self._own_workdir = workdir is None
        self._workdir = Path(workdir).resolve() if workdir is not None else None  # kubeconfig paths must be absolute
        self.startup_timeout = startup_timeout
        self.pod_cidr = pod_cidr or random_pod_cidr()
        self.leaderworkerset = leaderworkerset
        self.components: list[Component] = []
        self.started_pids: dict[str, int] = {}  # kept after stop(), so callers can check none survive
        self.start_seconds: float | None = None
        self.phase_seconds: dict[str, float] = {}  # where start-up time went, for reports
        self._api_server_url: str | None = None
        self._kubeconfig: Path | None = None
        self._pki: Pki | None = None

    # ---- public surface -------------------------------------------------------------------
    @property
    def workdir(self) -> Path:
        if self._workdir is None:
            raise ControlPlaneError("the control plane has not been started")
        return self._workdir

    @property
    def kubeconfig(self) -> Path:
        if self._kubeconfig is None:
            raise ControlPlaneError("the control plane has not been started")
        return self._kubeconfig

    @property
    def api_server_url(self) -> str:
        if self._api_server_url is None:
            raise ControlPlaneError("the control plane has not been started")
        return self._api_server_url

    @property
    def node_names(self) -> list[str]:
        return [node["metadata"]["name"] for node in self._nodes]

    @property
    def pids(self) -> dict[str, int]:
        return {component.name: component.pid for component in self.components}

    def rss_bytes(self) -> int:
        """Resident memory of every process the control plane started."""
        return rss_bytes([pid for component in self.components for pid in group_pids(component.pid)])

    def __enter__(self) -> ControlPlane:
        self.start()
        return self

    # ---- one component at a time (fault tests) -----------------------------------------------
    RESTARTABLE = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")

    def _component(self, name: str) -> Component:
        if name not in self.RESTARTABLE:
            raise ControlPlaneError(f"component {name!r} is not one of {', '.join(self.RESTARTABLE)}")
        for component in self.components:
            if component.name == name:
                return component
        raise ControlPlaneError(f"component {name!r} is not running")

    def stop_component(self, name: str, grace_seconds: float = 2.0) -> None:
        """Stop one component (its whole process group; SIGKILL after `grace_seconds`), keeping its
        data and ports: an outage, as a crashed or restarted control-plane node gives."""
        component = self._component(name)
        stop_components([component], grace_seconds=grace_seconds)
        log.info("Stopped component", extra={"component": name})

    def start_component(self, name: str, timeout: float = 60.0) -> None:
        """Start a stopped component again with the same arguments, ports and data; return once
        it is healthy (etcd /health, kube-apiserver /readyz, the others: running)."""
        old = self._component(name)
        if old.running():
            raise ControlPlaneError(f"component {name!r} is still running")
        component = start_component(name, old.argv, old.log_path.parent)
        self.components[self.components.index(old)] = component
        self.started_pids[name] = component.pid
        deadline = time.monotonic() + timeout
        if name == "etcd":
            port = next(a.rsplit(":", 1)[1] for a in old.argv if a.startswith("--listen-client-urls="))
            self._wait(component, deadline, "did not report healthy after a restart",
                       lambda: _http_ok(f"http://127.0.0.1:{port}/health"))
        elif name == "kube-apiserver":
            tls = _client_tls(self._pki)
            self._wait(component, deadline, "did not become ready (/readyz) after a restart",
                       lambda: _http_ok(f"{self.api_server_url}/readyz", tls))
        else:
            time.sleep(0.5)
            component.check_alive()
        log.info("Restarted component", extra={"component": name, "pid": component.pid})

    def wait_controllers(self, timeout: float = 90.0) -> float:
        """Block until the controllers act again (a probe namespace gets its default
        ServiceAccount): after an API server or etcd restart their watches take tens of seconds
        to come back. Returns the seconds waited."""
        import uuid

        from kubernetes import client, config
        from kubernetes.client.exceptions import ApiException

        started = time.monotonic()
        name = f"kiban-probe-{uuid.uuid4().hex[:6]}"
        with config.new_client_from_config(config_file=str(self.kubeconfig)) as api_client:
            core = client.CoreV1Api(api_client)
            self._retry_api(lambda: core.create_namespace({"metadata": {"name": name}}), started + timeout,
                            self._component("kube-apiserver"))
            try:
                while time.monotonic() - started < timeout:
                    try:
                        core.read_namespaced_service_account("default", name)
                        return time.monotonic() - started
                    except ApiException as exc:
                        if exc.status != 404:
                            raise
                    time.sleep(0.5)
                raise ControlPlaneError(f"the controllers did not act within {timeout:.0f}s")
            finally:
                try:
                    core.delete_namespace(name)
                except ApiException:
                    pass

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> None:
        """Start every component, create the nodes, return once the API and all nodes are Ready.

        On failure every started process is stopped, the work directory is kept for its logs, and
        ControlPlaneError names the component with the tail of its log.
        """
        if self.components:
            raise ControlPlaneError("the control plane is already running")
        binaries = {name: tool_path(name) for name in (
            "etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok",
            *(("lws-controller", "kubectl") if self.leaderworkerset else ()))}
        if self.leaderworkerset:
            lws_crd_paths()  # a missing tool fails before anything starts
        stages = kwok_stages_path()
        started = time.monotonic()
        if self._workdir is None:
            self._workdir = Path(tempfile.mkdtemp(prefix="kiban-devcluster-"))
        self._workdir.mkdir(parents=True, exist_ok=True)
        for attempt in range(1, START_ATTEMPTS + 1):
            atexit.register(self.stop)
            try:
                extra = LWS_START_SECONDS if self.leaderworkerset else 0.0
                self._start(binaries, stages, started + self.startup_timeout + extra)
                break
            except ControlPlaneError as exc:
                self.stop(keep_workdir=True)
                if PORT_TAKEN not in str(exc) or attempt == START_ATTEMPTS:
                    raise
                log.warning("Retrying start after a port was taken", extra={"attempt": attempt})
            except BaseException:
                self.stop(keep_workdir=True)
                raise
        self.start_seconds = time.monotonic() - started
        log.info("Started control plane", extra={
            "kubeconfig": str(self.kubeconfig), "seconds": round(self.start_seconds, 2),
            "nodes": len(self._nodes)})

    @property
    def leaderworkerset_running(self) -> bool:
        return any(c.name == "lws-controller" and c.running() for c in self.components)

    def start_leaderworkerset(self, timeout: float | None = None) -> None:
        """Install the LeaderWorkerSet CRDs and run its controller and webhooks beside this running
        control plane (kiban_dev.devcluster.leaderworkerset); stop() stops it with the rest."""
        if not self.components or self._pki is None:
            raise ControlPlaneError("start the control plane before the LeaderWorkerSet controller")
        if self.leaderworkerset_running:
            return
        started = time.monotonic()
        try:
            component = start_leaderworkerset(self.kubeconfig, self._pki, self.workdir,
                                              started + (timeout or LWS_START_SECONDS))
        except LeaderWorkerSetError as exc:
            raise ControlPlaneError(f"LeaderWorkerSet: {exc}") from None
        self.components.append(component)
        self.started_pids[component.name] = component.pid
        self.phase_seconds["leaderworkerset"] = round(time.monotonic() - started, 3)

    def stop(self, keep_workdir: bool = False) -> None:
        """Stop every process group started here; remove the work directory if we made it."""
        atexit.unregister(self.stop)
        if self.components:
            stop_components(self.components)
            self.components = []
            log.info("Stopped control plane", extra={"workdir": str(self._workdir)})
        if self._own_workdir and not keep_workdir and self._workdir is not None and self._workdir.exists():
            shutil.rmtree(self._workdir, ignore_errors=True)

    # ---- start-up steps -------------------------------------------------------------------
    def _start(self, binaries: dict[str, Path], stages: Path, deadline: float) -> None:
        clock = time.monotonic()

        def phase(name: str) -> None:
            nonlocal clock
            now = time.monotonic()
            self.phase_seconds[name] = round(now - clock, 3)
            clock = now

        work = self.workdir
        logs = work / "logs"
        if (work / "etcd").exists():  # a retried start begins from an empty store
            shutil.rmtree(work / "etcd")
        self._pki = pki = create_pki(work / "pki")
        etcd_port, peer_port, api_port = free_port(), free_port(), free_port()
        kcm_port, scheduler_port = free_port(), free_port()
        self._api_server_url = f"https://127.0.0.1:{api_port}"
        self._kubeconfig = work / "admin.kubeconfig"
        self._kubeconfig.write_text(yaml.safe_dump(admin_kubeconfig(self._api_server_url, pki), sort_keys=False))
        phase("pki")

        etcd = self._launch("etcd", [str(binaries["etcd"]), *etcd_args(work / "etcd", etcd_port, peer_port)], logs)
        self._wait(etcd, deadline, "did not report healthy", lambda: _http_ok(f"http://127.0.0.1:{etcd_port}/health"))
        phase("etcd")
        apiserver = self._launch(
            "kube-apiserver", [str(binaries["kube-apiserver"]), *apiserver_args(etcd_port, api_port, pki)], logs)
        tls = _client_tls(pki)
        self._wait(apiserver, deadline, "did not become ready (/readyz)",
                   lambda: _http_ok(f"{self._api_server_url}/readyz", tls))
        phase("kube-apiserver")
        self._launch("kube-controller-manager", [
            str(binaries["kube-controller-manager"]), *controller_manager_args(self.kubeconfig, kcm_port, pki)], logs)
        self._launch("kube-scheduler", [
            str(binaries["kube-scheduler"]), *scheduler_args(self.kubeconfig, scheduler_port)], logs)
        kwok = self._launch("kwok", [str(binaries["kwok"]), *kwok_args(self.kubeconfig, stages, self.pod_cidr)], logs)

        from kubernetes import client, config  # imported late: unit tests of this module need no client

        with config.new_client_from_config(config_file=str(self.kubeconfig)) as api_client:
            core = client.CoreV1Api(api_client)
            for node in self._nodes:
                self._retry_api(lambda node=node: core.create_node(body=node), deadline, apiserver)
            self._wait(kwok, deadline, "did not make every node Ready", lambda: _all_nodes_ready(core, self.node_names))
            phase("nodes-ready")
            by_name = {c.name: c for c in self.components}
            self._wait(by_name["kube-scheduler"], deadline, "did not become healthy (/healthz)",
                       lambda: _http_ok(f"https://127.0.0.1:{scheduler_port}/healthz", _insecure_tls()))
            self._wait(by_name["kube-controller-manager"], deadline,
                       "did not create the default ServiceAccount (is the serviceaccount controller running?)",
                       lambda: _default_service_account_exists(core))
            phase("scheduler-and-controllers")
        if self.leaderworkerset:
            try:
                self.components.append(start_leaderworkerset(self.kubeconfig, pki, work, deadline))
            except LeaderWorkerSetError as exc:
                raise ControlPlaneError(f"LeaderWorkerSet: {exc}") from None
            self.started_pids["lws-controller"] = self.components[-1].pid
            phase("leaderworkerset")

    def _launch(self, name: str, argv: list[str], logs: Path) -> Component:
        component = start_component(name, argv, logs)
        self.components.append(component)
        self.started_pids[name] = component.pid
        return component

    def _wait(self, component: Component, deadline: float, what: str, ready: Callable[[], bool]) -> None:
        """Poll `ready` until true; fail fast with the log tail of whichever component died."""
        while True:
            for each in self.components:
                try:
                    each.check_alive()
                except ComponentError as exc:
                    raise ControlPlaneError(str(exc)) from None
            if ready():
                return
            if time.monotonic() > deadline:
                raise ControlPlaneError(str(component.failure(f"{what} within {self.startup_timeout:.0f}s")))
            time.sleep(0.1)

    def _retry_api(self, call: Callable[[], object], deadline: float, component: Component) -> None:
        from kubernetes.client.exceptions import ApiException

        while True:
            try:
                call()
                return
            except ApiException as exc:
                if exc.status == 409:  # already there: a retry after a timeout that did succeed
                    return
                if time.monotonic() > deadline or exc.status not in (403, 429, 500, 503):
                    raise ControlPlaneError(str(component.failure(f"refused a request: {exc.status} {exc.reason}")))
            time.sleep(0.2)


def _client_tls(pki: Pki) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki.ca_cert))
    context.load_cert_chain(str(pki.admin_cert), str(pki.admin_key))
    return context


def _insecure_tls() -> ssl.SSLContext:
    """The scheduler serves /healthz with a self-signed certificate; liveness needs no trust."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def _http_ok(url: str, context: ssl.SSLContext | None = None) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2, context=context) as response:
            return response.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError, ssl.SSLError):
        return False


def _all_nodes_ready(core, names: list[str]) -> bool:
    ready = set()
    for node in core.list_node().items:
        for condition in node.status.conditions or []:
            if condition.type == "Ready" and condition.status == "True":
                ready.add(node.metadata.name)
    return set(names) <= ready


def _default_service_account_exists(core) -> bool:
    from kubernetes.client.exceptions import ApiException

    try:
        core.read_namespaced_service_account("default", "default")
        return True
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise
