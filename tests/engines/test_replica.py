"""Reads on a real PostgreSQL streaming replica (DATABASE_REPLICA_URL).

The module starts a primary and a hot standby of its own (`initdb`, `pg_basebackup -R`, from
/usr/lib/postgresql/<version>/bin, as the `postgres` user when run as root). The platform runs as
processes on them and the orders, portfolio, quotes and alerts flows go through it; in-process
tests pause the standby's replay (`pg_wal_replay_pause()`) to show that a user's read waits for
their own last write or falls back to the primary, that other reads stay on the replica, and
that a replica lagging past the bound is skipped.

Skipped, with the reason, where the PostgreSQL server binaries are not installed.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import pytest
import pytest_asyncio

from gateway.migrate import upgrade
from services.infra import keys
from services.infra.container import Services
from services.infra.settings import Settings
from tests.engines.platform import Client, Platform, run_the_flows, running_platform
from tests.engines.replica import Pair, postgres_bin, streaming_pair
from tests.trading import trader

pytestmark = [
    pytest.mark.engines,
    pytest.mark.timeout(240),
    pytest.mark.skipif(postgres_bin() is None, reason="no PostgreSQL server binaries"),
]
MAX_LAG_SECONDS = 1.0


def _with_path(url: str, path: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=path))


@dataclass
class Replicated:
    pair: Pair
    primary_url: str
    replica_url: str


async def _until_replicated(replica_url: str) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            conn = await asyncpg.connect(replica_url)
        except (OSError, asyncpg.PostgresError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)
            continue
        try:
            if await conn.fetchval("SELECT to_regclass('public.orders') IS NOT NULL"):
                return
        finally:
            await conn.close()
        if time.monotonic() > deadline:
            raise AssertionError("the migrations never reached the replica")
        await asyncio.sleep(0.1)


@pytest.fixture(scope="module")
def replicated() -> Iterator[Replicated]:
    with streaming_pair() as pair:
        conn_url = pair.primary_url

        async def create() -> None:
            conn = await asyncpg.connect(conn_url)
            try:
                await conn.execute('CREATE DATABASE "tradeql"')
            finally:
                await conn.close()

        asyncio.run(create())
        primary_url = _with_path(pair.primary_url, "/tradeql")
        replica_url = _with_path(pair.replica_url, "/tradeql")
        upgrade(primary_url)
        asyncio.run(_until_replicated(replica_url))
        yield Replicated(pair, primary_url, replica_url)


@pytest.fixture(scope="module")
def platform(
    replicated: Replicated, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Platform]:
    overrides = {
        "DATABASE_URL": replicated.primary_url,
        "DATABASE_REPLICA_URL": replicated.replica_url,
        "REDIS_URL": redis_url,
    }
    with running_platform(overrides, tmp_path_factory.mktemp("replica")) as platform:
        yield platform


def _replica_reads(metrics: str) -> float:
    for line in metrics.splitlines():
        if line.startswith('tradeql_db_routed_reads_total{server="replica"}'):
            return float(line.split()[-1])
    return 0.0


async def test_orders_portfolio_quotes_and_alerts_with_a_replica(platform: Platform) -> None:
    async with httpx.AsyncClient(base_url=platform.api_url, timeout=30) as http:
        client = Client(http)
        await client.sign_up()
        await run_the_flows(platform, client)
        await client("{ orders(first: 5) { edges { node { id } } } }")
        metrics = (await http.get("/metrics")).text
    assert _replica_reads(metrics) > 0, "no read was served by the replica"


@pytest_asyncio.fixture(loop_scope="session")
async def services(replicated: Replicated, redis_url: str) -> AsyncIterator[Services]:
    """In-process services on the pair, in the namespace the session's services use."""
    settings = Settings(
        database_url=replicated.primary_url,
        database_replica_url=replicated.replica_url,
        redis_url=redis_url,
        redis_namespace=keys.current(),
        db_replica_max_lag_seconds=MAX_LAG_SECONDS,
        db_replica_wait_ms=200,
    )
    services = Services.from_settings(settings)
    try:
        yield services
    finally:
        await services.close()


async def _replay(replicated: Replicated, *, paused: bool) -> None:
    conn = await asyncpg.connect(replicated.replica_url)
    try:
        await conn.execute(f"SELECT pg_wal_replay_{'pause' if paused else 'resume'}()")
    finally:
        await conn.close()


async def test_a_users_reads_see_their_own_last_write(
    services: Services, replicated: Replicated
) -> None:
    writer, bystander = await trader(services, cash="0"), await trader(services, cash="0")
    await services.watchlists.create(writer, "before")
    await asyncio.sleep(0.3)  # replayed: both users' reads may use the replica
    assert await services.reads.engine_for(writer) is services.replica
    await _replay(replicated, paused=True)
    try:
        await services.watchlists.create(writer, "while paused")
        names = [w.name for w in await services.watchlists.lists(writer)]
        assert names == ["before", "while paused"]  # the replica lacks it: the primary answered
        assert await services.reads.engine_for(writer) is services.engine
        # Nothing new for the bystander: the replica still serves them.
        assert await services.reads.engine_for(bystander) is services.replica
    finally:
        await _replay(replicated, paused=False)
    # Replayed now: the writer's reads go back to the replica, and see the list there.
    deadline = time.monotonic() + 10
    while await services.reads.engine_for(writer) is not services.replica:
        assert time.monotonic() < deadline, "the writer's reads never went back to the replica"
        await asyncio.sleep(0.05)
    names = [w.name for w in await services.watchlists.lists(writer)]
    assert names == ["before", "while paused"]


async def test_a_replica_lagging_past_the_bound_is_skipped(
    services: Services, replicated: Replicated
) -> None:
    before = services.reads.served["primary"]
    await _replay(replicated, paused=True)
    try:
        # Writes keep coming while replay stands still: the lag grows past the bound.
        deadline = time.monotonic() + MAX_LAG_SECONDS + 10
        while await services.reads.engine_for() is services.replica:
            assert time.monotonic() < deadline, "a lagging replica was still used"
            await trader(services, cash="0")
            await asyncio.sleep(0.2)
        assert services.reads.served["primary"] > before
        assert services.reads.lag_seconds is not None
        assert services.reads.lag_seconds > MAX_LAG_SECONDS
        securities = await services.securities.by_symbols([f"X{uuid.uuid4().hex[:4].upper()}"])
        assert securities == [None]  # served, by the primary
    finally:
        await _replay(replicated, paused=False)
    deadline = time.monotonic() + 10
    while await services.reads.engine_for() is not services.replica:
        assert time.monotonic() < deadline, "the replica was not used again once caught up"
        await asyncio.sleep(0.1)
