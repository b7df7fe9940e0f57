"""A real Prometheus server (the pinned binary from `make tools`) for tests, the demo and dashboards.

Targets are discovered from a file_sd directory, so a test can add or remove scrape targets by
writing JSON files (Prometheus re-reads them within the refresh interval) instead of restarting.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

import yaml

from kiban_dev.devcluster.processes import Component, ComponentError, free_port, start_component, stop_components
from kiban_dev.devcluster.tools import tool_path

log = logging.getLogger(__name__)

DEFAULT_JOB = "kiban"


def file_sd_scrape_config(job_name: str, directory: Path, refresh_interval: str = "1s",
                          metrics_path: str = "/metrics") -> dict:
    """A scrape job whose targets come from every *.json file in `directory`."""
    if not job_name:
        raise ValueError("job_name must not be empty")
    return {
        "job_name": job_name,
        "metrics_path": metrics_path,
        "file_sd_configs": [{"files": [str(directory / "*.json")], "refresh_interval": refresh_interval}],
    }


def build_config(scrape_configs: Sequence[Mapping], scrape_interval: str = "1s",
                 evaluation_interval: str | None = None, rule_files: Sequence[Path] = ()) -> dict:
    """A prometheus.yml as a dict (pure)."""
    config: dict = {
        "global": {
            "scrape_interval": scrape_interval,
            "scrape_timeout": scrape_interval if _seconds(scrape_interval) < 10 else "10s",
            "evaluation_interval": evaluation_interval or scrape_interval,
        },
        "scrape_configs": [dict(c) for c in scrape_configs],
    }
    if rule_files:
        config["rule_files"] = [str(p) for p in rule_files]
    return config


def file_sd_targets(targets: Sequence[str], labels: Mapping[str, str] | None = None) -> list[dict]:
    """The file_sd JSON document for `targets` ("host:port") sharing `labels` (pure)."""
    for target in targets:
        host, sep, port = target.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"target {target!r} must be host:port")
    return [{"targets": list(targets), "labels": dict(labels or {})}]


def _seconds(duration: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    for suffix in ("ms", "s", "m", "h"):
        if duration.endswith(suffix) and duration[: -len(suffix)].replace(".", "", 1).isdigit():
            return float(duration[: -len(suffix)]) * units[suffix]
    raise ValueError(f"scrape_interval {duration!r} is not a duration like 1s, 500ms or 1m")


class PrometheusError(RuntimeError):
    """Prometheus failed to start, reload or answer; carries its log tail where relevant."""


class PrometheusServer:
    """Prometheus on a free loopback port.

    With `config=None` it scrapes one job, "kiban", from file_sd files in `file_sd_dir`; write
    them with `set_targets()`. Pass a full config dict to take control (use `file_sd_dir` in it
    if you want file discovery). Context manager; stop() leaves no process behind.
    """

    def __init__(self, config: Mapping | None = None, *, scrape_interval: str = "1s",
                 workdir: Path | None = None, startup_timeout: float = 30.0,
                 extra_args: Sequence[str] = ()) -> None:
        _seconds(scrape_interval)  # a bad interval fails here, naming the field
        self.scrape_interval = scrape_interval
        self._own_workdir = workdir is None
        self.workdir = (Path(workdir).resolve() if workdir is not None
                        else Path(tempfile.mkdtemp(prefix="kiban-prometheus-")))
        self.file_sd_dir = self.workdir / "file_sd"
        self.file_sd_dir.mkdir(parents=True, exist_ok=True)
        self.config_path = self.workdir / "prometheus.yml"
        self.config = dict(config) if config is not None else build_config(
            [file_sd_scrape_config(DEFAULT_JOB, self.file_sd_dir)], scrape_interval)
        self.startup_timeout = startup_timeout
        self.extra_args = list(extra_args)
        self.port: int | None = None
        self._component: Component | None = None

    @property
    def url(self) -> str:
        if self.port is None:
            raise PrometheusError("Prometheus has not been started")
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._component.pid if self._component else None

    def __enter__(self) -> PrometheusServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> None:
        if self._component is not None:
            raise PrometheusError("Prometheus is already running")
        binary = tool_path("prometheus")
        self._write_config()
        self.port = free_port()
        self._component = start_component("prometheus", [
            str(binary),
            f"--config.file={self.config_path}",
            f"--storage.tsdb.path={self.workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--web.enable-lifecycle",
            "--storage.tsdb.retention.time=1d",
            *self.extra_args,
        ], self.workdir / "logs")
        deadline = time.monotonic() + self.startup_timeout
        while not self._get_ok("/-/ready"):
            try:
                self._component.check_alive()
            except ComponentError as exc:
                self.stop()
                raise PrometheusError(str(exc)) from None
            if time.monotonic() > deadline:
                error = self._component.failure(f"was not ready within {self.startup_timeout:.0f}s")
                self.stop()
                raise PrometheusError(str(error))
            time.sleep(0.1)
        log.info("Started Prometheus", extra={"url": self.url, "config": str(self.config_path)})

    def stop(self) -> None:
        if self._component is not None:
            stop_components([self._component])
            self._component = None
            log.info("Stopped Prometheus", extra={"workdir": str(self.workdir)})
        if self._own_workdir and self.workdir.exists():
            shutil.rmtree(self.workdir, ignore_errors=True)

    def set_config(self, config: Mapping) -> None:
        """Replace the configuration and reload it."""
        self.config = dict(config)
        self._write_config()
        self.reload()

    def reload(self) -> None:
        """Ask Prometheus to re-read its config (POST /-/reload); fail with its answer if it refuses."""
        request = urllib.request.Request(f"{self.url}/-/reload", method="POST")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                if response.status != 200:
                    raise PrometheusError(f"reload answered {response.status}")
        except urllib.error.HTTPError as exc:
            raise PrometheusError(f"reload failed: {exc.code} {exc.read().decode(errors='replace').strip()}") from None
        log.info("Reloaded Prometheus", extra={"url": self.url})

    def set_targets(self, name: str, targets: Sequence[str], labels: Mapping[str, str] | None = None) -> Path:
        """Write <file_sd_dir>/<name>.json atomically; Prometheus picks it up on its next refresh."""
        if not name or "/" in name:
            raise ValueError(f"target file name {name!r} must be a plain, non-empty name")
        path = self.file_sd_dir / f"{name}.json"
        staging = path.with_suffix(".json.tmp")
        staging.write_text(json.dumps(file_sd_targets(targets, labels)))
        os.replace(staging, path)
        return path

    def query(self, promql: str) -> list[dict]:
        """Instant query; returns data.result (raises PrometheusError on an API error)."""
        url = f"{self.url}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                body = json.load(response)
        except urllib.error.HTTPError as exc:
            raise PrometheusError(f"query {promql!r} failed: {exc.read().decode(errors='replace')}") from None
        if body.get("status") != "success":
            raise PrometheusError(f"query {promql!r} failed: {body}")
        return body["data"]["result"]

    def active_targets(self) -> list[dict]:
        with urllib.request.urlopen(f"{self.url}/api/v1/targets?state=active", timeout=10) as response:
            return json.load(response)["data"]["activeTargets"]

    def _write_config(self) -> None:
        self.config_path.write_text(yaml.safe_dump(self.config, sort_keys=False))

    def _get_ok(self, path: str) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}{path}", timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False
