from fractions import Fraction

import pytest

from webhook.translate.quantity import QuantityError, format_quantity, parse_quantity, round_up


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("2", 2),
        (2, 2),
        ("1k", 1000),
        ("1Ki", 1024),
        ("4Gi", 4 * 2**30),
        ("1.5Gi", 3 * 2**29),
        ("500m", Fraction(1, 2)),
        ("1e3", 1000),
        ("2E-1", Fraction(1, 5)),
        ("0.25", Fraction(1, 4)),
        (".5", Fraction(1, 2)),
        ("+3", 3),
        ("-1", -1),
        (0.5, Fraction(1, 2)),
    ],
)
def test_parse(text: object, value: Fraction) -> None:
    assert parse_quantity(text) == value


@pytest.mark.parametrize("text", ["", "two", "1.2.3", "1Gb", "Gi", "1 Gi", True, None, [], float("nan"), "1e99"])
def test_parse_rejects(text: object) -> None:
    with pytest.raises(QuantityError):
        parse_quantity(text)


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0, "0"),
        (30, "30"),
        (1024, "1Ki"),
        (4 * 2**30, "4Gi"),
        (3000 * 2**20, "3000Mi"),
        (1000, "1000"),
        (Fraction(1, 2), "500m"),
    ],
)
def test_format(value: Fraction, text: str) -> None:
    assert format_quantity(Fraction(value)) == text
    assert parse_quantity(text) == value


def test_format_refuses_what_it_cannot_say_exactly() -> None:
    with pytest.raises(ValueError):
        format_quantity(Fraction(1, 3))
    with pytest.raises(ValueError):
        format_quantity(Fraction(-1))


@pytest.mark.parametrize(
    ("value", "step", "rounded"), [(Fraction(5, 2), 1, 3), (3, 1, 3), (2 * 2**30 + 1, 2**30, 3 * 2**30), (0, 7, 0)]
)
def test_round_up(value: Fraction, step: int, rounded: int) -> None:
    assert round_up(Fraction(value), Fraction(step)) == rounded


def test_round_up_needs_a_positive_step() -> None:
    with pytest.raises(ValueError):
        round_up(Fraction(1), Fraction(0))
