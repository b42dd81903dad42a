"""Parsing of Kubernetes resource quantities ("512Mi", "2G", "1e9", 1073741824).

Only what the operator needs: turning a memory quantity into a whole number of bytes. The
grammar is the one of ``k8s.io/apimachinery/pkg/api/resource.Quantity``::

    <quantity>        ::= <signedNumber><suffix>
    <suffix>          ::= <binarySI> | <decimalExponent> | <decimalSI>
    <binarySI>        ::= Ki | Mi | Gi | Ti | Pi | Ei
    <decimalSI>       ::= n | u | m | "" | k | M | G | T | P | E
    <decimalExponent> ::= "e" <signedNumber> | "E" <signedNumber>

Fractional byte counts are rounded up, like ``Quantity.Value()`` does.
"""

from __future__ import annotations

import re
from decimal import ROUND_CEILING, Decimal, InvalidOperation, localcontext

__all__ = ["MIB", "parse_quantity", "parse_quantity_decimal", "to_mib"]

MIB = 1024 * 1024

_BINARY = {
    "Ki": 1024,
    "Mi": 1024**2,
    "Gi": 1024**3,
    "Ti": 1024**4,
    "Pi": 1024**5,
    "Ei": 1024**6,
}
_DECIMAL_EXP = {"n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}

# number: digits with at most one '.', at least one digit overall ("5.", ".5" are valid, "." is not)
_QUANTITY_RE = re.compile(
    r"^(?P<number>[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))"
    r"(?:(?P<exp>[eE][+-]?[0-9]+)|(?P<suffix>Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]?))$"
)

# Anything bigger than this is certainly a typo and would only make Decimal work hard.
_MAX_EXPONENT = 64


def parse_quantity_decimal(value: str | int) -> Decimal:
    """Return the exact value of a Kubernetes quantity (``"3500m"`` -> ``Decimal("3.5")``).

    Raises :class:`ValueError` for anything that is not a quantity (see :func:`parse_quantity`).
    """
    if isinstance(value, bool):  # bool is an int subclass; True is not a quantity
        raise ValueError(f"invalid quantity {value!r}: expected an int or a string")
    if isinstance(value, int):
        return Decimal(value)
    if not isinstance(value, str):
        raise ValueError(f"invalid quantity {value!r}: expected an int or a string")
    match = _QUANTITY_RE.match(value)
    if match is None:
        raise ValueError(f"invalid quantity {value!r}: expected e.g. 512Mi, 2Gi, 1G or 1073741824")
    exp_text = match.group("exp")
    suffix = match.group("suffix") or ""
    try:
        number = Decimal(match.group("number"))
    except InvalidOperation as exc:  # pragma: no cover - the regex only lets valid numbers through
        raise ValueError(f"invalid quantity {value!r}") from exc
    with localcontext() as ctx:
        ctx.prec = 100
        if exp_text is not None:
            exponent = int(exp_text[1:])
            if abs(exponent) > _MAX_EXPONENT:
                raise ValueError(f"invalid quantity {value!r}: exponent out of range")
            return number.scaleb(exponent)
        if suffix in _BINARY:
            return number * _BINARY[suffix]
        return number.scaleb(_DECIMAL_EXP[suffix])


def parse_quantity(value: str | int) -> int:
    """Return the number of bytes (units) a Kubernetes quantity denotes, rounded up.

    Accepts ints (taken as-is) and strings such as ``"512Mi"``, ``"1.5Gi"``, ``"2G"``, ``"1e3"``,
    ``"100k"``. Raises :class:`ValueError` for anything else (including bools, floats, empty
    strings, whitespace and unknown suffixes).
    """
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    exact = parse_quantity_decimal(value)
    with localcontext() as ctx:
        ctx.prec = 100
        return int(exact.to_integral_value(rounding=ROUND_CEILING))


def to_mib(value: str | int) -> int:
    """Return a quantity (or a byte count) in whole MiB, rounded up."""
    n = parse_quantity(value)
    return -(-n // MIB)
