"""Feed handler: normalizes quotes from a source and appends them to the partitioned streams.

Sources: `sim` (the market simulator), `tcp HOST:PORT` (the fixed-width line feed) and
`replay FILE` (an IEX TOPS 1.6 capture). Quotes are batched for `feed_batch_ms` and written as one
stream entry per partition per batch, `MAXLEN ~` trimmed. While Redis fails, a circuit breaker
(purgatory) opens and quotes are dropped and counted, never queued without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from purgatory import AsyncCircuitBreakerFactory
from purgatory.domain.model import OpenedState
from redis.exceptions import RedisError

from services.infra.container import Services
from services.infra.redis import RedisClient
from services.infra.settings import Settings
from services.infra.streams import partition_of, quote_stream
from services.market_data.marketdata import Quote, QuoteBook, encode_batch
from workers.metrics import (
    FEED_BREAKER_OPEN,
    FEED_DROPPED,
    FEED_QUOTES,
    FEED_RECONNECTS,
    LogOncePerKind,
)
from workers.sources.iex import read_pcap
from workers.sources.linefeed import MalformedRecord, parse_line, read_lines
from workers.sources.sim import SimulatedMarket

log = logging.getLogger("tradeql.feed")
BREAKER = "redis-streams"


class StreamPublisher:
    """Appends batches of quotes to `md:quotes:{p}`, one entry per partition per batch."""

    def __init__(self, redis: RedisClient, settings: Settings, source: str) -> None:
        self._redis = redis
        self._partitions = settings.quote_partitions
        self._maxlen = settings.quote_stream_maxlen
        self._source = source
        self._breakers = AsyncCircuitBreakerFactory(
            default_threshold=settings.feed_redis_breaker_threshold,
            default_ttl=settings.feed_redis_breaker_reset_seconds,
        )

    async def publish(self, quotes: Sequence[Quote]) -> bool:
        if not quotes:
            return True
        by_partition: dict[int, list[Quote]] = defaultdict(list)
        for quote in quotes:
            by_partition[partition_of(quote.symbol, self._partitions)].append(quote)
        breaker = await self._breakers.get_breaker(BREAKER)
        try:
            async with breaker:
                async with self._redis.pipeline(transaction=False) as pipe:
                    for partition, batch in by_partition.items():
                        pipe.xadd(
                            quote_stream(partition),
                            {"q": encode_batch(batch)},
                            maxlen=self._maxlen,
                            approximate=True,
                        )
                    await pipe.execute()
        except OpenedState:
            FEED_BREAKER_OPEN.set(1)
            FEED_DROPPED.labels("redis_breaker_open").inc(len(quotes))
            return False
        except (RedisError, OSError) as exc:
            FEED_DROPPED.labels("redis_error").inc(len(quotes))
            FEED_BREAKER_OPEN.set(1 if breaker.context.state == "opened" else 0)
            log.warning("could not append %d quotes to the streams: %s", len(quotes), exc)
            return False
        FEED_BREAKER_OPEN.set(0)
        FEED_QUOTES.labels(self._source).inc(len(quotes))
        return True


async def pump(
    batches: AsyncIterator[list[Quote]], publisher: StreamPublisher, stop: asyncio.Event
) -> None:
    async for batch in batches:
        await publisher.publish(batch)
        if stop.is_set():
            return


async def sim_batches(
    symbols: Sequence[str], settings: Settings, seed: int | None, batch_ms: int
) -> AsyncIterator[list[Quote]]:
    market = SimulatedMarket(symbols, seed=seed, rate_per_symbol=settings.feed_sim_rate)
    async for batch in market.stream(batch_interval=batch_ms / 1000):
        yield batch


@dataclass(frozen=True, slots=True)
class _SourceEnded:
    error: Exception | None = None


async def batched(
    quotes: AsyncIterator[Quote], batch_ms: int, max_batch: int = 5000
) -> AsyncIterator[list[Quote]]:
    """Group a stream of single quotes into batches: each is handed over `batch_ms` after its
    first quote arrived, even if the source has gone quiet meanwhile, or as soon as it holds
    `max_batch`. The source is read by its own task, so a quiet source never holds a batch back;
    an error of the source is raised after the quotes read before it have been handed over."""
    queue: asyncio.Queue[Quote | _SourceEnded] = asyncio.Queue(maxsize=max_batch)

    async def produce() -> None:
        try:
            async for quote in quotes:
                await queue.put(quote)
        except Exception as exc:
            await queue.put(_SourceEnded(exc))
        else:
            await queue.put(_SourceEnded())

    producer = asyncio.create_task(produce(), name="feed-source")
    try:
        ended: _SourceEnded | None = None
        while ended is None:
            first = await queue.get()
            if isinstance(first, _SourceEnded):
                ended = first
                break
            batch = [first]
            deadline = time.monotonic() + batch_ms / 1000
            while len(batch) < max_batch:
                if not queue.empty():
                    if time.monotonic() >= deadline:
                        break
                    item = queue.get_nowait()
                else:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    try:
                        item = await asyncio.wait_for(queue.get(), remaining)
                    except TimeoutError:
                        break
                if isinstance(item, _SourceEnded):
                    ended = item
                    break
                batch.append(item)
            yield batch
        if ended.error is not None:
            raise ended.error
    finally:
        producer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await producer


async def tcp_quotes(
    host: str, port: int, settings: Settings, stop: asyncio.Event
) -> AsyncIterator[Quote]:
    """Quotes from the line feed; reconnects with exponential backoff, forever, until stopped."""
    report = LogOncePerKind("tcp")
    backoff = 0.5
    while not stop.is_set():
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError as exc:
            log.warning(
                "tcp feed %s:%s unreachable (%s); retrying in %.1fs", host, port, exc, backoff
            )
            FEED_RECONNECTS.labels("tcp").inc()
            await _sleep_or_stop(stop, backoff)
            backoff = min(backoff * 2, settings.feed_reconnect_max_seconds)
            continue
        log.info("tcp feed connected to %s:%s", host, port)
        try:
            async for line in read_lines(reader, on_malformed=lambda e: report(e.kind, e.detail)):
                try:
                    quote = parse_line(line, now_ns=time.time_ns())
                except MalformedRecord as err:
                    report(err.kind, err.detail)
                    continue
                backoff = 0.5  # only a feed that delivers earns a quick reconnect
                yield quote
        except (ConnectionError, OSError) as exc:
            log.warning("tcp feed connection lost: %s", exc)
        finally:
            writer.close()
        FEED_RECONNECTS.labels("tcp").inc()
        await _sleep_or_stop(stop, backoff)
        backoff = min(backoff * 2, settings.feed_reconnect_max_seconds)


async def replay_quotes(path: Path, *, paced: bool) -> AsyncIterator[Quote]:
    """Quotes from an IEX TOPS capture, at the recorded pace or as fast as possible."""
    report = LogOncePerKind("replay")
    book = QuoteBook()
    first_capture: int | None = None
    started = time.monotonic()
    for count, item in enumerate(read_pcap(path, on_malformed=report)):
        if paced:
            first_capture = first_capture if first_capture is not None else item.capture_ns
            due = started + (item.capture_ns - first_capture) / 1e9
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        elif count % 1000 == 0:
            await asyncio.sleep(0)  # let the publisher and signals run
        yield book.apply(item.event)


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        pass


def parse_host_port(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    return host, int(port)


async def run_feed(
    services: Services,
    stop: asyncio.Event,
    *,
    source: str,
    address: str | None = None,
    file: Path | None = None,
    paced: bool = True,
    seed: int | None = None,
    limit: int = 0,
) -> None:
    settings = services.settings
    publisher = StreamPublisher(services.redis, settings, source)
    batch_ms = settings.feed_batch_ms
    if source == "sim":
        symbols = await services.securities.active_symbols()
        if limit:
            symbols = symbols[:limit]
        if not symbols:
            log.error("no securities to simulate: run `tradeql securities defaults` first")
            return
        log.info(
            "simulating %d symbols at %.1f updates/s each", len(symbols), settings.feed_sim_rate
        )
        batches = sim_batches(symbols, settings, seed, batch_ms)
    elif source == "tcp":
        assert address is not None
        host, port = parse_host_port(address)
        batches = batched(tcp_quotes(host, port, settings, stop), batch_ms)
    else:
        assert file is not None
        batches = batched(replay_quotes(file, paced=paced), batch_ms)
    runner = asyncio.create_task(pump(batches, publisher, stop))
    stopper = asyncio.create_task(stop.wait())
    await asyncio.wait({runner, stopper}, return_when=asyncio.FIRST_COMPLETED)
    for task in (runner, stopper):
        task.cancel()
    await asyncio.gather(runner, stopper, return_exceptions=True)
    if runner.done() and not runner.cancelled() and runner.exception():
        raise runner.exception()  # type: ignore[misc]
