"""The feed handler: partitioned stream appends, trimming, the Redis circuit breaker, the TCP line
feed client, IEX replay and batching, all against real Redis and real sockets."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from decimal import Decimal
from pathlib import Path
from typing import cast

import pytest
from prometheus_client import REGISTRY
from redis.asyncio import Redis

from services.infra.container import Services
from services.infra.settings import Settings
from services.infra.streams import partition_of, quote_stream
from services.market_data.marketdata import Quote, decode_batch
from tests.workers import iex_capture as cap
from workers.feed import StreamPublisher, batched, replay_quotes, tcp_quotes
from workers.sources.linefeed import format_line

T = 1_795_000_000_000_000_000  # 2026-11-18, in nanoseconds


def quote(
    symbol: str,
    ts: int,
    *,
    last: str = "10.00",
    volume: int = 100,
    bid: str = "9.99",
    ask: str = "10.01",
) -> Quote:
    return Quote(symbol, Decimal(bid), Decimal(ask), 100, 200, Decimal(last), volume, ts)


def sample(name: str, labels: dict[str, str] | None = None) -> float:
    """A Prometheus sample's value; 0 before the labelled child exists."""
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


async def last_id(redis: Redis, stream: str) -> str:
    newest = await redis.xrevrange(stream, count=1)
    return newest[0][0] if newest else "0-0"


async def entries_after(redis: Redis, stream: str, after: str) -> list[tuple[str, dict[str, str]]]:
    return await redis.xrange(stream, min=f"({after}")


# --- StreamPublisher -------------------------------------------------------------------------


async def test_each_quote_goes_to_its_partition_one_entry_per_partition(
    services: Services, settings: Settings
) -> None:
    partitions = settings.quote_partitions
    symbols = [f"FDP{i}" for i in range(12)]
    assert len({partition_of(s, partitions) for s in symbols}) > 1  # the test means something
    quotes = [quote(s, T + i, last=f"{10 + i}.25") for i, s in enumerate(symbols)]
    quotes += [quote(s, T + 100 + i, last=f"{20 + i}.5") for i, s in enumerate(symbols)]
    streams = [quote_stream(p) for p in range(partitions)]
    before = {s: await last_id(services.redis, s) for s in streams}
    published = sample("tradeql_feed_quotes_total", {"source": "test-partitions"})

    publisher = StreamPublisher(services.redis, settings, "test-partitions")
    assert await publisher.publish(quotes) is True

    for p, stream in enumerate(streams):
        entries = await entries_after(services.redis, stream, before[stream])
        expected = [q for q in quotes if partition_of(q.symbol, partitions) == p]
        if not expected:
            assert entries == []
            continue
        assert len(entries) == 1, f"one entry per partition per batch, got {len(entries)}"
        (_id, fields) = entries[0]
        assert set(fields) == {"q"}
        assert decode_batch(fields["q"]) == expected  # the batch's order, exact decimals
    assert sample("tradeql_feed_quotes_total", {"source": "test-partitions"}) == published + 24


async def test_an_empty_batch_appends_nothing(services: Services, settings: Settings) -> None:
    streams = [quote_stream(p) for p in range(settings.quote_partitions)]
    before = {s: await last_id(services.redis, s) for s in streams}
    assert await StreamPublisher(services.redis, settings, "test").publish([]) is True
    for stream in streams:
        assert await entries_after(services.redis, stream, before[stream]) == []


async def test_maxlen_keeps_a_stream_bounded(services: Services, settings: Settings) -> None:
    maxlen = 100
    small = settings.model_copy(update={"quote_stream_maxlen": maxlen})
    publisher = StreamPublisher(services.redis, small, "test-maxlen")
    stream = quote_stream(partition_of("FDM1", settings.quote_partitions))
    appended = 1200
    for i in range(appended):
        assert await publisher.publish([quote("FDM1", T + i, volume=i)])
    length = await services.redis.xlen(stream)
    # `MAXLEN ~` trims whole macro nodes (100 entries by default): never below maxlen, and only
    # a node's worth above it.
    assert maxlen <= length <= 3 * maxlen
    newest = await services.redis.xrevrange(stream, count=1)
    assert decode_batch(newest[0][1]["q"]) == [quote("FDM1", T + appended - 1, volume=appended - 1)]
    oldest = await services.redis.xrange(stream, count=1)
    assert decode_batch(oldest[0][1]["q"])[0].volume >= appended - 3 * maxlen  # oldest went first


