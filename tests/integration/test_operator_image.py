"""The operator image, really built and really run (ARCHITECTURE.md habit 12: what runs in the
cluster ships alone).

The image is built through hack/image/build.sh, the script `make image` runs (warm: 15-25 s;
cold, with mmdebstrap and every wheel downloaded: about 7 minutes, docs/image.md), and then:

- its contents: under a size bound; the runtime distribution `kiban` (`import kiban.cli` and every
  module of it import) in a small layer of its own on top of exactly the pinned closure of
  operator/requirements.lock; no developer module, no pip/setuptools/wheel; files g=u in group 0;
- the operator run FROM it against the local control plane the way the chart runs it: an arbitrary
  UID in group 0, read-only root filesystem with a tmpfs at /tmp, no capabilities,
  `run --standalone -n NS --metrics-port P --liveness URL`, the admin kubeconfig mounted read-only;
  a FoundationModel applied here becomes Ready (kwok runs its pod) and /metrics and /healthz answer.

Where podman cannot build or run, these tests FAIL with the command and its error: never a skip.
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from support import REPO, Cluster, OperatorProcess, model_body, ready_with_running_pods, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1800)]  # a cold build takes minutes

BUILD_SCRIPT = REPO / "hack" / "image" / "build.sh"
# Measured 347.3 MB (347,287,816 bytes) on Debian bookworm's python3.11: base 109 MB, the pinned
# closure 237 MB (kubernetes 128 MB, numpy 73 MB), kiban 1.1 MB. The bound leaves room for the
# lock to move.
SIZE_BOUND_BYTES = 400_000_000
# kiban's own layer, on top of the closure's: what a code change adds (measured 1.1 MB)
KIBAN_LAYER_BOUND_BYTES = 5_000_000
DEVELOPER_MODULES = ("kiban_serving", "kiban_dev", "matplotlib", "scipy", "tqdm", "grafana_foundation_sdk", "pytest")
INSTALLER_MODULES = ("pip", "setuptools", "wheel")
# what OpenShift's restricted-v2 SCC would assign: a UID from the namespace's range, group 0
ARBITRARY_USER = "1000720000:0"
KUBECONFIG_IN_CONTAINER = "/etc/kiban-test/kubeconfig"

# Runs inside the image: what is importable, which distributions are installed, file modes.
PROBE = r"""
import importlib, importlib.metadata, importlib.util, json, os, pkgutil, re, stat, sys
import kiban
def import_error(name):
    try:
        importlib.import_module(name)
    except Exception as exc:
        return f"{name}: {type(exc).__name__}: {exc}"
def found(name):
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False
def mode_faults(root):
    for directory, dirs, files in os.walk(root):
        for path in [directory, *(os.path.join(directory, f) for f in files)]:
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                continue
            if st.st_gid != 0 or (st.st_mode >> 3) & 7 != (st.st_mode >> 6) & 7:
                yield f"{path} {stat.filemode(st.st_mode)} gid={st.st_gid}"
wheels = [os.path.join(d, f) for d, _, fs in os.walk("/usr") for f in fs
          if re.match(r"(pip|setuptools|wheel)-.*\.whl$", f)]
