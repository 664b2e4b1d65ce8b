"""Exact money rules."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.errors import InvalidInput
from services.money import (
    parse_cash_amount,
    round_cash,
    round_cash_up,
    round_shares_down,
)

MAX = Decimal("1000000")


@pytest.mark.parametrize(
    ("given_amount", "expected"),
    [
        ("0.01", "0.01"),
        ("5", "5.00"),
        ("10.5", "10.50"),
        ("1000000", "1000000.00"),
        ("12.300", "12.30"),
    ],
)
def test_valid_cash_amounts_are_kept_exactly(given_amount: str, expected: str) -> None:
    assert str(parse_cash_amount(Decimal(given_amount), "amount", maximum=MAX)) == expected


@pytest.mark.parametrize(
    "bad", ["0", "-1", "0.001", "1000000.01", "NaN", "Infinity", "-Infinity", "1E+40"]
)
def test_invalid_cash_amounts_are_refused(bad: str) -> None:
    with pytest.raises(InvalidInput) as raised:
        parse_cash_amount(Decimal(bad), "amount", maximum=MAX)
    assert raised.value.field == "amount"


def test_rounding_modes_are_the_documented_ones() -> None:
    assert round_cash(Decimal("0.125")) == Decimal("0.12")  # half to even
    assert round_cash(Decimal("0.135")) == Decimal("0.14")
    assert round_cash_up(Decimal("0.121")) == Decimal("0.13")  # a hold never falls short
    assert round_shares_down(Decimal("0.0534039999")) == Decimal("0.053403")


@given(st.decimals(min_value=Decimal("0.01"), max_value=MAX, places=2))
def test_any_two_place_amount_in_range_round_trips(amount: Decimal) -> None:
    assert parse_cash_amount(amount, "amount", maximum=MAX) == amount


@given(st.decimals(min_value=Decimal("0"), max_value=Decimal("1e9"), places=8))
def test_reservations_cover_and_fills_stay_within_a_cent(value: Decimal) -> None:
    assert round_cash_up(value) >= value
    assert abs(round_cash(value) - value) <= Decimal("0.005")
