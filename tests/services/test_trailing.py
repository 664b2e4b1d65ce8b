"""Trailing stops: the stop a trail makes of a mark, and the book moving marks as the last price
improves and triggering on the fall (checked against a plain model with hypothesis)."""

from __future__ import annotations

import dataclasses
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.errors import InvalidInput
from services.infra.settings import get_settings
from services.orders import trailing
from services.orders.matching import OrderBook
from services.orders.order_model import Order, OrderType, Side, TimeInForce
from services.orders.order_rules import PlaceOrder, validate
from tests.services.test_matching import make_order, quote

D = Decimal


def trail(
    side: Side, mark: str, *, price: str | None = None, pct: str | None = None, **kw: Any
) -> Order:
    order = make_order(side, OrderType.TRAILING_STOP, **kw)
    stop = trailing.stop_for(side, D(mark), price and D(price), pct and D(pct))
    return dataclasses.replace(
        order,
        trail_price=price and D(price),
        trail_percent=pct and D(pct),
        high_water_mark=D(mark),
        stop_price=stop,
    )


def last(price: str) -> Any:
    return quote(last=price)


# -- the stop of a mark -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("side", "mark", "price", "pct", "stop"),
    [
        (Side.SELL, "100.00", "2.50", None, "97.50"),
        (Side.BUY, "100.00", "2.50", None, "102.50"),
        (Side.SELL, "100.00", None, "1.5", "98.50"),
        (Side.SELL, "33.33", None, "1", "32.99"),  # 32.9967: down, away from the market
        (Side.BUY, "33.33", None, "1", "33.67"),  # 33.6633: up, away from the market
        (Side.SELL, "0.5000", None, "3", "0.4850"),  # sub-dollar: the 0.0001 grid
        (Side.SELL, "1.00", "0.0050", None, "0.9950"),
    ],
)
def test_the_stop_is_the_mark_less_or_plus_the_trail_rounded_away_from_the_market(
    side: Side, mark: str, price: str | None, pct: str | None, stop: str
) -> None:
    got = trailing.stop_for(side, D(mark), price and D(price), pct and D(pct))
    assert got == D(stop)
    assert str(got) == stop


def test_a_trail_wider_than_the_price_is_refused() -> None:
    command = PlaceOrder(
        user_id=make_order().user_id,
        symbol="AAPL",
        side=Side.SELL,
        type=OrderType.TRAILING_STOP,
        time_in_force=TimeInForce.GTC,
        quantity=D(1),
        notional=None,
        limit_price=None,
        stop_price=None,
        idempotency_key="k",
        trail_price=D("5.00"),
    )
    with pytest.raises(InvalidInput) as caught:
        trailing.with_stop(command, D("4.00"))
    assert caught.value.field == "trailPrice"
    assert trailing.with_stop(command, D("10.00")).stop_price == D("5.00")


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({}, "trailPrice"),  # neither
        ({"trail_price": D("1"), "trail_percent": D("1")}, "trailPrice"),  # both
        ({"trail_price": D("0")}, "trailPrice"),
        ({"trail_price": D("1.001")}, "trailPrice"),  # off the grid
        ({"trail_percent": D("0")}, "trailPercent"),
        ({"trail_percent": D("100")}, "trailPercent"),
        ({"trail_percent": D("1.001")}, "trailPercent"),
        ({"trail_price": D("1"), "stop_price": D("90")}, "stopPrice"),
        ({"trail_price": D("1"), "limit_price": D("90")}, "limitPrice"),
        ({"trail_price": D("1"), "time_in_force": TimeInForce.IOC}, "timeInForce"),
    ],
)
def test_trailing_stop_validation_names_the_field(fields: dict[str, Any], field: str) -> None:
    base: dict[str, Any] = {
        "user_id": make_order().user_id,
        "symbol": "AAPL",
        "side": Side.SELL,
        "type": OrderType.TRAILING_STOP,
        "time_in_force": TimeInForce.GTC,
        "quantity": D(1),
        "notional": None,
        "limit_price": None,
        "stop_price": None,
        "idempotency_key": "k",
    }
    with pytest.raises(InvalidInput) as caught:
        validate(PlaceOrder(**(base | fields)), get_settings())
    assert caught.value.field == field


