"""The unit of work for changes to orders: executions, cancels, expiries and marks, any number of
orders in one transaction, a fixed number of round trips whatever their number.

In the caller's transaction: the accounts are locked (in id order), then the orders (in id
order), then the positions (in account, symbol order): the order every writer locks them in, so
placement, fills and cancels never deadlock one another. Each order's change is judged by
`fill_rules` in arrival order against the locked rows as the earlier changes left them; an order
that changed since its caller looked (a cancel won the race) is stale and nothing of it is
written, without failing its neighbours. Then every execution, ledger posting, order, account,
position and audit row of the group is written with set-based statements. Each execution has a
unique venue execution id: a replay after a crash inserts nothing and moves nothing.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from decimal import Decimal
from uuid import UUID

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from services.accounts import ledger
from services.infra.redis import RedisClient
from services.infra.request_context import current_request_id
from services.orders import fill_rules, order_classes, order_events
from services.orders.fill_rules import (
    Action,
    Change,
    Close,
    Execute,
    Fill,
    Mark,
    StaleOrder,
    fill_cash,
)
from services.orders.order_events import OrderUpdate
from services.orders.order_model import Event, Execution, Order, Status
from services.orders.order_store import ORDER_COLUMNS, order_from_row, queue_matcher_messages
from services.portfolio.positions import PositionState

__all__ = [
    "Close",
    "Execute",
    "Fill",
    "Mark",
    "Outcome",
    "StaleOrder",
    "Work",
    "apply",
    "close",
    "execute",
    "fill_cash",
    "mark",
]

ZERO = Decimal(0)


@dataclass(frozen=True, slots=True)
class Work:
    """A caller's decision about an order as it last saw it, and the request that led to it."""

    order: Order
    action: Action
    request_id: str | None = None


@dataclass(frozen=True, slots=True)
class Outcome:
    order: Order
    updates: list[OrderUpdate]  # the order's, and its linked orders'
    # Orders the change moved beside its own (order classes): legs made, siblings reduced or
    # closed; the caller tells the matcher (`publish`).
    linked: list[Order] = field(default_factory=list)


async def publish(
    redis: RedisClient, updates: Sequence[OrderUpdate], moved: Sequence[Order], partitions: int
) -> None:
    """After the commit, in one round trip: the events, and the matcher told about the orders
    it must work, read again or drop (`moved`: legs made, siblings moved, orders closed);
    `partitions`: the matcher's stream partitions. Redis errors propagate: the relay and the
    matcher's sweep catch up with what a caller could not send."""
    if not updates and not moved:
        return
    async with redis.pipeline(transaction=False) as pipe:
        order_events.queue(pipe, list(updates))
        queue_matcher_messages(pipe, moved, partitions)
        await pipe.execute()


async def apply(conn: AsyncConnection, works: Sequence[Work]) -> list[Outcome | StaleOrder]:
    """Apply `works` (at most one per order) in the caller's transaction; for each, its outcome
    or why it was stale."""
    if not works:
        return []
    if len({w.order.id for w in works}) != len(works):
        raise ValueError("one change per order in a group: the next group takes the others")
    orders, at = await _lock(conn, works)
    stale: dict[int, StaleOrder] = {}
    live: list[tuple[int, Work, Order]] = []
    for index, work in enumerate(works):
        try:
            current = fill_rules.check_current(orders.get(work.order.id), work.order, work.action)
        except StaleOrder as error:
            stale[index] = error
            continue
        live.append((index, work, current))
    positions = await _lock_positions(conn, live)
    executions = await _insert_executions(conn, live)
    changes: list[tuple[int, Work, Change]] = []
    for index, work, current in live:
        try:
            change = _judge(current, work.action, positions, executions.get(index, []))
        except StaleOrder as error:  # a transition the order cannot make from where it is
            if executions.get(index):
                raise  # its executions are written: the whole group rolls back
            stale[index] = error
            continue
        if change.position is not None:
            positions[(current.account_id, current.symbol)] = change.position
        changes.append((index, work, change))
    follow = await _follow_ups(conn, changes, orders, positions)
    changes = [(i, w, follow.entries.get(i, c)) for i, w, c in changes]
    works_by_index = {i: w for i, w, _ in changes}
    linked = [  # a sibling's change, under the request of the change that caused it
        (i, Work(c.before, fill_rules.Close(c.after.status), works_by_index[i].request_id), c)
        for i, c in follow.changes
    ]
    outcomes: dict[int, Outcome] = {}
    recorded: list[order_events.Recorded] = []
    fallback_request = current_request_id()
    for index, work, change in changes + linked:
        after = _stamped(change.after, at) if change.moved else change.after
        request_id = work.request_id or fallback_request
        updates = [
            OrderUpdate(
                event,
                after,
                execution,
                kind=order_events.kind_of(event, change.before, after),
                request_id=request_id,
            )
            for event, execution in change.events
        ]
        if index in outcomes:  # a sibling of the work's order
            outcomes[index].updates.extend(updates)
            outcomes[index].linked.append(after)
        else:
            outcomes[index] = Outcome(after, updates)
        recorded += updates
        if change.moved and not updates:  # every change is in the order's history
            kind = order_events.silent_kind(change.before, after)
            recorded.append(order_events.HistoryOnly(kind, after, request_id=request_id))
    for index, legs in follow.legs.items():
        request_id = works_by_index[index].request_id or fallback_request
        made = [OrderUpdate(Event.ACCEPTED, leg, request_id=request_id) for leg in legs]
        outcomes[index].updates.extend(made)
        outcomes[index].linked.extend(legs)
        recorded += made
    await _store(conn, orders, changes + linked, positions, recorded)
    return [outcomes[i] if i in outcomes else stale[i] for i in range(len(works))]


