"""Golden YAML for every builder, for every example and the full-featured fixture.

Regenerate with `KIBAN_UPDATE_GOLDEN=1 pytest tests/unit/builders`: changed files are
rewritten and their tests still fail once, so a regeneration is always looked at; run again
and commit golden/ with the change that caused it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kiban.api.crd import dump_yaml
from kiban.builders import build_children
from kiban.config import load_config

from fm_cases import ALL_APIS, CASES, load_fm

GOLDEN = Path(__file__).with_name("golden")
UPDATE = os.environ.get("KIBAN_UPDATE_GOLDEN") == "1"


def rendered(case: str) -> dict[str, str]:
    """golden file name -> YAML text, for one case."""
    fm = load_fm(CASES[case])
    config = load_config({"KIBAN_MONITOR_LABELS": "release=prometheus"})
    objects = build_children(fm, config, available_apis=ALL_APIS)
    return {f"{case}/{obj['kind'].lower()}.yaml": dump_yaml(obj) for obj in objects}


@pytest.mark.parametrize("case", sorted(CASES))
def test_builders_match_golden_yaml(case):
    outputs = rendered(case)
    expected_files = {str(p.relative_to(GOLDEN)) for p in (GOLDEN / case).glob("*.yaml")}
    changed = []
    for name, text in outputs.items():
        path = GOLDEN / name
        current = path.read_text(encoding="utf-8") if path.exists() else None
        if current != text:
            changed.append(name)
            if UPDATE:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text, encoding="utf-8")
    stale = sorted(expected_files - set(outputs))
    if UPDATE:
        for name in stale:
            (GOLDEN / name).unlink()
    assert not stale, f"golden files no builder produces any more: {stale}"
    assert not changed, f"builder output differs from golden files (KIBAN_UPDATE_GOLDEN=1 rewrites them): {changed}"


def test_every_case_has_golden_files():
    for case in CASES:
        workloads = [(GOLDEN / case / f"{kind}.yaml").exists() for kind in ("deployment", "leaderworkerset")]
        assert sum(workloads) == 1, case
