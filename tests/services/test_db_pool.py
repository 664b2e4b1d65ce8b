"""The pool pings a connection before use only when it sat idle: a dead idle one is replaced."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.infra.db import create_engine, fetch_directly, single_read
from services.infra.settings import Settings


@pytest_asyncio.fixture
async def killer(settings: Settings) -> AsyncIterator[AsyncEngine]:
    async with one_connection_pool(settings) as engine:
        yield engine


async def backend_pid(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one())


async def terminate(killer: AsyncEngine, pid: int) -> None:
    async with killer.connect() as conn:
        assert (await conn.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid})).scalar()
    await asyncio.sleep(0.05)  # the backend is gone once the signal is handled


@contextlib.asynccontextmanager
async def one_connection_pool(settings: Settings, **overrides: Any) -> AsyncIterator[AsyncEngine]:
    """An engine of the project's own making, with one pooled connection, disposed after."""
    engine = create_engine(settings.model_copy(update=overrides), pool_size=1)
    try:
        yield engine
    finally:
        await engine.dispose()


async def test_an_idle_connection_that_died_is_replaced_before_use(
    settings: Settings, killer: AsyncEngine
) -> None:
    async with one_connection_pool(settings, db_ping_idle_seconds=0.05) as engine:
        first = await backend_pid(engine)
        await terminate(killer, first)
        await asyncio.sleep(0.1)  # idle past the threshold: pinged at the next checkout
        second = await backend_pid(engine)  # no error: the ping failed and it reconnected
        assert second != first


async def test_a_connection_used_moments_ago_is_not_pinged(
    settings: Settings, killer: AsyncEngine
) -> None:
    async with one_connection_pool(settings, db_ping_idle_seconds=3600) as engine:
        first = await backend_pid(engine)
        await terminate(killer, first)
        with pytest.raises(DBAPIError) as raised:  # no ping: the statement meets the dead backend
            await backend_pid(engine)
        assert raised.value.connection_invalidated
        assert await backend_pid(engine) != first  # and the pool has moved on


async def statements_share_a_transaction(conn: AsyncConnection) -> bool:
    """Whether two statements on `conn` run in one transaction: now() is when the transaction
    began, so 50 ms after a first statement it lags the second one's statement_timestamp()."""
    await conn.execute(text("SELECT pg_sleep(0.05)"))
    lag = text("SELECT statement_timestamp() - now() > interval '40 milliseconds'")
    return bool((await conn.execute(lag)).scalar_one())


async def test_a_single_read_runs_without_a_transaction_and_leaves_the_pool_as_it_was(
    settings: Settings,
) -> None:
    async with one_connection_pool(settings) as engine:
        async with single_read(engine) as conn:
            assert not await statements_share_a_transaction(conn)  # no BEGIN, no ROLLBACK
        async with engine.connect() as conn:  # the same pooled connection, back to normal
            assert await statements_share_a_transaction(conn)


async def test_a_direct_fetch_runs_without_a_transaction_and_leaves_the_pool_as_it_was(
    settings: Settings,
) -> None:
    async with one_connection_pool(settings) as engine:
        before = await backend_pid(engine)
        (row,) = await fetch_directly(engine, "SELECT $1::int + 1 AS n, pg_sleep(0.05)", 41)
        assert row["n"] == 42 and row[0] == 42
        (later,) = await fetch_directly(
            engine, "SELECT statement_timestamp() - now() > interval '40 milliseconds' AS lag"
        )
        assert not later["lag"]  # no transaction left open from one fetch to the next
        assert await backend_pid(engine) == before  # the same pooled connection, still usable
        async with engine.connect() as conn:
            assert await statements_share_a_transaction(conn)
