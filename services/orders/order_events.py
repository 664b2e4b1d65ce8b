"""Order updates: written as rows of `order_events` in the transaction that makes them (the
outbox), published on each user's channel (`user:{id}`) after that commit by their writer, and
marked sent; `tradeql relay` publishes any a writer did not (services/orders/outbox.py).

The same rows are the order's history (event sourcing): every change of an order writes at least
one, with its kind, the status after it, the fill's quantity, price and venue (or the order's
terms when it is accepted), the reason of a close and the request that caused it. A change no
subscriber is told about (a stop's trigger) is a row without a payload: recorded, never
published. `services/orders/order_history.py` reads and replays them."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.infra.db import single_read
from services.infra.keys import ns, tag
from services.infra.redis import RedisClient, RedisPipeline, queue_publish
from services.orders.order_model import (
    Event,
    Execution,
    Order,
    OrderClass,
    OrderType,
    Side,
    Status,
    TimeInForce,
)
from services.portfolio.holdings_version import forget


def user_channel(user_id: UUID) -> str:
    return ns(f"user:{tag(user_id)}")


SENT_TTL_SECONDS = 3600  # how long a writer's "sent" mark outlives its minute


# What order_events records beyond the published events: SUBMITTED (an accepted order starts
# working; subscribers are told ACCEPTED again), TRIGGERED (a stop's price was crossed) and
# UPDATED (any other change without money; subscribers are told ACCEPTED again when the
# working order's terms changed).
SUBMITTED, TRIGGERED, UPDATED = "SUBMITTED", "TRIGGERED", "UPDATED"
CLOSING_KINDS = frozenset({"CANCELLED", "EXPIRED", "REJECTED", "REPLACED"})


@dataclass(frozen=True, slots=True)
class OrderUpdate:
    event: Event
    order: Order
    execution: Execution | None = None
    id: UUID = field(default_factory=uuid.uuid4)  # its row in order_events
    _payload: str | None = field(default=None, compare=False, repr=False)
    kind: str | None = None  # what the history records, when it says more than `event`
    request_id: str | None = None  # the request that caused it, when not the order's own


@dataclass(frozen=True, slots=True)
class HistoryOnly:
    """A change of an order that no subscriber is told about: recorded, never published."""

    kind: str
    order: Order
    id: UUID = field(default_factory=uuid.uuid4)
    request_id: str | None = None


Recorded = OrderUpdate | HistoryOnly


def kind_of(event: Event, before: Order, after: Order) -> str:
    """What the history records for `event`: an ACCEPTED told again is SUBMITTED when the order
    starts working (PENDING -> SUBMITTED) and UPDATED when a working order changed (a sibling
    leg reduced: the contract has no event of its own for it), else the event itself."""
    if event.value == "ACCEPTED" and before.status is Status.PENDING:
        return SUBMITTED if after.status is not Status.PENDING else event.value
    if event.value == "ACCEPTED":
        return UPDATED
    return event.value


def silent_kind(before: Order, after: Order) -> str:
    """The kind of a change that publishes nothing."""
    if after.triggered and not before.triggered:
        return TRIGGERED
    if after.status is Status.SUBMITTED and before.status is Status.PENDING:
        return SUBMITTED
    return UPDATED


def payload_of(update: OrderUpdate) -> str:
    """`encode_update(update)`, made once per update (its outbox row and its publish share it)."""
    if update._payload is None:
        object.__setattr__(update, "_payload", encode_update(update))
    return update._payload  # type: ignore[return-value]


def sent_key(at: datetime) -> str:
    """The set of event ids published by their writers in the minute of `at` (an event's
    transaction time)."""
    return ns(f"outbox:sent:{at:%Y%m%d%H%M}")


def _text(value: object) -> str | None:
    return None if value is None else str(value)


def _decimal(value: str | None) -> Decimal | None:
    return None if value is None else Decimal(value)


def _uuid(value: str | None) -> UUID | None:
    return None if value is None else UUID(value)


def _time(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def encode_update(update: OrderUpdate) -> str:
    o = update.order
    order = {
        "id": str(o.id),
        "user_id": str(o.user_id),
        "account_id": str(o.account_id),
        "symbol": o.symbol,
        "side": o.side.value,
        "type": o.type.value,
        "tif": o.time_in_force.value,
        "quantity": str(o.quantity),
        "notional": _text(o.notional),
        "limit": _text(o.limit_price),
        "stop": _text(o.stop_price),
        "status": o.status.value,
        "filled_quantity": str(o.filled_quantity),
        "filled_value": str(o.filled_value),
        "reserved_cash": str(o.reserved_cash),
        "reserved_quantity": str(o.reserved_quantity),
        "triggered": o.triggered,
        "version": o.version,
        "key": o.idempotency_key,
        "reject_reason": o.reject_reason,
        "created_at": o.created_at.isoformat(),
        "updated_at": o.updated_at.isoformat(),
        "filled_at": _text(o.filled_at and o.filled_at.isoformat()),
        "request_id": o.request_id,
        "trail": _text(o.trail_price),
        "trail_pct": _text(o.trail_percent),
        "mark": _text(o.high_water_mark),
        "replaces": _text(o.replaces),
        "replaced_by": _text(o.replaced_by),
        "extended_hours": o.extended_hours,
        "class": o.order_class.value,
        "parent": _text(o.parent_id),
    }
    execution = None
    if update.execution is not None:
        e = update.execution
        execution = {
            "id": str(e.id),
            "order_id": str(e.order_id),
            "quantity": str(e.quantity),
            "price": str(e.price),
            "venue": e.venue,
            "venue_execution_id": e.venue_execution_id,
            "executed_at": e.executed_at.isoformat(),
        }
    return json.dumps({"event": update.event.value, "order": order, "execution": execution})


def decode_update(payload: str) -> OrderUpdate:
    data: dict[str, Any] = json.loads(payload)
    o = data["order"]
    order = Order(
        id=UUID(o["id"]),
        user_id=UUID(o["user_id"]),
        account_id=UUID(o["account_id"]),
        symbol=o["symbol"],
        side=Side(o["side"]),
        type=OrderType(o["type"]),
        time_in_force=TimeInForce(o["tif"]),
        quantity=Decimal(o["quantity"]),
        notional=_decimal(o["notional"]),
        limit_price=_decimal(o["limit"]),
        stop_price=_decimal(o["stop"]),
        status=Status(o["status"]),
        filled_quantity=Decimal(o["filled_quantity"]),
        filled_value=Decimal(o["filled_value"]),
        reserved_cash=Decimal(o["reserved_cash"]),
        reserved_quantity=Decimal(o["reserved_quantity"]),
        triggered=bool(o["triggered"]),
        version=int(o["version"]),
        idempotency_key=o["key"],
        reject_reason=o["reject_reason"],
        created_at=datetime.fromisoformat(o["created_at"]),
        updated_at=datetime.fromisoformat(o["updated_at"]),
        filled_at=_time(o["filled_at"]),
        request_id=o.get("request_id"),
        trail_price=_decimal(o.get("trail")),
        trail_percent=_decimal(o.get("trail_pct")),
        high_water_mark=_decimal(o.get("mark")),
        replaces=_uuid(o.get("replaces")),
        replaced_by=_uuid(o.get("replaced_by")),
        extended_hours=bool(o.get("extended_hours", False)),
        order_class=OrderClass(o.get("class", "SIMPLE")),
        parent_id=_uuid(o.get("parent")),
    )
    e = data.get("execution")
    execution = None
    if e:
        execution = Execution(
            UUID(e["id"]),
            UUID(e["order_id"]),
            Decimal(e["quantity"]),
            Decimal(e["price"]),
            e["venue"],
            e["venue_execution_id"],
            datetime.fromisoformat(e["executed_at"]),
        )
    return OrderUpdate(Event(data["event"]), order, execution)


_WRITE = text(
    """
    INSERT INTO order_events (id, user_id, order_id, version, event, payload, kind, status,
                              quantity, price, venue, reason, request_id, execution_id)
    SELECT r.id, r.user_id, r.order_id, r.version, r.event, r.payload, r.kind, r.status,
           r.quantity, r.price, r.venue, r.reason, r.request_id, r.execution_id
      FROM unnest(CAST(:ids AS uuid[]), CAST(:users AS uuid[]), CAST(:orders AS uuid[]),
                  CAST(:versions AS integer[]), CAST(:events AS text[]),
                  CAST(:payloads AS text[]), CAST(:kinds AS text[]), CAST(:statuses AS text[]),
                  CAST(:quantities AS numeric[]), CAST(:prices AS numeric[]),
                  CAST(:venues AS text[]), CAST(:reasons AS text[]),
                  CAST(:request_ids AS text[]), CAST(:executions AS uuid[]))
           WITH ORDINALITY AS r(id, user_id, order_id, version, event, payload, kind, status,
                                quantity, price, venue, reason, request_id, execution_id, ord)
     ORDER BY r.ord
    """
)

# The row columns in the order `_WRITE` (and the fills' statement) takes them.
ROW_COLUMNS = (
    "ids", "users", "orders", "versions", "events", "payloads", "kinds", "statuses",
    "quantities", "prices", "venues", "reasons", "request_ids", "executions",
)  # fmt: skip


def _row(item: Recorded) -> tuple[Any, ...]:
    order = item.order
    if isinstance(item, OrderUpdate):
        kind = item.kind or item.event.value
        event, payload, execution = item.event.value, payload_of(item), item.execution
    else:
        kind, event, payload, execution = item.kind, None, None, None
    quantity = price = venue = reason = execution_id = None
    if execution is not None:
        quantity, price, venue, execution_id = (
            execution.quantity,
            execution.price,
            execution.venue,
            execution.id,
        )
    elif kind == "ACCEPTED":  # the order's terms: what it asked for
        quantity, price = order.quantity, order.limit_price or order.stop_price
    elif kind in CLOSING_KINDS:  # what the close took off the market
        quantity, reason = order.quantity - order.filled_quantity, order.reject_reason
    return (
        item.id, order.user_id, order.id, order.version, event, payload, kind,
        order.status.value, quantity, price, venue, reason,
        item.request_id or order.request_id, execution_id,
    )  # fmt: skip


def outbox_params(items: Sequence[Recorded]) -> dict[str, list[Any]]:
    """The rows of `items` in order_events, as the arrays `_WRITE` (or a CTE of the same
    shape: ev_ids, ev_users, ...) takes, in ROW_COLUMNS order."""
    rows = [_row(item) for item in items]
    return {name: [r[i] for r in rows] for i, name in enumerate(ROW_COLUMNS)}


async def write(conn: AsyncConnection, updates: Sequence[Recorded]) -> None:
    """Write `updates` to the outbox in the caller's transaction."""
    if updates:
        await conn.execute(_WRITE, outbox_params(updates))


