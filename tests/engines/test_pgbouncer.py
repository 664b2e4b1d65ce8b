"""The platform behind Debian's PgBouncer in transaction mode (TRADEQL_DB_POOLER=transaction).

A PgBouncer of this module's own fronts a database of its own; the API and the matcher, quotes,
relay and alerts workers run as processes whose DATABASE_URL is the pooler's, with a simulated
feed. Through them: a quote arrives, a market order fills, the portfolio shows it, a price alert
triggers, and `tradeql check` finds the books balanced. The engine-level tests show the pooler is
really in between (the direct-connection settings are refused by it) and that the statement
timeout holds per transaction without anything left on the server connections.

Skipped, with the reason, where `pgbouncer` is not installed (`apt-get install pgbouncer`).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from gateway.migrate import upgrade
from services.infra import db
from services.infra.settings import Settings
from tests.engines.pgbouncer import Pooler, pgbouncer, pgbouncer_binary
from tests.engines.platform import Client, Platform, run_the_flows, running_platform

pytestmark = [
    pytest.mark.engines,
    pytest.mark.timeout(240),
    pytest.mark.skipif(pgbouncer_binary() is None, reason="pgbouncer is not installed"),
]


def _with_path(url: str, path: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=path))


async def _admin(admin_url: str, sql: str) -> None:
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@dataclass
class Behind:
    """A database of its own (`direct_url`) and the same database through the pooler."""

    direct_url: str
    pooled_url: str
    pooler: Pooler


@pytest.fixture(scope="module")
def behind(server_urls: tuple[str, str]) -> Iterator[Behind]:
    admin_url = server_urls[0]
    name = f"tradeql_pooler_{uuid.uuid4().hex[:10]}"
    asyncio.run(_admin(admin_url, f'CREATE DATABASE "{name}"'))
    direct_url = _with_path(admin_url, f"/{name}")
    try:
        upgrade(direct_url)  # migrations connect directly: DDL has no business in a pooler
        # A pool smaller than the clients' connections, so clients share server connections.
        with pgbouncer(admin_url, pool_size=4) as pooler:
            yield Behind(direct_url, pooler.url_for(direct_url), pooler)
    finally:
        asyncio.run(_admin(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="module")
def platform(
    behind: Behind, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Platform]:
    overrides = {
        "DATABASE_URL": behind.pooled_url,
        "REDIS_URL": redis_url,
        "TRADEQL_DB_POOLER": "transaction",
    }
    with running_platform(overrides, tmp_path_factory.mktemp("pooler")) as platform:
        yield platform


async def test_orders_portfolio_quotes_and_alerts_through_pgbouncer(platform: Platform) -> None:
    async with httpx.AsyncClient(base_url=platform.api_url, timeout=30) as http:
        client = Client(http)
        await client.sign_up()
        await run_the_flows(platform, client)


def _settings(url: str, **overrides: Any) -> Settings:
    return Settings(database_url=url, db_pool_size=8, **overrides)


async def test_direct_settings_are_refused_by_the_pooler(behind: Behind) -> None:
    """What the platform did before TRADEQL_DB_POOLER: PgBouncer 1.18 refuses the startup."""
    engine = db.create_engine(_settings(behind.pooled_url))
    try:
        with pytest.raises(DBAPIError, match="unsupported startup parameter: statement_timeout"):
            async with db.single_read(engine) as conn:
                await conn.execute(text("SELECT 1"))
    finally:
        await engine.dispose()


async def test_clients_share_server_connections_without_prepared_statements(
    behind: Behind,
) -> None:
    """More client connections than server connections, all three ways of reading: every
    transaction has its SET LOCAL timeout, and no server connection keeps a prepared statement."""
    engine = db.create_engine(
        _settings(behind.pooled_url, db_pooler="transaction", db_statement_timeout_ms=7000)
    )
    seen: set[tuple[str, int]] = set()

    async def client(i: int) -> None:
        for _ in range(10):
            async with db.transaction(engine) as conn:
                assert (await conn.execute(text("SELECT CAST(:i AS int)"), {"i": i})).scalar() == i
                timeout = (await conn.execute(text("SHOW statement_timeout"))).scalar_one()
                kept = (
                    await conn.execute(text("SELECT count(*) FROM pg_prepared_statements"))
                ).scalar_one()
                seen.add((timeout, kept))
            async with db.single_read(engine) as conn:
                assert (await conn.execute(text("SELECT CAST(:i AS int)"), {"i": i})).scalar() == i
            assert (await db.fetch_directly(engine, "SELECT $1::int", i))[0][0] == i

    try:
        await asyncio.gather(*(client(i) for i in range(16)))
    finally:
        await engine.dispose()
    assert seen == {("7s", 0)}


async def test_the_statement_timeout_holds_behind_the_pooler(behind: Behind) -> None:
    engine = db.create_engine(
        _settings(behind.pooled_url, db_pooler="transaction", db_statement_timeout_ms=200)
    )
    try:
        started = time.monotonic()
        with pytest.raises(DBAPIError, match="statement timeout"):
            async with db.transaction(engine) as conn:
                await conn.execute(text("SELECT pg_sleep(5)"))
        assert time.monotonic() - started < 2
        # Outside a transaction: asyncpg's client-side bound cancels it through the pooler.
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            async with db.single_read(engine) as conn:
                await conn.execute(text("SELECT pg_sleep(5)"))
        assert time.monotonic() - started < 3
        # A session setting never leaks: the next transaction gets the timeout afresh.
        async with db.transaction(engine) as conn:
            assert (await conn.execute(text("SHOW statement_timeout"))).scalar() == "200ms"
    finally:
        await engine.dispose()