print(json.dumps({
    "import_errors": [e for m in pkgutil.walk_packages(kiban.__path__, "kiban.") if (e := import_error(m.name))],
    "found": [m for m in sys.argv[1:] if found(m)],
    "distributions": sorted(f"{d.metadata['Name']}=={d.version}" for d in importlib.metadata.distributions()),
    "mode_faults": list(mode_faults("/opt/kiban"))[:10],
    "bundled_wheels": wheels,
}))
"""


# ----------------------------------------------------------------------------- helpers


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def locked_pins(text: str) -> set[str]:
    """`name==version` for every pin of a requirements lock, names canonicalised (pure)."""
    return {f"{canonical(name)}=={version}"
            for name, version in re.findall(r"^([A-Za-z0-9_.-]+)==([^\s\\;]+)", text, re.MULTILINE)}


def self_contained_kubeconfig(config: dict, base: Path, read: Callable[[Path], bytes] = Path.read_bytes) -> dict:
    """The kubeconfig with every file it names (relative paths from `base`) inlined as base64
    `*-data` fields, so the one file mounted into a container is all the client needs (pure but
    for `read`)."""
    inlined = {"certificate-authority": "certificate-authority-data",
               "client-certificate": "client-certificate-data", "client-key": "client-key-data"}

    def inline(entry: dict) -> dict:
        out = {k: v for k, v in entry.items() if k not in inlined}
        for field, data_field in inlined.items():
            if field in entry:
                out[data_field] = base64.b64encode(read(base / entry[field])).decode()
        return out

    return {
        **config,
        "clusters": [{**c, "cluster": inline(c["cluster"])} for c in config.get("clusters", [])],
        "users": [{**u, "user": inline(u.get("user") or {})} for u in config.get("users", [])],
    }


def podman(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """podman with the build script's configuration; a non-zero exit fails the test, naming it."""
    command = ["bash", str(BUILD_SCRIPT), "podman", *args]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"`podman {' '.join(args)}` did not finish in {timeout:.0f}s", pytrace=False)
    if done.returncode != 0:
        pytest.fail(f"`podman {' '.join(args)}` failed with exit {done.returncode}:\n{done.stderr[-4000:]}",
                    pytrace=False)
    return done


def http_status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status
    except OSError:
        return None


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def operator_image() -> str:
    """Build the image as `make image` does; its ID (not the tag another checkout may move)."""
    try:
        done = subprocess.run(["bash", str(BUILD_SCRIPT)], capture_output=True, text=True, timeout=1500)
    except subprocess.TimeoutExpired:
        pytest.fail("hack/image/build.sh (make image) did not finish in 1500 s", pytrace=False)
    if done.returncode != 0:
        pytest.fail(f"hack/image/build.sh (make image) failed with exit {done.returncode}; its output ends:\n"
                    f"{done.stderr[-6000:]}", pytrace=False)
    print(done.stderr[-3000:])  # the build's timings, shown when a test fails
    image_id = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    assert re.fullmatch(r"(sha256:)?[0-9a-f]{64}", image_id), f"build.sh printed no image ID: {done.stdout!r}"
    return image_id


@pytest.fixture
def cluster(kube_api, namespace: str, crds: Path) -> Cluster:
    return Cluster(kube_api, namespace)


@pytest.fixture
def container_kubeconfig(crds: Path, tmp_path: Path) -> Path:
    """The test control plane's admin kubeconfig as one self-contained file, readable by group 0
    (the container's group) and nobody else."""
    config = yaml.safe_load(crds.read_text())
    path = tmp_path / "container.kubeconfig"
    path.touch(mode=0o600)
    path.write_text(yaml.safe_dump(self_contained_kubeconfig(config, crds.parent)))
    path.chmod(0o640)
    return path


# ----------------------------------------------------------------------------- tests


def test_self_contained_kubeconfig_inlines_every_file():
    files = {Path("/pki/ca.crt"): b"CA", Path("/w/admin.crt"): b"CERT", Path("/w/admin.key"): b"KEY"}
    config = {"clusters": [{"name": "c", "cluster": {"server": "https://x", "certificate-authority": "/pki/ca.crt"}}],
              "users": [{"name": "u", "user": {"client-certificate": "admin.crt", "client-key": "admin.key"}}]}
    out = self_contained_kubeconfig(config, Path("/w"), files.__getitem__)
    assert out["clusters"][0]["cluster"] == {"server": "https://x", "certificate-authority-data": "Q0E="}
    assert out["users"][0]["user"] == {"client-certificate-data": "Q0VSVA==", "client-key-data": "S0VZ"}


