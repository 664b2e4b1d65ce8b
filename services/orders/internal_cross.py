"""The local order book: an incoming order first trades with other users' resting limit orders.

An incoming buy crosses the resting sells priced at or below its bound, the lower of its limit
(for a market order, the collar its hold covers) and the best venue ask; an incoming sell, the
resting buys at or above the higher of its limit and the best bid. Best price first, then time
(``created_at``, then id), at the resting order's price, whether or not the incoming order is
marketable at the venues; what is left routes to the venues as before. The executions name the
venue ``INTERNAL``. See docs/order-book.md.

The book is PostgreSQL's: working (SUBMITTED or PARTIALLY_FILLED) DAY and GTC orders of type
LIMIT, or STOP_LIMIT once triggered, of other users (never a user with themself), in the same
session (in PRE and POST only extended-hours orders on both sides).

One transaction, in the lock order of every writer (``services/orders/fills.py``): the crossing
orders are read without locks (``orders_book_idx``), then their accounts and the incoming one's
are locked in id order, then the orders in id order; each is judged again under its lock (a venue
fill, a cancel or another cross may have got there first), and both sides' fills go through
``fills.apply``, the one fill path (holds, positions, the ledger, executions, audit rows, order
events). So two crosses, or a cross and a venue fill of the same resting order, serialize on its
row lock and never deadlock, and the second sees what the first left: a resting order is never
overfilled, in one process or many.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from uuid import UUID

from redis.exceptions import RedisError
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.infra.redis import RedisClient
from services.infra.replica import ReadRouter
from services.infra.retry import until_it_works
from services.orders import fills
from services.orders.fills import Execute, Fill, Outcome, StaleOrder, Work
from services.orders.order_events import OrderUpdate
from services.orders.order_model import Order, OrderType, Side, Status

__all__ = ["VENUE", "Crossing", "bound_for", "cross", "cross_and_publish", "crossable"]

log = logging.getLogger("tradeql.internal_cross")

VENUE = "INTERNAL"
ZERO = Decimal(0)
# The most resting orders one cross reads: a bound on one transaction's locks. What they cannot
# fill routes to the venues as any remainder does.
MAX_RESTING = 100
# The most rounds one incoming order takes when others take its crossing orders first.
MAX_ROUNDS = 10


@dataclass(frozen=True, slots=True)
class Crossing:
    """What one cross did: the incoming order after it (as given when nothing crossed), the
    resting orders it traded with after it, and the events of both sides."""

    incoming: Order
    resting: list[Order]
    updates: list[OrderUpdate]
    # Some crossing order was taken by someone else between the read and the lock (another
    # cross, a venue fill, a cancel): another round may find the next ones.
    contended: bool = False
    # Orders the fills moved beside their own (order classes' new legs, siblings closed or
    # reduced): the matcher is told of them, as after a venue fill.
    linked: list[Order] = field(default_factory=list)

    @property
    def executions(self) -> int:
        """Execution rows written: one on each side of each match."""
        return 2 * len(self.resting)


def crossable(order: Order) -> bool:
    """An order that may take liquidity from the book now: open, with shares to trade, and
    executable (a market or limit order, or a stop that has triggered). A buy for a dollar amount
    routes to the venues only: its quantity is what the amount buys at the venue's price."""
    if not order.is_open or order.remaining_quantity <= 0:
        return False
    if order.notional is not None and order.side is Side.BUY:
        return False
    return order.type in (OrderType.MARKET, OrderType.LIMIT) or order.triggered


def bound_for(
    order: Order, worst_price: Decimal | None, bid: Decimal, ask: Decimal
) -> Decimal | None:
    """The worst resting price the order may trade at: the lower of its worst price (its limit,
    or the collar its hold covers) and the ask, for a buy; the higher of it and the bid, for a
    sell. None without a usable venue price on that side (no quote, no cross)."""
    venue = ask if order.side is Side.BUY else bid
    if not venue.is_finite() or venue <= 0:
        return None
    if worst_price is None:
        return venue
    return min(worst_price, venue) if order.side is Side.BUY else max(worst_price, venue)


