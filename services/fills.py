"""Applying executions, cancels and expiries to an order: one transaction each, all or nothing.

Locks are always taken in the same order everywhere (the account, then the order, then the
position), so placement, fills and cancels never deadlock one another. The order row is locked
and re-read, and its version must match what the caller decided on (optimistic locking): a fill
racing a cancel finds the order closed and applies nothing, so an order is never both fully
filled and cancelled. Each execution has a unique venue execution id: a replay after a crash
inserts nothing and moves nothing.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from decimal import Decimal
from uuid import UUID

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from services import ledger
from services.order_events import OrderUpdate
from services.order_model import (
    TERMINAL_STATUSES,
    Event,
    Execution,
    Order,
    Side,
    Status,
    can_transition,
)
from services.order_store import lock_order
from services.positions import PositionState, apply_buy, apply_sell, fill_value
from services.request_context import current_request_id

ZERO = Decimal(0)


@dataclass(frozen=True, slots=True)
class Fill:
    venue: str
    quantity: Decimal
    price: Decimal
    venue_execution_id: str


@dataclass(frozen=True, slots=True)
class Outcome:
    order: Order
    updates: list[OrderUpdate]


class StaleOrder(Exception):
    """The order changed (or closed) since the caller looked: nothing was applied."""


async def _lock_account(conn: AsyncConnection, account_id: UUID) -> None:
    await conn.execute(text("SELECT id FROM accounts WHERE id = :a FOR UPDATE"), {"a": account_id})


async def _lock_position(conn: AsyncConnection, account_id: UUID, symbol: str) -> PositionState:
    await conn.execute(
        text("INSERT INTO positions (account_id, symbol) VALUES (:a, :s) ON CONFLICT DO NOTHING"),
        {"a": account_id, "s": symbol},
    )
    row = (
        await conn.execute(
            text(
                "SELECT quantity, cost_basis, realized_pnl FROM positions "
                "WHERE account_id = :a AND symbol = :s FOR UPDATE"
            ),
            {"a": account_id, "s": symbol},
        )
    ).one()
    return PositionState(row.quantity, row.cost_basis, row.realized_pnl)


async def _audit(
    conn: AsyncConnection, order: Order, action: str, details: dict[str, object]
) -> None:
    await conn.execute(
        text(
            "INSERT INTO audit_log (user_id, action, entity_type, entity_id, details, request_id) "
            "VALUES (:u, :a, 'order', :o, CAST(:d AS jsonb), :r)"
        ),
        {
            "u": order.user_id,
            "a": action,
            "o": str(order.id),
            "d": json.dumps(details, default=str),
            "r": current_request_id(),
        },
    )


async def _locked(conn: AsyncConnection, order: Order, expected_version: int | None) -> Order:
    await _lock_account(conn, order.account_id)
    current = await lock_order(conn, order.id)
    if current is None or not current.is_open:
        raise StaleOrder(f"order {order.id} is no longer open")
    if expected_version is not None and current.version != expected_version:
        raise StaleOrder(f"order {order.id} changed (version {current.version})")
    return current


async def _insert_execution(conn: AsyncConnection, order: Order, fill: Fill) -> Execution | None:
    row = (
        await conn.execute(
            text(
                "INSERT INTO executions (order_id, user_id, symbol, side, quantity, price, venue, "
                "venue_execution_id) VALUES (:o, :u, :s, :side, :q, :p, :v, :x) "
                "ON CONFLICT (venue_execution_id) DO NOTHING RETURNING id, executed_at"
            ),
            {
                "o": order.id,
                "u": order.user_id,
                "s": order.symbol,
                "side": order.side.value,
                "q": fill.quantity,
                "p": fill.price,
                "v": fill.venue,
                "x": fill.venue_execution_id,
            },
        )
    ).first()
    if row is None:
        return None
    return Execution(
        row.id,
        order.id,
        fill.quantity,
        fill.price,
        fill.venue,
        fill.venue_execution_id,
        row.executed_at,
    )


def fill_cash(filled_value_before: Decimal, fill: Fill) -> Decimal:
    """The cash a fill moves: the change it makes to the order's running value rounded to the
    cent. Rounding the running total, not each fill, keeps an order's cash within its hold
    (a hold is rounded up from the same exact total), however many fills it takes."""
    after = filled_value_before + fill.quantity * fill.price
    return fill_value(after, Decimal(1)) - fill_value(filled_value_before, Decimal(1))


async def _move_money_and_shares(
    conn: AsyncConnection, order: Order, position: PositionState, fill: Fill, value: Decimal
) -> PositionState:
    """The fill's cash and shares through the ledger; returns the new position."""
    signed_cash = -value if order.side is Side.BUY else value
    signed_shares = fill.quantity if order.side is Side.BUY else -fill.quantity
    entries = [
        ledger.Entry(ledger.POSITION, order.symbol, signed_shares, order.account_id),
        ledger.Entry(ledger.VENUE, order.symbol, -signed_shares),
    ]
    if value:  # a fill worth less than half a cent moves shares and no cash
        entries += ledger.cash_transfer(order.account_id, signed_cash, ledger.VENUE)
    await ledger.post(
        conn,
        kind=f"fill.{order.side.value.lower()}",
        reference=fill.venue_execution_id,
        entries=entries,
    )
    if order.side is Side.BUY:
        return apply_buy(position, fill.quantity, value)
    return apply_sell(position, fill.quantity, value)


