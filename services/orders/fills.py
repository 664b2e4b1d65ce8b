"""Applying executions, cancels and expiries to an order: one transaction each, all or nothing.

Locks are always taken in the same order everywhere (the account, then the order, then the
position), so placement, fills and cancels never deadlock one another. The order row is locked
and re-read, and its version must match what the caller decided on (optimistic locking): a fill
racing a cancel finds the order closed and applies nothing, so an order is never both fully
filled and cancelled. Each execution has a unique venue execution id: a replay after a crash
inserts nothing and moves nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any
from uuid import UUID

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from services.accounts import ledger
from services.infra import audit
from services.orders.order_events import OrderUpdate
from services.orders.order_model import (
    TERMINAL_STATUSES,
    Event,
    Execution,
    Order,
    Side,
    Status,
    can_transition,
)
from services.orders.order_store import lock_account_and_order
from services.portfolio.positions import PositionState, apply_buy, apply_sell, fill_value

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


_SELECT_POSITION = text(
    "SELECT quantity, cost_basis, realized_pnl FROM positions "
    "WHERE account_id = :a AND symbol = :s FOR UPDATE"
)


async def _lock_position(conn: AsyncConnection, account_id: UUID, symbol: str) -> PositionState:
    """The position, locked; created first if the account never held the symbol."""
    params = {"a": account_id, "s": symbol}
    row = (await conn.execute(_SELECT_POSITION, params)).first()
    if row is None:
        await conn.execute(
            text(
                "INSERT INTO positions (account_id, symbol) VALUES (:a, :s) ON CONFLICT DO NOTHING"
            ),
            params,
        )
        row = (await conn.execute(_SELECT_POSITION, params)).one()
    return PositionState(row.quantity, row.cost_basis, row.realized_pnl)


async def _locked(conn: AsyncConnection, order: Order, expected_version: int | None) -> Order:
    current = await lock_account_and_order(conn, order.account_id, order.id)
    if current is None or not current.is_open:
        raise StaleOrder(f"order {order.id} is no longer open")
    if expected_version is not None and current.version != expected_version:
        raise StaleOrder(f"order {order.id} changed (version {current.version})")
    return current


_INSERT_EXECUTIONS = text(
    """
    INSERT INTO executions (order_id, user_id, symbol, side, quantity, price, venue,
                            venue_execution_id)
    SELECT CAST(:o AS uuid), CAST(:u AS uuid), CAST(:s AS text), CAST(:side AS text),
           f.quantity, f.price, f.venue, f.venue_execution_id
      FROM unnest(CAST(:quantities AS numeric[]), CAST(:prices AS numeric[]),
                  CAST(:venues AS text[]), CAST(:ids AS text[])) WITH ORDINALITY
           AS f(quantity, price, venue, venue_execution_id, ord)
     ORDER BY f.ord
    ON CONFLICT (venue_execution_id) DO NOTHING
    RETURNING id, executed_at, venue_execution_id
    """
)


async def _insert_executions(
    conn: AsyncConnection, order: Order, fills: Sequence[Fill]
) -> dict[str, Execution]:
    """The executions of `fills` that are new, by venue execution id (a replay inserts none)."""
    if not fills:
        return {}
    rows = await conn.execute(
        _INSERT_EXECUTIONS,
        {
            "o": order.id,
            "u": order.user_id,
            "s": order.symbol,
            "side": order.side.value,
            "quantities": [f.quantity for f in fills],
            "prices": [f.price for f in fills],
            "venues": [f.venue for f in fills],
            "ids": [f.venue_execution_id for f in fills],
        },
    )
    by_id: dict[str, Fill] = {}
    for f in fills:  # the first fill of an id is the one inserted; a repeat is a replay
        by_id.setdefault(f.venue_execution_id, f)
    executions = {}
    for row in rows:
        fill = by_id[row.venue_execution_id]
        executions[row.venue_execution_id] = Execution(
            row.id,
            order.id,
            fill.quantity,
            fill.price,
            fill.venue,
            fill.venue_execution_id,
            row.executed_at,
        )
    return executions


def fill_cash(filled_value_before: Decimal, fill: Fill) -> Decimal:
    """The cash a fill moves: the change it makes to the order's running value rounded to the
    cent. Rounding the running total, not each fill, keeps an order's cash within its hold
    (a hold is rounded up from the same exact total), however many fills it takes."""
    after = filled_value_before + fill.quantity * fill.price
    return fill_value(after, Decimal(1)) - fill_value(filled_value_before, Decimal(1))


def _money_and_shares(
    order: Order, position: PositionState, fill: Fill, value: Decimal
) -> tuple[ledger.Posting, PositionState]:
    """The fill's cash and shares as a ledger posting, and the position after it."""
    signed_cash = -value if order.side is Side.BUY else value
    signed_shares = fill.quantity if order.side is Side.BUY else -fill.quantity
    entries = [
        ledger.Entry(ledger.POSITION, order.symbol, signed_shares, order.account_id),
        ledger.Entry(ledger.VENUE, order.symbol, -signed_shares),
    ]
    if value:  # a fill worth less than half a cent moves shares and no cash
        entries += ledger.cash_transfer(order.account_id, signed_cash, ledger.VENUE)
    posting = ledger.Posting(f"fill.{order.side.value.lower()}", fill.venue_execution_id, entries)
    if order.side is Side.BUY:
        return posting, apply_buy(position, fill.quantity, value)
    return posting, apply_sell(position, fill.quantity, value)


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
    inserted = await _insert_executions(conn, current, fills)
    updates: list[OrderUpdate] = []
    executions: list[Execution] = []
    postings: list[ledger.Posting] = []
    filled_qty, filled_value, consumed, cash_delta = ZERO, ZERO, ZERO, ZERO
    for fill in fills:
        execution = inserted.pop(fill.venue_execution_id, None)
        if execution is None:
            continue  # a replay of a fill already applied (or repeated in this batch)
        value = fill_cash(current.filled_value + filled_value, fill)
        posting, position = _money_and_shares(current, position, fill, value)
        postings.append(posting)
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
    audits: list[_Audit] = [
        (
            "order.filled",
            {
                "quantity": execution.quantity,
                "price": execution.price,
                "venue": execution.venue,
                "venue_execution_id": execution.venue_execution_id,
            },
        )
        for execution in executions
    ]
    if status is Status.CANCELLED:
        audits.append(
            (
                "order.cancelled",
                {
                    "reason": reason,
                    "released_cash": released_cash,
                    "released_shares": released_shares,
                },
            )
        )
    await ledger.post_many(conn, postings)
    change = _BalanceChange(
        cash=cash_delta,
        released_cash=consumed + released_cash,
        position=position,
        released_shares=(filled_qty if current.side is Side.SELL else ZERO) + released_shares,
    )
    stored = await _store(conn, current, after, change, audits)
    for execution in executions:
        event = Event.FILL if stored.status is Status.FILLED else Event.PARTIAL_FILL
        updates.append(OrderUpdate(event, stored, execution))
    if stored.status is Status.CANCELLED:
        updates.append(OrderUpdate(Event.CANCELLED, stored))
    return Outcome(stored, updates)


