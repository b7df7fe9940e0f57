"""The local control plane behaves like a cluster with GPU nodes: scheduling on extended resources,
garbage collection, RBAC with TokenRequest tokens, and a clean stop."""

from __future__ import annotations

import shutil

import pytest
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from kiban_dev.devcluster import ControlPlane, ControlPlaneError
from kiban_dev.devcluster.processes import pid_alive
from support import wait_for

pytestmark = pytest.mark.integration

H100 = "NVIDIA-H100-80GB-HBM3"
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
WAIT_SECONDS = 60



def pod_body(name: str, resources: dict, node_selector: dict | None = None) -> dict:
    return {
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "containers": [{"name": "main", "image": "registry.invalid/sim:1", "resources": {"limits": resources}}],
            "nodeSelector": node_selector or {},
            "tolerations": [GPU_TOLERATION],
        },
    }


def is_ready(pod) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in (pod.status.conditions or []))


def test_gpu_deployment_runs_on_h100_nodes(kube_api, namespace):
    apps, core = client.AppsV1Api(kube_api), client.CoreV1Api(kube_api)
    pod = pod_body("llm", {"nvidia.com/gpu": "2"}, {"nvidia.com/gpu.product": H100})
    apps.create_namespaced_deployment(namespace, {
        "metadata": {"name": "llm"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "llm"}}, "template": pod},
    })

    def ready_pods():
        pods = core.list_namespaced_pod(namespace, label_selector="app=llm").items
        return pods if len(pods) == 2 and all(is_ready(p) and p.status.pod_ip for p in pods) else None

    pods = wait_for(ready_pods, WAIT_SECONDS, "2 Ready llm pods with IPs")
    for pod in pods:
        assert pod.status.phase == "Running"
        node = core.read_node(pod.spec.node_name)
        assert node.metadata.labels["nvidia.com/gpu.product"] == H100
    deployment = wait_for(lambda: (d := apps.read_namespaced_deployment("llm", namespace)).status.ready_replicas == 2 and d,
                          WAIT_SECONDS, "Deployment ready replicas")
    assert deployment.status.available_replicas == 2


def test_pod_asking_for_too_many_gpus_stays_pending(kube_api, namespace):
    core = client.CoreV1Api(kube_api)
    core.create_namespaced_pod(namespace, pod_body("greedy", {"nvidia.com/gpu": "9"}))

    def unschedulable_condition():
        pod = core.read_namespaced_pod("greedy", namespace)
        for condition in pod.status.conditions or []:
            if condition.type == "PodScheduled" and condition.status == "False":
                return condition
        return None

    condition = wait_for(unschedulable_condition, WAIT_SECONDS, "PodScheduled=False on greedy")
    assert condition.reason == "Unschedulable"
    assert "Insufficient nvidia.com/gpu" in condition.message
    pod = core.read_namespaced_pod("greedy", namespace)
    assert pod.status.phase == "Pending" and pod.spec.node_name is None


def test_mig_pod_lands_on_the_mig_node(kube_api, namespace):
    core = client.CoreV1Api(kube_api)
    core.create_namespaced_pod(namespace, pod_body("small", {"nvidia.com/mig-1g.10gb": "1"}))
    pod = wait_for(lambda: (p := core.read_namespaced_pod("small", namespace)) and is_ready(p) and p, WAIT_SECONDS,
                   "small Ready")
    node = core.read_node(pod.spec.node_name)
    assert node.metadata.labels["nvidia.com/mig.strategy"] == "mixed"
    assert node.status.allocatable["nvidia.com/mig-1g.10gb"] == "14"


