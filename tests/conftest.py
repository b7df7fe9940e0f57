"""Shared fixtures. Nothing here starts a process unless a test asks for it.

control_plane       session: a real etcd + kube-apiserver + controller-manager + scheduler + kwok
kubeconfig          session: KIBAN_KUBECONFIG (e.g. kind, see hack/kind/e2e.sh) or control_plane's
kube_api            a kubernetes.client.ApiClient on that kubeconfig (admin, system:masters)
namespace           a fresh, uniquely named namespace, deleted after the test
prometheus_factory  start PrometheusServer instances; all stopped after the test

Missing binaries FAIL the test with the `make tools` hint: a missing tool is never a skip.
"""

from __future__ import annotations

import os
import re
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from pinned_tools import start_or_fail

if TYPE_CHECKING:  # imported lazily below, so unit tests never load the devcluster or the client
    from kubernetes.client import ApiClient

    from kiban_dev.devcluster import ControlPlane, PrometheusServer

NAMESPACE_LABEL = "kiban.dev/test-namespace"


@pytest.fixture(scope="session")
def control_plane() -> Iterator[ControlPlane]:
    """The session's control plane with the default simulated GPU pool."""
    from kiban_dev.devcluster import ControlPlane

    cluster = ControlPlane()
    start_or_fail(cluster.start)
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def kubeconfig(request: pytest.FixtureRequest) -> Path:
    """The admin kubeconfig: KIBAN_KUBECONFIG when set (an existing cluster), else the local control plane."""
    external = os.environ.get("KIBAN_KUBECONFIG")
    if external:
        path = Path(external)
        if not path.is_file():
            pytest.fail(f"KIBAN_KUBECONFIG={external} is not a file", pytrace=False)
        return path
    return request.getfixturevalue("control_plane").kubeconfig


@pytest.fixture
def kube_api(kubeconfig: Path) -> Iterator[ApiClient]:
    """An ApiClient for the admin kubeconfig, closed after the test."""
    from kubernetes import config

    api_client = config.new_client_from_config(config_file=str(kubeconfig))
    try:
        yield api_client
    finally:
        api_client.close()


def _namespace_name(test_name: str) -> str:
    slug = re.sub(r"[^a-z0-9-]+", "-", test_name.lower()).strip("-")[:40].strip("-")
    return f"t-{slug}-{uuid.uuid4().hex[:6]}"


@pytest.fixture
def namespace(kube_api, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace whose default ServiceAccount exists (so pods can be created at once)."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    core = client.CoreV1Api(kube_api)
    name = _namespace_name(request.node.name)
    core.create_namespace({"metadata": {"name": name, "labels": {NAMESPACE_LABEL: "true"}}})
    deadline = time.monotonic() + 30
    while True:
        try:
            core.read_namespaced_service_account("default", name)
            break
        except ApiException as exc:
            if exc.status != 404 or time.monotonic() > deadline:
                pytest.fail(f"namespace {name}: the default ServiceAccount never appeared ({exc.status})")
            time.sleep(0.1)
    try:
        yield name
    finally:
        try:
            core.delete_namespace(name)
        except ApiException as exc:
            if exc.status != 404:
                raise


@pytest.fixture
def prometheus_factory(tmp_path: Path) -> Iterator[Callable[..., PrometheusServer]]:
    """factory(config=None, *, scrape_interval="1s", **kwargs) -> a started PrometheusServer."""
    from kiban_dev.devcluster import PrometheusServer

    servers: list[PrometheusServer] = []

    def start(config=None, **kwargs) -> PrometheusServer:
        kwargs.setdefault("workdir", tmp_path / f"prometheus-{len(servers)}")
        server = PrometheusServer(config, **kwargs)
        servers.append(server)
        start_or_fail(server.start)
        return server

    try:
        yield start
    finally:
        for server in servers:
            server.stop()
