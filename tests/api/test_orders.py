"""Orders through the real GraphQL API: validation, idempotency, money rules, history, updates."""

from __future__ import annotations

import asyncio
import uuid
from contextlib import aclosing
from decimal import Decimal
from typing import Any

import pytest
from gql import Client
from gql import gql as document
from gql.transport.websockets import WebsocketsTransport
from sqlalchemy import text

from services.accounts.reconcile import find_differences
from services.infra.container import Services
from services.orders.fills import Fill, execute
from services.orders.order_events import publish
from services.orders.order_model import Status
from tests.graphql_client import GraphQLClient
from tests.trading import listed, quote, reload, unique_symbol

PLACE = """mutation($i: PlaceOrderInput!) { placeOrder(input: $i) {
  order { id idempotencyKey symbol side type timeInForce quantity notional limitPrice stopPrice
          status filledQuantity averageFillPrice createdAt executions { id } }
  errors { code message field } } }"""
CANCEL = (
    """mutation($id: ID!) { cancelOrder(id: $id) { order { id status } errors { code field } } }"""
)
DEPOSIT = (
    """mutation($a: Decimal!) { deposit(amount: $a, idempotencyKey: "seed") { errors { code } } }"""
)
PORTFOLIO = "{ portfolio { cash buyingPower } }"


@pytest.fixture
async def symbol(services: Services) -> str:
    name = unique_symbol("O")
    await listed(services, name)
    await quote(services, name, "50.00", "50.02")
    return name


@pytest.fixture
async def funded(gql: GraphQLClient, user: dict[str, str]) -> dict[str, str]:
    await gql(DEPOSIT, {"a": "10000"}, token=user["token"])
    return user


def limit_buy(symbol: str, **overrides: Any) -> dict[str, Any]:
    order = {
        "symbol": symbol,
        "side": "BUY",
        "type": "LIMIT",
        "quantity": "10",
        "limitPrice": "49.00",
        "idempotencyKey": uuid.uuid4().hex,
    }
    order.update(overrides)
    return order


async def test_a_limit_order_is_accepted_and_holds_buying_power(
    gql: GraphQLClient, funded: dict[str, str], symbol: str
) -> None:
    body = await gql(PLACE, {"i": limit_buy(symbol, quantity="2.5")}, token=funded["token"])
    payload = body["data"]["placeOrder"]
    assert payload["errors"] == []
    order = payload["order"]
    assert (order["symbol"], order["side"], order["type"], order["timeInForce"]) == (
        symbol,
        "BUY",
        "LIMIT",
        "DAY",
    )
    assert (order["quantity"], order["limitPrice"], order["filledQuantity"]) == (
        "2.500000",
        "49.0000",
        "0.000000",
    )
    assert order["status"] == "PENDING" and order["executions"] == []
    portfolio = (await gql(PORTFOLIO, token=funded["token"]))["data"]["portfolio"]
    assert portfolio == {"cash": "10000.00", "buyingPower": "9877.50"}


@pytest.mark.parametrize(
    ("overrides", "code", "field"),
    [
        ({"symbol": "NOSUCH"}, "UNKNOWN_SYMBOL", "symbol"),
        ({"symbol": "bad symbol!"}, "INVALID_INPUT", "symbol"),
        ({"limitPrice": None}, "INVALID_INPUT", "limitPrice"),
        ({"type": "MARKET"}, "INVALID_INPUT", "limitPrice"),
        ({"type": "STOP"}, "INVALID_INPUT", "limitPrice"),
        ({"type": "STOP", "limitPrice": None}, "INVALID_INPUT", "stopPrice"),
        ({"type": "STOP_LIMIT"}, "INVALID_INPUT", "stopPrice"),
        ({"limitPrice": "49.001"}, "INVALID_INPUT", "limitPrice"),
        ({"limitPrice": "0"}, "INVALID_INPUT", "limitPrice"),
        ({"limitPrice": "-1"}, "INVALID_INPUT", "limitPrice"),
        ({"quantity": "0"}, "INVALID_INPUT", "quantity"),
        ({"quantity": "-3"}, "INVALID_INPUT", "quantity"),
        ({"quantity": "1.0000001"}, "INVALID_INPUT", "quantity"),
        ({"quantity": "100000000"}, "INVALID_INPUT", "quantity"),
        ({"quantity": None}, "INVALID_INPUT", "quantity"),
        ({"notional": "100"}, "INVALID_INPUT", "quantity"),
        ({"quantity": None, "notional": "100"}, "INVALID_INPUT", "notional"),
        (
            {"timeInForce": "IOC", "type": "STOP", "limitPrice": None, "stopPrice": "60.00"},
            "INVALID_INPUT",
            "timeInForce",
        ),
        ({"idempotencyKey": ""}, "INVALID_INPUT", "idempotencyKey"),
        ({"quantity": "1000"}, "INSUFFICIENT_BUYING_POWER", "quantity"),
        ({"side": "SELL"}, "INSUFFICIENT_SHARES", "quantity"),
    ],
)
async def test_bad_orders_are_refused_with_a_code_and_a_field(
    gql: GraphQLClient,
    funded: dict[str, str],
    symbol: str,
    overrides: dict[str, Any],
    code: str,
    field: str,
) -> None:
    order = {k: v for k, v in {**limit_buy(symbol), **overrides}.items() if v is not None}
    body = await gql(PLACE, {"i": order}, token=funded["token"])
    payload = body["data"]["placeOrder"]
    assert payload["order"] is None
    assert [(e["code"], e["field"]) for e in payload["errors"]] == [(code, field)]
    portfolio = (await gql(PORTFOLIO, token=funded["token"]))["data"]["portfolio"]
    assert portfolio["buyingPower"] == "10000.00"


