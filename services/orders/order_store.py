"""Reading orders and executions from PostgreSQL."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.errors import InvalidInput
from services.infra import db
from services.infra.db import single_read
from services.infra.keys import ns, tag
from services.infra.redis import RedisPipeline
from services.infra.replica import ReadRouter
from services.infra.streams import partition_of
from services.infra.tables import OrderRow, column_list
from services.market_data.securities import is_valid_symbol, normalize_symbol
from services.orders.order_model import (
    OPEN_STATUSES,
    Execution,
    Order,
    OrderClass,
    OrderType,
    Side,
    Status,
    TimeInForce,
)

# Every column of `orders`, in the table's order, from its model (order_from_row reads them by
# position: a column added to the model is added there too).
ORDER_COLUMNS = column_list(OrderRow)
OPEN = tuple(s.value for s in OPEN_STATUSES)
MAX_PAGE = 200


_SIDES = {m.value: m for m in Side}
_TYPES = {m.value: m for m in OrderType}
_TIFS = {m.value: m for m in TimeInForce}
_STATUSES = {m.value: m for m in Status}
_CLASSES = {m.value: m for m in OrderClass}
_WIDTH = len(ORDER_COLUMNS.split(","))


def order_from_row(row: Any) -> Order:
    """An order from a row that starts with ORDER_COLUMNS (positional: a page of 50 orders
    read by name and with enum calls cost a seventh of the API's time for the page)."""
    (
        order_id, user_id, account_id, symbol, side, type_, tif, quantity, notional,
        limit_price, stop_price, status, filled_quantity, filled_value, reserved_cash,
        reserved_quantity, triggered, version, idempotency_key, reject_reason, created_at,
        updated_at, filled_at, request_id, trail_price, trail_percent, high_water_mark,
        replaces, replaced_by, extended_hours, order_class, parent_id, take_profit_limit,
        stop_loss_stop, stop_loss_limit,
    ) = tuple(row[:_WIDTH])  # fmt: skip
    return Order(
        order_id, user_id, account_id, symbol, _SIDES[side], _TYPES[type_], _TIFS[tif],
        quantity, notional, limit_price, stop_price, _STATUSES[status], filled_quantity,
        filled_value, reserved_cash, reserved_quantity, triggered, version, idempotency_key,
        reject_reason, created_at, updated_at, filled_at, request_id, trail_price,
        trail_percent, high_water_mark, replaces, replaced_by, extended_hours,
        _CLASSES[order_class], parent_id, take_profit_limit, stop_loss_stop, stop_loss_limit,
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


async def legs_of(conn: AsyncConnection, parent_ids: Sequence[UUID]) -> dict[UUID, list[Order]]:
    """Each parent's legs, oldest first (the take-profit before the stop-loss)."""
    rows = await conn.execute(
        text(
            f"SELECT {ORDER_COLUMNS} FROM orders WHERE parent_id = ANY(:ids) "
            "ORDER BY created_at, type, id"
        ),
        {"ids": list(parent_ids)},
    )
    found: dict[UUID, list[Order]] = {i: [] for i in parent_ids}
    for row in rows:
        order = order_from_row(row)
        found[order.parent_id].append(order)  # type: ignore[index]
    return found


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


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)

# The cursor of row `o`, made by PostgreSQL exactly as `encode_cursor` makes it (a compiled page
# reads its cursors with its rows). Its text is at most 56 bytes, so base64 breaks no line.
CURSOR_SQL = (
    "translate(encode(convert_to((extract(epoch FROM o.created_at) * 1000000)::bigint::text "
    "|| '|' || o.id::text, 'UTF8'), 'base64'), '+/', '-_')"
)

# `services.money.average_price` of the order row `o`, as PostgreSQL computes it: the quotient
# to 34 places (past where two roundings of it could disagree), then half away from zero.
AVERAGE_FILL_PRICE_SQL = (
    "CASE WHEN o.filled_quantity > 0 THEN "
    "round(o.filled_value::numeric(64, 34) / o.filled_quantity, 4) END"
)


# Rows locked in id order first, as every writer of orders locks them, so a store of many marks
# never deadlocks with a group of fills. Only an open, untriggered trailing stop takes a mark,
# and only a better one: a late store never moves a mark back. Not a change of the order's state:
# no version, no event (the trigger, which is one, carries the mark it triggered at).
_STORE_MARKS = text(
    """
    WITH locked AS (
        SELECT id, created_at FROM orders WHERE id = ANY(:ids) ORDER BY id FOR UPDATE
    )
    UPDATE orders o SET high_water_mark = d.mark, stop_price = d.stop
      FROM locked, unnest(CAST(:ids AS uuid[]), CAST(:marks AS numeric[]),
                          CAST(:stops AS numeric[])) AS d(id, mark, stop)
     WHERE o.id = locked.id AND o.created_at = locked.created_at AND o.id = d.id
       AND o.type = 'TRAILING_STOP' AND NOT o.triggered AND o.status = ANY(:open)
       AND CASE WHEN o.side = 'SELL' THEN d.mark > o.high_water_mark
                ELSE d.mark < o.high_water_mark END
    """
)


async def store_marks(conn: AsyncConnection, orders: Sequence[Order]) -> None:
    """Trailing stops' marks and the stops they make, as the matcher moved them."""
    if orders:
        await conn.execute(
            _STORE_MARKS,
            {
                "ids": [o.id for o in orders],
                "marks": [o.high_water_mark for o in orders],
                "stops": [o.stop_price for o in orders],
                "open": list(OPEN),
            },
        )


def encode_cursor(order: Order) -> str:
    """Opaque to clients: `<microseconds since the epoch>|<id>`, URL-safe base64."""
    micros = (order.created_at - _EPOCH) // _MICROSECOND
    return base64.urlsafe_b64encode(f"{micros}|{order.id}".encode()).decode()


def decode_cursor(cursor: str) -> tuple[datetime, UUID]:
    """A cursor of `encode_cursor`, or of the ISO-8601 form earlier releases gave out."""
    try:
        created, _, order_id = base64.urlsafe_b64decode(cursor.encode()).decode().partition("|")
        if created.lstrip("-").isdigit():
            return _EPOCH + int(created) * _MICROSECOND, UUID(order_id)
        return datetime.fromisoformat(created), UUID(order_id)
    except (ValueError, UnicodeDecodeError, OverflowError) as exc:
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


def _page_filter(
    user_id: UUID,
    statuses: Sequence[Status] | None,
    symbol: str | None,
    first: int,
    after: str | None,
) -> tuple[str, list[Any]]:
    """A history page's conditions over `orders o` and their arguments, the last of them the
    LIMIT (one row past the page, to tell whether more follow)."""
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
    return " AND ".join(conditions), args


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
        where, args = _page_filter(user_id, statuses, symbol, first, after)
        extra = f", {_EXECUTIONS_OF_ORDER} AS executions" if with_executions else ""
        sql = (
            f"SELECT {ORDER_COLUMNS}{extra} FROM orders o WHERE {where} "
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

    async def history_json(
        self,
        user_id: UUID,
        *,
        statuses: Sequence[Status] | None,
        symbol: str | None,
        first: int,
        after: str | None,
        edge_json: str,
    ) -> tuple[list[tuple[str, str]], bool]:
        """The page of `history` as PostgreSQL writes it: (cursor, the edge's JSON text made
        by `edge_json`, an expression over the order row `o`) per order, and whether more
        follow. The caller's expression must read only `o` and its own subqueries."""
        where, args = _page_filter(user_id, statuses, symbol, first, after)
        sql = (
            f"SELECT {CURSOR_SQL}, ({edge_json})::text FROM orders o WHERE {where} "
            f"ORDER BY created_at DESC, id DESC LIMIT ${len(args)}"
        )
        rows = await db.fetch_directly(self._engine, sql, *args)
        return [(r[0], r[1]) for r in rows[:first]], len(rows) > first

    async def legs_for(self, parent_ids: Sequence[UUID]) -> dict[UUID, list[Order]]:
        async with single_read(self._engine) as conn:
            return await legs_of(conn, parent_ids)

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


def order_stream(partition: int) -> str:
    """The matcher's stream of order hand-offs for a symbol partition."""
    return ns(f"orders:{tag(partition)}")


def queue_matcher_messages(pipe: RedisPipeline, orders: Sequence[Order], partitions: int) -> None:
    """Tell the matcher, after the commit, about orders a change made or moved: a new one
    (version 0) to work, an open one to read again, a closed one to drop."""
    for order in orders:
        op = "new" if order.version == 0 else "refresh" if order.is_open else "cancel"
        pipe.xadd(
            order_stream(partition_of(order.symbol, partitions)),
            {"op": op, "id": str(order.id)},
        )


_DEFAULTS: dict[str, Any] = {"order_class": "SIMPLE", "extended_hours": False}


async def insert_orders(conn: AsyncConnection, rows: list[dict[str, Any]]) -> list[Order]:
    """New PENDING orders from `rows` (a column left out of a row is NULL), in one statement."""
    columns = [
        "id",
        "user_id",
        "account_id",
        "symbol",
        "side",
        "type",
        "tif",
        "quantity",
        "notional",
        "limit_price",
        "stop_price",
        "reserved_cash",
        "reserved_quantity",
        "key",
        "request_id",
        "trail_price",
        "trail_percent",
        "high_water_mark",
        "replaces",
        "extended_hours",
        "order_class",
        "parent_id",
        "take_profit_limit",
        "stop_loss_stop",
        "stop_loss_limit",
    ]
    types = [
        "uuid",
        "uuid",
        "uuid",
        "text",
        "text",
        "text",
        "text",
        "numeric",
        "numeric",
        "numeric",
        "numeric",
        "numeric",
        "numeric",
        "text",
        "text",
        "numeric",
        "numeric",
        "numeric",
        "uuid",
        "boolean",
        "text",
        "uuid",
        "numeric",
        "numeric",
        "numeric",
    ]
    unnest = ", ".join(f"CAST(:{c} AS {t}[])" for c, t in zip(columns, types, strict=True))
    result = await conn.execute(
        text(
            "INSERT INTO orders (id, user_id, account_id, symbol, side, type, time_in_force, "
            "quantity, notional, limit_price, stop_price, reserved_cash, reserved_quantity, "
            "idempotency_key, request_id, trail_price, trail_percent, high_water_mark, replaces, "
            "extended_hours, order_class, parent_id, take_profit_limit, stop_loss_stop, "
            "stop_loss_limit, status) "
            f"SELECT *, 'PENDING' FROM unnest({unnest}) RETURNING {ORDER_COLUMNS}"
        ),
        {c: [r.get(c, _DEFAULTS.get(c)) for r in rows] for c in columns},
    )
    return [order_from_row(r) for r in result]
