"""The operator under faults, on the real control plane (etcd, kube-apiserver, controller-manager,
scheduler, kwok GPU nodes), with the figures each fault produced printed for the record.

- kill -9 of the operator at 20 random points while 30 models are created, changed, scaled and
  deleted: no duplicate child, no orphan, every model converged within 30 s of each restart;
- kube-apiserver stopped 30 s (a Service deleted in etcd meanwhile) and etcd stopped 30 s (a
  Service deleted a moment before): the operator recovers without a restart, re-creates the
  Service and converges;
- two operator replicas, whatever their flags: exactly one acts (writes counted per field
  manager on each replica's /metrics, Events by reportingInstance); the standby acts within
  15 s of the leader's kill -9;
- a model and its namespace deleted while the operator is stopped: both complete (no
  finalizer), and a model still carrying the old kopf finalizer has it removed.

Sizes are chosen for `make test` on a 2-core machine; each test prints what it measured
("FIGURES ...", shown with -s or in the log of a failure).
"""

from __future__ import annotations

import base64
import json
import random
import threading
import time
import urllib.request
import uuid
from collections import Counter
from pathlib import Path

import pytest

from kiban_dev.devcluster.processes import free_port
from support import OperatorProcess, wait_for

pytestmark = pytest.mark.integration

GROUP, VERSION, PLURAL = "kiban.dev", "v1alpha1", "foundationmodels"
MANAGED = "app.kubernetes.io/managed-by=kiban"


def model_body(name: str, replicas: int = 0, max_num_seqs: int = 32, **scaling) -> dict:
    return {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "FoundationModel", "metadata": {"name": name},
        "spec": {
            "model": {"uri": "hf://Qwen/Qwen2.5-0.5B-Instruct", "parameters": "500M"},
            "accelerator": {"profile": "nvidia-l4"},
            "engine": {"maxNumSeqs": max_num_seqs},
            "scaling": {"autoscaling": False, "minReplicas": 0, "maxReplicas": 2, "replicas": replicas, **scaling},
        },
    }


class Api:
    """The test's own client (admin), separate from the operator's."""

    def __init__(self, kube_api, namespace: str) -> None:
        from kubernetes import client

        self.namespace = namespace
        self.custom = client.CustomObjectsApi(kube_api)
        self.apps = client.AppsV1Api(kube_api)
        self.core = client.CoreV1Api(kube_api)
        self.coordination = client.CoordinationV1Api(kube_api)

    def models(self) -> list[dict]:
        return self.custom.list_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL)["items"]

    def model(self, name: str) -> dict | None:
        from kubernetes.client.exceptions import ApiException

        try:
            return self.custom.get_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def create(self, body: dict) -> None:
        self.custom.create_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, body)

    def patch(self, name: str, patch: dict) -> None:
        self.custom.patch_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name, patch)

    def scale(self, name: str, replicas: int) -> None:
        self.custom.patch_namespaced_custom_object_scale(GROUP, VERSION, self.namespace, PLURAL, name,
                                                         {"spec": {"replicas": replicas}})

    def delete(self, name: str) -> None:
        self.custom.delete_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name)

    def children(self) -> dict[str, list]:
        return {
            "Deployment": self.apps.list_namespaced_deployment(self.namespace, label_selector=MANAGED).items,
            "Service": self.core.list_namespaced_service(self.namespace, label_selector=MANAGED).items,
        }

    def events(self) -> list:
        return self.core.list_namespaced_event(self.namespace).items