async def test_a_float_price_is_refused_before_anything_runs(
    gql: GraphQLClient, funded: dict[str, str], symbol: str
) -> None:
    response = await gql.post(
        PLACE, {"i": limit_buy(symbol, limitPrice=49.5)}, token=funded["token"]
    )
    assert response.status_code == 400


async def test_orders_need_a_session(gql: GraphQLClient, symbol: str) -> None:
    body = await gql(PLACE, {"i": limit_buy(symbol)})
    assert body["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"


async def test_the_same_key_answers_with_the_same_order(
    gql: GraphQLClient, funded: dict[str, str], symbol: str
) -> None:
    order = limit_buy(symbol)
    first = (await gql(PLACE, {"i": order}, token=funded["token"]))["data"]["placeOrder"]["order"]
    again = (await gql(PLACE, {"i": order}, token=funded["token"]))["data"]["placeOrder"]["order"]
    assert again["id"] == first["id"]
    conflict = await gql(PLACE, {"i": {**order, "quantity": "11"}}, token=funded["token"])
    assert conflict["data"]["placeOrder"]["errors"][0]["code"] == "IDEMPOTENCY_CONFLICT"
    portfolio = (await gql(PORTFOLIO, token=funded["token"]))["data"]["portfolio"]
    assert portfolio["buyingPower"] == "9510.00"  # held once: 10 x 49.00


async def test_concurrent_requests_with_one_key_make_one_order(
    gql: GraphQLClient, funded: dict[str, str], symbol: str
) -> None:
    order = limit_buy(symbol)
    results = await asyncio.gather(
        *(gql(PLACE, {"i": order}, token=funded["token"]) for _ in range(20))
    )
    ids = {r["data"]["placeOrder"]["order"]["id"] for r in results}
    assert len(ids) == 1


async def test_a_refused_order_leaves_its_key_free_for_a_retry(
    gql: GraphQLClient, funded: dict[str, str], symbol: str
) -> None:
    order = limit_buy(symbol, quantity="300")  # 14,700 > 10,000
    body = await gql(PLACE, {"i": order}, token=funded["token"])
    assert body["data"]["placeOrder"]["errors"][0]["code"] == "INSUFFICIENT_BUYING_POWER"
    await gql(
        """mutation { deposit(amount: "5000", idempotencyKey: "more") { errors { code } } }""",
        token=funded["token"],
    )
    retry = await gql(PLACE, {"i": order}, token=funded["token"])
    assert retry["data"]["placeOrder"]["order"]["status"] == "PENDING"


async def test_a_hundred_concurrent_buys_never_overspend(
    gql: GraphQLClient, funded: dict[str, str], symbol: str, services: Services
) -> None:
    """Each holds 10 x 49.00 = 490: exactly 20 fit in 10,000; the rest are refused."""
    results = await asyncio.gather(
        *(gql(PLACE, {"i": limit_buy(symbol)}, token=funded["token"]) for _ in range(100))
    )
    accepted = [r for r in results if r["data"]["placeOrder"]["order"]]
    refused = [r for r in results if r["data"]["placeOrder"]["errors"]]
    assert len(accepted) == 20 and len(refused) == 80
    assert {r["data"]["placeOrder"]["errors"][0]["code"] for r in refused} == {
        "INSUFFICIENT_BUYING_POWER"
    }
    portfolio = (await gql(PORTFOLIO, token=funded["token"]))["data"]["portfolio"]
    assert portfolio == {"cash": "10000.00", "buyingPower": "200.00"}
    assert await find_differences(services.engine) == []


async def test_a_hundred_concurrent_sells_never_sell_more_than_held(
    gql: GraphQLClient, funded: dict[str, str], symbol: str, services: Services
) -> None:
    buy = (
        await gql(
            PLACE,
            {"i": limit_buy(symbol, quantity="30", limitPrice="50.00")},
            token=funded["token"],
        )
    )["data"]["placeOrder"]["order"]
    order = await reload(services, uuid.UUID(buy["id"]))
    async with services.engine.begin() as conn:  # the fill the matcher would book
        await execute(conn, order, [Fill("EDGX", Decimal(30), Decimal("50.00"), f"t:{order.id}")])
    sell = {
        "symbol": symbol,
        "side": "SELL",
        "type": "LIMIT",
        "quantity": "1",
        "limitPrice": "60.00",
    }
    results = await asyncio.gather(
        *(
            gql(PLACE, {"i": {**sell, "idempotencyKey": uuid.uuid4().hex}}, token=funded["token"])
            for _ in range(100)
        )
    )
    accepted = [r for r in results if r["data"]["placeOrder"]["order"]]
    assert len(accepted) == 30
    codes = {
        r["data"]["placeOrder"]["errors"][0]["code"]
        for r in results
        if not r["data"]["placeOrder"]["order"]
    }
    assert codes == {"INSUFFICIENT_SHARES"}
    assert await find_differences(services.engine) == []


async def test_cancel_releases_the_hold_and_is_refused_twice(
    gql: GraphQLClient, funded: dict[str, str], symbol: str
) -> None:
    order = (await gql(PLACE, {"i": limit_buy(symbol)}, token=funded["token"]))["data"][
        "placeOrder"
    ]["order"]
    cancelled = await gql(CANCEL, {"id": order["id"]}, token=funded["token"])
    assert cancelled["data"]["cancelOrder"]["order"]["status"] == "CANCELLED"
    again = await gql(CANCEL, {"id": order["id"]}, token=funded["token"])
    assert again["data"]["cancelOrder"]["errors"] == [{"code": "NOT_CANCELLABLE", "field": "id"}]
    portfolio = (await gql(PORTFOLIO, token=funded["token"]))["data"]["portfolio"]
    assert portfolio["buyingPower"] == "10000.00"


async def test_someone_elses_order_is_not_found_and_null(
    gql: GraphQLClient, funded: dict[str, str], symbol: str
) -> None:
    order = (await gql(PLACE, {"i": limit_buy(symbol)}, token=funded["token"]))["data"][
        "placeOrder"
    ]["order"]
    other = await gql.register_user()
    body = await gql(CANCEL, {"id": order["id"]}, token=other["token"])
    assert body["data"]["cancelOrder"]["errors"] == [{"code": "NOT_FOUND", "field": "id"}]
    for unknown in (order["id"], str(uuid.uuid4()), "not-a-uuid"):
        seen = await gql(
            "query($id: ID!) { order(id: $id) { id } }", {"id": unknown}, token=other["token"]
        )
        assert seen["data"]["order"] is None
    bad = await gql(CANCEL, {"id": "not-a-uuid"}, token=other["token"])
    assert bad["data"]["cancelOrder"]["errors"][0]["code"] == "NOT_FOUND"
    mine = await gql(
        "query($id: ID!) { order(id: $id) { id status } }",
        {"id": order["id"]},
        token=funded["token"],
    )
    assert mine["data"]["order"]["id"] == order["id"]


async def test_history_is_newest_first_with_keyset_pages_and_filters(
    gql: GraphQLClient, funded: dict[str, str], symbol: str, services: Services
) -> None:
    other = unique_symbol("H")
    await listed(services, other)
    ids = []
    for i in range(7):
        s = symbol if i % 2 == 0 else other
        body = await gql(PLACE, {"i": limit_buy(s, quantity="1")}, token=funded["token"])
        ids.append(body["data"]["placeOrder"]["order"]["id"])
    await gql(CANCEL, {"id": ids[0]}, token=funded["token"])
    query = """query($first: Int!, $after: String, $status: [OrderStatus!], $symbol: String) {
      orders(first: $first, after: $after, status: $status, symbol: $symbol) {
        edges { cursor node { id symbol status } } pageInfo { hasNextPage endCursor } } }"""
    seen, after = [], None
    while True:
        page = (await gql(query, {"first": 3, "after": after}, token=funded["token"]))["data"][
            "orders"
        ]
        seen += [e["node"]["id"] for e in page["edges"]]
        if not page["pageInfo"]["hasNextPage"]:
            break
        after = page["pageInfo"]["endCursor"]
    assert seen == list(reversed(ids))
    by_symbol = (await gql(query, {"first": 50, "symbol": other}, token=funded["token"]))["data"][
        "orders"
    ]["edges"]
    assert [e["node"]["id"] for e in by_symbol] == [ids[5], ids[3], ids[1]]
    cancelled = (await gql(query, {"first": 50, "status": ["CANCELLED"]}, token=funded["token"]))[
        "data"
    ]["orders"]["edges"]
    assert [e["node"]["id"] for e in cancelled] == [ids[0]]
    for bad in ({"first": 0}, {"first": 500}, {"first": 5, "after": "garbage"}):
        body = await gql(query, bad, token=funded["token"])
        assert body["errors"][0]["extensions"]["code"] == "INVALID_INPUT"


async def test_order_updates_reach_the_owner_over_websocket(
    api_url: str, gql: GraphQLClient, funded: dict[str, str], symbol: str, services: Services
) -> None:
    transport = WebsocketsTransport(
        url=api_url.replace("http://", "ws://") + "/graphql",
        subprotocols=[WebsocketsTransport.GRAPHQLWS_SUBPROTOCOL],
        init_payload={"Authorization": f"Bearer {funded['token']}"},
        close_timeout=2,
    )
    subscription = document(
        "subscription { orderUpdates { event order { id status filledQuantity } "
        "execution { quantity price venue } } }"
    )
    other = await gql.register_user()
    async with (
        Client(transport=transport) as session,
        aclosing(session.subscribe(subscription)) as updates,
    ):
        # gql sends the subscription on the first read: start reading, then act.
        first_update = asyncio.ensure_future(anext(updates))
        await asyncio.sleep(0.5)
        # Someone else's order must not show up on this user's stream.
        await gql(PLACE, {"i": limit_buy(symbol)}, token=other["token"])
        body = await gql(PLACE, {"i": limit_buy(symbol)}, token=funded["token"])
        order_id = body["data"]["placeOrder"]["order"]["id"]
        first = await asyncio.wait_for(first_update, 5)
        assert first["orderUpdates"]["event"] == "ACCEPTED"
        assert first["orderUpdates"]["order"]["id"] == order_id
        order = await reload(services, uuid.UUID(order_id))
        async with services.engine.begin() as conn:
            outcome = await execute(
                conn, order, [Fill("ARCA", Decimal(4), Decimal("48.50"), f"ws:{order_id}")]
            )
        await publish(services.redis, outcome.updates)
        fill = await asyncio.wait_for(anext(updates), 5)
        assert fill["orderUpdates"]["event"] == "PARTIAL_FILL"
        assert fill["orderUpdates"]["order"]["status"] == "PARTIALLY_FILLED"
        assert fill["orderUpdates"]["execution"] == {
            "quantity": "4.000000",
            "price": "48.5000",
            "venue": "ARCA",
        }
        await gql(CANCEL, {"id": order_id}, token=funded["token"])
        cancelled = await asyncio.wait_for(anext(updates), 5)
        assert cancelled["orderUpdates"]["event"] == "CANCELLED"
    assert (await reload(services, uuid.UUID(order_id))).status is Status.CANCELLED


async def test_order_updates_need_a_session(api_url: str) -> None:
    transport = WebsocketsTransport(
        url=api_url.replace("http://", "ws://") + "/graphql", close_timeout=2
    )
    async with Client(transport=transport) as session:
        with pytest.raises(Exception, match=r"UNAUTHENTICATED|sign in"):
            async for _ in session.subscribe(document("subscription { orderUpdates { event } }")):
                pass


async def test_each_order_carries_the_request_id_of_the_request_that_placed_it(
    gql: GraphQLClient, funded: dict[str, str], symbol: str, services: Services
) -> None:
    """Concurrent requests share a placement batch, whose worker runs in the context of the
    request that started it: each order must still name its own request."""

    async def place(request_id: str) -> str:
        response = await gql.http.post(
            "/graphql",
            json={"query": PLACE, "variables": {"i": limit_buy(symbol, quantity="1")}},
            headers={"Authorization": f"Bearer {funded['token']}", "X-Request-ID": request_id},
        )
        order = response.json()["data"]["placeOrder"]["order"]
        return str(order["id"])

    ids = [f"trace-order-{i}" for i in range(8)]
    placed = await asyncio.gather(*(place(request_id) for request_id in ids))
    async with services.engine.connect() as conn:
        stored = dict(
            (
                await conn.execute(
                    text("SELECT id::text, request_id FROM orders WHERE id::text = ANY(:ids)"),
                    {"ids": placed},
                )
            ).all()
        )
        audited = dict(
            (
                await conn.execute(
                    text(
                        "SELECT entity_id, request_id FROM audit_log "
                        "WHERE action = 'order.accepted' AND entity_id = ANY(:ids)"
                    ),
                    {"ids": placed},
                )
            ).all()
        )
    expected = dict(zip(placed, ids, strict=True))
    assert stored == expected
    assert audited == expected