async def _follow_ups(
    conn: AsyncConnection,
    changes: list[tuple[int, Work, Change]],
    orders: dict[UUID, Order],
    positions: dict[tuple[UUID, str], PositionState],
) -> order_classes.FollowUps:
    """Order classes: siblings moved and legs made by the group's changes (nothing to do, and
    no round trip, for a group of simple orders)."""
    if not any(order_classes.is_class_order(c.after) for _, _, c in changes):
        return order_classes.FollowUps()
    return await order_classes.follow_ups(conn, [(i, c) for i, _, c in changes], orders, positions)


def _stamped(order: Order, at: datetime) -> Order:
    """The order as `_STORE` leaves it: updated (and, when filled, filled) at the transaction's
    time, which is `now()` throughout the transaction."""
    filled_at = order.filled_at
    if order.status is Status.FILLED and filled_at is None:
        filled_at = at
    return replace(order, updated_at=at, filled_at=filled_at)


def _judge(
    order: Order,
    action: Action,
    positions: dict[tuple[UUID, str], PositionState],
    new: list[Execution],
) -> Change:
    if isinstance(action, Execute):
        position = positions.get((order.account_id, order.symbol), PositionState())
        return fill_rules.execute(order, position, new, action)
    if isinstance(action, Close):
        return fill_rules.close(order, action)
    return fill_rules.mark(order, action)


# -- locks ------------------------------------------------------------------------------------
async def _lock(conn: AsyncConnection, works: Sequence[Work]) -> tuple[dict[UUID, Order], datetime]:
    """The works' accounts and orders locked, an exit's siblings with it (order classes)."""
    return await lock(
        conn,
        {w.order.account_id for w in works},
        {w.order.id for w in works},
        order_classes.partners_to_lock([w.order for w in works]),
    )


async def lock(
    conn: AsyncConnection,
    account_ids: Collection[UUID],
    order_ids: Collection[UUID],
    partners: Sequence[UUID] = (),
) -> tuple[dict[UUID, Order], datetime]:
    """The accounts, then the orders (with `partners`, also those orders' pairs: the ids and
    the legs whose parent they are), locked in id order, as every writer locks them; the orders
    as they are now, and the transaction's time."""
    await conn.execute(
        text("SELECT id FROM accounts WHERE id = ANY(:ids) ORDER BY id FOR UPDATE"),
        {"ids": sorted(account_ids)},
    )
    ids = sorted(order_ids)
    linked = " OR id = ANY(:partners) OR parent_id = ANY(:partners)" if partners else ""
    rows = (
        await conn.execute(
            text(
                f"SELECT {ORDER_COLUMNS}, now() AS at FROM orders WHERE id = ANY(:ids){linked} "
                "ORDER BY id FOR UPDATE"
            ),
            {"ids": ids, "partners": list(partners)} if partners else {"ids": ids},
        )
    ).all()
    at = rows[0].at if rows else datetime.now(UTC)
    return {r.id: order_from_row(r) for r in rows}, at


