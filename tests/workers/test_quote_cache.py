"""The quote cache worker, run for real: streams in, `quote:{SYMBOL}` hashes and the `md:quotes`
channel out, with coalescing, last-write-wins by source time, acknowledgement, and recovery from a
flushed Redis."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from decimal import Decimal

import pytest
from prometheus_client import REGISTRY
from redis.asyncio import Redis
from redis.asyncio.client import PubSub

from services.infra.container import Services
from services.infra.settings import Settings
from services.infra.streams import ConsumerGroup, partition_of, quote_stream, quote_streams
from services.market_data.marketdata import FIELD_SEPARATOR, RECORD_SEPARATOR, Quote, encode_quote
from services.market_data.quote_store import QuoteStore, quote_key, quotes_channel
from workers.feed import StreamPublisher
from workers.quotes import GROUP, QuoteCache, well_formed

# Realistic source times: nanoseconds in 2026, far above 2**53.
T = 1_795_000_000_000_000_000


def quote(symbol: str, ts: int, last: str = "10.00", volume: int = 100) -> Quote:
    price = Decimal(last)
    return Quote(symbol, price - Decimal("0.01"), price + Decimal("0.01"), 3, 4, price, volume, ts)


def sample(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


async def eventually(predicate: Callable[[], object], within: float = 5) -> None:
    """Poll `predicate` (sync or async) until it is truthy, or fail after `within` seconds."""
    deadline = time.monotonic() + within
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


async def stored(services: Services, symbol: str) -> Quote | None:
    return (await services.quote_store.read([symbol]))[0]


async def pending(redis: Redis, settings: Settings) -> int:
    """Messages the quote cache's group read and did not acknowledge, over all partitions."""
    total = 0
    for stream in quote_streams(settings.quote_partitions):
        total += (await redis.xpending(stream, GROUP))["pending"]
    return total


@asynccontextmanager
async def running_cache(services: Services, settings: Settings) -> AsyncIterator[QuoteCache]:
    """A QuoteCache task, stopped (and awaited) on exit."""
    cache = QuoteCache(services.redis, settings)
    # The group is created at the streams' end ("$"): make sure it exists before producing.
    await cache.group.ensure()
    stop = asyncio.Event()
    task = asyncio.create_task(cache.run(stop))
    try:
        yield cache
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)


@asynccontextmanager
async def subscribed(settings: Settings) -> AsyncIterator[PubSub]:
    """A pubsub on its own connection, subscribed to the quotes channel before anything is produced."""
    assert settings.redis_url is not None
    client = Redis.from_url(settings.redis_url, decode_responses=True)
    pubsub = client.pubsub()
    await pubsub.subscribe(quotes_channel())
    confirmation = await pubsub.get_message(timeout=2)
    assert confirmation is not None and confirmation["type"] == "subscribe"
    try:
        yield pubsub
    finally:
        await pubsub.aclose()
        await client.aclose()


async def published_records(pubsub: PubSub, symbol: str, seconds: float) -> list[list[str]]:
    """For `seconds`, each published batch's records of `symbol` (a list per batch that had any)."""
    batches: list[list[str]] = []
    deadline = time.monotonic() + seconds
    while (remaining := deadline - time.monotonic()) > 0:
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=remaining)
        if message is None:
            continue
        records = [
            r
            for r in message["data"].split(RECORD_SEPARATOR)
            if r.split(FIELD_SEPARATOR)[0] == symbol
        ]
        if records:
            batches.append(records)
    return batches


async def test_a_window_coalesces_a_symbol_to_its_newest_quote(
    services: Services, settings: Settings
) -> None:
    slow = settings.model_copy(update={"quote_window_ms": 300})
    publisher = StreamPublisher(services.redis, settings, "test")
    q1, q2, q3 = (quote("QCA1", T + i, f"10.0{i}", 100 + i) for i in (1, 2, 3))
    written_before = sample("tradeql_quotes_written_total")
    async with subscribed(settings) as pubsub, running_cache(services, slow):
        # Three stream entries inside one window; the newest by source time arrives second.
        for q in (q1, q3, q2):
            assert await publisher.publish([q])
        await eventually(lambda: stored(services, "QCA1"))
        assert await stored(services, "QCA1") == q3
        # Long enough for a second window to show up if the three were not coalesced.
        batches = await published_records(pubsub, "QCA1", 0.6)
        assert batches == [[encode_quote(q3)]]
        assert sample("tradeql_quotes_written_total") == written_before + 1
        await eventually(lambda: _none_pending(services, settings))


async def _none_pending(services: Services, settings: Settings) -> bool:
    return await pending(services.redis, settings) == 0


