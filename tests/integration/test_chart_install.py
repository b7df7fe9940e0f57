"""The Helm chart against the pinned helm and the real control plane.

- helm lint / helm template with the default values and values-openshift.yaml;
- every rendered object passes a server-side dry run, except the kinds whose APIs this control
  plane does not serve (ServiceMonitor and PrometheusRule: monitoring.coreos.com; ConsoleLink:
  console.openshift.io). Those are excluded explicitly (EXCLUDED_KINDS) rather than installing
  stand-in CRDs into the shared session cluster, where other tests' operators would start creating
  PodMonitors; the PrometheusRule's spec is checked to be the promtool-tested rule file instead;
- the namespace-scoped install (watchNamespace): nothing cluster-scoped rendered, installed with
  `helm install --skip-crds` by a namespace admin who can write nothing cluster-wide;
- helm install gets both operator pods scheduled (kwok runs them on the untainted cpu node);
- RBAC both ways, with the chart ServiceAccount's own token (TokenRequest): the operator run with
  that token reconciles examples/model.yaml to Ready, and calls outside its rules (cluster-wide
  reads included) are refused.
"""

from __future__ import annotations

import base64
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from kiban_dev.devcluster.tools import ToolsMissingError, tool_path
from support import OperatorProcess, wait_for

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "kiban"
OPENSHIFT_VALUES = CHART / "values-openshift.yaml"
RULES_FILE = CHART / "files" / "rules" / "kiban.rules.yaml"
EXCLUDED_KINDS = {"ServiceMonitor", "PrometheusRule", "ConsoleLink"}
MONITORING_API = ("--api-versions", "monitoring.coreos.com/v1")
OPENSHIFT_APIS = (*MONITORING_API, "--api-versions", "console.openshift.io/v1", "--api-versions", "route.openshift.io/v1")


def binary(name: str) -> Path:
    try:
        return tool_path(name)
    except ToolsMissingError as exc:
        pytest.fail(f"integration tests need the pinned tools: {exc}", pytrace=False)


