"""Order classes (BRACKET, OTO, OCO): the exits (legs) of an entry, and what one exit's change
does to its sibling. Called by the fills' unit of work inside its transaction, so a leg's fill
and its sibling's reduction, or an entry's end and its legs, commit together.

- A BRACKET or OTO entry (a buy) that ends (FILLED, or CANCELLED or EXPIRED after a partial
  fill) gets its legs, for the filled quantity (at most the shares free then), with its time in
  force: a take-profit sell LIMIT and/or a stop-loss sell STOP (STOP_LIMIT with its limit).
- An OCO is placed as its take-profit (the parent) with its stop-loss leg.
- A pair holds its shares once: on the take-profit (the first leg), the stop-loss holding none.
  When one exit fills, its sibling is reduced to what the filler has left (releasing what it
  held beyond that), or cancelled once the filler is done; when one is cancelled (or expires),
  so is its sibling.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any
from uuid import UUID

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from services.orders import fill_rules
from services.orders.fill_rules import Change, Close, StaleOrder
from services.orders.order_model import (
    TERMINAL_STATUSES,
    Event,
    Order,
    OrderClass,
    OrderType,
    Side,
    Status,
)
from services.orders.order_store import insert_orders
from services.portfolio.positions import PositionState

ZERO = Decimal(0)
TAKE_PROFIT, STOP_LOSS = "take-profit", "stop-loss"


def exit_rows(
    parent: Order | dict[str, Any], quantity: Decimal, *, with_take_profit: bool
) -> list[dict[str, Any]]:
    """The rows of a parent's exit legs (order_store.insert_orders' columns) for `quantity`
    shares: the take-profit (when `with_take_profit`: a BRACKET's or OTO's, not an OCO's, whose
    take-profit is the parent itself) holding them, then the stop-loss holding none."""
    p = _as_dict(parent)
    common = {
        "user_id": p["user_id"],
        "account_id": p["account_id"],
        "symbol": p["symbol"],
        "side": Side.SELL.value,
        "tif": p["tif"],
        "quantity": quantity,
        "request_id": p["request_id"],
        "order_class": p["order_class"],
        "parent_id": p["id"],
        "reserved_cash": Decimal("0.00"),
        "extended_hours": False,
    }
    rows = []
    holds = quantity if with_take_profit else ZERO  # an OCO's parent holds for the pair
    if with_take_profit and p["take_profit_limit"] is not None:
        rows.append(
            common
            | {
                "id": uuid.uuid4(),
                "type": OrderType.LIMIT.value,
                "limit_price": p["take_profit_limit"],
                "reserved_quantity": holds,
                "key": f"{p['key']}:{TAKE_PROFIT}",
            }
        )
        holds = ZERO
    if p["stop_loss_stop"] is not None:
        limit = p["stop_loss_limit"]
        rows.append(
            common
            | {
                "id": uuid.uuid4(),
                "type": (OrderType.STOP_LIMIT if limit is not None else OrderType.STOP).value,
                "stop_price": p["stop_loss_stop"],
                "limit_price": limit,
                "reserved_quantity": holds,
                "key": f"{p['key']}:{STOP_LOSS}",
            }
        )
    return rows


def _as_dict(parent: Order | dict[str, Any]) -> dict[str, Any]:
    if isinstance(parent, dict):
        return parent
    return {
        "id": parent.id,
        "user_id": parent.user_id,
        "account_id": parent.account_id,
        "symbol": parent.symbol,
        "tif": parent.time_in_force.value,
        "request_id": parent.request_id,
        "order_class": parent.order_class.value,
        "take_profit_limit": parent.take_profit_limit,
        "stop_loss_stop": parent.stop_loss_stop,
        "stop_loss_limit": parent.stop_loss_limit,
        "key": parent.idempotency_key,
    }


async def insert_legs(conn: AsyncConnection, rows: list[dict[str, Any]]) -> list[Order]:
    """The legs, with their audit rows, in the caller's transaction (their ACCEPTED events are
    the caller's to write, with its other events)."""
    if not rows:
        return []
    legs = await insert_orders(conn, rows)
    await conn.execute(
        text(
            "INSERT INTO audit_log (user_id, action, entity_type, entity_id, details, request_id) "
            "SELECT u, 'order.accepted', 'order', o, CAST(d AS jsonb), r "
            "FROM unnest(CAST(:users AS uuid[]), CAST(:orders AS text[]), "
            "CAST(:details AS text[]), CAST(:rids AS text[])) AS x(u, o, d, r)"
        ),
        {
            "users": [leg.user_id for leg in legs],
            "orders": [str(leg.id) for leg in legs],
            "details": [
                json.dumps({"hold": str(leg.reserved_quantity), "parent": str(leg.parent_id)})
                for leg in legs
            ],
            "rids": [leg.request_id for leg in legs],
        },
    )
    return legs


