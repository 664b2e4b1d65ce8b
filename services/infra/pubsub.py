"""broadcaster over Redis pub/sub, with a backend that survives a Redis restart.

broadcaster's own Redis backend delivers nothing on redis-py 8 and, on any version, stops for good
when its connection drops. This backend keeps the set of channels, reconnects with backoff, and
subscribes again to all of them, so open subscriptions keep receiving after Redis comes back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from broadcaster import Broadcast, Event
from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from services.infra.compat import BroadcastBackend

log = logging.getLogger("tradeql.pubsub")
MAX_BACKOFF_SECONDS = 5.0
# Bounded, so a stalled consumer costs memory up to this many messages, then slows the reader.
QUEUE_SIZE = 10_000
# Told on every channel once the connection is back after a loss: what was published meanwhile
# reached nobody here, so a consumer that must not miss a message (order updates) catches up
# from where it is kept (the outbox); the others ignore it.
RESUBSCRIBED = "\x00tradeql:resubscribed"


class ResilientRedisBackend(BroadcastBackend):
    def __init__(self, url: str) -> None:
        self._url = url
        self._channels: set[str] = set()
        self._has_channels = asyncio.Event()
        self._queue: asyncio.Queue[Event] = asyncio.Queue(maxsize=QUEUE_SIZE)
        self._redis: Redis | None = None
        self._pubsub: PubSub | None = None
        self._listener: asyncio.Task[None] | None = None
        self.reconnects = 0

    async def connect(self) -> None:
        self._redis = Redis.from_url(self._url, decode_responses=True)
        self._listener = asyncio.create_task(self._listen(), name="pubsub-listener")

    async def disconnect(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
        if self._pubsub is not None:
            with contextlib.suppress(RedisError, OSError):
                await self._pubsub.aclose()
        if self._redis is not None:
            await self._redis.aclose()

    async def subscribe(self, channel: str) -> None:
        self._channels.add(channel)
        self._has_channels.set()
        if self._pubsub is not None and self._pubsub.subscribed:
            with contextlib.suppress(RedisError, OSError):  # the listener resubscribes on reconnect
                await self._pubsub.subscribe(channel)

    async def unsubscribe(self, channel: str) -> None:
        self._channels.discard(channel)
        if self._pubsub is not None and self._pubsub.subscribed:
            with contextlib.suppress(RedisError, OSError):
                await self._pubsub.unsubscribe(channel)

    async def publish(self, channel: str, message: Any) -> None:
        assert self._redis is not None, "connect() first"
        await self._redis.publish(channel, message)

    async def next_published(self) -> Event:
        return await self._queue.get()

    async def _listen(self) -> None:
        assert self._redis is not None
        backoff = 0.1
        while True:
            await self._has_channels.wait()
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            self._pubsub = pubsub
            try:
                await pubsub.subscribe(*self._channels)
                if backoff > 0.1:  # back after a loss: tell every channel's consumers
                    for channel in list(self._channels):
                        await self._queue.put(Event(channel, RESUBSCRIBED))
                backoff = 0.1
                while True:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is not None and message["type"] == "message":
                        await self._queue.put(Event(message["channel"], message["data"]))
            except (RedisError, OSError) as exc:
                self.reconnects += 1
                log.warning("pub/sub connection lost (%s); reconnecting in %.1fs", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(max(backoff * 2, 0.2), MAX_BACKOFF_SECONDS)
            finally:
                self._pubsub = None
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()


def create_broadcast(redis_url: str) -> Broadcast:
    return Broadcast(backend=ResilientRedisBackend(redis_url))
