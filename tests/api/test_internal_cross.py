"""The local order book through the real API and matcher: an incoming order first crosses other
users' resting limit orders (venue INTERNAL), price then time priority, at the resting price; the
rest routes to the venues. `tradeql check` after each test and after the module."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
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
from tests.api_trader import ApiTrader, check, deposit, running_matcher
from tests.graphql_client import GraphQLClient
from tests.trading import balances, eventually, listed, position, quote, unique_symbol
from workers.matcher import Matcher

D = Decimal
CASH = D("100000")
EXECUTIONS = "executions { quantity price venue }"
ORDER = f"""id side type timeInForce quantity limitPrice status filledQuantity averageFillPrice
            version {EXECUTIONS}"""
CANCEL_ALL = "mutation { cancelAllOrders { orders { id } errors { code } } }"


@pytest_asyncio.fixture(scope="module", autouse=True)
async def books_balance(services: Services) -> AsyncIterator[None]:
    yield
    await check(services)


@pytest_asyncio.fixture(scope="module")
async def matcher(services: Services) -> AsyncIterator[Matcher]:
    async with running_matcher(services) as running:
        yield running


@pytest.fixture
async def symbol(services: Services) -> str:
    name = unique_symbol("I")
    await listed(services, name)
    await quote(services, name, "100.00", "100.02", "100.00")
    return name


class Trader(ApiTrader):
    def __init__(self, gql: GraphQLClient, user: dict[str, str]) -> None:
        super().__init__(gql, user, ORDER)

    async def shares(self, symbol: str, quantity: str) -> None:
        """A market buy at the venues (100.02, the ask), before any other user's sell rests."""
        order = await self.place(symbol, quantity=quantity)
        filled = await self.wait(order["id"], status="FILLED")
        assert {e["venue"] for e in filled["executions"]} != {"INTERNAL"}

    async def rest(self, symbol: str, side: str, quantity: str, price: str) -> dict[str, Any]:
        """A limit order the quote does not cross, once the matcher works it."""
        order = await self.place(
            symbol, side=side, type="LIMIT", quantity=quantity, limitPrice=price
        )
        return await self.wait(order["id"], status="SUBMITTED")


@pytest.fixture
def traders(gql: GraphQLClient) -> Callable[[int], Awaitable[list[Trader]]]:
    async def make(count: int) -> list[Trader]:
        made = []
        for _ in range(count):
            user = await gql.register_user()
            await deposit(gql, user["token"], CASH)
            made.append(Trader(gql, user))
        return made

    return make


def venues(order: dict[str, Any]) -> list[tuple[str, str, str]]:
    return [(e["quantity"], e["price"], e["venue"]) for e in order["executions"]]


async def events_of(services: Services, order_id: str) -> list[str]:
    async with services.engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT coalesce(event, kind) FROM order_events WHERE order_id = :o "
                "ORDER BY version, seq"
            ),
            {"o": UUID(order_id)},
        )
        return list(rows.scalars())


async def ledger_cash(services: Services, reference: str) -> list[Decimal]:
    """The cash entries of the customer accounts in the ledger transaction of an execution."""
    async with services.engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT e.amount FROM ledger_entries e JOIN ledger_transactions t "
                "ON t.id = e.transaction_id WHERE t.reference = :r AND e.book = 'cash'"
            ),
            {"r": reference},
        )
        return list(rows.scalars())