def run(args: list[str], *, kubeconfig: Path | None = None, input_text: str | None = None,
        check: bool = True, timeout: float = 180) -> subprocess.CompletedProcess:
    env = {**os.environ, "HELM_CACHE_HOME": "/tmp/kiban-helm/cache", "HELM_CONFIG_HOME": "/tmp/kiban-helm/config",
           "HELM_DATA_HOME": "/tmp/kiban-helm/data"}
    if kubeconfig is not None:
        env["KUBECONFIG"] = str(kubeconfig)
    done = subprocess.run([str(a) for a in args], input=input_text, capture_output=True, text=True,
                          timeout=timeout, env=env)
    if check and done.returncode != 0:
        pytest.fail(f"{' '.join(map(str, args))} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done


def helm(*args: str, **kwargs: Any) -> subprocess.CompletedProcess:
    return run([binary("helm"), *args], **kwargs)


def kubectl(kubeconfig: Path, *args: str, **kwargs: Any) -> subprocess.CompletedProcess:
    return run([binary("kubectl"), f"--kubeconfig={kubeconfig}", *args], **kwargs)


def template(*args: str, namespace: str = "kiban-system", release: str = "kiban") -> list[dict]:
    text = helm("template", release, str(CHART), "--namespace", namespace, *args).stdout
    return [doc for doc in yaml.safe_load_all(text) if doc]


def component(objects: list[dict], name: str) -> dict:
    """The one object of the app.kubernetes.io/component `name` (operator or gateway)."""
    (found,) = [o for o in objects if o["metadata"]["labels"].get("app.kubernetes.io/component") == name]
    return found


def by_kind(objects: list[dict]) -> dict[str, list[dict]]:
    kinds: dict[str, list[dict]] = {}
    for obj in objects:
        kinds.setdefault(obj["kind"], []).append(obj)
    return kinds


# ----------------------------------------------------------------------------- lint and template


@pytest.mark.parametrize("values", [[], ["-f", str(OPENSHIFT_VALUES)]], ids=["default", "openshift"])
def test_helm_lint_passes_strict(values):
    result = helm("lint", "--strict", str(CHART), *values)
    assert "0 chart(s) failed" in result.stdout


def test_default_values_render_no_openshift_or_monitoring_objects_without_those_apis():
    kinds = by_kind(template())
    assert set(kinds) == {"ServiceAccount", "ConfigMap", "ClusterRole", "ClusterRoleBinding", "Service",
                          "Deployment", "NetworkPolicy", "PodDisruptionBudget", "Role", "RoleBinding"}
    (lease_role,) = kinds["Role"]  # the leader Lease: exactly its verbs, in the release namespace only
    assert lease_role["metadata"]["namespace"] == "kiban-system"
    assert lease_role["rules"] == [{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
                                    "verbs": ["get", "create", "update"]}]
    assert not any("kopf.dev" in r["apiGroups"] for r in kinds["ClusterRole"][0]["rules"])
    dashboards = [c for c in kinds["ConfigMap"] if c["metadata"]["labels"].get("grafana_dashboard") == "1"]
    assert sorted(next(iter(c["data"])) for c in dashboards) == ["kiban-fleet.json", "kiban-model.json"]


def test_monitoring_objects_render_where_the_api_is_served_and_rules_are_the_tested_file():
    kinds = by_kind(template(*MONITORING_API))
    assert "ConsoleLink" not in kinds and "Route" not in kinds
    monitor = component(kinds["ServiceMonitor"], "operator")
    assert component(kinds["ServiceMonitor"], "gateway")["spec"]["endpoints"][0]["port"] == "admin"
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    assert monitor["spec"]["endpoints"][0]["honorLabels"] is True
    (rule,) = kinds["PrometheusRule"]
    assert rule["spec"] == yaml.safe_load(RULES_FILE.read_text())


def test_openshift_values_add_a_console_link_to_the_fleet_dashboard():
    kinds = by_kind(template("-f", str(OPENSHIFT_VALUES), *OPENSHIFT_APIS))
    (link,) = kinds["ConsoleLink"]
    assert link["spec"]["href"].endswith("/d/kiban-fleet")
    assert link["spec"]["location"] == "ApplicationMenu"


@pytest.mark.parametrize("values", [[], ["-f", str(OPENSHIFT_VALUES)]], ids=["default", "openshift"])
def test_operator_pod_is_restricted_without_a_fixed_uid(values):
    deployment = component(by_kind(template(*values))["Deployment"], "operator")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    security = container["securityContext"]
    assert security["allowPrivilegeEscalation"] is False and security["readOnlyRootFilesystem"] is True
    assert security["capabilities"] == {"drop": ["ALL"]} and security["runAsNonRoot"] is True
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    assert "runAsUser" not in security and "runAsUser" not in pod["securityContext"]
    assert deployment["spec"]["replicas"] == 2
    assert "--lease-namespace=kiban-system" in container["args"] and "--lease-name=kiban" in container["args"]
    assert not any(a.startswith(("--peering", "--standalone")) for a in container["args"])
    env = {e["name"]: e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") for e in container["env"]}
    assert env["KIBAN_POD_NAME"] == "metadata.name" and env["KIBAN_OPERATOR_NAMESPACE"] == "metadata.namespace"
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert "--liveness=http://0.0.0.0:8081/healthz" in container["args"]


def test_accelerator_profiles_from_values_reach_the_file_the_operator_reads(tmp_path):
    from kiban.config import load_config

    values = tmp_path / "profiles.yaml"
    values.write_text(yaml.safe_dump({"acceleratorProfiles": {"nvidia-l40s": {
        "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-L40S"}, "resourceName": "nvidia.com/gpu",
        "gpuMemoryGiB": 48, "gpusPerNode": 8}}}))
    kinds = by_kind(template("-f", str(values)))
    deployment = component(kinds["Deployment"], "operator")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    mount = next(m for m in container["volumeMounts"] if m["name"] == "accelerator-profiles")
    path = Path(env["KIBAN_ACCELERATOR_PROFILES"])
    assert path.parent == Path(mount["mountPath"])
    configmap = next(c for c in kinds["ConfigMap"] if c["metadata"]["name"].endswith("accelerator-profiles"))
    (tmp_path / path.name).write_text(configmap["data"][path.name])
    config = load_config({"KIBAN_ACCELERATOR_PROFILES": str(tmp_path / path.name)})
    assert config.profile("nvidia-l40s").gpu_memory_gib == 48
    assert config.profile("nvidia-l4").gpus_per_node == 4  # built-ins stay


def test_schema_rejects_a_misspelt_value_naming_it():
    result = helm("template", "kiban", str(CHART), "--set", "operator.prometheusURL=http://x", check=False)
    assert result.returncode != 0 and "prometheusURL" in result.stderr


CLUSTER_SCOPED_KINDS = {"ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition", "ConsoleLink",
                        "ClusterKopfPeering", "Namespace", "ValidatingAdmissionPolicy", "PriorityClass"}


def test_watch_namespace_is_a_namespace_scoped_install_with_nothing_cluster_scoped():
    objects = template("--set", "watchNamespace=models")  # helm template leaves crds/ out, as --skip-crds does
    kinds = by_kind(objects)
    assert not CLUSTER_SCOPED_KINDS & set(kinds), sorted(CLUSTER_SCOPED_KINDS & set(kinds))
    assert all(o["metadata"].get("namespace") for o in objects), [o["kind"] for o in objects if not o["metadata"].get("namespace")]
    operator_roles = [r for r in kinds["Role"] if r["metadata"]["labels"].get("app.kubernetes.io/component") == "operator"]
    (role,) = [r for r in operator_roles if r["metadata"]["namespace"] == "models"]
    (leader,) = [r for r in operator_roles if r["metadata"]["namespace"] == "kiban-system"]  # the Lease only
    assert {g for rule in leader["rules"] for g in rule["apiGroups"]} == {"coordination.k8s.io"}
    (binding,) = [b for b in kinds["RoleBinding"] if b["roleRef"]["name"] == role["metadata"]["name"]
                  and b["metadata"]["namespace"] == "models"]
    assert binding["subjects"][0]["namespace"] == "kiban-system"
    pods = next(r for r in role["rules"] if r["resources"] == ["pods"])
    assert pods["verbs"] == ["get", "list", "watch"]
    assert not any("secrets" in r["resources"] or "*" in r["verbs"] for r in role["rules"])
    # and the operator is told the one namespace, so it scans nothing cluster-wide
    deployment = component(kinds["Deployment"], "operator")
    assert "--namespace=models" in deployment["spec"]["template"]["spec"]["containers"][0]["args"]


def test_namespace_scoped_install_refuses_the_cluster_scoped_openshift_extras():
    result = helm("template", "kiban", str(CHART), "--set", "watchNamespace=models", "-f", str(OPENSHIFT_VALUES),
                  check=False)
    assert result.returncode != 0 and "namespace-scoped install" in result.stderr


def test_the_operator_turns_kopf_cluster_scanning_off_for_exact_namespaces():
    from kiban.operator_cli import operator_settings, scans_the_cluster

    assert scans_the_cluster([]) and scans_the_cluster(["team-*"]) and not scans_the_cluster(["models", "b"])
    assert operator_settings(scan_cluster=False).scanning.disabled is True
    assert operator_settings().scanning.disabled is False


def test_gateway_runs_two_restricted_replicas_with_probes_and_a_disruption_budget():
    kinds = by_kind(template())
    deployment = component(kinds["Deployment"], "gateway")
    assert deployment["spec"]["replicas"] >= 2
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["args"][0] == "gateway" and "--all-namespaces" in container["args"]
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True and security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]} and pod["securityContext"]["runAsNonRoot"] is True
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    assert pod["serviceAccountName"] == "kiban-gateway"
    pdb = component(kinds["PodDisruptionBudget"], "gateway")
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    public = next(s for s in kinds["Service"] if s["metadata"]["name"] == "kiban-gateway")
    assert [p["targetPort"] for p in public["spec"]["ports"]] == ["http"]  # metrics and probes stay inside


