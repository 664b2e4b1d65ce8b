"""Replacing an open order: one transaction ends the old order REPLACED and creates the new one.

The new order trades the shares still to trade (by default what the old one had not filled), with
the changed fields; its idempotency key is the replace's. The holds swap in that transaction: the
new hold may use what is free plus what the old order held, no more. A fill that comes for the
old order afterwards finds it REPLACED and applies nothing, as for a cancel; a fill that commits
first is in the old order, and the new one gets only what is left.
"""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass
from decimal import Decimal
from uuid import UUID

from redis.exceptions import RedisError
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.errors import InsufficientBuyingPower, InsufficientShares, NotFound, NotReplaceable
from services.infra import idempotency
from services.infra.redis import RedisClient
from services.infra.request_context import current_request_id
from services.infra.retry import CONFLICT_SQLSTATES
from services.infra.settings import Settings
from services.infra.streams import partition_of
from services.money import trim_quantity
from services.orders import order_events, trailing
from services.orders.order_events import OrderUpdate
from services.orders.order_model import Event, Order, OrderClass, OrderType, Side, TimeInForce
from services.orders.order_rules import PlaceOrder, hold_for, validate
from services.orders.order_store import (
    ORDER_COLUMNS,
    insert_orders,
    order_from_row,
    order_stream,
    orders_by_id,
)
from services.orders.placement import SCOPE

log = logging.getLogger("tradeql.replace")
ZERO = Decimal(0)


@dataclass(frozen=True, slots=True)
class ReplaceOrder:
    """The command: the order to replace and the fields to change (None: as it was)."""

    user_id: UUID
    order_id: UUID
    quantity: Decimal | None
    limit_price: Decimal | None
    stop_price: Decimal | None
    trail_price: Decimal | None
    trail_percent: Decimal | None
    time_in_force: TimeInForce | None
    idempotency_key: str

    def fingerprint(self) -> str:
        fields = {
            "replace": str(self.order_id),
            "quantity": self.quantity,
            "limit": self.limit_price,
            "stop": self.stop_price,
            "trail": self.trail_price,
            "trail_pct": self.trail_percent,
            "tif": self.time_in_force and self.time_in_force.value,
        }
        return idempotency.request_fingerprint({k: _text(v) for k, v in fields.items()})


def _changed(given: Decimal | None, was: Decimal | None) -> Decimal | None:
    return was if given is None else given


def _text(value: object) -> str | None:
    return None if value is None else str(value)


def successor(old: Order, change: ReplaceOrder) -> PlaceOrder:
    """The new order as a command: the old one's, with what the replace changes. A trail given
    replaces the old trail whichever kind it was (dollars or percent)."""
    trail_price, trail_percent = old.trail_price, old.trail_percent
    if change.trail_price is not None or change.trail_percent is not None:
        trail_price, trail_percent = change.trail_price, change.trail_percent
    return PlaceOrder(
        user_id=old.user_id,
        symbol=old.symbol,
        side=old.side,
        type=old.type,
        time_in_force=change.time_in_force or old.time_in_force,
        quantity=old.remaining_quantity if change.quantity is None else change.quantity,
        notional=None,
        limit_price=_changed(change.limit_price, old.limit_price),
        # a trailing stop's stop is worked out from its mark, never given
        stop_price=change.stop_price
        if old.type is OrderType.TRAILING_STOP
        else _changed(change.stop_price, old.stop_price),
        idempotency_key=change.idempotency_key,
        trail_price=trail_price,
        trail_percent=trail_percent,
    )


def check_replaceable(old: Order | None, user_id: UUID) -> Order:
    if old is None or old.user_id != user_id:
        raise NotFound("no such order", field="id")
    if not old.is_open:
        raise NotReplaceable(f"the order is {old.status.value}", field="id")
    if old.order_class is not OrderClass.SIMPLE:  # its legs and siblings are tied to it
        raise NotReplaceable(
            f"a {old.order_class.value} order cannot be replaced: cancel it and place another",
            field="id",
        )
    if old.type is OrderType.MARKET:
        raise NotReplaceable("a market order executes at once: cancel it instead", field="id")
    if old.triggered:
        raise NotReplaceable("the stop has triggered: the order is executing", field="id")
    return old