async def test_an_internal_cross_moves_both_accounts_exactly(
    services: Services, matcher: Matcher, symbol: str, traders: Callable[..., Any]
) -> None:
    seller, buyer = await traders(2)
    await seller.shares(symbol, "10")  # 1,000.20 at the ask
    sell = await seller.rest(symbol, "SELL", "10", "100.01")  # above the bid: rests
    assert await position(services, seller.user_id, symbol) == (D(10), D(10))

    # 2.5 at 100.01: not marketable at the venues (ask 100.02), crossed with the resting sell
    buy = await buyer.place(symbol, type="LIMIT", quantity="2.5", limitPrice="100.01")
    filled = await buyer.wait(buy["id"], status="FILLED")
    assert venues(filled) == [("2.500000", "100.0100", "INTERNAL")]
    assert filled["averageFillPrice"] == "100.0100"
    sold = await seller.wait(sell["id"], status="PARTIALLY_FILLED")
    assert (sold["filledQuantity"], venues(sold)) == (
        "2.500000",
        [("2.500000", "100.0100", "INTERNAL")],
    )

    # 2.5 x 100.01 = 250.025, half to even: 250.02 out of the buyer, into the seller
    assert await balances(services, buyer.user_id) == (CASH - D("250.02"), D(0))
    assert await position(services, buyer.user_id, symbol) == (D("2.5"), D(0))
    assert await balances(services, seller.user_id) == (
        CASH - D("1000.20") + D("250.02"),
        D(0),
    )
    assert await position(services, seller.user_id, symbol) == (D("7.5"), D("7.5"))
    pair = f"INTERNAL:{buy['id']}:{sell['id']}:{buy['version']}"
    assert await ledger_cash(services, f"{pair}:B") == [D("-250.02")]
    assert await ledger_cash(services, f"{pair}:S") == [D("250.02")]
    assert await events_of(services, buy["id"]) == ["ACCEPTED", "FILL"]
    assert await events_of(services, sell["id"]) == ["ACCEPTED", "ACCEPTED", "PARTIAL_FILL"]

    # a market buy crosses it too (the ask bounds it), and takes the rest of the sell
    market = await buyer.place(symbol, quantity="7.5")
    taken = await buyer.wait(market["id"], status="FILLED")
    assert venues(taken) == [("7.500000", "100.0100", "INTERNAL")]
    await seller.wait(sell["id"], status="FILLED")
    assert await position(services, seller.user_id, symbol) == (D(0), D(0))
    assert await balances(services, seller.user_id) == (
        CASH - D("1000.20") + D("1000.10"),  # the sell's running total, 1000.10, to the cent
        D(0),
    )
    assert await balances(services, buyer.user_id) == (CASH - D("250.02") - D("750.08"), D(0))
    await check(services)


async def test_price_then_time_priority_across_three_resting_sells(
    services: Services, matcher: Matcher, symbol: str, traders: Callable[..., Any]
) -> None:
    await quote(services, symbol, "99.90", "100.10", "100.00")  # a wide spread
    first, second, third, fourth, buyer = await traders(5)
    for seller in (first, second, third, fourth):
        await seller.shares(symbol, "5")
    dear = await first.rest(symbol, "SELL", "5", "100.05")  # earliest, worst price
    early = await second.rest(symbol, "SELL", "5", "100.03")
    late = await third.rest(symbol, "SELL", "5", "100.03")
    above = await fourth.rest(symbol, "SELL", "5", "100.09")  # above the buyer's limit
    buy = await buyer.place(symbol, type="LIMIT", quantity="12", limitPrice="100.08")
    filled = await buyer.wait(buy["id"], status="FILLED")
    assert venues(filled) == [
        ("5.000000", "100.0300", "INTERNAL"),  # best price, earlier
        ("5.000000", "100.0300", "INTERNAL"),  # best price, later
        ("2.000000", "100.0500", "INTERNAL"),  # next price
    ]
    assert (await second.order(early["id"]))["status"] == "FILLED"
    assert (await third.order(late["id"]))["status"] == "FILLED"
    assert (await first.order(dear["id"]))["filledQuantity"] == "2.000000"
    assert (await fourth.order(above["id"]))["filledQuantity"] == "0.000000"
    # 10 x 100.03 + 2 x 100.05 = 1,200.40; the hold was 12 x 100.08 = 1,200.96
    assert await balances(services, buyer.user_id) == (CASH - D("1200.40"), D(0))
    assert await position(services, buyer.user_id, symbol) == (D(12), D(0))
    assert await position(services, first.user_id, symbol) == (D(3), D(3))
    await check(services)


async def test_partly_internal_then_the_rest_at_the_venues(
    services: Services, matcher: Matcher, symbol: str, traders: Callable[..., Any]
) -> None:
    seller, buyer = await traders(2)
    await seller.shares(symbol, "6")
    await seller.rest(symbol, "SELL", "3", "100.01")
    market = await buyer.place(symbol, quantity="10")  # 3 inside, 7 at EDGX's ask
    filled = await buyer.wait(market["id"], status="FILLED")
    assert venues(filled) == [
        ("3.000000", "100.0100", "INTERNAL"),
        ("7.000000", "100.0200", "EDGX"),
    ]
    assert await balances(services, buyer.user_id) == (CASH - D("1000.17"), D(0))

    # a limit buy that the venues do not take: 3 inside, the other 7 rest with their hold
    await seller.rest(symbol, "SELL", "3", "100.01")
    limit = await buyer.place(symbol, type="LIMIT", quantity="10", limitPrice="100.01")
    resting = await buyer.wait(limit["id"], status="PARTIALLY_FILLED")
    assert venues(resting) == [("3.000000", "100.0100", "INTERNAL")]
    cash, held = await balances(services, buyer.user_id)
    assert (cash, held) == (CASH - D("1000.17") - D("300.03"), D("700.07"))  # 7 x 100.01
    await quote(services, symbol, "99.99", "100.01", "100.00")  # now the venues take the rest
    done = await buyer.wait(limit["id"], status="FILLED")
    assert venues(done)[1:] == [("7.000000", "100.0100", "EDGX")]
    assert await balances(services, buyer.user_id) == (
        CASH - D("1000.17") - D("1000.10"),
        D(0),
    )
    await check(services)


