"""End-to-end fixtures: the demo's process stack on the session's control plane.

demo_stack_factory(config) -> a started DemoStack (Prometheus, pod backer, operator process) in
the test's own namespace; every stack is stopped after the test, and the test can then check
that none of its processes is left.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from pinned_tools import start_or_fail

if TYPE_CHECKING:
    from kiban_dev.demo.record import DemoConfig
    from kiban_dev.demo.runner import DemoStack


@pytest.fixture
def demo_stack_factory(kubeconfig: Path, namespace: str, tmp_path: Path) -> Iterator[Callable[..., DemoStack]]:
    from dataclasses import replace

    from kiban_dev.demo.runner import DemoStack

    stacks: list[DemoStack] = []

    def start(config: DemoConfig) -> DemoStack:
        config = replace(config, namespace=namespace, out_dir=tmp_path / f"demo-{len(stacks)}")
        stack = DemoStack(config, kubeconfig=kubeconfig, create_namespace=False, echo=print)
        stacks.append(stack)
        start_or_fail(stack.__enter__)
        return stack

    try:
        yield start
    finally:
        for stack in stacks:
            stack.stop()
