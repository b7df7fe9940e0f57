"""The real LeaderWorkerSet controller (sigs.k8s.io/lws, built by `make tools`) beside the dev control plane.

How it runs outside a cluster (findings in hack/tools/README.md):
- its CRDs come from the pinned module: LeaderWorkerSet, and DisaggregatedSet, without which
  v0.9.0 exits after its cache-sync timeout; both are over a megabyte, so they are applied
  server-side (client-side apply's last-applied annotation would not hold them);
- a Configuration file turns its internal certificate management off (it would issue a
  certificate for lws-webhook-service.lws-system.svc), leader election off (no Lease in
  lws-system), metrics off, and binds the webhook and health ports to 127.0.0.1;
- the webhook serves a certificate for 127.0.0.1 signed by the dev cluster's own CA
  (pki.sign_serving_cert), and the webhook configurations point at https://127.0.0.1:PORT with
  that CA as caBundle;
- the webhook configurations are upstream's own (config/webhook/manifests.yaml, copied from the
  module by `make tools`), with URL clientConfigs; the pod webhooks (which label group members
  and inject LWS_LEADER_ADDRESS, LWS_GROUP_SIZE, LWS_WORKER_INDEX) see only pods carrying
  leaderworkerset.sigs.k8s.io/name, as upstream's kustomize patches say, so a stopped
  controller never blocks anyone else's pods;
- the configurations are registered once /readyz answers, and start() returns once a
  server-side dry run of a LeaderWorkerSet passes both webhooks.
"""

from __future__ import annotations

import base64
import logging
import subprocess
import time
from pathlib import Path
from typing import Any

import yaml

from kiban_dev.devcluster.pki import Pki, sign_serving_cert
from kiban_dev.devcluster.processes import Component, free_port, start_component, stop_components
from kiban_dev.devcluster.tools import lws_crd_paths, lws_webhook_manifests_path, tool_path

log = logging.getLogger(__name__)

LWS_GROUP = "leaderworkerset.x-k8s.io"
LWS_NAME_LABEL = "leaderworkerset.sigs.k8s.io/name"
MUTATING = "lws-mutating-webhook-configuration"
VALIDATING = "lws-validating-webhook-configuration"
CRD_NAMES = ("leaderworkersets.leaderworkerset.x-k8s.io", "disaggregatedsets.disaggregatedset.x-k8s.io")


class LeaderWorkerSetError(RuntimeError):
    """The LeaderWorkerSet controller could not be installed or did not become ready."""


def controller_config(webhook_port: int, health_port: int, cert_dir: Path) -> dict[str, Any]:
    """The config.lws.x-k8s.io/v1alpha1 Configuration (strictly decoded: no unknown fields)."""
    return {
        "apiVersion": "config.lws.x-k8s.io/v1alpha1",
        "kind": "Configuration",
        "leaderElection": {"leaderElect": False},
        "internalCertManagement": {"enable": False},
        "webhook": {"host": "127.0.0.1", "port": webhook_port, "certDir": str(cert_dir)},
        "metrics": {"bindAddress": "0"},
        "health": {"healthProbeBindAddress": f"127.0.0.1:{health_port}"},
    }


def webhook_configurations(manifests: str, port: int, ca_pem: bytes) -> list[dict[str, Any]]:
    """Upstream's controller-gen webhook configurations (config/webhook/manifests.yaml of the pinned
    module), pointed at https://127.0.0.1:PORT with the cluster CA as caBundle, named as upstream's
    kustomization names them, and with the objectSelector its kustomize patches give the pod hooks."""
    ca = base64.b64encode(ca_pem).decode()
    names = {"MutatingWebhookConfiguration": MUTATING, "ValidatingWebhookConfiguration": VALIDATING}
    out = []
    for document in yaml.safe_load_all(manifests):
        if not document:
            continue
        if document.get("kind") not in names:
            raise LeaderWorkerSetError(f"unexpected {document.get('kind')!r} in the LWS webhook manifests")
        document["metadata"] = {"name": names[document["kind"]]}
        for hook in document["webhooks"]:
            path = hook["clientConfig"]["service"]["path"]
            hook["clientConfig"] = {"url": f"https://127.0.0.1:{port}{path}", "caBundle": ca}
            if any("pods" in rule.get("resources", ()) for rule in hook.get("rules", ())):
                hook["objectSelector"] = {"matchExpressions": [{"key": LWS_NAME_LABEL, "operator": "Exists"}]}
        out.append(document)
    return sorted(out, key=lambda d: d["kind"])  # Mutating before Validating