_Audit = tuple[str, dict[str, Any]]  # action, details


@dataclass(frozen=True, slots=True)
class _BalanceChange:
    """What an order's change does to its account and position."""

    cash: Decimal = ZERO  # added to the account's cash (negative for a buy)
    released_cash: Decimal = ZERO  # taken off the account's reserved cash
    position: PositionState | None = None  # the position after the change, if it moved
    released_shares: Decimal = ZERO  # taken off the position's reserved quantity

    @property
    def touches_account(self) -> bool:
        return bool(self.cash or self.released_cash)

    @property
    def touches_position(self) -> bool:
        return self.position is not None or bool(self.released_shares)


# The order, its account, its position and its audit rows in one round trip. The order row is
# already locked and its version checked; if the version still did not match, the caller's
# transaction is rolled back with everything else in it (StaleOrder).
_STORE = text(
    """
    WITH account AS (
        UPDATE accounts SET cash = cash + :cash, reserved_cash = reserved_cash - :released_cash,
               updated_at = now()
         WHERE id = :account AND CAST(:touch_account AS boolean)
    ), position AS (
        UPDATE positions SET quantity = coalesce(CAST(:pq AS numeric), quantity),
               cost_basis = coalesce(CAST(:pc AS numeric), cost_basis),
               realized_pnl = coalesce(CAST(:pr AS numeric), realized_pnl),
               reserved_quantity = reserved_quantity - :released_shares, updated_at = now()
         WHERE account_id = :account AND symbol = :symbol AND CAST(:touch_position AS boolean)
    ), audited AS ("""
    + audit.INSERT_ROWS
    + """)
    UPDATE orders SET status = :status, quantity = :quantity,
           filled_quantity = :fq, filled_value = :fv, reserved_cash = :rc,
           reserved_quantity = :rq, triggered = :triggered, version = :new_version,
           reject_reason = :reason, updated_at = now(),
           filled_at = CASE WHEN :status = 'FILLED' THEN now() ELSE filled_at END
     WHERE id = :id AND created_at = :created AND version = :version
    RETURNING updated_at, filled_at
    """
)


async def _store(
    conn: AsyncConnection,
    before: Order,
    after: Order,
    change: _BalanceChange = _BalanceChange(),
    audits: Sequence[_Audit] = (),
) -> Order:
    position = change.position
    row = (
        await conn.execute(
            _STORE,
            {
                "account": before.account_id,
                "symbol": before.symbol,
                "cash": change.cash,
                "released_cash": change.released_cash,
                "touch_account": change.touches_account,
                "pq": position.quantity if position else None,
                "pc": position.cost_basis if position else None,
                "pr": position.realized_pnl if position else None,
                "released_shares": change.released_shares,
                "touch_position": change.touches_position,
                **audit.rows_params(
                    user_id=before.user_id,
                    entity_type="order",
                    entity_id=str(before.id),
                    rows=audits,
                ),
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
    after = replace(
        current,
        status=status,
        reserved_cash=ZERO,
        reserved_quantity=ZERO,
        version=current.version + 1,
        reject_reason=reason or current.reject_reason,
    )
    change = _BalanceChange(
        released_cash=current.reserved_cash, released_shares=current.reserved_quantity
    )
    details: dict[str, Any] = {
        "reason": reason,
        "released_cash": current.reserved_cash,
        "released_shares": current.reserved_quantity,
    }
    stored = await _store(
        conn, current, after, change, [(f"order.{status.value.lower()}", details)]
    )
    event = {
        Status.CANCELLED: Event.CANCELLED,
        Status.EXPIRED: Event.EXPIRED,
        Status.REJECTED: Event.REJECTED,
    }[status]
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
    details: dict[str, Any] = {"status": after.status.value, "triggered": after.triggered}
    stored = await _store(conn, current, after, audits=[("order.updated", details)])
    return Outcome(stored, [])
