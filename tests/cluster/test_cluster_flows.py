"""The platform on a real three-master Redis Cluster (TRADEQL_REDIS_CLUSTER=true): the API, the
simulated feed and every worker as processes, with REDIS_URL naming one node of a cluster this
folder starts (tests/cluster/conftest.py), on a database of its own. Through it: orders placed and
filled by the matcher (their updates on a live subscription), the portfolio, a live quote reaching
a WebSocket subscriber, and a price alert triggering. Skipped where redis-server/redis-cli 7+ are
missing (Debian: redis-server, redis-tools; `.ci/run` installs them).

Marked `engines` (the real engines the harness starts): `-m engines` runs these alone.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import pytest_asyncio
import websockets
from redis.asyncio.cluster import RedisCluster

from gateway.migrate import upgrade
from tests.api_process import free_port
from tests.chaos.test_chaos import ROOT, Platform, Trader, _admin, _wait_ready, _with_path
from tests.redis_cluster import RedisClusterServers

pytestmark = [pytest.mark.engines, pytest.mark.timeout(300)]
WORKERS = ("matcher", "quotes", "relay", "alerts")
PARTITIONS = 4


@dataclass
class ClusterPlatform:
    platform: Platform
    servers: RedisClusterServers


@pytest.fixture(scope="module")
def cluster(
    server_urls: tuple[str, str],
    tmp_path_factory: pytest.TempPathFactory,
    cluster_servers: RedisClusterServers,
) -> Iterator[ClusterPlatform]:
    servers = cluster_servers
    admin_url = server_urls[0]
    name = f"tradeql_cluster_{uuid.uuid4().hex[:10]}"
    logs = tmp_path_factory.mktemp("cluster")
    api_port = free_port()
    asyncio.run(_admin(admin_url, f'CREATE DATABASE "{name}"'))
    database_url = _with_path(admin_url, f"/{name}")
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "REDIS_URL": servers.url,
        "TRADEQL_REDIS_CLUSTER": "true",
        "TRADEQL_REDIS_NAMESPACE": "",
        "TRADEQL_QUOTE_PARTITIONS": str(PARTITIONS),
        "TRADEQL_MARKET_ALWAYS_OPEN": "true",
        "TRADEQL_VENUE_FAULTS": "EDGX=0,ARCA=0,IEXG=0",
        "TRADEQL_MATCHER_LEASE_SECONDS": "2",
        "TRADEQL_MATCHER_SWEEP_SECONDS": "1",
        "TRADEQL_OUTBOX_GRACE_SECONDS": "1",
        "TRADEQL_ALERT_RESYNC_SECONDS": "30",  # a trigger must come from the live path
        "TRADEQL_LOG_JSON": "false",
    }
    platform = Platform(
        database_url, admin_url, servers.url, f"http://127.0.0.1:{api_port}", env, logs
    )
    try:
        upgrade(database_url)
        subprocess.run(
            [sys.executable, "-m", "gateway.cli", "securities", "defaults"],
            cwd=ROOT, env=env, check=True, capture_output=True, timeout=120,
        )  # fmt: skip
        platform.start("api", "api", "--port", str(api_port))
        platform.start("feed", "feed", "--source", "sim", "--symbols", "8")
        for worker in WORKERS:
            platform.start(worker, worker)
        _wait_ready(platform)
        yield ClusterPlatform(platform, servers)
    finally:
        platform.stop_all()
        asyncio.run(_admin(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest_asyncio.fixture(loop_scope="session")
async def trader(cluster: ClusterPlatform) -> AsyncIterator[Trader]:
    async with httpx.AsyncClient(base_url=cluster.platform.api_url, timeout=30) as http:
        trader = Trader(cluster.platform, http)
        await trader.sign_up()
        await trader.follow()
        try:
            yield trader
        finally:
            await trader.close()


def _partitions(symbols: list[str]) -> set[int]:
    from services.infra.streams import partition_of

    return {partition_of(s, PARTITIONS) for s in symbols}


async def test_orders_are_placed_and_filled_through_the_cluster(
    cluster: ClusterPlatform, trader: Trader
) -> None:
    assert len(_partitions(trader.symbols)) > 1  # the orders cross several partitions (slots)
    accepted = await trader.place(len(trader.symbols))
    assert len(accepted) == len(trader.symbols)
    await trader.all_filled()
    await trader.hears(accepted)  # each FILL on the user's sharded channel, live
    checked = cluster.platform.check()
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # The layout spreads the platform's keys over the masters (streams, quotes, sessions...).
    assert all(count > 0 for count in cluster.servers.node_keys())


async def test_the_portfolio_reads_through_the_cluster(
    cluster: ClusterPlatform, trader: Trader
) -> None:
    if not trader.placed:
        await trader.place(2)
    await trader.all_filled()
    body = await trader.graphql(
        "{ portfolio { cash equity positions { symbol quantity marketValue quote { last } } } }"
    )
    portfolio = body["data"]["portfolio"]
    held = {p["symbol"]: p for p in portfolio["positions"]}
    assert held and set(held) <= set(trader.symbols)
    for position in held.values():
        assert float(position["quantity"]) >= 1
        assert position["quote"] is not None and position["marketValue"] is not None
    assert float(portfolio["cash"]) < 1_000_000  # the fills were paid for


async def test_a_live_quote_reaches_a_websocket_subscriber(
    cluster: ClusterPlatform, trader: Trader
) -> None:
    symbols = trader.symbols[:4]
    assert len(_partitions(symbols)) > 1  # channels of several partitions, on several slots
    url = cluster.platform.api_url.replace("http://", "ws://") + "/graphql"
    seen: dict[str, list[str]] = {s: [] for s in symbols}
    query = "subscription($s: [String!]!) { quotes(symbols: $s) { symbol last timestamp } }"
    async with websockets.connect(url, subprotocols=["graphql-transport-ws"]) as ws:
        init = {"Authorization": f"Bearer {trader.token}"}
        await ws.send(json.dumps({"type": "connection_init", "payload": init}))
        assert json.loads(await ws.recv())["type"] == "connection_ack"
        await ws.send(
            json.dumps(
                {
                    "id": "q",
                    "type": "subscribe",
                    "payload": {"query": query, "variables": {"s": symbols}},
                }
            )
        )
        deadline = time.monotonic() + 30
        # The first of each symbol is its current quote; the second is a change, published
        # by the quote cache on its partition's sharded channel after the subscription began.
        while any(len(v) < 2 for v in seen.values()):
            assert time.monotonic() < deadline, f"live quotes did not arrive: {seen}"
            message = json.loads(await asyncio.wait_for(ws.recv(), deadline - time.monotonic()))
            assert message["type"] == "next", message
            quote = message["payload"]["data"]["quotes"]
            seen[quote["symbol"]].append(quote["timestamp"])
    for timestamps in seen.values():
        assert timestamps == sorted(timestamps) and len(set(timestamps)) == len(timestamps)


async def test_a_price_alert_triggers_through_the_cluster(
    cluster: ClusterPlatform, trader: Trader
) -> None:
    url = cluster.platform.api_url.replace("http://", "ws://") + "/graphql"
    pushed: list[dict[str, Any]] = []

    async def listen() -> None:
        async with websockets.connect(url, subprotocols=["graphql-transport-ws"]) as ws:
            init = {"Authorization": f"Bearer {trader.token}"}
            await ws.send(json.dumps({"type": "connection_init", "payload": init}))
            await ws.recv()
            query = "subscription { alertTriggered { id status triggeredPrice } }"
            await ws.send(json.dumps({"id": "a", "type": "subscribe", "payload": {"query": query}}))
            async for raw in ws:
                message = json.loads(raw)
                if message["type"] == "next":
                    pushed.append(message["payload"]["data"]["alertTriggered"])

    listener = asyncio.create_task(listen())
    try:
        await asyncio.sleep(1.0)
        body = await trader.graphql(
            "mutation($s: String!) { createPriceAlert(symbol: $s, condition: ABOVE,"
            ' threshold: "0.01") { alert { id status } errors { code } } }',
            {"s": trader.symbols[0]},
        )
        created = body["data"]["createPriceAlert"]
        assert created["errors"] == [] and created["alert"]["status"] == "ACTIVE"
        alert_id = created["alert"]["id"]
        deadline = time.monotonic() + 30
        while not any(p["id"] == alert_id for p in pushed):
            assert time.monotonic() < deadline, f"the alert was not pushed: {pushed}"
            await asyncio.sleep(0.2)
    finally:
        listener.cancel()
    body = await trader.graphql("{ alerts(status: TRIGGERED) { id triggeredPrice } }")
    triggered = {a["id"]: a for a in body["data"]["alerts"]}
    assert alert_id in triggered and triggered[alert_id]["triggeredPrice"] is not None


async def test_the_cluster_really_holds_the_platform_s_keys_by_slot(
    cluster: ClusterPlatform, trader: Trader
) -> None:
    """The quote streams of several partitions were written through the cluster's routing, each
    partition in a slot of its own."""
    from services.infra import keys
    from services.infra.streams import quote_stream

    redis = RedisCluster.from_url(cluster.servers.url, decode_responses=True)
    before = keys.current()
    try:
        keys.configure(cluster.platform.database_url)  # the platform's namespace, for a moment
        streams = [quote_stream(p) for p in range(PARTITIONS)]
    finally:
        keys._namespace = before  # this process's own, for the tests after this one
    try:
        lengths = [await redis.xlen(stream) for stream in streams]
        assert len([n for n in lengths if n > 0]) > 1, lengths  # the feed's symbols' partitions
        assert len({redis.keyslot(stream) for stream in streams}) == PARTITIONS
    finally:
        await redis.aclose()


async def test_order_updates_survive_lost_pub_sub_connections(
    cluster: ClusterPlatform, trader: Trader
) -> None:
    """Every node drops its pub/sub clients (the API's sharded subscriptions among them): the
    live subscription hears the next fills all the same (redis-py reconnects the node and
    subscribes again; the platform catches up from the outbox)."""
    for port in cluster.servers.ports:
        killed = await asyncio.to_thread(
            subprocess.run,
            ["redis-cli", "-p", str(port), "client", "kill", "type", "pubsub"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        assert killed.returncode == 0 and int(killed.stdout) > 0, killed
    await asyncio.sleep(1.0)
    accepted = await trader.place(3)
    assert len(accepted) == 3
    await trader.all_filled()
    await trader.hears(accepted)