async def test_an_older_quote_arriving_later_never_overwrites_a_newer_one(
    services: Services, settings: Settings
) -> None:
    publisher = StreamPublisher(services.redis, settings, "test")
    newer = quote("QCL1", T + 1, "20.02")
    older = quote("QCL1", T, "20.01")  # 1 ns older: below a double's resolution at this scale
    stale_before = sample("tradeql_quotes_stale_total")
    async with subscribed(settings) as pubsub, running_cache(services, settings):
        assert await publisher.publish([newer])
        await eventually(lambda: stored(services, "QCL1"))
        assert await published_records(pubsub, "QCL1", 0.2) == [[encode_quote(newer)]]

        # A later window brings the older one, then a marker: once the marker is stored, the
        # older quote has been through the cache too.
        assert await publisher.publish([older])
        assert await publisher.publish([quote("QCL2", T)])
        await eventually(lambda: stored(services, "QCL2"))
        assert await stored(services, "QCL1") == newer
        assert await published_records(pubsub, "QCL1", 0.2) == []  # nothing published for it
        assert sample("tradeql_quotes_stale_total") == stale_before + 1
        await eventually(lambda: _none_pending(services, settings))


async def test_the_store_guard_compares_source_times_exactly(services: Services) -> None:
    store = QuoteStore(services.redis)
    await services.redis.delete(quote_key("QCG1"))
    early = quote("QCG1", 10**18 - 1, "29.00")  # one digit shorter than T: older
    assert await store.write([early]) == [early]
    base = quote("QCG1", T + 256, "30.00")
    assert await store.write([base]) == [base]
    for ts in (T + 255, T + 1, T, T - 256, 10**18 - 1):
        assert await store.write([quote("QCG1", ts, "1.00")]) == []
    assert await stored_via(store, "QCG1") == base
    same_time = quote("QCG1", T + 256, "30.01")  # the same source time: the later write wins
    assert await store.write([same_time]) == [same_time]
    newer = quote("QCG1", T + 257, "30.02")
    assert await store.write([newer]) == [newer]
    assert await stored_via(store, "QCG1") == newer


async def stored_via(store: QuoteStore, symbol: str) -> Quote | None:
    return (await store.read([symbol]))[0]


async def test_everything_read_is_acknowledged(services: Services, settings: Settings) -> None:
    publisher = StreamPublisher(services.redis, settings, "test")
    symbols = [f"QCK{i}" for i in range(10)]
    async with running_cache(services, settings):
        for round_ in range(3):
            batch = [quote(s, T + round_, f"{40 + round_}.00") for s in symbols]
            assert await publisher.publish(batch)
        # Junk in a stream is skipped, and acknowledged like the rest.
        await services.redis.xadd(quote_stream(0), {"q": "not|a|quote"})

        async def all_current() -> bool:
            quotes = await services.quote_store.read(symbols)
            return all(q is not None and q.timestamp_ns == T + 2 for q in quotes)

        await eventually(all_current)
        await eventually(lambda: _none_pending(services, settings))
    for q in await services.quote_store.read(symbols):
        assert q is not None and q.last == Decimal("42.00")


async def test_the_cache_recovers_after_flushdb(services: Services, settings: Settings) -> None:
    publisher = StreamPublisher(services.redis, settings, "test")
    recreated_labels = {"group": GROUP}
    async with running_cache(services, settings):
        assert await publisher.publish([quote("QCF1", T, "50.00")])
        await eventually(lambda: stored(services, "QCF1"))

        recreated_before = (
            REGISTRY.get_sample_value("tradeql_stream_groups_recreated_total", recreated_labels)
            or 0.0
        )
        await services.redis.flushdb()  # the streams, the consumer group and the hashes go
        assert await stored(services, "QCF1") is None
        assert await publisher.publish([quote("QCF1", T + 1, "50.01")])

        async def back() -> bool:
            q = await stored(services, "QCF1")
            return q is not None and q.last == Decimal("50.01")

        await eventually(back, within=4)
        for stream in quote_streams(settings.quote_partitions):
            groups = await services.redis.xinfo_groups(stream)
            assert GROUP in [g["name"] for g in groups]
        recreated = REGISTRY.get_sample_value(
            "tradeql_stream_groups_recreated_total", recreated_labels
        )
        assert recreated is not None and recreated > recreated_before
        await eventually(lambda: _none_pending(services, settings))