# --- the circuit breaker ---------------------------------------------------------------------


async def test_publish_to_a_dead_redis_fails_softly_then_the_breaker_opens(
    settings: Settings,
) -> None:
    threshold = 3
    tuned = settings.model_copy(
        update={"feed_redis_breaker_threshold": threshold, "feed_redis_breaker_reset_seconds": 60}
    )
    dead = Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2)
    publisher = StreamPublisher(dead, tuned, "test-breaker")
    errors = {"reason": "redis_error"}
    opened = {"reason": "redis_breaker_open"}
    errors_before = sample("tradeql_feed_dropped_total", errors)
    opened_before = sample("tradeql_feed_dropped_total", opened)
    two = [quote("FDB1", T), quote("FDB2", T)]
    try:
        for _ in range(threshold):
            assert await publisher.publish(two) is False  # no exception escapes
        assert sample("tradeql_feed_dropped_total", errors) == errors_before + 2 * threshold
        assert sample("tradeql_feed_dropped_total", opened) == opened_before

        three = [*two, quote("FDB3", T)]
        started = time.perf_counter()
        for _ in range(5):
            assert await publisher.publish(three) is False
        assert time.perf_counter() - started < 0.05
        assert sample("tradeql_feed_dropped_total", opened) == opened_before + 15
        assert sample("tradeql_feed_dropped_total", errors) == errors_before + 2 * threshold
        assert sample("tradeql_feed_redis_breaker_open") == 1
    finally:
        await dead.aclose()


async def test_an_open_breaker_does_not_touch_redis_until_its_reset_time(
    settings: Settings,
) -> None:
    """Against a server that accepts and never answers, each failure costs the socket timeout:
    once open, publish returns at once and opens no connection, until the reset time lets one
    call through (it fails again, so the breaker opens again)."""
    accepted: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)
        await reader.read()  # until the client hangs up

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    tuned = settings.model_copy(
        update={"feed_redis_breaker_threshold": 2, "feed_redis_breaker_reset_seconds": 0.6}
    )
    hung = Redis.from_url(f"redis://127.0.0.1:{port}/0", socket_timeout=0.2)
    publisher = StreamPublisher(hung, tuned, "test-breaker")
    batch = [quote("FDB4", T)]
    try:
        for _ in range(2):
            started = time.perf_counter()
            assert await publisher.publish(batch) is False
            assert time.perf_counter() - started >= 0.15  # it did wait for Redis
        connections = len(accepted)
        assert connections >= 1

        started = time.perf_counter()
        for _ in range(20):
            assert await publisher.publish(batch) is False
        assert time.perf_counter() - started < 0.05
        assert len(accepted) == connections

        await asyncio.sleep(0.6)  # past the reset time: one trial call reaches Redis
        started = time.perf_counter()
        assert await publisher.publish(batch) is False
        assert time.perf_counter() - started >= 0.15
        started = time.perf_counter()
        assert await publisher.publish(batch) is False  # the trial failed: open again
        assert time.perf_counter() - started < 0.05
    finally:
        await hung.aclose()
        for writer in accepted:
            writer.close()
        server.close()
        await server.wait_closed()


# --- the TCP line feed -----------------------------------------------------------------------


def line(symbol: str, bid: str, ask: str, last: str, volume: str) -> bytes:
    return (symbol.ljust(10) + "".join(v.rjust(10) for v in (bid, ask, last, volume))).encode()


