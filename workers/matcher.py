"""The matcher: one process per partition at a time (a lease in Redis), working orders in memory.

Each owned partition p reads new orders and cancels from `orders:{p}` (consumer group "matcher",
acknowledged only after the transaction that acts on them commits) and quotes from
`md:quotes:{p}`. Working orders sit in an OrderBook indexed by price, so a quote touches only
the orders it crosses. On taking a partition the matcher rebuilds its book from PostgreSQL, and a
periodic sweep picks up any committed order whose hand-off to the stream was lost.
TRADEQL_MATCHER_PARTITIONS limits the partitions a process may lease (`0-1`), so several
matcher processes on one machine split the symbols instead of the first holding them all.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable
from datetime import UTC, datetime, timedelta
from decimal import ROUND_DOWN, ROUND_UP, Decimal
from uuid import UUID

from redis.exceptions import RedisError

from services.infra.container import Services
from services.infra.db import single_read
from services.infra.keys import ns, tag
from services.infra.redis import RedisClient
from services.infra.retry import Backoff, is_transient
from services.infra.settings import Settings
from services.infra.streams import (
    ConsumerGroup,
    consumer_name,
    partition_of,
    quote_stream,
    stream_entries,
)
from services.market_data.clock import EXTENDED, MarketSession
from services.market_data.marketdata import FIELD_SEPARATOR, RECORD_SEPARATOR, Quote, decode_quote
from services.orders import fills, internal_cross
from services.orders.group_commit import GroupCommit
from services.orders.matching import OrderBook
from services.orders.order_model import Event, Order, OrderType, Side, Status, TimeInForce
from services.orders.order_rules import tick_for
from services.orders.order_store import (
    open_order_ids,
    open_orders,
    order_stream,
    orders_by_id,
    store_marks,
)
from services.orders.routing import VenueRouter, parse_faults
from workers.metrics import MATCHER_EXECUTIONS, MATCHER_PARTITIONS, MATCHER_WORKING

log = logging.getLogger("tradeql.matcher")
GROUP = "matcher"
MARKS_EVERY = 1.0  # seconds between two stores of a partition's moved trailing-stop marks

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


def lease_key(partition: int) -> str:
    return ns(f"matcher:lease:{tag(partition)}")


class Lease:
    """`matcher:lease:{p}` = owner, with a TTL: taken when free, kept by renewing, lost when
    the holder dies (it stops renewing) or stalls past the TTL."""

    def __init__(self, redis: RedisClient, owner: str, ttl_seconds: float) -> None:
        self.redis = redis
        self.owner = owner
        self.ttl_ms = int(ttl_seconds * 1000)
        self._renew = redis.register_script(_RENEW)
        self._release = redis.register_script(_RELEASE)

    async def acquire(self, partition: int) -> bool:
        return bool(await self.redis.set(lease_key(partition), self.owner, nx=True, px=self.ttl_ms))

    async def renew(self, partition: int) -> bool:
        return bool(await self._renew(keys=[lease_key(partition)], args=[self.owner, self.ttl_ms]))

    async def release(self, partition: int) -> None:
        await self._release(keys=[lease_key(partition)], args=[self.owner])


def collar_limit(order: Order, quote: Quote, collar: Decimal) -> Decimal | None:
    """The worst price an order may execute at: its limit, or for a market order the quote
    moved by the collar, on the tick grid. A buy never pays more a share than its hold covers
    (the market may have moved past the collar since the hold was taken): what cannot fill
    within it is cancelled, instead of a fill the account cannot pay for."""
    if order.type is OrderType.LIMIT or (order.type is OrderType.STOP_LIMIT and order.triggered):
        return order.limit_price
    if order.side is Side.BUY:
        raw = quote.ask * (1 + collar)
        if order.notional is None and order.remaining_quantity > 0:
            raw = min(raw, order.reserved_cash / order.remaining_quantity)
        return raw.quantize(tick_for(raw), rounding=ROUND_DOWN)
    raw = quote.bid * (1 - collar)
    return max(raw.quantize(tick_for(raw), rounding=ROUND_UP), tick_for(raw))


def executes_now(order: Order) -> bool:
    return order.type is OrderType.MARKET or (
        order.type in (OrderType.STOP, OrderType.TRAILING_STOP) and order.triggered
    )


class PartitionMatcher:
    """Everything for one partition, run by one task: no two coroutines touch its book at once."""

    def __init__(
        self,
        partition: int,
        services: Services,
        router: VenueRouter,
        owner: str,
        order_slots: asyncio.Semaphore | None = None,
        committer: GroupCommit | None = None,
    ) -> None:
        self.partition = partition
        self.services = services
        self.settings: Settings = services.settings
        self.router = router
        self.book = OrderBook()
        self.orders = ConsumerGroup(
            services.redis, GROUP, [order_stream(partition)], owner, claim_idle_ms=0
        )
        self.quotes: dict[str, Quote] = {}
        self._quote_id = "$"
        self._lock = asyncio.Lock()
        # Shared by every partition of the process: it bounds their orders in flight together,
        # within the process's connection pool.
        self._order_slots = order_slots or asyncio.Semaphore(
            services.settings.matcher_order_concurrency
        )
        # Shared by every partition of the process too: their changes commit in groups.
        self.committer = committer or GroupCommit(
            services.engine,
            services.redis,
            max_group=services.settings.matcher_group_max,
            reads=services.reads,
            partitions=services.settings.quote_partitions,
        )
        # Orders whose execution is routed and waiting for its group to commit: a quote
        # meanwhile must not route them again.
        self._executing: set[UUID] = set()
        self._settling: set[asyncio.Task[None]] = set()
        # Trailing stops whose mark moved since it was last stored, and when that was.
        self._moved_marks: dict[UUID, Order] = {}
        self._marks_stored_at = 0.0

    # -- life cycle -----------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        await self.orders.ensure(start_id="0")
        # Quotes from here on, read after the rebuild: none published meanwhile is missed.
        newest = await self.services.redis.xrevrange(quote_stream(self.partition), count=1)
        self._quote_id = str(newest[0][0]) if newest else "0-0"
        await self.rebuild()
        pending = await self.orders.claim_abandoned(count=1000)
        await self._handle_messages(pending)
        next_sweep = time.monotonic() + self.settings.matcher_sweep_seconds
        quotes = asyncio.create_task(self._read_quotes(stop), name=f"quotes-{self.partition}")
        messages: list = []  # type: ignore[type-arg]
        outage = Backoff(initial=0.05, maximum=2.0)  # PostgreSQL or Redis away
        try:
            while not stop.is_set():
                try:
                    if not messages:
                        messages = await self.orders.read(count=200, block_ms=50)
                    await self._handle_messages(messages)  # again, after an outage
                    messages = []
                    if time.monotonic() >= next_sweep:
                        await self.sweep()
                        next_sweep = time.monotonic() + self.settings.matcher_sweep_seconds
                    if outage.succeeded():
                        log.info("partition %d: outage over", self.partition)
                except Exception as exc:
                    if not is_transient(exc):
                        raise
                    first, delay = outage.failed()
                    if first:
                        log.warning("partition %d: outage (%s); retrying", self.partition, exc)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), delay)
        finally:
            quotes.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await quotes

    async def rebuild(self) -> None:
        """The working orders of this partition, from PostgreSQL (the truth)."""
        async with self.services.engine.connect() as conn:
            working = [
                o
                for o in await open_orders(conn)
                if partition_of(o.symbol, self.settings.quote_partitions) == self.partition
            ]
        await self._process_orders(working)
        MATCHER_WORKING.labels(str(self.partition)).set(len(self.book))
        log.info("partition %d: %d working orders rebuilt", self.partition, len(working))

    async def sweep(self) -> None:
        """Open orders of this partition missing from the book: committed but never handed off
        (the API lost Redis at the wrong moment), or dropped by an outage. Their ids are read
        first (an index-only look), the orders themselves only for those missing."""
        cutoff = datetime.now(UTC) - timedelta(seconds=1)
        async with single_read(self.services.engine) as conn:
            ids = await open_order_ids(conn, created_before=cutoff)
            missing = [
                i
                for i, symbol in ids
                if i not in self.book
                and i not in self._executing
                and partition_of(symbol, self.settings.quote_partitions) == self.partition
            ]
            found = await orders_by_id(conn, missing) if missing else {}
        for order in found.values():
            log.info("sweep found open order %s outside the book", order.id)
        await self._process_orders(sorted(found.values(), key=lambda o: (o.created_at, o.id)))

    async def _handle_messages(self, messages: list) -> None:  # type: ignore[type-arg]
        if not messages:
            return
        cancels = [UUID(m.fields["id"]) for m in messages if m.fields.get("op") == "cancel"]
        new_ids = [UUID(m.fields["id"]) for m in messages if m.fields.get("op") == "new"]
        # Orders changed beside a change of another order (a sibling leg reduced): read again
        refreshes = [UUID(m.fields["id"]) for m in messages if m.fields.get("op") == "refresh"]
        for order_id in cancels:
            async with self._lock:
                self.book.remove(order_id)
        if refreshes:
            await self._refresh(*refreshes)
        if new_ids:
            async with single_read(self.services.engine) as conn:
                found = await orders_by_id(conn, new_ids)
            await self._process_orders([found[i] for i in new_ids if i in found])
        await self.orders.ack(messages)  # every change of these orders committed before it
        MATCHER_WORKING.labels(str(self.partition)).set(len(self.book))

    async def _process_orders(self, orders: list[Order]) -> None:
        """Orders in arrival order (new ones, a rebuild, a sweep): their quotes read in one round
        trip, symbols at once and each symbol's in order, every change committed on return."""
        by_symbol: dict[str, list[Order]] = {}
        for order in orders:
            by_symbol.setdefault(order.symbol, []).append(order)
        if by_symbol:
            quotes = await self._current_quotes(sorted(by_symbol))
            await self._process_symbols(list(by_symbol.values()), quotes)
        await self._drain()

    async def _process_symbols(
        self, groups: list[list[Order]], quotes: dict[str, Quote | None]
    ) -> None:
        """New orders of different symbols at once, each symbol's in arrival order.

        A partition's work is mostly waiting on PostgreSQL round trips, one order after another;
        orders of different symbols share no book and no position, so they overlap (at most
        `TRADEQL_MATCHER_ORDER_CONCURRENCY` at a time in the process, all partitions together,
        so they fit its connection pool), while time priority within a symbol is kept. Two
        orders of one account serialize on its row lock, as they would anyway. An outage raised
        by one stops the others between orders, never inside one (after its commit, before its
        events), and propagates: the messages stay unacknowledged and come back, as when they
        ran one by one."""
        failed: list[Exception] = []

        async def run(orders: list[Order]) -> None:
            async with self._order_slots:
                for order in orders:
                    if failed:
                        return  # an outage elsewhere: stop between orders, never inside one
                    try:
                        await self.process_safely(order, quotes)
                    except Exception as exc:
                        failed.append(exc)
                        return

        await asyncio.gather(*(run(orders) for orders in groups))
        if failed:
            raise failed[0]

    # -- quotes ---------------------------------------------------------------------------
    async def _read_quotes(self, stop: asyncio.Event) -> None:
        redis = self.services.redis
        stream = quote_stream(self.partition)
        while not stop.is_set():
            try:
                reply = await redis.xread({stream: self._quote_id}, count=100, block=200)
            except (RedisError, OSError) as exc:
                log.warning("quote stream unavailable (%s)", exc)
                await asyncio.sleep(0.5)
                continue
            latest: dict[str, Quote] = {}
            resting = self.book.symbols()  # once per read: it is built afresh on every call
            for _stream, entry_id, fields in stream_entries(reply):
                self._quote_id = entry_id
                for record in fields.get("q", "").split(RECORD_SEPARATOR):
                    symbol = record[: record.find(FIELD_SEPARATOR)]
                    if symbol in resting:
                        latest[symbol] = decode_quote(record)
            for quote in latest.values():
                self.quotes[quote.symbol] = quote
                try:
                    await self.on_quote(quote)
                except Exception as exc:  # the next quote tries again
                    if not is_transient(exc):
                        log.exception("partition %d: quote of %s", self.partition, quote.symbol)
                    await asyncio.sleep(0.5)
            try:
                await self._store_marks()
            except Exception as exc:  # kept, and stored on a later round
                if not is_transient(exc):
                    log.exception("partition %d: storing trailing marks", self.partition)
                await asyncio.sleep(0.5)

    async def on_quote(self, quote: Quote) -> None:
        """In REGULAR every resting order the quote crosses executes; in PRE and POST only
        orders for extended hours (stops do not trigger); when CLOSED nothing does."""
        session = self.services.clock.session()
        if session is MarketSession.CLOSED:
            return
        async with self._lock:
            crossed = self.book.on_quote(quote, extended_only=session in EXTENDED)
        for order in crossed.trailed:
            self._moved_marks[order.id] = order
        for order in crossed.triggered:
            self._moved_marks.pop(order.id, None)  # stored with its trigger
            await self._guarded(self._trigger(order, quote), order)
        for order in crossed.executable:
            if order.id not in self._executing:
                await self._guarded(self._execute(order, quote), order)

    async def _store_marks(self) -> None:
        """The trailing stops' moved marks, stored at most once a second (a restart resumes from
        them; the trigger stores its own)."""
        if not self._moved_marks or time.monotonic() - self._marks_stored_at < MARKS_EVERY:
            return
        moved = list(self._moved_marks.values())
        async with self.services.engine.begin() as conn:
            await store_marks(conn, moved)
        self._marks_stored_at = time.monotonic()
        for order in moved:
            if self._moved_marks.get(order.id) is order:
                del self._moved_marks[order.id]

    async def _guarded(self, work: Awaitable[None], order: Order) -> None:
        """One order that cannot be booked must not stop the partition: it is cancelled with
        the reason, and the matcher goes on with the others. An outage (Redis, the network) is
        not the order's fault: it propagates and the partition retries."""
        try:
            await work
        except Exception as exc:
            if isinstance(exc, RedisError) or is_transient(exc):
                raise
            await self._give_up(order, exc)

    async def _give_up(self, order: Order, exc: Exception) -> None:
        log.error("order %s could not be processed; cancelling it", order.id, exc_info=exc)
        async with self._lock:
            self.book.remove(order.id)
        with contextlib.suppress(Exception):
            await self._close(order, Status.CANCELLED, f"could not be booked: {type(exc).__name__}")

    async def _trigger(self, order: Order, quote: Quote) -> None:
        """A stop whose price the last trade crossed: a STOP or TRAILING_STOP executes as a
        market order, a STOP_LIMIT starts working as a limit order."""
        trail = order.type is OrderType.TRAILING_STOP
        outcome = await self._transact(
            order,
            fills.Mark(
                triggered=True,
                event=Event.TRIGGERED,
                high_water_mark=order.high_water_mark if trail else None,
                stop_price=order.stop_price if trail else None,
            ),
        )
        if outcome is not None:
            await self.process(outcome.order, quote, incoming=True)

    # -- orders ---------------------------------------------------------------------------
    async def process_safely(
        self, order: Order, quotes: dict[str, Quote | None] | None = None
    ) -> None:
        await self._guarded(self.process(order, current=quotes), order)

    async def process(
        self,
        order: Order,
        quote: Quote | None = None,
        *,
        current: dict[str, Quote | None] | None = None,
        incoming: bool = False,
    ) -> None:
        """Decide what a newly seen open order needs: execution now, or a place in the book.
        `quote` is one that just arrived for it; `current`, the quotes read for its batch;
        `incoming`, a stop that has just triggered (a PENDING order is incoming too): an incoming
        order first crosses the local book (`_cross`), and what is left goes on as before."""
        if not order.is_open:
            async with self._lock:
                self.book.remove(order.id)
            return
        if order.id in self._executing:
            return  # routed already; its group has not committed yet
        if order.id in self.book and quote is None:
            return
        if quote is None:
            quote = (
                current.get(order.symbol)
                if current is not None
                else (await self._current_quotes([order.symbol]))[order.symbol]
            )
        market_open = self.services.clock.is_open()
        if executes_now(order) or order.time_in_force in (TimeInForce.IOC, TimeInForce.FOK):
            if quote is None or not market_open:
                await self._close(order, Status.CANCELLED, "no market to execute against now")
                return
            crossed = await self._cross(order, quote)
            if crossed is not None and crossed.is_open:
                await self._execute(crossed, quote)
            return
        if incoming or order.status is Status.PENDING:
            crossed = await self._cross(order, quote)
            if crossed is None or not crossed.is_open:
                return
            order = crossed
        if order.status is Status.PENDING:
            outcome = await self._transact(
                order, fills.Mark(status=Status.SUBMITTED, event=Event.ACCEPTED)
            )
            if outcome is None:
                return
            order = outcome.order
        async with self._lock:
            if order.id in self.book:
                self.book.replace(order)
            else:
                self.book.add(order)
        if quote is not None:
            await self.on_quote(quote)

    async def _cross(self, order: Order, quote: Quote | None) -> Order | None:
        """Cross an incoming order with other users' resting limit orders (the local book,
        `services/orders/internal_cross.py`); the order after it, or None if it moved on.

        Why here, where a new order is first worked, rather than in placement: the order's hold is
        committed (placement's batch took it), the quote that bounds the cross is in hand, the
        symbol's orders are decided one at a time in arrival order (so an incoming order meets
        the orders that arrived before it, already resting), and the resting orders it trades
        with sit in this partition's book, which is brought up to date at once. Placement stays
        a batch of short transactions that never waits on other users' orders.

        The database is asked only when this book shows another user's order within the bound
        (a symbol's working orders all rest in its partition's book), so an order with nothing to
        cross costs no round trip; the database's locked read then decides."""
        session = self.services.clock.session()
        if quote is None or session is MarketSession.CLOSED:
            return order
        if not internal_cross.crossable(order):
            return order
        bound = internal_cross.bound_for(
            order,
            collar_limit(order, quote, self.settings.market_order_collar),
            quote.bid,
            quote.ask,
        )
        if bound is None:
            return order
        async with self._lock:  # the symbol's resting orders are all in this book
            if not self.book.crosses_others(order, bound):
                return order
        try:
            crossing = await internal_cross.cross_and_publish(
                self.services.engine,
                self.services.redis,
                order,
                bound,
                reads=self.services.reads,
                extended_only=session in EXTENDED,
                all_or_none=order.time_in_force is TimeInForce.FOK,
                skip=set(self._executing),  # their route to a venue is in flight
                partitions=self.settings.quote_partitions,
            )
        except fills.StaleOrder:
            await self._refresh(order.id)
            return None
        if crossing.resting:
            MATCHER_EXECUTIONS.inc(crossing.executions)
            await self._keep_in_book({r.id: r for r in crossing.resting})
        return crossing.incoming

    async def _execute(self, order: Order, quote: Quote) -> None:
        closes = executes_now(order) or order.time_in_force in (TimeInForce.IOC, TimeInForce.FOK)
        notional_buy = order.notional is not None and order.side is Side.BUY
        try:
            venue_fills = await self.router.route(
                order_key=f"{order.id}:{order.version}",
                side=order.side,
                quote_bid=quote.bid,
                quote_ask=quote.ask,
                quantity=None if notional_buy else order.remaining_quantity,
                notional=order.remaining_notional if notional_buy else None,
                limit_price=collar_limit(order, quote, self.settings.market_order_collar),
                min_quantity=order.remaining_quantity
                if order.time_in_force is TimeInForce.FOK and not notional_buy
                else None,
            )
        except ValueError as exc:  # a quote the router cannot use (a side is zero)
            log.warning("order %s not routed: %s", order.id, exc)
            venue_fills = []
        if not venue_fills and not closes:
            return  # a resting order the venues could not take now: it keeps working
        booked = [
            fills.Fill(f.venue, f.quantity, f.price, f.venue_execution_id) for f in venue_fills
        ]
        reason = None if venue_fills else "no liquidity within the price limit"
        # Submitted now, in this symbol's order; settled when its group commits, while the next
        # order is decided.
        self._executing.add(order.id)
        future = self.committer.submit(
            fills.Work(order, fills.Execute(booked, closes, reason), order.request_id)
        )
        task = asyncio.create_task(self._settle(order, future, len(booked)))
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)

    async def _settle(
        self, order: Order, future: asyncio.Future[fills.Outcome], executions: int
    ) -> None:
        """The end of an execution: its group committed (or the order had moved on)."""
        try:
            outcome = await future
        except fills.StaleOrder:
            await self._refresh(order.id)
            return
        except Exception as exc:
            if is_transient(exc):
                raise
            await self._give_up(order, exc)
            return
        finally:
            self._executing.discard(order.id)
        MATCHER_EXECUTIONS.inc(executions)
        async with self._lock:
            if outcome.order.is_open:
                self.book.replace(outcome.order) if outcome.order.id in self.book else None
            else:
                self.book.remove(outcome.order.id)

    async def _drain(self) -> None:
        """Wait for every execution submitted so far to settle (before acknowledging)."""
        while self._settling:
            results = await asyncio.gather(*self._settling, return_exceptions=True)
            failures = [r for r in results if isinstance(r, BaseException)]
            if failures:
                raise failures[0]

    async def _close(self, order: Order, status: Status, reason: str) -> None:
        await self._transact(order, fills.Close(status, reason, expected_version=order.version))
        async with self._lock:
            self.book.remove(order.id)

    async def _transact(self, order: Order, action: fills.Action) -> fills.Outcome | None:
        """One change of one order, committed in the process's next group (which retries an
        outage for as long as it lasts). A stale order (a cancel won) is re-read and dropped or
        kept, never retried blindly."""
        try:
            return await self.committer.submit(fills.Work(order, action, order.request_id))
        except fills.StaleOrder:
            await self._refresh(order.id)
            return None

    async def _refresh(self, *order_ids: UUID) -> None:
        """The book brought up to date with these orders as PostgreSQL has them now."""
        async with single_read(self.services.engine) as conn:
            fresh = await orders_by_id(conn, list(order_ids))
        await self._keep_in_book({order_id: fresh.get(order_id) for order_id in order_ids})

    async def _keep_in_book(self, current: dict[UUID, Order | None]) -> None:
        """Orders' current versions into the book: a closed (or vanished) one leaves it, an
        open one that rests here takes its new version's place."""
        async with self._lock:
            for order_id, order in current.items():
                if order is None or not order.is_open:
                    self.book.remove(order_id)
                elif order_id in self.book:
                    self.book.replace(order)

    async def _current_quotes(self, symbols: list[str]) -> dict[str, Quote | None]:
        """The consolidated quotes as the quote cache holds them now, in one round trip (the
        stream copy here is kept only for symbols with resting orders, and may be old for the
        others); None for a symbol without a usable one."""
        found = await self.services.quote_store.read(symbols)
        return {
            symbol: quote if quote is not None and quote.bid > 0 and quote.ask > 0 else None
            for symbol, quote in zip(symbols, found, strict=True)
        }


