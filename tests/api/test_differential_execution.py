"""Generated queries give the same results and errors through the platform's executor (the
projection, shared results, the compiled order page) as through graphql-core's own.

hypothesis-graphql writes valid documents against the served schema (aliases, fragments, nested
selections, arguments of every kind); each runs against the real resolvers, with a signed-in user
who has cash, positions, resting and filled orders, a watchlist and an alert, once through each
schema. `clock` is left out (its `now` differs between any two executions), and instants of the
last minute are compared as such (a portfolio's history ends at the moment it is read).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import orjson
import pytest
import strawberry
from graphql import GraphQLError
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from hypothesis_graphql import nodes, queries
from starlette.requests import Request

from gateway.graphql_schema import build_schema
from resolvers.context import Context
from services.accounts.sessions import SessionInfo
from services.infra.container import Services
from services.infra.settings import Settings
from services.orders.fills import Fill, execute
from tests.trading import listed, place, quote, reload, unique_symbol

EXAMPLES = 150
QUERY_FIELDS = ["me", "portfolio", "security", "quote", "quotes", "order", "orders",
                "watchlists", "alerts"]  # fmt: skip


def _request() -> Request:
    return Request({"type": "http", "method": "POST", "path": "/graphql", "headers": []})


class Executors:
    """The served schema twice: with the platform's executor and with graphql-core's."""

    def __init__(self, settings: Settings, services: Services, session: SessionInfo) -> None:
        self.ours = build_schema(settings.model_copy(update={"projection": True}))
        self.plain = build_schema(settings.model_copy(update={"projection": False}))
        self.services, self.session = services, session

    def context(self) -> Context:
        return Context(
            services=self.services,
            request=_request(),
            response=None,
            request_id=uuid.uuid4().hex,
            session=self.session,
        )

    async def run(self, schema: strawberry.Schema, document: str) -> tuple[Any, list[Any]]:
        result = await schema.execute(document, context_value=self.context())
        # as a client reads it: a compiled page is JSON written already (an orjson.Fragment)
        data = _now_masked(orjson.loads(orjson.dumps(result.data)), datetime.now(UTC))
        return data, sorted(_error(e) for e in result.errors or [])


def _now_masked(value: Any, now: datetime) -> Any:
    """Instants of the last minute read as `<recent>`: a portfolio's history ends with a point
    at the moment of the read, which no two executions share."""
    if isinstance(value, dict):
        return {k: _now_masked(v, now) for k, v in value.items()}
    if isinstance(value, list):
        return [_now_masked(v, now) for v in value]
    if isinstance(value, str) and value.endswith("Z") and "T" in value:
        try:
            instant = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return value
        if abs((now - instant).total_seconds()) < 60:
            return "<recent>"
    return value


def _error(error: GraphQLError) -> tuple[str, str, str]:
    code = (error.extensions or {}).get("code", "")
    return str(code), repr(error.path), error.message


@pytest.fixture
async def executors(settings: Settings, services: Services) -> Executors:
    held, resting = unique_symbol("D"), unique_symbol("R")
    await listed(services, held, resting)
    await quote(services, held, "20.10", "20.12")
    await quote(services, resting, "7.5000", "7.5100")
    signed = await services.users.register(
        f"diff-{uuid.uuid4().hex[:8]}@example.com", "violet-harbor-lantern-42"
    )
    user_id = signed.user.id
    await services.cash.deposit(user_id, Decimal("5000"), f"seed-{uuid.uuid4().hex}")
    bought = await place(services, user_id, held, type="LIMIT", quantity="3", limit="20.20")
    async with services.engine.begin() as conn:
        await execute(
            conn,
            await reload(services, bought.id),
            [
                Fill("EDGX", Decimal(1), Decimal("20.1100"), f"d:{bought.id}:1"),
                Fill("ARCA", Decimal(2), Decimal("20.1150"), f"d:{bought.id}:2"),
            ],
        )
    await place(services, user_id, resting, type="LIMIT", quantity="2.5", limit="7.0100")
    await place(services, user_id, held, type="STOP", quantity="1", stop="25")
    session = await services.sessions.authenticate(signed.token)
    assert session is not None
    found = Executors(services.settings, services, session)
    for mutation in (
        f'mutation {{ createWatchlist(name: "Tech", symbols: ["{held}", "{resting}"]) '
        "{ errors { code } } }",
        f'mutation {{ createPriceAlert(symbol: "{held}", condition: ABOVE, threshold: "30") '
        "{ errors { code } } }",
    ):
        data, errors = await found.run(found.ours, mutation)
        assert not errors, errors
        assert all(not payload["errors"] for payload in data.values()), data
    return found


def _served_sdl() -> str:
    return build_schema().as_str()


_DECIMALS = st.sampled_from(["0", "1", "20.11", "7.0100", "-3", "1e3", "999999999999"]).map(
    nodes.String
)
_INSTANTS = st.sampled_from(
    ["2026-12-01T14:30:00Z", "2026-12-04T00:00:00.000Z", "not a date", "2026-13-40T99:00:00Z"]
).map(nodes.String)


@pytest.mark.timeout(600)
async def test_generated_queries_agree_between_the_two_executors(executors: Executors) -> None:
    documents: list[str] = []

    @hypothesis_settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(
        queries(
            _served_sdl(),
            fields=QUERY_FIELDS,
            custom_scalars={"Decimal": _DECIMALS, "DateTime": _INSTANTS},
        )
    )
    def collect(document: str) -> None:
        documents.append(document)

    collect()  # hypothesis drives a sync test; the documents run below, on the test's loop
    assert len(documents) >= EXAMPLES // 2
    compared = 0
    for document in documents:
        ours = await executors.run(executors.ours, document)
        plain = await executors.run(executors.plain, document)
        assert ours == plain, f"the executors disagree on:\n{document}"
        compared += 1
    assert compared == len(documents)


async def test_the_order_page_agrees_between_the_two_executors(executors: Executors) -> None:
    """Hypothesis rarely writes the whole page: the compiled selection, written out."""
    document = """{ orders(first: 2) { __typename edges { cursor node { id symbol side type
      timeInForce quantity notional limitPrice stopPrice status filledQuantity averageFillPrice
      rejectReason createdAt updatedAt filledAt version trailPrice trailPercent highWaterMark
      replaces replacedBy executions { id quantity price venue
      executedAt } } } pageInfo { hasNextPage endCursor } } }"""
    ours = await executors.run(executors.ours, document)
    plain = await executors.run(executors.plain, document)
    assert ours == plain
    assert ours[0]["orders"]["pageInfo"]["hasNextPage"] is True