async def test_no_one_crosses_their_own_resting_order(
    services: Services, matcher: Matcher, symbol: str, traders: Callable[..., Any]
) -> None:
    owner, other = await traders(2)
    await owner.shares(symbol, "5")
    sell = await owner.rest(symbol, "SELL", "5", "100.01")
    own_buy = await owner.place(symbol, type="LIMIT", quantity="5", limitPrice="100.01")
    own = await owner.wait(own_buy["id"], status="SUBMITTED")  # rests beside it, untouched
    assert own["executions"] == []
    assert (await owner.order(sell["id"]))["filledQuantity"] == "0.000000"
    buy = await other.place(symbol, type="LIMIT", quantity="5", limitPrice="100.01")
    filled = await other.wait(buy["id"], status="FILLED")  # someone else's buy crosses it
    assert venues(filled) == [("5.000000", "100.0100", "INTERNAL")]
    assert (await owner.order(own["id"]))["status"] == "SUBMITTED"
    await owner.call(CANCEL_ALL)
    await check(services)


async def test_fill_or_kill_and_immediate_or_cancel(
    services: Services, matcher: Matcher, symbol: str, traders: Callable[..., Any]
) -> None:
    seller, buyer = await traders(2)
    await seller.shares(symbol, "10")
    sell = await seller.rest(symbol, "SELL", "5", "100.01")
    # FOK for more than the book holds: crossed nothing, the venues fill all of it at the ask
    fok = await buyer.place(
        symbol, type="LIMIT", timeInForce="FOK", quantity="6", limitPrice="100.02"
    )
    filled = await buyer.wait(fok["id"], status="FILLED")
    assert venues(filled) == [("6.000000", "100.0200", "EDGX")]
    assert (await seller.order(sell["id"]))["filledQuantity"] == "0.000000"
    # FOK that the book fills: all inside
    fok = await buyer.place(
        symbol, type="LIMIT", timeInForce="FOK", quantity="4", limitPrice="100.01"
    )
    filled = await buyer.wait(fok["id"], status="FILLED")
    assert venues(filled) == [("4.000000", "100.0100", "INTERNAL")]
    # IOC for 3 at 100.01: the 1 left inside, the rest cancelled (the venues ask 100.02)
    ioc = await buyer.place(
        symbol, type="LIMIT", timeInForce="IOC", quantity="3", limitPrice="100.01"
    )
    ended = await buyer.wait(ioc["id"], status="CANCELLED")
    assert (ended["filledQuantity"], venues(ended)) == (
        "1.000000",
        [("1.000000", "100.0100", "INTERNAL")],
    )
    assert (await seller.order(sell["id"]))["status"] == "FILLED"
    assert (await balances(services, buyer.user_id))[1] == 0
    await check(services)


async def test_both_users_hear_their_fills_over_websocket(
    api_url: str, services: Services, matcher: Matcher, symbol: str, traders: Callable[..., Any]
) -> None:
    seller, buyer = await traders(2)
    await seller.shares(symbol, "2")
    sell = await seller.rest(symbol, "SELL", "2", "100.01")
    subscription = document(
        "subscription { orderUpdates { event order { id status } "
        "execution { quantity price venue } } }"
    )

    def transport(trader: Trader) -> WebsocketsTransport:
        return WebsocketsTransport(
            url=api_url.replace("http://", "ws://") + "/graphql",
            subprotocols=[WebsocketsTransport.GRAPHQLWS_SUBPROTOCOL],
            init_payload={"Authorization": f"Bearer {trader.token}"},
            close_timeout=2,
        )

    async with (
        GqlClient(transport=transport(seller)) as seller_session,
        GqlClient(transport=transport(buyer)) as buyer_session,
        aclosing(seller_session.subscribe(subscription)) as seller_updates,
        aclosing(buyer_session.subscribe(subscription)) as buyer_updates,
    ):
        seller_next = asyncio.ensure_future(anext(seller_updates))
        buyer_next = asyncio.ensure_future(anext(buyer_updates))
        await asyncio.sleep(0.5)  # both subscriptions started
        buy = await buyer.place(symbol, type="LIMIT", quantity="2", limitPrice="100.01")
        heard = []
        while len(heard) < 2:  # ACCEPTED, then the fill
            heard.append((await asyncio.wait_for(buyer_next, 10))["orderUpdates"])
            buyer_next = asyncio.ensure_future(anext(buyer_updates))
        buyer_next.cancel()
        assert [(u["event"], u["order"]["id"]) for u in heard] == [
            ("ACCEPTED", buy["id"]),
            ("FILL", buy["id"]),
        ]
        assert heard[1]["execution"] == {
            "quantity": "2.000000",
            "price": "100.0100",
            "venue": "INTERNAL",
        }
        update = (await asyncio.wait_for(seller_next, 10))["orderUpdates"]
        while update["event"] == "ACCEPTED":  # the sell's own start, if it came late
            update = (await asyncio.wait_for(anext(seller_updates), 10))["orderUpdates"]
        assert (update["event"], update["order"]["id"], update["order"]["status"]) == (
            "FILL",
            sell["id"],
            "FILLED",
        )
        assert update["execution"]["venue"] == "INTERNAL"
    await check(services)


