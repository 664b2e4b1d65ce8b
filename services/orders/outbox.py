"""The outbox relay: publishes the order events that their writers did not.

Every order event is a row of `order_events`, written in the transaction that made the change.
Its writer publishes it right after the commit and marks it sent (a Redis set per minute,
`order_events.sent_key`). The relay reads the events older than a grace period that it has not
looked at yet, publishes those that are not marked sent, and marks them. So an event is lost
neither when its writer dies between commit and publish nor when Redis fails at that moment;
a subscriber may see an event twice (the order's `version` says which snapshot is newer).

Which rows it has looked at is exact without a clock: it keeps a transaction-id watermark below
which every transaction has ended and every row was looked at (the watermark is held back by
rows still within the grace period), plus the ids it looked at above the watermark. The
watermark is kept in `outbox_cursor`, so a restarted relay starts where the last one left off.
Any number of relays may run: at worst an event goes out twice.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass
from uuid import UUID

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from services.infra.db import single_read
from services.infra.redis import RedisClient
from services.orders.order_events import Outgoing, queue_outgoing, sent_key

log = logging.getLogger("tradeql.outbox")
CURSOR = "order_events"

_XMIN = text("SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint")
# Rows without a payload are history only (services/orders/order_events.py): never published.
_DUE = text(
    "SELECT id, xid::text::bigint AS xid, created_at FROM order_events "
    "WHERE xid >= CAST(:w AS xid8) AND created_at <= now() - make_interval(secs => :grace) "
    "AND payload IS NOT NULL ORDER BY xid LIMIT :limit"
)
_YOUNGEST_HELD = text(
    "SELECT min(xid)::text::bigint FROM order_events "
    "WHERE xid >= CAST(:w AS xid8) AND created_at > now() - make_interval(secs => :grace) "
    "AND payload IS NOT NULL"
)
_PAYLOADS = text("SELECT id, user_id, created_at, payload FROM order_events WHERE id = ANY(:ids)")
_LOAD_CURSOR = text("SELECT watermark FROM outbox_cursor WHERE name = :name")
_SAVE_CURSOR = text(
    "INSERT INTO outbox_cursor (name, watermark) VALUES (:name, :w) "
    "ON CONFLICT (name) DO UPDATE SET watermark = excluded.watermark, updated_at = now() "
    "WHERE outbox_cursor.watermark < excluded.watermark"
)


@dataclass(frozen=True, slots=True)
class RelayRound:
    looked_at: int  # events past their grace period seen for the first time
    published: int  # of those, the ones their writer had not published
    watermark: int


class OutboxRelay:
    def __init__(
        self, engine: AsyncEngine, redis: RedisClient, *, grace_seconds: float, batch: int = 10_000
    ) -> None:
        self._engine = engine
        self._redis = redis
        self._grace = grace_seconds
        self._batch = batch
        self._watermark: int | None = None
        self._seen: dict[UUID, int] = {}  # ids looked at, at or above the watermark -> xid

    async def relay_once(self) -> RelayRound:
        async with single_read(self._engine) as conn:
            if self._watermark is None:
                saved = (await conn.execute(_LOAD_CURSOR, {"name": CURSOR})).scalar()
                self._watermark = int(saved) if saved is not None else 0
            # Read before the rows, so no transaction that ends after it is missed.
            next_watermark = int((await conn.execute(_XMIN)).scalar_one())
            params = {"w": self._watermark, "grace": self._grace, "limit": self._batch}
            due = (await conn.execute(_DUE, params)).all()
            held = (await conn.execute(_YOUNGEST_HELD, params)).scalar()
        if held is not None:
            next_watermark = min(next_watermark, int(held))
        if len(due) == self._batch:  # more to read: do not move past the last row read
            next_watermark = min(next_watermark, int(due[-1].xid))
        new = [r for r in due if r.id not in self._seen]
        published = await self._publish_unsent(new)
        for row in new:
            self._seen[row.id] = int(row.xid)
        if next_watermark > self._watermark:
            self._watermark = next_watermark
            self._seen = {i: x for i, x in self._seen.items() if x >= next_watermark}
            async with single_read(self._engine) as conn:
                await conn.execute(_SAVE_CURSOR, {"name": CURSOR, "w": next_watermark})
        return RelayRound(len(new), published, self._watermark)

    async def _publish_unsent(self, rows: list) -> int:  # type: ignore[type-arg]
        if not rows:
            return 0
        by_key: dict[str, list[UUID]] = defaultdict(list)
        for row in rows:
            by_key[sent_key(row.created_at)].append(row.id)
        async with self._redis.pipeline(transaction=False) as pipe:
            for key, ids in by_key.items():
                pipe.smismember(key, [str(i) for i in ids])
            answers = await pipe.execute()
        unsent = [
            event_id
            for (_key, ids), sent in zip(by_key.items(), answers, strict=True)
            for event_id, was_sent in zip(ids, sent, strict=True)
            if not was_sent
        ]
        if not unsent:
            return 0
        async with single_read(self._engine) as conn:
            events = (await conn.execute(_PAYLOADS, {"ids": unsent})).all()
        async with self._redis.pipeline(transaction=False) as pipe:
            queue_outgoing(
                pipe, [Outgoing(e.user_id, e.id, e.created_at, e.payload) for e in events]
            )
            await pipe.execute()
        log.info("relayed %d order events their writers had not published", len(events))
        return len(events)
