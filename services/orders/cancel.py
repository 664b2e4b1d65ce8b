"""Cancelling an order, or every open order of an account, at the user's request."""

from __future__ import annotations

import logging
from uuid import UUID

from redis.exceptions import RedisError
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.errors import NotCancellable, NotFound
from services.infra.redis import RedisClient
from services.infra.replica import ReadRouter
from services.infra.retry import CONFLICT_SQLSTATES
from services.infra.settings import Settings
from services.orders import fills
from services.orders.order_model import Order, Status
from services.orders.order_store import (
    OPEN,
    ORDER_COLUMNS,
    order_from_row,
    orders_by_id,
)

log = logging.getLogger("tradeql.cancel")
_ALL = "cancelled by the user (all)"


async def _cancel_legs_made(
    conn: AsyncConnection, results: list[fills.Outcome | fills.StaleOrder]
) -> list[fills.Outcome | fills.StaleOrder]:
    """The legs that partly filled entries made as they were cancelled, cancelled in turn (in
    the same transaction): cancelling every order leaves none working."""
    made = [
        order
        for result in results
        if isinstance(result, fills.Outcome)
        for order in result.linked
        if order.version == 0
    ]
    if not made:
        return []
    return await fills.apply(
        conn, [fills.Work(o, fills.Close(Status.CANCELLED, reason=_ALL)) for o in made]
    )


class OrderCancellation:
    def __init__(
        self,
        engine: AsyncEngine,
        redis: RedisClient,
        settings: Settings,
        *,
        reads: ReadRouter | None = None,
    ) -> None:
        self._engine = engine
        self._reads = reads
        self._redis = redis
        self._settings = settings

    async def cancel(self, user_id: UUID, order_id: UUID) -> Order:
        """PENDING, SUBMITTED and PARTIALLY_FILLED orders; someone else's order is NOT_FOUND.

        A cancel racing a fill: whichever locks the order first wins; the other finds it
        changed and either retries (the fill) or answers NOT_CANCELLABLE (a filled order)."""
        async with self._engine.connect() as conn:
            order = (await orders_by_id(conn, [order_id])).get(order_id)
        if order is None or order.user_id != user_id:
            raise NotFound("no such order", field="id")
        for _ in range(3):
            if not order.is_open:
                raise NotCancellable(f"the order is {order.status.value}", field="id")
            try:
                async with self._engine.begin() as conn:
                    outcome = await fills.close(
                        conn, order, Status.CANCELLED, reason="cancelled by the user"
                    )
                break
            except fills.StaleOrder:
                async with self._engine.connect() as conn:
                    order = (await orders_by_id(conn, [order_id]))[order_id]
        else:
            raise NotCancellable("the order is changing; try again", field="id")
        await self._announce([outcome])
        return outcome.order

    async def cancel_all(self, user_id: UUID, *, sparing_prefix: str | None = None) -> list[Order]:
        """Every open order of the user's account, in one transaction; those that finish
        meanwhile (a fill won the race) are left out. `sparing_prefix`: orders whose
        idempotency key starts with it are kept (closeAllPositions' own orders, on a retry)."""
        async with self._engine.connect() as conn:
            rows = await conn.execute(
                text(
                    f"SELECT {ORDER_COLUMNS} FROM orders WHERE user_id = :u "
                    "AND status = ANY(:open) ORDER BY created_at, id"
                ),
                {"u": user_id, "open": list(OPEN)},
            )
            open_orders = [
                o
                for o in map(order_from_row, rows)
                if not (sparing_prefix and o.idempotency_key.startswith(sparing_prefix))
            ]
        if not open_orders:
            return []
        works = [fills.Work(o, fills.Close(Status.CANCELLED, reason=_ALL)) for o in open_orders]
        for attempt in range(3):
            try:
                async with self._engine.begin() as conn:
                    results = await fills.apply(conn, works)
                    results += await _cancel_legs_made(conn, results)
                break
            except DBAPIError as exc:
                if attempt == 2 or getattr(exc.orig, "sqlstate", None) not in CONFLICT_SQLSTATES:
                    raise
        outcomes = [r for r in results if isinstance(r, fills.Outcome)]
        await self._announce(outcomes)
        return [o.order for o in outcomes]

    async def _announce(self, outcomes: list[fills.Outcome]) -> None:
        """After the commit: the users' write positions (a replica's reads wait for them), the
        events, and the matcher told to drop the orders."""
        if not outcomes:
            return
        if self._reads is not None:
            await self._reads.note_commit(list({o.order.user_id for o in outcomes}))
        try:
            await fills.publish(
                self._redis,
                [u for o in outcomes for u in o.updates],
                # the orders closed, the legs they made, their siblings closed
                [o.order for o in outcomes] + [o for c in outcomes for o in c.linked],
                self._settings.quote_partitions,
            )
        except (RedisError, OSError) as exc:  # the matcher's sweep drops closed orders anyway
            log.warning("could not tell the matcher about %d cancels: %s", len(outcomes), exc)
