"""Real servers for the tests: DATABASE_URL/REDIS_URL if set, else the local ones on the standard
ports if they answer, else embedded ones. Each run gets a fresh database and a flushed Redis db."""

from __future__ import annotations

import asyncio
import os
import socket
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

# Cheap password hashing and an always-open market for tests; set before settings are read.
os.environ.setdefault("TRADEQL_PASSWORD_HASH_TIME_COST", "1")
os.environ.setdefault("TRADEQL_PASSWORD_HASH_MEMORY_KIB", "8192")
os.environ.setdefault("TRADEQL_PASSWORD_HASH_PARALLELISM", "1")
os.environ.setdefault("TRADEQL_MARKET_ALWAYS_OPEN", "true")
os.environ["TRADEQL_LOG_JSON"] = "false"
# Deterministic venues, quick lease take-over and sweeps, so matcher tests run in seconds.
os.environ.setdefault("TRADEQL_VENUE_FAULTS", "EDGX=0,ARCA=0,IEXG=0")
os.environ.setdefault("TRADEQL_MATCHER_LEASE_SECONDS", "2")
os.environ.setdefault("TRADEQL_MATCHER_SWEEP_SECONDS", "1")
# Every test client is 127.0.0.1: keep the rate limiter in the path but out of the way (the
# guards' own tests run a server with tight limits). GraphiQL on; introspection stays off.
os.environ.setdefault("TRADEQL_RATE_LIMIT_SESSION_PER_SECOND", "100000")
os.environ.setdefault("TRADEQL_RATE_LIMIT_SESSION_BURST", "100000")
os.environ.setdefault("TRADEQL_RATE_LIMIT_PARTNER_PER_SECOND", "100000")
os.environ.setdefault("TRADEQL_RATE_LIMIT_PARTNER_BURST", "100000")
os.environ.setdefault("TRADEQL_RATE_LIMIT_IP_PER_SECOND", "100000")
os.environ.setdefault("TRADEQL_RATE_LIMIT_IP_BURST", "100000")
# Every test client is 127.0.0.1: failed sign-ins of the whole suite would pass the per-address
# limit (its own test uses a throttle of its own); the per-e-mail waits stay as in production.
os.environ.setdefault("TRADEQL_LOGIN_ADDRESS_FAILURES", "1000000")
os.environ.setdefault("TRADEQL_GRAPHIQL", "true")

import asyncpg
import httpx
import pytest
import pytest_asyncio
import uvicorn
from redis.asyncio import Redis

from gateway.app import create_app
from gateway.embedded import EmbeddedServers, port_answers
from gateway.migrate import upgrade
from services.infra.container import Services
from services.infra.settings import Settings, get_settings
from tests.graphql_client import GraphQLClient

# Nine parallel runs; 0 is a developer's `tradeql up`, 10 the locks, 11-15 the benches'.
TEST_REDIS_DBS = range(1, 10)
LOCK_REDIS_DB = 10
LOCK_SECONDS = 1800


def _with_path(url: str, path: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=path))


@pytest.fixture(scope="session")
def server_urls() -> Iterator[tuple[str, str]]:
    """(an admin PostgreSQL URL, a Redis URL) of servers that answer."""
    database_url, redis_url = os.environ.get("DATABASE_URL"), os.environ.get("REDIS_URL")
    if database_url and redis_url:
        yield database_url, redis_url
    elif port_answers("127.0.0.1", 5432) and port_answers("127.0.0.1", 6379):
        yield "postgresql://postgres@127.0.0.1:5432/postgres", "redis://127.0.0.1:6379/0"
    else:
        servers = EmbeddedServers(Path(tempfile.mkdtemp(prefix="tradeql-test-")))
        try:
            yield servers.start()
        finally:
            servers.stop()


@pytest.fixture(scope="session")
def database_url(server_urls: tuple[str, str]) -> Iterator[str]:
    admin_url = server_urls[0]
    name = f"tradeql_test_{uuid.uuid4().hex[:12]}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(admin_url)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    url = _with_path(admin_url, f"/{name}")
    upgrade(url)
    try:
        yield url
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def redis_url(server_urls: tuple[str, str]) -> Iterator[str]:
    """A Redis database of our own: two test runs on one machine (say, a developer's and a
    helper's) would otherwise flush each other's streams and steal each other's matcher leases."""
    lock = f"tradeql:test-run:{uuid.uuid4().hex}"
    # The locks live in a db no test flushes (tests flush their own db to simulate a lost Redis).
    locks_url = _with_path(server_urls[1], f"/{LOCK_REDIS_DB}")

    async def claim() -> str:
        locks = Redis.from_url(locks_url)
        try:
            for db in TEST_REDIS_DBS:
                if await locks.set(f"tradeql:test-lock:{db}", lock, nx=True, ex=LOCK_SECONDS):
                    url = _with_path(server_urls[1], f"/{db}")
                    redis = Redis.from_url(url)
                    await redis.flushdb()
                    await redis.aclose()
                    return url
        finally:
            await locks.aclose()
        raise RuntimeError(f"every test Redis db {list(TEST_REDIS_DBS)} is in use")

    async def release(url: str) -> None:
        db = int(urlsplit(url).path.strip("/"))
        locks = Redis.from_url(locks_url)
        if (await locks.get(f"tradeql:test-lock:{db}")) == lock.encode():
            redis = Redis.from_url(url)
            await redis.flushdb()
            await redis.aclose()
            await locks.delete(f"tradeql:test-lock:{db}")
        await locks.aclose()

    url = asyncio.run(claim())
    try:
        yield url
    finally:
        asyncio.run(release(url))


@pytest.fixture(scope="session")
def settings(database_url: str, redis_url: str) -> Settings:
    os.environ["DATABASE_URL"] = database_url
    os.environ["REDIS_URL"] = redis_url
    # Tests write a quote and read it back at once; the API's quote mirror would serve the one
    # before until the publish arrives (milliseconds). Its own tests turn it on.
    os.environ["TRADEQL_QUOTE_MIRROR_MAX_AGE_SECONDS"] = "0"
    get_settings.cache_clear()
    return get_settings()


@pytest_asyncio.fixture(scope="session")
async def services(settings: Settings) -> AsyncIterator[Services]:
    services = Services.from_settings(settings)
    yield services
    await services.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest_asyncio.fixture(scope="session")
async def api_server(settings: Settings) -> AsyncIterator[tuple[str, object]]:
    """A live API server (uvicorn, real sockets) in the test loop: (base URL, Starlette app)."""
    app = create_app(settings)
    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="on")
    )
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.02)
    yield f"http://127.0.0.1:{port}", app
    server.should_exit = True
    await task


@pytest.fixture
def api_url(api_server: tuple[str, object]) -> str:
    return api_server[0]


@pytest.fixture
def app_services(api_server: tuple[str, object]) -> Services:
    """The services object inside the live server, for tests that inject faults."""
    return api_server[1].state.services  # type: ignore[attr-defined]


@pytest_asyncio.fixture
async def gql(api_url: str) -> AsyncIterator[GraphQLClient]:
    async with httpx.AsyncClient(base_url=api_url, timeout=30) as http:
        yield GraphQLClient(http)


@pytest_asyncio.fixture
async def user(gql: GraphQLClient) -> dict[str, str]:
    """A freshly registered user: {'id', 'email', 'token', 'password'}."""
    return await gql.register_user()