async def _lock_positions(
    conn: AsyncConnection, live: list[tuple[int, Work, Order]]
) -> dict[tuple[UUID, str], PositionState]:
    """The positions that executions will move, locked; created first where the account never
    held the symbol."""
    keys = sorted(
        {
            (order.account_id, order.symbol)
            for _, work, order in live
            if isinstance(work.action, Execute) and work.action.fills
        }
    )
    if not keys:
        return {}
    params = {"a": [a for a, _ in keys], "s": [s for _, s in keys]}
    await conn.execute(
        text(
            "INSERT INTO positions (account_id, symbol) SELECT a, s FROM unnest("
            "CAST(:a AS uuid[]), CAST(:s AS text[])) AS d(a, s) ORDER BY a, s "
            "ON CONFLICT DO NOTHING"
        ),
        params,
    )
    rows = await conn.execute(
        text(
            "SELECT p.account_id, p.symbol, p.quantity, p.cost_basis, p.realized_pnl "
            "FROM positions p JOIN unnest(CAST(:a AS uuid[]), CAST(:s AS text[])) AS d(a, s) "
            "ON p.account_id = d.a AND p.symbol = d.s ORDER BY p.account_id, p.symbol FOR UPDATE"
        ),
        params,
    )
    return {
        (r.account_id, r.symbol): PositionState(r.quantity, r.cost_basis, r.realized_pnl)
        for r in rows
    }


# -- executions -------------------------------------------------------------------------------
_INSERT_EXECUTIONS = text(
    """
    INSERT INTO executions (order_id, user_id, symbol, side, quantity, price, venue,
                            venue_execution_id)
    SELECT f.order_id, f.user_id, f.symbol, f.side, f.quantity, f.price, f.venue,
           f.venue_execution_id
      FROM unnest(CAST(:orders AS uuid[]), CAST(:users AS uuid[]), CAST(:symbols AS text[]),
                  CAST(:sides AS text[]), CAST(:quantities AS numeric[]),
                  CAST(:prices AS numeric[]), CAST(:venues AS text[]), CAST(:ids AS text[]))
           WITH ORDINALITY
           AS f(order_id, user_id, symbol, side, quantity, price, venue, venue_execution_id, ord)
     ORDER BY f.ord
    ON CONFLICT (venue_execution_id) DO NOTHING
    RETURNING id, executed_at, venue_execution_id
    """
)


async def _insert_executions(
    conn: AsyncConnection, live: list[tuple[int, Work, Order]]
) -> dict[int, list[Execution]]:
    """Each work's executions that are new, in its fills' order (a replayed id, or one
    repeated in the group, inserts nothing the second time)."""
    owners: dict[str, tuple[int, Order, Fill]] = {}
    for index, work, order in live:
        if isinstance(work.action, Execute):
            for fill in work.action.fills:
                owners.setdefault(fill.venue_execution_id, (index, order, fill))
    if not owners:
        return {}
    entries = list(owners.values())
    rows = await conn.execute(
        _INSERT_EXECUTIONS,
        {
            "orders": [o.id for _, o, _ in entries],
            "users": [o.user_id for _, o, _ in entries],
            "symbols": [o.symbol for _, o, _ in entries],
            "sides": [o.side.value for _, o, _ in entries],
            "quantities": [f.quantity for _, _, f in entries],
            "prices": [f.price for _, _, f in entries],
            "venues": [f.venue for _, _, f in entries],
            "ids": [f.venue_execution_id for _, _, f in entries],
        },
    )
    inserted = {row.venue_execution_id: row for row in rows}
    new: dict[int, list[Execution]] = {}
    for execution_id, (index, order, fill) in owners.items():
        row = inserted.get(execution_id)
        if row is not None:
            new.setdefault(index, []).append(
                Execution(
                    row.id,
                    order.id,
                    fill.quantity,
                    fill.price,
                    fill.venue,
                    execution_id,
                    row.executed_at,
                )
            )
    return new


