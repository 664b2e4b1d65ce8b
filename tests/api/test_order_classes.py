"""Order classes (BRACKET, OTO, OCO) through the real API, with the real matcher working the
entries and their legs; holds, the ledger and every order's history checked (`tradeql check`)
after each test and after the module."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

import pytest
import pytest_asyncio
from sqlalchemy import text

from services.infra.container import Services
from services.orders import fills
from services.orders.eod import expire_day_orders
from tests.api_trader import ApiTrader, check, deposit, running_matcher
from tests.graphql_client import GraphQLClient
from tests.trading import balances, listed, position, quote, reload, unique_symbol
from workers.matcher import Matcher

LEG = "id side type timeInForce quantity limitPrice stopPrice status orderClass parentId"
ORDER = f"""id idempotencyKey side type timeInForce quantity limitPrice stopPrice status
            filledQuantity averageFillPrice orderClass parentId rejectReason version
            legs {{ {LEG} }}"""
REPLACE = """mutation($id: ID!, $i: ReplaceOrderInput!) { replaceOrder(id: $id, input: $i) {
  order { id } errors { code message field } } }"""
CANCEL_ALL = "mutation { cancelAllOrders { orders { id } errors { code } } }"
PAGE = f"""{{ orders(first: 50) {{ edges {{ node {{ {ORDER} }} }} }} }}"""
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
    name = unique_symbol("B")
    await listed(services, name)
    await quote(services, name, "100.00", "100.02", "100.00")
    return name


class Client(ApiTrader):
    def __init__(self, gql: GraphQLClient, user: dict[str, str]) -> None:
        super().__init__(gql, user, ORDER)


@pytest.fixture
async def client(gql: GraphQLClient, user: dict[str, str]) -> Client:
    await deposit(gql, user["token"], CASH)
    return Client(gql, user)


async def fill(services: Services, order_id: str, quantity: str, price: str) -> fills.Outcome:
    """A fill booked as the matcher books it (retried when the matcher's own change of the
    order wins the lock), and the matcher told of the orders it moved beside it, as the
    matcher's committer tells it."""
    venue_id = f"t:{uuid.uuid4().hex}"
    while True:
        order = await reload(services, UUID(order_id))
        try:
            async with services.engine.begin() as conn:
                outcome = await fills.execute(
                    conn, order, [fills.Fill("EDGX", D(quantity), D(price), venue_id)]
                )
            break
        except fills.StaleOrder:
            continue
    await fills.publish(services.redis, [], outcome.linked, services.settings.quote_partitions)
    return outcome


def bracket(**fields: Any) -> dict[str, Any]:
    return {
        "orderClass": "BRACKET",
        "takeProfit": {"limitPrice": "105.00"},
        "stopLoss": {"stopPrice": "95.00"},
    } | fields


async def filled_bracket(client: Client, symbol: str) -> tuple[dict[str, Any], list[Any]]:
    """A market BRACKET entry of 10 filled at the ask (100.02), and its two legs working."""
    entry = await client.place(symbol, **bracket(timeInForce="GTC"))
    assert (entry["orderClass"], entry["legs"], entry["parentId"]) == ("BRACKET", [], None)
    entry = await client.wait(entry["id"], status="FILLED")
    legs = entry["legs"]
    assert [(leg["type"], leg["side"], leg["quantity"]) for leg in legs] == [
        ("LIMIT", "SELL", "10.000000"),
        ("STOP", "SELL", "10.000000"),
    ]
    assert (legs[0]["limitPrice"], legs[1]["stopPrice"]) == ("105.0000", "95.0000")
    assert {(leg["parentId"], leg["orderClass"], leg["timeInForce"]) for leg in legs} == {
        (entry["id"], "BRACKET", "GTC")
    }
    for leg in legs:
        await client.wait(leg["id"], status="SUBMITTED")
    return entry, legs


# -- brackets ----------------------------------------------------------------------------------


async def test_a_bracket_whose_take_profit_fills_cancels_its_stop_loss(
    services: Services, matcher: Matcher, client: Client, symbol: str
) -> None:
    _, (take_profit, stop_loss) = await filled_bracket(client, symbol)
    assert await position(services, client.user_id, symbol) == (D(10), D(10))  # held once

    await quote(services, symbol, "105.00", "105.02", "105.00")  # the take-profit's limit
    sold = await client.wait(take_profit["id"], status="FILLED")
    assert sold["averageFillPrice"] == "105.0000"
    cancelled = await client.wait(stop_loss["id"], status="CANCELLED")
    assert take_profit["id"] in cancelled["rejectReason"]
    assert await position(services, client.user_id, symbol) == (D(0), D(0))
    assert await balances(services, client.user_id) == (CASH - D("1000.20") + D("1050.00"), D(0))
    await check(services)


