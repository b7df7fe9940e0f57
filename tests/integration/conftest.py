"""Fixtures the integration tests share (plain helpers are in support.py).

crds             session: every crds/*.yaml (or $KIBAN_DEV_CRDS) applied server-side and
                 Established; the value is the admin kubeconfig
leaderworkerset  session: the real LeaderWorkerSet controller (sigs.k8s.io/lws from `make
                 tools`) with its webhooks beside the session's control plane, its CRDs from the
                 pinned module; with KIBAN_KUBECONFIG the cluster must already serve the API.
                 The value is the admin kubeconfig
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pinned_tools import start_or_fail

from support import CRDS, kubectl


@pytest.fixture(scope="session")
def crds(kubeconfig: Path) -> Path:
    """Every CRD in crds/, applied and Established."""
    files = sorted(CRDS.glob("*.yaml"))
    assert files, f"{CRDS} has no CRDs: run `make crds`"
    for path in files:
        kubectl(kubeconfig, "apply", "--server-side", "-f", str(path))
    from kiban_dev.devcluster import wait_crds_established

    wait_crds_established(kubeconfig)
    return kubeconfig


@pytest.fixture(scope="session")
def leaderworkerset(request: pytest.FixtureRequest, crds: Path) -> Path:
    """leaderworkerset.x-k8s.io/v1 served by the real controller, webhooks included."""
    if os.environ.get("KIBAN_KUBECONFIG"):
        served = kubectl(crds, "get", "--raw", "/apis/leaderworkerset.x-k8s.io/v1", check=False)
        if served.returncode != 0:
            pytest.fail("KIBAN_KUBECONFIG's cluster does not serve leaderworkerset.x-k8s.io/v1: install "
                        "LeaderWorkerSet there first", pytrace=False)
        return crds
    start_or_fail(request.getfixturevalue("control_plane").start_leaderworkerset)
    return crds