def converged(api: Api) -> tuple[bool, str]:
    """Every model's status and conditions at its generation, one Deployment and one Service each
    with the spec the test last wrote, and no child whose owner is gone. (ok, what is not yet)."""
    models = {m["metadata"]["uid"]: m for m in api.models() if not m["metadata"].get("deletionTimestamp")}
    for model in models.values():
        name, generation = model["metadata"]["name"], model["metadata"]["generation"]
        status = model.get("status") or {}
        if status.get("observedGeneration") != generation:
            return False, f"{name}: observedGeneration {status.get('observedGeneration')} != generation {generation}"
        stale = [c["type"] for c in status.get("conditions") or [] if c.get("observedGeneration") != generation]
        if stale:
            return False, f"{name}: conditions {stale} not at generation {generation}"
    owned: dict[tuple[str, str], list[str]] = {}
    for kind, items in api.children().items():
        for item in items:
            owners = [r.uid for r in item.metadata.owner_references or []]
            if not owners or owners[0] not in models:
                return False, f"orphan {kind}/{item.metadata.name} (owner {owners})"
            owned.setdefault((owners[0], kind), []).append(item.metadata.name)
            if kind == "Deployment":
                model = models[owners[0]]
                want = model["spec"]["scaling"].get("replicas", 0)
                if item.spec.replicas != want:
                    return False, f"Deployment/{item.metadata.name} replicas {item.spec.replicas} != {want}"
                seqs = str(model["spec"]["engine"]["maxNumSeqs"])
                args = item.spec.template.spec.containers[0].args or []
                if seqs not in args:
                    return False, f"Deployment/{item.metadata.name} lacks --max-num-seqs {seqs}"
    for uid, model in models.items():
        for kind in ("Deployment", "Service"):
            names = owned.get((uid, kind), [])
            if len(names) != 1:
                return False, f"{model['metadata']['name']}: {len(names)} {kind}s {names}"
    return True, f"{len(models)} models converged"


class Churn(threading.Thread):
    """Creates, changes, scales and deletes models (about 30 alive) until stopped."""

    def __init__(self, api: Api, rng: random.Random, population: int = 30) -> None:
        super().__init__(daemon=True)
        self.api, self.rng, self.population = api, rng, population
        self.ops: Counter = Counter()
        self.errors: list[str] = []
        self._stop_event = threading.Event()
        self._pause = threading.Event()
        self._idle = threading.Event()
        self.next_name = 0

    def create(self) -> None:
        name = f"m-{self.next_name:03d}"
        self.next_name += 1
        self.api.create(model_body(name, replicas=self.rng.choice([0, 0, 1]), max_num_seqs=self.rng.choice([16, 32, 64])))
        self.ops["create"] += 1

    def step(self) -> None:
        names = [m["metadata"]["name"] for m in self.api.models() if not m["metadata"].get("deletionTimestamp")]
        choice = self.rng.random()
        if len(names) < self.population or not names:
            self.create()
        elif choice < 0.4:
            self.api.patch(self.rng.choice(names), {"spec": {"engine": {"maxNumSeqs": self.rng.choice([16, 32, 48, 64])}}})
            self.ops["change"] += 1
        elif choice < 0.75:
            self.api.scale(self.rng.choice(names), self.rng.choice([0, 1, 2]))
            self.ops["scale"] += 1
        else:
            self.api.delete(self.rng.choice(names))
            self.ops["delete"] += 1

    def run(self) -> None:
        from kubernetes.client.exceptions import ApiException

        while not self._stop_event.is_set():
            if self._pause.is_set():
                self._idle.set()
                time.sleep(0.05)
                continue
            self._idle.clear()
            try:
                self.step()
            except ApiException as exc:
                if exc.status not in (404, 409):
                    self.errors.append(f"{exc.status} {exc.reason}")
            time.sleep(self.rng.uniform(0.05, 0.3))

    def pause(self) -> None:
        self._pause.set()
        self._idle.wait(10)

    def resume(self) -> None:
        self._pause.clear()

    def stop(self) -> None:
        self._stop_event.set()
        self.join(10)


