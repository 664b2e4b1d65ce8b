"""Extended hours through the real API and matcher: the clock's session, LIMIT DAY orders with
`extendedHours` working in POST, other DAY orders waiting for the next REGULAR session, and the
expiry of each at its own end."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID

import pytest

from services.accounts.reconcile import find_differences
from services.infra.container import Services
from services.market_data.clock import MarketSession
from services.orders.eod import expire_day_orders
from services.orders.order_model import Status
from tests.graphql_client import GraphQLClient
from tests.trading import listed, quote, reload, unique_symbol, wait_status
from tests.workers.test_matcher import matcher  # noqa: F401  (the running matcher fixture)
from workers.matcher import Matcher

PLACE = """mutation($i: PlaceOrderInput!) { placeOrder(input: $i) {
  order { id status extendedHours timeInForce } errors { code message field } } }"""
ORDER = """query($id: ID!) { order(id: $id) { id status extendedHours averageFillPrice
  events { type status quantity price venue reason } } }"""
CLOCK = "{ clock { session isOpen } }"
DEPOSIT = """mutation { deposit(amount: "10000", idempotencyKey: "seed") { errors { code } } }"""


@pytest.fixture
async def symbol(services: Services) -> str:
    name = unique_symbol("X")
    await listed(services, name)
    await quote(services, name, "50.00", "50.02")
    return name


@pytest.fixture
async def funded(gql: GraphQLClient, user: dict[str, str]) -> dict[str, str]:
    await gql(DEPOSIT, token=user["token"])
    return user


@pytest.fixture
def force_session(
    services: Services, app_services: Services
) -> Iterator[Callable[[MarketSession], Any]]:
    """Force the session on the API's clock and the matcher's alike; put them back after."""
    clocks = [services.clock, app_services.clock]
    before = [c.forced for c in clocks]

    def force(session: MarketSession) -> None:
        for clock in clocks:
            clock.forced = session

    yield force
    for clock, forced in zip(clocks, before, strict=True):
        clock.forced = forced


@pytest.fixture
async def books_balance(services: Services) -> AsyncIterator[None]:
    yield
    assert await find_differences(services.engine) == []


def limit_buy(symbol: str, limit: str, **overrides: Any) -> dict[str, Any]:
    order = {
        "symbol": symbol,
        "side": "BUY",
        "type": "LIMIT",
        "quantity": "10",
        "limitPrice": limit,
        "idempotencyKey": uuid.uuid4().hex,
    }
    return order | overrides


async def place(gql: GraphQLClient, token: str, order: dict[str, Any]) -> dict[str, Any]:
    payload: dict[str, Any] = (await gql(PLACE, {"i": order}, token=token))["data"]["placeOrder"]
    return payload


async def test_the_clock_reports_the_session(
    gql: GraphQLClient, force_session: Callable[[MarketSession], None]
) -> None:
    assert (await gql(CLOCK))["data"]["clock"] == {"session": "REGULAR", "isOpen": True}
    force_session(MarketSession.POST)
    assert (await gql(CLOCK))["data"]["clock"] == {"session": "POST", "isOpen": False}


async def test_a_day_order_placed_in_post_waits_for_the_next_regular_session(
    gql: GraphQLClient,
    services: Services,
    funded: dict[str, str],
    symbol: str,
    matcher: Matcher,  # noqa: F811
    force_session: Callable[[MarketSession], None],
    books_balance: None,
) -> None:
    force_session(MarketSession.POST)
    market = await place(
        gql, funded["token"], {**limit_buy(symbol, "51.00"), "type": "MARKET", "limitPrice": None}
    )
    assert market["errors"] == [
        {"code": "MARKET_CLOSED", "field": "type", "message": market["errors"][0]["message"]}
    ]
    placed = await place(gql, funded["token"], limit_buy(symbol, "51.00"))  # marketable
    assert placed["errors"] == [] and placed["order"]["extendedHours"] is False
    order_id = UUID(placed["order"]["id"])
    await wait_status(services, order_id, Status.SUBMITTED)
    await quote(services, symbol, "50.00", "50.01")  # crosses, but this is POST
    await asyncio.sleep(0.5)
    assert (await reload(services, order_id)).status is Status.SUBMITTED
    force_session(MarketSession.PRE)  # the next morning: still not its session
    await quote(services, symbol, "50.00", "50.02")
    await asyncio.sleep(0.5)
    assert (await reload(services, order_id)).status is Status.SUBMITTED
    force_session(MarketSession.REGULAR)
    await quote(services, symbol, "50.00", "50.03")
    filled = await wait_status(services, order_id, Status.FILLED)
    assert filled.average_fill_price == Decimal("50.03")


async def test_an_extended_hours_order_placed_in_post_fills_in_post(
    gql: GraphQLClient,
    services: Services,
    funded: dict[str, str],
    symbol: str,
    matcher: Matcher,  # noqa: F811
    force_session: Callable[[MarketSession], None],
    books_balance: None,
) -> None:
    force_session(MarketSession.POST)
    resting = await place(gql, funded["token"], limit_buy(symbol, "49.00", extendedHours=True))
    marketable = await place(gql, funded["token"], limit_buy(symbol, "51.00", extendedHours=True))
    assert marketable["errors"] == [] and marketable["order"]["extendedHours"] is True
    order_id = UUID(marketable["order"]["id"])
    await wait_status(services, order_id, Status.FILLED)
    resting_id = UUID(resting["order"]["id"])
    await wait_status(services, resting_id, Status.SUBMITTED)
    await quote(services, symbol, "48.90", "48.95")  # a later POST quote crosses it too
    await wait_status(services, resting_id, Status.FILLED)
    shown = (await gql(ORDER, {"id": str(order_id)}, token=funded["token"]))["data"]["order"]
    assert shown["extendedHours"] is True and shown["averageFillPrice"] == "50.0200"
    # Its history: accepted, then filled; the internal SUBMITTED in between is not shown.
    assert shown["events"] == [
        {
            "type": "ACCEPTED",
            "status": "PENDING",
            "quantity": "10.000000",
            "price": "51.0000",
            "venue": None,
            "reason": None,
        },
        {
            "type": "FILL",
            "status": "FILLED",
            "quantity": "10.000000",
            "price": "50.0200",
            "venue": "EDGX",
            "reason": None,
        },
    ]


@pytest.mark.parametrize(
    "overrides",
    [
        {"type": "MARKET", "limitPrice": None},
        {"timeInForce": "GTC"},
        {"timeInForce": "IOC"},
        {"type": "STOP_LIMIT", "stopPrice": "52.00"},
    ],
)
async def test_extended_hours_is_for_limit_day_orders_only(
    gql: GraphQLClient, funded: dict[str, str], symbol: str, overrides: dict[str, Any]
) -> None:
    refused = await place(
        gql, funded["token"], limit_buy(symbol, "49.00", extendedHours=True, **overrides)
    )
    assert refused["order"] is None
    assert [(e["code"], e["field"]) for e in refused["errors"]] == [
        ("INVALID_INPUT", "extendedHours")
    ]


async def test_each_day_order_expires_at_the_end_of_its_own_session(
    gql: GraphQLClient,
    services: Services,
    funded: dict[str, str],
    symbol: str,
    matcher: Matcher,  # noqa: F811
    force_session: Callable[[MarketSession], None],
    books_balance: None,
) -> None:
    force_session(MarketSession.POST)
    regular = await place(gql, funded["token"], limit_buy(symbol, "40.00"))
    extended = await place(gql, funded["token"], limit_buy(symbol, "40.00", extendedHours=True))
    regular_id, extended_id = UUID(regular["order"]["id"]), UUID(extended["order"]["id"])
    await wait_status(services, regular_id, Status.SUBMITTED)
    await wait_status(services, extended_id, Status.SUBMITTED)
    later = datetime.now(UTC) + timedelta(seconds=1)
    assert await expire_day_orders(services, later) >= 1  # the close
    assert (await reload(services, regular_id)).status is Status.EXPIRED
    assert (await reload(services, extended_id)).status is Status.SUBMITTED
    assert await expire_day_orders(services, later, extended_hours=True) >= 1  # end of POST
    assert (await reload(services, extended_id)).status is Status.EXPIRED
    shown = (await gql(ORDER, {"id": str(extended_id)}, token=funded["token"]))["data"]["order"]
    assert shown["events"][-1] == {
        "type": "EXPIRED",
        "status": "EXPIRED",
        "quantity": "10.000000",
        "price": None,
        "venue": None,
        "reason": "a DAY order for extended hours expires at the end of POST",
    }
