"""The matcher: one process per partition at a time (a lease in Redis), working orders in memory.

Each owned partition p reads new orders and cancels from `orders:{p}` (consumer group "matcher",
acknowledged only after the transaction that acts on them commits) and quotes from
`md:quotes:{p}`. Working orders sit in an OrderBook indexed by price, so a quote touches only
the orders it crosses. On taking a partition the matcher rebuilds its book from PostgreSQL, and a
periodic sweep picks up any committed order whose hand-off to the stream was lost.
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

from redis.asyncio import Redis
from redis.exceptions import RedisError
from sqlalchemy.exc import DBAPIError

from services.infra.container import Services
from services.infra.db import single_read
from services.infra.settings import Settings
from services.infra.streams import ConsumerGroup, consumer_name, partition_of, quote_stream
from services.market_data.marketdata import FIELD_SEPARATOR, RECORD_SEPARATOR, Quote, decode_quote
from services.orders import fills, order_events
from services.orders.matching import OrderBook
from services.orders.order_model import Order, OrderType, Side, Status, TimeInForce
from services.orders.order_rules import tick_for
from services.orders.order_store import open_orders, orders_by_id
from services.orders.placement import order_stream
from services.orders.routing import VenueRouter, parse_faults
from workers.metrics import MATCHER_EXECUTIONS, MATCHER_PARTITIONS, MATCHER_WORKING

log = logging.getLogger("tradeql.matcher")
GROUP = "matcher"

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
    return f"matcher:lease:{partition}"


class Lease:
    """`matcher:lease:{p}` = owner, with a TTL: taken when free, kept by renewing, lost when
    the holder dies (it stops renewing) or stalls past the TTL."""

    def __init__(self, redis: Redis, owner: str, ttl_seconds: float) -> None:
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
    return order.type is OrderType.MARKET or (order.type is OrderType.STOP and order.triggered)


class PartitionMatcher:
    """Everything for one partition, run by one task: no two coroutines touch its book at once."""

    def __init__(
        self,
        partition: int,
        services: Services,
        router: VenueRouter,
        owner: str,
        order_slots: asyncio.Semaphore | None = None,
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

    # -- life cycle -----------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        await self.orders.ensure(start_id="0")
        # Quotes from here on, read after the rebuild: none published meanwhile is missed.
        newest = await self.services.redis.xrevrange(quote_stream(self.partition), count=1)
        self._quote_id = newest[0][0] if newest else "0-0"
        await self.rebuild()
        pending = await self.orders.claim_abandoned(count=1000)
        await self._handle_messages(pending)
        next_sweep = time.monotonic() + self.settings.matcher_sweep_seconds
        quotes = asyncio.create_task(self._read_quotes(stop), name=f"quotes-{self.partition}")
        try:
            while not stop.is_set():
                messages = await self.orders.read(count=200, block_ms=50)
                await self._handle_messages(messages)
                if time.monotonic() >= next_sweep:
                    await self.sweep()
                    next_sweep = time.monotonic() + self.settings.matcher_sweep_seconds
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
        for order in working:
            await self.process_safely(order)
        MATCHER_WORKING.labels(str(self.partition)).set(len(self.book))
        log.info("partition %d: %d working orders rebuilt", self.partition, len(working))

    async def sweep(self) -> None:
        """Orders committed but never handed off (the API lost Redis at the wrong moment).
        Such an order is still PENDING (whatever the matcher has seen is SUBMITTED or done), so
        the sweep reads only those, not every resting order, every few seconds."""
        cutoff = datetime.now(UTC) - timedelta(seconds=1)
        async with self.services.engine.connect() as conn:
            working = [
                o
                for o in await open_orders(conn, statuses=[Status.PENDING], created_before=cutoff)
                if partition_of(o.symbol, self.settings.quote_partitions) == self.partition
                and o.id not in self.book
            ]
        for order in working:
            log.info("sweep found order %s without a hand-off", order.id)
            await self.process_safely(order)

    async def _handle_messages(self, messages: list) -> None:  # type: ignore[type-arg]
        if not messages:
            return
        cancels = [UUID(m.fields["id"]) for m in messages if m.fields.get("op") == "cancel"]
        new_ids = [UUID(m.fields["id"]) for m in messages if m.fields.get("op") == "new"]
        for order_id in cancels:
            async with self._lock:
                self.book.remove(order_id)
        if new_ids:
            async with single_read(self.services.engine) as conn:
                found = await orders_by_id(conn, new_ids)
            by_symbol: dict[str, list[Order]] = {}
            for order_id in new_ids:
                if order_id in found:
                    by_symbol.setdefault(found[order_id].symbol, []).append(found[order_id])
            await self._process_symbols(list(by_symbol.values()))
        await self.orders.ack(messages)
        MATCHER_WORKING.labels(str(self.partition)).set(len(self.book))

    async def _process_symbols(self, groups: list[list[Order]]) -> None:
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
                        await self.process_safely(order)
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
            for _stream, entries in reply or []:
                for entry_id, fields in entries:
                    self._quote_id = entry_id
                    for record in fields.get("q", "").split(RECORD_SEPARATOR):
                        symbol = record[: record.find(FIELD_SEPARATOR)]
                        if symbol in resting:
                            latest[symbol] = decode_quote(record)
            for quote in latest.values():
                self.quotes[quote.symbol] = quote
                await self.on_quote(quote)

    async def on_quote(self, quote: Quote) -> None:
        if not self.services.clock.is_open():
            return
        async with self._lock:
            crossed = self.book.on_quote(quote)
        for order in crossed.triggered:
            await self._guarded(self._trigger(order, quote), order)
        for order in crossed.executable:
            await self._guarded(self._execute(order, quote), order)

    async def _guarded(self, work: Awaitable[None], order: Order) -> None:
        """One order that cannot be booked must not stop the partition: it is cancelled with
        the reason, and the matcher goes on with the others. An outage (Redis, the network) is
        not the order's fault: it propagates and the partition retries."""
        try:
            await work
        except (RedisError, OSError):
            raise
        except Exception as exc:
            log.exception("order %s could not be processed; cancelling it", order.id)
            async with self._lock:
                self.book.remove(order.id)
            with contextlib.suppress(Exception):
                await self._close(
                    order, Status.CANCELLED, f"could not be booked: {type(exc).__name__}"
                )

    async def _trigger(self, order: Order, quote: Quote) -> None:
        """A stop whose price the last trade crossed: a STOP executes as a market order, a
        STOP_LIMIT starts working as a limit order."""
        outcome = await self._transact(order, lambda conn, o: fills.mark(conn, o, triggered=True))
        if outcome is not None:
            await self.process(outcome.order, quote)

    # -- orders ---------------------------------------------------------------------------
    async def process_safely(self, order: Order) -> None:
        await self._guarded(self.process(order), order)

    async def process(self, order: Order, quote: Quote | None = None) -> None:
        """Decide what a newly seen open order needs: execution now, or a place in the book."""
        if not order.is_open:
            async with self._lock:
                self.book.remove(order.id)
            return
        if order.id in self.book and quote is None:
            return
        quote = quote or await self._current_quote(order.symbol)
        market_open = self.services.clock.is_open()
        if executes_now(order) or order.time_in_force in (TimeInForce.IOC, TimeInForce.FOK):
            if quote is None or not market_open:
                await self._close(order, Status.CANCELLED, "no market to execute against now")
                return
            await self._execute(order, quote)
            return
        if order.status is Status.PENDING:
            outcome = await self._transact(
                order, lambda conn, o: fills.mark(conn, o, status=Status.SUBMITTED)
            )
            if outcome is None:
                return
            order = outcome.order
            await order_events.publish(
                self.services.redis, [order_events.OrderUpdate(order_events.Event.ACCEPTED, order)]
            )
        async with self._lock:
            if order.id in self.book:
                self.book.replace(order)
            else:
                self.book.add(order)
        if quote is not None and market_open:
            await self.on_quote(quote)

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
        outcome = await self._transact(
            order,
            lambda conn, o: fills.execute(conn, o, booked, close_remainder=closes, reason=reason),
        )
        if outcome is None:
            return
        MATCHER_EXECUTIONS.inc(len(booked))
        await order_events.publish(self.services.redis, outcome.updates)
        async with self._lock:
            if outcome.order.is_open:
                self.book.replace(outcome.order) if outcome.order.id in self.book else None
            else:
                self.book.remove(outcome.order.id)

    async def _close(self, order: Order, status: Status, reason: str) -> None:
        outcome = await self._transact(
            order,
            lambda conn, o: fills.close(conn, o, status, reason=reason, expected_version=o.version),
        )
        if outcome is not None:
            await order_events.publish(self.services.redis, outcome.updates)
        async with self._lock:
            self.book.remove(order.id)

    async def _transact(self, order: Order, action) -> fills.Outcome | None:  # type: ignore[no-untyped-def]
        """Run one order transaction; a stale order (a cancel won) is re-read and dropped or
        kept, never retried blindly. A deadlock, a serialization failure or a connection that
        died under it (a PostgreSQL restart) is tried again: if the first try did commit, the
        second finds the order's version moved on and re-reads it, and a fill's execution ids
        insert nothing twice."""
        for attempt in range(3):
            try:
                async with self.services.engine.begin() as conn:
                    return await action(conn, order)  # type: ignore[no-any-return]
            except fills.StaleOrder:
                async with self.services.engine.connect() as conn:
                    fresh = (await orders_by_id(conn, [order.id])).get(order.id)
                async with self._lock:
                    if fresh is None or not fresh.is_open:
                        self.book.remove(order.id)
                    elif order.id in self.book:
                        self.book.replace(fresh)
                return None
            except DBAPIError as exc:
                retryable = exc.connection_invalidated or getattr(exc.orig, "sqlstate", None) in (
                    "40P01",
                    "40001",
                )
                if attempt == 2 or not retryable:
                    raise
        return None

    async def _current_quote(self, symbol: str) -> Quote | None:
        """The consolidated quote as the quote cache holds it now (the stream copy here is
        kept only for symbols with resting orders, and may be old for the others)."""
        (quote,) = await self.services.quote_store.read([symbol])
        if quote is None or quote.bid <= 0 or quote.ask <= 0:
            return None
        return quote


class Matcher:
    """Takes every partition it can lease, runs one PartitionMatcher per partition it holds."""

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
        self.running: dict[int, tuple[asyncio.Task[None], asyncio.Event]] = {}
        self.order_slots = asyncio.Semaphore(settings.matcher_order_concurrency)

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

    async def _tend_leases(self) -> None:
        for partition in range(self.services.settings.quote_partitions):
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
                    partition, self.services, self.router, self.owner, self.order_slots
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
