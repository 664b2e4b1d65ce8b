"""Exact money and quantity rules. All rounding in the platform goes through this module.

Mode: ROUND_HALF_EVEN (banker's rounding) for amounts that are computed, such as a fill's value;
ROUND_UP for amounts held back (reservations), so a hold never falls short of what it covers;
ROUND_DOWN for quantities bought by dollar amount, so an order never costs more than asked.
"""

from __future__ import annotations

from decimal import (
    ROUND_DOWN,
    ROUND_HALF_EVEN,
    ROUND_HALF_UP,
    ROUND_UP,
    Decimal,
    InvalidOperation,
    localcontext,
)

from services.errors import InvalidInput

CENT = Decimal("0.01")
SHARE_STEP = Decimal("0.000001")
PRICE_STEP = Decimal("0.0001")
MAX_DIGITS = 20


def decimal_places(value: Decimal) -> int:
    exponent = value.as_tuple().exponent
    return -exponent if isinstance(exponent, int) and exponent < 0 else 0


def require_finite(value: Decimal, field: str) -> Decimal:
    try:
        if not value.is_finite():
            raise InvalidInput(f"{field} must be a finite number", field=field)
        if value.adjusted() >= MAX_DIGITS:
            raise InvalidInput(f"{field} is too large", field=field)
    except InvalidOperation as exc:
        raise InvalidInput(f"{field} is not a number", field=field) from exc
    return value


def parse_cash_amount(value: Decimal, field: str, *, maximum: Decimal) -> Decimal:
    """A positive dollar amount with at most two decimal places, at most `maximum`."""
    require_finite(value, field)
    if value <= 0:
        raise InvalidInput(f"{field} must be greater than zero", field=field)
    if decimal_places(value.normalize()) > 2:
        raise InvalidInput(f"{field} has more than 2 decimal places", field=field)
    if value > maximum:
        raise InvalidInput(f"{field} must be at most {maximum}", field=field)
    return value.quantize(CENT)


def round_cash(value: Decimal) -> Decimal:
    """A computed dollar amount (a fill's value, P&L) to the cent, half to even."""
    return value.quantize(CENT, rounding=ROUND_HALF_EVEN)


def round_cash_up(value: Decimal) -> Decimal:
    """A dollar amount held back (a reservation) to the cent, rounding up."""
    return value.quantize(CENT, rounding=ROUND_UP)


def round_shares_down(value: Decimal) -> Decimal:
    """Shares bought for a dollar amount, rounded down to the 6th decimal place."""
    return value.quantize(SHARE_STEP, rounding=ROUND_DOWN)


def average_price(value: Decimal, quantity: Decimal) -> Decimal:
    """A price paid on average (value / quantity) to the 4th place, half away from zero, as
    PostgreSQL's `round(value / quantity, 4)` gives it (a compiled order page computes it there).
    The quotient is taken to 60 digits, past where rounding it first could change the result:
    a quotient of quantities with 6 places has no run of nines that long."""
    with localcontext() as context:
        context.prec = 60
        quotient = value / quantity
    return quotient.quantize(PRICE_STEP, rounding=ROUND_HALF_UP)


def trim_price(value: Decimal) -> Decimal:
    """A stored price (NUMERIC with 4 places) as a person writes it, for text outside the API
    (messages, exports): 189.9800 -> 189.98, 0.1234 kept."""
    trimmed = value.normalize()
    return trimmed if decimal_places(trimmed) > 2 else value.quantize(CENT)


def trim_quantity(value: Decimal) -> Decimal:
    """A stored quantity (NUMERIC with 6 places) as a person writes it: 10.000000 -> 10."""
    trimmed = value.normalize()
    return trimmed.quantize(Decimal(1)) if trimmed == trimmed.to_integral_value() else trimmed