# -- within the fills' unit of work -----------------------------------------------------------


def partners_to_lock(orders: Sequence[Order]) -> list[UUID]:
    """The ids whose orders (and whose legs) the unit of work locks with `orders`: an exit's
    parent, and the exit itself (an OCO parent's leg has it as parent)."""
    ids: set[UUID] = set()
    for order in orders:
        if order.is_exit:
            ids.add(order.id)
            if order.parent_id is not None:
                ids.add(order.parent_id)
    return sorted(ids)


def siblings(order: Order, locked: dict[UUID, Order]) -> list[Order]:
    """The other exits of `order`'s pair, as locked."""
    if not order.is_exit:
        return []
    group = order.parent_id or order.id
    return [
        o
        for o in locked.values()
        if o.id != order.id and (o.parent_id == group or (o.id == group and o.is_exit))
    ]


def sibling_change(sibling: Order, before: Order, after: Order) -> Change | None:
    """What `before` -> `after` of an exit does to its open `sibling`: once the exit has
    ended, the sibling is closed as it was (EXPIRED with an expiry, else CANCELLED); after a
    fill that leaves it open, the sibling is reduced to what it has left."""
    if not sibling.is_open:
        return None
    if after.status in TERMINAL_STATUSES:
        status = Status.EXPIRED if after.status is Status.EXPIRED else Status.CANCELLED
        why = {
            Status.FILLED: "filled",
            Status.EXPIRED: "expired",
        }.get(after.status, "was cancelled")
        return fill_rules.close(sibling, Close(status, f"its sibling {after.id} {why}"))
    left = after.remaining_quantity
    if after.filled_quantity == before.filled_quantity or sibling.remaining_quantity <= left:
        return None
    held = min(sibling.reserved_quantity, left)
    reduced = replace(
        sibling,
        quantity=sibling.filled_quantity + left,
        reserved_quantity=held,
        version=sibling.version + 1,
    )
    return Change(
        before=sibling,
        after=reduced,
        released_shares=sibling.reserved_quantity - held,
        audits=[
            (
                "order.reduced",
                {
                    "quantity": reduced.quantity,
                    "sibling": str(after.id),
                    "released_shares": sibling.reserved_quantity - held,
                },
            )
        ],
        # its owner's screens hear the new quantity (recorded as UPDATED: order_events.kind_of)
        events=[(Event.ACCEPTED, None)],
    )


def _ended_entry(before: Order, after: Order) -> bool:
    return (
        after.is_entry
        and before.is_open
        and after.status in TERMINAL_STATUSES
        and after.filled_quantity > 0
    )


@dataclass
class FollowUps:
    """What a group's changes do beyond their own orders, by the index of the work behind it."""

    changes: list[tuple[int, Change]] = field(default_factory=list)  # siblings moved
    legs: dict[int, list[Order]] = field(default_factory=dict)  # legs made
    entries: dict[int, Change] = field(default_factory=dict)  # entries, now holding their legs


