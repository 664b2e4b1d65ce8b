"""Several API processes against one PostgreSQL and Redis behave as one; SIGTERM drains."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import websockets

from services.infra.container import Services
from services.infra.settings import Settings
from tests.api_process import api_process, free_port
from tests.graphql_client import GraphQLClient
from tests.trading import listed, quote, unique_symbol

ME = {"query": "{ me { id } }"}


@pytest.fixture
def two_apis(settings: Settings, tmp_path: Path) -> Iterator[tuple[str, str]]:
    with api_process(tmp_path) as (_, first), api_process(tmp_path) as (_, second):
        yield first, second


async def client(url: str) -> GraphQLClient:
    return GraphQLClient(httpx.AsyncClient(base_url=url, timeout=30))


@pytest.fixture
async def clients(two_apis: tuple[str, str]) -> AsyncIterator[tuple[GraphQLClient, GraphQLClient]]:
    one, two = await client(two_apis[0]), await client(two_apis[1])
    yield one, two
    await one.http.aclose()
    await two.http.aclose()


async def open_socket(url: str, token: str, query: str) -> websockets.ClientConnection:
    ws = await websockets.connect(
        url.replace("http://", "ws://") + "/graphql",
        subprotocols=["graphql-transport-ws"],
        close_timeout=2,
    )
    await ws.send(
        json.dumps({"type": "connection_init", "payload": {"Authorization": f"Bearer {token}"}})
    )
    assert json.loads(await asyncio.wait_for(ws.recv(), 5))["type"] == "connection_ack"
    await ws.send(json.dumps({"id": "1", "type": "subscribe", "payload": {"query": query}}))
    return ws


async def test_an_order_placed_on_one_process_updates_a_socket_on_another(
    clients: tuple[GraphQLClient, GraphQLClient], two_apis: tuple[str, str], services: Services
) -> None:
    one, _ = clients
    user = await one.register_user()
    await one(
        'mutation { deposit(amount: "1000", idempotencyKey: "d") { errors { code } } }',
        token=user["token"],
    )
    symbol = unique_symbol("X")
    await listed(services, symbol)
    await quote(services, symbol, "10.00", "10.02")
    ws = await open_socket(
        two_apis[1], user["token"], "subscription { orderUpdates { event order { id status } } }"
    )
    try:
        await asyncio.sleep(0.5)
        placed = await one(
            """mutation($s: String!) { placeOrder(input: {symbol: $s, side: BUY, type: LIMIT,
               quantity: "1", limitPrice: "9.00", idempotencyKey: "x"}) { order { id } } }""",
            {"s": symbol},
            token=user["token"],
        )
        order_id = placed["data"]["placeOrder"]["order"]["id"]
        message = json.loads(await asyncio.wait_for(ws.recv(), 5))
        update = message["payload"]["data"]["orderUpdates"]
        assert (update["event"], update["order"]["id"]) == ("ACCEPTED", order_id)
    finally:
        await ws.close()


async def test_a_logout_on_one_process_ends_the_session_on_all(
    clients: tuple[GraphQLClient, GraphQLClient], two_apis: tuple[str, str]
) -> None:
    one, two = clients
    user = await one.register_user()
    assert (await two("{ me { id } }", token=user["token"]))["data"]["me"]["id"] == user["id"]
    ws = await open_socket(two_apis[1], user["token"], "subscription { orderUpdates { event } }")
    try:
        assert (await one("mutation { logout }", token=user["token"]))["data"] == {"logout": True}
        assert (await two("{ me { id } }", token=user["token"]))["data"]["me"] is None
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 5)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401
    finally:
        await ws.close()


async def test_sigterm_closes_sockets_with_1001_and_exits_cleanly(
    settings: Settings, tmp_path: Path
) -> None:
    with api_process(tmp_path) as (process, url):
        user = await (await client(url)).register_user()
        ws = await open_socket(url, user["token"], "subscription { orderUpdates { event } }")
        await asyncio.sleep(0.3)
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
        assert await asyncio.to_thread(process.wait, settings.shutdown_grace_seconds + 5) == 0
        assert time.monotonic() - started < settings.shutdown_grace_seconds + 5


async def test_workers_share_one_port_and_stop_together(settings: Settings, tmp_path: Path) -> None:
    port = free_port()
    with api_process(tmp_path, "--workers", "2", port=port) as (process, url):
        async with httpx.AsyncClient(base_url=url) as http:
            for _ in range(20):  # both workers answer on the one port
                assert (await http.post("/graphql", json=ME)).json() == {"data": {"me": None}}
        process.send_signal(signal.SIGTERM)  # to the parent, which stops its workers
        assert await asyncio.to_thread(process.wait, settings.shutdown_grace_seconds + 10) == 0
    async with httpx.AsyncClient() as http:
        with pytest.raises(httpx.HTTPError):
            await http.get(f"{url}/healthz", timeout=1)
