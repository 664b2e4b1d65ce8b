"""Trailing stops, replaceOrder, closePosition, closeAllPositions and cancelAllOrders through the
real API, with the real matcher working the orders; `tradeql check` after each test."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import aclosing
from decimal import Decimal
from typing import Any
from uuid import UUID

import pytest
import pytest_asyncio
from gql import Client as GqlClient
from gql import gql as document
from gql.transport.websockets import WebsocketsTransport
from sqlalchemy import text

from services.infra.container import Services
from services.orders import fills
from services.orders.order_model import Status
from tests.api_trader import ApiTrader, check, deposit, running_matcher
from tests.graphql_client import GraphQLClient
from tests.trading import (
    balances,
    listed,
    position,
    quote,
    reload,
    unique_symbol,
    wait_status,
)
from workers.matcher import Matcher

ORDER = """id idempotencyKey symbol side type timeInForce quantity limitPrice stopPrice status
           filledQuantity averageFillPrice trailPrice trailPercent highWaterMark replaces
           replacedBy version"""
REPLACE = f"""mutation($id: ID!, $i: ReplaceOrderInput!) {{ replaceOrder(id: $id, input: $i) {{
  order {{ {ORDER} }} errors {{ code message field }} }} }}"""
CLOSE = f"""mutation($s: String!, $q: Decimal, $p: Decimal, $k: String!) {{
  closePosition(symbol: $s, quantity: $q, percentage: $p, idempotencyKey: $k) {{
    order {{ {ORDER} }} errors {{ code message field }} }} }}"""
CLOSE_ALL = f"""mutation($c: Boolean!, $k: String!) {{
  closeAllPositions(cancelOrders: $c, idempotencyKey: $k) {{
    orders {{ {ORDER} }} errors {{ code message field }} }} }}"""
CANCEL_ALL = f"""mutation {{ cancelAllOrders {{ orders {{ {ORDER} }} errors {{ code }} }} }}"""
PORTFOLIO = "{ portfolio { cash buyingPower positions { symbol quantity reservedQuantity } } }"
D = Decimal
CASH = D("100000")


@pytest_asyncio.fixture(scope="module", autouse=True)
async def books_balance(services: Services) -> AsyncIterator[None]:
    """`tradeql check` once the module is done (each test checks its own too)."""
    yield
    await check(services)


@pytest_asyncio.fixture(scope="module")
async def matcher(services: Services) -> AsyncIterator[Matcher]:
    async with running_matcher(services) as running:
        yield running


@pytest.fixture
async def symbol(services: Services) -> str:
    name = unique_symbol("R")
    await listed(services, name)
    await quote(services, name, "100.00", "100.02", "100.00")
    return name


@pytest.fixture
async def trader(gql: GraphQLClient, user: dict[str, str]) -> dict[str, str]:
    await deposit(gql, user["token"], CASH)
    return user


class Client(ApiTrader):
    def __init__(self, gql: GraphQLClient, user: dict[str, str]) -> None:
        super().__init__(gql, user, ORDER)

    async def replace(self, order_id: str, **fields: Any) -> dict[str, Any]:
        fields.setdefault("idempotencyKey", uuid.uuid4().hex)
        return await self.call(REPLACE, id=order_id, i=fields)

    async def portfolio(self) -> dict[str, Any]:
        return await self.call(PORTFOLIO)


@pytest.fixture
def client(gql: GraphQLClient, trader: dict[str, str]) -> Client:
    return Client(gql, trader)


async def events_of(services: Services, order_id: str) -> list[str]:
    async with services.engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT event FROM order_events WHERE order_id = :o ORDER BY version, created_at"),
            {"o": UUID(order_id)},
        )
        return list(rows.scalars())


async def bought(client: Client, symbol: str, quantity: str) -> dict[str, Any]:
    """A market buy, filled by the matcher at the ask."""
    order = await client.place(symbol, quantity=quantity)
    return await client.wait(order["id"], status="FILLED")


# -- trailing stops ----------------------------------------------------------------------------


async def test_a_trailing_stop_follows_a_rising_price_and_triggers_on_the_fall(
    services: Services, matcher: Matcher, client: Client, symbol: str
) -> None:
    await bought(client, symbol, "10")  # at 100.02
    order = await client.place(
        symbol, side="SELL", type="TRAILING_STOP", trailPrice="2.00", timeInForce="GTC"
    )
    assert (order["type"], order["trailPrice"], order["trailPercent"]) == (
        "TRAILING_STOP",
        "2.0000",
        None,
    )
    assert (order["highWaterMark"], order["stopPrice"]) == ("100.0000", "98.0000")
    await client.wait(order["id"], status="SUBMITTED")
    assert (await position(services, client.user_id, symbol)) == (D(10), D(10))  # held

    await quote(services, symbol, "103.00", "103.02", "103.00")  # up: the stop follows
    await client.wait(order["id"], highWaterMark="103.0000", stopPrice="101.0000")
    await quote(services, symbol, "102.00", "102.02", "102.00")  # down a little: it stays
    await quote(services, symbol, "101.50", "101.52", "101.50")  # above the stop
    await asyncio.sleep(1.2)  # a second for any store of the mark
    still = await client.order(order["id"])
    assert (still["status"], still["highWaterMark"], still["stopPrice"]) == (
        "SUBMITTED",
        "103.0000",
        "101.0000",
    )

    await quote(services, symbol, "100.90", "100.92", "100.90")  # through the stop: sold
    filled = await client.wait(order["id"], status="FILLED")
    assert (filled["averageFillPrice"], filled["highWaterMark"], filled["stopPrice"]) == (
        "100.9000",
        "103.0000",
        "101.0000",
    )
    assert await events_of(services, order["id"]) == ["ACCEPTED", "ACCEPTED", "TRIGGERED", "FILL"]
    assert await position(services, client.user_id, symbol) == (D(0), D(0))
    assert await balances(services, client.user_id) == (
        CASH - D("1000.20") + D("1009.00"),
        D(0),
    )
    await check(services)


async def test_a_buy_trailing_stop_holds_at_its_initial_stop_and_triggers_on_the_rise(
    services: Services, matcher: Matcher, client: Client, symbol: str
) -> None:
    order = await client.place(symbol, type="TRAILING_STOP", trailPercent="5")
    assert (order["highWaterMark"], order["stopPrice"], order["trailPercent"]) == (
        "100.0000",
        "105.0000",
        "5.00",
    )
    collar = services.settings.market_order_collar
    hold = (D(10) * D("105.00") * (1 + collar)).quantize(D("0.01"))
    assert D((await client.portfolio())["buyingPower"]) == CASH - hold
    await client.wait(order["id"], status="SUBMITTED")
    await quote(services, symbol, "90.00", "90.02", "90.00")  # down: the buy stop follows
    await client.wait(order["id"], highWaterMark="90.0000", stopPrice="94.5000")
    assert D((await client.portfolio())["buyingPower"]) == CASH - hold  # the hold stays
    await quote(services, symbol, "94.50", "94.52", "94.50")
    filled = await client.wait(order["id"], status="FILLED")
    assert filled["averageFillPrice"] == "94.5200"
    assert await balances(services, client.user_id) == (CASH - D("945.20"), D(0))
    await check(services)


@pytest.mark.parametrize(
    ("kind", "extra", "events"),
    [
        ("STOP", {}, ["ACCEPTED", "ACCEPTED", "TRIGGERED", "FILL"]),
        ("STOP_LIMIT", {"limitPrice": "95.00"}, ["ACCEPTED", "ACCEPTED", "TRIGGERED", "FILL"]),
    ],
)
async def test_stops_announce_their_trigger(
    services: Services,
    matcher: Matcher,
    client: Client,
    symbol: str,
    kind: str,
    extra: dict[str, str],
    events: list[str],
) -> None:
    await bought(client, symbol, "2")
    order = await client.place(
        symbol, side="SELL", type=kind, quantity="2", stopPrice="97.00", **extra
    )
    await client.wait(order["id"], status="SUBMITTED")
    await quote(services, symbol, "96.90", "96.92", "96.90")
    await client.wait(order["id"], status="FILLED")
    assert await events_of(services, order["id"]) == events
    await check(services)


async def test_trailing_stop_input_errors_name_the_field(client: Client, symbol: str) -> None:
    cases = [
        ({"trailPrice": "1.00", "trailPercent": "1"}, "trailPrice"),
        ({}, "trailPrice"),
        ({"trailPercent": "100"}, "trailPercent"),
        ({"trailPrice": "150.00", "side": "SELL"}, "trailPrice"),
        ({"trailPrice": "1.00", "timeInForce": "FOK"}, "timeInForce"),
        ({"trailPrice": "1.00", "stopPrice": "99.00"}, "stopPrice"),
    ]
    for fields, field in cases:
        order = {"symbol": symbol, "side": "BUY", "type": "TRAILING_STOP", "quantity": "1"}
        order |= fields | {"idempotencyKey": uuid.uuid4().hex}
        payload = await client.call(client.place_document, i=order)
        assert payload["order"] is None
        assert [(e["code"], e["field"]) for e in payload["errors"]] in (
            [("INVALID_INPUT", field)],
            [("INSUFFICIENT_SHARES", "quantity")],  # a sell of shares the trader lacks
        ), (fields, payload)
    assert D((await client.portfolio())["buyingPower"]) == CASH


# -- replace -----------------------------------------------------------------------------------


async def test_replace_swaps_the_order_and_its_hold_in_one_step(
    services: Services, client: Client, symbol: str
) -> None:
    old = await client.place(symbol, type="LIMIT", limitPrice="90.00")  # holds 900
    key = uuid.uuid4().hex
    payload = await client.replace(old["id"], limitPrice="95.00", quantity="4", idempotencyKey=key)
    assert payload["errors"] == []
    new = payload["order"]
    assert (new["quantity"], new["limitPrice"], new["replaces"], new["idempotencyKey"]) == (
        "4.000000",
        "95.0000",
        old["id"],
        key,
    )
    assert (new["type"], new["timeInForce"], new["status"]) == ("LIMIT", "DAY", "PENDING")
    ended = await client.order(old["id"])
    assert (ended["status"], ended["replacedBy"]) == ("REPLACED", new["id"])
    assert D((await client.portfolio())["buyingPower"]) == CASH - D("380.00")
    events = await events_of(services, old["id"])  # ACCEPTED twice once the matcher took it
    assert (events[0], events[-1], events.count("REPLACED")) == ("ACCEPTED", "REPLACED", 1)
    assert (await events_of(services, new["id"]))[:1] == ["ACCEPTED"]

    again = await client.replace(old["id"], limitPrice="95.00", quantity="4", idempotencyKey=key)
    assert again["order"]["id"] == new["id"]  # the same key answers with the same order
    other = await client.replace(old["id"], limitPrice="96.00", idempotencyKey=key)
    assert [e["code"] for e in other["errors"]] == ["IDEMPOTENCY_CONFLICT"]
    late = await client.replace(old["id"], limitPrice="96.00")
    assert [(e["code"], e["field"]) for e in late["errors"]] == [("NOT_REPLACEABLE", "id")]
    assert D((await client.portfolio())["buyingPower"]) == CASH - D("380.00")
    await check(services)


async def test_a_replaced_trailing_stop_keeps_following_from_its_mark(
    services: Services, matcher: Matcher, client: Client, symbol: str
) -> None:
    await bought(client, symbol, "4")
    old = await client.place(
        symbol, side="SELL", type="TRAILING_STOP", trailPrice="2.00", quantity="4"
    )
    await client.wait(old["id"], status="SUBMITTED")
    await quote(services, symbol, "103.00", "103.02", "103.00")
    await client.wait(old["id"], highWaterMark="103.0000")
    payload = await client.replace(old["id"], trailPercent="1")
    assert payload["errors"] == []
    new = payload["order"]
    assert (new["trailPrice"], new["trailPercent"], new["highWaterMark"], new["stopPrice"]) == (
        None,
        "1.00",
        "103.0000",
        "101.9700",
    )
    await client.wait(new["id"], status="SUBMITTED")  # the matcher took the new one
    assert await position(services, client.user_id, symbol) == (D(4), D(4))
    await quote(services, symbol, "101.90", "101.92", "101.90")
    filled = await client.wait(new["id"], status="FILLED")
    assert filled["averageFillPrice"] == "101.9000"
    assert (await client.order(old["id"]))["status"] == "REPLACED"
    await check(services)


async def test_replace_refusals(services: Services, client: Client, symbol: str) -> None:
    order = await client.place(symbol, type="LIMIT", limitPrice="90.00", quantity="1000")
    cases = [
        ({"limitPrice": "200.00"}, "INSUFFICIENT_BUYING_POWER", "quantity"),  # 200k > 100k
        ({"limitPrice": "90.001"}, "INVALID_INPUT", "limitPrice"),
        ({"limitPrice": "0"}, "INVALID_INPUT", "limitPrice"),
        ({"stopPrice": "80.00"}, "INVALID_INPUT", "stopPrice"),  # a LIMIT takes none
        ({"trailPrice": "1.00"}, "INVALID_INPUT", "trailPrice"),
        ({"quantity": "0"}, "INVALID_INPUT", "quantity"),
    ]
    for fields, code, field in cases:
        payload = await client.replace(order["id"], **fields)
        assert [(e["code"], e["field"]) for e in payload["errors"]] == [(code, field)], fields
    assert (await client.order(order["id"]))["status"] in ("PENDING", "SUBMITTED")
    assert D((await client.portfolio())["buyingPower"]) == CASH - D("90000.00")
    # the hold may use what the old order held: 1000 x 99 = 99,000 < 100,000 free with it
    payload = await client.replace(order["id"], limitPrice="99.00")
    assert payload["errors"] == [] and payload["order"]["quantity"] == "1000.000000"
    missing = await client.replace(str(uuid.uuid4()), limitPrice="1.00")
    assert [e["code"] for e in missing["errors"]] == ["NOT_FOUND"]
    assert D((await client.portfolio())["buyingPower"]) == CASH - D("99000.00")
    await check(services)


async def test_replace_a_partly_filled_sell_trades_what_is_left(
    services: Services, client: Client, symbol: str
) -> None:
    buy = await client.place(symbol, type="LIMIT", limitPrice="100.00", quantity="10")
    await fill(services, buy["id"], "10", "100.00")
    sell = await client.place(symbol, side="SELL", type="LIMIT", limitPrice="110.00")
    await fill(services, sell["id"], "3", "110.00")
    payload = await client.replace(sell["id"], limitPrice="108.00")
    assert payload["errors"] == []
    new = payload["order"]
    assert (new["quantity"], new["limitPrice"]) == ("7.000000", "108.0000")
    assert await position(services, client.user_id, symbol) == (D(7), D(7))
    too_many = await client.replace(new["id"], quantity="8")
    assert [(e["code"], e["field"]) for e in too_many["errors"]] == [
        ("INSUFFICIENT_SHARES", "quantity")
    ]
    await check(services)


async def fill(services: Services, order_id: str | UUID, quantity: str, price: str) -> bool:
    """A fill booked as the matcher books it (the matcher's own SUBMITTED may come first): on a
    stale order (another change won the lock) the order is read again; False once it is no
    longer open."""
    venue_id = f"t:{uuid.uuid4().hex}"
    while True:
        order = await reload(services, UUID(str(order_id)))
        if not order.is_open:
            return False
        try:
            async with services.engine.begin() as conn:
                await fills.execute(
                    conn, order, [fills.Fill("EDGX", D(quantity), D(price), venue_id)]
                )
            return True
        except fills.StaleOrder:
            continue


async def test_replace_racing_a_fill_never_loses_or_doubles_a_share(
    services: Services, client: Client, symbol: str
) -> None:
    """A hundred times: a partial fill of 4 and a replace at once. Either the fill commits first
    (the new order trades the 6 left) or the replace does (the fill applies nothing); the
    holds and the ledger stay exact either way."""
    outcomes = {"fill first": 0, "replace first": 0}
    spent = D(0)
    for _ in range(100):
        order = await client.place(symbol, type="LIMIT", limitPrice="10.00")
        filled, payload = await asyncio.gather(
            fill(services, order["id"], "4", "10.00"),
            client.replace(order["id"], limitPrice="9.00"),
        )
        assert payload["errors"] == [], payload
        old = await reload(services, UUID(order["id"]))
        new = await reload(services, UUID(payload["order"]["id"]))
        assert old.status is Status.REPLACED and old.replaced_by == new.id
        assert old.filled_quantity == (D(4) if filled else D(0))
        assert old.filled_quantity + new.quantity == D(10)
        assert new.reserved_cash == new.quantity * D("9.00")
        outcomes["fill first" if filled else "replace first"] += 1
        spent += old.filled_quantity * D("10.00")
        cancelled = await client.call(CANCEL_ALL)
        assert [o["id"] for o in cancelled["orders"]] == [str(new.id)]
    assert await balances(services, client.user_id) == (CASH - spent, D(0))
    assert sum(outcomes.values()) == 100
    assert min(outcomes.values()) > 0, outcomes  # both orders of the race were exercised
    await check(services)


# -- closing and cancelling --------------------------------------------------------------------


async def test_close_position_by_percentage_quantity_and_whole(
    services: Services, matcher: Matcher, client: Client, symbol: str
) -> None:
    await bought(client, symbol, "10")
    key = uuid.uuid4().hex
    half = await client.call(CLOSE, s=symbol, p="25", k=key)
    assert half["errors"] == []
    assert (half["order"]["side"], half["order"]["type"], half["order"]["quantity"]) == (
        "SELL",
        "MARKET",
        "2.500000",
    )
    await client.wait(half["order"]["id"], status="FILLED")
    again = await client.call(CLOSE, s=symbol, p="25", k=key)  # a retry: the same order
    assert again["order"]["id"] == half["order"]["id"]
    conflict = await client.call(CLOSE, s=symbol, p="50", k=key)
    assert [e["code"] for e in conflict["errors"]] == ["IDEMPOTENCY_CONFLICT"]

    resting = await client.place(
        symbol, side="SELL", type="LIMIT", limitPrice="150.00", quantity="3"
    )
    refusals = [
        ({"q": "5", "p": "10"}, "INVALID_INPUT", "percentage"),
        ({"p": "0"}, "INVALID_INPUT", "percentage"),
        ({"p": "100.5"}, "INVALID_INPUT", "percentage"),
        ({"q": "-1"}, "INVALID_INPUT", "quantity"),
        ({"q": "5"}, "INSUFFICIENT_SHARES", "quantity"),  # 7.5 held, 3 of them by the limit
        ({}, "INSUFFICIENT_SHARES", "quantity"),  # the whole position: 3 are held
    ]
    for variables, code, field in refusals:
        payload = await client.call(CLOSE, s=symbol, k=uuid.uuid4().hex, **variables)
        assert [(e["code"], e["field"]) for e in payload["errors"]] == [(code, field)], variables
    some = await client.call(CLOSE, s=symbol, q="4.5", k=uuid.uuid4().hex)
    await client.wait(some["order"]["id"], status="FILLED")
    assert await position(services, client.user_id, symbol) == (D(3), D(3))
    await client.call(CANCEL_ALL)
    rest = await client.call(CLOSE, s=symbol, k=uuid.uuid4().hex)
    assert rest["order"]["quantity"] == "3.000000"
    await client.wait(rest["order"]["id"], status="FILLED")
    assert await position(services, client.user_id, symbol) == (D(0), D(0))
    gone = await client.call(CLOSE, s=symbol, k=uuid.uuid4().hex)
    assert [(e["code"], e["field"]) for e in gone["errors"]] == [("NOT_FOUND", "symbol")]
    assert resting["id"]
    await check(services)


async def test_close_all_positions_cancels_first_and_is_idempotent(
    services: Services, matcher: Matcher, client: Client, symbol: str
) -> None:
    second = unique_symbol("R")
    await listed(services, second)
    await quote(services, second, "20.00", "20.02", "20.00")
    await bought(client, symbol, "5")
    await bought(client, second, "8")
    sell = await client.place(symbol, side="SELL", type="LIMIT", limitPrice="150.00", quantity="5")
    buy = await client.place(second, type="LIMIT", limitPrice="10.00", quantity="1")
    await client.wait(sell["id"], status="SUBMITTED")

    kept = await client.call(CLOSE_ALL, c=False, k=uuid.uuid4().hex)  # the limit holds symbol
    assert [(e["code"], e["message"].split(":")[0]) for e in kept["errors"]] == [
        ("INSUFFICIENT_SHARES", symbol)
    ]
    assert [(o["symbol"], o["quantity"]) for o in kept["orders"]] == [(second, "8.000000")]
    await client.wait(kept["orders"][0]["id"], status="FILLED")
    await bought(client, second, "8")

    key = uuid.uuid4().hex
    closed = await client.call(CLOSE_ALL, c=True, k=key)
    assert closed["errors"] == []
    orders = sorted(closed["orders"], key=lambda o: o["symbol"])
    assert sorted((o["symbol"], o["quantity"], o["idempotencyKey"]) for o in orders) == sorted(
        [(symbol, "5.000000", f"{key}:{symbol}"), (second, "8.000000", f"{key}:{second}")]
    )
    assert (await client.order(sell["id"]))["status"] == "CANCELLED"
    assert (await client.order(buy["id"]))["status"] == "CANCELLED"
    for order in orders:
        await client.wait(order["id"], status="FILLED")
    retry = await client.call(CLOSE_ALL, c=True, k=key)
    assert sorted(o["id"] for o in retry["orders"]) == sorted(o["id"] for o in orders)
    portfolio = await client.portfolio()
    assert [p for p in portfolio["positions"] if D(p["quantity"])] == []
    assert D(portfolio["buyingPower"]) == D(portfolio["cash"])
    await check(services)


async def test_cancel_all_orders_releases_every_hold(
    services: Services, client: Client, symbol: str
) -> None:
    buy = await client.place(symbol, type="LIMIT", limitPrice="90.00")
    await fill(services, buy["id"], "10", "90.00")
    orders = [
        await client.place(symbol, type="LIMIT", limitPrice="80.00"),
        await client.place(symbol, type="STOP", stopPrice="120.00", timeInForce="GTC"),
        await client.place(symbol, side="SELL", type="TRAILING_STOP", trailPercent="3"),
    ]
    assert await position(services, client.user_id, symbol) == (D(10), D(10))
    cancelled = await client.call(CANCEL_ALL)
    assert sorted(o["id"] for o in cancelled["orders"]) == sorted(o["id"] for o in orders)
    assert {o["status"] for o in cancelled["orders"]} == {"CANCELLED"}
    assert await position(services, client.user_id, symbol) == (D(10), D(0))
    assert (await balances(services, client.user_id))[1] == 0
    assert (await client.call(CANCEL_ALL))["orders"] == []
    await wait_status(services, UUID(orders[0]["id"]), Status.CANCELLED)
    await check(services)


async def test_triggered_and_replaced_reach_order_updates(
    api_url: str, services: Services, matcher: Matcher, client: Client, symbol: str
) -> None:
    transport = WebsocketsTransport(
        url=api_url.replace("http://", "ws://") + "/graphql",
        subprotocols=[WebsocketsTransport.GRAPHQLWS_SUBPROTOCOL],
        init_payload={"Authorization": f"Bearer {client.token}"},
        close_timeout=2,
    )
    subscription = document(
        "subscription { orderUpdates { event order { id status stopPrice highWaterMark "
        "replaces replacedBy } } }"
    )
    async with (
        GqlClient(transport=transport) as session,
        aclosing(session.subscribe(subscription)) as updates,
    ):
        first = asyncio.ensure_future(anext(updates))  # gql subscribes on the first read
        await asyncio.sleep(0.5)
        seen: list[dict[str, Any]] = []

        async def until(event: str, order_id: str) -> dict[str, Any]:
            if not seen:
                seen.append(await asyncio.wait_for(first, 10))
            while True:
                update = seen[-1]["orderUpdates"]
                if (update["event"], update["order"]["id"]) == (event, order_id):
                    return update  # type: ignore[no-any-return]
                seen.append(await asyncio.wait_for(anext(updates), 10))

        await bought(client, symbol, "3")
        stop = await client.place(
            symbol, side="SELL", type="TRAILING_STOP", quantity="3", trailPrice="1.00"
        )
        await until("ACCEPTED", stop["id"])
        await client.wait(stop["id"], status="SUBMITTED")
        await quote(services, symbol, "98.90", "98.92", "98.90")
        triggered = await until("TRIGGERED", stop["id"])
        assert (triggered["order"]["stopPrice"], triggered["order"]["highWaterMark"]) == (
            "99.0000",
            "100.0000",
        )
        await until("FILL", stop["id"])

        old = await client.place(symbol, type="LIMIT", limitPrice="90.00", quantity="1")
        new = (await client.replace(old["id"], limitPrice="91.00"))["order"]
        replaced = await until("REPLACED", old["id"])
        assert (replaced["order"]["status"], replaced["order"]["replacedBy"]) == (
            "REPLACED",
            new["id"],
        )
        accepted = await until("ACCEPTED", new["id"])
        assert accepted["order"]["replaces"] == old["id"]
    await check(services)
