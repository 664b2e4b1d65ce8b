"""`services/market_data/quote_mirror.py`: an API process's copy of the newest quotes, against the real Redis
(for what it falls back to) and through the quote hub (what feeds it)."""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal

import pytest

from services.infra.container import Services
from services.infra.settings import Settings
from services.market_data.marketdata import Quote, encode_batch, encode_quote, record_timestamp_ns
from services.market_data.quote_hub import QuoteHub
from services.market_data.quote_mirror import QuoteMirror
from services.market_data.quote_store import quotes_channel
from tests.clocks import ManualClock
from tests.trading import unique_symbol

MAX_AGE = 2.0


class Known:
    def __init__(self, quote: Quote) -> None:
        self.quote = quote


def a_quote(symbol: str, last: str, ts: int) -> Quote:
    price = Decimal(last)
    return Quote(symbol, price, price + Decimal("0.02"), 100, 100, price, 1000, ts)


class CountingStore:
    """The real QuoteStore, counting what the mirror asks of Redis."""

    def __init__(self, services: Services) -> None:
        self.real = services.quote_store
        self.asked: list[list[str]] = []

    async def read(self, symbols: list[str]) -> list[Quote | None]:
        self.asked.append(list(symbols))
        return await self.real.read(symbols)


@pytest.fixture
def store(services: Services) -> CountingStore:
    return CountingStore(services)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def mirror(store: CountingStore, clock: ManualClock) -> QuoteMirror:
    return QuoteMirror(store, MAX_AGE, clock=clock)  # type: ignore[arg-type]


def offer(mirror: QuoteMirror, quote: Quote) -> None:
    mirror.offer(quote.symbol, quote.timestamp_ns, Known(quote))


def test_the_source_time_is_the_records_last_field() -> None:
    assert record_timestamp_ns(encode_quote(a_quote("AAA", "1.00", 1_733_000_000_123_456_789))) == (
        1_733_000_000_123_456_789
    )


async def test_a_fresh_quote_is_served_without_redis(
    services: Services, mirror: QuoteMirror, store: CountingStore, clock: ManualClock
) -> None:
    symbol = unique_symbol("M")
    await services.quote_store.write([a_quote(symbol, "10.00", 1)])
    offer(mirror, a_quote(symbol, "11.00", 2))  # published after Redis has it, as the cache does
    clock.now += MAX_AGE
    assert (await mirror.read([symbol]))[0] == a_quote(symbol, "11.00", 2)
    assert store.asked == []


async def test_past_its_age_a_quote_is_read_from_redis_again_and_kept(
    services: Services, mirror: QuoteMirror, store: CountingStore, clock: ManualClock
) -> None:
    symbol = unique_symbol("M")
    offer(mirror, a_quote(symbol, "11.00", 2))
    await services.quote_store.write([a_quote(symbol, "12.00", 3)])  # its publish was lost
    clock.now += MAX_AGE + 0.001
    assert (await mirror.read([symbol]))[0] == a_quote(symbol, "12.00", 3)
    assert store.asked == [[symbol]]
    assert (await mirror.read([symbol]))[0] == a_quote(symbol, "12.00", 3)
    assert store.asked == [[symbol]]  # kept: read once


async def test_symbols_never_received_are_read_in_one_round_trip_in_the_order_asked(
    services: Services, mirror: QuoteMirror, store: CountingStore
) -> None:
    held, unknown_a, unknown_b, absent = (unique_symbol("M") for _ in range(4))
    offer(mirror, a_quote(held, "1.00", 5))
    await services.quote_store.write([a_quote(unknown_a, "2.00", 5), a_quote(unknown_b, "3.00", 5)])
    read = await mirror.read([unknown_a, held, absent, unknown_b])
    assert [q.last if q else None for q in read] == [
        Decimal("2.00"),
        Decimal("1.00"),
        None,
        Decimal("3.00"),
    ]
    assert store.asked == [[unknown_a, absent, unknown_b]]
    await mirror.read([unknown_a, unknown_b])
    assert len(store.asked) == 1
    await mirror.read([absent])  # a symbol without a quote is asked again: it may have one now
    assert store.asked[-1] == [absent]


async def test_an_older_quote_is_not_served_after_a_newer_one(
    mirror: QuoteMirror, store: CountingStore
) -> None:
    symbol = unique_symbol("M")
    offer(mirror, a_quote(symbol, "2.00", 20))
    offer(mirror, a_quote(symbol, "1.00", 10))
    assert (await mirror.read([symbol]))[0] == a_quote(symbol, "2.00", 20)
    assert store.asked == []