async def test_a_bracket_whose_stop_loss_fills_cancels_its_take_profit(
    services: Services, matcher: Matcher, client: Client, symbol: str
) -> None:
    _, (take_profit, stop_loss) = await filled_bracket(client, symbol)

    await quote(services, symbol, "94.90", "94.92", "94.90")  # through the stop: sold at the bid
    sold = await client.wait(stop_loss["id"], status="FILLED")
    assert sold["averageFillPrice"] == "94.9000"
    await client.wait(take_profit["id"], status="CANCELLED")
    assert await position(services, client.user_id, symbol) == (D(0), D(0))
    assert await balances(services, client.user_id) == (CASH - D("1000.20") + D("949.00"), D(0))
    await check(services)


async def test_a_partly_filled_take_profit_reduces_its_stop_loss(
    services: Services, matcher: Matcher, client: Client, symbol: str
) -> None:
    _, (take_profit, stop_loss) = await filled_bracket(client, symbol)
    await fill(services, take_profit["id"], "4", "105.00")
    assert (await client.order(take_profit["id"]))["status"] == "PARTIALLY_FILLED"
    reduced = await client.order(stop_loss["id"])
    assert (reduced["quantity"], reduced["status"]) == ("6.000000", "SUBMITTED")
    async with services.engine.connect() as conn:  # its owner's screens are told, as ACCEPTED
        told = (
            await conn.execute(
                text(
                    "SELECT event, kind, payload::jsonb -> 'order' ->> 'quantity' FROM order_events "
                    "WHERE order_id = :o ORDER BY version DESC, seq DESC LIMIT 1"
                ),
                {"o": UUID(stop_loss["id"])},
            )
        ).one()
    assert (told[0], told[1], D(told[2])) == ("ACCEPTED", "UPDATED", D(6))
    assert await position(services, client.user_id, symbol) == (D(6), D(6))
    await check(services)

    await client.cancel(stop_loss["id"])  # cancelling a leg cancels its sibling
    await client.wait(take_profit["id"], status="CANCELLED")
    assert await position(services, client.user_id, symbol) == (D(6), D(0))
    await check(services)


async def test_a_partly_filled_entry_cancelled_gets_legs_for_what_filled(
    services: Services, matcher: Matcher, client: Client, symbol: str
) -> None:
    entry = await client.place(symbol, type="LIMIT", limitPrice="99.00", **bracket())
    await client.wait(entry["id"], status="SUBMITTED")  # resting below the ask
    await fill(services, entry["id"], "4", "99.00")
    assert (await client.order(entry["id"]))["legs"] == []  # not before the entry ends

    ended = await client.cancel(entry["id"])
    assert (ended["status"], ended["filledQuantity"]) == ("CANCELLED", "4.000000")
    legs = ended["legs"]
    assert [(leg["type"], leg["quantity"], leg["timeInForce"]) for leg in legs] == [
        ("LIMIT", "4.000000", "DAY"),
        ("STOP", "4.000000", "DAY"),
    ]
    for leg in legs:
        await client.wait(leg["id"], status="SUBMITTED")  # handed to the matcher
    assert await position(services, client.user_id, symbol) == (D(4), D(4))
    assert await balances(services, client.user_id) == (CASH - D("396.00"), D(0))
    await check(services)

    await client.cancel(legs[0]["id"])  # cancelling a leg cancels its sibling
    await client.wait(legs[1]["id"], status="CANCELLED")
    assert await position(services, client.user_id, symbol) == (D(4), D(0))
    await check(services)


