"""Live quotes inside one API process: one broadcast subscription, fanned out in memory.

Overflow policy: each subscription holds at most one pending quote per symbol (conflation). A
slow client never slows the dispatcher or the other clients, its memory is bounded by the number
of symbols it asked for, and when it catches up it gets the newest quote of each symbol, having
skipped the intermediate ones (counted in `conflated`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar, cast

from broadcaster import Broadcast

from services.infra.compat import Unsubscribed
from services.infra.pubsub import RESUBSCRIBED
from services.market_data.marketdata import (
    FIELD_SEPARATOR,
    RECORD_SEPARATOR,
    Quote,
    decode_quote,
    record_timestamp_ns,
)
from services.market_data.quote_mirror import QuoteMirror
from services.market_data.quote_store import quotes_channel

log = logging.getLogger("tradeql.quote_hub")

View = TypeVar("View")


class QuoteEvent:
    """One published quote, shared by every subscription of its symbol in this process.

    It is decoded at most once (a record conflated away everywhere is never decoded), and
    `view` builds what the API layer sends once for all subscribers, so per-subscriber work is
    only the delivery itself.
    """

    __slots__ = ("_quote", "_view", "record")

    def __init__(self, record: str) -> None:
        self.record = record
        self._quote: Quote | None = None
        self._view: object | None = None

    @property
    def quote(self) -> Quote:
        if self._quote is None:
            self._quote = decode_quote(self.record)
        return self._quote

    def view(self, present: Callable[[Quote], View]) -> View:
        """`present(quote)`, made once per event: every caller must pass the same `present`."""
        if self._view is None:
            self._view = present(self.quote)
        return cast(View, self._view)


class QuoteSubscription:
    def __init__(self, symbols: Sequence[str]) -> None:
        self.symbols = tuple(symbols)
        self._pending: dict[str, QuoteEvent] = {}
        self._ready = asyncio.Event()
        self._delivered_ts: dict[str, int] = {}
        self.conflated = 0

    def offer(self, symbol: str, event: QuoteEvent) -> None:
        if symbol in self._pending:
            self.conflated += 1
        self._pending[symbol] = event
        self._ready.set()

    def mark_delivered(self, quote: Quote) -> None:
        self._delivered_ts[quote.symbol] = quote.timestamp_ns

    async def next_events(self) -> list[QuoteEvent]:
        """The newest pending quote of each symbol that changed, waiting until there is one."""
        while True:
            await self._ready.wait()
            self._ready.clear()
            pending, self._pending = self._pending, {}
            events = []
            for symbol, event in pending.items():
                timestamp_ns = event.quote.timestamp_ns
                if timestamp_ns > self._delivered_ts.get(symbol, -1):
                    self._delivered_ts[symbol] = timestamp_ns
                    events.append(event)
            if events:
                return events

    async def next_quotes(self) -> list[Quote]:
        return [event.quote for event in await self.next_events()]


class QuoteHub:
    def __init__(
        self,
        broadcast: Broadcast,
        mirror: QuoteMirror | None = None,
        channels: Sequence[str] | None = None,
    ) -> None:
        self._broadcast = broadcast
        # One channel on one Redis server; a cluster's are per stream partition.
        self._channels = list(channels) if channels is not None else [quotes_channel()]
        self._mirror = mirror if mirror is not None and mirror.enabled else None
        self._by_symbol: dict[str, set[QuoteSubscription]] = {}
        self.dispatched = 0

    @property
    def subscriptions(self) -> int:
        return len({s for subs in self._by_symbol.values() for s in subs})

    async def run(self) -> None:
        if len(self._channels) == 1:
            await self._run(self._channels[0])
        else:
            await asyncio.gather(*(self._run(channel) for channel in self._channels))

    async def _run(self, channel: str) -> None:
        async with self._broadcast.subscribe(channel) as subscriber:
            while True:
                try:
                    event = await subscriber.get()
                except Unsubscribed:
                    return
                if event.message == RESUBSCRIBED:
                    continue  # quotes are superseded by the next ones: nothing to catch up
                try:
                    self.dispatch(event.message)
                except Exception:  # one bad batch must not end live quotes for the process
                    log.exception("could not dispatch a quote batch")

    def dispatch(self, payload: str) -> None:
        """Every record to the subscriptions of its symbol, and to the mirror (the same event:
        decoded once, whoever asks first)."""
        by_symbol, mirror = self._by_symbol, self._mirror
        for record in payload.split(RECORD_SEPARATOR):
            symbol = record[: record.find(FIELD_SEPARATOR)]
            subscriptions = by_symbol.get(symbol)
            if not record or (not subscriptions and mirror is None):
                continue
            event = QuoteEvent(record)
            if mirror is not None:
                try:
                    mirror.offer(symbol, record_timestamp_ns(record), event)
                except ValueError:
                    log.warning("quote record without a source time: %r", record[:80])
            if subscriptions:
                for subscription in subscriptions:
                    subscription.offer(symbol, event)
                self.dispatched += 1

    @contextlib.contextmanager
    def subscribe(self, symbols: Sequence[str]) -> Iterator[QuoteSubscription]:
        subscription = QuoteSubscription(symbols)
        for symbol in subscription.symbols:
            self._by_symbol.setdefault(symbol, set()).add(subscription)
        try:
            yield subscription
        finally:
            for symbol in subscription.symbols:
                subscribers = self._by_symbol.get(symbol)
                if subscribers is not None:
                    subscribers.discard(subscription)
                    if not subscribers:
                        del self._by_symbol[symbol]
