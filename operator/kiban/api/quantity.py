"""Kubernetes resource quantities ('500m', '64Gi', '1e3') as exact decimals, for the CRD's Python rules.

Mirrors apimachinery's resource.ParseQuantity for the unsigned forms the CRD's pattern admits,
so requests <= limits and the integer rule of extended resources compare as the API server's
CEL quantity() does. Values finer than a nano-unit round up to one, as Kubernetes rounds them.
"""

from __future__ import annotations

import re
from decimal import ROUND_CEILING, Decimal, localcontext

_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {"n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"), "": Decimal(1),
            "k": Decimal("1e3"), "M": Decimal("1e6"), "G": Decimal("1e9"), "T": Decimal("1e12"),
            "P": Decimal("1e15"), "E": Decimal("1e18")}
_FORM = re.compile(r"^(?P<number>[0-9]+(\.[0-9]+)?|\.[0-9]+)(?P<suffix>Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]|[eE][-+]?[0-9]+)?$")
_NANO = Decimal("1e-9")


def parse_quantity(text: str) -> Decimal:
    """The quantity's value in base units; ValueError when it is not an unsigned quantity."""
    match = _FORM.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a quantity such as 500m, 8, 64Gi or 1e3")
    number, suffix = Decimal(match["number"]), match["suffix"] or ""
    with localcontext() as ctx:
        ctx.prec = 80
        if suffix in _BINARY:
            value = number * _BINARY[suffix]
        elif suffix in _DECIMAL:
            value = number * _DECIMAL[suffix]
        else:
            value = number.scaleb(int(suffix[1:]))
        return value.quantize(_NANO, rounding=ROUND_CEILING) if value.as_tuple().exponent < -9 else value


def is_integer(text: str) -> bool:
    value = parse_quantity(text)
    return value == value.to_integral_value()