async def test_tcp_quotes_parses_counts_malformed_and_reconnects(settings: Settings) -> None:
    first = [
        quote("TCA1", 0, bid="10.01", ask="10.03", last="10.02", volume=500),
        quote("TCA2", 0, bid="99.5", ask="99.75", last="99.6", volume=7),
    ]
    second = [quote("TCA3", 0, bid="1.0001", ask="1.0002", last="1.0002", volume=1_000_000)]
    served = 0
    release = asyncio.Event()

    async def feed(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal served
        served += 1
        if served == 1:
            writer.write(
                format_line(first[0])
                + b"not a record\n"  # wrong_length
                + line("TCA9", "1.00", "x", "1.00", "5")  # bad_number
                + b"\n"
                + format_line(first[1])
            )
            await writer.drain()
            writer.close()  # the feed goes away: the client must come back
            return
        writer.write(format_line(second[0]))
        await writer.drain()
        await release.wait()
        writer.close()

    server = await asyncio.start_server(feed, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    kinds = ("wrong_length", "bad_number")
    malformed_before = {
        k: sample("tradeql_feed_malformed_total", {"source": "tcp", "kind": k}) for k in kinds
    }
    reconnects_before = sample("tradeql_feed_reconnects_total", {"source": "tcp"})
    stop = asyncio.Event()
    quotes = cast(AsyncGenerator[Quote, None], tcp_quotes("127.0.0.1", port, settings, stop))
    try:
        before = time.time_ns()
        got = [await asyncio.wait_for(anext(quotes), 3) for _ in range(3)]
        after = time.time_ns()
        for received, sent in zip(got, [*first, *second], strict=True):
            assert (received.symbol, received.bid, received.ask, received.last) == (
                sent.symbol,
                sent.bid,
                sent.ask,
                sent.last,
            )
            assert (received.volume, received.bid_size, received.ask_size) == (sent.volume, 0, 0)
            assert before <= received.timestamp_ns <= after  # stamped on receipt
        assert served == 2
        for kind in kinds:
            labels = {"source": "tcp", "kind": kind}
            assert sample("tradeql_feed_malformed_total", labels) == malformed_before[kind] + 1
        assert sample("tradeql_feed_reconnects_total", {"source": "tcp"}) >= reconnects_before + 1

        stop.set()
        release.set()  # the second connection ends; with stop set the client does not come back
        with pytest.raises(StopAsyncIteration):
            await asyncio.wait_for(anext(quotes), 2)
        assert served == 2
    finally:
        release.set()
        await quotes.aclose()
        server.close()
        await server.wait_closed()


async def test_tcp_quotes_waits_for_a_feed_that_is_not_up_yet(settings: Settings) -> None:
    probe = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = probe.sockets[0].getsockname()[1]
    probe.close()
    await probe.wait_closed()  # the port is free: the first attempts are refused

    async def feed(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(format_line(quote("TCB1", 0)))
        await writer.drain()
        writer.close()

    stop = asyncio.Event()
    quotes = cast(AsyncGenerator[Quote, None], tcp_quotes("127.0.0.1", port, settings, stop))
    first = asyncio.ensure_future(anext(quotes))
    await asyncio.sleep(0.2)
    assert not first.done()
    server = await asyncio.start_server(feed, "127.0.0.1", port)
    try:
        got = await asyncio.wait_for(first, 3)
        assert (got.symbol, got.last) == ("TCB1", Decimal("10.00"))
    finally:
        stop.set()
        await quotes.aclose()
        server.close()
        await server.wait_closed()


# --- IEX replay ------------------------------------------------------------------------------


def capture_frames() -> list[bytes]:
    B = cap.BASE_NS
    return [
        cap.udp_frame(
            cap.iextp_packet(
                [
                    cap.system_event("O", B),
                    cap.quote_update("ZIEXA", "187.2500", 300, "187.2600", 200, B + 10),
                ],
                first_sequence=1,
            )
        ),
        cap.udp_frame(
            cap.iextp_packet(
                [
                    cap.trade_report("ZIEXA", "187.2550", 100, B + 20),
                    cap.trade_report("ZIEXA", "187.2600", 50, B + 30, trade_id=2),
                ],
                first_sequence=3,
            )
        ),
        cap.udp_frame(
            cap.iextp_packet(
                [
                    cap.trade_report("ZIEXB", "5.0000", 10, B + 40),
                    cap.quote_update("ZIEXA", "187.2700", 100, "187.2800", 400, B + 50),
                ],
                first_sequence=5,
            )
        ),
    ]


def expected_replay() -> list[Quote]:
    B = cap.BASE_NS
    d = Decimal
    return [
        Quote("ZIEXA", d("187.25"), d("187.26"), 300, 200, d("0.00"), 0, B + 10),
        Quote("ZIEXA", d("187.25"), d("187.26"), 300, 200, d("187.255"), 100, B + 20),
        Quote("ZIEXA", d("187.25"), d("187.26"), 300, 200, d("187.26"), 150, B + 30),
        Quote("ZIEXB", d("0.00"), d("0.00"), 0, 0, d("5.00"), 10, B + 40),
        Quote("ZIEXA", d("187.27"), d("187.28"), 100, 400, d("187.26"), 150, B + 50),
    ]


async def test_replay_merges_book_updates_and_trades(tmp_path: Path) -> None:
    path = tmp_path / "tops.pcap"
    path.write_bytes(cap.pcap_file(capture_frames()))
    got = [q async for q in replay_quotes(path, paced=False)]
    assert got == expected_replay()
    assert str(got[1].last) == "187.255"


async def test_paced_replay_keeps_the_recorded_gaps(tmp_path: Path) -> None:
    path = tmp_path / "tops.pcapng"
    gaps = [cap.BASE_NS, cap.BASE_NS + 150_000_000, cap.BASE_NS + 300_000_000]
    path.write_bytes(cap.pcapng_file(capture_frames(), capture_ns=gaps))
    started = time.monotonic()
    got = [q async for q in replay_quotes(path, paced=True)]
    assert time.monotonic() - started >= 0.29
    assert got == expected_replay()


# --- batching --------------------------------------------------------------------------------


async def source(quotes: Sequence[Quote]) -> AsyncIterator[Quote]:
    for q in quotes:
        yield q


async def test_batched_cuts_at_max_batch() -> None:
    quotes = [quote("BAT1", T + i) for i in range(7)]
    batches = [b async for b in batched(source(quotes), batch_ms=10_000, max_batch=3)]
    assert batches == [quotes[:3], quotes[3:6], quotes[6:]]


async def test_batched_yields_a_batch_when_its_time_is_up_even_if_the_source_goes_quiet() -> None:
    """A burst followed by silence must not wait for the next quote to be published."""
    resume = asyncio.Event()
    quotes = [quote("BAT2", T + i) for i in range(3)]

    async def bursty() -> AsyncIterator[Quote]:
        yield quotes[0]
        yield quotes[1]
        await resume.wait()
        yield quotes[2]

    batches = cast(AsyncGenerator[list[Quote], None], batched(bursty(), batch_ms=50))
    try:
        started = time.monotonic()
        assert await asyncio.wait_for(anext(batches), 2) == quotes[:2]
        assert time.monotonic() - started < 1
        resume.set()
        assert await asyncio.wait_for(anext(batches), 2) == quotes[2:]
        with pytest.raises(StopAsyncIteration):
            await asyncio.wait_for(anext(batches), 2)
    finally:
        resume.set()
        await batches.aclose()


async def test_batched_groups_a_steady_trickle_by_time() -> None:
    quotes = [quote("BAT3", T + i) for i in range(12)]

    async def trickle() -> AsyncIterator[Quote]:
        for q in quotes:
            await asyncio.sleep(0.02)
            yield q

    batches = [b async for b in batched(trickle(), batch_ms=70)]
    assert [q for b in batches for q in b] == quotes  # nothing lost, order kept
    assert len(batches) >= 3  # ~240 ms of quotes in 70 ms batches
    assert max(len(b) for b in batches) <= 5


async def test_batched_hands_over_what_it_holds_before_the_source_error() -> None:
    quotes = [quote("BAT4", T + i) for i in range(2)]

    async def failing() -> AsyncIterator[Quote]:
        for q in quotes:
            yield q
        raise OSError("capture unreadable")

    got: list[Quote] = []
    with pytest.raises(OSError, match="capture unreadable"):
        async for batch in batched(failing(), batch_ms=10_000):
            got += batch
    assert got == quotes