# -- writing the group ------------------------------------------------------------------------
# Accounts, positions, audit rows and orders of the whole group in one statement. The order rows
# are locked and their versions checked already; the version in the WHERE is belt and braces.
_STORE = text(
    """
    WITH account AS (
        UPDATE accounts a SET cash = a.cash + d.cash,
               reserved_cash = a.reserved_cash - d.released, updated_at = now()
          FROM unnest(CAST(:acc_ids AS uuid[]), CAST(:acc_cash AS numeric[]),
                      CAST(:acc_released AS numeric[])) AS d(id, cash, released)
         WHERE a.id = d.id
    ), position AS (
        UPDATE positions p SET quantity = coalesce(d.q, p.quantity),
               cost_basis = coalesce(d.c, p.cost_basis),
               realized_pnl = coalesce(d.r, p.realized_pnl),
               reserved_quantity = p.reserved_quantity - d.released, updated_at = now()
          FROM unnest(CAST(:pos_accounts AS uuid[]), CAST(:pos_symbols AS text[]),
                      CAST(:pos_q AS numeric[]), CAST(:pos_c AS numeric[]),
                      CAST(:pos_r AS numeric[]), CAST(:pos_released AS numeric[]))
               AS d(account_id, symbol, q, c, r, released)
         WHERE p.account_id = d.account_id AND p.symbol = d.symbol
    ), audited AS (
        INSERT INTO audit_log (user_id, action, entity_type, entity_id, details, request_id)
        SELECT a.user_id, a.action, 'order', a.entity_id, CAST(a.details AS jsonb), a.request_id
          FROM unnest(CAST(:audit_users AS uuid[]), CAST(:audit_actions AS text[]),
                      CAST(:audit_entities AS text[]), CAST(:audit_details AS text[]),
                      CAST(:audit_requests AS text[])) WITH ORDINALITY
               AS a(user_id, action, entity_id, details, request_id, ord)
         ORDER BY a.ord
    ), events AS (
        INSERT INTO order_events (id, user_id, order_id, version, event, payload, kind, status,
                                  quantity, price, venue, reason, request_id, execution_id)
        SELECT r.id, r.user_id, r.order_id, r.version, r.event, r.payload, r.kind, r.status,
               r.quantity, r.price, r.venue, r.reason, r.request_id, r.execution_id
          FROM unnest(CAST(:ev_ids AS uuid[]), CAST(:ev_users AS uuid[]),
                      CAST(:ev_orders AS uuid[]), CAST(:ev_versions AS integer[]),
                      CAST(:ev_events AS text[]), CAST(:ev_payloads AS text[]),
                      CAST(:ev_kinds AS text[]), CAST(:ev_statuses AS text[]),
                      CAST(:ev_quantities AS numeric[]), CAST(:ev_prices AS numeric[]),
                      CAST(:ev_venues AS text[]), CAST(:ev_reasons AS text[]),
                      CAST(:ev_request_ids AS text[]), CAST(:ev_executions AS uuid[]))
               WITH ORDINALITY AS r(id, user_id, order_id, version, event, payload, kind,
                                    status, quantity, price, venue, reason, request_id,
                                    execution_id, ord)
         ORDER BY r.ord
    )
    UPDATE orders o SET status = d.status, quantity = d.quantity, filled_quantity = d.fq,
           filled_value = d.fv, reserved_cash = d.rc, reserved_quantity = d.rq,
           triggered = d.triggered, version = d.new_version, reject_reason = d.reason,
           stop_price = d.stop, high_water_mark = d.mark,
           updated_at = now(),
           filled_at = CASE WHEN d.status = 'FILLED' THEN now() ELSE o.filled_at END
      FROM unnest(CAST(:ids AS uuid[]), CAST(:created AS timestamptz[]),
                  CAST(:versions AS integer[]), CAST(:statuses AS text[]),
                  CAST(:quantities AS numeric[]), CAST(:fq AS numeric[]), CAST(:fv AS numeric[]),
                  CAST(:rc AS numeric[]), CAST(:rq AS numeric[]), CAST(:triggered AS boolean[]),
                  CAST(:new_versions AS integer[]), CAST(:reasons AS text[]),
                  CAST(:stops AS numeric[]), CAST(:marks AS numeric[]))
           AS d(id, created, version, status, quantity, fq, fv, rc, rq, triggered, new_version,
                reason, stop, mark)
     WHERE o.id = d.id AND o.created_at = d.created AND o.version = d.version
    RETURNING o.id
    """
)