async def follow_ups(
    conn: AsyncConnection,
    changes: Sequence[tuple[int, Change]],
    locked: dict[UUID, Order],
    positions: dict[tuple[UUID, str], PositionState],
) -> FollowUps:
    """The siblings' changes and the legs of ended entries, in the caller's transaction. Two
    changes of one pair in a group (rare: both exits crossed at once) raise StaleOrder, and the
    group is applied again one change at a time."""
    out = FollowUps()
    changed = {c.after.id: c.after for _, c in changes if c.moved}
    for index, change in changes:
        if not change.moved or not change.after.is_exit:
            continue
        for sibling in siblings(change.after, locked):
            current = changed.get(sibling.id, sibling)
            follow = sibling_change(current, change.before, change.after)
            if follow is None:
                continue
            if sibling.id in changed:
                raise StaleOrder(f"orders {change.after.id} and {sibling.id} changed together")
            changed[sibling.id] = follow.after
            out.changes.append((index, follow))
    ended = [(i, c) for i, c in changes if c.moved and _ended_entry(c.before, c.after)]
    if ended:
        await _make_legs(conn, ended, changes, positions, out)
    return out


async def _make_legs(
    conn: AsyncConnection,
    ended: list[tuple[int, Change]],
    changes: Sequence[tuple[int, Change]],
    positions: dict[tuple[UUID, str], PositionState],
    out: FollowUps,
) -> None:
    """Legs for each ended entry, for its filled shares that are still free (a sell placed
    meanwhile may hold some), held by the entry's change (so the position's hold moves in the
    group's one statement)."""
    free = await _free_shares(conn, ended, changes, positions)
    rows: list[dict[str, Any]] = []
    owners: list[int] = []
    for index, change in ended:
        entry = change.after
        key = (entry.account_id, entry.symbol)
        quantity = min(entry.filled_quantity, free.get(key, ZERO))
        if quantity <= 0:
            continue
        free[key] = free.get(key, ZERO) - quantity
        made = exit_rows(entry, quantity, with_take_profit=True)
        rows += made
        owners += [index] * len(made)
        out.entries[index] = replace(
            change,
            released_shares=change.released_shares - quantity,
            audits=[*change.audits, ("order.legs", {"quantity": quantity})],
        )
    for index, leg in zip(owners, await insert_legs(conn, rows), strict=True):
        out.legs.setdefault(index, []).append(leg)


async def _free_shares(
    conn: AsyncConnection,
    ended: list[tuple[int, Change]],
    changes: Sequence[tuple[int, Change]],
    positions: dict[tuple[UUID, str], PositionState],
) -> dict[tuple[UUID, str], Decimal]:
    """Each ended entry's position's free shares once the group's changes are applied: its
    quantity after them less its hold after them. The rows are locked (after the orders, as
    every writer locks them)."""
    keys = sorted({(c.after.account_id, c.after.symbol) for _, c in ended})
    rows = await conn.execute(
        text(
            "SELECT p.account_id, p.symbol, p.quantity, p.reserved_quantity FROM positions p "
            "JOIN unnest(CAST(:a AS uuid[]), CAST(:s AS text[])) AS d(a, s) "
            "ON p.account_id = d.a AND p.symbol = d.s ORDER BY p.account_id, p.symbol FOR UPDATE"
        ),
        {"a": [a for a, _ in keys], "s": [s for _, s in keys]},
    )
    free: dict[tuple[UUID, str], Decimal] = {}
    for r in rows:
        key = (r.account_id, r.symbol)
        quantity = positions[key].quantity if key in positions else r.quantity
        released = sum(
            (
                c.released_shares
                for _, c in changes
                if (c.after.account_id, c.after.symbol) == key and c.moved
            ),
            ZERO,
        )
        free[key] = quantity - (r.reserved_quantity - released)
    return free


def is_class_order(order: Order) -> bool:
    return order.order_class is not OrderClass.SIMPLE