def _next_status(order: Order, close_remainder: bool) -> Status:
    done = order.remaining_quantity <= 0 or (
        order.notional is not None
        and order.side is Side.BUY
        and close_remainder
        and order.filled_quantity > 0
    )
    if done:
        return Status.FILLED
    if close_remainder:
        return Status.CANCELLED
    return Status.PARTIALLY_FILLED if order.filled_quantity > 0 else order.status


async def execute(
    conn: AsyncConnection,
    order: Order,
    fills: Sequence[Fill],
    *,
    close_remainder: bool = False,
    reason: str | None = None,
) -> Outcome:
    """Apply `fills` to `order` (as the caller last saw it) in the caller's transaction.

    `close_remainder` ends the order after these fills (IOC, FOK, a market order that found no
    more liquidity): what was not filled is cancelled and its hold released."""
    current = await _locked(conn, order, order.version)
    position = await _lock_position(conn, current.account_id, current.symbol)
    updates: list[OrderUpdate] = []
    executions: list[Execution] = []
    filled_qty, filled_value, consumed, cash_delta = ZERO, ZERO, ZERO, ZERO
    for fill in fills:
        execution = await _insert_execution(conn, current, fill)
        if execution is None:
            continue  # a replay of a fill already applied
        value = fill_cash(current.filled_value + filled_value, fill)
        position = await _move_money_and_shares(conn, current, position, fill, value)
        executions.append(execution)
        filled_qty += fill.quantity
        filled_value += fill.quantity * fill.price
        if current.side is Side.BUY:
            consumed += value
            cash_delta -= value
        else:
            cash_delta += value
    if not executions and not close_remainder:
        return Outcome(current, [])  # every fill was a replay: nothing moved, nothing to write
    # The router never pays past the limit, the collar or the amount, and cash follows the
    # order's rounded running total, so fills stay within the hold; the guard is belt and braces.
    consumed = min(consumed, current.reserved_cash)
    after = replace(
        current,
        filled_quantity=current.filled_quantity + filled_qty,
        filled_value=current.filled_value + filled_value,
        reserved_cash=current.reserved_cash - consumed,
        reserved_quantity=current.reserved_quantity
        - (filled_qty if current.side is Side.SELL else ZERO),
    )
    status = _next_status(after, close_remainder)
    if not can_transition(current.status, status):
        raise StaleOrder(f"order {current.id} cannot go from {current.status} to {status}")
    released_cash, released_shares = ZERO, ZERO
    if status in TERMINAL_STATUSES:
        released_cash, released_shares = after.reserved_cash, after.reserved_quantity
        after = replace(after, reserved_cash=ZERO, reserved_quantity=ZERO)
        if current.notional is not None and current.side is Side.BUY and after.filled_quantity:
            after = replace(after, quantity=after.filled_quantity)
    after = replace(
        after,
        status=status,
        version=current.version + 1,
        reject_reason=reason if status is Status.CANCELLED else current.reject_reason,
    )
    await conn.execute(
        text(
            "UPDATE accounts SET cash = cash + :cash, reserved_cash = reserved_cash - :held, "
            "updated_at = now() WHERE id = :a"
        ),
        {"cash": cash_delta, "held": consumed + released_cash, "a": current.account_id},
    )
    await conn.execute(
        text(
            "UPDATE positions SET quantity = :q, cost_basis = :c, realized_pnl = :r, "
            "reserved_quantity = reserved_quantity - :released, updated_at = now() "
            "WHERE account_id = :a AND symbol = :s"
        ),
        {
            "q": position.quantity,
            "c": position.cost_basis,
            "r": position.realized_pnl,
            "released": (filled_qty if current.side is Side.SELL else ZERO) + released_shares,
            "a": current.account_id,
            "s": current.symbol,
        },
    )
    stored = await _store(conn, current, after)
    for execution in executions:
        event = Event.FILL if stored.status is Status.FILLED else Event.PARTIAL_FILL
        updates.append(OrderUpdate(event, stored, execution))
        await _audit(
            conn,
            stored,
            "order.filled",
            {
                "quantity": execution.quantity,
                "price": execution.price,
                "venue": execution.venue,
                "venue_execution_id": execution.venue_execution_id,
            },
        )
    if stored.status is Status.CANCELLED:
        updates.append(OrderUpdate(Event.CANCELLED, stored))
        await _audit(
            conn,
            stored,
            "order.cancelled",
            {"reason": reason, "released_cash": released_cash, "released_shares": released_shares},
        )
    return Outcome(stored, updates)


