"""The order-history page compiled to SQL (resolvers/order_page.py) answers exactly what the
ordinary execution answers, for every field it compiles, through aliases, fragments and pages."""

from __future__ import annotations

import base64
import uuid
from decimal import Decimal
from typing import Any

import pytest

from gateway.metrics import REGISTRY
from services.infra.container import Services
from services.orders.fills import Fill, execute
from services.orders.order_model import Status
from tests.graphql_client import GraphQLClient
from tests.trading import listed, quote, reload, unique_symbol

PLACE = """mutation($i: PlaceOrderInput!) { placeOrder(input: $i) { order { id }
  errors { code field } } }"""
CANCEL = "mutation($id: ID!) { cancelOrder(id: $id) { errors { code } } }"
REPLACE = """mutation($id: ID!, $i: ReplaceOrderInput!) { replaceOrder(id: $id, input: $i) {
  errors { code field message } } }"""
DEPOSIT = 'mutation { deposit(amount: "100000", idempotencyKey: "seed") { errors { code } } }'

EVERY_FIELD = """
  __typename
  edges { __typename cursor node { __typename id idempotencyKey symbol side type timeInForce
    quantity notional limitPrice stopPrice status filledQuantity averageFillPrice rejectReason
    createdAt updatedAt filledAt version trailPrice trailPercent highWaterMark replaces replacedBy
    extendedHours
    executions { __typename id quantity price venue executedAt } } }
  pageInfo { __typename hasNextPage endCursor }"""

DOCUMENTS: dict[str, str] = {
    "every field": f"query($first: Int!, $after: String) {{ orders(first: $first, after: $after)"
    f" {{ {EVERY_FIELD} }} }}",
    "aliases and fragments": """
      query($first: Int!, $after: String) { mine: orders(first: $first, after: $after) {
        ...Page info: pageInfo { more: hasNextPage } } }
      fragment Page on OrderConnection { e: edges { ... on OrderEdge { c: cursor }
        n: node { ...OrderBits s: symbol id id ... { avg: averageFillPrice } } } }
      fragment OrderBits on Order { id status fills: executions { p: price q: quantity } }""",
    "page info alone": """query($first: Int!, $after: String) {
      orders(first: $first, after: $after) { pageInfo { endCursor hasNextPage } } }""",
    "filtered": """query($first: Int!, $after: String) {
      orders(first: $first, after: $after, status: [FILLED, PARTIALLY_FILLED]) {
        edges { node { id status averageFillPrice } } } }""",
}


def _with_directive(document: str) -> str:
    """The same document, but the compiler leaves a field with a directive to graphql-core."""
    head, marker, tail = document.partition("orders(")
    arguments, _, rest = tail.partition(")")
    return f"{head}{marker}{arguments}) @include(if: true){rest}"


def compiled_pages() -> float:
    value = REGISTRY.get_sample_value(
        "tradeql_pre_encoded_results_total", {"type": "OrderConnection"}
    )
    return value or 0.0


