"""The shared asyncio Redis client."""

from __future__ import annotations

from redis.asyncio import Redis

from services.infra.settings import Settings


def create_redis(settings: Settings) -> Redis:
    if not settings.redis_url:
        raise RuntimeError("REDIS_URL is not set (tradeql up starts an embedded server)")
    return Redis.from_url(
        settings.redis_url,
        decode_responses=True,
        health_check_interval=30,
        socket_keepalive=True,
        retry_on_timeout=True,
    )
