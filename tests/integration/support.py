"""Plain helpers the integration tests share (fixtures live in conftest.py next to this file).

Imported as `from support import ...`: pytest's default import mode puts this directory on
sys.path for the test modules here, as tests/unit/builders does with fm_cases.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
CRDS = Path(os.environ.get("KIBAN_DEV_CRDS", REPO / "crds"))


def wait_for(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.5) -> Any:
    """Poll `check` until it returns something truthy; fail naming `what` and the last value."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}; last seen: {last!r}")


def kubectl(kubeconfig: Path, *args: str, input_text: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """The pinned kubectl on `kubeconfig`; fails the test on a non-zero exit unless check=False."""
    from kiban.devcluster import tool_path

    done = subprocess.run(
        [str(tool_path("kubectl")), f"--kubeconfig={kubeconfig}", *args],
        input=input_text, capture_output=True, text=True, timeout=60,
    )
    if check and done.returncode != 0:
        pytest.fail(f"kubectl {' '.join(args)} failed: {done.stderr}")
    return done


class OperatorProcess:
    """`python -m kiban run` as a child process, logs to a file, stopped with SIGTERM.

    --standalone unless `extra` has --peering; `env` is added to os.environ (with KUBECONFIG and
    PYTHONUNBUFFERED), `unset` names variables removed from it. As a context manager it starts on
    enter and, on exit, stops and prints the log's tail (shown by pytest when the test failed).
    """

    def __init__(self, kubeconfig: Path, namespace: str, log_path: Path, *extra: str,
                 env: dict[str, str] | None = None, unset: tuple[str, ...] = (), metrics_port: int = 0) -> None:
        mode = list(extra) if "--peering" in extra else ["--standalone", *extra]
        self.args = [
            sys.executable, "-m", "kiban", "run", "-n", namespace,
            "--metrics-port", str(metrics_port), "--resync-seconds", "5", *mode,
        ]
        self.env = {**os.environ, "KUBECONFIG": str(kubeconfig), "PYTHONUNBUFFERED": "1", **(env or {})}
        for name in unset:
            self.env.pop(name, None)
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None

    def start(self) -> OperatorProcess:
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.args, env=self.env, stdout=self.log, stderr=subprocess.STDOUT, cwd=REPO)
        return self

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        self.proc = None

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def __enter__(self) -> OperatorProcess:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
        print(self.logs()[-20000:])  # shown by pytest only when the test failed
