"""PostgreSQL engine and transactions (SQLAlchemy async on asyncpg)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from sqlalchemy import Connection, event
from sqlalchemy.exc import InvalidatePoolError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry, PoolProxiedConnection
from sqlalchemy.util import await_

from services.infra.settings import Settings


def asyncpg_url(url: str) -> str:
    """`postgresql://...` (what users write) -> `postgresql+asyncpg://...` (what SQLAlchemy needs)."""
    parts = urlsplit(url)
    scheme = parts.scheme.split("+", 1)[0]
    if scheme not in ("postgresql", "postgres"):
        raise ValueError(f"DATABASE_URL must be a postgresql:// URL, not {parts.scheme}://")
    return urlunsplit(parts._replace(scheme="postgresql+asyncpg"))


def create_engine(
    settings: Settings, *, pool_size: int | None = None, url: str | None = None
) -> AsyncEngine:
    """The engine of DATABASE_URL (or of `url`: the replica's), with the settings' pool and
    connection arguments."""
    url = url or settings.database_url
    if not url:
        raise RuntimeError("DATABASE_URL is not set (tradeql up starts an embedded server)")
    engine = create_async_engine(
        asyncpg_url(url),
        pool_size=pool_size or settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        connect_args=connect_args(settings),
    )
    ping_after_idle(engine, settings.db_ping_idle_seconds)
    if settings.db_pooler == "transaction" and settings.db_statement_timeout_ms:
        set_local_timeout(engine, settings.db_statement_timeout_ms)
    return engine


# A client-side bound on statements outside transactions behind a pooler, a little past the
# server's: asyncpg cancels the statement (PgBouncer forwards the cancel) and raises TimeoutError.
CLIENT_TIMEOUT_MARGIN_SECONDS = 1.0


def connect_args(settings: Settings) -> dict[str, Any]:
    """asyncpg's connection arguments: direct to PostgreSQL, or behind a transaction pooler.

    Behind PgBouncer in transaction mode (TRADEQL_DB_POOLER=transaction) a client connection
    gets whichever server connection is free at each transaction, so nothing may outlive one:
    * no startup parameter but application_name (PgBouncer 1.18 refuses a connection that sends
      `statement_timeout`); the timeout is set with SET LOCAL in each transaction instead;
    * no prepared statement kept: with asyncpg's statement cache off, asyncpg prepares every
      statement unnamed and parses it again in the same message as its execution, so a
      statement never meets a server connection that lacks it, two clients' names never collide
      on one server connection (`__asyncpg_stmt_1__ already exists`), and nothing piles up on
      the server (unique names would leave one statement per transaction there, since the Close
      of a named one reaches whichever server connection the client holds next). SQLAlchemy's
      own cache of prepared statements is off too: each entry would be one of those.
    """
    timeout_ms = settings.db_statement_timeout_ms
    if settings.db_pooler == "transaction":
        args: dict[str, Any] = {
            "server_settings": {"application_name": "tradeql"},
            "statement_cache_size": 0,
            "prepared_statement_cache_size": 0,
        }
        if timeout_ms:
            args["command_timeout"] = timeout_ms / 1000 + CLIENT_TIMEOUT_MARGIN_SECONDS
        return args
    server_settings = {"application_name": "tradeql"}
    if timeout_ms:
        server_settings["statement_timeout"] = str(timeout_ms)
    return {"server_settings": server_settings}


def set_local_timeout(engine: AsyncEngine, timeout_ms: int) -> None:
    """`SET LOCAL statement_timeout` at the start of every transaction (behind a pooler, where a
    session setting would stay on a server connection that other clients use next).

    SQLAlchemy's asyncpg adapter sends BEGIN lazily, with the first statement; here it is sent
    at once so that the SET LOCAL lands inside it: one round trip more per transaction (see
    bench/pooler_cost.py). Reads outside a transaction (`single_read`, `fetch_directly`) are
    bounded by asyncpg's client-side `command_timeout` instead; a timeout set on the role
    (`ALTER ROLE ... SET statement_timeout`) bounds both at no cost per transaction, and
    TRADEQL_DB_STATEMENT_TIMEOUT_MS=0 then skips this.
    """
    statement = f"SET LOCAL statement_timeout = {int(timeout_ms)}"

    @event.listens_for(engine.sync_engine, "begin")
    def _set_local(conn: Connection) -> None:
        adapted: Any = conn.connection.dbapi_connection
        if adapted is None or adapted.autocommit:
            return  # autocommit: no transaction for a SET LOCAL to live in
        if adapted._transaction is None:
            await_(adapted._start_transaction())
        await_(adapted.driver_connection.execute(statement))


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
