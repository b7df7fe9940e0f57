"""InferencePool children against the real CRD of the pinned Gateway API Inference Extension
module (hack/tools/gaie, copied out of Go's module cache at test time), on a control plane of
its own: installing the CRD in the session's cluster would make every other test's operator
create pools.

- API absent: the operator builds no InferencePool and reports no error;
- API served (CRD installed, operator restarted so discovery sees it): each FoundationModel gets
  a pool selecting exactly its engine pods' labels and port, accepted by the real CRD's schema;
  `spec.exposure.inferencePool: false` opts out.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from pinned_tools import start_or_fail
from kiban_dev.devcluster import wait_crds_established
from support import CRDS, OperatorProcess, kubectl, wait_for

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
POOL = ("inference.networking.k8s.io", "v1", "inferencepools")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[Path]:
    from kiban_dev.devcluster import ControlPlane

    plane = ControlPlane(node_pool={"l4": 1}, workdir=tmp_path_factory.mktemp("pool-cluster"))
    start_or_fail(plane.start)
    try:
        for path in sorted(CRDS.glob("*.yaml")):
            kubectl(plane.kubeconfig, "apply", "--server-side", "-f", str(path))
        wait_crds_established(plane.kubeconfig)
        yield plane.kubeconfig
    finally:
        plane.stop()


@pytest.fixture(scope="module")
def pool_crd(tmp_path_factory) -> Path:
    from kiban_dev.devcluster.tools import ToolsMissingError, inference_pool_crd_path

    try:
        source = inference_pool_crd_path()
    except ToolsMissingError as exc:
        pytest.fail(f"integration tests need the pinned tools: {exc}", pytrace=False)
    copy = tmp_path_factory.mktemp("gaie") / source.name
    shutil.copyfile(source, copy)
    return copy


def model(name: str, namespace: str, **exposure) -> dict:
    body = yaml.safe_load((ROOT / "examples" / "model.yaml").read_text())
    body["metadata"] = {"name": name, "namespace": namespace}
    body["spec"]["scaling"] = {"minReplicas": 1, "maxReplicas": 1, "autoscaling": False}
    if exposure:
        body["spec"]["exposure"] = exposure
    return body


def test_pools_appear_only_where_the_api_is_served(cluster, pool_crd, tmp_path):
    from kubernetes import client, config

    api = config.new_client_from_config(config_file=str(cluster))
    custom, apps = client.CustomObjectsApi(api), client.AppsV1Api(api)
    namespace = f"t-pool-{uuid.uuid4().hex[:6]}"
    client.CoreV1Api(api).create_namespace({"metadata": {"name": namespace}})
    env = {"KIBAN_PROMETHEUS_URL": "http://127.0.0.1:9", "KIBAN_AUTOSCALE_INTERVAL_SECONDS": "600"}

    with OperatorProcess(cluster, namespace, tmp_path / "operator-absent.log", env=env) as operator:
        custom.create_namespaced_custom_object("kiban.dev", "v1alpha1", namespace, "foundationmodels",
                                               model("early", namespace))
        wait_for(lambda: _deployment(apps, namespace, "early"), 60, "the Deployment of early")
        body = wait_for(lambda: _status(custom, namespace, "early").get("conditions") and
                        _status(custom, namespace, "early"), 30, "status of early")
        degraded = {c["type"]: c for c in body["conditions"]}["Degraded"]
        assert degraded["status"] == "False", degraded
        logs = operator.logs()
    assert "InferencePool/" not in logs and "Traceback" not in logs, logs[-3000:]  # never planned, nothing failed

    kubectl(cluster, "apply", "--server-side", "-f", str(pool_crd))
    wait_crds_established(cluster, "inferencepools.inference.networking.k8s.io")
    with OperatorProcess(cluster, namespace, tmp_path / "operator-served.log", env=env):
        for body in (model("pooled", namespace), model("optout", namespace, inferencePool=False)):
            custom.create_namespaced_custom_object("kiban.dev", "v1alpha1", namespace, "foundationmodels", body)
        for name in ("early", "pooled"):
            pool = wait_for(lambda name=name: _pool(custom, namespace, name), 60, f"the InferencePool of {name}")
            deployment = _deployment(apps, namespace, name)
            pod_labels = deployment.spec.template.metadata.labels
            selector = pool["spec"]["selector"]["matchLabels"]
            assert selector == deployment.spec.selector.match_labels
            assert selector.items() <= pod_labels.items()  # the pool selects the engine pods
            assert pool["spec"]["targetPorts"] == [{"number": 8000}]
            assert deployment.spec.template.spec.containers[0].ports[0].container_port == 8000
            assert pool["metadata"]["ownerReferences"][0]["name"] == name
        wait_for(lambda: _deployment(apps, namespace, "optout"), 60, "the Deployment of optout")
        wait_for(lambda: _status(custom, namespace, "optout").get("observedGeneration"), 30, "a pass over optout")
        assert _pool(custom, namespace, "optout") is None
    api.close()


def _deployment(apps, namespace: str, name: str):
    from kubernetes.client.exceptions import ApiException

    try:
        return apps.read_namespaced_deployment(name, namespace)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def _status(custom, namespace: str, name: str) -> dict:
    return custom.get_namespaced_custom_object("kiban.dev", "v1alpha1", namespace, "foundationmodels", name).get(
        "status") or {}


def _pool(custom, namespace: str, name: str) -> dict | None:
    from kubernetes.client.exceptions import ApiException

    try:
        return custom.get_namespaced_custom_object(*POOL[:2], namespace, POOL[2], name)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise
