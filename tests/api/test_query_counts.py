"""N+1 discipline: SQL statements and Redis round trips per request stay constant as a user's
positions, orders and executions grow."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pytest
from redis.asyncio.client import Pipeline
from sqlalchemy import event

from services.infra import db
from services.infra.container import Services
from services.portfolio.holdings_version import forget_now
from tests.graphql_client import GraphQLClient
from tests.trading import book_fill, listed, quote, unique_symbol

PORTFOLIO = """{ portfolio { cash equity marketValue unrealizedPnl realizedPnl
  positions { symbol quantity marketValue quote { last } } } }"""
HISTORY = """{ orders(first: 50) { edges { node { id status executions { price venue } } }
  pageInfo { hasNextPage } } }"""


@dataclass
class Counts:
    sql: int = 0
    redis: int = 0


@contextmanager
def counting(app_services: Services, monkeypatch: pytest.MonkeyPatch) -> Iterator[Counts]:
    counts = Counts()

    def on_sql(*_args: Any) -> None:
        counts.sql += 1

    real_command = app_services.redis.execute_command
    real_pipeline = Pipeline.execute

    async def command(*args: Any, **kwargs: Any) -> Any:
        counts.redis += 1
        return await real_command(*args, **kwargs)

    async def pipeline(self: Pipeline, *args: Any, **kwargs: Any) -> Any:
        counts.redis += 1
        return await real_pipeline(self, *args, **kwargs)

    real_fetch = db.fetch_directly

    async def fetch_directly(*args: Any, **kwargs: Any) -> Any:  # asyncpg itself, past SQLAlchemy
        counts.sql += 1
        return await real_fetch(*args, **kwargs)

    event.listen(app_services.engine.sync_engine, "before_cursor_execute", on_sql)
    monkeypatch.setattr(db, "fetch_directly", fetch_directly)
    monkeypatch.setattr(app_services.redis, "execute_command", command)
    monkeypatch.setattr(Pipeline, "execute", pipeline)
    try:
        yield counts
    finally:
        event.remove(app_services.engine.sync_engine, "before_cursor_execute", on_sql)
        monkeypatch.undo()


async def measure(
    gql: GraphQLClient,
    query: str,
    token: str,
    app_services: Services,
    monkeypatch: pytest.MonkeyPatch,
    *,
    warm: bool = True,
) -> Counts:
    if warm:
        await gql(query, token=token)  # warm: the session is cached, the document parsed
    with counting(app_services, monkeypatch) as counts:
        body = await gql(query, token=token)
    assert "errors" not in body, body
    return counts


async def a_trader_with(services: Services, gql: GraphQLClient, positions: int) -> str:
    user = await gql.register_user()
    user_id = uuid.UUID(user["id"])
    await services.cash.deposit(user_id, Decimal("1000000"), "seed")
    symbols = [unique_symbol("C") for _ in range(positions)]
    await listed(services, *symbols)
    for symbol in symbols:
        await book_fill(services, user_id, symbol, "BUY", "2", "10.00")
        await book_fill(services, user_id, symbol, "SELL", "1", "11.00")
        await quote(services, symbol, "10.50", "10.52", last="10.51")
    return user["token"]


async def test_portfolio_costs_the_same_for_5_and_50_positions(
    gql: GraphQLClient,
    services: Services,
    app_services: Services,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Both with the holdings read from PostgreSQL (their version retired, as a trade does) and
    with the API's own copy: one statement, then none; Redis for the rate limit with the session
    and its holdings version, then the quotes."""
    costs: dict[int, tuple[Counts, Counts]] = {}
    for positions in (5, 50):
        token = await a_trader_with(services, gql, positions)
        user_id = (await gql("{ me { id } }", token=token))["data"]["me"]["id"]
        await forget_now(services.redis, [uuid.UUID(user_id)])
        cold = await measure(gql, PORTFOLIO, token, app_services, monkeypatch, warm=False)
        warm = await measure(gql, PORTFOLIO, token, app_services, monkeypatch, warm=False)
        costs[positions] = (cold, warm)
    assert costs[50] == costs[5]
    cold, warm = costs[5]
    assert cold.sql == 1 and warm.sql == 0
    assert cold.redis == warm.redis <= 2


async def test_an_order_history_page_costs_the_same_for_5_and_50_orders(
    gql: GraphQLClient,
    services: Services,
    app_services: Services,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    few = await a_trader_with(services, gql, 3)  # 6 orders, 6 executions
    many = await a_trader_with(services, gql, 25)  # 50 orders, 50 executions
    small = await measure(gql, HISTORY, few, app_services, monkeypatch)
    large = await measure(gql, HISTORY, many, app_services, monkeypatch)
    assert large == small
    assert small.sql == 1  # the page and its executions in one statement


async def test_a_page_asking_for_executions_through_a_fragment_is_one_statement_too(
    gql: GraphQLClient,
    services: Services,
    app_services: Services,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    token = await a_trader_with(services, gql, 3)
    query = """query { orders(first: 10) { ...Page } }
      fragment Page on OrderConnection { edges { node { id ... on Order { executions { price } } } } }"""
    counts = await measure(gql, query, token, app_services, monkeypatch)
    assert counts.sql == 1
    body = await gql(query, token=token)
    prices = [
        e["price"] for edge in body["data"]["orders"]["edges"] for e in edge["node"]["executions"]
    ]
    assert sorted(prices) == ["10.0000"] * 3 + ["11.0000"] * 3