# The resting orders that cross, in priority order, as many as the incoming order can take: a
# running total stops the scan once their remaining quantity covers what it wants. Literal
# statuses and types, so the planner matches the partial index orders_book_idx.
_CANDIDATES = """
SELECT id, account_id, remaining FROM (
    SELECT id, account_id, limit_price, created_at, quantity - filled_quantity AS remaining,
           sum(quantity - filled_quantity) OVER (
               ORDER BY limit_price {direction}, created_at, id) - (quantity - filled_quantity)
               AS before
      FROM orders
     WHERE symbol = :symbol AND side = :side
       AND status IN ('SUBMITTED', 'PARTIALLY_FILLED') AND type IN ('LIMIT', 'STOP_LIMIT')
       AND (type = 'LIMIT' OR triggered)
       AND time_in_force IN ('DAY', 'GTC')
       AND limit_price {comparison} :bound
       AND user_id <> :user
       AND NOT (id = ANY(:skip))
       {extended}
) book
 WHERE before < :wanted
 ORDER BY limit_price {direction}, created_at, id
 LIMIT :most
"""


async def _candidates(
    conn: AsyncConnection,
    incoming: Order,
    bound: Decimal,
    *,
    extended_only: bool,
    skip: Collection[UUID],
) -> list[tuple[UUID, UUID, Decimal]]:
    """(order id, account id, remaining quantity) of the resting orders that cross, best first;
    read without locks (the caller locks them in the writers' order and judges each again)."""
    buy = incoming.side is Side.BUY
    sql = _CANDIDATES.format(
        direction="ASC" if buy else "DESC",
        comparison="<=" if buy else ">=",
        extended="AND extended_hours" if extended_only else "",
    )
    rows = await conn.execute(
        text(sql),
        {
            "symbol": incoming.symbol,
            "side": (Side.SELL if buy else Side.BUY).value,
            "bound": bound,
            "user": incoming.user_id,
            "skip": list(skip),
            "wanted": incoming.remaining_quantity,
            "most": MAX_RESTING,
        },
    )
    return [(r.id, r.account_id, r.remaining) for r in rows]


def _still_resting(order: Order | None, incoming: Order, bound: Decimal) -> bool:
    """Judged again under the lock: a resting order that is still working and still crosses."""
    if order is None or order.status not in (Status.SUBMITTED, Status.PARTIALLY_FILLED):
        return False
    if order.remaining_quantity <= 0 or order.limit_price is None:
        return False
    if incoming.side is Side.BUY:
        return order.limit_price <= bound
    return order.limit_price >= bound


def execution_id(incoming: Order, resting: Order, side: Side) -> str:
    """Unique per side of a match and repeatable: both orders' ids and the incoming order's
    version (it grows with every change, so a later cross of the same pair gets new ids)."""
    buy, sell = (incoming, resting) if incoming.side is Side.BUY else (resting, incoming)
    return f"{VENUE}:{buy.id}:{sell.id}:{incoming.version}:{side.value[0]}"


def _match(
    incoming: Order, resting: Sequence[Order], *, all_or_none: bool
) -> tuple[list[Fill], list[tuple[Order, Fill]]]:
    """Price-time allocation over the resting orders (already in priority order): the incoming
    order's fills and each resting order's one fill. All or nothing with `all_or_none`."""
    wanted = incoming.remaining_quantity
    taken: list[Fill] = []
    given: list[tuple[Order, Fill]] = []
    for order in resting:
        if wanted <= 0:
            break
        quantity = min(wanted, order.remaining_quantity)
        price = order.limit_price
        assert price is not None  # _still_resting checked it
        taken.append(Fill(VENUE, quantity, price, execution_id(incoming, order, incoming.side)))
        given.append(
            (order, Fill(VENUE, quantity, price, execution_id(incoming, order, order.side)))
        )
        wanted -= quantity
    if all_or_none and wanted > 0:
        return [], []
    return taken, given


