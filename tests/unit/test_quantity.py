"""Unit tests for failovervm.quantity: the strict apimachinery grammar, computed exactly."""

from decimal import Decimal

import pytest

from failovervm.quantity import MIB, parse_quantity, parse_quantity_decimal, to_mib


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", 0),
        ("1", 1),
        ("1024", 1024),
        ("1Ki", 1024),
        ("512Mi", 512 * MIB),
        ("2Gi", 2 * 1024**3),
        ("1Ti", 1024**4),
        ("1Pi", 1024**5),
        ("1Ei", 1024**6),
        ("1.5Gi", 3 * 512 * MIB),
        ("0.5Mi", 512 * 1024),
        (".5Ki", 512),
        ("5.Ki", 5 * 1024),
        ("1k", 1000),
        ("1M", 10**6),
        ("2G", 2 * 10**9),
        ("1T", 10**12),
        ("1P", 10**15),
        ("1E", 10**18),
        ("1e3", 1000),
        ("1E3", 1000),
        ("1e+3", 1000),
        ("1.5e3", 1500),
        ("12e-1", 2),  # 1.2 rounds up
        ("100m", 1),  # 0.1 rounds up, like Quantity.Value()
        ("1000m", 1),
        ("1500m", 2),
        ("1u", 1),
        ("1n", 1),
        ("+1Ki", 1024),
        ("-1Ki", -1024),
    ],
)
def test_parse_quantity(text: str, expected: int) -> None:
    assert parse_quantity(text) == expected


def test_parse_quantity_int_passthrough() -> None:
    assert parse_quantity(33554432) == 32 * MIB
    assert parse_quantity(0) == 0


@pytest.mark.parametrize(
    "junk",
    [
        "",
        " ",
        "1 Gi",
        " 1Gi",
        "1Gi ",
        "Gi",
        "1GB",
        "1gi",
        "1KI",
        "1K",
        "1.2.3",
        ".",
        "-",
        "1e",
        "e3",
        "1e3Mi",
        "1Mi3",
        "0x10",
        "1,5Gi",
        "∞",
        "NaN",
        "inf",
        "1e999",
        "12i",
        # Decimal() parses these (so a parser handing the number to it would accept them); apimachinery does not
        "1_000",
        "1_0Mi",
        "\u0661\u0662",  # Arabic-Indic digits
        "Infinity",
        "-inf",
        "sNaN",
        "1e999999999",
        "1e-999999",
        "1Gi\n",
    ],
)
def test_parse_quantity_rejects_junk(junk: str) -> None:
    with pytest.raises(ValueError, match="invalid quantity"):
        parse_quantity(junk)


def test_rejection_names_the_value_and_the_problem() -> None:
    with pytest.raises(ValueError, match=r"^invalid quantity 'junk': expected e\.g\. 512Mi, 2Gi, 1G or 1073741824$"):
        parse_quantity("junk")
    with pytest.raises(ValueError, match=r"^invalid quantity '1e65': exponent out of range$"):
        parse_quantity("1e65")
    assert parse_quantity("1e64") == 10**64
    assert parse_quantity("1e-64") == 1


@pytest.mark.parametrize("bad", [True, False, 1.5, None, b"1Gi", [1]])
def test_parse_quantity_rejects_non_str_int(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_quantity(bad)  # type: ignore[arg-type]


def test_parse_quantity_decimal_is_exact() -> None:
    assert parse_quantity_decimal("3500m") == Decimal("3.5")
    assert parse_quantity_decimal("1.5Gi") == Decimal(1536 * MIB)
    assert parse_quantity_decimal(7) == Decimal(7)
    # more digits than the default Decimal context's 28: nothing is rounded
    assert parse_quantity_decimal("123456789012345678901234567890123Ki") == 123456789012345678901234567890123 * 1024
    assert parse_quantity("1.0000000000000000000000000000001Ei") == 1024**6 + 1


@pytest.mark.parametrize(
    ("value", "mib"),
    [("512Mi", 512), ("1Gi", 1024), ("1G", 954), (32 * MIB, 32), (MIB + 1, 2), ("1", 1), ("0", 0), ("1.5Gi", 1536)],
)
def test_to_mib(value: str | int, mib: int) -> None:
    assert to_mib(value) == mib


def test_to_mib_rejects_junk() -> None:
    with pytest.raises(ValueError):
        to_mib("lots")
