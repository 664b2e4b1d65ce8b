"""The portfolio through the API: P&L by average cost, totals that match their rows, history,
and the live subscription."""

from __future__ import annotations

import asyncio
import uuid
from contextlib import aclosing
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from gql import Client
from gql import gql as document
from gql.transport.websockets import WebsocketsTransport
from sqlalchemy import text

from services.infra.container import Services
from tests.graphql_client import GraphQLClient
from tests.trading import book_fill, listed, quote, unique_symbol

PORTFOLIO = """{ portfolio { cash buyingPower marketValue equity realizedPnl unrealizedPnl
  positions { symbol quantity reservedQuantity averageCost costBasis marketValue unrealizedPnl
              unrealizedPnlPercent quote { last } } } }"""


@pytest.fixture
async def funded(gql: GraphQLClient, user: dict[str, str]) -> dict[str, str]:
    body = await gql(
        'mutation { deposit(amount: "10000", idempotencyKey: "seed") { errors { code } } }',
        token=user["token"],
    )
    assert body["data"]["deposit"]["errors"] == []
    return user


async def test_average_cost_and_pnl_by_hand(
    gql: GraphQLClient, funded: dict[str, str], services: Services
) -> None:
    user_id, symbol = uuid.UUID(funded["id"]), unique_symbol("P")
    await listed(services, symbol)
    await book_fill(services, user_id, symbol, "BUY", "10", "100.00")
    await book_fill(services, user_id, symbol, "BUY", "10", "110.00")
    await book_fill(services, user_id, symbol, "SELL", "5", "120.00")
    await quote(services, symbol, "129.90", "130.10", last="130.00")
    portfolio = (await gql(PORTFOLIO, token=funded["token"]))["data"]["portfolio"]
    # cash: 10,000 - 1,000 - 1,100 + 600 = 8,500; 15 shares cost 1,575 (average 105)
    assert portfolio["positions"] == [
        {
            "symbol": symbol,
            "quantity": "15.000000",
            "reservedQuantity": "0.000000",
            "averageCost": "105.0000",
            "costBasis": "1575.00",
            "marketValue": "1950.00",
            "unrealizedPnl": "375.00",
            "unrealizedPnlPercent": "23.81",
            "quote": {"last": "130.0000"},
        }
    ]
    assert (portfolio["cash"], portfolio["buyingPower"]) == ("8500.00", "8500.00")
    assert (portfolio["marketValue"], portfolio["equity"]) == ("1950.00", "10450.00")
    assert (portfolio["realizedPnl"], portfolio["unrealizedPnl"]) == ("75.00", "375.00")


async def test_a_full_close_and_reopen(
    gql: GraphQLClient, funded: dict[str, str], services: Services
) -> None:
    user_id, symbol = uuid.UUID(funded["id"]), unique_symbol("P")
    await listed(services, symbol)
    await book_fill(services, user_id, symbol, "BUY", "3", "10.00")
    await book_fill(services, user_id, symbol, "SELL", "3", "12.50")  # realized 7.50
    await book_fill(services, user_id, symbol, "BUY", "2", "11.00")
    await quote(services, symbol, "10.99", "11.01", last="11.00")
    portfolio = (await gql(PORTFOLIO, token=funded["token"]))["data"]["portfolio"]
    (row,) = portfolio["positions"]
    assert (row["quantity"], row["averageCost"], row["costBasis"]) == (
        "2.000000",
        "11.0000",
        "22.00",
    )
    assert (row["unrealizedPnl"], portfolio["realizedPnl"]) == ("0.00", "7.50")


async def test_totals_are_the_sum_of_their_rows(
    gql: GraphQLClient, funded: dict[str, str], services: Services
) -> None:
    user_id = uuid.UUID(funded["id"])
    symbols = [unique_symbol("S") for _ in range(4)]
    await listed(services, *symbols)
    for i, symbol in enumerate(symbols):
        await book_fill(services, user_id, symbol, "BUY", f"{i + 1}.123457", f"{17 + i}.37")
        await quote(services, symbol, "20.00", "20.02", last=f"{19 + i}.91")
    portfolio = (await gql(PORTFOLIO, token=funded["token"]))["data"]["portfolio"]
    rows = portfolio["positions"]
    assert len(rows) == 4
    assert Decimal(portfolio["marketValue"]) == sum(Decimal(r["marketValue"]) for r in rows)
    assert Decimal(portfolio["unrealizedPnl"]) == sum(Decimal(r["unrealizedPnl"]) for r in rows)
    assert Decimal(portfolio["equity"]) == Decimal(portfolio["cash"]) + Decimal(
        portfolio["marketValue"]
    )


async def test_a_position_without_a_quote_is_valued_at_cost(
    gql: GraphQLClient, funded: dict[str, str], services: Services
) -> None:
    user_id, symbol = uuid.UUID(funded["id"]), unique_symbol("N")
    await listed(services, symbol)
    await book_fill(services, user_id, symbol, "BUY", "2", "50.00")
    portfolio = (await gql(PORTFOLIO, token=funded["token"]))["data"]["portfolio"]
    (row,) = portfolio["positions"]
    assert (row["marketValue"], row["unrealizedPnl"], row["quote"]) == (None, None, None)
    assert portfolio["marketValue"] == "100.00"
    assert portfolio["unrealizedPnl"] == "0.00"


