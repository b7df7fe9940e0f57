"""The fixtures' start helper: a missing pinned tool fails the test with the hint, never skips."""

from __future__ import annotations

import pytest
from pinned_tools import start_or_fail

from kiban_dev.devcluster import ToolsMissingError


def test_a_missing_tool_fails_with_the_hint_and_is_not_a_skip():
    def start():
        raise ToolsMissingError("kube-apiserver not found: run `make tools`")

    with pytest.raises(pytest.fail.Exception, match="need the pinned tools: kube-apiserver not found: run `make tools`"):
        start_or_fail(start)


def test_a_start_that_works_is_called_once_and_passes():
    calls = []
    start_or_fail(lambda: calls.append(1))
    assert calls == [1]


def test_other_errors_are_not_turned_into_the_hint():
    def start():
        raise OSError("port in use")

    with pytest.raises(OSError, match="port in use"):
        start_or_fail(start)
