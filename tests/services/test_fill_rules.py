"""The pure fill rules (`services/orders/fill_rules.py`): whatever fills come, in whatever
pieces, a buy never moves more cash than it held, every posting balances, the position and the
order agree with the fills, and the hold is consumed or released to the cent."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import UTC, datetime
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from services.accounts import ledger
from services.money import round_cash
from services.orders import fill_rules
from services.orders.fill_rules import Close, Execute, Fill, Mark
from services.orders.order_model import Event, Execution, Status
from services.portfolio.positions import PositionState
from tests.services.test_matching import buy, make_order

D = Decimal
NOW = datetime(2026, 12, 4, 15, 0, tzinfo=UTC)

prices = st.decimals(min_value=D("0.01"), max_value=D("500"), places=2)
pieces = st.lists(st.integers(min_value=1, max_value=7), min_size=1, max_size=6)


def as_executions(order_id: uuid.UUID, fills: list[Fill]) -> list[Execution]:
    return [
        Execution(uuid.uuid4(), order_id, f.quantity, f.price, f.venue, f.venue_execution_id, NOW)
        for f in fills
    ]


def held_buy(quantity: int, limit: Decimal):  # type: ignore[no-untyped-def]
    order = buy(str(limit), quantity=str(quantity))
    return dataclasses.replace(order, reserved_cash=round_cash(quantity * limit))


@settings(max_examples=300, deadline=None)
@given(pieces=pieces, limit=prices, data=st.data())
def test_a_buy_filled_in_pieces_never_moves_more_than_its_hold(
    pieces: list[int], limit: Decimal, data: st.DataObject
) -> None:
    quantity = sum(pieces)
    order = held_buy(quantity, limit)
    hold = order.reserved_cash
    position = PositionState()
    cash = D(0)
    for n, piece in enumerate(pieces):
        price = data.draw(st.decimals(min_value=D("0.01"), max_value=limit, places=2))
        fill = Fill("EDGX", D(piece), price, f"x-{n}")
        change = fill_rules.execute(
            order, position, as_executions(order.id, [fill]), Execute([fill])
        )
        for posting in change.postings:
            ledger.check_balanced(posting.entries)
        cash += change.cash
        assert change.released_cash >= 0
        assert change.after.version == order.version + 1
        order, position = change.after, change.position or position
    assert order.status is Status.FILLED
    assert order.filled_quantity == quantity == position.quantity
    assert -cash <= hold  # what the fills cost stays within the hold
    assert -cash == position.cost_basis == round_cash(order.filled_value)
    assert order.reserved_cash == 0  # consumed and released, to the cent


@settings(max_examples=200, deadline=None)
@given(filled=st.integers(min_value=0, max_value=9), limit=prices)
def test_closing_the_remainder_releases_exactly_what_is_left(filled: int, limit: Decimal) -> None:
    order = held_buy(10, limit)
    fills = [Fill("EDGX", D(filled), limit, "x")] if filled else []
    change = fill_rules.execute(
        order,
        PositionState(),
        as_executions(order.id, fills),
        Execute(fills, close_remainder=True, reason="no liquidity"),
    )
    assert change.after.status is Status.CANCELLED
    assert change.after.reserved_cash == 0
    assert -change.cash <= order.reserved_cash
    assert change.released_cash == order.reserved_cash  # the part paid and the rest, together
    assert [e for e, _ in change.events][-1] is Event.CANCELLED


def test_a_replayed_fill_moves_nothing() -> None:
    order = held_buy(5, D("10"))
    change = fill_rules.execute(
        order, PositionState(), [], Execute([Fill("EDGX", D(5), D(10), "x")])
    )
    assert not change.moved and change.after == order and change.events == []


def test_close_and_mark_keep_the_state_machine() -> None:
    order = make_order(status=Status.FILLED)
    try:
        fill_rules.close(order, Close(Status.CANCELLED))
    except fill_rules.StaleOrder as error:
        assert "cannot go from FILLED to CANCELLED" in str(error)
    else:
        raise AssertionError("a filled order was cancelled")
    pending = make_order(status=Status.PENDING)
    marked = fill_rules.mark(pending, Mark(status=Status.SUBMITTED, event=Event.ACCEPTED))
    assert marked.after.status is Status.SUBMITTED and marked.events == [(Event.ACCEPTED, None)]
    assert marked.cash == marked.released_cash == 0 and marked.postings == []
