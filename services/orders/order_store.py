"""Reading orders and executions from PostgreSQL."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.errors import InvalidInput
from services.infra import db
from services.infra.db import single_read
from services.infra.replica import ReadRouter
from services.market_data.securities import is_valid_symbol, normalize_symbol
from services.orders.order_model import (
    OPEN_STATUSES,
    Execution,
    Order,
    OrderType,
    Side,
    Status,
    TimeInForce,
)

ORDER_COLUMNS = (
    "id, user_id, account_id, symbol, side, type, time_in_force, quantity, notional, "
    "limit_price, stop_price, status, filled_quantity, filled_value, reserved_cash, "
    "reserved_quantity, triggered, version, idempotency_key, reject_reason, created_at, "
    "updated_at, filled_at, request_id"
)
OPEN = tuple(s.value for s in OPEN_STATUSES)
MAX_PAGE = 200


_SIDES = {m.value: m for m in Side}
_TYPES = {m.value: m for m in OrderType}
_TIFS = {m.value: m for m in TimeInForce}
_STATUSES = {m.value: m for m in Status}
_WIDTH = len(ORDER_COLUMNS.split(","))


def order_from_row(row: Any) -> Order:
    """An order from a row that starts with ORDER_COLUMNS (positional: a page of 50 orders
    read by name and with enum calls cost a seventh of the API's time for the page)."""
    (
        order_id, user_id, account_id, symbol, side, type_, tif, quantity, notional,
        limit_price, stop_price, status, filled_quantity, filled_value, reserved_cash,
        reserved_quantity, triggered, version, idempotency_key, reject_reason, created_at,
        updated_at, filled_at, request_id,
    ) = tuple(row[:_WIDTH])  # fmt: skip
    return Order(
        order_id, user_id, account_id, symbol, _SIDES[side], _TYPES[type_], _TIFS[tif],
        quantity, notional, limit_price, stop_price, _STATUSES[status], filled_quantity,
        filled_value, reserved_cash, reserved_quantity, triggered, version, idempotency_key,
        reject_reason, created_at, updated_at, filled_at, request_id,
    )  # fmt: skip


async def orders_by_id(conn: AsyncConnection, ids: Sequence[UUID]) -> dict[UUID, Order]:
    rows = await conn.execute(
        text(f"SELECT {ORDER_COLUMNS} FROM orders WHERE id = ANY(:ids)"), {"ids": list(ids)}
    )
    return {r.id: order_from_row(r) for r in rows}


async def lock_account_and_order(
    conn: AsyncConnection, account_id: UUID, order_id: UUID
) -> Order | None:
    """Lock the account, then the order (the order every writer locks them in), in one trip.

    The account's lock is an uncorrelated sub-select, so PostgreSQL takes it (a one-time filter)
    before it reads, and locks, the order's row."""
    row = (
        await conn.execute(
            text(
                "WITH account AS (SELECT id FROM accounts WHERE id = :account FOR UPDATE) "
                f"SELECT {ORDER_COLUMNS} FROM orders "
                "WHERE id = :id AND EXISTS (SELECT 1 FROM account) FOR UPDATE"
            ),
            {"account": account_id, "id": order_id},
        )
    ).first()
    return order_from_row(row) if row else None


async def open_orders(
    conn: AsyncConnection,
    symbols: Sequence[str] | None = None,
    *,
    statuses: Sequence[Status] | None = None,
    created_before: datetime | None = None,
) -> list[Order]:
    sql = f"SELECT {ORDER_COLUMNS} FROM orders WHERE status = ANY(:open)"
    params: dict[str, Any] = {"open": [s.value for s in statuses] if statuses else list(OPEN)}
    if created_before is not None:
        sql += " AND created_at < :before"
        params["before"] = created_before
    if symbols is not None:
        sql += " AND symbol = ANY(:symbols)"
        params["symbols"] = list(symbols)
    rows = await conn.execute(text(sql + " ORDER BY created_at, id"), params)
    return [order_from_row(r) for r in rows]


async def open_order_ids(
    conn: AsyncConnection, *, created_before: datetime
) -> list[tuple[UUID, str]]:
    """(id, symbol) of every open order placed before `created_before`."""
    rows = await conn.execute(
        text("SELECT id, symbol FROM orders WHERE status = ANY(:open) AND created_at < :before"),
        {"open": list(OPEN), "before": created_before},
    )
    return [(r.id, r.symbol) for r in rows]


def encode_cursor(order: Order) -> str:
    raw = f"{order.created_at.isoformat()}|{order.id}"
    return base64.urlsafe_b64encode(raw.encode()).decode()


def decode_cursor(cursor: str) -> tuple[datetime, UUID]:
    try:
        created, _, order_id = base64.urlsafe_b64decode(cursor.encode()).decode().partition("|")
        return datetime.fromisoformat(created), UUID(order_id)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidInput("`after` is not a cursor this server gave out", field="after") from exc


# An order's executions as an array of records, which asyncpg decodes with their own types.
_EXECUTIONS_OF_ORDER = (
    "array(SELECT ROW(e.id, e.quantity, e.price, e.venue, e.venue_execution_id, e.executed_at) "
    "FROM executions e WHERE e.order_id = o.id ORDER BY e.executed_at, e.id)"
)


def _execution(order_id: UUID, record: Sequence[Any]) -> Execution:
    execution_id, quantity, price, venue, venue_execution_id, executed_at = record
    return Execution(
        execution_id, order_id, quantity, price, venue, venue_execution_id, executed_at
    )


@dataclass(frozen=True, slots=True)
class HistoryPage:
    orders: list[Order]
    has_more: bool
    executions: dict[UUID, list[Execution]] | None  # by order, when asked for


class OrderStore:
    def __init__(self, engine: AsyncEngine, reads: ReadRouter | None = None) -> None:
        self._engine = engine
        self._reads = reads

    async def by_ids(self, ids: Sequence[UUID]) -> dict[UUID, Order]:
        async with single_read(self._engine) as conn:
            return await orders_by_id(conn, ids)

    async def history(
        self,
        user_id: UUID,
        *,
        statuses: Sequence[Status] | None,
        symbol: str | None,
        first: int,
        after: str | None,
        with_executions: bool = False,
    ) -> HistoryPage:
        """Newest first, by keyset (created_at, id): a page costs the same at any depth. With
        `with_executions`, each order's executions come in the same statement (an array
        subquery on the executions' order index): one round trip for the whole page."""
        if not 0 < first <= MAX_PAGE:
            raise InvalidInput(f"first must be between 1 and {MAX_PAGE}", field="first")
        args: list[Any] = [user_id]
        conditions = ["user_id = $1"]
        if statuses:
            args.append([s.value for s in statuses])
            conditions.append(f"status = ANY(${len(args)})")
        if symbol:
            wanted = normalize_symbol(symbol)
            if not is_valid_symbol(wanted):
                raise InvalidInput(f"{symbol!r} is not a symbol", field="symbol")
            args.append(wanted)
            conditions.append(f"symbol = ${len(args)}")
        if after:
            args.extend(decode_cursor(after))
            conditions.append(f"(created_at, id) < (${len(args) - 1}, ${len(args)})")
        args.append(first + 1)
        extra = f", {_EXECUTIONS_OF_ORDER} AS executions" if with_executions else ""
        sql = (
            f"SELECT {ORDER_COLUMNS}{extra} FROM orders o WHERE {' AND '.join(conditions)} "
            f"ORDER BY created_at DESC, id DESC LIMIT ${len(args)}"
        )
        # The history may come from the replica, once it has the user's last write.
        engine = await self._reads.engine_for(user_id) if self._reads else self._engine
        rows = await db.fetch_directly(engine, sql, *args)
        orders = [order_from_row(r) for r in rows[:first]]
        executions = (
            {
                o.id: [_execution(o.id, e) for e in r[_WIDTH]]
                for o, r in zip(orders, rows, strict=False)
            }
            if with_executions
            else None
        )
        return HistoryPage(orders, len(rows) > first, executions)

    async def executions_for(self, order_ids: Sequence[UUID]) -> dict[UUID, list[Execution]]:
        async with single_read(self._engine) as conn:
            rows = await conn.execute(
                text(
                    "SELECT id, order_id, quantity, price, venue, venue_execution_id, executed_at "
                    "FROM executions WHERE order_id = ANY(:ids) ORDER BY executed_at, id"
                ),
                {"ids": list(order_ids)},
            )
            found: dict[UUID, list[Execution]] = {i: [] for i in order_ids}
            for r in rows:
                found[r.order_id].append(
                    Execution(
                        r.id,
                        r.order_id,
                        r.quantity,
                        r.price,
                        r.venue,
                        r.venue_execution_id,
                        r.executed_at,
                    )
                )
        return found
