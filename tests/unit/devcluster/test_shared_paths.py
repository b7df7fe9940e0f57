from __future__ import annotations

from pathlib import Path

import pytest

from kiban_dev import shared_paths


def test_env_override(monkeypatch, tmp_path):
    monkeypatch.setenv(shared_paths.SHARED_DIR_ENV, str(tmp_path))
    assert shared_paths.shared_dir() == tmp_path
    assert shared_paths.trace_path("conv.csv") == tmp_path / "traces" / "azure-llm-2023" / "conv.csv"


def test_default_is_sibling_of_repo_root(monkeypatch):
    monkeypatch.delenv(shared_paths.SHARED_DIR_ENV, raising=False)
    repo_root = Path(__file__).resolve().parents[3]
    assert (repo_root / "serving" / "kiban_dev" / "shared_paths.py").is_file()
    assert shared_paths.shared_dir() == repo_root.parent / "shared"
    assert shared_paths.trace_path("code.csv") == repo_root.parent / "shared" / "traces" / "azure-llm-2023" / "code.csv"


def test_empty_env_falls_back_to_default(monkeypatch):
    monkeypatch.setenv(shared_paths.SHARED_DIR_ENV, "")
    assert shared_paths.shared_dir() == shared_paths.REPO_ROOT.parent / "shared"


def test_require_names_path_and_env(tmp_path):
    missing = tmp_path / "nope.csv"
    with pytest.raises(FileNotFoundError, match="KIBAN_SHARED_DIR") as err:
        shared_paths.require(missing)
    assert str(missing) in str(err.value)
    assert shared_paths.require(tmp_path) == tmp_path