def test_deleting_an_owner_garbage_collects_its_dependents(kube_api, namespace):
    core = client.CoreV1Api(kube_api)
    owner = core.create_namespaced_config_map(namespace, {"metadata": {"name": "owner"}})
    core.create_namespaced_config_map(namespace, {"metadata": {"name": "dependent", "ownerReferences": [{
        "apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner.metadata.uid}]}})
    core.delete_namespaced_config_map("owner", namespace, propagation_policy="Background")

    def dependent_gone():
        try:
            core.read_namespaced_config_map("dependent", namespace)
            return False
        except ApiException as exc:
            return exc.status == 404

    wait_for(dependent_gone, WAIT_SECONDS, "the garbage collector to delete the dependent")


def test_service_account_without_role_is_refused_by_rbac(kube_api, namespace):
    core = client.CoreV1Api(kube_api)
    core.create_namespaced_service_account(namespace, {"metadata": {"name": "nobody"}})
    token = core.create_namespaced_service_account_token(
        "nobody", namespace, {"spec": {"expirationSeconds": 600}}).status.token

    sa_config = client.Configuration()
    sa_config.host = kube_api.configuration.host
    sa_config.ssl_ca_cert = kube_api.configuration.ssl_ca_cert
    sa_config.api_key = {"authorization": f"Bearer {token}"}
    with client.ApiClient(sa_config) as sa_client:
        sa_core = client.CoreV1Api(sa_client)
        with pytest.raises(ApiException) as refused:
            sa_core.list_namespaced_pod(namespace)
        assert refused.value.status == 403
        assert f"system:serviceaccount:{namespace}:nobody" in refused.value.body

        # the same token is accepted once a Role allows it: the refusal was RBAC, not authentication
        rbac = client.RbacAuthorizationV1Api(kube_api)
        rbac.create_namespaced_role(namespace, {"metadata": {"name": "pod-reader"}, "rules": [
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}]})
        rbac.create_namespaced_role_binding(namespace, {
            "metadata": {"name": "nobody-reads-pods"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pod-reader"},
            "subjects": [{"kind": "ServiceAccount", "name": "nobody", "namespace": namespace}]})

        def allowed():
            try:
                return sa_core.list_namespaced_pod(namespace) is not None
            except ApiException as exc:
                if exc.status != 403:
                    raise
                return False

        wait_for(allowed, WAIT_SECONDS, "the RoleBinding to take effect")


def test_stop_leaves_no_process_behind():
    """A second, small control plane (the session one stays up for the other tests)."""
    cluster = ControlPlane(node_pool={"cpu": 1})
    cluster.start()
    pids = dict(cluster.pids)
    assert set(pids) == {"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok"}
    assert all(pid_alive(pid) for pid in pids.values())
    workdir = cluster.workdir
    cluster.stop()
    assert [name for name, pid in pids.items() if pid_alive(pid)] == []
    assert not workdir.exists()


def test_start_failure_names_the_component_with_its_log_and_cleans_up():
    """Too little time to start: the error carries a component's log tail and nothing is left running."""
    cluster = ControlPlane(node_pool={"cpu": 1}, startup_timeout=1.0)
    with pytest.raises(ControlPlaneError) as failure:
        cluster.start()
    message = str(failure.value)
    assert "within 1s" in message and "last lines of" in message
    assert any(name in message for name in ("etcd", "kube-apiserver"))
    assert cluster.started_pids and cluster.components == []
    assert [name for name, pid in cluster.started_pids.items() if pid_alive(pid)] == []
    assert (cluster.workdir / "logs").is_dir()  # kept for the user to read
    shutil.rmtree(cluster.workdir)


def test_start_retries_when_another_process_takes_a_port(monkeypatch):
    """Ports are picked then bound by the child; if someone else binds one first, start() tries again."""
    import socket

    import kiban_dev.devcluster.cluster as cluster_module
    from kiban_dev.devcluster.processes import free_port

    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        ports = iter([taken])  # the first port asked for (etcd's client port) is already in use
        monkeypatch.setattr(cluster_module, "free_port", lambda: next(ports, None) or free_port())
        with ControlPlane(node_pool={"cpu": 1}) as cluster:
            etcd_log = (cluster.workdir / "logs" / "etcd.log").read_text()
            assert "address already in use" in etcd_log
            with config.new_client_from_config(config_file=str(cluster.kubeconfig)) as api_client:
                node = client.CoreV1Api(api_client).read_node("kiban-cpu-0")
            assert node.metadata.labels["kiban.dev/node-kind"] == "cpu"
