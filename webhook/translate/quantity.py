"""Kubernetes resource quantities as exact fractions.

Legacy GPU requests arrive as quantity strings (``"2"``, ``"4096"``, ``"1k"``) and DRA capacity
requests leave as quantity strings (``"4Gi"``). Both directions go through here, with
``fractions.Fraction`` so that no rounding happens by accident: every rounding in the translation
is an explicit ``round_up`` to a device's request step.
"""

from __future__ import annotations

import functools
import math
import re
from fractions import Fraction

_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {
    "n": Fraction(1, 10**9),
    "u": Fraction(1, 10**6),
    "m": Fraction(1, 10**3),
    "": Fraction(1),
    "k": Fraction(10**3),
    "M": Fraction(10**6),
    "G": Fraction(10**9),
    "T": Fraction(10**12),
    "P": Fraction(10**15),
    "E": Fraction(10**18),
}
_QUANTITY = re.compile(
    r"^([+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))(?:(Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE])|[eE]([+-]?[0-9]+))?$"
)


class QuantityError(ValueError):
    """A string that is not a Kubernetes quantity."""


def parse_quantity(value: object) -> Fraction:
    """Parse a Kubernetes quantity (``"1.5Gi"``, ``"500m"``, ``"1e3"``, ``2``) exactly."""
    if isinstance(value, bool):
        raise QuantityError(f"{value!r} is not a quantity")
    if isinstance(value, int):
        return Fraction(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise QuantityError(f"{value!r} is not a quantity")
        return Fraction(str(value))
    if not isinstance(value, str):
        raise QuantityError(f"{value!r} is not a quantity")
    return _parse_text(value)


@functools.lru_cache(maxsize=4096)  # the same few strings on every request; Fractions are immutable
def _parse_text(value: str) -> Fraction:
    match = _QUANTITY.match(value.strip())
    if match is None:
        raise QuantityError(f"{value!r} is not a quantity")
    number, suffix, exponent = match.groups()
    base = Fraction(number)
    if exponent is not None:
        if abs(int(exponent)) > 30:
            raise QuantityError(f"{value!r} is out of range")
        return base * Fraction(10) ** int(exponent)
    if suffix in _BINARY:
        return base * _BINARY[suffix]
    return base * _DECIMAL[suffix or ""]


def round_up(value: Fraction, step: Fraction) -> Fraction:
    """Round ``value`` up to a whole multiple of ``step`` (as a device request policy does)."""
    if step <= 0:
        raise ValueError(f"step must be positive, got {step}")
    return math.ceil(value / step) * step


def format_quantity(value: Fraction) -> str:
    """Format a non-negative quantity canonically: the largest exact binary suffix for byte-like
    values, a plain integer otherwise, and milli-units for fractions that allow it."""
    if value < 0:
        raise ValueError(f"quantities here are never negative, got {value}")
    if value.denominator == 1:
        whole = value.numerator
        if whole:
            for suffix, factor in reversed(_BINARY.items()):
                if whole % factor == 0 and whole >= factor:
                    return f"{whole // factor}{suffix}"
        return str(whole)
    milli = value * 1000
    if milli.denominator == 1:
        return f"{milli.numerator}m"
    raise ValueError(f"{value} has no exact quantity form")
