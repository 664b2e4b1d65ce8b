"""`services/orders/fills.py` against the real database, without the matcher: fills, replays, stale
versions, cancels, sells, and the books balancing after each."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any
from uuid import UUID

import pytest
from sqlalchemy import text

import services.orders.fills as fills_service
from services.accounts.reconcile import find_differences
from services.infra.container import Services
from services.market_data.securities import Security
from services.orders.fills import Fill, Outcome, StaleOrder
from services.orders.order_model import Event, Order, OrderType, Side, Status, TimeInForce
from services.orders.order_rules import PlaceOrder

D = Decimal
PASSWORD = "violet-harbor-lantern-42"
VENUE = "TESTX"


@dataclass(frozen=True)
class Trader:
    user_id: UUID
    account_id: UUID
    symbol: str


async def new_trader(services: Services, cash: str = "10000.00") -> Trader:
    """A registered user with `cash` deposited, and a freshly listed symbol of their own."""
    signed = await services.users.register(f"fills-{uuid.uuid4().hex[:12]}@example.com", PASSWORD)
    balances = await services.cash.deposit(signed.user.id, D(cash), f"dep-{uuid.uuid4().hex}")
    assert balances.cash == D(cash)
    symbol = f"F{uuid.uuid4().hex[:8].upper()}"
    await services.securities.load([Security(symbol, f"{symbol} Fills Test", "NASDAQ")])
    return Trader(signed.user.id, balances.account_id, symbol)


async def place_limit(
    services: Services, trader: Trader, side: Side, quantity: str, limit: str
) -> Order:
    return await services.placement.place(
        PlaceOrder(
            user_id=trader.user_id,
            symbol=trader.symbol,
            side=side,
            type=OrderType.LIMIT,
            time_in_force=TimeInForce.GTC,
            quantity=D(quantity),
            notional=None,
            limit_price=D(limit),
            stop_price=None,
            idempotency_key=f"place-{uuid.uuid4().hex}",
        )
    )


def fill(quantity: str, price: str, venue_execution_id: str | None = None) -> Fill:
    return Fill(VENUE, D(quantity), D(price), venue_execution_id or f"x-{uuid.uuid4().hex}")


async def execute(
    services: Services, order: Order, fills: Sequence[Fill], **kwargs: Any
) -> Outcome:
    async with services.engine.begin() as conn:
        return await fills_service.execute(conn, order, fills, **kwargs)


async def close(services: Services, order: Order, status: Status, **kwargs: Any) -> Outcome:
    async with services.engine.begin() as conn:
        return await fills_service.close(conn, order, status, **kwargs)


async def account(services: Services, trader: Trader) -> tuple[Decimal, Decimal]:
    """(cash, reserved cash)."""
    async with services.engine.connect() as conn:
        row = (
            await conn.execute(
                text("SELECT cash, reserved_cash FROM accounts WHERE id = :a"),
                {"a": trader.account_id},
            )
        ).one()
    return row.cash, row.reserved_cash


async def position(services: Services, trader: Trader) -> dict[str, Decimal] | None:
    async with services.engine.connect() as conn:
        row = (
            await conn.execute(
                text(
                    "SELECT quantity, reserved_quantity, cost_basis, realized_pnl FROM positions "
                    "WHERE account_id = :a AND symbol = :s"
                ),
                {"a": trader.account_id, "s": trader.symbol},
            )
        ).first()
    return None if row is None else dict(row._mapping)


async def stored_order(services: Services, order_id: UUID) -> dict[str, Any]:
    async with services.engine.connect() as conn:
        row = (
            await conn.execute(text("SELECT * FROM orders WHERE id = :id"), {"id": order_id})
        ).one()
    return dict(row._mapping)


async def executions(services: Services, order_id: UUID) -> list[dict[str, Any]]:
    async with services.engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT order_id, user_id, symbol, side, quantity, price, venue, "
                "venue_execution_id FROM executions WHERE order_id = :o ORDER BY executed_at, id"
            ),
            {"o": order_id},
        )
        return [dict(r._mapping) for r in rows]


async def ledger_entries(services: Services, reference: str) -> list[dict[str, Any]]:
    """The entries of the ledger transactions with this reference (a venue execution id)."""
    async with services.engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT t.id AS transaction_id, t.kind, e.account_id, e.book, e.asset, e.amount "
                "FROM ledger_transactions t JOIN ledger_entries e ON e.transaction_id = t.id "
                "WHERE t.reference = :r ORDER BY e.id"
            ),
            {"r": reference},
        )
        return [dict(r._mapping) for r in rows]


async def audit(services: Services, order_id: UUID) -> list[tuple[str, dict[str, Any]]]:
    async with services.engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT action, details FROM audit_log WHERE entity_type = 'order' "
                "AND entity_id = :o ORDER BY id"
            ),
            {"o": str(order_id)},
        )
        return [
            (r.action, r.details if isinstance(r.details, dict) else json.loads(r.details))
            for r in rows
        ]


async def snapshot(services: Services, trader: Trader, order_id: UUID) -> dict[str, Any]:
    """Everything a fill or a cancel could change, for `changes nothing` checks."""
    async with services.engine.connect() as conn:
        ledger_count = (
            await conn.execute(
                text("SELECT count(*) FROM ledger_entries WHERE account_id = :a"),
                {"a": trader.account_id},
            )
        ).scalar_one()
        audit_count = (
            await conn.execute(
                text("SELECT count(*) FROM audit_log WHERE entity_id = :o"), {"o": str(order_id)}
            )
        ).scalar_one()
    return {
        "account": await account(services, trader),
        "position": await position(services, trader),
        "order": await stored_order(services, order_id),
        "executions": await executions(services, order_id),
        "ledger_entries": ledger_count,
        "audit_rows": audit_count,
    }


async def assert_books_balance(services: Services) -> None:
    assert await find_differences(services.engine) == []


def ledger_rows(entries: list[dict[str, Any]]) -> list[tuple[str, str, Decimal, str]]:
    """(book, asset, amount, account id or "") of each entry, comparable for sorting."""
    return [(e["book"], e["asset"], e["amount"], str(e["account_id"] or "")) for e in entries]


def assert_balanced(entries: list[dict[str, Any]]) -> None:
    totals: dict[tuple[int, str], Decimal] = {}
    for e in entries:
        key = (e["transaction_id"], e["asset"])
        totals[key] = totals.get(key, D(0)) + e["amount"]
    assert totals and all(total == 0 for total in totals.values()), totals


# -- buys -----------------------------------------------------------------------------------


async def test_a_limit_buy_fills_partially_then_fully(services: Services) -> None:
    trader = await new_trader(services, "10000.00")
    order = await place_limit(services, trader, Side.BUY, "10", "100.00")
    assert (order.status, order.reserved_cash, order.version) == (Status.PENDING, D("1000.00"), 0)
    assert await account(services, trader) == (D("10000.00"), D("1000.00"))

    first = fill("4", "99.50")
    outcome = await execute(services, order, [first])

    partial = outcome.order
    assert partial.status is Status.PARTIALLY_FILLED
    assert (partial.filled_quantity, partial.filled_value) == (D(4), D("398.00"))
    assert partial.reserved_cash == D("602.00")  # the hold, less what the fill cost
    assert partial.version == 1 and partial.filled_at is None
    assert [u.event for u in outcome.updates] == [Event.PARTIAL_FILL]
    assert outcome.updates[0].execution is not None
    assert outcome.updates[0].execution.venue_execution_id == first.venue_execution_id
    stored = await stored_order(services, order.id)
    assert (stored["status"], stored["filled_quantity"], stored["reserved_cash"]) == (
        "PARTIALLY_FILLED",
        D(4),
        D("602.00"),
    )
    assert await account(services, trader) == (D("9602.00"), D("602.00"))
    assert await position(services, trader) == {
        "quantity": D(4),
        "reserved_quantity": D(0),
        "cost_basis": D("398.00"),
        "realized_pnl": D(0),
    }
    assert await executions(services, order.id) == [
        {
            "order_id": order.id,
            "user_id": trader.user_id,
            "symbol": trader.symbol,
            "side": "BUY",
            "quantity": D(4),
            "price": D("99.50"),
            "venue": VENUE,
            "venue_execution_id": first.venue_execution_id,
        }
    ]
    entries = await ledger_entries(services, first.venue_execution_id)
    assert {e["kind"] for e in entries} == {"fill.buy"}
    assert len({e["transaction_id"] for e in entries}) == 1
    assert sorted(ledger_rows(entries)) == sorted(
        [
            ("cash", "USD", D("-398.00"), str(trader.account_id)),
            ("external:venue", "USD", D("398.00"), ""),
            ("external:venue", trader.symbol, D(-4), ""),
            ("position", trader.symbol, D(4), str(trader.account_id)),
        ]
    )
    assert_balanced(entries)
    await assert_books_balance(services)

    second = fill("6", "99.00")
    outcome = await execute(services, partial, [second])

    done = outcome.order
    assert done.status is Status.FILLED
    assert (done.filled_quantity, done.filled_value) == (D(10), D("992.00"))
    assert done.average_fill_price == D("99.2")
    assert (done.reserved_cash, done.reserved_quantity) == (0, 0)
    assert done.version == 2 and done.filled_at is not None
    assert [u.event for u in outcome.updates] == [Event.FILL]
    stored = await stored_order(services, order.id)
    assert stored["status"] == "FILLED" and stored["filled_at"] is not None
    # 602 held - 594 paid: the 8.00 left over goes back to buying power
    assert await account(services, trader) == (D("9008.00"), D("0.00"))
    assert await position(services, trader) == {
        "quantity": D(10),
        "reserved_quantity": D(0),
        "cost_basis": D("992.00"),
        "realized_pnl": D(0),
    }
    assert len(await executions(services, order.id)) == 2
    assert_balanced(await ledger_entries(services, second.venue_execution_id))
    trail = await audit(services, order.id)
    assert [action for action, _ in trail] == ["order.accepted", "order.filled", "order.filled"]
    assert trail[1][1]["venue_execution_id"] == first.venue_execution_id
    assert D(trail[2][1]["quantity"]) == D(6) and D(trail[2][1]["price"]) == D("99.00")
    await assert_books_balance(services)


async def test_several_fills_in_one_call_are_applied_together(services: Services) -> None:
    trader = await new_trader(services, "1000.00")
    order = await place_limit(services, trader, Side.BUY, "3", "33.34")  # holds 100.02
    fills = [fill("1", "33.33"), fill("1", "33.335"), fill("1", "33.34")]  # 33.33+33.34+33.34

    outcome = await execute(services, order, fills)

    assert outcome.order.status is Status.FILLED
    assert outcome.order.filled_value == D("100.005")  # exact, unrounded
    assert [u.event for u in outcome.updates] == [Event.FILL] * 3
    # Cash follows the running total rounded half to even: 100.005 -> 100.00 (not 33.33 +
    # 33.34 + 33.34 fill by fill), so an order never costs more than its rounded-up hold.
    assert await account(services, trader) == (D("900.00"), D("0.00"))
    pos = await position(services, trader)
    assert pos is not None and (pos["quantity"], pos["cost_basis"]) == (D(3), D("100.00"))
    for f in fills:
        entries = await ledger_entries(services, f.venue_execution_id)
        assert len({e["transaction_id"] for e in entries}) == 1
        assert_balanced(entries)
    await assert_books_balance(services)


async def test_a_fill_that_closes_the_remainder_cancels_the_rest_and_releases_it(
    services: Services,
) -> None:
    trader = await new_trader(services, "1000.00")
    order = await place_limit(services, trader, Side.BUY, "10", "50.00")  # holds 500.00

    outcome = await execute(
        services, order, [fill("2", "49.00")], close_remainder=True, reason="IOC remainder"
    )

    assert outcome.order.status is Status.CANCELLED
    assert outcome.order.reject_reason == "IOC remainder"
    assert outcome.order.filled_quantity == D(2) and outcome.order.reserved_cash == 0
    assert [u.event for u in outcome.updates] == [Event.PARTIAL_FILL, Event.CANCELLED]
    assert await account(services, trader) == (D("902.00"), D("0.00"))
    assert [a for a, _ in await audit(services, order.id)] == [
        "order.accepted",
        "order.filled",
        "order.cancelled",
    ]
    await assert_books_balance(services)


# -- replays and stale versions -------------------------------------------------------------


async def test_a_fill_repeated_in_one_batch_is_applied_once(services: Services) -> None:
    trader = await new_trader(services, "5000.00")
    order = await place_limit(services, trader, Side.BUY, "10", "100.00")
    first = fill("4", "100.00")
    again = Fill(first.venue, D("5"), D("99.00"), first.venue_execution_id)  # same id
    outcome = await execute(services, order, [first, again, first])
    assert outcome.order.filled_quantity == D(4)
    assert [u.execution.quantity for u in outcome.updates if u.execution] == [D(4)]
    assert len(await ledger_entries(services, first.venue_execution_id)) == 4  # one posting
    assert await account(services, trader) == (D("4600.00"), D("600.00"))
    await assert_books_balance(services)


async def test_replaying_the_same_fill_changes_nothing(services: Services) -> None:
    trader = await new_trader(services, "5000.00")
    order = await place_limit(services, trader, Side.BUY, "10", "100.00")
    first = fill("4", "100.00")
    partial = (await execute(services, order, [first])).order
    before = await snapshot(services, trader, order.id)

    # the same execution again, with the order as it is now (a replay after a crash)
    replay = await execute(services, partial, [first])

    assert replay.updates == []
    assert replay.order.status is Status.PARTIALLY_FILLED
    assert replay.order.filled_quantity == D(4)
    # Nothing at all is written: not even the order's version moves.
    assert await snapshot(services, trader, order.id) == before
    assert len(await ledger_entries(services, first.venue_execution_id)) == 4

    # and once the order is filled, a replay of any of its fills is refused outright
    rest = fill("6", "100.00")
    done = (await execute(services, replay.order, [rest])).order
    assert done.status is Status.FILLED
    settled = await snapshot(services, trader, order.id)
    with pytest.raises(StaleOrder):
        await execute(services, done, [rest])
    with pytest.raises(StaleOrder):
        await execute(services, done, [first])
    assert await snapshot(services, trader, order.id) == settled
    assert await account(services, trader) == (D("4000.00"), D("0.00"))
    await assert_books_balance(services)


async def test_a_fill_with_a_stale_version_raises_and_changes_nothing(
    services: Services,
) -> None:
    trader = await new_trader(services, "5000.00")
    order = await place_limit(services, trader, Side.BUY, "10", "100.00")
    await execute(services, order, [fill("4", "100.00")])
    before = await snapshot(services, trader, order.id)

    with pytest.raises(StaleOrder, match="changed"):
        await execute(services, order, [fill("6", "100.00")])  # still at version 0

    assert await snapshot(services, trader, order.id) == before
    await assert_books_balance(services)


# -- cancels --------------------------------------------------------------------------------


async def test_cancelling_a_pending_order_releases_its_whole_hold(services: Services) -> None:
    trader = await new_trader(services, "2000.00")
    order = await place_limit(services, trader, Side.BUY, "7", "0.1234")  # holds 0.87
    assert await account(services, trader) == (D("2000.00"), D("0.87"))

    outcome = await close(services, order, Status.CANCELLED, reason="user asked")

    assert outcome.order.status is Status.CANCELLED
    assert outcome.order.reject_reason == "user asked"
    assert (outcome.order.reserved_cash, outcome.order.version) == (0, 1)
    assert [u.event for u in outcome.updates] == [Event.CANCELLED]
    assert await account(services, trader) == (D("2000.00"), D("0.00"))
    trail = await audit(services, order.id)
    assert trail[-1][0] == "order.cancelled"
    assert D(trail[-1][1]["released_cash"]) == D("0.87")
    await assert_books_balance(services)


async def test_cancelling_a_partly_filled_buy_releases_the_rest_of_the_hold(
    services: Services,
) -> None:
    trader = await new_trader(services, "5000.00")
    order = await place_limit(services, trader, Side.BUY, "10", "100.00")
    partial = (await execute(services, order, [fill("3", "98.00")])).order  # pays 294.00

    outcome = await close(services, partial, Status.CANCELLED, expected_version=partial.version)

    assert outcome.order.status is Status.CANCELLED
    assert outcome.order.filled_quantity == D(3)
    assert await account(services, trader) == (D("4706.00"), D("0.00"))
    stored = await stored_order(services, order.id)
    assert (stored["reserved_cash"], stored["status"]) == (0, "CANCELLED")
    trail = await audit(services, order.id)
    assert D(trail[-1][1]["released_cash"]) == D("706.00")
    await assert_books_balance(services)


async def test_a_fill_after_a_cancel_raises_and_changes_nothing(services: Services) -> None:
    trader = await new_trader(services, "5000.00")
    order = await place_limit(services, trader, Side.BUY, "10", "100.00")
    await close(services, order, Status.CANCELLED)
    before = await snapshot(services, trader, order.id)

    with pytest.raises(StaleOrder, match="no longer open"):
        await execute(services, order, [fill("10", "100.00")])

    assert await snapshot(services, trader, order.id) == before
    assert await executions(services, order.id) == []
    assert await account(services, trader) == (D("5000.00"), D("0.00"))
    await assert_books_balance(services)


async def test_a_cancel_after_a_full_fill_raises(services: Services) -> None:
    trader = await new_trader(services, "5000.00")
    order = await place_limit(services, trader, Side.BUY, "10", "100.00")
    await execute(services, order, [fill("10", "100.00")])
    before = await snapshot(services, trader, order.id)

    with pytest.raises(StaleOrder):
        await close(services, order, Status.CANCELLED)

    assert await snapshot(services, trader, order.id) == before
    await assert_books_balance(services)


async def test_a_close_with_a_stale_expected_version_raises(services: Services) -> None:
    trader = await new_trader(services, "5000.00")
    order = await place_limit(services, trader, Side.BUY, "10", "100.00")
    await execute(services, order, [fill("1", "100.00")])

    with pytest.raises(StaleOrder):
        await close(services, order, Status.CANCELLED, expected_version=order.version)

    assert (await stored_order(services, order.id))["status"] == "PARTIALLY_FILLED"
    await assert_books_balance(services)


async def test_a_partly_filled_order_cannot_be_rejected(services: Services) -> None:
    trader = await new_trader(services, "5000.00")
    order = await place_limit(services, trader, Side.BUY, "10", "100.00")
    partial = (await execute(services, order, [fill("1", "100.00")])).order
    before = await snapshot(services, trader, order.id)

    with pytest.raises(StaleOrder, match="cannot go from PARTIALLY_FILLED to REJECTED"):
        await close(services, partial, Status.REJECTED)

    assert await snapshot(services, trader, order.id) == before
    expired = await close(services, partial, Status.EXPIRED, reason="end of day")
    assert expired.order.status is Status.EXPIRED
    assert [u.event for u in expired.updates] == [Event.EXPIRED]
    assert await account(services, trader) == (D("4900.00"), D("0.00"))
    await assert_books_balance(services)


async def test_a_racing_full_fill_and_cancel_never_both_apply(services: Services) -> None:
    for _ in range(5):
        trader = await new_trader(services, "5000.00")
        order = await place_limit(services, trader, Side.BUY, "10", "100.00")

        results = await asyncio.gather(
            execute(services, order, [fill("10", "100.00")]),
            close(services, order, Status.CANCELLED),
            return_exceptions=True,
        )

        failures = [r for r in results if isinstance(r, BaseException)]
        assert len(failures) == 1 and isinstance(failures[0], StaleOrder), results
        stored = await stored_order(services, order.id)
        if isinstance(results[1], StaleOrder):  # the fill won
            assert stored["status"] == "FILLED"
            assert await account(services, trader) == (D("4000.00"), D("0.00"))
            assert len(await executions(services, order.id)) == 1
        else:  # the cancel won
            assert stored["status"] == "CANCELLED"
            assert await account(services, trader) == (D("5000.00"), D("0.00"))
            assert await executions(services, order.id) == []
        await assert_books_balance(services)


# -- sells ----------------------------------------------------------------------------------


async def _holding(services: Services, cash: str, quantity: str, price: str) -> Trader:
    trader = await new_trader(services, cash)
    order = await place_limit(services, trader, Side.BUY, quantity, price)
    assert (await execute(services, order, [fill(quantity, price)])).order.status is Status.FILLED
    return trader


async def test_a_sell_fill_realizes_pnl_and_releases_reserved_shares(services: Services) -> None:
    trader = await _holding(services, "2000.00", "10", "100.00")  # cash 1000, 10 shares
    order = await place_limit(services, trader, Side.SELL, "6", "120.00")
    assert (order.reserved_quantity, order.reserved_cash) == (D(6), 0)
    pos = await position(services, trader)
    assert pos is not None and pos["reserved_quantity"] == D(6)

    first = fill("4", "120.00")
    partial = (await execute(services, order, [first])).order

    assert partial.status is Status.PARTIALLY_FILLED
    assert partial.reserved_quantity == D(2)
    assert await account(services, trader) == (D("1480.00"), D("0.00"))
    assert await position(services, trader) == {
        "quantity": D(6),
        "reserved_quantity": D(2),
        "cost_basis": D("600.00"),  # 1000 - 4 x 100
        "realized_pnl": D("80.00"),  # 480 - 400
    }
    entries = await ledger_entries(services, first.venue_execution_id)
    assert {e["kind"] for e in entries} == {"fill.sell"}
    assert sorted(ledger_rows(entries)) == sorted(
        [
            ("cash", "USD", D("480.00"), str(trader.account_id)),
            ("external:venue", "USD", D("-480.00"), ""),
            ("external:venue", trader.symbol, D(4), ""),
            ("position", trader.symbol, D(-4), str(trader.account_id)),
        ]
    )
    assert_balanced(entries)
    await assert_books_balance(services)

    done = (await execute(services, partial, [fill("2", "121.00")])).order

    assert done.status is Status.FILLED
    assert (done.reserved_quantity, done.filled_quantity) == (0, D(6))
    assert await account(services, trader) == (D("1722.00"), D("0.00"))
    assert await position(services, trader) == {
        "quantity": D(4),
        "reserved_quantity": D(0),
        "cost_basis": D("400.00"),
        "realized_pnl": D("122.00"),  # 80 + (242 - 200)
    }
    await assert_books_balance(services)


async def test_cancelling_a_partly_filled_sell_releases_the_remaining_shares(
    services: Services,
) -> None:
    trader = await _holding(services, "1000.00", "5", "20.00")  # cash 900, 5 shares at 100.00
    order = await place_limit(services, trader, Side.SELL, "5", "25.00")
    partial = (await execute(services, order, [fill("2", "25.00")])).order

    outcome = await close(services, partial, Status.CANCELLED)

    assert outcome.order.reserved_quantity == 0
    assert await position(services, trader) == {
        "quantity": D(3),
        "reserved_quantity": D(0),
        "cost_basis": D("60.00"),
        "realized_pnl": D("10.00"),
    }
    assert await account(services, trader) == (D("950.00"), D("0.00"))
    trail = await audit(services, order.id)
    assert D(trail[-1][1]["released_shares"]) == D(3)
    await assert_books_balance(services)


async def test_selling_the_whole_position_leaves_no_cost_basis(services: Services) -> None:
    trader = await _holding(services, "1000.00", "3", "33.33")  # 99.99 for 3 shares
    order = await place_limit(services, trader, Side.SELL, "3", "30.00")

    for _ in range(3):
        order = (await execute(services, order, [fill("1", "30.00")])).order

    assert order.status is Status.FILLED
    assert await position(services, trader) == {
        "quantity": D(0),
        "reserved_quantity": D(0),
        "cost_basis": D(0),
        "realized_pnl": D("-9.99"),  # 90.00 - 99.99
    }
    assert await account(services, trader) == (D("990.01"), D("0.00"))
    await assert_books_balance(services)


# -- values that round to zero --------------------------------------------------------------


@pytest.mark.parametrize(("quantity", "price"), [("1", "0.0040"), ("0.000001", "100.00")])
async def test_a_fill_whose_value_rounds_to_zero_cents_still_fills(
    services: Services, quantity: str, price: str
) -> None:
    trader = await new_trader(services, "100.00")
    order = await place_limit(services, trader, Side.BUY, quantity, price)  # holds 0.01
    assert order.reserved_cash == D("0.01")

    outcome = await execute(services, order, [fill(quantity, price)])

    assert outcome.order.status is Status.FILLED
    pos = await position(services, trader)
    assert pos is not None and pos["quantity"] == D(quantity)
    assert (await account(services, trader))[1] == D("0.00")
    await assert_books_balance(services)


async def test_a_buy_holding_all_the_cash_fills_in_parts_at_its_limit(
    services: Services,
) -> None:
    trader = await new_trader(services, "30.03")
    order = await place_limit(services, trader, Side.BUY, "3", "10.01")  # holds 30.03: all of it
    assert order.reserved_cash == D("30.03")
    partial = (await execute(services, order, [fill("1.5", "10.01")])).order  # 15.015

    outcome = await execute(services, partial, [fill("1.5", "10.01")])

    assert outcome.order.status is Status.FILLED
    assert (await account(services, trader))[1] == D("0.00")
    pos = await position(services, trader)
    assert pos is not None and pos["quantity"] == D(3)
    await assert_books_balance(services)