@pytest.mark.timeout(1500)
def test_kill_9_at_random_points_leaves_no_duplicates_or_orphans_and_converges_after_each_restart(
        kube_api, crds: Path, namespace: str, tmp_path: Path):
    """20 kills at random points while models churn: most while the operator serves the churn
    (0.2-6 s after it converged), every fourth during its start-up (0.2-3 s after launch:
    imports, the Lease, the first list). After each kill the operator is restarted with the churn
    paused, and the fleet must converge within 30 s. The Lease is 3 s here (the default 10 s only
    adds waiting for the dead holder's Lease to every round)."""
    api = Api(kube_api, namespace)
    rng = random.Random(20261201)
    churn = Churn(api, rng)
    for _ in range(30):
        churn.create()
    operator = OperatorProcess(crds, namespace, tmp_path / "operator.log", "--lease-duration", "3")
    convergence: list[float] = []
    from_launch: list[float] = []
    kills: list[str] = []

    def restart_and_converge() -> None:
        before = operator.logs().count('"Starting"')
        operator.start()
        launched = time.monotonic()
        # the clock starts when the operator is up (interpreter and imports: 2-3 s idle, up to 25 s
        # on this shared 2-core machine under load); launch-to-converged is reported too
        wait_for(lambda: operator.logs().count('"Starting"') > before, 90, "the operator up", interval=0.1)
        started = time.monotonic()
        wait_for(lambda: converged(api)[0] or None, 30,
                 f"convergence after restart {len(convergence) + 1}: {converged(api)[1]}", interval=0.25)
        convergence.append(round(time.monotonic() - started, 2))
        from_launch.append(round(time.monotonic() - launched, 2))

    try:
        operator.start()  # the fleet exists and is reconciled before the faults begin
        wait_for(lambda: converged(api)[0] or None, 180, f"the first 30 models reconciled: {converged(api)[1]}")
        churn.start()
        for round_ in range(20):
            if round_ % 4 == 3:  # during start-up: launch, kill before it has settled
                operator.kill()
                operator.start()
                delay = rng.uniform(0.2, 3.0)
                kills.append(f"start+{delay:.1f}")
            else:
                delay = rng.uniform(0.2, 6.0)
                kills.append(f"{delay:.1f}")
            time.sleep(delay)
            operator.kill()
            churn.pause()
            restart_and_converge()
            churn.resume()
        churn.stop()
        wait_for(lambda: converged(api)[0] or None, 30, "final convergence", interval=0.25)
    finally:
        churn.stop()
        operator.stop()
    assert not churn.errors, churn.errors[:5]
    convergence.sort()
    from_launch.sort()
    print(f"FIGURES kill-9: {len(kills)} kills at {kills} s; churn {dict(churn.ops)}; converged after the "
          f"restarted operator was up in median {convergence[len(convergence) // 2]} s, max {convergence[-1]} s "
          f"(from launch: median {from_launch[len(from_launch) // 2]} s, max {from_launch[-1]} s); "
          "0 duplicate children, 0 orphans")


# ----------------------------------------------------------------------------- control-plane outages


