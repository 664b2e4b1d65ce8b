"""The shared asyncio Redis client: one server (the default), or a Redis Cluster.

With `TRADEQL_REDIS_CLUSTER=true`, `REDIS_URL` names any node of a cluster and the client is
redis-py's `RedisCluster`, which routes each command to the node that owns its key's hash slot.
Everything else follows from the key layout (services/infra/keys.py: the hash tags) and from a
few places that do per slot what one server does in one call (`slot_groups`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeAlias

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.client import Pipeline
from redis.asyncio.cluster import ClusterPipeline, RedisCluster
from redis.crc import key_slot

from services.infra.settings import Settings

RedisClient: TypeAlias = Redis | RedisCluster
"""What every service holds: one server's client or the cluster's (the same commands)."""
RedisPipeline: TypeAlias = Pipeline | ClusterPipeline


def create_redis(settings: Settings) -> RedisClient:
    """The process's client. Its connections are bounded (`TRADEQL_REDIS_MAX_CONNECTIONS`); past
    the bound a command waits for a free connection (a blocking pool) instead of failing at
    once, which redis-py 8's default pool does past its 100 connections under a burst."""
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
    pool = BlockingConnectionPool.from_url(
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
