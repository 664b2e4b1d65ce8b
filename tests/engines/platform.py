"""The whole platform as processes (API, matcher, quotes, relay, alerts, a simulated feed) on
settings of a test's choosing, and the orders, portfolio, quotes and alerts flows run through
it as a client would: used by the tests that put real engines (PgBouncer, a replica) under it."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import httpx

from tests.engines.pgbouncer import free_port
from tests.graphql_client import STRONG_PASSWORD

ROOT = Path(__file__).resolve().parents[2]
WORKERS = ("matcher", "quotes", "relay", "alerts")
T = TypeVar("T")


@dataclass
class Platform:
    api_url: str
    env: dict[str, str]
    logs: Path

    def logs_text(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in self.logs.glob("*.log"))


@contextmanager
def running_platform(env_overrides: dict[str, str], logs: Path) -> Iterator[Platform]:
    """`securities defaults`, then every process, on the environment plus `env_overrides`
    (which must name DATABASE_URL and REDIS_URL); stopped (SIGTERM, then SIGKILL) afterwards."""
    api_port = free_port()
    env = {
        **os.environ,
        "TRADEQL_REDIS_NAMESPACE": f"tq-engines-{uuid.uuid4().hex[:8]}",
        "TRADEQL_DB_POOL_SIZE": "5",
        "TRADEQL_MARKET_ALWAYS_OPEN": "true",
        "TRADEQL_VENUE_FAULTS": "EDGX=0,ARCA=0,IEXG=0",
        "TRADEQL_LOG_JSON": "false",
        "TRADEQL_ALERT_RESYNC_SECONDS": "0.5",
        **env_overrides,
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


async def eventually(
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
    """A signed-in user of the platform's GraphQL API."""

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

    async def sign_up(self, cash: str = "100000") -> None:
        data = await self(
            "mutation($e: String!, $p: String!) { register(email: $e, password: $p) "
            "{ token errors { code } } }",
            {"e": f"engines-{uuid.uuid4().hex[:10]}@example.com", "p": STRONG_PASSWORD},
        )
        self.token = data["register"]["token"]
        data = await self(
            'mutation($a: Decimal!) { deposit(amount: $a, idempotencyKey: "seed") '
            "{ portfolio { cash } errors { code } } }",
            {"a": cash},
        )
        assert data["deposit"]["errors"] == []


PLACE = """mutation($s: String!, $k: String!) { placeOrder(input: {symbol: $s, side: BUY,
  type: MARKET, quantity: "2", idempotencyKey: $k}) { order { id status } errors { code } } }"""


async def run_the_flows(platform: Platform, client: Client) -> None:
    """A quote arrives (feed, quotes worker, API); a market order is accepted, shows in the
    order history at once and fills (matcher, relay); the portfolio holds it; a price alert
    triggers (alerts worker); `tradeql check` finds the books balanced."""
    symbol = await _quoted_symbol(client, platform)

    placed = await client(PLACE, {"s": symbol, "k": uuid.uuid4().hex})
    assert placed["placeOrder"]["errors"] == []
    order_id = placed["placeOrder"]["order"]["id"]
    history = await client("{ orders(first: 5) { edges { node { id } } } }")
    assert [e["node"]["id"] for e in history["orders"]["edges"]] == [order_id]

    async def filled() -> dict[str, Any] | None:
        data = await client(
            "query($id: ID!) { order(id: $id) { status filledQuantity averageFillPrice } }",
            {"id": order_id},
        )
        return data["order"] if data["order"]["status"] == "FILLED" else None

    order = await eventually("the order filled by the matcher", filled, platform)
    assert order["filledQuantity"] == "2.000000"
    history = await client("{ orders(first: 5, status: [FILLED]) { edges { node { id } } } }")
    assert [e["node"]["id"] for e in history["orders"]["edges"]] == [order_id]

    data = await client("{ portfolio { cash positions { symbol quantity } } }")
    positions = {p["symbol"]: p["quantity"] for p in data["portfolio"]["positions"]}
    assert positions == {symbol: "2.000000"}
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

    alert = await eventually("the alert triggered by the alerts worker", triggered, platform)
    assert Decimal(alert["triggeredPrice"]) > Decimal("0.01")

    checked = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "gateway.cli", "check"],
        cwd=ROOT, env=platform.env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert checked.returncode == 0, checked.stdout + checked.stderr


async def _quoted_symbol(client: Client, platform: Platform) -> str:
    """A symbol the simulated feed quotes, read through the API."""
    conn = await asyncpg.connect(platform.env["DATABASE_URL"], statement_cache_size=0)
    try:
        rows = await conn.fetch(
            "SELECT symbol FROM securities WHERE active ORDER BY symbol LIMIT 4"
        )
    finally:
        await conn.close()
    securities = [r["symbol"] for r in rows]

    async def probe() -> str | None:
        data = await client(
            "query($s: [String!]!) { quotes(symbols: $s) { symbol last } }", {"s": securities}
        )
        quoted = [q for q in data["quotes"] if q]
        return str(quoted[0]["symbol"]) if quoted else None

    return await eventually("a quote through the feed and the quotes worker", probe, platform)
