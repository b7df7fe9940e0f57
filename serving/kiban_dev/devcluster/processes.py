"""Child processes of the dev cluster: start each in its own process group, log to a file,
stop the whole group, and never leave one behind."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


class ComponentError(RuntimeError):
    """A component failed to start or become ready; the message carries its log tail."""


def free_port() -> int:
    """A free TCP port on the loopback interface (envtest and kwokctl pick ports the same way)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def log_tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return "(no log written)"
    return "\n".join(text.splitlines()[-lines:])


@dataclass
class Component:
    name: str
    argv: list[str]
    log_path: Path
    popen: subprocess.Popen

    @property
    def pid(self) -> int:
        return self.popen.pid

    def running(self) -> bool:
        return self.popen.poll() is None

    def failure(self, why: str) -> ComponentError:
        return ComponentError(
            f"{self.name} {why}; last lines of {self.log_path}:\n{log_tail(self.log_path)}"
        )

    def check_alive(self) -> None:
        if not self.running():
            raise self.failure(f"exited with code {self.popen.returncode}")


def start_component(name: str, argv: Sequence[str], log_dir: Path, env: dict[str, str] | None = None) -> Component:
    """Start `argv` in a new session (its own process group), stdout and stderr to <log_dir>/<name>.log."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    with open(log_path, "ab") as log_file:
        popen = subprocess.Popen(
            list(argv), stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
            start_new_session=True, env=env, close_fds=True,
        )
    log.info("Started process", extra={"component": name, "pid": popen.pid, "log": str(log_path)})
    return Component(name=name, argv=list(argv), log_path=log_path, popen=popen)


def group_pids(pgid: int) -> list[int]:
    """Every live process in process group `pgid` (read from /proc)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, PermissionError, IndexError):
            continue
        # fields after "(comm)": state ppid pgrp ...; zombies have already exited
        if int(fields[2]) == pgid and fields[0] != "Z":
            pids.append(int(entry.name))
    return pids


def pid_alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state != "Z"


def rss_bytes(pids: Sequence[int]) -> int:
    """Sum of resident set sizes of `pids` (VmRSS from /proc), skipping any that have gone."""
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


def stop_components(components: Sequence[Component], grace_seconds: float = 10.0) -> None:
    """SIGTERM every component's process group (in reverse start order), SIGKILL what remains."""
    for component in reversed(components):
        _signal_group(component.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_seconds
    for component in reversed(components):
        remaining = max(0.0, deadline - time.monotonic())
        try:
            component.popen.wait(timeout=remaining)
        except subprocess.TimeoutExpired:
            log.warning("Killed process after grace period", extra={"component": component.name, "pid": component.pid})
            _signal_group(component.pid, signal.SIGKILL)
            component.popen.wait(timeout=5)
        # grandchildren left in the group after the leader exited
        if group_pids(component.pid):
            _signal_group(component.pid, signal.SIGKILL)
        log.info("Stopped process", extra={"component": component.name, "pid": component.pid,
                                           "returncode": component.popen.returncode})


def _signal_group(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        pass
