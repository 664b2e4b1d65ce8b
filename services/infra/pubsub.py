"""broadcaster over Redis pub/sub, with a backend that survives a Redis restart.

broadcaster's own Redis backend delivers nothing on redis-py 8 and, on any version, stops for good
when its connection drops. This backend keeps the set of channels, reconnects with backoff, and
subscribes again to all of them, so open subscriptions keep receiving after Redis comes back.

On a Redis Cluster (`cluster=True`) it uses sharded pub/sub (Redis 7: SSUBSCRIBE, SPUBLISH):
each channel lives on the node that owns its hash slot, so a message goes to that node only
instead of to every node, and the platform's channels are per user or per stream partition, so
they spread over the cluster. redis-py's cluster pub/sub keeps one connection per node, follows
slots that move, and reconnects a node by itself; a reconnected node's channels are told
`RESUBSCRIBED` like a lost connection here, so order updates catch up from the outbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from typing import Any

from broadcaster import Broadcast, Event
from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.asyncio.cluster import ClusterPubSub, RedisCluster
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import RedisError

from services.infra.compat import BroadcastBackend
from services.infra.redis import RedisClient, publish

log = logging.getLogger("tradeql.pubsub")
MAX_BACKOFF_SECONDS = 5.0
# Bounded, so a stalled consumer costs memory up to this many messages, then slows the reader.
QUEUE_SIZE = 10_000
# Told on every channel once the connection is back after a loss: what was published meanwhile
# reached nobody here, so a consumer that must not miss a message (order updates) catches up
# from where it is kept (the outbox); the others ignore it.
RESUBSCRIBED = "\x00tradeql:resubscribed"
# A cluster's pub/sub reads its nodes in turn, each for a share of this wait: the most a message
# can wait on an idle node while another node is read.
SHARDED_POLL_SECONDS = 0.02


class ResilientRedisBackend(BroadcastBackend):
    def __init__(self, url: str, cluster: bool = False) -> None:
        self._url = url
        self._cluster = cluster
        self._channels: set[str] = set()
        self._has_channels = asyncio.Event()
        self._queue: asyncio.Queue[Event] = asyncio.Queue(maxsize=QUEUE_SIZE)
        self._redis: RedisClient | None = None
        self._pubsub: PubSub | ClusterPubSub | None = None
        self._listener: asyncio.Task[None] | None = None
        # A cluster's node connections told to report a reconnect (`_node_reconnected`); they
        # come from the nodes' pools, so they are told to stop when their pub/sub is let go.
        self._watched: weakref.WeakSet[AbstractConnection] = weakref.WeakSet()
        self.reconnects = 0

    async def connect(self) -> None:
        if self._cluster:
            self._redis = RedisCluster.from_url(self._url, decode_responses=True)
        else:
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
                await self._subscribe(self._pubsub, channel)

    async def unsubscribe(self, channel: str) -> None:
        self._channels.discard(channel)
        if self._pubsub is not None and self._pubsub.subscribed:
            with contextlib.suppress(RedisError, OSError):
                if isinstance(self._pubsub, ClusterPubSub):
                    await self._pubsub.sunsubscribe(channel)
                else:
                    await self._pubsub.unsubscribe(channel)

    async def publish(self, channel: str, message: Any) -> None:
        assert self._redis is not None, "connect() first"
        await publish(self._redis, channel, message)

    async def _subscribe(self, pubsub: PubSub | ClusterPubSub, *channels: str) -> None:
        await subscribe_to(pubsub, *channels)
        if isinstance(pubsub, ClusterPubSub):
            # A node's connection made since (a channel in a slot of a node not read yet).
            for node_pubsub in list(pubsub.node_pubsub_mapping.values()):
                if node_pubsub.connection is not None:
                    node_pubsub.connection.register_connect_callback(self._node_reconnected)
                    self._watched.add(node_pubsub.connection)

    def _unwatch(self) -> None:
        for connection in list(self._watched):
            connection.deregister_connect_callback(self._node_reconnected)
        self._watched.clear()

    async def _node_reconnected(self, connection: AbstractConnection) -> None:
        """A cluster node's pub/sub connection is back (redis-py subscribed its channels
        again): what was published on it meanwhile reached nobody here."""
        self.reconnects += 1
        log.warning("pub/sub connection to a cluster node restored: %r", connection)
        for channel in list(self._channels):
            await self._queue.put(Event(channel, RESUBSCRIBED))

    @staticmethod
    async def _next_message(pubsub: PubSub | ClusterPubSub) -> dict[str, Any] | None:
        timeout = SHARDED_POLL_SECONDS if isinstance(pubsub, ClusterPubSub) else 1.0
        message = await read_message(pubsub, timeout)
        return message if message is not None and message["type"] == "message" else None

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
                await self._subscribe(pubsub, *self._channels)
                if backoff > 0.1:  # back after a loss: tell every channel's consumers
                    for channel in list(self._channels):
                        await self._queue.put(Event(channel, RESUBSCRIBED))
                backoff = 0.1
                while True:
                    message = await self._next_message(pubsub)
                    if message is not None:
                        await self._queue.put(Event(message["channel"], message["data"]))
            except (RedisError, OSError) as exc:
                self.reconnects += 1
                log.warning("pub/sub connection lost (%s); reconnecting in %.1fs", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(max(backoff * 2, 0.2), MAX_BACKOFF_SECONDS)
            finally:
                self._pubsub = None
                self._unwatch()
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()


async def subscribe_to(pubsub: PubSub | ClusterPubSub, *channels: str) -> None:
    """SUBSCRIBE on one server, SSUBSCRIBE (sharded) on a cluster (`RedisClient.pubsub()`)."""
    if isinstance(pubsub, ClusterPubSub):
        await pubsub.ssubscribe(*channels)
    else:
        await pubsub.subscribe(*channels)


async def read_message(pubsub: PubSub | ClusterPubSub, timeout: float) -> dict[str, Any] | None:
    """The next message or confirmation, typed as on one server (`message`, `subscribe`...)
    whether it came sharded (`smessage`, `ssubscribe`) or not."""
    if not isinstance(pubsub, ClusterPubSub):
        return await pubsub.get_message(timeout=timeout)
    message = await pubsub.get_sharded_message(timeout=timeout)
    if message is not None and message["type"] in _SHARDED_TYPES:
        message = {**message, "type": _SHARDED_TYPES[message["type"]]}
    return message


_SHARDED_TYPES = {"smessage": "message", "ssubscribe": "subscribe", "sunsubscribe": "unsubscribe"}


def create_broadcast(redis_url: str, cluster: bool = False) -> Broadcast:
    return Broadcast(backend=ResilientRedisBackend(redis_url, cluster))
