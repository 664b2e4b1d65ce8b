"""Quote cache: a consumer group on the quote streams that keeps `quote:{SYMBOL}` current.

Per window (`quote_window_ms`, 50 ms by default) it coalesces each symbol to its newest quote
(last write wins, by source time), writes them all in one round trip, publishes the window's batch
on the `md:quotes` channel for every API process, and only then acknowledges what it read.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from redis.exceptions import RedisError

from services.infra.redis import RedisClient, is_cluster, queue_publish
from services.infra.settings import Settings
from services.infra.streams import (
    ConsumerGroup,
    StreamMessage,
    consumer_name,
    partition_of,
    quote_streams,
)
from services.market_data.marketdata import FIELD_SEPARATOR, RECORD_SEPARATOR
from services.market_data.quote_store import QuoteStore, partition_quotes_channel, quotes_channel
from workers.metrics import (
    GROUPS_RECREATED,
    QUOTE_WINDOW_SECONDS,
    QUOTES_STALE,
    QUOTES_WRITTEN,
    SOURCE_TO_CACHE_SECONDS,
    LogOncePerKind,
)

log = logging.getLogger("tradeql.quotes")
GROUP = "quotes"
READ_COUNT = 200
IDLE_BLOCK_MS = 1000
LATENCY_SAMPLE_EVERY = 16
FIELD_COUNT = 8
CLAIM_EVERY_SECONDS = 30.0


def _is_count(text: str) -> bool:
    return text.isascii() and text.isdigit()  # isdigit alone takes '²'


def _is_price(text: str) -> bool:
    whole, _, fraction = text.partition(".")
    return _is_count(whole) and (not fraction or _is_count(fraction))


def well_formed(fields: list[str]) -> bool:
    """symbol|bid|ask|bid_size|ask_size|last|volume|ts, with numbers where numbers belong: a
    record the API could not read back must never reach quote:{SYMBOL}."""
    return (
        len(fields) == FIELD_COUNT
        and bool(fields[0])
        and all(_is_price(fields[i]) for i in (1, 2, 5))
        and all(_is_count(fields[i]) for i in (3, 4, 6, 7))
    )


@dataclass
class Window:
    """What one window has read: the newest record per symbol, and the messages to ack."""

    records: dict[str, list[str]] = field(default_factory=dict)
    messages: list[StreamMessage] = field(default_factory=list)

    def absorb(self, messages: list[StreamMessage], report: LogOncePerKind) -> None:
        self.messages.extend(messages)
        records = self.records
        for message in messages:
            for line in message.fields.get("q", "").split(RECORD_SEPARATOR):
                fields = line.split(FIELD_SEPARATOR)
                if len(fields) != FIELD_COUNT or not _is_count(fields[7]):
                    if line:
                        report("bad_stream_record", line[:80])
                    continue
                held = records.get(fields[0])
                if held is None or int(held[7]) <= int(fields[7]):
                    records[fields[0]] = fields


class QuoteCache:
    def __init__(self, redis: RedisClient, settings: Settings) -> None:
        self.redis = redis
        self.store = QuoteStore(redis)
        self.window_seconds = settings.quote_window_ms / 1000
        self.group = ConsumerGroup(
            redis, GROUP, quote_streams(settings.quote_partitions), consumer_name(GROUP)
        )
        self.report = LogOncePerKind("quote-cache")
        # A cluster: each partition's quotes on its own sharded channel (None: one channel).
        self.partitions_published = settings.quote_partitions if is_cluster(redis) else None

    async def run(self, stop: asyncio.Event) -> None:
        await self.group.ensure()
        window = Window()
        window.absorb(await self.group.claim_abandoned(), self.report)
        next_claim = time.monotonic() + CLAIM_EVERY_SECONDS
        while not stop.is_set():
            try:
                if time.monotonic() >= next_claim:  # a consumer that died since we started
                    window.absorb(await self.group.claim_abandoned(), self.report)
                    next_claim = time.monotonic() + CLAIM_EVERY_SECONDS
                await self._fill(window, stop)
                if window.messages:
                    await self.flush(window)
                    window = Window()
            except (RedisError, OSError) as exc:
                log.warning("redis unavailable (%s); retrying", exc)
                await asyncio.sleep(0.5)
        await self.group.close()
        if window.messages:  # shutting down: write and ack what is held
            await self.flush(window)

    async def _fill(self, window: Window, stop: asyncio.Event) -> None:
        """Block until something arrives, then keep reading until the window closes."""
        created = self.group.groups_created
        messages = await self.group.read(count=READ_COUNT, block_ms=IDLE_BLOCK_MS)
        if self.group.groups_created != created:
            GROUPS_RECREATED.labels(GROUP).inc()
        if not messages:
            return
        window.absorb(messages, self.report)
        deadline = time.monotonic() + self.window_seconds
        while not stop.is_set():
            remaining_ms = int((deadline - time.monotonic()) * 1000)
            if remaining_ms <= 0:
                return
            window.absorb(
                await self.group.read(count=READ_COUNT, block_ms=remaining_ms), self.report
            )

    async def _publish_per_partition(self, records: list[list[str]]) -> None:
        assert self.partitions_published is not None
        by_partition: dict[int, list[str]] = {}
        for fields in records:
            partition = partition_of(fields[0], self.partitions_published)
            by_partition.setdefault(partition, []).append(FIELD_SEPARATOR.join(fields))
        async with self.redis.pipeline(transaction=False) as pipe:
            for partition, lines in by_partition.items():
                queue_publish(
                    pipe, partition_quotes_channel(partition), RECORD_SEPARATOR.join(lines)
                )
            await pipe.execute()

    async def flush(self, window: Window) -> None:
        started = time.perf_counter()
        # Full validation only for what survived coalescing: most records never get here.
        records = []
        for fields in window.records.values():
            if well_formed(fields):
                records.append(fields)
            else:
                self.report("bad_stream_record", FIELD_SEPARATOR.join(fields)[:80])
        written = await self.store.write_records(records)
        if written and self.partitions_published is None:
            payload = RECORD_SEPARATOR.join(FIELD_SEPARATOR.join(records[i]) for i in written)
            await self.redis.publish(quotes_channel(), payload)
        elif written:
            await self._publish_per_partition([records[i] for i in written])
        await self.group.ack(window.messages)
        now_ns = time.time_ns()
        for i in written[::LATENCY_SAMPLE_EVERY]:
            SOURCE_TO_CACHE_SECONDS.observe((now_ns - int(records[i][7])) / 1e9)
        QUOTES_WRITTEN.inc(len(written))
        QUOTES_STALE.inc(len(records) - len(written))
        QUOTE_WINDOW_SECONDS.observe(time.perf_counter() - started)