def probe_object(namespace: str = "default") -> dict[str, Any]:
    """A LeaderWorkerSet for a server-side dry run: admitted only when both webhooks answer."""
    container = {"name": "probe", "image": "registry.k8s.io/pause:3.10"}
    return {
        "apiVersion": f"{LWS_GROUP}/v1", "kind": "LeaderWorkerSet",
        "metadata": {"name": "kiban-webhook-probe", "namespace": namespace},
        "spec": {"replicas": 1, "leaderWorkerTemplate": {"size": 2, "workerTemplate": {"spec": {
            "containers": [container]}}}},
    }


def start_leaderworkerset(kubeconfig: Path, pki: Pki, workdir: Path, deadline: float) -> Component:
    """Install the CRDs, start lws-controller and register its webhooks; returns its Component
    (the caller stops it with the control plane). Raises LeaderWorkerSetError."""
    from kubernetes import client, config
    from kubernetes.client.exceptions import ApiException

    binary, crds, kubectl = tool_path("lws-controller"), lws_crd_paths(), tool_path("kubectl")
    manifests = lws_webhook_manifests_path()
    home = workdir / "leaderworkerset"
    cert_dir = home / "webhook-certs"
    sign_serving_cert(pki, cert_dir, "lws-webhook")
    for crd in crds:
        applied = subprocess.run([str(kubectl), f"--kubeconfig={kubeconfig}", "apply", "--server-side",
                                  "--field-manager=kiban-dev", "-f", str(crd)],
                                 capture_output=True, text=True, timeout=120)
        if applied.returncode != 0:
            raise LeaderWorkerSetError(f"applying {crd.name} failed: {applied.stderr.strip()}")
    webhook_port, health_port = free_port(), free_port()
    config_path = home / "controller-config.yaml"
    config_path.write_text(yaml.safe_dump(controller_config(webhook_port, health_port, cert_dir), sort_keys=False))
    with config.new_client_from_config(config_file=str(kubeconfig)) as api:
        extensions = client.ApiextensionsV1Api(api)
        _until(deadline, "the LeaderWorkerSet CRDs to be Established", lambda: all(
            _established(extensions, name) for name in CRD_NAMES))
        component = start_component("lws-controller", [
            str(binary), f"--config={config_path}", f"--kubeconfig={kubeconfig}", "--zap-log-level=info"],
            workdir / "logs")
        try:
            _until(deadline, "lws-controller /readyz", lambda: _alive(component) and _ready(health_port))
            admission = client.AdmissionregistrationV1Api(api)
            mutating, validating = webhook_configurations(manifests.read_text(), webhook_port, pki.ca_cert.read_bytes())
            _replace(lambda: admission.delete_mutating_webhook_configuration(MUTATING),
                     lambda: admission.create_mutating_webhook_configuration(mutating))
            _replace(lambda: admission.delete_validating_webhook_configuration(VALIDATING),
                     lambda: admission.create_validating_webhook_configuration(validating))
            custom = client.CustomObjectsApi(api)

            def admits() -> bool:
                _alive(component)
                try:
                    custom.create_namespaced_custom_object(LWS_GROUP, "v1", "default", "leaderworkersets",
                                                           probe_object(), dry_run="All")
                    return True
                except ApiException:
                    return False

            _until(deadline, "the LeaderWorkerSet webhooks to admit a dry run", admits)
        except BaseException:
            stop_components([component])
            raise
    log.info("Started LeaderWorkerSet controller", extra={"webhook_port": webhook_port, "pid": component.pid})
    return component


def _alive(component: Component) -> bool:
    if not component.running():
        raise LeaderWorkerSetError(str(component.failure(f"exited with code {component.popen.returncode}")))
    return True


def _ready(port: int) -> bool:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


def _established(extensions: Any, name: str) -> bool:
    from kubernetes.client.exceptions import ApiException

    try:
        crd = extensions.read_custom_resource_definition(name)
    except ApiException:
        return False
    return any(c.type == "Established" and c.status == "True" for c in (crd.status.conditions or []))


def _replace(delete: Any, create: Any) -> None:
    """Create, replacing a leftover of the same name (a dev cluster restarted on its work directory)."""
    from kubernetes.client.exceptions import ApiException

    try:
        delete()
    except ApiException as exc:
        if exc.status != 404:
            raise
    create()


def _until(deadline: float, what: str, check: Any) -> None:
    while not check():
        if time.monotonic() > deadline:
            raise LeaderWorkerSetError(f"timed out waiting for {what}")
        time.sleep(0.2)
