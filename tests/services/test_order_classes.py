"""The pure rules of order classes (`services/orders/order_classes.py`): which leg holds a pair's
shares, and what one exit's change does to its sibling. The API tests
(`tests/api/test_order_classes.py`) run them through the matcher."""

from __future__ import annotations

import dataclasses
from decimal import Decimal

from services.orders import order_classes
from services.orders.order_model import Order, OrderClass, OrderType, Side, Status
from tests.services.test_matching import make_order

D = Decimal


def entry(**terms: Decimal | None) -> Order:
    order = make_order(Side.BUY, OrderType.LIMIT, limit="100.00")
    return dataclasses.replace(
        order,
        order_class=OrderClass.OTO if None in terms.values() else OrderClass.BRACKET,
        take_profit_limit=terms.get("tp", D("105")),
        stop_loss_stop=terms.get("sl", D("95")),
        stop_loss_limit=terms.get("sl_limit"),
    )


def holds(rows: list[dict[str, object]]) -> list[tuple[object, object]]:
    return [(r["type"], r["reserved_quantity"]) for r in rows]


def test_a_pair_holds_its_shares_once_on_its_first_leg() -> None:
    assert holds(order_classes.exit_rows(entry(), D(4), with_take_profit=True)) == [
        ("LIMIT", D(4)),
        ("STOP", D(0)),
    ]
    lone_stop = entry(tp=None, sl_limit=D("94.5"))
    assert holds(order_classes.exit_rows(lone_stop, D(4), with_take_profit=True)) == [
        ("STOP_LIMIT", D(4))
    ]
    # an OCO: the parent (its take-profit) holds, its stop-loss leg nothing
    assert holds(order_classes.exit_rows(entry(), D(4), with_take_profit=False)) == [("STOP", D(0))]


def pair() -> tuple[Order, Order]:
    parent = entry()
    take_profit = dataclasses.replace(
        make_order(Side.SELL, OrderType.LIMIT, limit="105.00"),
        order_class=OrderClass.BRACKET,
        parent_id=parent.id,
        reserved_quantity=D(10),
    )
    stop_loss = dataclasses.replace(
        make_order(Side.SELL, OrderType.STOP, stop="95.00"),
        order_class=OrderClass.BRACKET,
        parent_id=parent.id,
    )
    return take_profit, stop_loss


def test_a_partial_fill_reduces_the_sibling_to_what_is_left() -> None:
    take_profit, stop_loss = pair()
    filled = dataclasses.replace(
        stop_loss, filled_quantity=D(4), status=Status.PARTIALLY_FILLED, version=1
    )
    change = order_classes.sibling_change(take_profit, stop_loss, filled)
    assert change is not None
    assert (change.after.quantity, change.after.reserved_quantity) == (D(6), D(6))
    assert change.released_shares == D(4)
    assert change.after.version == take_profit.version + 1
    # the holder filled: the other holds nothing and only shrinks
    tp_filled = dataclasses.replace(take_profit, filled_quantity=D(4), reserved_quantity=D(6))
    change = order_classes.sibling_change(stop_loss, take_profit, tp_filled)
    assert change is not None
    assert (change.after.quantity, change.after.reserved_quantity) == (D(6), D(0))
    assert change.released_shares == D(0)


def test_an_ended_exit_closes_its_sibling_as_it_ended() -> None:
    take_profit, stop_loss = pair()
    for ended, closed in (
        (Status.FILLED, Status.CANCELLED),
        (Status.CANCELLED, Status.CANCELLED),
        (Status.EXPIRED, Status.EXPIRED),
    ):
        after = dataclasses.replace(stop_loss, status=ended)
        change = order_classes.sibling_change(take_profit, stop_loss, after)
        assert change is not None
        assert (change.after.status, change.after.reserved_quantity) == (closed, D(0))
        assert change.released_shares == D(10)
        assert str(stop_loss.id) in (change.after.reject_reason or "")


def test_nothing_moves_without_a_fill_or_an_end() -> None:
    take_profit, stop_loss = pair()
    triggered = dataclasses.replace(stop_loss, triggered=True, version=1)
    assert order_classes.sibling_change(take_profit, stop_loss, triggered) is None
    closed = dataclasses.replace(take_profit, status=Status.CANCELLED, reserved_quantity=D(0))
    after = dataclasses.replace(stop_loss, status=Status.FILLED)
    assert order_classes.sibling_change(closed, stop_loss, after) is None


def test_siblings_are_the_other_exits_of_the_pair() -> None:
    take_profit, stop_loss = pair()
    parent = dataclasses.replace(entry(), id=take_profit.parent_id)  # type: ignore[arg-type]
    locked = {o.id: o for o in (parent, take_profit, stop_loss)}
    assert order_classes.siblings(take_profit, locked) == [stop_loss]
    assert order_classes.siblings(parent, locked) == []  # an entry is no exit
    oco = dataclasses.replace(take_profit, parent_id=None, order_class=OrderClass.OCO)
    leg = dataclasses.replace(stop_loss, parent_id=oco.id, order_class=OrderClass.OCO)
    locked = {oco.id: oco, leg.id: leg}
    assert order_classes.siblings(oco, locked) == [leg]
    assert order_classes.siblings(leg, locked) == [oco]
