"""What makes an order acceptable (`validate`) and what an accepted order holds back (`hold_for`)."""

from __future__ import annotations

import dataclasses
import uuid
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.errors import InvalidInput
from services.infra.settings import Settings
from services.orders.order_model import OrderType, Side, TimeInForce
from services.orders.order_rules import Hold, PlaceOrder, hold_for, on_tick_grid, tick_for, validate

D = Decimal
COLLAR = D("0.05")
# Pinned here, so that the tests do not depend on the environment the suite runs in.
SETTINGS = Settings(
    order_max_quantity=D("1000000"),
    order_max_price=D("1000000"),
    order_min_notional=D("1.00"),
    order_max_notional=D("10000000.00"),
    market_order_collar=COLLAR,
)
USER = uuid.UUID(int=7)


def command(**overrides: Any) -> PlaceOrder:
    """A valid LIMIT buy of 10 AAPL at 100.00, with `overrides` applied."""
    fields: dict[str, Any] = {
        "user_id": USER,
        "symbol": "AAPL",
        "side": Side.BUY,
        "type": OrderType.LIMIT,
        "time_in_force": TimeInForce.DAY,
        "quantity": D("10"),
        "notional": None,
        "limit_price": D("100.00"),
        "stop_price": None,
        "idempotency_key": "key-1",
    }
    fields.update(overrides)
    return PlaceOrder(**fields)


def market(**overrides: Any) -> PlaceOrder:
    return command(**{"type": OrderType.MARKET, "limit_price": None, **overrides})


def stop(**overrides: Any) -> PlaceOrder:
    return command(
        **{
            "type": OrderType.STOP,
            "limit_price": None,
            "stop_price": D("50.00"),
            **overrides,
        }
    )


def stop_limit(**overrides: Any) -> PlaceOrder:
    return command(
        **{
            "type": OrderType.STOP_LIMIT,
            "limit_price": D("51.00"),
            "stop_price": D("50.00"),
            **overrides,
        }
    )


def refused_field(cmd: PlaceOrder) -> str | None:
    with pytest.raises(InvalidInput) as raised:
        validate(cmd, SETTINGS)
    return raised.value.field


# -- accepted commands ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "cmd",
    [
        command(),
        market(),
        stop(),
        stop_limit(),
        market(quantity=None, notional=D("250.50")),
        market(side=Side.SELL, quantity=None, notional=D("250.50")),
        command(side=Side.SELL),
        command(time_in_force=TimeInForce.GTC),
        command(time_in_force=TimeInForce.IOC),
        command(time_in_force=TimeInForce.FOK),
        market(time_in_force=TimeInForce.IOC),
        stop(time_in_force=TimeInForce.GTC),
        stop_limit(time_in_force=TimeInForce.DAY),
    ],
    ids=lambda c: f"{c.side}-{c.type}-{c.time_in_force}-{'qty' if c.quantity else 'notional'}",
)
def test_valid_commands_are_accepted(cmd: PlaceOrder) -> None:
    validated = validate(cmd, SETTINGS)
    assert validated.type is cmd.type
    assert validated.limit_price == cmd.limit_price
    assert validated.stop_price == cmd.stop_price
    assert validated.notional == cmd.notional


def test_validate_normalizes_the_symbol_and_the_quantity() -> None:
    validated = validate(command(symbol="  brk.b ", quantity=D("2.5000")), SETTINGS)
    assert validated.symbol == "BRK.B"
    assert validated.quantity == D("2.5")
    assert str(validated.quantity) == "2.500000"  # six places, as stored
    assert validate(command(quantity=D("1E+2")), SETTINGS).quantity == D(100)


# -- symbol and idempotency key -------------------------------------------------------------


@pytest.mark.parametrize("symbol", ["", "   ", "AA PL", "AAPL!", "-AAPL", "A" * 15, "ÄPFEL"])
def test_a_malformed_symbol_is_refused(symbol: str) -> None:
    assert refused_field(command(symbol=symbol)) == "symbol"