def test_gateway_role_reads_models_pods_and_named_secrets_and_patches_status_only():
    kinds = by_kind(template())
    role = next(r for r in kinds["ClusterRole"] if r["metadata"]["name"] == "kiban-gateway")
    assert role["rules"] == [
        {"apiGroups": ["kiban.dev"], "resources": ["foundationmodels"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": ["kiban.dev"], "resources": ["foundationmodels/status"], "verbs": ["patch"]},
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]},
    ]
    namespaced = by_kind(template("--set", "watchNamespace=models"))
    assert component(namespaced["Role"], "gateway")["metadata"]["namespace"] == "models"
    assert "--namespace=models" in component(namespaced["Deployment"], "gateway")["spec"]["template"]["spec"][
        "containers"][0]["args"]


def test_operator_is_told_the_gateway_default_and_the_gateway_pods_labels():
    from kiban.config import parse_labels

    kinds = by_kind(template(namespace="ai"))
    operator = component(kinds["Deployment"], "operator")
    env = {e["name"]: e.get("value") for e in operator["spec"]["template"]["spec"]["containers"][0]["env"]}
    gateway = component(kinds["Deployment"], "gateway")
    assert env["KIBAN_GATEWAY_DEFAULT"] == "true" and env["KIBAN_GATEWAY_NAMESPACE"] == "ai"
    labels = parse_labels(env["KIBAN_GATEWAY_POD_LABELS"], source="KIBAN_GATEWAY_POD_LABELS")
    assert labels.items() <= gateway["spec"]["template"]["metadata"]["labels"].items()
    assert env["KIBAN_GATEWAY_URL"] == "http://kiban-gateway.ai.svc:8080"
    off = by_kind(template("--set", "gateway.enabled=false"))
    assert [d["metadata"]["name"] for d in off["Deployment"]] == ["kiban"]
    env_off = {e["name"] for e in component(off["Deployment"], "operator")["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert "KIBAN_GATEWAY_DEFAULT" not in env_off
LWS_API = ("--api-versions", "leaderworkerset.x-k8s.io/v1")
LWS_RULE = {"apiGroups": ["leaderworkerset.x-k8s.io"], "resources": ["leaderworkersets"],
            "verbs": ["get", "list", "watch", "create", "patch", "delete"]}


@pytest.mark.parametrize("namespaced", [False, True], ids=["cluster-wide", "watch-namespace"])
def test_leaderworkerset_verbs_are_requested_only_where_the_api_is_served(namespaced):
    """Exactly the verbs kiban.reconcile.apply uses on a child (apply, read, delete), nothing else."""
    values = ["--set", "watchNamespace=models"] if namespaced else []
    kind = "Role" if namespaced else "ClusterRole"

    def lws_rules(*extra: str) -> list[dict]:
        roles = [r for r in by_kind(template(*values, *extra))[kind] if not r["metadata"]["name"].endswith("-leader")]
        role = component(roles, "operator")  # the leader Lease's own Role aside
        return [r for r in role["rules"] if "leaderworkerset.x-k8s.io" in r["apiGroups"]]

    assert lws_rules() == []
    assert lws_rules(*LWS_API) == [LWS_RULE]


def test_the_node_limit_reaches_the_operator():
    from kiban.config import load_config

    def env(*extra: str) -> dict:
        deployment = component(by_kind(template(*extra))["Deployment"], "operator")
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        return {e["name"]: e.get("value") for e in container["env"]}

    assert env()["KIBAN_MAX_NODES_PER_REPLICA"] == "4"
    limit = env("--set", "operator.maxNodesPerReplica=2")["KIBAN_MAX_NODES_PER_REPLICA"]
    assert load_config({"KIBAN_MAX_NODES_PER_REPLICA": limit}).max_nodes_per_replica == 2


# ----------------------------------------------------------------------------- the real control plane


@pytest.mark.parametrize("values", [[], ["-f", str(OPENSHIFT_VALUES)]], ids=["default", "openshift"])
def test_rendered_manifests_pass_server_side_dry_run(kubeconfig, namespace, values):
    objects = template("--include-crds", *values, *OPENSHIFT_APIS, namespace=namespace)
    excluded = {o["kind"] for o in objects if o["kind"] in EXCLUDED_KINDS}
    assert excluded <= EXCLUDED_KINDS and "PrometheusRule" in excluded
    kept = [o for o in objects if o["kind"] not in EXCLUDED_KINDS]
    result = kubectl(kubeconfig, "apply", "--server-side", "--dry-run=server", "--field-manager=helm-test",
                     "-n", namespace, "-f", "-", input_text=yaml.safe_dump_all(kept))
    assert result.stdout.count("(server dry run)") == len(kept)


@pytest.fixture
def watched_namespace(kube_api) -> Iterator[str]:
    """A second namespace: the one the chart's operator watches (its Role lives there)."""
    from kubernetes import client

    core = client.CoreV1Api(kube_api)
    name = f"t-chart-models-{uuid.uuid4().hex[:6]}"
    core.create_namespace({"metadata": {"name": name, "labels": {"kiban.dev/test-namespace": "true"}}})
    wait_for(lambda: any(sa.metadata.name == "default" for sa in core.list_namespaced_service_account(name).items),
             30, "the default ServiceAccount")
    yield name
    core.delete_namespace(name)


# What a cluster admin grants a namespace admin once, beside the built-in `admin` role, so that
# they may install Kiban in their namespaces: the Role the chart creates may only grant what its
# creator holds (RBAC's escalation check), and `admin` knows nothing of these API groups.
INSTALLER_EXTRAS = [
    {"apiGroups": ["kiban.dev"], "resources": ["foundationmodels", "foundationmodels/status", "foundationmodels/scale",
                                               "foundationmodels/finalizers"], "verbs": ["*"]},
    {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "create", "update"]},
    {"apiGroups": ["monitoring.coreos.com"], "resources": ["podmonitors"], "verbs": ["*"]},
    {"apiGroups": ["route.openshift.io"], "resources": ["routes", "routes/custom-host"], "verbs": ["*"]},
    {"apiGroups": ["inference.networking.k8s.io"], "resources": ["inferencepools"], "verbs": ["*"]},
    {"apiGroups": ["leaderworkerset.x-k8s.io"], "resources": ["leaderworkersets"], "verbs": ["*"]},
    {"apiGroups": [""], "resources": ["events"], "verbs": ["create", "patch"]},
]


@pytest.fixture
def namespace_admin(kube_api, kubeconfig, namespace, watched_namespace, tmp_path) -> Iterator[Path]:
    """A kubeconfig for a ServiceAccount that is `admin` in the two namespaces and nothing cluster-wide."""
    from kubernetes import client

    core, rbac = client.CoreV1Api(kube_api), client.RbacAuthorizationV1Api(kube_api)
    core.create_namespaced_service_account(namespace, {"metadata": {"name": "installer"}})
    extras = f"kiban-installer-extras-{uuid.uuid4().hex[:6]}"
    rbac.create_cluster_role({"metadata": {"name": extras}, "rules": INSTALLER_EXTRAS})
    subject = [{"kind": "ServiceAccount", "name": "installer", "namespace": namespace}]
    for ns in (namespace, watched_namespace):
        for role in ("admin", extras):
            rbac.create_namespaced_role_binding(ns, {
                "metadata": {"name": f"installer-{role}"[:63]},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
                "subjects": subject})
    token = core.create_namespaced_service_account_token(
        "installer", namespace, {"spec": {"expirationSeconds": 3600}}).status.token
    try:
        yield token_kubeconfig(kubeconfig, token, tmp_path / "installer.kubeconfig")
    finally:
        rbac.delete_cluster_role(extras)


@pytest.fixture
def release(kubeconfig, namespace, watched_namespace, namespace_admin) -> Iterator[dict]:
    """helm install by a namespace admin (namespace-scoped: watches `watched_namespace`, --skip-crds:
    the session applied crds/ as the cluster admin), uninstalled by them afterwards."""
    name = f"k{uuid.uuid4().hex[:6]}"
    helm("install", name, str(CHART), "--namespace", namespace, "--set", f"watchNamespace={watched_namespace}",
         "--skip-crds", "--wait", "--timeout", "120s", kubeconfig=namespace_admin, timeout=200)
    try:
        yield {"name": name, "namespace": namespace, "watch": watched_namespace, "fullname": f"{name}-kiban",
               "installer": namespace_admin}
    finally:
        helm("uninstall", name, "--namespace", namespace, "--wait", "--timeout", "60s",
             kubeconfig=namespace_admin, check=False, timeout=120)


def test_the_namespace_admin_can_write_nothing_cluster_wide(release):
    installer = release["installer"]
    for denied in (("create", "clusterroles.rbac.authorization.k8s.io"), ("create", "clusterrolebindings.rbac.authorization.k8s.io"),
                   ("create", "customresourcedefinitions.apiextensions.k8s.io"), ("create", "namespaces"),
                   ("create", "validatingadmissionpolicies.admissionregistration.k8s.io"),
                   ("list", "secrets", "--all-namespaces")):
        assert not can_i(installer, *denied), f"the installer may {' '.join(denied)}"
    assert can_i(installer, "create", "roles.rbac.authorization.k8s.io", "-n", release["watch"])


def test_helm_install_schedules_both_operator_pods_and_both_gateway_pods(kube_api, release):
    from kubernetes import client

    core = client.CoreV1Api(kube_api)
    for component_name, account in (("operator", release["fullname"]), ("gateway", release["fullname"] + "-gateway")):
        pods = core.list_namespaced_pod(release["namespace"], label_selector=(
            f"app.kubernetes.io/instance={release['name']},app.kubernetes.io/component={component_name}")).items
        assert len(pods) == 2, component_name
        for pod in pods:
            assert pod.status.phase == "Running"
            assert pod.spec.node_name.startswith("kiban-cpu-"), pod.spec.node_name
            assert pod.spec.service_account_name == account


def token_kubeconfig(admin: Path, token: str, out: Path) -> Path:
    """A kubeconfig for the same API server and CA, authenticating with `token` only."""
    config = yaml.safe_load(admin.read_text())
    cluster = dict(config["clusters"][0]["cluster"])
    ca_file = cluster.pop("certificate-authority", None)
    if ca_file and "certificate-authority-data" not in cluster:
        cluster["certificate-authority-data"] = base64.b64encode(Path(ca_file).read_bytes()).decode()
    out.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "sa",
        "clusters": [{"name": "c", "cluster": cluster}],
        "users": [{"name": "sa", "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": "c", "user": "sa"}}],
    }))
    return out


