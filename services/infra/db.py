"""PostgreSQL engine and transactions (SQLAlchemy async on asyncpg)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from sqlalchemy import event
from sqlalchemy.exc import InvalidatePoolError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry, PoolProxiedConnection

from services.infra.settings import Settings


def asyncpg_url(url: str) -> str:
    """`postgresql://...` (what users write) -> `postgresql+asyncpg://...` (what SQLAlchemy needs)."""
    parts = urlsplit(url)
    scheme = parts.scheme.split("+", 1)[0]
    if scheme not in ("postgresql", "postgres"):
        raise ValueError(f"DATABASE_URL must be a postgresql:// URL, not {parts.scheme}://")
    return urlunsplit(parts._replace(scheme="postgresql+asyncpg"))


def create_engine(settings: Settings, *, pool_size: int | None = None) -> AsyncEngine:
    if not settings.database_url:
        raise RuntimeError("DATABASE_URL is not set (tradeql up starts an embedded server)")
    engine = create_async_engine(
        asyncpg_url(settings.database_url),
        pool_size=pool_size or settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        connect_args={
            "server_settings": {
                "statement_timeout": str(settings.db_statement_timeout_ms),
                "application_name": "tradeql",
            }
        },
    )
    ping_after_idle(engine, settings.db_ping_idle_seconds)
    return engine


def ping_after_idle(engine: AsyncEngine, idle_seconds: float) -> None:
    """Pessimistic disconnect handling, for connections that sat idle only.

    `pool_pre_ping` pings on every checkout: a round trip per transaction, about an eighth of a
    fill's. A connection checked in moments ago is as alive as a ping would show, so only one
    idle for `idle_seconds` or more is pinged; one that fails is replaced before use
    (InvalidatePoolError: the pool connects anew, and recycles every connection older than the
    failure, as `pool_pre_ping` does). A connection in use moments before a server restart fails
    at its next statement instead; SQLAlchemy then recycles the older ones too, and the callers
    that can repeat their transaction (the matcher) do so once.
    """
    sync_engine = engine.sync_engine

    @event.listens_for(sync_engine, "checkin")
    def _idle_from(dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(sync_engine, "checkout")
    def _ping_if_idle(
        dbapi_connection: Any, record: ConnectionPoolEntry, proxy: PoolProxiedConnection
    ) -> None:
        idle_since = record.info.get("idle_since")
        if idle_since is None or time.monotonic() - idle_since < idle_seconds:
            return  # new, or in use moments ago
        try:
            sync_engine.dialect.do_ping(dbapi_connection)
        except Exception as exc:
            raise InvalidatePoolError("a pooled connection failed its ping") from exc


@asynccontextmanager
async def transaction(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """One PostgreSQL transaction: committed when the block ends, rolled back if it raises."""
    async with engine.begin() as conn:
        yield conn


@asynccontextmanager
async def single_read(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A connection for reads of one statement each, in autocommit.

    A statement is its own snapshot, so a read of one statement needs no transaction around
    it; without one there are no BEGIN and ROLLBACK round trips (a read was three round trips
    for one answer). Only for blocks whose statements need not agree with one another."""
    async with engine.connect() as conn:
        await conn.execution_options(isolation_level="AUTOCOMMIT")
        yield conn


async def fetch_directly(engine: AsyncEngine, sql: str, *args: Any) -> list[Any]:
    """The rows of one read statement (asyncpg's positional `$n` parameters), fetched on the
    pool's asyncpg connection itself, in autocommit: no transaction, and none of SQLAlchemy's
    statement and result handling, which cost a page of 50 orders as much as the rest of its
    reading. For hot reads only; rows are asyncpg records (by position or name)."""
    async with engine.connect() as conn:
        raw = await conn.get_raw_connection()
        driver = raw.driver_connection
        assert driver is not None
        return list(await driver.fetch(sql, *args))