async def cross(
    conn: AsyncConnection,
    incoming: Order,
    bound: Decimal,
    *,
    extended_only: bool = False,
    all_or_none: bool = False,
    skip: Collection[UUID] = (),
) -> Crossing:
    """Cross `incoming` (as the caller last saw it) with the book, in the caller's transaction.

    `bound`: the worst resting price it may take (see `bound_for`); `extended_only`: the PRE or
    POST session, where only extended-hours orders trade; `all_or_none`: fill-or-kill, crossed
    only when the book fills the whole remaining quantity; `skip`: resting orders not to take
    (their route to a venue is in flight). StaleOrder if `incoming` changed since the caller
    looked (nothing is written)."""
    unchanged = Crossing(incoming, [], [])
    if not crossable(incoming) or (extended_only and not incoming.extended_hours):
        return unchanged
    candidates = await _candidates(conn, incoming, bound, extended_only=extended_only, skip=skip)
    if not candidates:
        return unchanged
    accounts = {incoming.account_id} | {account for _, account, _ in candidates}
    locked, _ = await fills.lock(conn, accounts, {incoming.id} | {o for o, _, _ in candidates})
    current = locked.get(incoming.id)
    if current is None or current.version != incoming.version or not crossable(current):
        raise StaleOrder(f"order {incoming.id} changed before it could cross")
    resting = [
        locked[order_id]
        for order_id, _, _ in candidates
        if _still_resting(locked.get(order_id), current, bound)
    ]
    # Someone took (some of) a crossing order between the read and the lock.
    read = {order_id: remaining for order_id, _, remaining in candidates}
    contended = len(resting) < len(candidates) or any(
        order.remaining_quantity < read[order.id] for order in resting
    )
    taken, given = _match(current, resting, all_or_none=all_or_none)
    if not taken:
        return Crossing(current, [], [], contended)
    works = [Work(current, Execute(taken), current.request_id)] + [
        Work(order, Execute([fill]), order.request_id) for order, fill in given
    ]
    results = await fills.apply(conn, works)
    outcomes: list[Outcome] = []
    for result in results:
        if isinstance(result, StaleOrder):  # cannot happen under the locks: undo everything
            raise RuntimeError(f"internal cross of {incoming.id}: {result}")
        outcomes.append(result)
    return Crossing(
        outcomes[0].order,
        [o.order for o in outcomes[1:]],
        [u for o in outcomes for u in o.updates],
        contended,
        [linked for o in outcomes for linked in o.linked],
    )


async def cross_and_publish(
    engine: AsyncEngine,
    redis: RedisClient,
    incoming: Order,
    bound: Decimal,
    *,
    reads: ReadRouter | None = None,
    extended_only: bool = False,
    all_or_none: bool = False,
    skip: Collection[UUID] = (),
    partitions: int = 1,
) -> Crossing:
    """`cross` in transactions of their own, each round's events published after its commit, as
    the group commit publishes venue fills (the outbox relays them if Redis fails here).

    A round that lost a crossing order to someone else between its read and its lock (only
    under contention: the matcher decides a symbol's orders one at a time) is followed by
    another, at most `MAX_ROUNDS`, so the incoming order still meets the orders behind it. An
    outage of PostgreSQL is retried for as long as it lasts. StaleOrder if `incoming` changed
    before the first round."""
    rounds: list[Crossing] = []
    current = incoming
    for _ in range(MAX_ROUNDS):
        try:
            crossing = await _round(
                engine,
                current,
                bound,
                extended_only=extended_only,
                all_or_none=all_or_none,
                skip=skip,
            )
        except StaleOrder:
            if not rounds:
                raise
            break  # a cancel (or another worker) got to it after our last round: we are done
        rounds.append(crossing)
        current = crossing.incoming
        await _publish(redis, reads, crossing, partitions)
        if not crossing.contended or not crossable(current):
            break
    return Crossing(
        current,
        [o for c in rounds for o in c.resting],
        [u for c in rounds for u in c.updates],
        any(c.contended for c in rounds),
        [o for c in rounds for o in c.linked],
    )


async def _round(
    engine: AsyncEngine,
    incoming: Order,
    bound: Decimal,
    *,
    extended_only: bool,
    all_or_none: bool,
    skip: Collection[UUID],
) -> Crossing:
    async for attempt in until_it_works(log, f"the internal cross of {incoming.id}"):
        with attempt:
            async with engine.begin() as conn:
                return await cross(
                    conn,
                    incoming,
                    bound,
                    extended_only=extended_only,
                    all_or_none=all_or_none,
                    skip=skip,
                )
    raise AssertionError("unreachable: the retry loop returns or raises")


async def _publish(
    redis: RedisClient, reads: ReadRouter | None, crossing: Crossing, partitions: int
) -> None:
    """Both sides' events, and the matcher told of the legs and siblings the fills moved
    (`partitions`: the matcher's stream partitions), in one round trip."""
    updates = crossing.updates
    if not updates and not crossing.linked:
        return
    if reads is not None:  # the owners' next history reads wait for the replica
        await reads.note_commit(u.order.user_id for u in updates)
    try:
        await fills.publish(redis, updates, crossing.linked, partitions)
    except (RedisError, OSError) as exc:  # the relay and the matcher's sweep catch up
        log.warning("%d order events not published: %s", len(updates), exc)
