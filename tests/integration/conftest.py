"""Fixtures the integration tests share (plain helpers are in support.py).

crds    session: every crds/*.yaml (or $KIBAN_DEV_CRDS) applied server-side and Established;
        the value is the admin kubeconfig
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from support import CRDS, kubectl


@pytest.fixture(scope="session")
def crds(kubeconfig: Path) -> Path:
    """Every CRD in crds/, applied and Established."""
    files = sorted(CRDS.glob("*.yaml"))
    assert files, f"{CRDS} has no CRDs: run `make crds`"
    for path in files:
        kubectl(kubeconfig, "apply", "--server-side", "-f", str(path))
    for attempt in range(10):  # a CRD just applied may have no status yet: kubectl wait then errors out
        done = kubectl(kubeconfig, "wait", "--for=condition=Established", "--timeout=60s", "crd", "--all", check=False)
        if done.returncode == 0:
            break
        time.sleep(0.5)
    else:
        pytest.fail(f"the CRDs never became Established: {done.stderr}")
    return kubeconfig
