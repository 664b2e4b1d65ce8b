"""Live portfolios inside one API process: one revaluation per user per tick, shared by all of
that user's sockets here, at most once a second, on a held symbol's quote or on a fill."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from uuid import UUID

from broadcaster import Broadcast

from services.infra.retry import Backoff
from services.market_data.quote_hub import QuoteHub
from services.market_data.quote_mirror import QuoteMirror
from services.orders.order_events import user_channel
from services.portfolio.holdings_cache import HoldingsCache
from services.portfolio.valuation import Valuation, value

log = logging.getLogger("tradeql.portfolio_hub")
MIN_INTERVAL_SECONDS = 1.0


class Watcher:
    """One socket's view: holds only the newest valuation (a slow socket skips stale ones)."""

    def __init__(self) -> None:
        self._latest: Valuation | None = None
        self._ready = asyncio.Event()

    def offer(self, valuation: Valuation) -> None:
        self._latest = valuation
        self._ready.set()

    async def next(self) -> Valuation:
        await self._ready.wait()
        self._ready.clear()
        assert self._latest is not None
        return self._latest


@dataclass
class _UserFeed:
    user_id: UUID
    watchers: set[Watcher] = field(default_factory=set)
    task: asyncio.Task[None] | None = None
    revaluations: int = 0


class PortfolioHub:
    def __init__(
        self,
        holdings: HoldingsCache,
        quotes: QuoteMirror,
        quote_hub: QuoteHub,
        broadcast: Broadcast,
    ) -> None:
        self._holdings = holdings
        self._quotes = quotes
        self._quote_hub = quote_hub
        self._broadcast = broadcast
        self._feeds: dict[UUID, _UserFeed] = {}
        self.failures = 0  # feeds that failed and were restarted (read by /metrics)

    def revaluations(self, user_id: UUID) -> int:
        feed = self._feeds.get(user_id)
        return feed.revaluations if feed else 0

    @contextlib.asynccontextmanager
    async def watch(self, user_id: UUID) -> AsyncIterator[Watcher]:
        feed = self._feeds.get(user_id)
        if feed is None:
            feed = self._feeds[user_id] = _UserFeed(user_id)
            feed.task = asyncio.create_task(self._run(feed), name=f"portfolio-{user_id}")
        watcher = Watcher()
        feed.watchers.add(watcher)
        try:
            yield watcher
        finally:
            feed.watchers.discard(watcher)
            if not feed.watchers:
                self._feeds.pop(user_id, None)
                if feed.task is not None:
                    feed.task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await feed.task

    async def _revalue(self, feed: _UserFeed) -> list[str]:
        (holdings,) = await self._holdings.holdings([feed.user_id])
        if holdings is None:
            return []
        symbols = [p.symbol for p in holdings.positions]
        quotes = dict(zip(symbols, await self._quotes.read(symbols), strict=True))
        valuation = value(holdings, quotes)
        feed.revaluations += 1
        for watcher in list(feed.watchers):
            watcher.offer(valuation)
        return symbols

    async def _run(self, feed: _UserFeed) -> None:
        """Follow the user's fills and quotes for as long as a socket watches. A failure (Redis
        or PostgreSQL away, anything else) restarts the feed with backoff, so its sockets are
        served again when it passes; it is counted, and logged once per run of failures."""
        backoff, served = Backoff(initial=0.1, maximum=5.0), -1
        while True:
            try:
                await self._follow(feed)
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                self.failures += 1
                if feed.revaluations != served:  # served since the last failure: a new run
                    backoff.succeeded()
                served = feed.revaluations
                first, delay = backoff.failed()
                if first:
                    log.exception("live portfolio of %s failed; restarting it", feed.user_id)
                await asyncio.sleep(delay)

    async def _follow(self, feed: _UserFeed) -> None:
        async with self._broadcast.subscribe(user_channel(feed.user_id)) as fills:
            while True:
                symbols = await self._revalue(feed)
                last = time.monotonic()
                with self._quote_hub.subscribe(symbols) as moves:
                    await _first_of(moves.next_quotes(), fills.get())
                # Throttle: at most one revaluation a second, however busy the quotes are.
                await asyncio.sleep(max(0.0, MIN_INTERVAL_SECONDS - (time.monotonic() - last)))


async def _first_of(*waits: Awaitable[object]) -> object:
    tasks = [asyncio.ensure_future(w) for w in waits]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        return next(iter(done)).result()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
