"""The newest quote of every symbol, held in an API process, fed by the published quote batches.

A query that values 50 positions would otherwise read 50 quotes from Redis and decode them on
every request. The API process already receives every published batch (the quote hub), so it
keeps the newest one of each symbol, decoded at most once, and queries read that.

Freshness: an entry is used only while younger than `max_age_seconds` (from when this process
received it, or read it from Redis); past that, or for a symbol never received, the quote is
read from Redis as before and kept. Pub/sub loses messages only across a reconnect, so the
mirror is as new as Redis give or take a publish's delivery, and at worst (a lost batch) lags
it by `max_age_seconds`. Entries only move forward in source time, as Redis does: two
quote-cache processes may publish out of order.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Protocol

from services.market_data.marketdata import Quote
from services.market_data.quote_store import QuoteStore


class HasQuote(Protocol):
    @property
    def quote(self) -> Quote: ...


class _Known:
    """A quote read from Redis (already decoded)."""

    __slots__ = ("quote",)

    def __init__(self, quote: Quote) -> None:
        self.quote = quote


class _Entry:
    __slots__ = ("received", "source", "timestamp_ns")

    def __init__(self, source: HasQuote, timestamp_ns: int, received: float) -> None:
        self.source = source
        self.timestamp_ns = timestamp_ns
        self.received = received


class QuoteMirror:
    def __init__(
        self,
        store: QuoteStore,
        max_age_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._max_age = max_age_seconds
        self._clock = clock
        self._latest: dict[str, _Entry] = {}
        self.hits = 0
        self.misses = 0

    @property
    def enabled(self) -> bool:
        return self._max_age > 0

    def __len__(self) -> int:
        return len(self._latest)

    def offer(self, symbol: str, timestamp_ns: int, source: HasQuote) -> None:
        """A published quote (`source.quote` decodes it, once, when first asked for)."""
        if self._max_age <= 0:
            return
        held = self._latest.get(symbol)
        now = self._clock()
        if held is None or timestamp_ns > held.timestamp_ns:
            self._latest[symbol] = _Entry(source, timestamp_ns, now)
        elif timestamp_ns == held.timestamp_ns:
            if held.source is source or held.source.quote == source.quote:
                held.received = now  # the same quote again: still current (and the same object)
            else:  # another quote of the same source time: the later one wins, as in Redis
                self._latest[symbol] = _Entry(source, timestamp_ns, now)
        # else: older than what is held (Redis kept the newer one too)

    async def read(self, symbols: Sequence[str]) -> list[Quote | None]:
        """Quotes in the order asked: from the mirror while fresh, the rest from Redis in one
        round trip (and kept)."""
        now = self._clock()
        latest, max_age = self._latest, self._max_age
        found: list[Quote | None] = []
        missing: list[int] = []
        for i, symbol in enumerate(symbols):
            held = latest.get(symbol)
            if held is not None and now - held.received <= max_age:
                found.append(held.source.quote)
            else:
                found.append(None)
                missing.append(i)
        self.hits += len(symbols) - len(missing)
        if not missing:
            return found
        self.misses += len(missing)
        fetched = await self._store.read([symbols[i] for i in missing])
        for i, quote in zip(missing, fetched, strict=True):
            found[i] = quote
            if quote is not None:
                self.offer(quote.symbol, quote.timestamp_ns, _Known(quote))
        return found