@pytest.mark.parametrize("symbol", ["F", "aapl", "BRK.B", "A" * 14, "SPY"])
def test_well_formed_symbols_are_accepted(symbol: str) -> None:
    assert validate(command(symbol=symbol), SETTINGS).symbol == symbol.upper()


@pytest.mark.parametrize("key", ["", " ", "\t\n", "k" * 256])
def test_a_bad_idempotency_key_is_refused(key: str) -> None:
    assert refused_field(command(idempotency_key=key)) == "idempotencyKey"


def test_an_idempotency_key_of_255_characters_is_accepted() -> None:
    assert validate(command(idempotency_key="k" * 255), SETTINGS).idempotency_key == "k" * 255


# -- which prices each type takes -----------------------------------------------------------


@pytest.mark.parametrize(
    ("cmd", "field"),
    [
        (command(limit_price=None), "limitPrice"),
        (stop(stop_price=None), "stopPrice"),
        (stop_limit(limit_price=None), "limitPrice"),
        (stop_limit(stop_price=None), "stopPrice"),
        (stop_limit(limit_price=None, stop_price=None), "limitPrice"),
    ],
    ids=["limit-no-limit", "stop-no-stop", "stoplimit-no-limit", "stoplimit-no-stop", "none"],
)
def test_a_missing_price_is_refused(cmd: PlaceOrder, field: str) -> None:
    assert refused_field(cmd) == field


@pytest.mark.parametrize(
    ("cmd", "field"),
    [
        (market(limit_price=D("100.00")), "limitPrice"),
        (market(stop_price=D("100.00")), "stopPrice"),
        (command(stop_price=D("99.00")), "stopPrice"),
        (stop(limit_price=D("51.00")), "limitPrice"),
    ],
    ids=["market-limit", "market-stop", "limit-stop", "stop-limit"],
)
def test_a_price_where_none_belongs_is_refused(cmd: PlaceOrder, field: str) -> None:
    assert refused_field(cmd) == field


# -- price values ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "price", ["0", "-1", "-0.01", "1000000.01", "2000000", "NaN", "Infinity", "-Infinity", "sNaN"]
)
@pytest.mark.parametrize("field", ["limitPrice", "stopPrice"])
def test_a_price_out_of_range_is_refused(price: str, field: str) -> None:
    cmd = (
        stop_limit(limit_price=D(price))
        if field == "limitPrice"
        else stop_limit(stop_price=D(price))
    )
    assert refused_field(cmd) == field


@pytest.mark.parametrize(
    "price", ["1.005", "0.12345", "1.0001", "100.001", "999999.999", "0.00001", "0.99999"]
)
def test_an_off_grid_price_is_refused(price: str) -> None:
    assert refused_field(command(limit_price=D(price))) == "limitPrice"
    assert refused_field(stop(stop_price=D(price))) == "stopPrice"


@pytest.mark.parametrize(
    "price",
    ["0.1234", "0.0001", "0.9999", "1", "1.00", "1.01", "1.0100", "100.5", "999999.99", "1000000"],
)
def test_an_on_grid_price_is_accepted(price: str) -> None:
    assert validate(command(limit_price=D(price)), SETTINGS).limit_price == D(price)
    assert validate(stop(stop_price=D(price)), SETTINGS).stop_price == D(price)


def test_the_tick_is_a_cent_from_one_dollar_and_a_hundredth_of_a_cent_below() -> None:
    assert tick_for(D("0.9999")) == D("0.0001")
    assert tick_for(D("1")) == D("0.01")
    assert tick_for(D("250")) == D("0.01")
    assert on_tick_grid(D("0.5001"))
    assert not on_tick_grid(D("1.0001"))


SUB_DOLLAR_ON_GRID = st.integers(1, 9_999).map(lambda k: D(k).scaleb(-4))
DOLLAR_ON_GRID = st.integers(100, 100_000_000).map(lambda k: D(k).scaleb(-2))
ON_GRID = st.one_of(SUB_DOLLAR_ON_GRID, DOLLAR_ON_GRID)