def etcd_delete(control_plane, key: str) -> int:
    """Delete one key through etcd's own v3 JSON gateway (the API server is not asked)."""
    etcd = next(c for c in control_plane.components if c.name == "etcd")
    url = next(a.split("=", 1)[1] for a in etcd.argv if a.startswith("--advertise-client-urls="))
    body = json.dumps({"key": base64.b64encode(key.encode()).decode()}).encode()
    request = urllib.request.Request(f"{url}/v3/kv/deleterange", data=body, method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        return int(json.load(response).get("deleted", 0))


@pytest.mark.parametrize("component", ["kube-apiserver", "etcd"])
def test_control_plane_outage_recovers_without_a_restart_and_recreates_the_deleted_child(
        kube_api, crds: Path, namespace: str, tmp_path: Path, control_plane, component: str):
    api = Api(kube_api, namespace)
    for i in range(3):
        api.create(model_body(f"o-{i}", replicas=1))
    try:
        outage_round(api, control_plane, crds, namespace, tmp_path, component)
    finally:  # the session's other tests need working controllers: after a restart their watches
        # take ~30 s to come back, a fresh controller-manager a few seconds
        control_plane.stop_component("kube-controller-manager")
        control_plane.start_component("kube-controller-manager")
        control_plane.wait_controllers()


def outage_round(api: Api, control_plane, crds: Path, namespace: str, tmp_path: Path, component: str) -> None:
    from kubernetes.client.exceptions import ApiException

    with OperatorProcess(crds, namespace, tmp_path / "operator.log") as operator:
        wait_for(lambda: converged(api)[0] or None, 60, "convergence before the outage")
        pid = operator.proc.pid
        old_uid = api.core.read_namespaced_service("o-0", namespace).metadata.uid
        if component == "etcd":  # nothing can be deleted while etcd is down: delete a moment before
            api.core.delete_namespaced_service("o-0", namespace)
        stopped = time.monotonic()
        control_plane.stop_component(component)
        if component == "kube-apiserver":  # deleted behind the API server's back, during the outage
            assert etcd_delete(control_plane, f"/registry/services/specs/{namespace}/o-0") == 1
        time.sleep(max(0.0, 30 - (time.monotonic() - stopped)))
        control_plane.start_component(component)
        back = time.monotonic()
        outage = round(back - stopped, 1)

        def recreated():
            assert operator.proc.poll() is None, "the operator exited during the outage"
            try:
                service = api.core.read_namespaced_service("o-0", namespace)
            except ApiException as exc:
                if exc.status in (404, 500, 503):
                    return None
                raise
            return service if service.metadata.uid != old_uid else None

        wait_for(recreated, 90, "the deleted Service re-created after the outage")
        recreated_after = round(time.monotonic() - back, 1)
        wait_for(lambda: converged(api)[0] or None, 60, f"convergence after the outage: {converged(api)[1]}")
        converged_after = round(time.monotonic() - back, 1)
        assert operator.proc.pid == pid and operator.proc.poll() is None  # the same process, never restarted
    print(f"FIGURES {component} outage {outage} s: Service re-created {recreated_after} s and all converged "
          f"{converged_after} s after the component was back, operator not restarted")


# ----------------------------------------------------------------------------- two replicas


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def writes(port: int) -> float:
    return sum(v for k, v in scrape(port).items() if k.startswith("kiban_api_writes_total{"))


def identity_in(log_text: str) -> str:
    for line in log_text.splitlines():
        if '"Starting" identity=' in line:
            return line.split("identity=", 1)[1].split()[0]
    raise AssertionError("no identity in the operator's log")


FLAG_SETS = {
    "default-flags": ((), ()),
    "old-peering-flags": (("--standalone",), ("--peering", "kiban", "--priority", "100")),
}


@pytest.mark.parametrize("flags", list(FLAG_SETS), ids=list(FLAG_SETS))
def test_two_replicas_exactly_one_acts_and_a_standby_takes_over_within_15s(
        kube_api, crds: Path, namespace: str, tmp_path: Path, flags: str):
    api = Api(kube_api, namespace)
    ports = [free_port(), free_port()]
    first_flags, second_flags = FLAG_SETS[flags]
    replicas = [OperatorProcess(crds, namespace, tmp_path / f"op{i}.log", *extra, metrics_port=port)
                for i, (port, extra) in enumerate(zip(ports, (first_flags, second_flags)))]
    try:
        for replica in replicas:
            replica.start()
        for i in range(3):
            api.create(model_body(f"p-{i}", replicas=1))
        wait_for(lambda: converged(api)[0] or None, 60, "the models reconciled by one of the two")
        time.sleep(3)  # a few resyncs (5 s) and renewals more
        identities = [identity_in(r.logs()) for r in replicas]
        holder = api.coordination.read_namespaced_lease("kiban-operator", namespace).spec.holder_identity
        assert holder in identities
        leader = identities.index(holder)
        standby = 1 - leader
        counts = [writes(port) for port in ports]
        assert counts[leader] > 0 and counts[standby] == 0, f"writes per replica {counts}"
        reporting = Counter(e.reporting_instance for e in api.events() if e.reporting_component == "kiban-operator")
        assert set(reporting) == {holder}, reporting
        assert '"Planned changes"' not in replicas[standby].logs()
        scrape_leader = scrape(ports[leader])
        assert scrape_leader["kiban_leader"] == 1 and scrape(ports[standby])["kiban_leader"] == 0

        # the leader dies without a word; a model created right after must be served by the standby
        replicas[leader].kill()
        killed = time.monotonic()
        api.create(model_body("after", replicas=1))
        wait_for(lambda: api.apps.list_namespaced_deployment(namespace, field_selector="metadata.name=after").items,
                 30, "the standby to create the new model's Deployment", interval=0.1)
        takeover = round(time.monotonic() - killed, 1)
        assert takeover <= 15, f"the standby acted {takeover} s after the leader's death"
        assert api.coordination.read_namespaced_lease("kiban-operator", namespace).spec.holder_identity == \
            identities[standby]
        assert writes(ports[standby]) > 0
    finally:
        for replica in replicas:
            replica.stop()
    print(f"FIGURES two replicas ({flags}): leader wrote {counts[leader]:.0f} times, standby 0; "
          f"{sum(reporting.values())} Events all from {holder}; standby acted {takeover} s after kill -9")


# ----------------------------------------------------------------------------- deletion without an operator


def test_a_model_and_its_namespace_are_deleted_with_the_operator_stopped(kube_api, crds: Path, tmp_path: Path):
    """No finalizer is put on any model (autoscaling on or off), and one left by an older version
    (kopf's kiban.dev/finalizer from the per-model autoscale timer) is removed by the operator."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    core = client.CoreV1Api(kube_api)
    name = f"t-delete-{uuid.uuid4().hex[:6]}"
    core.create_namespace({"metadata": {"name": name, "labels": {"kiban.dev/test-namespace": "true"}}})
    wait_for(lambda: any(sa.metadata.name == "default" for sa in core.list_namespaced_service_account(name).items),
             30, "the default ServiceAccount")
    api = Api(kube_api, name)
    autoscaled = model_body("auto", replicas=1, autoscaling=True, minReplicas=1, slo={"ttftP95Ms": 500})
    api.create(autoscaled)
    legacy = model_body("legacy", replicas=0)
    legacy["metadata"]["finalizers"] = ["kiban.dev/finalizer"]
    legacy["metadata"]["annotations"] = {"kiban.dev/last-handled-configuration": "{}"}
    api.create(legacy)
    env = {"KIBAN_PROMETHEUS_URL": f"http://127.0.0.1:{free_port()}", "KIBAN_AUTOSCALE_INTERVAL_SECONDS": "1"}
    with OperatorProcess(crds, name, tmp_path / "operator.log", env=env):
        wait_for(lambda: (api.model("auto") or {}).get("status", {}).get("conditions") and
                 any(c["type"] == "MetricsAvailable" for c in api.model("auto")["status"]["conditions"]),
                 60, "the autoscaler's pass over the model")
        def cleaned():
            metadata = api.model("legacy")["metadata"]
            return not metadata.get("finalizers") and "kiban.dev/last-handled-configuration" not in (
                metadata.get("annotations") or {})

        wait_for(cleaned, 30, "the old kopf finalizer and annotation removed")
        assert not api.model("auto")["metadata"].get("finalizers")
    # the operator is stopped now
    started = time.monotonic()
    api.delete("auto")
    wait_for(lambda: api.model("auto") is None, 15, "the model deleted with no operator running")
    model_seconds = round(time.monotonic() - started, 1)
    api.create(model_body("left", replicas=0))
    started = time.monotonic()
    core.delete_namespace(name)

    def namespace_gone():
        try:
            core.read_namespace(name)
        except ApiException as exc:
            return exc.status == 404
        return False

    wait_for(namespace_gone, 90, "the namespace deleted with no operator running")
    print(f"FIGURES deletion with the operator stopped: model {model_seconds} s, namespace "
          f"{round(time.monotonic() - started, 1)} s")