def account_kubeconfig(kube_api, admin: Path, account: str, namespace: str, out: Path) -> Path:
    from kubernetes import client

    request = client.CoreV1Api(kube_api).create_namespaced_service_account_token(
        account, namespace, {"spec": {"expirationSeconds": 3600}})
    return token_kubeconfig(admin, request.status.token, out)


@pytest.fixture
def operator_kubeconfig(kube_api, kubeconfig, release, tmp_path) -> Path:
    return account_kubeconfig(kube_api, kubeconfig, release["fullname"], release["namespace"],
                              tmp_path / "operator.kubeconfig")


@pytest.fixture
def gateway_kubeconfig(kube_api, kubeconfig, release, tmp_path) -> Path:
    return account_kubeconfig(kube_api, kubeconfig, release["fullname"] + "-gateway", release["namespace"],
                              tmp_path / "gateway.kubeconfig")


class Answer(str):
    """`kubectl auth can-i`'s answer; truthy only for "yes", and shows kubectl's stderr when printed."""

    def __bool__(self) -> bool:
        return self.startswith("yes")


def can_i(kubeconfig: Path, *args: str) -> Answer:
    done = kubectl(kubeconfig, "auth", "can-i", *args, check=False)
    return Answer(f"{done.stdout.strip()} {done.stderr.strip()}".strip())


