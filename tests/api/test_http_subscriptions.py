"""Subscriptions over HTTP through real clients: GraphQL over SSE (graphql-sse's distinct
connections mode) and Apollo's multipart subscriptions, with the auth, persisted documents and
fan-out of the WebSocket path, and streams that end cleanly: at the client's disconnect (the
subscription released), at the session's end and at shutdown."""

from __future__ import annotations

import asyncio
import hashlib
import json
import signal
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.metrics import REGISTRY
from services.infra.container import Services
from services.infra.settings import Settings
from services.orders.order_events import user_channel
from tests.api.http_streams import (
    TRANSPORTS,
    headers_for,
    multipart_parts,
    results,
    sse_events,
    subscribe,
)
from tests.api.test_partners import register_in_process
from tests.api.test_session_end import expire_session
from tests.api_process import api_process
from tests.graphql_client import GraphQLClient
from tests.trading import book_fill, listed, quote, unique_symbol

QUOTES = "subscription($s: [String!]!) { quotes(symbols: $s) { symbol bid ask last } }"
ORDER_UPDATES = "subscription { orderUpdates { event order { id status version } } }"
PORTFOLIO = "subscription { portfolio { id equity marketValue positions { symbol } } }"
PLACE = """mutation($i: PlaceOrderInput!) { placeOrder(input: $i) {
  order { id } errors { code message } } }"""


def limit_buy(symbol: str) -> dict[str, Any]:
    return {
        "symbol": symbol,
        "side": "BUY",
        "type": "LIMIT",
        "quantity": "1",
        "limitPrice": "5.00",
        "timeInForce": "GTC",
        "idempotencyKey": uuid.uuid4().hex,
    }


async def within(stream: AsyncIterator[dict[str, Any]], seconds: float = 5) -> dict[str, Any]:
    return await asyncio.wait_for(anext(stream), seconds)


def codes(result: dict[str, Any]) -> list[str]:
    return [e["extensions"]["code"] for e in result.get("errors") or []]


def streams_open(transport: str) -> float:
    value = REGISTRY.get_sample_value("tradeql_http_streams_open", {"transport": transport})
    return value or 0.0


async def eventually(check: Any, seconds: float = 5) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


@pytest.fixture
async def http(api_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=api_url, timeout=30) as client:
        yield client


