"""Kubernetes resource quantities ("512Mi", "2G", "1e9", 1073741824) as numbers of bytes or MiB.

Parsed here, strictly, by the grammar of ``k8s.io/apimachinery``'s ``ParseQuantity`` (and so the
CRD's ``isQuantity()``): ASCII digits only, no whitespace, no ``NaN``/``Infinity``/``1_000``, an
exponent or a suffix but never both, ``k`` (never ``K``) for 10^3, and an exponent of at most
``_MAX_EXPONENT`` (anything bigger is a typo that would only make Decimal work hard). The value is
computed exactly (``Decimal`` with enough digits for every quantity in that range), and anything
else raises the project's ``invalid quantity ...`` :class:`ValueError` naming the value::

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

__all__ = ["MIB", "parse_quantity", "parse_quantity_decimal", "to_mib"]

MIB = 1024 * 1024

# ASCII digits with at most one '.', at least one digit ("5.", ".5" are valid, "." is not), then
# either an exponent or a suffix, never both.
_GRAMMAR = re.compile(
    r"(?P<number>[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))"
    r"(?:[eE](?P<exp>[+-]?[0-9]+)|(?P<suffix>Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]))?"
)

# Suffix -> (base, power): the value is number * base ** power.
_SUFFIXES = {
    "Ki": (2, 10), "Mi": (2, 20), "Gi": (2, 30), "Ti": (2, 40), "Pi": (2, 50), "Ei": (2, 60),
    "n": (10, -9), "u": (10, -6), "m": (10, -3), "k": (10, 3), "M": (10, 6), "G": (10, 9),
    "T": (10, 12), "P": (10, 15), "E": (10, 18),
}

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
    exp, suffix = match.group("exp"), match.group("suffix")
    if exp is not None and abs(int(exp)) > _MAX_EXPONENT:
        raise ValueError(f"invalid quantity {value!r}: exponent out of range")
    base, power = (10, int(exp)) if exp is not None else _SUFFIXES.get(suffix or "", (10, 0))
    with localcontext() as ctx:
        ctx.prec = _PRECISION
        return Decimal(match.group("number")) * Decimal(base) ** power


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