class Matcher:
    """Takes every partition it can lease (of those TRADEQL_MATCHER_PARTITIONS allows), runs one
    PartitionMatcher per partition it holds."""

    def __init__(self, services: Services) -> None:
        settings = services.settings
        self.services = services
        self.owner = consumer_name("matcher")
        self.lease = Lease(services.redis, self.owner, settings.matcher_lease_seconds)
        self.router = VenueRouter(
            breaker_threshold=settings.venue_breaker_threshold,
            breaker_reset_seconds=settings.venue_breaker_reset_seconds,
            timeout_ms=settings.venue_timeout_ms,
            faults=parse_faults(settings.venue_faults),
        )
        # TRADEQL_MATCHER_PARTITIONS: only these are ever leased (default: every partition)
        self.partitions = settings.matcher_partition_list()
        self.running: dict[int, tuple[asyncio.Task[None], asyncio.Event]] = {}
        self.order_slots = asyncio.Semaphore(settings.matcher_order_concurrency)
        self.committer = GroupCommit(
            services.engine,
            services.redis,
            max_group=settings.matcher_group_max,
            reads=services.reads,
            partitions=settings.quote_partitions,
        )

    async def run(self, stop: asyncio.Event) -> None:
        interval = self.services.settings.matcher_lease_seconds / 3
        try:
            while not stop.is_set():
                await self._tend_leases()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), interval)
        finally:
            for partition in list(self.running):
                await self._stop_partition(partition)
            await self.committer.close()

    async def _tend_leases(self) -> None:
        for partition in self.partitions:
            held = partition in self.running
            try:
                ok = await (self.lease.renew(partition) if held else self.lease.acquire(partition))
            except (RedisError, OSError) as exc:
                log.warning("lease %d: redis unavailable (%s)", partition, exc)
                ok = held  # keep working until the lease is known to be lost
            if held and (not ok or self.running[partition][0].done()):
                log.warning("partition %d: lease lost or worker ended; stopping it", partition)
                await self._stop_partition(partition, release=False)
            elif not held and ok:
                log.info("partition %d: lease taken by %s", partition, self.owner)
                stop = asyncio.Event()
                worker = PartitionMatcher(
                    partition,
                    self.services,
                    self.router,
                    self.owner,
                    self.order_slots,
                    self.committer,
                )
                self.running[partition] = (
                    asyncio.create_task(worker.run(stop), name=f"matcher-{partition}"),
                    stop,
                )
        MATCHER_PARTITIONS.set(len(self.running))

    async def _stop_partition(self, partition: int, *, release: bool = True) -> None:
        task, stop = self.running.pop(partition)
        stop.set()
        try:
            await asyncio.wait_for(task, 10)
        except Exception:
            log.exception("partition %d worker ended with an error", partition)
        if release:
            with contextlib.suppress(RedisError, OSError):
                await self.lease.release(partition)