@pytest.fixture
async def funded(gql: GraphQLClient) -> dict[str, str]:
    user = await gql.register_user()
    body = await gql(
        'mutation { deposit(amount: "10000", idempotencyKey: "d") { errors { code } } }',
        token=user["token"],
    )
    assert body["data"]["deposit"]["errors"] == []
    return user


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_live_quotes_current_then_each_change(
    http: httpx.AsyncClient, services: Services, app_services: Services, transport: str
) -> None:
    symbol = unique_symbol("H")
    await listed(services, symbol)
    await quote(services, symbol, "10.00", "10.02")
    before = app_services.quote_hub.subscriptions
    async with subscribe(http, transport, QUOTES, {"s": [symbol]}) as response:
        assert response.status_code == 200
        expected = "text/event-stream" if transport == "sse" else "multipart/mixed"
        assert response.headers["content-type"].startswith(expected)
        stream = results(response, transport)
        first = await within(stream)
        assert first["data"]["quotes"] == {
            "symbol": symbol,
            "bid": "10.0000",
            "ask": "10.0200",
            "last": "10.0000",
        }
        assert app_services.quote_hub.subscriptions == before + 1
        await quote(services, symbol, "10.10", "10.12")
        moved = await within(stream)
        assert moved["data"]["quotes"]["bid"] == "10.1000"
    # the client left: the process lets go of the subscription
    await eventually(lambda: app_services.quote_hub.subscriptions == before)
    await eventually(lambda: streams_open(transport) == 0)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_order_updates_reach_only_their_owner(
    http: httpx.AsyncClient,
    gql: GraphQLClient,
    services: Services,
    funded: dict[str, str],
    transport: str,
) -> None:
    symbol = unique_symbol("O")
    await listed(services, symbol)
    await quote(services, symbol, "10.00", "10.02")
    other = await gql.register_user()
    await gql(
        'mutation { deposit(amount: "100", idempotencyKey: "d") { errors { code } } }',
        token=other["token"],
    )
    async with subscribe(http, transport, ORDER_UPDATES, token=funded["token"]) as response:
        stream = results(response, transport)
        first = asyncio.ensure_future(anext(stream))
        await asyncio.sleep(0.3)  # the subscription is listening
        await gql(PLACE, {"i": limit_buy(symbol)}, token=other["token"])
        body = await gql(PLACE, {"i": limit_buy(symbol)}, token=funded["token"])
        order_id = body["data"]["placeOrder"]["order"]["id"]
        update = (await asyncio.wait_for(first, 5))["data"]["orderUpdates"]
        assert update["event"] == "ACCEPTED"
        assert update["order"]["id"] == order_id


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_the_live_portfolio(
    http: httpx.AsyncClient, services: Services, funded: dict[str, str], transport: str
) -> None:
    symbol = unique_symbol("P")
    await listed(services, symbol)
    await book_fill(services, uuid.UUID(funded["id"]), symbol, "BUY", "10", "10.00")
    await quote(services, symbol, "10.99", "11.01", last="11.00")
    async with subscribe(http, transport, PORTFOLIO, token=funded["token"]) as response:
        stream = results(response, transport)
        first = (await within(stream))["data"]["portfolio"]
        assert first["marketValue"] == "110.00"
        assert first["positions"] == [{"symbol": symbol}]
        await quote(services, symbol, "11.99", "12.01", last="12.00")
        moved = (await within(stream))["data"]["portfolio"]
        assert moved["marketValue"] == "120.00"
        assert moved["id"] == first["id"]


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize(
    "query", [ORDER_UPDATES, PORTFOLIO, "subscription { alertTriggered { id } }"]
)
async def test_a_private_subscription_without_a_session_is_unauthenticated(
    http: httpx.AsyncClient, transport: str, query: str
) -> None:
    async with subscribe(http, transport, query) as response:
        assert response.status_code == 200
        received = [r async for r in results(response, transport)]  # and then it ends
    assert [codes(r) for r in received] == [["UNAUTHENTICATED"]]


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_bad_token_is_refused_in_the_stream_and_runs_nothing(
    http: httpx.AsyncClient, app_services: Services, transport: str
) -> None:
    """Not a 401: graphql-sse retries a refused request five times before the app hears of it."""
    symbol = unique_symbol("B")
    await listed(app_services, symbol)
    before = app_services.quote_hub.subscriptions
    async with subscribe(http, transport, QUOTES, {"s": [symbol]}, token="forged") as response:
        assert response.status_code == 200
        received = [r async for r in results(response, transport)]
        assert app_services.quote_hub.subscriptions == before
    assert [codes(r) for r in received] == [["UNAUTHENTICATED"]]
    assert "session" in received[0]["errors"][0]["message"]


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize(
    ("query", "code"),
    [
        ("subscription { quotes(symbols: [1]) { bid } }", "GRAPHQL_VALIDATION_FAILED"),
        ("subscription { nope }", "GRAPHQL_VALIDATION_FAILED"),
        ("subscription { quotes(symbols: [", "GRAPHQL_PARSE_FAILED"),
        ('subscription { quotes(symbols: ["NOPE1"]) { bid } }', "UNKNOWN_SYMBOL"),
    ],
)
async def test_a_bad_document_is_one_error_then_the_end(
    http: httpx.AsyncClient, transport: str, query: str, code: str
) -> None:
    async with subscribe(http, transport, query) as response:
        assert response.status_code == 200
        received = [r async for r in results(response, transport)]
    assert [codes(r) for r in received] == [[code]]


async def test_sse_runs_queries_too_and_get_runs_no_mutation(http: httpx.AsyncClient) -> None:
    async with subscribe(http, "sse", "{ __typename }") as response:
        assert [r async for r in results(response, "sse")] == [{"data": {"__typename": "Query"}}]
    mutation = {"query": "mutation { logout }"}
    refused = await http.get("/graphql", params=mutation, headers=headers_for("sse"))
    assert refused.status_code == 405
    assert refused.json()["errors"][0]["extensions"]["code"] == "METHOD_NOT_ALLOWED"
    query = await http.post("/graphql", json=mutation, headers=headers_for("multipart"))
    assert query.status_code == 400
    assert "subscriptions only" in query.json()["errors"][0]["message"]


async def test_an_event_source_subscribes_over_get(
    http: httpx.AsyncClient, services: Services
) -> None:
    """A browser's EventSource only GETs (and sends no headers: public subscriptions)."""
    symbol = unique_symbol("G")
    await listed(services, symbol)
    await quote(services, symbol, "20.00", "20.02")
    params = {"query": QUOTES, "variables": json.dumps({"s": [symbol]})}
    async with http.stream(
        "GET", "/graphql", params=params, headers=headers_for("sse")
    ) as response:
        events = sse_events(response)
        assert await within(events) == (":", "connected")  # bytes at once, as graphql-sse does
        kind, data = await within(events)
        assert kind == "next" and data["data"]["quotes"]["bid"] == "20.0000"


