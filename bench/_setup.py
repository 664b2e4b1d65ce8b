"""Setup shared by the benchmarks: where the servers are, and small helpers around them."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from bench._procs import BenchError

DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
STATE_DIR = Path(tempfile.gettempdir()) / "tradeql-bench"


def with_path(url: str, path: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=path))


def require_loopback(url: str, what: str) -> None:
    host = urlsplit(url).hostname or ""
    with contextlib.suppress(ValueError):
        if host == "localhost" or ipaddress.ip_address(host).is_loopback:
            return
    raise BenchError(f"{what} must point at a loopback address, not {host!r}")


def server_urls(redis_base: str | None = None) -> tuple[str, str]:
    """DATABASE_URL and REDIS_URL (or `redis_base`) if set, else the local defaults; both checked
    to be loopback addresses."""
    database = os.environ.get("DATABASE_URL") or DEFAULT_DATABASE_URL
    redis = redis_base or os.environ.get("REDIS_URL") or DEFAULT_REDIS_URL
    require_loopback(database, "DATABASE_URL")
    require_loopback(redis, "REDIS_URL")
    return database, redis


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def active_symbols(database_url: str) -> list[str]:
    """Exactly the feed's query (`Securities.active_symbols`), so the order is the same."""
    import asyncpg

    conn = await asyncpg.connect(database_url, timeout=10)
    try:
        rows = await conn.fetch("SELECT symbol FROM securities WHERE active ORDER BY symbol")
        return [r["symbol"] for r in rows]
    finally:
        await conn.close()


def redis_client(url: str) -> Any:
    import redis

    return redis.Redis.from_url(url, decode_responses=True, socket_timeout=5)