@pytest.fixture
async def history(gql: GraphQLClient, user: dict[str, str], services: Services) -> str:
    """A user whose orders cover every shape a page shows: filled in several executions (with
    an average that is a tie at the 4th place), partly filled, resting, cancelled, by amount,
    fractional, with stop prices and sub-dollar prices."""
    symbol, cheap = unique_symbol("C"), unique_symbol("P")
    await listed(services, symbol, cheap)
    await quote(services, symbol, "50.10", "50.12")
    await quote(services, cheap, "0.5100", "0.5200")
    token = user["token"]
    assert (await gql(DEPOSIT, token=token))["data"]["deposit"]["errors"] == []

    async def place(**fields: Any) -> uuid.UUID:
        order = {"symbol": symbol, "side": "BUY", "idempotencyKey": uuid.uuid4().hex, **fields}
        body = await gql(PLACE, {"i": order}, token=token)
        assert body["data"]["placeOrder"]["errors"] == [], body
        return uuid.UUID(body["data"]["placeOrder"]["order"]["id"])

    async def fill(order_id: uuid.UUID, *fills: tuple[str, str]) -> None:
        order = await reload(services, order_id)
        async with services.engine.begin() as conn:
            await execute(
                conn,
                order,
                [
                    Fill("EDGX", Decimal(q), Decimal(p), f"c:{order_id}:{i}")
                    for i, (q, p) in enumerate(fills)
                ],
            )

    tie = await place(type="LIMIT", quantity="2", limitPrice="50.1300")
    await fill(tie, ("1", "50.1234"), ("1", "50.1235"))  # average 50.12345: half away from zero
    thirds = await place(type="LIMIT", quantity="3", limitPrice="50.20")
    await fill(thirds, ("1", "50.10"), ("1.5", "50.11"))  # partly filled, average 50.106
    await place(type="LIMIT", quantity="0.123456", limitPrice="49")
    await place(type="STOP_LIMIT", quantity="1", limitPrice="51.5", stopPrice="51.25")
    await place(type="STOP", quantity="4", stopPrice="60")
    await place(type="MARKET", notional="12.34")
    await place(symbol=cheap, type="LIMIT", quantity="100", limitPrice="0.5123")
    await place(type="TRAILING_STOP", quantity="1", trailPercent="1.5")
    await place(type="TRAILING_STOP", quantity="2", trailPrice="0.25")
    replaced = await place(type="LIMIT", quantity="1", limitPrice="44.10")
    body = await gql(
        REPLACE,
        {"id": str(replaced), "i": {"limitPrice": "44.20", "idempotencyKey": uuid.uuid4().hex}},
        token=token,
    )
    assert body["data"]["replaceOrder"]["errors"] == [], body
    cancelled = await place(type="LIMIT", quantity="1", limitPrice="45.10")
    assert (await gql(CANCEL, {"id": str(cancelled)}, token=token))["data"]["cancelOrder"][
        "errors"
    ] == []
    assert (await reload(services, thirds)).status is Status.PARTIALLY_FILLED
    return token


@pytest.mark.parametrize("name", sorted(DOCUMENTS))
async def test_each_page_is_what_the_ordinary_execution_answers(
    gql: GraphQLClient, history: str, name: str
) -> None:
    document = DOCUMENTS[name]
    for first in (3, 50):
        after: str | None = None
        for _ in range(10):  # every page of the walk
            variables = {"first": first, "after": after}
            before = compiled_pages()
            got = await gql(document, variables, token=history)
            assert compiled_pages() == before + 1, "the page was not compiled"
            want = await gql(_with_directive(document), variables, token=history)
            assert compiled_pages() == before + 1, "the directive did not turn compiling off"
            assert "errors" not in got and "errors" not in want
            assert got == want
            page = next(iter(got["data"].values()))
            info = page.get("pageInfo") or page.get("info") or {}
            cursor = (
                [e.get("cursor") or e.get("c") for e in page.get("edges") or page.get("e", [])]
                or [None]
            )[-1]
            if not (info.get("hasNextPage") or info.get("more")) or cursor is None:
                break
            after = cursor


async def test_the_tie_is_rounded_half_away_from_zero_and_scales_are_fixed(
    gql: GraphQLClient, history: str
) -> None:
    body = await gql(
        "{ orders(first: 50) { edges { node { quantity limitPrice stopPrice averageFillPrice "
        "filledQuantity notional executions { quantity price } } } } }",
        token=history,
    )
    nodes = [e["node"] for e in body["data"]["orders"]["edges"]]
    averages = {n["averageFillPrice"] for n in nodes}
    assert {"50.1235", "50.1060"} <= averages
    assert {"0.5123", "51.5000", "49.0000", "60.0000"} <= {
        n["limitPrice"] or n["stopPrice"] for n in nodes
    }
    assert {"0.123456", "2.000000", "2.500000"} <= {n["quantity"] for n in nodes} | {
        n["filledQuantity"] for n in nodes
    }
    assert "12.34" in {n["notional"] for n in nodes}


async def test_a_cursor_of_the_earlier_iso_form_still_pages(
    gql: GraphQLClient, history: str, services: Services
) -> None:
    query = "query($a: String) { orders(first: 2, after: $a) { edges { cursor node { id } } } }"
    first = (await gql(query, {"a": None}, token=history))["data"]["orders"]["edges"]
    second = (await gql(query, {"a": first[-1]["cursor"]}, token=history))["data"]["orders"][
        "edges"
    ]
    order = await reload(services, uuid.UUID(first[-1]["node"]["id"]))
    iso = base64.urlsafe_b64encode(f"{order.created_at.isoformat()}|{order.id}".encode()).decode()
    again = (await gql(query, {"a": iso}, token=history))["data"]["orders"]["edges"]
    assert [e["node"]["id"] for e in again] == [e["node"]["id"] for e in second]