def test_service_account_is_refused_outside_its_rules(operator_kubeconfig, release):
    sa = operator_kubeconfig
    watched, other = release["watch"], release["namespace"]
    assert can_i(sa, "patch", "deployments.apps", "-n", watched)
    assert can_i(sa, "patch", "foundationmodels.kiban.dev", "--subresource=status", "-n", watched)
    assert can_i(sa, "update", "leases.coordination.k8s.io", "-n", other)
    assert not can_i(sa, "update", "leases.coordination.k8s.io", "-n", watched)
    assert not can_i(sa, "delete", "leases.coordination.k8s.io", "-n", other)
    for denied in (
        ("list", "customresourcedefinitions.apiextensions.k8s.io"), ("list", "namespaces"),
        ("list", "secrets", "--all-namespaces"), ("get", "secrets", "-n", watched), ("delete", "nodes"),
        ("delete", "pods", "-n", watched), ("create", "deployments.apps", "-n", other),
        ("list", "foundationmodels.kiban.dev", "--all-namespaces"), ("create", "clusterroles.rbac.authorization.k8s.io"),
    ):
        assert not can_i(sa, *denied), f"the operator may {' '.join(denied)}"
    # and the API server itself refuses, not only the review
    refused = kubectl(sa, "get", "secrets", "--all-namespaces", check=False)
    assert refused.returncode != 0 and "forbidden" in refused.stderr.lower()
    refused = kubectl(sa, "delete", "node", "kiban-cpu-0", "--dry-run=server", check=False)
    assert refused.returncode != 0 and "forbidden" in refused.stderr.lower()


