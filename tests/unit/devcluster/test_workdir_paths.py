"""A relative work directory (make demo's demo-out/work) becomes absolute before anything is written.

The admin kubeconfig names certificate files by path, and the kubernetes client resolves a relative
path against the kubeconfig's own folder: a relative workdir doubled the path and the demo failed.
"""

from pathlib import Path

from kiban_dev.devcluster.cluster import ControlPlane
from kiban_dev.devcluster.prometheus import PrometheusServer


def test_control_plane_workdir_is_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    plane = ControlPlane(workdir=Path("demo-out/work/cluster"))
    assert plane.workdir == tmp_path / "demo-out" / "work" / "cluster"


def test_prometheus_workdir_is_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    server = PrometheusServer(workdir=Path("demo-out/work/prometheus"))
    assert server.workdir == tmp_path / "demo-out" / "work" / "prometheus"
    assert server.file_sd_dir.is_absolute()