class OrderReplacement:
    def __init__(self, engine: AsyncEngine, redis: RedisClient, settings: Settings) -> None:
        self._engine = engine
        self._redis = redis
        self._settings = settings

    async def replace(self, change: ReplaceOrder) -> Order:
        """The new order (the same one again for a repeated idempotency key)."""
        idempotency.validate_key(change.idempotency_key)
        async with self._engine.connect() as conn:
            seen = (await orders_by_id(conn, [change.order_id])).get(change.order_id)
        if seen is None or seen.user_id != change.user_id:
            raise NotFound("no such order", field="id")
        old = seen  # judged once its key is claimed: a retry of a replace finds it REPLACED
        fingerprint = change.fingerprint()
        for attempt in range(3):
            try:
                async with self._engine.begin() as conn:
                    new, updates = await self._replace(conn, old, change, fingerprint)
                break
            except DBAPIError as exc:
                if attempt == 2 or getattr(exc.orig, "sqlstate", None) not in CONFLICT_SQLSTATES:
                    raise
        if updates:
            await self._announce(old, new, updates)
        return new

    async def _replace(
        self, conn: AsyncConnection, seen: Order, change: ReplaceOrder, fingerprint: str
    ) -> tuple[Order, list[OrderUpdate]]:
        claim = await idempotency.claim(
            conn,
            user_id=change.user_id,
            scope=SCOPE,
            key=change.idempotency_key,
            fingerprint=fingerprint,
        )
        if not claim.is_new:
            return await _earlier(conn, claim.resource_id), []
        available_cash = await _lock_account(conn, seen.account_id)
        old = check_replaceable(await _lock_order(conn, seen.id), change.user_id)
        command = validate(successor(old, change), self._settings)
        mark = None
        if command.type is OrderType.TRAILING_STOP:  # it keeps following from the old mark
            assert old.high_water_mark is not None
            mark = old.high_water_mark
            command = trailing.with_stop(command, mark)
        hold = hold_for(command, None, None, self._settings.market_order_collar)
        if old.side is Side.BUY and hold.cash > available_cash + old.reserved_cash:
            raise InsufficientBuyingPower(
                f"the new order needs {hold.cash} of buying power; "
                f"{available_cash + old.reserved_cash} is free with the old order's hold",
                field="quantity",
            )
        if old.side is Side.SELL:
            free = await _lock_position(conn, old.account_id, old.symbol)
            if hold.shares > free + old.reserved_quantity:
                raise InsufficientShares(
                    f"the new order sells {trim_quantity(hold.shares)} shares of {old.symbol}; "
                    f"{trim_quantity(free + old.reserved_quantity)} are free with the old "
                    "order's hold",
                    field="quantity",
                )
        new_id = uuid.uuid4()
        request_id = current_request_id()
        ended = await _end_replaced(conn, old, new_id)
        (new,) = await insert_orders(
            conn,
            [
                {
                    "id": new_id,
                    "user_id": old.user_id,
                    "account_id": old.account_id,
                    "symbol": old.symbol,
                    "side": old.side.value,
                    "type": old.type.value,
                    "tif": command.time_in_force.value,
                    "quantity": hold.quantity,
                    "limit_price": command.limit_price,
                    "stop_price": command.stop_price,
                    "trail_price": command.trail_price,
                    "trail_percent": command.trail_percent,
                    "high_water_mark": mark,
                    "reserved_cash": hold.cash,
                    "reserved_quantity": hold.shares,
                    "key": change.idempotency_key,
                    "request_id": request_id,
                    "replaces": old.id,
                    # extended hours belong to LIMIT DAY orders: a replace to GTC drops them
                    "extended_hours": old.extended_hours
                    and command.time_in_force is TimeInForce.DAY,
                }
            ],
        )
        await _swap_holds(conn, old, new)
        await idempotency.attach_resource(
            conn,
            user_id=old.user_id,
            scope=SCOPE,
            key=change.idempotency_key,
            resource_id=str(new.id),
        )
        await _audit(conn, old, new, request_id)
        updates = [OrderUpdate(Event.REPLACED, ended), OrderUpdate(Event.ACCEPTED, new)]
        await order_events.write(conn, updates)
        return new, updates

    async def _announce(self, old: Order, new: Order, updates: list[OrderUpdate]) -> None:
        """After the commit: the events, and the matcher told to drop the old order and take
        the new (its sweep does both anyway should this be lost)."""
        try:
            stream = order_stream(partition_of(old.symbol, self._settings.quote_partitions))
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.xadd(stream, {"op": "cancel", "id": str(old.id)})
                message = {"op": "new", "id": str(new.id)}
                if new.request_id:
                    message["rid"] = new.request_id
                pipe.xadd(stream, message)  # type: ignore[arg-type]
                order_events.queue(pipe, updates)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            log.warning("could not tell the matcher about replace of %s: %s", old.id, exc)


