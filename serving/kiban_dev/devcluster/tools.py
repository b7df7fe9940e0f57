"""Where the pinned control-plane binaries live.

`make tools` (hack/tools/build.sh) builds them into a cache keyed by version; this module finds
them there. Versions are read from hack/tools/versions.env, the one place they are written.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

VERSIONS_ENV = Path(__file__).resolve().parents[3] / "hack" / "tools" / "versions.env"

# binary name -> the versions.env key of the tool that provides it
BINARY_TOOL = {
    "kube-apiserver": "KUBERNETES_VERSION",
    "kube-controller-manager": "KUBERNETES_VERSION",
    "kube-scheduler": "KUBERNETES_VERSION",
    "kubectl": "KUBERNETES_VERSION",
    "kwok": "KWOK_VERSION",
    "helm": "HELM_VERSION",
    "etcd": "ETCD_VERSION",
    "prometheus": "PROMETHEUS_DEB_VERSION",
    "promtool": "PROMETHEUS_DEB_VERSION",
    "lws-controller": "LWS_VERSION",
}

# versions.env key -> the directory prefix build.sh uses in the cache
TOOL_DIR_PREFIX = {
    "KUBERNETES_VERSION": "kubernetes",
    "KWOK_VERSION": "kwok",
    "HELM_VERSION": "helm",
    "ETCD_VERSION": "etcd",
    "PROMETHEUS_DEB_VERSION": "prometheus",
    "LWS_VERSION": "lws",
}

_LINE = re.compile(r"^(?P<key>[A-Za-z_][A-Za-z0-9_]*)=(?P<value>.*)$")


class ToolsMissingError(RuntimeError):
    """A pinned binary is not in the cache: the user has to run `make tools`."""


def parse_versions(text: str) -> dict[str, str]:
    """Parse shell KEY=VALUE lines (comments and blank lines allowed, optional quotes)."""
    versions: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = _LINE.match(line)
        if match is None:
            raise ValueError(f"versions.env line {number}: expected KEY=VALUE, got {raw!r}")
        value = match["value"].strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        if not value:
            raise ValueError(f"versions.env line {number}: {match['key']} has an empty value")
        versions[match["key"]] = value
    return versions


def load_versions(path: Path = VERSIONS_ENV) -> dict[str, str]:
    return parse_versions(path.read_text())


def cache_root(environ: dict[str, str] | None = None) -> Path:
    """KIBAN_TOOLS_CACHE, else ${XDG_CACHE_HOME:-$HOME/.cache}/kiban/tools (as build.sh)."""
    env = os.environ if environ is None else environ
    if env.get("KIBAN_TOOLS_CACHE"):
        return Path(env["KIBAN_TOOLS_CACHE"])
    xdg = env.get("XDG_CACHE_HOME") or str(Path(env.get("HOME", str(Path.home()))) / ".cache")
    return Path(xdg) / "kiban" / "tools"


def tool_dir(key: str, versions: dict[str, str], root: Path) -> Path:
    """The cache directory of one tool, e.g. <root>/kubernetes-v1.34.4."""
    if key not in versions:
        raise ToolsMissingError(f"hack/tools/versions.env does not define {key}")
    return root / f"{TOOL_DIR_PREFIX[key]}-{versions[key]}"


def expected_path(name: str, versions: dict[str, str], root: Path) -> Path:
    """Where build.sh puts binary `name` (pure: does not look at the disk)."""
    if name not in BINARY_TOOL:
        raise ValueError(f"unknown tool {name!r}; known: {', '.join(sorted(BINARY_TOOL))}")
    return tool_dir(BINARY_TOOL[name], versions, root) / "bin" / name


def _missing(path: Path, what: str) -> ToolsMissingError:
    return ToolsMissingError(f"{what} not found at {path}; run `make tools` to build the pinned tools")


def tool_path(name: str) -> Path:
    """The cached binary `name`; raises ToolsMissingError telling the user to run `make tools`."""
    path = expected_path(name, load_versions(), cache_root())
    if not (path.is_file() and os.access(path, os.X_OK)):
        raise _missing(path, name)
    return path


GAIE_CRD = "config/crd/bases/inference.networking.k8s.io_inferencepools.yaml"


def inference_pool_crd_path() -> Path:
    """The InferencePool CRD inside the pinned Gateway API Inference Extension module, where
    build.sh downloaded it (the module cache; its directory is recorded in the tools cache)."""
    versions = load_versions()
    if "GAIE_VERSION" not in versions:
        raise ToolsMissingError("hack/tools/versions.env does not define GAIE_VERSION")
    record = cache_root() / f"gaie-{versions['GAIE_VERSION']}" / "module-dir"
    if not record.is_file():
        raise _missing(record, "the gateway-api-inference-extension module record")
    path = Path(record.read_text().strip()) / GAIE_CRD
    if not path.is_file():
        raise _missing(path, "the InferencePool CRD")
    return path


def kwok_stages_path() -> Path:
    """The upstream kwok stages (node initialise/heartbeat, pod ready/complete/delete)."""
    path = tool_dir("KWOK_VERSION", load_versions(), cache_root()) / "stages" / "default.yaml"
    if not path.is_file():
        raise _missing(path, "kwok stages")
    return path


LWS_CRD_FILES = ("leaderworkerset.x-k8s.io_leaderworkersets.yaml", "disaggregatedset.x-k8s.io_disaggregatedsets.yaml")


def lws_crd_paths() -> list[Path]:
    """The LeaderWorkerSet and DisaggregatedSet CRDs, copied from the pinned sigs.k8s.io/lws module."""
    folder = tool_dir("LWS_VERSION", load_versions(), cache_root()) / "crds"
    paths = [folder / name for name in LWS_CRD_FILES]
    for path in paths:
        if not path.is_file():
            raise _missing(path, "the LeaderWorkerSet CRDs")
    return paths


def lws_webhook_manifests_path() -> Path:
    """controller-gen's webhook configurations of the pinned sigs.k8s.io/lws (config/webhook/manifests.yaml)."""
    path = tool_dir("LWS_VERSION", load_versions(), cache_root()) / "webhook" / "manifests.yaml"
    if not path.is_file():
        raise _missing(path, "the LeaderWorkerSet webhook manifests")
    return path
