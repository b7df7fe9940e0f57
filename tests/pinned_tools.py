"""Start what needs the pinned binaries; one missing FAILS the test with the `make tools` hint.

Shared by tests/conftest.py and tests/e2e/conftest.py (tests/ is on sys.path through the root
conftest). A missing tool is never a skip: CI must not pass on a machine that cannot run them.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest


def start_or_fail(start: Callable[[], object]) -> None:
    """Call start(); a ToolsMissingError fails the test, outside the except block so the report
    is the hint alone, not a chained traceback."""
    from kiban_dev.devcluster import ToolsMissingError  # lazily: unit tests never load the devcluster

    missing = None
    try:
        start()
    except ToolsMissingError as exc:
        missing = str(exc)
    if missing:
        pytest.fail(f"integration and e2e tests need the pinned tools: {missing}", pytrace=False)