async def _store(
    conn: AsyncConnection,
    before: dict[UUID, Order],
    changes: list[tuple[int, Work, Change]],
    positions: dict[tuple[UUID, str], PositionState],
    events: list[order_events.Recorded],
) -> None:
    """Write the group: its ledger postings, then its accounts, positions, audit rows, events
    and orders in one statement."""
    moving = [(work, change) for _, work, change in changes if change.moved]
    if not moving:
        return
    await ledger.post_many(conn, [p for _, c in moving for p in c.postings])
    cash: dict[UUID, list[Decimal]] = {}
    shares: dict[tuple[UUID, str], Decimal] = {}
    moved_positions: set[tuple[UUID, str]] = set()
    final: dict[UUID, Order] = {}
    audits: list[tuple[UUID, str, str, str, str | None]] = []
    fallback_request = current_request_id()
    for work, change in moving:
        order = change.before
        totals = cash.setdefault(order.account_id, [ZERO, ZERO])
        totals[0] += change.cash
        totals[1] += change.released_cash
        key = (order.account_id, order.symbol)
        if change.position is not None:
            moved_positions.add(key)
        if change.position is not None or change.released_shares:
            shares[key] = shares.get(key, ZERO) + change.released_shares
        final[order.id] = change.after
        request_id = work.request_id or fallback_request
        audits += [
            (order.user_id, action, str(order.id), json.dumps(details, default=str), request_id)
            for action, details in change.audits
        ]
    accounts = [a for a, (c, r) in cash.items() if c or r]
    ids = list(final)
    rows = await conn.execute(
        _STORE,
        {
            "acc_ids": accounts,
            "acc_cash": [cash[a][0] for a in accounts],
            "acc_released": [cash[a][1] for a in accounts],
            "pos_accounts": [a for a, _ in shares],
            "pos_symbols": [s for _, s in shares],
            "pos_q": [positions[k].quantity if k in moved_positions else None for k in shares],
            "pos_c": [positions[k].cost_basis if k in moved_positions else None for k in shares],
            "pos_r": [positions[k].realized_pnl if k in moved_positions else None for k in shares],
            "pos_released": list(shares.values()),
            "audit_users": [a[0] for a in audits],
            "audit_actions": [a[1] for a in audits],
            "audit_entities": [a[2] for a in audits],
            "audit_details": [a[3] for a in audits],
            "audit_requests": [a[4] for a in audits],
            "ids": ids,
            "created": [before[i].created_at for i in ids],
            "versions": [before[i].version for i in ids],
            "statuses": [final[i].status.value for i in ids],
            "quantities": [final[i].quantity for i in ids],
            "fq": [final[i].filled_quantity for i in ids],
            "fv": [final[i].filled_value for i in ids],
            "rc": [final[i].reserved_cash for i in ids],
            "rq": [final[i].reserved_quantity for i in ids],
            "triggered": [final[i].triggered for i in ids],
            "new_versions": [final[i].version for i in ids],
            "reasons": [final[i].reject_reason for i in ids],
            "stops": [final[i].stop_price for i in ids],
            "marks": [final[i].high_water_mark for i in ids],
            **{f"ev_{k}": v for k, v in order_events.outbox_params(events).items()},
        },
    )
    if len(rows.all()) != len(ids):
        raise StaleOrder("an order of the group changed under its lock")


# -- one order at a time ----------------------------------------------------------------------
async def _one(conn: AsyncConnection, order: Order, action: Action) -> Outcome:
    (result,) = await apply(conn, [Work(order, action)])
    if isinstance(result, StaleOrder):
        raise result
    return result


async def execute(
    conn: AsyncConnection,
    order: Order,
    fills: Sequence[Fill],
    *,
    close_remainder: bool = False,
    reason: str | None = None,
) -> Outcome:
    """Apply `fills` to `order` (as the caller last saw it) in the caller's transaction."""
    return await _one(conn, order, Execute(fills, close_remainder, reason))


async def close(
    conn: AsyncConnection,
    order: Order,
    status: Status,
    *,
    reason: str | None = None,
    expected_version: int | None = None,
) -> Outcome:
    """Cancel, expire or reject an open order: release what it holds, in this transaction."""
    return await _one(conn, order, Close(status, reason, expected_version))


async def mark(
    conn: AsyncConnection,
    order: Order,
    *,
    status: Status | None = None,
    triggered: bool | None = None,
    event: Event | None = None,
) -> Outcome:
    """A change with no money: PENDING -> SUBMITTED when an order starts resting, or a stop
    that triggered."""
    return await _one(conn, order, Mark(status, triggered, event))