async def test_a_blocked_read_interrupted_by_flushdb_recreates_the_group(
    services: Services, settings: Settings
) -> None:
    """FLUSHDB while XREADGROUP blocks: Redis answers that the key is gone (UNBLOCKED on 7.0),
    which must read as "no messages, group created again", not as an error."""
    streams = [quote_stream(p) for p in range(settings.quote_partitions)]
    group = ConsumerGroup(services.redis, "qc-flush-test", streams, "c1")
    await group.ensure()
    created = group.groups_created
    reading = asyncio.create_task(group.read(count=10, block_ms=3000))
    await asyncio.sleep(0.1)  # let it block
    await services.redis.flushdb()
    assert await asyncio.wait_for(reading, 2) == []
    assert group.groups_created == created + len(streams)
    stream = quote_stream(partition_of("QCU1", settings.quote_partitions))
    await services.redis.xadd(stream, {"q": encode_quote(quote("QCU1", T))})
    messages = await group.read(count=10, block_ms=1000)
    assert [m.fields["q"] for m in messages] == [encode_quote(quote("QCU1", T))]
    for s in streams:
        await services.redis.xgroup_destroy(s, "qc-flush-test")


async def test_on_stop_the_cache_writes_and_acks_what_it_holds(
    services: Services, settings: Settings
) -> None:
    long_window = settings.model_copy(update={"quote_window_ms": 1500})
    cache = QuoteCache(services.redis, long_window)
    await cache.group.ensure()
    stop = asyncio.Event()
    task = asyncio.create_task(cache.run(stop))
    try:
        publisher = StreamPublisher(services.redis, settings, "test")
        assert await publisher.publish([quote("QCS1", T, "60.00")])
        # Read (pending) but not yet written: the window is still open.
        await eventually(lambda: _pending_is(services, settings, 1))
        assert await stored(services, "QCS1") is None
        stop.set()
        await asyncio.wait_for(task, 3)
    finally:
        stop.set()
        if not task.done():
            task.cancel()
    assert await stored(services, "QCS1") == quote("QCS1", T, "60.00")
    assert await pending(services.redis, settings) == 0


async def _pending_is(services: Services, settings: Settings, count: int) -> bool:
    return await pending(services.redis, settings) == count


async def test_a_corrupt_source_time_is_skipped_not_fatal(
    services: Services, settings: Settings
) -> None:
    """`str.isdigit` accepts '²', which `int` refuses: such a record must be counted and skipped
    without taking the worker down, and the good records around it still land."""
    good = quote("QCX1", T, "70.00")
    bad = FIELD_SEPARATOR.join(["QCX1", "1", "1", "1", "1", "1", "1", "17²"])
    payload = RECORD_SEPARATOR.join([encode_quote(good), bad, encode_quote(quote("QCX2", T))])
    labels = {"source": "quote-cache", "kind": "bad_stream_record"}
    skipped_before = REGISTRY.get_sample_value("tradeql_feed_malformed_total", labels) or 0.0
    async with running_cache(services, settings):
        await services.redis.xadd(quote_stream(0), {"q": payload})
        await eventually(lambda: stored(services, "QCX2"))
        assert await stored(services, "QCX1") == good
        await eventually(lambda: _none_pending(services, settings))
    assert REGISTRY.get_sample_value("tradeql_feed_malformed_total", labels) == skipped_before + 1


async def test_every_message_a_dead_consumer_left_pending_is_claimed(
    services: Services,
) -> None:
    """The workers claim abandoned messages once, at start: all of them, not one page."""
    stream = "md:test:claim"
    await services.redis.delete(stream)
    for i in range(250):
        await services.redis.xadd(stream, {"q": encode_quote(quote("QCC1", T + i))})
    dead = ConsumerGroup(services.redis, "qc-claim-test", [stream], "dead")
    await dead.ensure(start_id="0")
    assert len(await dead.read(count=1000, block_ms=100)) == 250  # read, never acknowledged
    heir = ConsumerGroup(services.redis, "qc-claim-test", [stream], "heir", claim_idle_ms=0)
    claimed = await heir.claim_abandoned()
    assert [m.fields["q"] for m in claimed] == [
        encode_quote(quote("QCC1", T + i)) for i in range(250)
    ]
    await heir.ack(claimed)
    assert (await services.redis.xpending(stream, "qc-claim-test"))["pending"] == 0
    await services.redis.delete(stream)


@pytest.mark.parametrize(
    ("record", "ok"),
    [
        ("AAPL|189.81|189.85|100|200|189.83|5000|1764000000000000000", True),
        ("AAPL|abc|189.85|100|200|189.83|5000|1764000000000000000", False),
        ("AAPL|189.81|189.85|1.5|200|189.83|5000|1764000000000000000", False),
        ("AAPL|189.81|189.85|100|200|-1|5000|1764000000000000000", False),
        ("|189.81|189.85|100|200|189.83|5000|1764000000000000000", False),
        ("AAPL|189.81|189.85|100|200|189.83|5000", False),
        ("AAPL|1.8e2|189.85|100|200|189.83|5000|1764000000000000000", False),
    ],
)
def test_only_records_the_api_can_read_back_are_stored(record: str, ok: bool) -> None:
    assert well_formed(record.split("|")) is ok
