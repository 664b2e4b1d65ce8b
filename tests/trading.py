"""Helpers for tests that trade: accounts with cash, listed symbols, quotes on the streams."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from decimal import Decimal
from uuid import UUID

import asyncpg
from sqlalchemy import text

from services.infra.container import Services
from services.market_data.marketdata import Quote, encode_quote
from services.market_data.quote_store import quotes_channel
from services.market_data.securities import Security
from services.orders.order_model import Order, OrderType, Side, Status, TimeInForce
from services.orders.order_rules import PlaceOrder
from services.orders.order_store import orders_by_id
from workers.feed import StreamPublisher

PASSWORD = "violet-harbor-lantern-42"


def unique_symbol(prefix: str = "T") -> str:
    return f"{prefix}{uuid.uuid4().hex[:5].upper()}".replace("0", "Q")


async def listed(services: Services, *symbols: str) -> None:
    await services.securities.load([Security(s, f"{s} Test Corp", "NASDAQ") for s in symbols])


async def trader(services: Services, cash: str = "100000") -> UUID:
    signed = await services.users.register(f"t-{uuid.uuid4().hex[:10]}@example.com", PASSWORD)
    if Decimal(cash) > 0:
        await services.cash.deposit(signed.user.id, Decimal(cash), f"seed-{uuid.uuid4().hex}")
    return signed.user.id


async def quote(
    services: Services, symbol: str, bid: str, ask: str, last: str | None = None
) -> Quote:
    """Make this the current quote everywhere, as the feed and the quote cache would: the quote
    hash, the live channel, and the stream the matcher reads."""
    q = Quote(
        symbol, Decimal(bid), Decimal(ask), 100, 100, Decimal(last or bid), 1000, time.time_ns()
    )
    await services.quote_store.write([q])
    await services.redis.publish(quotes_channel(), encode_quote(q))
    await StreamPublisher(services.redis, services.settings, "test").publish([q])
    return q


async def place(
    services: Services,
    user_id: UUID,
    symbol: str,
    side: str = "BUY",
    *,
    type: str = "MARKET",
    tif: str = "DAY",
    quantity: str | None = "1",
    notional: str | None = None,
    limit: str | None = None,
    stop: str | None = None,
    key: str | None = None,
) -> Order:
    return await services.placement.place(
        PlaceOrder(
            user_id=user_id,
            symbol=symbol,
            side=Side(side),
            type=OrderType(type),
            time_in_force=TimeInForce(tif),
            quantity=Decimal(quantity) if quantity is not None and notional is None else None,
            notional=Decimal(notional) if notional is not None else None,
            limit_price=Decimal(limit) if limit else None,
            stop_price=Decimal(stop) if stop else None,
            idempotency_key=key or uuid.uuid4().hex,
        )
    )


async def reload(services: Services, order_id: UUID) -> Order:
    async with services.engine.connect() as conn:
        return (await orders_by_id(conn, [order_id]))[order_id]


async def eventually(
    check: Callable[[], Awaitable[bool]], timeout: float = 10.0, every: float = 0.05
) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(every)


async def wait_status(
    services: Services, order_id: UUID, *statuses: Status, timeout: float = 10.0
) -> Order:
    found: list[Order] = []

    async def reached() -> bool:
        order = await reload(services, order_id)
        found[:] = [order]
        return order.status in statuses

    try:
        await eventually(reached, timeout)
    except AssertionError:
        raise AssertionError(
            f"order stayed {found[0].status if found else '?'}, wanted {statuses}"
        ) from None
    return found[0]


async def balances(services: Services, user_id: UUID) -> tuple[Decimal, Decimal]:
    async with services.engine.connect() as conn:
        row = (
            await conn.execute(
                text("SELECT cash, reserved_cash FROM accounts WHERE user_id = :u"), {"u": user_id}
            )
        ).one()
    return row.cash, row.reserved_cash


async def position(services: Services, user_id: UUID, symbol: str) -> tuple[Decimal, Decimal]:
    async with services.engine.connect() as conn:
        row = (
            await conn.execute(
                text(
                    "SELECT p.quantity, p.reserved_quantity FROM positions p JOIN accounts a "
                    "ON a.id = p.account_id WHERE a.user_id = :u AND p.symbol = :s"
                ),
                {"u": user_id, "s": symbol},
            )
        ).first()
    return (row.quantity, row.reserved_quantity) if row else (Decimal(0), Decimal(0))


async def book_fill(
    services: Services, user_id: UUID, symbol: str, side: str, quantity: str, price: str
) -> Order:
    """What the matcher would do for a limit order at `price`: place it, then fill it there."""
    from services.orders import fills
    from services.portfolio.holdings_version import forget_now

    order = await place(
        services, user_id, symbol, side, type="LIMIT", quantity=quantity, limit=price
    )
    async with services.engine.begin() as conn:
        outcome = await fills.execute(
            conn,
            order,
            [fills.Fill("EDGX", Decimal(quantity), Decimal(price), f"test:{uuid.uuid4().hex}")],
        )
    await forget_now(services.redis, [user_id])  # as the matcher's publish of the fill does
    return outcome.order


async def cut_database(services: Services, *, cut: bool) -> None:
    """Refuse (and end) every connection to the test database, or allow them again, from the
    maintenance database."""
    url = services.engine.url
    conn = await asyncpg.connect(
        host=url.host, port=url.port, user=url.username, password=url.password, database="postgres"
    )
    try:
        await conn.execute(
            f'ALTER DATABASE "{url.database}" ALLOW_CONNECTIONS {str(not cut).lower()}'
        )
        if cut:
            await conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1",
                url.database,
            )
    finally:
        await conn.close()