async def test_the_same_quote_again_counts_as_current(
    services: Services, mirror: QuoteMirror, store: CountingStore, clock: ManualClock
) -> None:
    symbol = unique_symbol("M")
    quote = a_quote(symbol, "4.00", 40)
    offer(mirror, quote)
    clock.now += MAX_AGE - 0.5
    offer(mirror, quote)  # e.g. read back from Redis by a request: nothing newer exists
    clock.now += 1.0
    assert (await mirror.read([symbol]))[0] == quote
    assert store.asked == []


async def test_of_two_quotes_with_one_source_time_the_later_wins_as_in_redis(
    mirror: QuoteMirror, store: CountingStore
) -> None:
    """A trade print and a book update stamped alike become two quotes of one source time;
    Redis keeps the later one written, and so must the mirror."""
    symbol = unique_symbol("M")
    first, later = a_quote(symbol, "10.00", 70), a_quote(symbol, "10.05", 70)
    offer(mirror, first)
    offer(mirror, later)
    assert await mirror.read([symbol]) == [later]
    kept = mirror._latest[symbol].source
    offer(mirror, a_quote(symbol, "10.05", 70))  # the same quote read back: the same object
    assert mirror._latest[symbol].source is kept
    assert store.asked == []


async def test_turned_off_it_always_reads_redis_and_keeps_nothing(
    services: Services, store: CountingStore
) -> None:
    mirror = QuoteMirror(store, 0)  # type: ignore[arg-type]
    symbol = unique_symbol("M")
    await services.quote_store.write([a_quote(symbol, "5.00", 50)])
    offer(mirror, a_quote(symbol, "6.00", 60))
    assert (await mirror.read([symbol]))[0] == a_quote(symbol, "5.00", 50)
    await mirror.read([symbol])
    assert store.asked == [[symbol], [symbol]]
    assert len(mirror) == 0 and not mirror.enabled


async def test_the_hub_feeds_the_mirror_every_published_symbol_decoded_once(
    services: Services, settings: Settings
) -> None:
    """The mirror gets every record of a batch, subscribed to or not; a subscriber and the
    mirror share one decoded quote."""
    mirror = QuoteMirror(services.quote_store, MAX_AGE)
    hub = QuoteHub(services.broadcast, mirror)
    watched, unwatched = unique_symbol("M"), unique_symbol("M")
    batch = [a_quote(watched, "7.00", 70), a_quote(unwatched, "8.00", 80)]
    with hub.subscribe([watched]) as subscription:
        hub.dispatch(encode_batch(batch))
        (event,) = await subscription.next_events()
    assert await mirror.read([watched, unwatched]) == batch
    assert mirror._latest[watched].source is event
    assert mirror.hits == 2 and mirror.misses == 0


async def test_a_record_without_a_source_time_is_skipped_not_the_batch(
    services: Services,
) -> None:
    mirror = QuoteMirror(services.quote_store, MAX_AGE)
    hub = QuoteHub(services.broadcast, mirror)
    good = a_quote(unique_symbol("M"), "9.00", 90)
    hub.dispatch("BROKEN|1|2|3|4|5|6|x\n" + encode_quote(good))
    assert "BROKEN" not in mirror._latest
    assert await mirror.read([good.symbol]) == [good]


async def test_an_api_process_values_at_what_was_published_through_pub_sub(
    services: Services, settings: Settings
) -> None:
    """End to end over Redis pub/sub: the container wires the mirror into the hub, and the
    published quote reaches it without anyone reading Redis."""
    live = Services.from_settings(settings.model_copy(update={"quote_mirror_max_age_seconds": 5}))
    await live.start_live()
    try:
        symbol = unique_symbol("M")
        quote = a_quote(symbol, "13.00", time.time_ns())
        for _ in range(100):  # until the hub's subscription is in place
            await services.redis.publish(quotes_channel(), encode_quote(quote))
            await asyncio.sleep(0.02)
            if symbol in live.quote_mirror._latest:
                break
        # Redis itself never had this quote: only pub/sub can have put it there.
        assert await services.quote_store.read([symbol]) == [None]
        assert await live.quote_mirror.read([symbol]) == [quote]
    finally:
        await live.close()