@dataclass(frozen=True, slots=True)
class Outgoing:
    """An event as it goes out: whose, which, when it was written, and its payload."""

    user_id: UUID
    event_id: UUID
    written_at: datetime
    payload: str


def queue(pipe: RedisPipeline, updates: list[OrderUpdate]) -> None:
    """Queue `updates` on a pipeline, after the commit that made them (see `queue_outgoing`)."""
    queue_outgoing(
        pipe,
        [Outgoing(u.order.user_id, u.id, u.order.updated_at, payload_of(u)) for u in updates],
    )


def queue_outgoing(pipe: RedisPipeline, events: Sequence[Outgoing]) -> None:
    """Queue events on a pipeline and mark them sent, by their writer or by the relay alike. The
    owners' cached holdings are retired first (an order change moves cash or shares, or holds
    them back), so whoever hears an event and reads the portfolio reads the new holdings."""
    forget(pipe, (event.user_id for event in events))
    sent: dict[str, list[str]] = {}
    for event in events:
        queue_publish(pipe, user_channel(event.user_id), event.payload)
        sent.setdefault(sent_key(event.written_at), []).append(str(event.event_id))
    for key, ids in sent.items():
        pipe.sadd(key, *ids)
        pipe.expire(key, SENT_TTL_SECONDS)


async def publish(redis: RedisClient, updates: list[OrderUpdate]) -> None:
    if not updates:
        return
    async with redis.pipeline(transaction=False) as pipe:
        queue(pipe, updates)
        await pipe.execute()


_SINCE = text(
    "SELECT payload FROM order_events WHERE user_id = :u AND created_at >= :since "
    "AND payload IS NOT NULL ORDER BY created_at, order_id, version, seq"
)


async def events_since(engine: AsyncEngine, user_id: UUID, since: datetime) -> list[OrderUpdate]:
    """The user's order events written at or after `since`, oldest first: what a subscriber
    catches up on after its pub/sub connection was lost (the outbox keeps every event)."""
    async with single_read(engine) as conn:
        rows = await conn.execute(_SINCE, {"u": user_id, "since": since})
        return [decode_update(r.payload) for r in rows]
