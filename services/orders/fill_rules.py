"""What a change to an order does, as values (pure, no I/O): fills, closes and marks become the
order after the change, the balance deltas, the ledger postings, the audit rows and the events.

The unit of work (`services/orders/fills.py`) locks what these functions read, asks them in
arrival order (each one sees the position the previous left) and writes what they return for a
whole group of orders at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any

from services.accounts import ledger
from services.orders.order_model import (
    TERMINAL_STATUSES,
    Event,
    Execution,
    Order,
    Side,
    Status,
    can_transition,
)
from services.portfolio.positions import PositionState, apply_buy, apply_sell, fill_value

ZERO = Decimal(0)

Audit = tuple[str, dict[str, Any]]  # action, details


@dataclass(frozen=True, slots=True)
class Fill:
    venue: str
    quantity: Decimal
    price: Decimal
    venue_execution_id: str


@dataclass(frozen=True, slots=True)
class Execute:
    """Apply `fills`; `close_remainder` ends the order after them (IOC, FOK, a market order that
    found no more liquidity): what was not filled is cancelled and its hold released."""

    fills: Sequence[Fill]
    close_remainder: bool = False
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class Close:
    """Cancel, expire or reject an open order, releasing what it holds."""

    status: Status
    reason: str | None = None
    expected_version: int | None = None


@dataclass(frozen=True, slots=True)
class Mark:
    """A change with no money: PENDING -> SUBMITTED, or a stop that triggered (a trailing stop
    with the mark and stop it triggered at); `event` is what subscribers are told, if anything."""

    status: Status | None = None
    triggered: bool | None = None
    event: Event | None = None
    high_water_mark: Decimal | None = None
    stop_price: Decimal | None = None


Action = Execute | Close | Mark


class StaleOrder(Exception):
    """The order changed (or closed) since the caller looked: nothing was applied."""


@dataclass(frozen=True, slots=True)
class Change:
    """One order's change, ready to write: everything in it is applied together or not at all."""

    before: Order
    after: Order
    cash: Decimal = ZERO  # added to the account's cash (negative for a buy)
    released_cash: Decimal = ZERO  # taken off the account's reserved cash
    position: PositionState | None = None  # the position after the change, if it moved
    released_shares: Decimal = ZERO  # taken off the position's reserved quantity
    postings: list[ledger.Posting] = field(default_factory=list)
    audits: list[Audit] = field(default_factory=list)
    events: list[tuple[Event, Execution | None]] = field(default_factory=list)
    moved: bool = True  # False: every fill was a replay, nothing to write


def check_current(current: Order | None, order: Order, action: Action) -> Order:
    """The locked order, if the caller's decision still applies to it; else StaleOrder."""
    if current is None or not current.is_open:
        raise StaleOrder(f"order {order.id} is no longer open")
    expected = (
        order.version
        if isinstance(action, Execute)
        else action.expected_version
        if isinstance(action, Close)
        else None
    )
    if expected is not None and current.version != expected:
        raise StaleOrder(f"order {order.id} changed (version {current.version})")
    return current


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


def _checked(current: Order, status: Status) -> None:
    if not can_transition(current.status, status):
        raise StaleOrder(f"order {current.id} cannot go from {current.status} to {status}")