def test_gateway_service_account_is_refused_outside_its_rules(gateway_kubeconfig, release):
    sa, watched, other = gateway_kubeconfig, release["watch"], release["namespace"]
    for allowed in (("watch", "foundationmodels.kiban.dev", "-n", watched),
                    ("patch", "foundationmodels.kiban.dev", "--subresource=status", "-n", watched),
                    ("list", "pods", "-n", watched), ("get", "secrets", "-n", watched)):
        assert can_i(sa, *allowed), f"the gateway may not {' '.join(allowed)}"
    for denied in (("patch", "foundationmodels.kiban.dev", "-n", watched),  # no spec changes
                   ("patch", "foundationmodels.kiban.dev", "--subresource=scale", "-n", watched),
                   ("list", "secrets", "-n", watched), ("watch", "secrets", "-n", watched),
                   ("create", "pods", "-n", watched), ("delete", "pods", "-n", watched),
                   ("get", "secrets", "-n", other), ("list", "foundationmodels.kiban.dev", "-n", other),
                   ("patch", "deployments.apps", "-n", watched)):
        assert not can_i(sa, *denied), f"the gateway may {' '.join(denied)}"


def chart_operator_env(namespace: str) -> dict[str, str]:
    """The KIBAN_GATEWAY_* settings the chart gives the operator when installed in `namespace`."""
    operator = component(by_kind(template(namespace=namespace))["Deployment"], "operator")
    return {e["name"]: e["value"] for e in operator["spec"]["template"]["spec"]["containers"][0]["env"]
            if e["name"].startswith("KIBAN_GATEWAY_")}


