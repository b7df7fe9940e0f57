"""Kubernetes quantities, with the values Kubernetes' own documentation gives them."""

from __future__ import annotations

from decimal import Decimal

import pytest

from kiban.api.quantity import is_integer, parse_quantity


@pytest.mark.parametrize(("text", "value"), [
    ("500m", Decimal("0.5")), ("1", Decimal(1)), ("1.5Gi", Decimal(1.5 * 2**30)), ("1Ki", Decimal(1024)),
    ("1e3", Decimal(1000)), ("1E-3", Decimal("0.001")), ("2k", Decimal(2000)), ("129M", Decimal(129_000_000)),
    ("123Mi", Decimal(123 * 2**20)), (".5", Decimal("0.5")), ("1n", Decimal("1e-9")),
    ("0.0000000001", Decimal("1e-9")),  # finer than a nano-unit rounds up to one
])
def test_values(text, value):
    assert parse_quantity(text) == value


@pytest.mark.parametrize("text", ["-1", "1.", "1ki", "1Gb", "", " 1", "1.5.5", "e3"])
def test_not_quantities(text):
    with pytest.raises(ValueError):
        parse_quantity(text)


def test_whole_units():
    assert is_integer("2") and is_integer("1k") and not is_integer("500m") and not is_integer("1.5")
