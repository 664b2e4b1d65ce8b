"""Cancelling an order at the user's request."""

from __future__ import annotations

import logging
from uuid import UUID

from redis.exceptions import RedisError
from sqlalchemy.ext.asyncio import AsyncEngine

from services.errors import NotCancellable, NotFound
from services.infra.redis import RedisClient
from services.infra.settings import Settings
from services.infra.streams import partition_of
from services.orders import fills, order_events
from services.orders.order_model import Order, Status
from services.orders.order_store import orders_by_id
from services.orders.placement import order_stream

log = logging.getLogger("tradeql.cancel")


class OrderCancellation:
    def __init__(self, engine: AsyncEngine, redis: RedisClient, settings: Settings) -> None:
        self._engine = engine
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
        try:
            await order_events.publish(self._redis, outcome.updates)
            partition = partition_of(order.symbol, self._settings.quote_partitions)
            await self._redis.xadd(order_stream(partition), {"op": "cancel", "id": str(order_id)})
        except (RedisError, OSError) as exc:  # the matcher's sweep drops closed orders anyway
            log.warning("could not tell the matcher about cancel of %s: %s", order_id, exc)
        return outcome.order
