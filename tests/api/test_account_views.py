"""The account views through the real API: `activities` (fills and deposits, newest first, keyset
pages, a type filter) and today's change of each position and of the portfolio."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID

import pytest
from sqlalchemy import text

from services.infra.container import Services
from tests.graphql_client import GraphQLClient
from tests.trading import book_fill, listed, quote, unique_symbol

ACTIVITIES = """query($types: [ActivityType!], $first: Int!, $after: String) {
  activities(types: $types, first: $first, after: $after) {
    edges { cursor node { id type amount symbol side quantity price orderId at } }
    pageInfo { hasNextPage endCursor } } }"""
DEPOSIT = """mutation($a: Decimal!, $k: String!) {
  deposit(amount: $a, idempotencyKey: $k) { errors { code } } }"""
DAY = """{ portfolio { cash equity dayChange dayChangePercent
  positions { symbol quantity previousClose dayChange } } }"""


async def all_pages(
    gql: GraphQLClient, token: str, first: int, types: list[str] | None = None
) -> list[dict[str, Any]]:
    nodes: list[dict[str, Any]] = []
    after = None
    for _ in range(20):
        body = await gql(ACTIVITIES, {"types": types, "first": first, "after": after}, token=token)
        page = body["data"]["activities"]
        assert len(page["edges"]) <= first
        nodes += [edge["node"] for edge in page["edges"]]
        if not page["pageInfo"]["hasNextPage"]:
            return nodes
        after = page["pageInfo"]["endCursor"]
    raise AssertionError("more pages than activities")


async def test_activities_are_fills_and_deposits_newest_first_in_pages(
    gql: GraphQLClient, services: Services, user: dict[str, str]
) -> None:
    token, user_id = user["token"], UUID(user["id"])
    symbol = unique_symbol("V")
    await listed(services, symbol)
    for amount, key in (("1000.00", "first"), ("250.50", "second")):
        await gql(DEPOSIT, {"a": amount, "k": key}, token=token)
    buy = await book_fill(services, user_id, symbol, "BUY", "3", "101.01")
    sell = await book_fill(services, user_id, symbol, "SELL", "1.5", "102.00")
    nodes = await all_pages(gql, token, first=1)
    assert [(n["type"], n["amount"], n["side"], n["quantity"], n["price"]) for n in nodes] == [
        ("FILL", "153.00", "SELL", "1.500000", "102.0000"),
        ("FILL", "-303.03", "BUY", "3.000000", "101.0100"),  # cash moved: negative for a buy
        ("DEPOSIT", "250.50", None, None, None),
        ("DEPOSIT", "1000.00", None, None, None),
    ]
    assert [n["orderId"] for n in nodes[:2]] == [str(sell.id), str(buy.id)]
    assert nodes[0]["symbol"] == symbol and nodes[2]["symbol"] is None
    assert len({n["id"] for n in nodes}) == 4
    assert await all_pages(gql, token, first=3) == nodes  # another page size, the same list
    assert sum(Decimal(n["amount"]) for n in nodes) == Decimal("1100.47")  # the cash
    deposits = await all_pages(gql, token, first=50, types=["DEPOSIT"])
    assert deposits == nodes[2:]
    fills = await all_pages(gql, token, first=50, types=["FILL"])
    assert fills == nodes[:2]


@pytest.mark.parametrize(
    ("variables", "code"),
    [({"first": 0}, "INVALID_INPUT"), ({"first": 1, "after": "not-a-cursor"}, "INVALID_INPUT")],
)
async def test_a_bad_page_is_a_clear_error(
    gql: GraphQLClient, user: dict[str, str], variables: dict[str, Any], code: str
) -> None:
    body = await gql(ACTIVITIES, variables, token=user["token"])
    assert body["data"] is None
    assert body["errors"][0]["extensions"]["code"] == code


async def test_activities_need_a_session(gql: GraphQLClient) -> None:
    body = await gql(ACTIVITIES, {"first": 1})
    assert body["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"


async def test_the_day_change_counts_shares_held_at_the_close_and_bought_since(
    gql: GraphQLClient, services: Services, app_services: Services, user: dict[str, str]
) -> None:
    token, user_id = user["token"], UUID(user["id"])
    symbol = unique_symbol("V")
    await listed(services, symbol)
    since = app_services.clock.previous_close()
    await gql(DEPOSIT, {"a": "100000.00", "k": "before-the-close"}, token=token)
    held = await book_fill(services, user_id, symbol, "BUY", "10", "20.00")
    async with services.engine.begin() as conn:  # the deposit and the first buy: yesterday
        earlier = since - timedelta(hours=1)
        await conn.execute(
            text("UPDATE executions SET executed_at = :t WHERE order_id = :o"),
            {"t": earlier, "o": held.id},
        )
        await conn.execute(
            text(
                "UPDATE ledger_transactions SET created_at = :t WHERE id IN (SELECT l.transaction_id "
                "FROM ledger_entries l JOIN accounts a ON a.id = l.account_id WHERE a.user_id = :u)"
            ),
            {"t": earlier, "u": user_id},
        )
        await conn.execute(  # the bar of the close, and one of the POST session after it
            text(
                "INSERT INTO bars_1m (symbol, start, open, high, low, close, open_ns, close_ns, "
                "volume_start, volume_end) VALUES (:s, :t, 19, 20, 19, :c, 0, 0, 0, 0)"
            ),
            [
                {"s": symbol, "t": since - timedelta(minutes=1), "c": Decimal("19.50")},
                {"s": symbol, "t": since + timedelta(minutes=5), "c": Decimal("18.00")},
            ],
        )
    await book_fill(services, user_id, symbol, "BUY", "5", "21.00")  # today
    await gql(DEPOSIT, {"a": "1000.00", "k": "today"}, token=token)  # left out of the change
    await quote(services, symbol, "21.99", "22.01", "22.00")
    portfolio = (await gql(DAY, token=token))["data"]["portfolio"]
    # (22 - 19.50) x 10 held at the close + (22 - 21) x 5 bought since
    assert portfolio["positions"] == [
        {
            "symbol": symbol,
            "quantity": "15.000000",
            "previousClose": "19.5000",
            "dayChange": "30.00",
        }
    ]
    # equity now 100,000 - 200 - 105 + 1,000 + 330 = 101,025; at the close 99,800 + 195
    assert (portfolio["equity"], portfolio["dayChange"]) == ("101025.00", "30.00")
    assert portfolio["dayChangePercent"] == "0.03"  # 30 / 99,995
    # A sale today counts what it brought in: 5 sold at 23 after the quote moved to 23.
    await book_fill(services, user_id, symbol, "SELL", "5", "23.00")
    await quote(services, symbol, "22.99", "23.01", "23.00")
    portfolio = (await gql(DAY, token=token))["data"]["portfolio"]
    # 10 x 23 - 10 x 19.50 - 105 + 115 = 45 = (23 - 19.50) x 10 + (23 - 21) x 5
    assert portfolio["positions"][0]["dayChange"] == "45.00"
    assert portfolio["dayChange"] == "45.00"


async def test_a_new_account_has_no_day_change(gql: GraphQLClient, user: dict[str, str]) -> None:
    await gql(DEPOSIT, {"a": "500.00", "k": "new"}, token=user["token"])
    portfolio = (await gql(DAY, token=user["token"]))["data"]["portfolio"]
    assert (portfolio["dayChange"], portfolio["dayChangePercent"]) == ("0.00", None)
