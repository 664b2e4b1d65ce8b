"""`services/orders/internal_cross.py` against the real database, without the matcher (so the
crosses here are the only actors, and truly concurrent): the lock order, no overfill under a
race, fill-or-kill, extended hours, the skip list, and the books balancing after each."""

from __future__ import annotations

import asyncio
import csv
import io
import logging
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal
from uuid import UUID

import pytest
import pytest_asyncio
from sqlalchemy import text

from services.accounts.reconcile import find_differences
from services.infra.container import Services
from services.orders import fills, internal_cross
from services.orders.cat_export import NEW_YORK, export_day
from services.orders.internal_cross import Crossing
from services.orders.order_model import Order, OrderType, Side, Status
from tests.trading import balances, book_fill, listed, place, position, reload, trader

D = Decimal
PRICE = D("100.01")


@pytest_asyncio.fixture(autouse=True)
async def books_balance(services: Services) -> AsyncIterator[None]:
    """`tradeql check` after every test, and no open order left for a later module's matcher."""
    yield
    assert await find_differences(services.engine) == []
    async with services.engine.connect() as conn:
        open_ids = list(
            (
                await conn.execute(
                    text(
                        "SELECT id FROM orders WHERE status IN ('PENDING', 'SUBMITTED', "
                        "'PARTIALLY_FILLED')"
                    )
                )
            ).scalars()
        )
    for order_id in open_ids:
        order = await reload(services, order_id)
        async with services.engine.begin() as conn:
            await fills.close(conn, order, Status.CANCELLED, reason="test over")


@pytest.fixture
async def symbol(services: Services) -> str:
    name = f"X{uuid.uuid4().hex[:6].upper()}"
    await listed(services, name)
    return name


async def working(services: Services, order: Order) -> Order:
    """The order as the matcher leaves it when it starts resting: SUBMITTED."""
    async with services.engine.begin() as conn:
        return (await fills.mark(conn, order, status=Status.SUBMITTED)).order


async def resting_sell(services: Services, symbol: str, quantity: str, price: str) -> Order:
    seller = await trader(services)
    await book_fill(services, seller, symbol, "BUY", quantity, "90.00")
    order = await place(
        services, seller, symbol, "SELL", type="LIMIT", quantity=quantity, limit=price
    )
    return await working(services, order)


async def cross(services: Services, order: Order, bound: Decimal = PRICE, **kw: object) -> Crossing:
    return await internal_cross.cross_and_publish(
        services.engine,
        services.redis,
        order,
        bound,
        **kw,  # type: ignore[arg-type]
    )


async def executions(services: Services, order_id: UUID) -> list[tuple[Decimal, Decimal, str, str]]:
    async with services.engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT quantity, price, venue, venue_execution_id FROM executions "
                "WHERE order_id = :o ORDER BY executed_at"
            ),
            {"o": order_id},
        )
        return [(r.quantity, r.price, r.venue, r.venue_execution_id) for r in rows]


async def test_a_cross_moves_both_sides_in_one_transaction(services: Services, symbol: str) -> None:
    sell = await resting_sell(services, symbol, "10", "100.01")
    buyer = await trader(services)
    buy = await place(services, buyer, symbol, "BUY", type="LIMIT", quantity="2.5", limit="100.05")
    crossing = await cross(services, buy, D("100.05"))
    assert crossing.incoming.status is Status.FILLED
    assert [(o.id, o.status, o.filled_quantity) for o in crossing.resting] == [
        (sell.id, Status.PARTIALLY_FILLED, D("2.5"))
    ]
    assert crossing.executions == 2
    assert [(u.event.value, u.order.user_id) for u in crossing.updates] == [
        ("FILL", buyer),
        ("PARTIAL_FILL", sell.user_id),
    ]
    (bought,) = await executions(services, buy.id)
    (sold,) = await executions(services, sell.id)
    assert bought[:3] == sold[:3] == (D("2.5"), PRICE, "INTERNAL")  # at the resting price
    assert bought[3] == f"INTERNAL:{buy.id}:{sell.id}:{buy.version}:B"
    assert sold[3] == f"INTERNAL:{buy.id}:{sell.id}:{buy.version}:S"
    assert await balances(services, buyer) == (
        D("100000") - D("250.02"),
        D(0),
    )  # 250.025, half to even
    assert await position(services, buyer, symbol) == (D("2.5"), D(0))
    assert await position(services, sell.user_id, symbol) == (D("7.5"), D("7.5"))
    again = await cross(services, crossing.incoming, D("100.05"))  # filled: nothing to do
    assert again.resting == [] and again.incoming == crossing.incoming