async def _earlier(conn: AsyncConnection, resource_id: str | None) -> Order:
    if resource_id is None:  # the claim's transaction ended without an order: cannot happen
        raise NotFound("the order this idempotencyKey made is gone", field="idempotencyKey")
    order_id = UUID(resource_id)
    return (await orders_by_id(conn, [order_id]))[order_id]


async def _lock_account(conn: AsyncConnection, account_id: UUID) -> Decimal:
    """Lock the account (before the order, as every writer does); its free cash."""
    row = (
        await conn.execute(
            text("SELECT cash - reserved_cash AS free FROM accounts WHERE id = :a FOR UPDATE"),
            {"a": account_id},
        )
    ).one()
    return Decimal(row.free)


async def _lock_order(conn: AsyncConnection, order_id: UUID) -> Order | None:
    row = (
        await conn.execute(
            text(f"SELECT {ORDER_COLUMNS} FROM orders WHERE id = :id FOR UPDATE"), {"id": order_id}
        )
    ).first()
    return order_from_row(row) if row else None


async def _lock_position(conn: AsyncConnection, account_id: UUID, symbol: str) -> Decimal:
    row = (
        await conn.execute(
            text(
                "SELECT quantity - reserved_quantity AS free FROM positions "
                "WHERE account_id = :a AND symbol = :s FOR UPDATE"
            ),
            {"a": account_id, "s": symbol},
        )
    ).first()
    return Decimal(row.free) if row else ZERO


async def _end_replaced(conn: AsyncConnection, old: Order, new_id: UUID) -> Order:
    row = (
        await conn.execute(
            text(
                "UPDATE orders SET status = 'REPLACED', replaced_by = :new, reserved_cash = 0, "
                "reserved_quantity = 0, version = version + 1, updated_at = now() "
                "WHERE id = :id AND created_at = :created AND version = :version "
                f"RETURNING {ORDER_COLUMNS}"
            ),
            {"new": new_id, "id": old.id, "created": old.created_at, "version": old.version},
        )
    ).one()
    return order_from_row(row)


async def _swap_holds(conn: AsyncConnection, old: Order, new: Order) -> None:
    cash = new.reserved_cash - old.reserved_cash
    if cash:
        await conn.execute(
            text(
                "UPDATE accounts SET reserved_cash = reserved_cash + :d, updated_at = now() "
                "WHERE id = :a"
            ),
            {"d": cash, "a": old.account_id},
        )
    shares = new.reserved_quantity - old.reserved_quantity
    if shares:
        await conn.execute(
            text(
                "UPDATE positions SET reserved_quantity = reserved_quantity + :d, "
                "updated_at = now() WHERE account_id = :a AND symbol = :s"
            ),
            {"d": shares, "a": old.account_id, "s": old.symbol},
        )


async def _audit(conn: AsyncConnection, old: Order, new: Order, request_id: str | None) -> None:
    released = old.reserved_cash or old.reserved_quantity
    held = new.reserved_cash or new.reserved_quantity
    await conn.execute(
        text(
            "INSERT INTO audit_log (user_id, action, entity_type, entity_id, details, request_id) "
            "VALUES (:u, 'order.replaced', 'order', :old, CAST(:d_old AS jsonb), :r), "
            "(:u, 'order.accepted', 'order', :new, CAST(:d_new AS jsonb), :r)"
        ),
        {
            "u": old.user_id,
            "old": str(old.id),
            "new": str(new.id),
            "d_old": json.dumps({"replaced_by": str(new.id), "released": str(released)}),
            "d_new": json.dumps({"replaces": str(old.id), "hold": str(held)}),
            "r": request_id,
        },
    )


__all__ = ["OrderReplacement", "ReplaceOrder", "successor"]
