"""The Redis client under a burst, and sessions when Redis fails.

redis-py 8's default pool raises `MaxConnectionsError` as soon as its 100 connections are in use,
which turned a burst of requests into HTTP 500s; the platform's pool waits for a free connection.
A session lookup that finds Redis down or saturated reads PostgreSQL, the truth, instead."""

from __future__ import annotations

import asyncio
import socket
from uuid import UUID

import pytest
from prometheus_client import REGISTRY
from redis.exceptions import RedisError

from services.accounts.sessions import SessionStore
from services.infra.container import Services
from services.infra.redis import WaitingConnectionPool, create_redis
from services.infra.settings import Settings


async def test_a_burst_past_the_pool_waits_for_connections(settings: Settings) -> None:
    small = settings.model_copy(update={"redis_max_connections": 2})
    redis = create_redis(small)
    assert redis.connection_pool.max_connections == 2
    assert isinstance(redis.connection_pool, WaitingConnectionPool)
    try:
        # Each BLPOP holds its connection for 50 ms: 40 at once need 20 times the pool.
        results = await asyncio.gather(
            *(redis.blpop([f"tradeql:test:pool:{i}"], timeout=0.05) for i in range(40))
        )
        assert results == [None] * 40
    finally:
        await redis.aclose()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_sessions_are_read_from_postgresql_when_redis_fails(
    services: Services, settings: Settings, user: dict[str, str]
) -> None:
    dead = settings.model_copy(
        update={
            "redis_url": f"redis://127.0.0.1:{_closed_port()}/0",
            "redis_pool_timeout_seconds": 1,
        }
    )
    redis = create_redis(dead)
    store = SessionStore(services.engine, redis, settings)
    before = REGISTRY.get_sample_value("tradeql_session_cache_failures_total") or 0.0
    try:
        session = await store.authenticate(user["token"])
        assert session is not None
        assert session.user_id == UUID(user["id"])
        assert await store.authenticate("not-a-token-of-anyone") is None
    finally:
        await redis.aclose()
    after = REGISTRY.get_sample_value("tradeql_session_cache_failures_total") or 0.0
    assert after - before >= 2  # the lookup and the cache write of the first, the second's lookup


async def test_a_pool_that_stays_exhausted_fails_with_a_redis_error(settings: Settings) -> None:
    one = settings.model_copy(
        update={"redis_max_connections": 1, "redis_pool_timeout_seconds": 0.2}
    )
    redis = create_redis(one)
    try:
        holder = asyncio.create_task(redis.blpop(["tradeql:test:pool:held"], timeout=1))
        await asyncio.sleep(0.05)  # the one connection is in BLPOP for a second
        started = asyncio.get_running_loop().time()
        with pytest.raises(RedisError, match="no Redis connection free"):
            await redis.get("tradeql:test:pool:other")
        waited = asyncio.get_running_loop().time() - started
        assert 0.15 <= waited < 0.9
        assert await holder is None
        assert await redis.get("tradeql:test:pool:other") is None  # free again
    finally:
        await redis.aclose()