async def _store(conn: AsyncConnection, before: Order, after: Order) -> Order:
    row = (
        await conn.execute(
            text(
                "UPDATE orders SET status = :status, quantity = :quantity, "
                "filled_quantity = :fq, filled_value = :fv, reserved_cash = :rc, "
                "reserved_quantity = :rq, triggered = :triggered, version = :new_version, "
                "reject_reason = :reason, updated_at = now(), "
                "filled_at = CASE WHEN :status = 'FILLED' THEN now() ELSE filled_at END "
                "WHERE id = :id AND created_at = :created AND version = :version "
                "RETURNING updated_at, filled_at"
            ),
            {
                "status": after.status.value,
                "quantity": after.quantity,
                "fq": after.filled_quantity,
                "fv": after.filled_value,
                "rc": after.reserved_cash,
                "rq": after.reserved_quantity,
                "triggered": after.triggered,
                "new_version": after.version,
                "reason": after.reject_reason,
                "id": before.id,
                "created": before.created_at,
                "version": before.version,
            },
        )
    ).first()
    if row is None:
        raise StaleOrder(f"order {before.id} changed under us")
    return replace(after, updated_at=row.updated_at, filled_at=row.filled_at)


async def close(
    conn: AsyncConnection,
    order: Order,
    status: Status,
    *,
    reason: str | None = None,
    expected_version: int | None = None,
) -> Outcome:
    """Cancel, expire or reject an open order: release what it holds, in this transaction."""
    current = await _locked(conn, order, expected_version)
    if not can_transition(current.status, status):
        raise StaleOrder(f"order {current.id} cannot go from {current.status} to {status}")
    await conn.execute(
        text(
            "UPDATE accounts SET reserved_cash = reserved_cash - :c, updated_at = now() WHERE id = :a"
        ),
        {"c": current.reserved_cash, "a": current.account_id},
    )
    if current.reserved_quantity:
        await conn.execute(
            text(
                "UPDATE positions SET reserved_quantity = reserved_quantity - :q, updated_at = now() "
                "WHERE account_id = :a AND symbol = :s"
            ),
            {"q": current.reserved_quantity, "a": current.account_id, "s": current.symbol},
        )
    after = replace(
        current,
        status=status,
        reserved_cash=ZERO,
        reserved_quantity=ZERO,
        version=current.version + 1,
        reject_reason=reason or current.reject_reason,
    )
    stored = await _store(conn, current, after)
    event = {
        Status.CANCELLED: Event.CANCELLED,
        Status.EXPIRED: Event.EXPIRED,
        Status.REJECTED: Event.REJECTED,
    }[status]
    await _audit(
        conn,
        stored,
        f"order.{status.value.lower()}",
        {
            "reason": reason,
            "released_cash": current.reserved_cash,
            "released_shares": current.reserved_quantity,
        },
    )
    return Outcome(stored, [OrderUpdate(event, stored)])


async def mark(
    conn: AsyncConnection,
    order: Order,
    *,
    status: Status | None = None,
    triggered: bool | None = None,
) -> Outcome:
    """A change with no money: PENDING -> SUBMITTED when an order starts resting, or a stop
    that triggered."""
    current = await _locked(conn, order, None)
    after = replace(
        current,
        status=status or current.status,
        triggered=current.triggered if triggered is None else triggered,
        version=current.version + 1,
    )
    if not can_transition(current.status, after.status):
        raise StaleOrder(f"order {current.id} cannot go from {current.status} to {after.status}")
    stored = await _store(conn, current, after)
    await _audit(
        conn,
        stored,
        "order.updated",
        {"status": stored.status.value, "triggered": stored.triggered},
    )
    return Outcome(stored, [])
