"""Redis Streams: partitioning, and consumer groups that survive a flushed or restarted Redis."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from redis.exceptions import RedisError, ResponseError

from services.infra.keys import ns, tag
from services.infra.redis import RedisClient, slot_groups

log = logging.getLogger("tradeql.streams")


def partition_of(symbol: str, partitions: int) -> int:
    """Stable across processes and restarts (unlike Python's salted `hash`)."""
    return zlib.crc32(symbol.encode()) % partitions


def quote_stream(partition: int) -> str:
    return ns(f"md:quotes:{tag(partition)}")


def quote_streams(partitions: int) -> list[str]:
    return [quote_stream(p) for p in range(partitions)]


def consumer_name(role: str) -> str:
    return f"{role}-{socket.gethostname()}-{os.getpid()}"


def stream_entries(reply: Any) -> Iterator[tuple[str, str, dict[str, str]]]:
    """(stream, entry id, fields) of an XREAD or XREADGROUP reply: a list of [stream, entries]
    pairs (redis-py's shape with its default `legacy_responses`; its type says a dict may come
    too, which only `legacy_responses=False` gives). Entries deleted since a group read them
    (fields None) are left out."""
    for stream, entries in reply or []:
        for entry_id, fields in entries:
            if fields is not None:
                yield stream, entry_id, fields


@dataclass(frozen=True, slots=True)
class StreamMessage:
    stream: str
    id: str
    fields: dict[str, str]


class ConsumerGroup:
    """One consumer in a group over several streams.

    After FLUSHDB or a Redis restart the group is gone: reading answers NOGROUP, and the group is
    created again (at the start of whatever the stream now holds) instead of the worker dying.
    Messages left pending by a consumer that died are claimed after `claim_idle_ms`.

    On a Redis Cluster each stream partition is its own hash slot, and XREADGROUP may name
    streams of one slot only: there a blocking read is kept in flight per slot, and `read`
    returns what the first of them (and any other done by then) brought; the others stay in
    flight for the next call, so nothing they read is dropped and a busy partition never waits
    for an idle one's block to run out.
    """

    def __init__(
        self,
        redis: RedisClient,
        group: str,
        streams: Sequence[str],
        consumer: str,
        *,
        claim_idle_ms: int = 30_000,
    ) -> None:
        self.redis = redis
        self.group = group
        self.streams = list(streams)
        self.consumer = consumer
        self.claim_idle_ms = claim_idle_ms
        self.groups_created = 0
        self._slots = [[self.streams[i] for i in group] for group in slot_groups(redis, streams)]
        self._in_flight: dict[int, asyncio.Task[list[StreamMessage]]] = {}

    async def ensure(self, start_id: str = "$") -> None:
        for stream in self.streams:
            try:
                await self.redis.xgroup_create(stream, self.group, id=start_id, mkstream=True)
                self.groups_created += 1
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    async def read(self, *, count: int, block_ms: int) -> list[StreamMessage]:
        if len(self._slots) > 1:
            return await self._read_per_slot(count, block_ms)
        return await self._read(self.streams, count, block_ms)

    async def _read_per_slot(self, count: int, block_ms: int) -> list[StreamMessage]:
        deadline = time.monotonic() + block_ms / 1000
        while True:
            left_ms = max(1, int((deadline - time.monotonic()) * 1000))
            for i, streams in enumerate(self._slots):
                if i not in self._in_flight:
                    self._in_flight[i] = asyncio.create_task(self._read(streams, count, left_ms))
            await asyncio.wait(
                self._in_flight.values(),
                timeout=left_ms / 1000,
                return_when=asyncio.FIRST_COMPLETED,
            )
            messages: list[StreamMessage] = []
            failure: BaseException | None = None
            for i, task in list(self._in_flight.items()):
                if task.done():
                    del self._in_flight[i]
                    if (error := task.exception()) is not None:
                        failure = failure or error
                    else:
                        messages += task.result()
            if messages:
                return messages
            if failure is not None:
                raise failure
            if time.monotonic() >= deadline:
                return []
            # Only reads that found nothing (begun by an earlier call) ended: wait on.

    async def close(self) -> None:
        """Stop the reads in flight (a cluster's); what they had read stays pending in the
        group, claimed later like a dead consumer's."""
        for task in self._in_flight.values():
            task.cancel()
        for task in self._in_flight.values():
            with contextlib.suppress(asyncio.CancelledError, RedisError, OSError):
                await task
        self._in_flight.clear()

    async def _read(self, streams: Sequence[str], count: int, block_ms: int) -> list[StreamMessage]:
        try:
            reply = await self.redis.xreadgroup(
                self.group,
                self.consumer,
                dict.fromkeys(streams, ">"),
                count=count,
                block=block_ms,
            )
        except ResponseError as exc:
            # NOGROUP: the group is gone. UNBLOCKED: a stream was deleted while this read was
            # blocked on it (Redis 7.0 answers a FLUSHDB so), and its group went with it.
            if "NOGROUP" not in str(exc) and "UNBLOCKED" not in str(exc):
                raise
            log.warning("consumer group %s is gone (Redis flushed?): creating it again", self.group)
            await self.ensure(start_id="0")
            return []
        return [StreamMessage(*entry) for entry in stream_entries(reply)]

    async def claim_abandoned(self, *, count: int = 100) -> list[StreamMessage]:
        """Take over messages another consumer read but never acknowledged (it died)."""
        claimed: list[StreamMessage] = []
        for stream in self.streams:
            cursor = "0-0"
            while True:  # `count` per call; the cursor comes back to 0-0 once all were scanned
                try:
                    cursor, messages, *_ = await self.redis.xautoclaim(
                        stream, self.group, self.consumer, self.claim_idle_ms, cursor, count=count
                    )
                except ResponseError as exc:
                    if "NOGROUP" in str(exc):
                        break
                    raise
                claimed += [StreamMessage(stream, i, f) for i, f in messages if f is not None]
                if cursor in ("0-0", b"0-0"):
                    break
        return claimed

    async def ack(self, messages: Sequence[StreamMessage]) -> None:
        by_stream: dict[str, list[str]] = {}
        for message in messages:
            by_stream.setdefault(message.stream, []).append(message.id)
        if not by_stream:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for stream, ids in by_stream.items():
                pipe.xack(stream, self.group, *ids)
            await pipe.execute()