async def test_each_user_sees_only_their_own_portfolio(
    gql: GraphQLClient, funded: dict[str, str], services: Services
) -> None:
    symbol = unique_symbol("O")
    await listed(services, symbol)
    await book_fill(services, uuid.UUID(funded["id"]), symbol, "BUY", "1", "10.00")
    other = await gql.register_user()
    portfolio = (await gql(PORTFOLIO, token=other["token"]))["data"]["portfolio"]
    assert portfolio["positions"] == [] and portfolio["cash"] == "0.00"


async def test_history_of_a_new_account_is_one_live_point(
    gql: GraphQLClient, funded: dict[str, str]
) -> None:
    body = await gql("{ portfolio { equity history { timestamp equity } } }", token=funded["token"])
    (point,) = body["data"]["portfolio"]["history"]
    assert point["equity"] == body["data"]["portfolio"]["equity"] == "10000.00"


async def test_history_by_span_from_snapshots(
    gql: GraphQLClient, funded: dict[str, str], services: Services
) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    async with services.engine.begin() as conn:
        account = (
            await conn.execute(
                text("SELECT id FROM accounts WHERE user_id = :u"), {"u": uuid.UUID(funded["id"])}
            )
        ).scalar_one()
        rows = [
            (now - timedelta(minutes=5 * i), "intraday", Decimal(10000 + i)) for i in range(1, 4)
        ]
        rows += [
            (now - timedelta(days=d, hours=2), "close", Decimal(9000 + d)) for d in (2, 10, 40)
        ]
        await conn.execute(
            text("INSERT INTO equity_snapshots VALUES (:a, :t, :k, 0, 0, :e)"),
            [{"a": account, "t": t, "k": k, "e": e} for t, k, e in rows],
        )
    query = "query($s: HistorySpan!) { portfolio { history(span: $s) { timestamp equity } } }"

    async def equities(span: str) -> list[str]:
        body = await gql(query, {"s": span}, token=funded["token"])
        return [p["equity"] for p in body["data"]["portfolio"]["history"]]

    assert await equities("DAY") == ["10003.00", "10002.00", "10001.00", "10000.00"]
    assert (await equities("WEEK"))[0] == "9002.00"
    assert await equities("MONTH") == ["9010.00", "9002.00", "10001.00", "10000.00"]
    assert (await equities("ALL"))[0] == "9040.00"


async def test_the_live_portfolio_moves_with_its_quotes_once_a_second_for_all_sockets(
    api_url: str, funded: dict[str, str], services: Services, app_services: Services
) -> None:
    user_id, symbol = uuid.UUID(funded["id"]), unique_symbol("L")
    await listed(services, symbol)
    await book_fill(services, user_id, symbol, "BUY", "10", "10.00")
    await quote(services, symbol, "10.99", "11.01", last="11.00")

    def transport() -> Any:
        return WebsocketsTransport(
            url=api_url.replace("http://", "ws://") + "/graphql",
            subprotocols=[WebsocketsTransport.GRAPHQLWS_SUBPROTOCOL],
            init_payload={"Authorization": f"Bearer {funded['token']}"},
            close_timeout=2,
        )

    live = document("subscription { portfolio { equity marketValue positions { symbol } } }")
    async with (
        Client(transport=transport()) as one,
        Client(transport=transport()) as two,
        aclosing(one.subscribe(live)) as first,
        aclosing(two.subscribe(live)) as second,
    ):
        a, b = await asyncio.wait_for(asyncio.gather(anext(first), anext(second)), 5)
        assert a["portfolio"]["marketValue"] == b["portfolio"]["marketValue"] == "110.00"
        before = app_services.portfolio_hub.revaluations(user_id)
        for last in ("11.50", "11.60", "11.70"):  # three moves within a second: one revaluation
            await quote(services, symbol, last, last, last=last)
        a, b = await asyncio.wait_for(asyncio.gather(anext(first), anext(second)), 5)
        assert a["portfolio"]["marketValue"] == b["portfolio"]["marketValue"]
        assert a["portfolio"]["marketValue"] in ("115.00", "116.00", "117.00")
        assert app_services.portfolio_hub.revaluations(user_id) - before <= 2


async def test_cache_ids_are_stable_per_account_holding_and_symbol(
    gql: GraphQLClient, services: Services
) -> None:
    """Apollo's InMemoryCache normalizes by `id`: a portfolio is its account, a position its
    account and symbol, a quote and a security their symbol, whatever the request."""
    user = await gql.register_user()
    user_id = uuid.UUID(user["id"])
    await services.cash.deposit(user_id, Decimal("1000"), "seed")
    symbol = unique_symbol("I")
    await listed(services, symbol)
    await book_fill(services, user_id, symbol, "BUY", "2", "10.00")
    await quote(services, symbol, "10.50", "10.52", last="10.51")
    query = (
        "{ portfolio { id positions { id symbol quote { id } } } "
        f'security(symbol: "{symbol}") {{ id quote {{ id }} }} }}'
    )
    first = (await gql(query, token=user["token"]))["data"]
    async with services.engine.connect() as conn:
        account_id = (
            await conn.execute(text("SELECT id FROM accounts WHERE user_id = :u"), {"u": user_id})
        ).scalar_one()
    assert first["portfolio"]["id"] == str(account_id)
    (position,) = first["portfolio"]["positions"]
    assert position["id"] == f"{account_id}:{symbol}"
    assert position["quote"]["id"] == first["security"]["id"] == symbol
    assert first["security"]["quote"]["id"] == symbol
    await quote(services, symbol, "10.60", "10.62", last="10.61")
    assert (await gql(query, token=user["token"]))["data"] == first  # ids, not values, here
