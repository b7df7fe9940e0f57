"""Run kiban-sim as a child process (for tests, the demo and e2e), and stop it cleanly."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class SimulatorProcess:
    """`python -m kiban_serving.sim.server ...` on a port of its own; a context manager.

    extra_args are passed through (e.g. ["--speedup", "10", "--max-num-seqs", "4"]).
    """

    def __init__(
        self,
        served_model_name: str,
        profile: str,
        extra_args: list[str] | None = None,
        port: int | None = None,
        host: str = "127.0.0.1",
        log_path: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.host = host
        self.port = port or free_port()
        self.url = f"http://{host}:{self.port}"
        self.args = [
            sys.executable, "-m", "kiban_serving.sim.server",
            "--host", host, "--port", str(self.port),
            "--served-model-name", served_model_name, "--profile", profile,
            *(extra_args or []),
        ]  # fmt: skip
        self.log_path = log_path
        self.env = env
        self.process: subprocess.Popen | None = None
        self._log = None

    def start(self) -> SimulatorProcess:
        if self.log_path is not None:
            self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(self.args, stdout=self._log or subprocess.DEVNULL, stderr=subprocess.STDOUT,
                                        env=self.env)
        return self

    def wait_listening(self, timeout_s: float = 20.0) -> None:
        """Until /metrics answers (the server is up, possibly still 'starting')."""
        self._wait(lambda status: status == 200, "/metrics", timeout_s)

    def wait_healthy(self, timeout_s: float = 20.0) -> None:
        """Until /health answers 200 (startup is over)."""
        self._wait(lambda status: status == 200, "/health", timeout_s)

    def health_status(self) -> int | None:
        return _status(self.url + "/health")

    def _wait(self, ok, path: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"kiban-sim exited with code {self.process.returncode}: {' '.join(self.args)}")
            if ok(_status(self.url + path)):
                return
            time.sleep(0.05)
        raise TimeoutError(f"kiban-sim at {self.url} did not answer {path} within {timeout_s}s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._log is not None:
            self._log.close()

    def __enter__(self) -> SimulatorProcess:
        self.start()
        try:
            self.wait_listening()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None