async def test_multipart_starts_with_a_heartbeat(
    http: httpx.AsyncClient, funded: dict[str, str]
) -> None:
    """Apollo's protocol: `{}` parts keep the connection alive (the first at once, then every 5 s)."""
    async with subscribe(http, "multipart", ORDER_UPDATES, token=funded["token"]) as response:
        assert await within(multipart_parts(response)) == {}


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_stream_ends_when_its_session_expires(
    http: httpx.AsyncClient, gql: GraphQLClient, services: Services, transport: str
) -> None:
    user = await gql.register_user()
    await expire_session(services, user["token"], 1.5)
    async with subscribe(http, transport, ORDER_UPDATES, token=user["token"]) as response:
        received = await asyncio.wait_for(_all(results(response, transport)), 6)
    assert [codes(r) for r in received] == [["UNAUTHENTICATED"]]
    assert received[0].get("fatal", transport == "sse")  # multipart: Apollo's fatal error


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_stream_ends_when_its_session_is_revoked(
    http: httpx.AsyncClient, gql: GraphQLClient, app_services: Services, transport: str
) -> None:
    user = await gql.register_user()
    async with subscribe(http, transport, ORDER_UPDATES, token=user["token"]) as response:
        stream = results(response, transport)
        ended = asyncio.ensure_future(_all(stream))
        await eventually(lambda: streams_open(transport) == 1)
        assert (await gql("mutation { logout }", token=user["token"]))["data"] == {"logout": True}
        received = await asyncio.wait_for(ended, 5)
    assert [codes(r) for r in received] == [["UNAUTHENTICATED"]]
    await eventually(lambda: streams_open(transport) == 0)


async def _all(stream: AsyncIterator[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r async for r in stream]


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_partner_key_subscribes_only_with_its_documents(
    http: httpx.AsyncClient, services: Services, transport: str
) -> None:
    symbol = unique_symbol("K")
    await listed(services, symbol)
    await quote(services, symbol, "30.00", "30.02")
    document = f'subscription Live {{ quotes(symbols: ["{symbol}"]) {{ symbol bid }} }}'
    key = await register_in_process(
        services, f"sse-{uuid.uuid4().hex[:8]}", json.dumps({sha(document): document})
    )
    persisted = {"persistedQuery": {"version": 1, "sha256Hash": sha(document)}}
    async with subscribe(http, transport, None, api_key=key, extensions=persisted) as response:
        assert response.status_code == 200
        first = await within(results(response, transport))
        assert first["data"]["quotes"] == {"symbol": symbol, "bid": "30.0000"}
    async with subscribe(http, transport, document, api_key=key) as response:  # raw text
        assert response.status_code == 403
        await response.aread()
        assert response.json()["errors"][0]["extensions"]["code"] == "PERSISTED_QUERY_NOT_ALLOWED"
    async with subscribe(http, transport, None, api_key="tqp_forged", extensions=persisted) as r:
        assert r.status_code == 401


async def test_shutdown_ends_streams_so_clients_reconnect_elsewhere(
    settings: Settings, tmp_path: Path, services: Services
) -> None:
    symbol = unique_symbol("S")
    await listed(services, symbol)
    await quote(services, symbol, "40.00", "40.02")
    with api_process(tmp_path) as (process, url):
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            async with (
                subscribe(http, "sse", QUOTES, {"s": [symbol]}) as sse,
                subscribe(http, "multipart", QUOTES, {"s": [symbol]}) as multipart,
            ):
                sse_events_ = sse_events(sse)
                parts = results(multipart, "multipart")
                assert (await within(parts))["data"]["quotes"]["symbol"] == symbol
                seen = [e async for e in _until_next(sse_events_)]
                process.send_signal(signal.SIGTERM)
                rest = await asyncio.wait_for(_all_events(sse_events_), 10)
                last = await asyncio.wait_for(_all(parts), 10)
            assert ("next" in [kind for kind, _ in seen]) and all(k != "complete" for k, _ in rest)
            assert [codes(r) for r in last] == [["SHUTTING_DOWN"]]
        assert await asyncio.to_thread(process.wait, settings.shutdown_grace_seconds + 5) == 0


async def _until_next(events: AsyncIterator[tuple[str, Any]]) -> AsyncIterator[tuple[str, Any]]:
    async for kind, data in events:
        yield kind, data
        if kind == "next":
            return


async def _all_events(events: AsyncIterator[tuple[str, Any]]) -> list[tuple[str, Any]]:
    return [e async for e in events]


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("query", [ORDER_UPDATES, PORTFOLIO])
async def test_a_client_leaving_mid_stream_releases_the_users_pubsub_listeners(
    http: httpx.AsyncClient,
    gql: GraphQLClient,
    app_services: Services,
    transport: str,
    query: str,
) -> None:
    """orderUpdates listens on the user's channel itself, portfolio through the process's live
    portfolio feed: both let go of it when the client goes away mid-stream."""
    user = await gql.register_user()
    channel = user_channel(uuid.UUID(user["id"]))
    listeners = app_services.broadcast._subscribers  # broadcaster's queues, by channel

    async with subscribe(http, transport, query, token=user["token"]) as response:
        assert response.status_code == 200
        await eventually(lambda: len(listeners.get(channel, ())) == 1)
    await eventually(lambda: not listeners.get(channel))
    await eventually(lambda: streams_open(transport) == 0)
