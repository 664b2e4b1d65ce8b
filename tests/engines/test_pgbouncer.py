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
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import pytest
import pytest_asyncio
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from gateway.migrate import upgrade
from services.infra import db
from services.infra.settings import Settings
from tests.engines.pgbouncer import Pooler, free_port, pgbouncer, pgbouncer_binary
from tests.graphql_client import STRONG_PASSWORD

pytestmark = [
    pytest.mark.timeout(240),
    pytest.mark.skipif(pgbouncer_binary() is None, reason="pgbouncer is not installed"),
]
ROOT = Path(__file__).resolve().parents[2]
WORKERS = ("matcher", "quotes", "relay", "alerts")
T = TypeVar("T")


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


@dataclass
class Platform:
    api_url: str
    env: dict[str, str]
    logs: Path

    def logs_text(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in self.logs.glob("*.log"))


@pytest.fixture(scope="module")
def platform(
    behind: Behind, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Platform]:
    logs = tmp_path_factory.mktemp("pooler")
    api_port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": behind.pooled_url,
        "REDIS_URL": redis_url,
        "TRADEQL_DB_POOLER": "transaction",
        "TRADEQL_REDIS_NAMESPACE": f"tq-pooler-{uuid.uuid4().hex[:8]}",
        "TRADEQL_DB_POOL_SIZE": "5",
        "TRADEQL_MARKET_ALWAYS_OPEN": "true",
        "TRADEQL_VENUE_FAULTS": "EDGX=0,ARCA=0,IEXG=0",
        "TRADEQL_LOG_JSON": "false",
        "TRADEQL_ALERT_RESYNC_SECONDS": "0.5",
    }
    subprocess.run(
        [sys.executable, "-m", "gateway.cli", "securities", "defaults"],
        cwd=ROOT, env=env, check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    processes: list[subprocess.Popen[bytes]] = []

    def start(name: str, *argv: str) -> None:
        log = (logs / f"{name}.log").open("ab")
        processes.append(
            subprocess.Popen(
                [sys.executable, "-m", "gateway.cli", *argv],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )

    platform = Platform(f"http://127.0.0.1:{api_port}", env, logs)
    try:
        start("api", "api", "--port", str(api_port))
        start("feed", "feed", "--source", "sim", "--symbols", "4")
        for worker in WORKERS:
            start(worker, worker)
        deadline = time.monotonic() + 60
        while not _ready(platform.api_url):
            if time.monotonic() > deadline or any(p.poll() is not None for p in processes):
                raise RuntimeError(f"the platform did not start:\n{platform.logs_text()}")
            time.sleep(0.2)
        yield platform
    finally:
        for process in processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in processes:
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(5)


def _ready(api_url: str) -> bool:
    try:
        return httpx.get(f"{api_url}/readyz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


async def _eventually(
    what: str, probe: Callable[[], Awaitable[T | None]], platform: Platform, within: float = 30
) -> T:
    deadline = time.monotonic() + within
    while True:
        found = await probe()
        if found is not None:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {within}s\n{platform.logs_text()}")
        await asyncio.sleep(0.3)


class Client:
    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http, self.token = http, ""

    async def __call__(self, query: str, variables: dict[str, Any] | None = None) -> Any:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        response = await self.http.post(
            "/graphql", json={"query": query, "variables": variables or {}}, headers=headers
        )
        body = response.json()
        assert "errors" not in body, body
        return body["data"]


@pytest_asyncio.fixture(loop_scope="session")
async def client(platform: Platform) -> AsyncIterator[Client]:
    async with httpx.AsyncClient(base_url=platform.api_url, timeout=30) as http:
        client = Client(http)
        data = await client(
            "mutation($e: String!, $p: String!) { register(email: $e, password: $p) "
            "{ token errors { code } } }",
            {"e": f"pooler-{uuid.uuid4().hex[:10]}@example.com", "p": STRONG_PASSWORD},
        )
        client.token = data["register"]["token"]
        data = await client(
            'mutation { deposit(amount: "100000", idempotencyKey: "seed") '
            "{ portfolio { cash } errors { code } } }"
        )
        assert data["deposit"]["errors"] == []
        assert data["deposit"]["portfolio"]["cash"] == "100000.00"
        yield client


async def _quoted_symbol(client: Client, platform: Platform) -> tuple[str, str]:
    """A symbol the simulated feed quotes, and its last price, read through the API."""
    securities = await _active_symbols(platform)

    async def probe() -> tuple[str, str] | None:
        data = await client(
            "query($s: [String!]!) { quotes(symbols: $s) { symbol last } }", {"s": securities}
        )
        quoted = [q for q in data["quotes"] if q]
        return (quoted[0]["symbol"], quoted[0]["last"]) if quoted else None

    return await _eventually("a quote through the feed and the quotes worker", probe, platform)


async def _active_symbols(platform: Platform) -> list[str]:
    conn = await asyncpg.connect(platform.env["DATABASE_URL"], statement_cache_size=0)
    try:
        rows = await conn.fetch(
            "SELECT symbol FROM securities WHERE active ORDER BY symbol LIMIT 4"
        )
    finally:
        await conn.close()
    return [r["symbol"] for r in rows]


PLACE = """mutation($s: String!, $k: String!) { placeOrder(input: {symbol: $s, side: BUY,
  type: MARKET, quantity: "2", idempotencyKey: $k}) { order { id status } errors { code } } }"""


async def test_orders_portfolio_quotes_and_alerts_through_pgbouncer(
    platform: Platform, client: Client
) -> None:
    symbol, _ = await _quoted_symbol(client, platform)

    placed = await client(PLACE, {"s": symbol, "k": uuid.uuid4().hex})
    assert placed["placeOrder"]["errors"] == []
    order_id = placed["placeOrder"]["order"]["id"]

    async def filled() -> dict[str, Any] | None:
        data = await client(
            "query($id: ID!) { order(id: $id) { status filledQuantity averageFillPrice } }",
            {"id": order_id},
        )
        return data["order"] if data["order"]["status"] == "FILLED" else None

    order = await _eventually("the order filled by the matcher", filled, platform)
    assert order["filledQuantity"] == "2"

    data = await client("{ portfolio { cash positions { symbol quantity } } }")
    positions = {p["symbol"]: p["quantity"] for p in data["portfolio"]["positions"]}
    assert positions == {symbol: "2"}
    assert Decimal(data["portfolio"]["cash"]) < Decimal("100000")

    created = await client(
        'mutation($s: String!) { createPriceAlert(symbol: $s, condition: ABOVE, threshold: "0.01")'
        " { alert { id status } errors { code } } }",
        {"s": symbol},
    )
    assert created["createPriceAlert"]["errors"] == []
    alert_id = created["createPriceAlert"]["alert"]["id"]

    async def triggered() -> dict[str, Any] | None:
        data = await client("{ alerts(status: TRIGGERED) { id triggeredPrice } }")
        return next((a for a in data["alerts"] if a["id"] == alert_id), None)

    alert = await _eventually("the alert triggered by the alerts worker", triggered, platform)
    assert Decimal(alert["triggeredPrice"]) > Decimal("0.01")

    checked = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "gateway.cli", "check"],
        cwd=ROOT, env=platform.env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert checked.returncode == 0, checked.stdout + checked.stderr


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