async def test_a_partly_filled_entry_that_expires_gets_day_legs_that_expire_together(
    services: Services, matcher: Matcher, client: Client, symbol: str
) -> None:
    entry = await client.place(symbol, type="LIMIT", limitPrice="99.00", **bracket())
    await client.wait(entry["id"], status="SUBMITTED")
    await fill(services, entry["id"], "3", "99.00")
    await expire_day_orders(services, datetime.now(UTC))  # the close
    ended = await client.order(entry["id"])
    assert (ended["status"], ended["filledQuantity"]) == ("EXPIRED", "3.000000")
    legs = ended["legs"]
    assert [(leg["quantity"], leg["timeInForce"]) for leg in legs] == [("3.000000", "DAY")] * 2
    assert {leg["status"] for leg in legs} <= {"PENDING", "SUBMITTED"}  # they work tomorrow
    assert await position(services, client.user_id, symbol) == (D(3), D(3))
    await check(services)

    await expire_day_orders(services, datetime.now(UTC))  # the next close: both legs expire
    for leg in legs:
        await client.wait(leg["id"], status="EXPIRED")
    assert await position(services, client.user_id, symbol) == (D(3), D(0))
    await check(services)


async def test_cancel_all_orders_leaves_no_leg_working(
    services: Services, matcher: Matcher, client: Client, symbol: str
) -> None:
    """A partly filled entry cancelled with every other order makes its legs, and they are
    cancelled in the same transaction (closeAllPositions may then sell the shares)."""
    entry = await client.place(symbol, type="LIMIT", limitPrice="99.00", **bracket())
    await client.wait(entry["id"], status="SUBMITTED")
    await fill(services, entry["id"], "2", "99.00")
    cancelled = await client.call(CANCEL_ALL)
    ended = await client.order(entry["id"])
    assert ended["status"] == "CANCELLED"
    assert [leg["status"] for leg in ended["legs"]] == ["CANCELLED", "CANCELLED"]
    assert {o["id"] for o in cancelled["orders"]} == {entry["id"]} | {
        leg["id"] for leg in ended["legs"]
    }
    assert await position(services, client.user_id, symbol) == (D(2), D(0))
    await check(services)


async def test_cancelling_an_unfilled_bracket_entry_cancels_the_whole_order(
    services: Services, matcher: Matcher, client: Client, symbol: str
) -> None:
    entry = await client.place(symbol, type="LIMIT", limitPrice="99.00", **bracket())
    assert await balances(services, client.user_id) == (CASH, D("990.00"))
    ended = await client.cancel(entry["id"])
    assert (ended["status"], ended["legs"]) == ("CANCELLED", [])
    await asyncio.sleep(0.3)  # nothing made after the answer either
    assert (await client.order(entry["id"]))["legs"] == []
    assert await balances(services, client.user_id) == (CASH, D(0))
    assert await position(services, client.user_id, symbol) == (D(0), D(0))
    await check(services)


# -- OTO and OCO -------------------------------------------------------------------------------


async def test_an_oto_entry_gets_its_one_exit(
    services: Services, matcher: Matcher, client: Client, symbol: str
) -> None:
    entry = await client.place(
        symbol,
        quantity="5",
        orderClass="OTO",
        stopLoss={"stopPrice": "95.00", "limitPrice": "94.50"},
    )
    entry = await client.wait(entry["id"], status="FILLED")
    (leg,) = entry["legs"]
    assert (leg["type"], leg["quantity"], leg["stopPrice"], leg["limitPrice"]) == (
        "STOP_LIMIT",
        "5.000000",
        "95.0000",
        "94.5000",
    )
    assert (leg["orderClass"], leg["parentId"]) == ("OTO", entry["id"])
    await client.wait(leg["id"], status="SUBMITTED")
    assert await position(services, client.user_id, symbol) == (D(5), D(5))

    await quote(services, symbol, "94.80", "94.82", "94.80")  # triggers; the limit takes the bid
    sold = await client.wait(leg["id"], status="FILLED")
    assert sold["averageFillPrice"] == "94.8000"
    assert await position(services, client.user_id, symbol) == (D(0), D(0))
    await check(services)


