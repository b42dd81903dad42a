"""Kubernetes resource quantities ("512Mi", "2G", "1e9", 1073741824) as numbers of bytes or MiB.

The value comes from ``kubernetes.utils.parse_quantity``. That function is lenient where
``k8s.io/apimachinery``'s ``ParseQuantity`` (and so the CRD's ``isQuantity()``) is not, because it
hands the number part to ``Decimal()``: it accepts whitespace (``" 1Gi"``, ``"1 Gi"``), ``NaN``,
``Infinity``, ``1_000``, non-ASCII digits, an exponent with a suffix (``"1e3Mi"``), ``K`` for
``k``, unbounded exponents (``"1e999999999"``), and bools and floats; it computes in the ambient
``Decimal`` context (28 digits); and its errors (``Invalid number format: jun`` for ``"junk"``)
name neither the value nor what was expected. So the wrapper checks the apimachinery grammar and
the exponent range first, computes exactly, and raises the project's ``invalid quantity ...``
:class:`ValueError`::

    <quantity>        ::= <signedNumber><suffix>
    <suffix>          ::= <binarySI> | <decimalExponent> | <decimalSI>
    <binarySI>        ::= Ki | Mi | Gi | Ti | Pi | Ei
    <decimalSI>       ::= n | u | m | "" | k | M | G | T | P | E
    <decimalExponent> ::= "e" <signedNumber> | "E" <signedNumber>

Fractional byte counts are rounded up, like ``Quantity.Value()`` does.
"""

from __future__ import annotations

import re
from decimal import ROUND_CEILING, Decimal, localcontext

from kubernetes.utils.quantity import parse_quantity as k8s_parse_quantity

__all__ = ["MIB", "parse_quantity", "parse_quantity_decimal", "to_mib"]

MIB = 1024 * 1024

# ASCII digits with at most one '.', at least one digit ("5.", ".5" are valid, "." is not), then
# either an exponent or a suffix, never both.
_GRAMMAR = re.compile(
    r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)"
    r"(?:[eE](?P<exp>[+-]?[0-9]+)|Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE])?"
)

# Anything bigger than this is certainly a typo and would only make Decimal work hard.
_MAX_EXPONENT = 64

# Enough digits that no quantity within the grammar and exponent range is rounded.
_PRECISION = 100


def parse_quantity_decimal(value: str | int) -> Decimal:
    """Return the exact value of a Kubernetes quantity (``"3500m"`` -> ``Decimal("3.5")``).

    Raises :class:`ValueError` for anything that is not a quantity (see :func:`parse_quantity`).
    """
    if isinstance(value, bool) or not isinstance(value, int | str):  # bool is an int subclass
        raise ValueError(f"invalid quantity {value!r}: expected an int or a string")
    if isinstance(value, int):
        return Decimal(value)
    match = _GRAMMAR.fullmatch(value)
    if match is None:
        raise ValueError(f"invalid quantity {value!r}: expected e.g. 512Mi, 2Gi, 1G or 1073741824")
    if match.group("exp") is not None and abs(int(match.group("exp"))) > _MAX_EXPONENT:
        raise ValueError(f"invalid quantity {value!r}: exponent out of range")
    with localcontext() as ctx:
        ctx.prec = _PRECISION
        return Decimal(k8s_parse_quantity(value))


def parse_quantity(value: str | int) -> int:
    """Return the number of bytes (units) a Kubernetes quantity denotes, rounded up.

    Accepts ints (taken as-is) and strings such as ``"512Mi"``, ``"1.5Gi"``, ``"2G"``, ``"1e3"``,
    ``"100k"``. Raises :class:`ValueError` for anything else (including bools, floats, empty
    strings, whitespace and unknown suffixes).
    """
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return int(parse_quantity_decimal(value).to_integral_value(rounding=ROUND_CEILING))


def to_mib(value: str | int) -> int:
    """Return a quantity (or a byte count) in whole MiB, rounded up."""
    return -(-parse_quantity(value) // MIB)