async def test_fifty_concurrent_buys_never_overfill_one_resting_sell(
    services: Services, matcher: Matcher, symbol: str, traders: Callable[..., Any]
) -> None:
    seller, *buyers = await traders(6)
    await seller.shares(symbol, "10")
    sell = await seller.rest(symbol, "SELL", "10", "100.01")
    placed = await asyncio.gather(
        *(
            buyers[n % 5].place(symbol, type="LIMIT", quantity="1", limitPrice="100.01")
            for n in range(50)
        )
    )
    await seller.wait(sell["id"], status="FILLED", filledQuantity="10.000000")

    async def settled() -> bool:  # every buy either crossed or is resting
        async with services.engine.connect() as conn:
            pending = await conn.execute(
                text("SELECT count(*) FROM orders WHERE id = ANY(:ids) AND status = 'PENDING'"),
                {"ids": [UUID(o["id"]) for o in placed]},
            )
            return pending.scalar_one() == 0

    await eventually(settled)
    orders = [await buyers[n % 5].order(o["id"]) for n, o in enumerate(placed)]
    filled = [o for o in orders if o["status"] == "FILLED"]
    assert len(filled) == 10
    assert all(venues(o) == [("1.000000", "100.0100", "INTERNAL")] for o in filled)
    assert {o["status"] for o in orders} - {"FILLED"} == {"SUBMITTED"}
    assert sum(D(o["filledQuantity"]) for o in orders) == D(10)
    sold = await seller.order(sell["id"])
    assert sum(D(e["quantity"]) for e in sold["executions"]) == D(10)
    held = sum([(await balances(services, b.user_id))[1] for b in buyers], D(0))
    assert held == 40 * D("100.01")  # the forty resting buys hold exactly their cost
    for b in buyers:
        await b.call(CANCEL_ALL)
    await check(services)


async def test_a_bracket_entry_filled_inside_has_its_legs_worked_at_once(
    services: Services, matcher: Matcher, symbol: str, traders: Callable[..., Any]
) -> None:
    """The legs an internal fill creates reach the matcher with the fill's events (not at its
    next sweep), and the cross moves the entry's holds as a venue fill would."""
    seller, buyer = await traders(2)
    await seller.shares(symbol, "4")
    await seller.rest(symbol, "SELL", "4", "100.01")
    placed = await buyer.try_place(
        symbol,
        type="LIMIT",
        quantity="4",
        limitPrice="100.01",
        timeInForce="GTC",
        orderClass="BRACKET",
        takeProfit={"limitPrice": "105.00"},
        stopLoss={"stopPrice": "95.00"},
    )
    assert placed["errors"] == [], placed
    entry = await buyer.wait(placed["order"]["id"], status="FILLED")
    assert venues(entry) == [("4.000000", "100.0100", "INTERNAL")]
    legs = await buyer.call(
        "query($id: ID!) { order(id: $id) { legs { id type quantity status } } }", id=entry["id"]
    )
    assert [(leg["type"], leg["quantity"]) for leg in legs["legs"]] == [
        ("LIMIT", "4.000000"),
        ("STOP", "4.000000"),
    ]
    sweep = services.settings.matcher_sweep_seconds
    for leg in legs["legs"]:
        await buyer.wait(leg["id"], timeout=sweep / 2, status="SUBMITTED")
    assert await position(services, buyer.user_id, symbol) == (D(4), D(4))  # held once
    await buyer.call(CANCEL_ALL)
    await check(services)