async def test_an_oco_holds_its_shares_once(
    services: Services, matcher: Matcher, client: Client, symbol: str
) -> None:
    bought = await client.place(symbol, quantity="10")
    await client.wait(bought["id"], status="FILLED")
    oco = await client.place(
        symbol,
        side="SELL",
        type="LIMIT",
        timeInForce="GTC",
        orderClass="OCO",
        takeProfit={"limitPrice": "110.00"},
        stopLoss={"stopPrice": "95.00"},
    )
    assert (oco["orderClass"], oco["type"], oco["limitPrice"], oco["parentId"]) == (
        "OCO",
        "LIMIT",
        "110.0000",
        None,
    )
    (stop_loss,) = oco["legs"]
    assert (stop_loss["type"], stop_loss["stopPrice"], stop_loss["quantity"]) == (
        "STOP",
        "95.0000",
        "10.000000",
    )
    assert (stop_loss["parentId"], stop_loss["orderClass"]) == (oco["id"], "OCO")
    portfolio = await client.call(PORTFOLIO)
    (held,) = [p for p in portfolio["positions"] if p["symbol"] == symbol]
    assert (held["quantity"], held["reservedQuantity"]) == ("10.000000", "10.000000")
    assert await position(services, client.user_id, symbol) == (D(10), D(10))
    await check(services)  # the open sells hold 10, as the position does
    more = await client.try_place(
        symbol, side="SELL", type="LIMIT", limitPrice="120.00", quantity="1"
    )
    assert [(e["code"], e["field"]) for e in more["errors"]] == [
        ("INSUFFICIENT_SHARES", "quantity")
    ]

    await client.wait(stop_loss["id"], status="SUBMITTED")
    await quote(services, symbol, "94.90", "94.92", "94.90")
    await client.wait(stop_loss["id"], status="FILLED")
    parent = await client.wait(oco["id"], status="CANCELLED")
    assert stop_loss["id"] in parent["rejectReason"]
    assert await position(services, client.user_id, symbol) == (D(0), D(0))
    await check(services)


async def test_cancelling_an_oco_parent_cancels_its_leg(
    services: Services, matcher: Matcher, client: Client, symbol: str
) -> None:
    bought = await client.place(symbol, quantity="3")
    await client.wait(bought["id"], status="FILLED")
    oco = await client.place(
        symbol,
        side="SELL",
        type="LIMIT",
        quantity="3",
        limitPrice="110.00",
        orderClass="OCO",
        takeProfit={"limitPrice": "110.00"},
        stopLoss={"stopPrice": "95.00", "limitPrice": "94.00"},
    )
    ended = await client.cancel(oco["id"])
    assert [(leg["type"], leg["status"]) for leg in ended["legs"]] == [("STOP_LIMIT", "CANCELLED")]
    assert await position(services, client.user_id, symbol) == (D(3), D(0))
    await check(services)


# -- refusals, replays -------------------------------------------------------------------------

REFUSALS = [
    ("a bracket needs both exits", bracket(stopLoss=None), "stopLoss"),
    ("a bracket needs both exits", bracket(takeProfit=None), "takeProfit"),
    ("an entry buys", bracket(side="SELL"), "side"),
    ("an entry is MARKET or LIMIT", bracket(type="STOP", stopPrice="101.00"), "type"),
    ("DAY or GTC", bracket(timeInForce="IOC"), "timeInForce"),
    ("by quantity", bracket(quantity=None, notional="1000.00"), "notional"),
    (
        "regular hours",
        bracket(type="LIMIT", limitPrice="100.00", extendedHours=True),
        "extendedHours",
    ),
    (
        "take-profit above the limit",
        bracket(type="LIMIT", limitPrice="100.00", takeProfit={"limitPrice": "100.00"}),
        "takeProfit.limitPrice",
    ),
    (
        "stop-loss below the limit",
        bracket(type="LIMIT", limitPrice="100.00", stopLoss={"stopPrice": "100.50"}),
        "stopLoss.stopPrice",
    ),
    (
        "take-profit above the ask",
        bracket(takeProfit={"limitPrice": "100.01"}),
        "takeProfit.limitPrice",
    ),
    ("stop-loss below the ask", bracket(stopLoss={"stopPrice": "100.05"}), "stopLoss.stopPrice"),
    ("on the tick grid", bracket(takeProfit={"limitPrice": "105.001"}), "takeProfit.limitPrice"),
    (
        "a stop-limit's limit at most its stop",
        bracket(stopLoss={"stopPrice": "95.00", "limitPrice": "95.50"}),
        "stopLoss.limitPrice",
    ),
    ("an OTO has one exit", bracket(orderClass="OTO"), "takeProfit"),
    ("an OTO has one exit", {"orderClass": "OTO"}, "takeProfit"),
    ("exits are for class orders", {"takeProfit": {"limitPrice": "105.00"}}, "takeProfit"),
    ("exits are for class orders", {"stopLoss": {"stopPrice": "95.00"}}, "stopLoss"),
    ("an OCO sells", bracket(orderClass="OCO", type="LIMIT"), "side"),
    ("an OCO is a LIMIT", bracket(orderClass="OCO", side="SELL"), "type"),
    (
        "an OCO's limit is its take-profit's",
        bracket(orderClass="OCO", side="SELL", type="LIMIT", limitPrice="104.00"),
        "limitPrice",
    ),
    (
        "an OCO's take-profit above its stop",
        bracket(orderClass="OCO", side="SELL", type="LIMIT", takeProfit={"limitPrice": "95.00"}),
        "takeProfit.limitPrice",
    ),
]