def test_operator_with_the_chart_service_account_reconciles_a_model_to_ready(
        kube_api, kubeconfig, operator_kubeconfig, gateway_kubeconfig, release, tmp_path):
    """The README's example under the chart's RBAC: the operator and the gateway each run with
    their own ServiceAccount's token; the model is reconciled to Ready (its pod backed by a
    simulator on the pod's IP) and a completion goes through the gateway."""
    import asyncio

    import aiohttp
    from kubernetes import client

    from kiban_dev.demo.backer import PodBacker
    from support import GatewayProcess

    watched = release["watch"]
    log_path = tmp_path / "operator.log"
    backer = PodBacker(kube_api, tmp_path / "file_sd", tmp_path / "sims", namespace=watched, startup_seconds=0)
    gateway = GatewayProcess(gateway_kubeconfig, watched, tmp_path / "gateway.log", pod_name="gw-chart")
    with gateway, backer, OperatorProcess(operator_kubeconfig, watched, log_path, "--lease-namespace", release["namespace"],
                                          "--lease-name", release["fullname"], env=chart_operator_env(release["namespace"]),
                                          unset=("KIBAN_ACCELERATOR_PROFILES",)) as operator:
        proc = operator.proc
        kubectl(kubeconfig, "apply", "-n", watched, "-f", str(ROOT / "examples" / "model.yaml"))
        custom = client.CustomObjectsApi(kube_api)

        def ready():
            if proc.poll() is not None:
                pytest.fail(f"the operator exited with {proc.returncode}:\n{log_path.read_text()[-5000:]}")
            body = custom.get_namespaced_custom_object("kiban.dev", "v1alpha1", watched, "foundationmodels", "llama-8b")
            conditions = {c["type"]: c for c in (body.get("status") or {}).get("conditions") or []}
            return conditions.get("Ready", {}).get("status") == "True" and body

        body = wait_for(ready, 120, "llama-8b Ready=True under the chart's RBAC")
        assert body["status"]["readyReplicas"] >= 1
        lease = client.CoordinationV1Api(kube_api).read_namespaced_lease(release["fullname"], release["namespace"])
        assert lease.spec.holder_identity and lease.spec.lease_duration_seconds == 10
        logs = log_path.read_text(errors="replace")
        assert "403" not in logs and "Forbidden" not in logs, logs[-5000:]
        assert body["status"]["resolved"]["gateway"] is True
        assert body["status"]["endpoint"] == chart_operator_env(release["namespace"])["KIBAN_GATEWAY_URL"] + "/v1"

        async def complete() -> tuple[int, dict]:
            async with aiohttp.ClientSession() as session, session.post(gateway.url + "/v1/chat/completions", json={
                    "model": "llama-8b", "messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 8}) as r:
                return r.status, await r.json()

        status, answer = asyncio.run(complete())
        assert status == 200, answer
        assert answer["usage"]["completion_tokens"] >= 1
        gateway_logs = gateway.logs()
        assert "403" not in gateway_logs and "Forbidden" not in gateway_logs, gateway_logs[-3000:]