def execute(
    current: Order, position: PositionState, new: Sequence[Execution], action: Execute
) -> Change:
    """Apply the executions `new` (those of `action.fills` not applied before, in order) to
    `current`, whose position is `position`."""
    postings: list[ledger.Posting] = []
    filled_qty, filled_value, consumed, cash_delta = ZERO, ZERO, ZERO, ZERO
    for execution in new:
        fill = Fill(
            execution.venue, execution.quantity, execution.price, execution.venue_execution_id
        )
        value = fill_cash(current.filled_value + filled_value, fill)
        posting, position = _money_and_shares(current, position, fill, value)
        postings.append(posting)
        filled_qty += fill.quantity
        filled_value += fill.quantity * fill.price
        if current.side is Side.BUY:
            consumed += value
            cash_delta -= value
        else:
            cash_delta += value
    if not new and not action.close_remainder:
        return Change(current, current, moved=False)  # every fill a replay: nothing moved
    # The router never pays past the limit, the collar or the amount, and cash follows the
    # order's rounded running total, so fills stay within the hold; the guard is belt and braces.
    consumed = min(consumed, current.reserved_cash)
    # The shares a sell's fills take off its hold. A stop-loss leg sells shares its
    # take-profit sibling holds (a pair holds once): its own hold is nothing, and the sibling,
    # reduced or cancelled in the same transaction, releases them (services/orders/order_classes.py).
    sold = min(filled_qty, current.reserved_quantity) if current.side is Side.SELL else ZERO
    after = replace(
        current,
        filled_quantity=current.filled_quantity + filled_qty,
        filled_value=current.filled_value + filled_value,
        reserved_cash=current.reserved_cash - consumed,
        reserved_quantity=current.reserved_quantity - sold,
    )
    status = _next_status(after, action.close_remainder)
    _checked(current, status)
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
        reject_reason=action.reason if status is Status.CANCELLED else current.reject_reason,
    )
    audits: list[Audit] = [
        (
            "order.filled",
            {
                "quantity": e.quantity,
                "price": e.price,
                "venue": e.venue,
                "venue_execution_id": e.venue_execution_id,
            },
        )
        for e in new
    ]
    fill_event = Event.FILL if status is Status.FILLED else Event.PARTIAL_FILL
    events: list[tuple[Event, Execution | None]] = [(fill_event, e) for e in new]
    if status is Status.CANCELLED:
        audits.append(
            (
                "order.cancelled",
                {
                    "reason": action.reason,
                    "released_cash": released_cash,
                    "released_shares": released_shares,
                },
            )
        )
        events.append((Event.CANCELLED, None))
    return Change(
        before=current,
        after=after,
        cash=cash_delta,
        released_cash=consumed + released_cash,
        position=position if new else None,
        released_shares=sold + released_shares,
        postings=postings,
        audits=audits,
        events=events,
    )


_CLOSE_EVENTS = {
    Status.CANCELLED: Event.CANCELLED,
    Status.EXPIRED: Event.EXPIRED,
    Status.REJECTED: Event.REJECTED,
}


def close(current: Order, action: Close) -> Change:
    """Close an open order and release what it holds."""
    _checked(current, action.status)
    after = replace(
        current,
        status=action.status,
        reserved_cash=ZERO,
        reserved_quantity=ZERO,
        version=current.version + 1,
        reject_reason=action.reason or current.reject_reason,
    )
    details: dict[str, Any] = {
        "reason": action.reason,
        "released_cash": current.reserved_cash,
        "released_shares": current.reserved_quantity,
    }
    return Change(
        before=current,
        after=after,
        released_cash=current.reserved_cash,
        released_shares=current.reserved_quantity,
        audits=[(f"order.{action.status.value.lower()}", details)],
        events=[(_CLOSE_EVENTS[action.status], None)],
    )


def mark(current: Order, action: Mark) -> Change:
    """A change of status or of the triggered flag, with no money."""
    after = replace(
        current,
        status=action.status or current.status,
        triggered=current.triggered if action.triggered is None else action.triggered,
        high_water_mark=action.high_water_mark or current.high_water_mark,
        stop_price=action.stop_price or current.stop_price,
        version=current.version + 1,
    )
    _checked(current, after.status)
    details: dict[str, Any] = {"status": after.status.value, "triggered": after.triggered}
    if action.high_water_mark is not None:
        details |= {"high_water_mark": after.high_water_mark, "stop_price": after.stop_price}
    return Change(
        before=current,
        after=after,
        audits=[("order.updated", details)],
        events=[(action.event, None)] if action.event is not None else [],
    )