async def test_each_refusal_names_its_field(
    services: Services, client: Client, symbol: str
) -> None:
    for why, fields, field in REFUSALS:
        payload = await client.try_place(symbol, **fields)
        assert payload["order"] is None, why
        assert [(e["code"], e["field"]) for e in payload["errors"]] == [("INVALID_INPUT", field)], (
            why,
            payload["errors"],
        )
    assert await balances(services, client.user_id) == (CASH, D(0))


async def test_a_class_order_replayed_answers_with_the_same_order(
    services: Services, matcher: Matcher, client: Client, symbol: str
) -> None:
    bought = await client.place(symbol, quantity="10")
    await client.wait(bought["id"], status="FILLED")
    oco = {
        "side": "SELL",
        "type": "LIMIT",
        "orderClass": "OCO",
        "takeProfit": {"limitPrice": "110.00"},
        "stopLoss": {"stopPrice": "95.00"},
        "idempotencyKey": uuid.uuid4().hex,
    }
    first, again = await asyncio.gather(client.place(symbol, **oco), client.place(symbol, **oco))
    assert first["id"] == again["id"]
    assert [leg["id"] for leg in first["legs"]] == [leg["id"] for leg in again["legs"]]
    assert len(first["legs"]) == 1
    third = await client.place(symbol, **oco)
    assert third["id"] == first["id"]
    assert await position(services, client.user_id, symbol) == (D(10), D(10))
    other = await client.try_place(symbol, **(oco | {"stopLoss": {"stopPrice": "96.00"}}))
    assert [e["code"] for e in other["errors"]] == ["IDEMPOTENCY_CONFLICT"]

    key = uuid.uuid4().hex
    entry = await client.place(
        symbol, type="LIMIT", limitPrice="99.00", idempotencyKey=key, **bracket()
    )
    assert (
        await client.place(
            symbol, type="LIMIT", limitPrice="99.00", idempotencyKey=key, **bracket()
        )
    )["id"] == entry["id"]
    changed = await client.try_place(
        symbol,
        type="LIMIT",
        limitPrice="99.00",
        idempotencyKey=key,
        **bracket(takeProfit={"limitPrice": "106.00"}),
    )
    assert [e["code"] for e in changed["errors"]] == ["IDEMPOTENCY_CONFLICT"]
    await client.call(CANCEL_ALL)
    await check(services)


async def test_class_orders_are_not_replaceable(
    services: Services, matcher: Matcher, client: Client, symbol: str
) -> None:
    entry = await client.place(symbol, type="LIMIT", limitPrice="99.00", **bracket())
    _, (take_profit, stop_loss) = await filled_bracket(client, symbol)
    for order_id in (entry["id"], take_profit["id"], stop_loss["id"]):
        payload = await client.call(
            REPLACE, id=order_id, i={"limitPrice": "98.00", "idempotencyKey": uuid.uuid4().hex}
        )
        assert [(e["code"], e["field"]) for e in payload["errors"]] == [("NOT_REPLACEABLE", "id")]
    await client.call(CANCEL_ALL)
    await check(services)


async def test_a_history_page_reads_every_order_s_legs_in_one_go(
    services: Services,
    app_services: Services,
    matcher: Matcher,
    client: Client,
    symbol: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The legs of a page of class orders come through one DataLoader read."""
    for _ in range(2):
        await filled_bracket(client, symbol)
    statements: list[str] = []
    real = app_services.order_store.legs_for

    async def counted(parent_ids: Any) -> Any:
        statements.append("legs")
        return await real(parent_ids)

    monkeypatch.setattr(app_services.order_store, "legs_for", counted)
    page = await client.call(PAGE)
    monkeypatch.undo()
    entries = [e["node"] for e in page["edges"] if e["node"]["orderClass"] == "BRACKET"]
    with_legs = [e for e in entries if e["legs"]]
    assert len(with_legs) == 2 and all(len(e["legs"]) == 2 for e in with_legs)
    assert statements == ["legs"]
    await client.call(CANCEL_ALL)
    await check(services)
