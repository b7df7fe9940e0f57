"""Child-process handling: log tails in errors, whole process groups stopped."""

import sys
import time

import pytest

from kiban_dev.devcluster.processes import ComponentError, group_pids, pid_alive, start_component, stop_components


def test_a_component_that_dies_reports_its_log_tail(tmp_path):
    component = start_component("crasher", ["sh", "-c", "echo first; echo 'fatal: port in use'; exit 3"], tmp_path)
    component.popen.wait(timeout=10)
    with pytest.raises(ComponentError) as failure:
        component.check_alive()
    message = str(failure.value)
    assert "crasher exited with code 3" in message
    assert "fatal: port in use" in message
    assert str(tmp_path / "crasher.log") in message


def test_stop_ends_the_whole_process_group_including_grandchildren(tmp_path):
    # the shell starts a grandchild that ignores SIGTERM, then waits
    script = "trap '' TERM; sleep 300 & wait"
    component = start_component("tree", ["sh", "-c", script], tmp_path)
    for _ in range(100):
        if len(group_pids(component.pid)) >= 2:
            break
        time.sleep(0.02)
    pids = group_pids(component.pid)
    assert len(pids) >= 2
    stop_components([component], grace_seconds=0.5)
    assert [pid for pid in pids if pid_alive(pid)] == []


def test_stop_is_graceful_first(tmp_path):
    code = ("import signal, sys, time\nsignal.signal(signal.SIGTERM, lambda *_: sys.exit(0))\n"
            "print('handler installed', flush=True)\ntime.sleep(300)\n")
    component = start_component("polite", [sys.executable, "-c", code], tmp_path)
    for _ in range(500):  # SIGTERM before the handler exists would kill it, not test the grace
        if "handler installed" in component.log_path.read_text():
            break
        time.sleep(0.02)
    stop_components([component], grace_seconds=10)
    assert component.popen.returncode == 0