@settings(max_examples=300, deadline=None)
@given(price=ON_GRID)
def test_any_on_grid_price_in_range_is_accepted(price: Decimal) -> None:
    assert validate(command(limit_price=price), SETTINGS).limit_price == price
    assert validate(stop(stop_price=price), SETTINGS).stop_price == price


@st.composite
def off_grid_prices(draw: st.DrawFn) -> Decimal:
    """A price in (0, max] with more decimal places than its range allows: more than 2 at or
    above $1, more than 4 below. The last digit is never 0, so the places are real."""
    last = draw(st.integers(1, 9))
    if draw(st.booleans()):
        places = draw(st.integers(3, 10))
        head = draw(st.integers(10 ** (places - 1), 10 ** (places + 5) - 1))
    else:
        places = draw(st.integers(5, 10))
        head = draw(st.integers(0, 10 ** (places - 1) - 1))
    return D(head * 10 + last).scaleb(-places)


@settings(max_examples=300, deadline=None)
@given(price=off_grid_prices())
def test_any_price_with_too_many_decimals_for_its_range_is_refused(price: Decimal) -> None:
    assert refused_field(command(limit_price=price)) == "limitPrice"
    assert refused_field(stop(stop_price=price)) == "stopPrice"


# -- size: quantity or notional -------------------------------------------------------------


@pytest.mark.parametrize(
    "quantity", ["0", "-1", "-0.000001", "1.0000001", "0.0000001", "1000000.000001", "1000001"]
)
def test_a_bad_quantity_is_refused(quantity: str) -> None:
    assert refused_field(command(quantity=D(quantity))) == "quantity"


@pytest.mark.parametrize("quantity", ["NaN", "Infinity", "-Infinity", "1E+25"])
def test_a_quantity_that_is_not_a_finite_number_is_refused(quantity: str) -> None:
    assert refused_field(command(quantity=D(quantity))) == "quantity"


@pytest.mark.parametrize(
    ("quantity", "stored"),
    [
        ("0.000001", "0.000001"),
        ("1.000001", "1.000001"),
        ("1.0000000", "1.000000"),  # trailing zeros are not decimal places
        ("1000000", "1000000.000000"),
        ("3", "3.000000"),
    ],
)
def test_a_good_quantity_is_accepted(quantity: str, stored: str) -> None:
    assert str(validate(command(quantity=D(quantity)), SETTINGS).quantity) == stored


@pytest.mark.parametrize(
    "cmd",
    [
        command(quantity=None),
        command(notional=D("100.00")),
        market(quantity=None),
        market(notional=D("100.00")),
    ],
    ids=["limit-neither", "limit-both", "market-neither", "market-both"],
)
def test_exactly_one_of_quantity_and_notional(cmd: PlaceOrder) -> None:
    assert refused_field(cmd) == "quantity"


@pytest.mark.parametrize(
    "cmd",
    [
        command(quantity=None, notional=D("100.00")),
        stop(quantity=None, notional=D("100.00")),
        stop_limit(quantity=None, notional=D("100.00")),
        command(side=Side.SELL, quantity=None, notional=D("100.00")),
    ],
    ids=["limit", "stop", "stop-limit", "limit-sell"],
)
def test_a_notional_is_for_market_orders_only(cmd: PlaceOrder) -> None:
    assert refused_field(cmd) == "notional"


@pytest.mark.parametrize(
    "notional", ["1.005", "100.001", "0.99", "0", "-5", "10000000.01", "NaN", "Infinity"]
)
def test_a_bad_notional_is_refused(notional: str) -> None:
    assert refused_field(market(quantity=None, notional=D(notional))) == "notional"


@pytest.mark.parametrize("notional", ["1", "1.00", "1.5", "99.99", "10000000", "10000000.00"])
def test_a_good_notional_is_accepted(notional: str) -> None:
    validated = validate(market(quantity=None, notional=D(notional)), SETTINGS)
    assert validated.notional == D(notional)
    assert validated.quantity is None


