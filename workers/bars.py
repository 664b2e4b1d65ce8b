"""Bars worker: a consumer group on the quote streams that builds one-minute OHLCV bars and
upserts them into PostgreSQL in batches (every `bars_flush_ms`), acknowledging after the commit."""

from __future__ import annotations

import asyncio
import logging
import time
from decimal import Decimal, InvalidOperation

from redis.exceptions import RedisError
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from services.infra.redis import RedisClient
from services.infra.settings import Settings
from services.infra.streams import ConsumerGroup, StreamMessage, consumer_name, quote_streams
from services.market_data.bars import BarBuilder, upsert_bars
from services.market_data.marketdata import FIELD_SEPARATOR, RECORD_SEPARATOR
from workers.metrics import BARS_UPSERTED, LogOncePerKind

log = logging.getLogger("tradeql.bars")
GROUP = "bars"
READ_COUNT = 500
CLAIM_EVERY_SECONDS = 30.0


class BarsWorker:
    def __init__(self, engine: AsyncEngine, redis: RedisClient, settings: Settings) -> None:
        self.engine = engine
        self.builder = BarBuilder()
        self.flush_seconds = settings.bars_flush_ms / 1000
        self.group = ConsumerGroup(
            redis, GROUP, quote_streams(settings.quote_partitions), consumer_name(GROUP)
        )
        self.report = LogOncePerKind("bars")
        self.unacked: list[StreamMessage] = []

    def absorb(self, messages: list[StreamMessage]) -> None:
        self.unacked.extend(messages)
        for message in messages:
            for line in message.fields.get("q", "").split(RECORD_SEPARATOR):
                fields = line.split(FIELD_SEPARATOR)
                try:
                    symbol, last, volume, ts = (
                        fields[0],
                        Decimal(fields[5]),
                        int(fields[6]),
                        int(fields[7]),
                    )
                except (IndexError, ValueError, InvalidOperation):
                    if line:
                        self.report("bad_stream_record", line[:80])
                    continue
                self.builder.apply(symbol, last, volume, ts)

    async def flush(self) -> None:
        bars = self.builder.take_dirty()
        try:
            async with self.engine.begin() as conn:
                await upsert_bars(conn, bars)
        except BaseException:
            for bar in bars:  # keep them for the next try
                self.builder.dirty.setdefault((bar.symbol, bar.start_ns), bar)
            raise
        await self.group.ack(self.unacked)
        self.unacked = []
        BARS_UPSERTED.inc(len(bars))

    async def run(self, stop: asyncio.Event) -> None:
        await self.group.ensure()
        self.absorb(await self.group.claim_abandoned())
        next_flush = time.monotonic() + self.flush_seconds
        next_claim = time.monotonic() + CLAIM_EVERY_SECONDS
        while not stop.is_set():
            try:
                if time.monotonic() >= next_claim:  # a consumer that died since we started
                    self.absorb(await self.group.claim_abandoned())
                    next_claim = time.monotonic() + CLAIM_EVERY_SECONDS
                block_ms = max(1, int((next_flush - time.monotonic()) * 1000))
                self.absorb(await self.group.read(count=READ_COUNT, block_ms=block_ms))
                if time.monotonic() >= next_flush:
                    await self.flush()
                    next_flush = time.monotonic() + self.flush_seconds
            except (RedisError, OSError, DBAPIError) as exc:
                log.warning("bars: %s; retrying", exc)
                await asyncio.sleep(0.5)
        await self.group.close()
        await self.flush()
