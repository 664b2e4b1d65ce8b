"""The shared asyncio Redis client: one server (the default), or a Redis Cluster.

With `TRADEQL_REDIS_CLUSTER=true`, `REDIS_URL` names any node of a cluster and the client is
redis-py's `RedisCluster`, which routes each command to the node that owns its key's hash slot.
Everything else follows from the key layout (services/infra/keys.py: the hash tags) and from a
few places that do per slot what one server does in one call (`slot_groups`)."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence
from typing import Any, TypeAlias

from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.client import Pipeline
from redis.asyncio.cluster import ClusterPipeline, RedisCluster
from redis.crc import key_slot
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import MaxConnectionsError

from services.infra.settings import Settings

RedisClient: TypeAlias = Redis | RedisCluster
"""What every service holds: one server's client or the cluster's (the same commands)."""
RedisPipeline: TypeAlias = Pipeline | ClusterPipeline


class WaitingConnectionPool(ConnectionPool):
    """A bounded pool whose callers wait for a released connection when every one is in use.

    redis-py 8's `ConnectionPool` raises `MaxConnectionsError` at once past its bound (100 by
    default: a burst of requests failed), and its `BlockingConnectionPool` waits but enters an
    asyncio timeout on every call, the common case included. This one costs nothing extra until
    the pool is exhausted; then a caller waits, first come first served, up to `timeout` seconds
    and fails with a `ConnectionError` (a `RedisError`) after it."""

    def __init__(self, *args: Any, timeout: float = 5.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._timeout = timeout
        self._waiters: deque[asyncio.Future[None]] = deque()

    async def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        loop = asyncio.get_running_loop()
        deadline: float | None = None
        while True:
            try:
                return await super().get_connection(*args, **kwargs)
            except MaxConnectionsError:
                deadline = deadline if deadline is not None else loop.time() + self._timeout
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise RedisConnectionError(
                        f"no Redis connection free within {self._timeout:g} s "
                        f"({self.max_connections} in use: TRADEQL_REDIS_MAX_CONNECTIONS)"
                    ) from None
                waiter: asyncio.Future[None] = loop.create_future()
                self._waiters.append(waiter)
                try:
                    await asyncio.wait_for(asyncio.shield(waiter), remaining)
                except TimeoutError:
                    pass
                finally:
                    if not waiter.done():
                        waiter.cancel()

    async def release(self, connection: Any) -> None:
        await super().release(connection)
        while self._waiters:  # wake the longest waiter still waiting
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                break


def create_redis(settings: Settings) -> RedisClient:
    """The process's client. Its connections are bounded (`TRADEQL_REDIS_MAX_CONNECTIONS`); past
    the bound a command waits for a free connection (`WaitingConnectionPool`) instead of
    failing at once, as redis-py 8's default pool does past its 100 connections."""
    if not settings.redis_url:
        raise RuntimeError("REDIS_URL is not set (tradeql up starts an embedded server)")
    if settings.redis_cluster:
        return RedisCluster.from_url(  # retries (timeouts included) are its own
            settings.redis_url,
            decode_responses=True,
            health_check_interval=30,
            socket_keepalive=True,
            max_connections=settings.redis_max_connections,
        )
    pool = WaitingConnectionPool.from_url(
        settings.redis_url,
        max_connections=settings.redis_max_connections,
        timeout=settings.redis_pool_timeout_seconds,
        decode_responses=True,
        health_check_interval=30,
        socket_keepalive=True,
        retry_on_timeout=True,
    )
    return Redis.from_pool(pool)


async def publish(redis: RedisClient, channel: str, message: str) -> None:
    """PUBLISH, or in a cluster SPUBLISH: a sharded channel lives on the node of its slot, so a
    message reaches that node's subscribers only, instead of every node of the cluster."""
    if isinstance(redis, RedisCluster):
        await redis.spublish(channel, message)
    else:
        await redis.publish(channel, message)


def queue_publish(pipe: RedisPipeline, channel: str, message: str) -> None:
    """`publish` queued on a pipeline."""
    if isinstance(pipe, ClusterPipeline):
        pipe.spublish(channel, message)
    else:
        pipe.publish(channel, message)


def is_cluster(redis: Any) -> bool:
    """Whether `redis` (a client or a pipeline) talks to a cluster."""
    return isinstance(redis, RedisCluster | ClusterPipeline)


def slot_of(key: str) -> int:
    """The hash slot of a key or a shard channel (its hash tag's, when it has one)."""
    return key_slot(key.encode())


def slot_groups(redis: RedisClient, keys: Sequence[str]) -> list[list[int]]:
    """Positions of `keys` grouped by hash slot, in first-seen order: what one script call or
    one multi-key command may touch together. One server: a single group of all of them."""
    if not is_cluster(redis):
        return [list(range(len(keys)))]
    groups: dict[int, list[int]] = {}
    for i, key in enumerate(keys):
        groups.setdefault(slot_of(key), []).append(i)
    return list(groups.values())
