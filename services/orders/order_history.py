"""An order's history: its events, read back from `order_events`, and its state rebuilt from them.

Every change of an order writes its events in the change's transaction
(services/orders/order_events.py), so the events alone say what the order is: `replay` folds
them (status after each, fills' quantities and values, the reason of a close, the version of the
last change) and `history_differences` compares that, for every order, with the order's row.
Events are ordered by the version of the change that wrote them, then by `seq` (the order within
one change): a change's version is taken under the order's row lock, so it is the true order.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.infra.db import single_read
from services.orders.order_events import CLOSING_KINDS
from services.orders.order_model import Status, can_transition

ZERO = Decimal(0)
FILL_KINDS = frozenset({"FILL", "PARTIAL_FILL"})
EVENT_COLUMNS = (
    "order_id, kind, status, created_at, quantity, price, venue, reason, request_id, version, "
    "seq, execution_id, backfilled"
)
CHUNK = 5000


@dataclass(frozen=True, slots=True)
class HistoryEvent:
    order_id: UUID
    kind: str  # an OrderEvent, or an internal kind (SUBMITTED, TRIGGERED, UPDATED)
    status: Status  # the order's status after it
    at: datetime
    quantity: Decimal | None
    price: Decimal | None
    venue: str | None
    reason: str | None
    request_id: str | None
    version: int
    seq: int
    execution_id: UUID | None
    backfilled: bool


def _event(r: Any) -> HistoryEvent:
    return HistoryEvent(
        r.order_id, r.kind, Status(r.status), r.created_at, r.quantity, r.price, r.venue,
        r.reason, r.request_id, r.version, r.seq, r.execution_id, r.backfilled,
    )  # fmt: skip


@dataclass(frozen=True, slots=True)
class Rebuilt:
    """What an order's events say it is."""

    status: Status
    filled_quantity: Decimal
    filled_value: Decimal
    version: int
    reason: str | None


class BrokenHistory(ValueError):
    """The events cannot be an order's history (no ACCEPTED first, a transition not allowed)."""


def replay(events: Iterable[HistoryEvent]) -> Rebuilt:
    """The order's state from its events alone, oldest first."""
    state: Rebuilt | None = None
    for event in events:
        if state is None:
            if event.kind != "ACCEPTED":
                raise BrokenHistory(f"the history starts with {event.kind}, not ACCEPTED")
            state = Rebuilt(event.status, ZERO, ZERO, event.version, None)
            continue
        if not can_transition(state.status, event.status) and state.status != event.status:
            raise BrokenHistory(
                f"{event.kind} (version {event.version}) takes the order from "
                f"{state.status.value} to {event.status.value}"
            )
        filled, value = state.filled_quantity, state.filled_value
        if event.kind in FILL_KINDS:
            if event.quantity is None or event.price is None:
                raise BrokenHistory(f"a {event.kind} without its quantity and price")
            filled += event.quantity
            value += event.quantity * event.price
        reason = event.reason if event.kind in CLOSING_KINDS else state.reason
        state = Rebuilt(event.status, filled, value, event.version, reason)
    if state is None:
        raise BrokenHistory("no events")
    return state


async def events_of(
    conn: AsyncConnection, order_ids: Sequence[UUID]
) -> dict[UUID, list[HistoryEvent]]:
    """Each order's events, oldest first."""
    rows = await conn.execute(
        text(
            f"SELECT {EVENT_COLUMNS} FROM order_events WHERE order_id = ANY(:ids) "
            "ORDER BY order_id, version, seq"
        ),
        {"ids": list(order_ids)},
    )
    found: dict[UUID, list[HistoryEvent]] = {i: [] for i in order_ids}
    for row in rows:
        found[row.order_id].append(_event(row))
    return found


class OrderHistory:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def events_for(self, order_ids: Sequence[UUID]) -> dict[UUID, list[HistoryEvent]]:
        async with single_read(self._engine) as conn:
            return await events_of(conn, order_ids)


_ORDERS_PAGE = text(
    "SELECT id, status, filled_quantity, filled_value, version, reject_reason FROM orders "
    "WHERE id > :after ORDER BY id LIMIT :n"
)
_ORPHANS = text(
    "SELECT DISTINCT e.order_id FROM order_events e "
    "WHERE NOT EXISTS (SELECT 1 FROM orders o WHERE o.id = e.order_id)"
)


def compare(o: Any, rebuilt: Rebuilt) -> list[str]:
    """What the order's row (id, status, filled_quantity, filled_value, version,
    reject_reason) says that its events do not."""
    pairs = (
        ("status", o.status, rebuilt.status.value),
        ("filled quantity", o.filled_quantity, rebuilt.filled_quantity),
        ("filled value", o.filled_value, rebuilt.filled_value),
        ("version", o.version, rebuilt.version),
        ("reason", o.reject_reason, rebuilt.reason),
    )
    return [
        f"order {name} differs from its events: {o.id}: stored {stored}, computed {computed}"
        for name, stored, computed in pairs
        if stored != computed
    ]


async def history_differences(engine: AsyncEngine) -> list[str]:
    """Every order rebuilt from its events and compared with its row, in one snapshot."""
    problems: list[str] = []
    async with engine.connect() as conn:
        conn = await conn.execution_options(isolation_level="REPEATABLE READ")
        async with conn.begin():
            after = UUID(int=0)
            while True:
                orders = (await conn.execute(_ORDERS_PAGE, {"after": after, "n": CHUNK})).all()
                if not orders:
                    break
                events = await events_of(conn, [o.id for o in orders])
                for order in orders:
                    try:
                        problems += compare(order, replay(events[order.id]))
                    except BrokenHistory as broken:
                        problems.append(f"order history is broken: {order.id}: {broken}")
                after = orders[-1].id
            for row in await conn.execute(_ORPHANS):
                problems.append(f"order events without an order: {row.order_id}")
    return problems