async def test_a_stale_incoming_order_crosses_nothing(services: Services, symbol: str) -> None:
    await resting_sell(services, symbol, "1", "100.01")
    buyer = await trader(services)
    buy = await place(services, buyer, symbol, "BUY", type="LIMIT", quantity="1", limit="100.01")
    await working(services, buy)  # the caller's copy is now one version behind
    with pytest.raises(fills.StaleOrder):
        await cross(services, buy)
    assert await executions(services, buy.id) == []


async def test_fill_or_kill_crosses_only_when_the_book_fills_it(
    services: Services, symbol: str
) -> None:
    sell = await resting_sell(services, symbol, "5", "100.01")
    buyer = await trader(services)
    big = await place(
        services, buyer, symbol, "BUY", type="LIMIT", tif="FOK", quantity="6", limit="100.01"
    )
    assert (await cross(services, big, all_or_none=True)).resting == []
    small = await place(
        services, buyer, symbol, "BUY", type="LIMIT", tif="FOK", quantity="5", limit="100.01"
    )
    filled = await cross(services, small, all_or_none=True)
    assert filled.incoming.status is Status.FILLED
    assert [o.status for o in filled.resting] == [Status.FILLED]
    assert (await reload(services, sell.id)).filled_quantity == D(5)


async def test_only_working_limit_orders_of_others_in_the_session_and_the_bound_cross(
    services: Services, symbol: str
) -> None:
    seller = await trader(services)
    await book_fill(services, seller, symbol, "BUY", "10", "90.00")
    pending = await place(
        services, seller, symbol, "SELL", type="LIMIT", quantity="1", limit="100.00"
    )
    stop = await working(
        services,
        await place(
            services,
            seller,
            symbol,
            "SELL",
            type="STOP_LIMIT",
            quantity="1",
            limit="97.00",
            stop="98.00",
        ),
    )  # not triggered: not in the book
    dear = await working(
        services,
        await place(services, seller, symbol, "SELL", type="LIMIT", quantity="1", limit="100.02"),
    )  # above the bound
    skipped = await working(
        services,
        await place(services, seller, symbol, "SELL", type="LIMIT", quantity="1", limit="100.00"),
    )
    crossed = await working(
        services,
        await place(services, seller, symbol, "SELL", type="LIMIT", quantity="1", limit="100.00"),
    )
    # the seller's own buy: never crossed with their own sells
    mine = await place(services, seller, symbol, "BUY", type="LIMIT", quantity="1", limit="100.01")
    assert (await cross(services, mine)).resting == []
    buyer = await trader(services)
    buy = await place(services, buyer, symbol, "BUY", type="LIMIT", quantity="5", limit="100.01")
    assert (await cross(services, buy, extended_only=True)).resting == []  # not extended hours
    crossing = await cross(services, buy, skip={skipped.id})
    assert [o.id for o in crossing.resting] == [crossed.id]
    for untouched in (pending, stop, dear, skipped):
        assert (await reload(services, untouched.id)).filled_quantity == 0
    assert crossing.incoming.filled_quantity == D(1)


async def test_an_incoming_sell_takes_the_highest_resting_buy_first(
    services: Services, symbol: str
) -> None:
    buyers = [await trader(services) for _ in range(3)]
    low = await working(
        services,
        await place(services, buyers[0], symbol, "BUY", type="LIMIT", quantity="2", limit="99.98"),
    )
    high = await working(
        services,
        await place(services, buyers[1], symbol, "BUY", type="LIMIT", quantity="2", limit="99.99"),
    )
    later = await working(
        services,
        await place(services, buyers[2], symbol, "BUY", type="LIMIT", quantity="2", limit="99.99"),
    )
    seller = await trader(services)
    await book_fill(services, seller, symbol, "BUY", "5", "90.00")
    sell = await place(services, seller, symbol, "SELL", type="LIMIT", quantity="5", limit="99.98")
    crossing = await cross(services, sell, D("99.98"))  # its limit, above the bid
    assert [(o.id, o.filled_quantity) for o in crossing.resting] == [
        (high.id, D(2)),
        (later.id, D(2)),
        (low.id, D(1)),
    ]
    assert crossing.incoming.filled_value == D("199.98") * 2 + D("99.98")
    cash, held = await balances(services, buyers[0])
    assert (cash, held) == (D("100000") - D("99.98"), D("99.98"))  # one share still held


