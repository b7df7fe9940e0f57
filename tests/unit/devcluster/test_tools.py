"""versions.env parsing and cache paths: the Python side agrees with hack/tools/build.sh."""

import os
import subprocess
from pathlib import Path

import pytest

from kiban_dev.devcluster import tools
from kiban_dev.devcluster.tools import (
    ToolsMissingError,
    cache_root,
    expected_path,
    load_versions,
    parse_versions,
)


def test_parse_versions_reads_shell_key_values_with_comments_and_quotes():
    text = '# pins\n\nKUBERNETES_VERSION=v1.34.4\nKWOK_VERSION="v0.8.0"\nHELM_VERSION=\'v3.22.0\'\n'
    assert parse_versions(text) == {
        "KUBERNETES_VERSION": "v1.34.4", "KWOK_VERSION": "v0.8.0", "HELM_VERSION": "v3.22.0"}


@pytest.mark.parametrize("text, needle", [
    ("export KUBERNETES_VERSION=v1", "line 1"),
    ("A=1\nnot a pair\n", "line 2"),
    ("ETCD_VERSION=\n", "ETCD_VERSION"),
])
def test_parse_versions_rejects_bad_lines_naming_them(text, needle):
    with pytest.raises(ValueError, match=needle):
        parse_versions(text)


def test_repository_versions_file_pins_every_tool():
    versions = load_versions()
    assert set(tools.TOOL_DIR_PREFIX) <= set(versions)
    assert versions["KUBERNETES_VERSION"] == "v1.34.4"
    assert versions["PROMETHEUS_DEB_VERSION"] == "2.42.0+ds-5+deb12u1"


def test_python_parse_matches_what_bash_sources():
    """The file is sourced by build.sh; both readers must see the same values."""
    script = f'set -a; source "{tools.VERSIONS_ENV}"; env -0'
    output = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True,
                            env={"PATH": os.environ["PATH"]}).stdout
    bash_env = dict(item.split("=", 1) for item in output.split("\0") if "=" in item)
    for key, value in load_versions().items():
        assert bash_env[key] == value


def test_go_module_pins_match_versions_env():
    versions = load_versions()
    hack = tools.VERSIONS_ENV.parent
    pins = {
        "kubernetes/go.mod": f"k8s.io/kubernetes {versions['KUBERNETES_VERSION']}",
        "kwok/go.mod": f"sigs.k8s.io/kwok {versions['KWOK_VERSION']}",
        "helm/go.mod": f"helm.sh/helm/v3 {versions['HELM_VERSION']}",
        "etcd/go.mod": f"go.etcd.io/etcd/server/v3 {versions['ETCD_VERSION']}",
        "gaie/go.mod": f"sigs.k8s.io/gateway-api-inference-extension {versions['GAIE_VERSION']}",
        "lws/go.mod": f"sigs.k8s.io/lws {versions['LWS_VERSION']}",
    }
    for gomod, requirement in pins.items():
        assert requirement in (hack / gomod).read_text(), gomod


def test_cache_root_precedence():
    assert cache_root({"KIBAN_TOOLS_CACHE": "/x", "XDG_CACHE_HOME": "/y", "HOME": "/h"}) == Path("/x")
    assert cache_root({"XDG_CACHE_HOME": "/y", "HOME": "/h"}) == Path("/y/kiban/tools")
    assert cache_root({"HOME": "/h"}) == Path("/h/.cache/kiban/tools")


def test_expected_paths_are_keyed_by_tool_version():
    versions = {"KUBERNETES_VERSION": "v1.34.4", "PROMETHEUS_DEB_VERSION": "2.42.0+ds-5+deb12u1"}
    root = Path("/c")
    assert expected_path("kube-scheduler", versions, root) == Path("/c/kubernetes-v1.34.4/bin/kube-scheduler")
    assert expected_path("promtool", versions, root) == Path("/c/prometheus-2.42.0+ds-5+deb12u1/bin/promtool")
    with pytest.raises(ValueError, match="unknown tool 'kubelet'"):
        expected_path("kubelet", versions, root)


def test_missing_tool_tells_the_user_to_run_make_tools(tmp_path, monkeypatch):
    monkeypatch.setenv("KIBAN_TOOLS_CACHE", str(tmp_path))
    with pytest.raises(ToolsMissingError, match="make tools"):
        tools.tool_path("kube-apiserver")
    with pytest.raises(ToolsMissingError, match="make tools"):
        tools.kwok_stages_path()


def test_present_tool_is_found_in_the_override_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("KIBAN_TOOLS_CACHE", str(tmp_path))
    path = expected_path("helm", load_versions(), tmp_path)
    path.parent.mkdir(parents=True)
    path.write_text("#!/bin/sh\n")
    path.chmod(0o755)
    assert tools.tool_path("helm") == path