@pytest.mark.parametrize("tif", [TimeInForce.IOC, TimeInForce.FOK])
@pytest.mark.parametrize("make", [stop, stop_limit], ids=["stop", "stop-limit"])
def test_ioc_and_fok_are_refused_for_stops(tif: TimeInForce, make: Any) -> None:
    assert refused_field(make(time_in_force=tif)) == "timeInForce"


# -- hold_for: hand-computed ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("quantity", "limit", "cash"),
    [
        ("10", "100.00", "1000.00"),
        ("7", "0.1234", "0.87"),  # 0.8638 up to the cent
        ("0.5", "10.01", "5.01"),  # 5.005: up, where half-even would give 5.00
        ("3", "33.33", "99.99"),
        ("0.000001", "1.00", "0.01"),  # a millionth of a dollar still holds a cent
        ("1000000", "1000000", "1000000000000.00"),
    ],
)
def test_a_limit_buy_holds_quantity_times_limit_rounded_up(
    quantity: str, limit: str, cash: str
) -> None:
    hold = hold_for(command(quantity=D(quantity), limit_price=D(limit)), None, None, COLLAR)
    assert hold == Hold(quantity=D(quantity), cash=D(cash), shares=D(0))
    assert str(hold.cash) == cash


def test_a_stop_limit_buy_holds_at_its_limit_without_collar() -> None:
    hold = hold_for(stop_limit(quantity=D("4")), None, None, COLLAR)
    assert hold.cash == D("204.00")  # 4 x 51.00
    assert hold.shares == 0


@pytest.mark.parametrize(
    ("quantity", "ask", "cash"),
    [
        ("10", "100.00", "1050.00"),  # 10 x 100 x 1.05
        ("3", "10.01", "31.54"),  # 31.5315 up
        ("0.25", "0.0101", "0.01"),  # 0.002651 up
        ("2", "189.98", "398.96"),  # 398.958 up
    ],
)
def test_a_market_buy_holds_quantity_times_ask_plus_collar_rounded_up(
    quantity: str, ask: str, cash: str
) -> None:
    hold = hold_for(market(quantity=D(quantity)), D("1.00"), D(ask), COLLAR)
    assert hold == Hold(quantity=D(quantity), cash=D(cash))


@pytest.mark.parametrize(
    ("quantity", "stop_price", "cash"),
    [
        ("2", "50.00", "105.00"),
        ("1", "0.0101", "0.02"),  # 0.010605 up
        ("3", "33.33", "104.99"),  # 104.9895 up
    ],
)
def test_a_stop_buy_holds_quantity_times_stop_plus_collar_rounded_up(
    quantity: str, stop_price: str, cash: str
) -> None:
    hold = hold_for(stop(quantity=D(quantity), stop_price=D(stop_price)), None, None, COLLAR)
    assert hold == Hold(quantity=D(quantity), cash=D(cash))


def test_the_collar_setting_is_what_a_market_buy_adds() -> None:
    cmd = market(quantity=D("10"))
    assert hold_for(cmd, D("99"), D("100.00"), D("0")).cash == D("1000.00")
    assert hold_for(cmd, D("99"), D("100.00"), D("0.10")).cash == D("1100.00")


@pytest.mark.parametrize(
    ("notional", "ask", "quantity"),
    [
        ("100.00", "30.00", "3.333333"),
        ("100.00", "3.00", "33.333333"),
        ("10.00", "0.0003", "33333.333333"),
        ("50.00", "25.00", "2.000000"),
        ("1.00", "999999.99", "0.000001"),
    ],
)
def test_a_notional_buy_holds_the_amount_and_estimates_the_shares_rounded_down(
    notional: str, ask: str, quantity: str
) -> None:
    hold = hold_for(market(quantity=None, notional=D(notional)), D("0.01"), D(ask), COLLAR)
    assert hold == Hold(quantity=D(quantity), cash=D(notional))
    assert hold.quantity * D(ask) <= D(notional)