async def test_concurrent_incoming_buys_never_overfill_a_resting_sell(
    services: Services, symbol: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Fifty buys of one share cross one resting sell of ten at once, while a venue fill of
    three reaches it too: the sell fills exactly ten, the buys exactly what it gave them."""
    sell = await resting_sell(services, symbol, "10", "100.01")
    buyers = [await trader(services) for _ in range(5)]
    buys = [
        await place(
            services, buyers[n % 5], symbol, "BUY", type="LIMIT", quantity="1", limit="100.01"
        )
        for n in range(50)
    ]

    async def venue_fill() -> bool:
        while True:
            order = await reload(services, sell.id)
            if not order.is_open:
                return False
            try:
                async with services.engine.begin() as conn:
                    await fills.execute(conn, order, [fills.Fill("EDGX", D(3), PRICE, "race:v")])
                return True
            except fills.StaleOrder:
                continue

    caplog.set_level(logging.WARNING, logger="tradeql.internal_cross")
    results = await asyncio.gather(*(cross(services, b) for b in buys), venue_fill())
    crossings: list[Crossing] = results[:-1]  # type: ignore[assignment]
    venue = D(3) if results[-1] else D(0)
    ended = await reload(services, sell.id)
    assert (ended.status, ended.filled_quantity) == (Status.FILLED, D(10))
    internal = sum((c.incoming.filled_quantity for c in crossings), D(0))
    assert internal == D(10) - venue
    assert sum(1 for c in crossings if c.resting) == internal  # one share each
    sold = await executions(services, sell.id)
    assert sum((e[0] for e in sold), D(0)) == D(10)
    assert sum((e[0] for e in sold if e[2] == "INTERNAL"), D(0)) == internal
    assert [r for r in caplog.records if "deadlock" in r.getMessage()] == []


async def test_crosses_both_ways_over_the_same_accounts_do_not_deadlock(
    services: Services, symbol: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Four traders with resting buys and sells, crossing each other's both ways at once: every
    cross locks accounts, then orders, in id order, so none waits on another in a cycle."""
    traders = [await trader(services) for _ in range(4)]
    for t in traders:
        await book_fill(services, t, symbol, "BUY", "20", "90.00")
        for _ in range(3):
            await working(
                services,
                await place(
                    services, t, symbol, "SELL", type="LIMIT", quantity="1", limit="100.05"
                ),
            )
            await working(
                services,
                await place(services, t, symbol, "BUY", type="LIMIT", quantity="1", limit="99.95"),
            )
    incoming = []
    for n in range(24):
        t = traders[n % 4]
        if n % 2:
            incoming.append(
                await place(services, t, symbol, "SELL", type="LIMIT", quantity="1", limit="99.95")
            )
        else:
            incoming.append(
                await place(services, t, symbol, "BUY", type="LIMIT", quantity="1", limit="100.05")
            )
    caplog.set_level(logging.WARNING, logger="tradeql.internal_cross")
    crossings = await asyncio.gather(
        *(cross(services, o, D("100.05") if o.side is Side.BUY else D("99.95")) for o in incoming)
    )
    bought = sum(
        (c.incoming.filled_quantity for c in crossings if c.incoming.side is Side.BUY), D(0)
    )
    sold = sum(
        (c.incoming.filled_quantity for c in crossings if c.incoming.side is Side.SELL), D(0)
    )
    async with services.engine.connect() as conn:
        resting = (
            await conn.execute(
                text(
                    "SELECT side, sum(filled_quantity) AS q FROM orders WHERE symbol = :s "
                    "AND NOT (id = ANY(:incoming)) GROUP BY side"
                ),
                {"s": symbol, "incoming": [o.id for o in incoming]},
            )
        ).all()
    assert {r.side: r.q for r in resting} == {"SELL": bought, "BUY": sold + 80}  # + the seeds
    assert bought >= 6 and sold >= 6  # each side's incoming orders found others' orders
    for c in crossings:
        assert all(r.user_id != c.incoming.user_id for r in c.resting)
    assert [r for r in caplog.records if "deadlock" in r.getMessage()] == []
    assert all(o.type is OrderType.LIMIT for o in incoming)


async def test_an_internal_trade_exports_as_a_trade_with_no_route(
    services: Services, symbol: str
) -> None:
    sell = await resting_sell(services, symbol, "1", "100.01")
    buyer = await trader(services)
    buy = await place(services, buyer, symbol, "BUY", type="LIMIT", quantity="1", limit="100.01")
    await cross(services, buy)
    out = io.StringIO()
    await export_day(
        services.engine, datetime.now(UTC).astimezone(NEW_YORK).date(), out, imid="TQLTEST"
    )
    rows = [r for r in csv.DictReader(io.StringIO(out.getvalue())) if r["symbol"] == symbol]
    for order in (buy, sell):
        mine = [r for r in rows if r["orderID"] == str(order.id)]
        assert [r["type"] for r in mine] == ["MENO", "MEOT"]  # no MEOR: nothing was routed
        trade = mine[1]
        assert (trade["price"], trade["quantity"], trade["destination"]) == ("100.01", "1", "")
        assert trade["routedOrderID"] == "" and trade["leavesQty"] == "0"
