"""Fixtures for the builder tests (helpers live in fm_cases.py, a name no other test directory uses)."""

from __future__ import annotations

import pytest

from fm_cases import FULL_FEATURED, REPO, load_fm
from kiban.api.v1alpha1 import FoundationModel
from kiban.config import OperatorConfig, load_config


@pytest.fixture
def config() -> OperatorConfig:
    return load_config({})


@pytest.fixture
def minimal() -> FoundationModel:
    return load_fm(REPO / "examples" / "model.yaml")


@pytest.fixture
def full() -> FoundationModel:
    return load_fm(FULL_FEATURED)
