"""Exact money arithmetic: `Decimal` only, one rounding rule, applied in one place.

Rounding rule: amounts are rounded to whole cents with ROUND_HALF_EVEN (banker's
rounding) and only when an invoice line is priced (and, for exports, when a row's share
of that line is allocated). Everything before that — rates, products, sums — is exact:
products and sums run in :data:`EXACT`, a context that raises instead of rounding, and
the one division (by 3,600 seconds per hour) is done in integers by
:func:`round_ratio`, so no intermediate value is ever rounded twice.
"""

from __future__ import annotations

from decimal import (
    ROUND_HALF_EVEN,
    Context,
    Decimal,
    DivisionByZero,
    Inexact,
    InvalidOperation,
    Overflow,
    Rounded,
)

SECONDS_PER_HOUR = 3600
CENTS = 2
"""Decimal places of an invoice amount."""

ZERO = Decimal(0)

EXACT = Context(
    prec=60,
    rounding=ROUND_HALF_EVEN,
    traps=[Inexact, Rounded, InvalidOperation, Overflow, DivisionByZero],
)
"""Context for products and sums that must never round: any rounding raises."""


def exact_mul(a: Decimal, b: Decimal) -> Decimal:
    """Multiply two decimals, raising rather than rounding."""
    return EXACT.multiply(a, b)


def exact_add(a: Decimal, b: Decimal) -> Decimal:
    """Add two decimals, raising rather than rounding."""
    return EXACT.add(a, b)


def exact_sum(values: list[Decimal]) -> Decimal:
    """Sum decimals, raising rather than rounding."""
    total = ZERO
    for value in values:
        total = EXACT.add(total, value)
    return total


def round_ratio(numerator: Decimal, denominator: int, places: int) -> Decimal:
    """Return ``numerator / denominator`` rounded ROUND_HALF_EVEN to ``places`` places, exactly."""
    if denominator <= 0:
        raise ValueError("denominator must be positive")
    sign, digits, exponent = numerator.as_tuple()
    if not isinstance(exponent, int):
        raise ValueError("numerator must be finite")
    magnitude = int("".join(map(str, digits)) or "0")
    # value = magnitude * 10**exponent / denominator; we want it in units of 10**-places.
    shift = exponent + places
    top = magnitude * 10**shift if shift >= 0 else magnitude
    bottom = denominator if shift >= 0 else denominator * 10**-shift
    quotient, remainder = divmod(top, bottom)
    if 2 * remainder > bottom or (2 * remainder == bottom and quotient % 2 == 1):
        quotient += 1
    return Decimal((sign if quotient else 0, tuple(int(d) for d in str(quotient)), -places))


def to_cents(amount_hours_numerator: Decimal) -> Decimal:
    """Round a rate-times-seconds numerator to the cent (divides by 3,600 once, exactly)."""
    return round_ratio(amount_hours_numerator, SECONDS_PER_HOUR, CENTS)