@pytest.mark.parametrize(
    "cmd",
    [
        command(side=Side.SELL, quantity=D("7")),
        market(side=Side.SELL, quantity=D("7")),
        stop(side=Side.SELL, quantity=D("7")),
        stop_limit(side=Side.SELL, quantity=D("7")),
    ],
    ids=["limit", "market", "stop", "stop-limit"],
)
def test_a_sell_holds_its_shares_and_no_cash(cmd: PlaceOrder) -> None:
    hold = hold_for(cmd, D("100.00"), D("100.02"), COLLAR)
    assert hold == Hold(quantity=D("7"), cash=D("0.00"), shares=D("7"))


@pytest.mark.parametrize(
    ("notional", "bid", "shares"),
    [
        ("100.00", "30.00", "3.333333"),
        ("10.00", "3.00", "3.333333"),
        ("99.99", "0.0001", "999900.000000"),
        ("1.00", "7.00", "0.142857"),  # 0.1428571... down
    ],
)
def test_a_notional_sell_holds_the_shares_it_takes_at_the_bid(
    notional: str, bid: str, shares: str
) -> None:
    cmd = market(side=Side.SELL, quantity=None, notional=D(notional))
    hold = hold_for(cmd, D(bid), D("1000"), COLLAR)
    assert hold == Hold(quantity=D(shares), cash=D("0.00"), shares=D(shares))


# -- hold_for: properties -------------------------------------------------------------------

QUANTITIES = st.integers(1, 10**12).map(lambda k: D(k).scaleb(-6))  # 0.000001 .. 1 000 000


def _covers(hold: Hold, exact: Decimal) -> None:
    assert hold.cash >= exact
    assert hold.cash - exact < D("0.01")  # never more than a cent of rounding
    assert hold.cash == hold.cash.quantize(D("0.01"))


@settings(max_examples=300, deadline=None)
@given(quantity=QUANTITIES, limit=ON_GRID)
def test_a_limit_buy_hold_always_covers_quantity_times_limit(
    quantity: Decimal, limit: Decimal
) -> None:
    hold = hold_for(command(quantity=quantity, limit_price=limit), None, None, COLLAR)
    _covers(hold, quantity * limit)
    assert hold.quantity == quantity and hold.shares == 0


@settings(max_examples=300, deadline=None)
@given(quantity=QUANTITIES, ask=ON_GRID)
def test_a_market_buy_hold_always_covers_quantity_times_ask_and_collar(
    quantity: Decimal, ask: Decimal
) -> None:
    hold = hold_for(market(quantity=quantity), ask, ask, COLLAR)
    _covers(hold, quantity * ask * (1 + COLLAR))
    assert hold.cash >= quantity * ask


@settings(max_examples=300, deadline=None)
@given(quantity=QUANTITIES, stop_price=ON_GRID)
def test_a_stop_buy_hold_always_covers_quantity_times_stop_and_collar(
    quantity: Decimal, stop_price: Decimal
) -> None:
    hold = hold_for(stop(quantity=quantity, stop_price=stop_price), None, None, COLLAR)
    _covers(hold, quantity * stop_price * (1 + COLLAR))


@settings(max_examples=300, deadline=None)
@given(
    notional=st.integers(100, 10**9).map(lambda k: D(k).scaleb(-2)),
    ask=ON_GRID,
)
def test_a_notional_buy_estimate_never_costs_more_than_the_amount(
    notional: Decimal, ask: Decimal
) -> None:
    hold = hold_for(market(quantity=None, notional=notional), ask, ask, COLLAR)
    assert hold.cash == notional
    assert hold.quantity * ask <= notional
    assert (hold.quantity + D("0.000001")) * ask > notional  # as many shares as it buys
    assert hold.quantity == hold.quantity.quantize(D("0.000001"))


def test_hold_for_does_not_change_the_command() -> None:
    cmd = command()
    before = dataclasses.replace(cmd)
    hold_for(cmd, None, None, COLLAR)
    assert cmd == before