def test_other_types_take_no_trail() -> None:
    command = PlaceOrder(
        user_id=make_order().user_id,
        symbol="AAPL",
        side=Side.BUY,
        type=OrderType.LIMIT,
        time_in_force=TimeInForce.DAY,
        quantity=D(1),
        notional=None,
        limit_price=D("10"),
        stop_price=None,
        idempotency_key="k",
        trail_percent=D("2"),
    )
    with pytest.raises(InvalidInput, match="LIMIT order takes no trailPercent"):
        validate(command, get_settings())


# -- the book ---------------------------------------------------------------------------------


def test_a_sell_trail_follows_a_rising_price_and_triggers_on_the_fall() -> None:
    order = trail(Side.SELL, "100.00", price="2.00")
    book = OrderBook()
    book.add(order)
    moved = book.on_quote(last("101.50"))
    assert [(o.high_water_mark, o.stop_price) for o in moved.trailed] == [(D("101.50"), D("99.50"))]
    assert book.on_quote(last("101.00")).trailed == []  # a lower last leaves the mark
    assert book.on_quote(last("99.51")).triggered == []  # above the stop
    crossed = book.on_quote(last("99.50"))
    assert [(o.id, o.stop_price, o.high_water_mark) for o in crossed.triggered] == [
        (order.id, D("99.50"), D("101.50"))
    ]
    assert len(book) == 0


def test_a_buy_trail_follows_a_falling_price_and_triggers_on_the_rise() -> None:
    order = trail(Side.BUY, "50.00", pct="10")
    book = OrderBook()
    book.add(order)
    assert book.on_quote(last("40.00")).trailed[0].stop_price == D("44.00")
    assert book.on_quote(last("43.99")).triggered == []
    assert book.on_quote(last("44.00")).triggered[0].id == order.id


def test_a_quote_that_improves_no_mark_moves_nothing() -> None:
    book = OrderBook()
    for i in range(50):
        book.add(trail(Side.SELL, f"{100 + i}.00", price="60.00", at=i))
    crossed = book.on_quote(last("99.50"))  # below every mark, above every stop
    assert crossed.trailed == [] and crossed.triggered == []
    assert len(book.on_quote(last("120.00")).trailed) == 20  # marks 100..119 move, 120+ stay


def test_a_replaced_version_keeps_the_better_mark_held_in_memory() -> None:
    order = trail(Side.SELL, "100.00", price="2.00")
    book = OrderBook()
    book.add(order)
    book.on_quote(last("105.00"))
    stale = dataclasses.replace(order, version=order.version + 1)  # as stored: the old mark
    book.replace(stale)
    held = book.get(order.id)
    assert held is not None
    assert (held.version, held.high_water_mark, held.stop_price) == (
        order.version + 1,
        D("105.00"),
        D("103.00"),
    )


def test_removed_trails_leave_no_live_entries_behind() -> None:
    book = OrderBook()
    orders = [trail(Side.SELL, "100.00", price="1.00", at=i) for i in range(200)]
    for order in orders:
        book.add(order)
    for order in orders[:150]:
        book.remove(order.id)
    book.on_quote(last("101.00"))
    assert len(book) == 50
    assert {o.id for o in book.orders("AAPL")} == {o.id for o in orders[150:]}
    assert len(book.on_quote(last("99.00")).triggered) == 50
    assert len(book) == 0


@settings(max_examples=150, deadline=None)
@given(
    start=st.integers(min_value=5_000, max_value=15_000),
    trail_cents=st.integers(min_value=1, max_value=2_000),
    lasts=st.lists(st.integers(min_value=1_000, max_value=20_000), max_size=40),
    side=st.sampled_from([Side.SELL, Side.BUY]),
)
def test_the_book_agrees_with_a_plain_model(
    start: int, trail_cents: int, lasts: list[int], side: Side
) -> None:
    cents = D("0.01")
    order = trail(side, str(start * cents), price=str(trail_cents * cents))
    book = OrderBook()
    book.add(order)
    mark = start * cents
    for price in (p * cents for p in lasts):
        crossed = book.on_quote(last(str(price)))
        if trailing.improves(side, mark, price):
            mark = price
        stop = mark - trail_cents * cents if side is Side.SELL else mark + trail_cents * cents
        hit = price <= stop if side is Side.SELL else price >= stop
        assert [o.id for o in crossed.triggered] == ([order.id] if hit else [])
        if hit:
            assert crossed.triggered[0].high_water_mark == mark
            assert len(book) == 0
            return
        held = book.get(order.id)
        assert held is not None and held.high_water_mark == mark and held.stop_price == stop