def test_image_holds_the_runtime_distribution_and_nothing_else(operator_image: str):
    inspected = json.loads(podman("image", "inspect", operator_image).stdout)[0]
    size = int(inspected["Size"])
    assert size < SIZE_BOUND_BYTES, f"the image is {size / 1e6:.1f} MB, over the {SIZE_BOUND_BYTES / 1e6:.0f} MB bound"
    layers = [entry["size"] for entry in json.loads(podman("history", "--format", "json", operator_image).stdout)
              if entry["size"]]
    assert layers[0] < KIBAN_LAYER_BOUND_BYTES, (
        f"the top layer is {layers[0] / 1e6:.1f} MB: kiban alone should be; a code change would copy the closure again")
    config = inspected["Config"]
    assert config["User"] == "1001:0"
    assert config["Labels"]["org.opencontainers.image.title"] == "kiban-operator"
    assert config["Labels"]["org.opencontainers.image.licenses"] == "Apache-2.0"

    run = ("run", "--rm", "--network=none", "--user", ARBITRARY_USER, "--read-only", "--read-only-tmpfs=false",
           "--tmpfs", "/tmp", "--entrypoint", "/opt/kiban/bin/python", operator_image)
    podman(*run, "-c", "import kiban.cli")  # fails the test with the traceback if it cannot import
    probe = json.loads(podman(*run, "-c", PROBE, *DEVELOPER_MODULES, *INSTALLER_MODULES).stdout)
    assert probe["import_errors"] == [], f"modules of kiban that do not import in the image: {probe['import_errors']}"
    developer = [m for m in probe["found"] if m in DEVELOPER_MODULES]
    assert developer == [], f"developer modules in the image: {developer}"
    installers = [m for m in probe["found"] if m in INSTALLER_MODULES]
    assert installers == [], f"installers left in the image: {installers}"
    assert probe["bundled_wheels"] == [], f"wheels ensurepip could install pip from: {probe['bundled_wheels']}"
    assert probe["mode_faults"] == [], f"files in /opt/kiban not group 0 with g=u: {probe['mode_faults']}"
    installed = {f"{canonical(pin.split('==')[0])}=={pin.split('==')[1]}" for pin in probe["distributions"]}
    expected = locked_pins((REPO / "operator" / "requirements.lock").read_text()) | {"kiban==0.1.0"}
    assert installed == expected, (f"not in the lock: {sorted(installed - expected)}; "
                                   f"locked but missing: {sorted(expected - installed)}")


@pytest.fixture
def imaged_operator(operator_image: str, crds: Path, namespace: str, container_kubeconfig: Path,
                    tmp_path: Path) -> Iterator[tuple[OperatorProcess, str, int, int]]:
    from kiban_dev.devcluster.processes import free_port

    metrics_port, health_port = free_port(), free_port()
    name = f"kiban-{namespace}"
    launcher = (
        "bash", str(BUILD_SCRIPT), "podman", "run", "--rm", "--name", name, "--network=host",
        "--user", ARBITRARY_USER, "--read-only", "--read-only-tmpfs=false", "--tmpfs", "/tmp",
        "--cap-drop=ALL", "--security-opt=no-new-privileges",
        "--volume", f"{container_kubeconfig}:{KUBECONFIG_IN_CONTAINER}:ro", "--env", f"KUBECONFIG={KUBECONFIG_IN_CONTAINER}",
        operator_image,
    )
    process = OperatorProcess(crds, namespace, tmp_path / "operator.log", f"--liveness=http://127.0.0.1:{health_port}/healthz",
                              metrics_port=metrics_port, launcher=launcher)
    try:
        with process:
            yield process, name, metrics_port, health_port
    finally:
        subprocess.run(["bash", str(BUILD_SCRIPT), "podman", "rm", "--force", "--ignore", name],
                       capture_output=True, timeout=60)


def test_operator_from_the_image_makes_a_model_ready(cluster: Cluster, imaged_operator):
    operator, name, metrics_port, health_port = imaged_operator
    cluster.create_model(model_body("imaged"))
    ready_with_running_pods(cluster, "imaged", operator, timeout=180)
    deployment = cluster.deployment("imaged")
    assert {f.manager for f in deployment.metadata.managed_fields if f.operation == "Apply"} == {"kiban"}
    wait_for(lambda: http_status(f"http://127.0.0.1:{health_port}/healthz") == 200, 30, what="/healthz 200")
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as response:
        assert "kiban_reconcile_total" in response.read().decode(), "no kiban_reconcile_total on /metrics"
    ids = podman("exec", name, "/opt/kiban/bin/python", "-c", "import os; print(os.getuid(), os.getgid())").stdout
    assert ids.split() == ARBITRARY_USER.split(":")
