"""A signed-in user's order calls through the API, and the running matcher, for the test modules
that trade through the API end to end."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import Decimal
from typing import Any
from uuid import UUID

from services.accounts.reconcile import find_differences
from services.infra.container import Services
from tests.graphql_client import GraphQLClient
from tests.trading import eventually
from workers.matcher import Matcher

DEPOSIT = """mutation($a: Decimal!, $k: String!) {
  deposit(amount: $a, idempotencyKey: $k) { errors { code } } }"""


async def deposit(gql: GraphQLClient, token: str, amount: Decimal) -> None:
    body = await gql(DEPOSIT, {"a": str(amount), "k": uuid.uuid4().hex}, token=token)
    assert body["data"]["deposit"]["errors"] == []


async def check(services: Services) -> None:
    """`tradeql check`: holds, positions, the ledger and every order's history agree."""
    assert await find_differences(services.engine) == []


@asynccontextmanager
async def running_matcher(services: Services) -> AsyncIterator[Matcher]:
    """A matcher that holds every partition (a previous test's matcher released them on stop),
    stopped on the way out."""
    stop = asyncio.Event()
    running = Matcher(services)
    task = asyncio.create_task(running.run(stop))
    for _ in range(200):
        if len(running.running) == services.settings.quote_partitions:
            break
        await asyncio.sleep(0.05)
    try:
        yield running
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)


class ApiTrader:
    """One trader's calls, each asserted to have no top-level error; every order comes back with
    the fields of `selection`."""

    def __init__(self, gql: GraphQLClient, user: dict[str, str], selection: str) -> None:
        self.gql = gql
        self.user = user
        self.token = user["token"]
        self.user_id = UUID(user["id"])
        answer = f"order {{ {selection} }} errors {{ code message field }}"
        self.place_document = (
            f"mutation($i: PlaceOrderInput!) {{ placeOrder(input: $i) {{ {answer} }} }}"
        )
        self.cancel_document = f"mutation($id: ID!) {{ cancelOrder(id: $id) {{ {answer} }} }}"
        self.order_document = f"query($id: ID!) {{ order(id: $id) {{ {selection} }} }}"

    async def call(self, query: str, **variables: Any) -> dict[str, Any]:
        body = await self.gql(query, variables, token=self.token)
        assert "errors" not in body, body
        return next(iter(body["data"].values()))  # type: ignore[no-any-return]

    async def try_place(self, symbol: str, **fields: Any) -> dict[str, Any]:
        """The placeOrder payload, errors and all (a buy of 10 unless `fields` say otherwise)."""
        order = {"symbol": symbol, "side": "BUY", "quantity": "10"} | fields
        order.setdefault("idempotencyKey", uuid.uuid4().hex)
        return await self.call(self.place_document, i=order)

    async def place(self, symbol: str, **fields: Any) -> dict[str, Any]:
        payload = await self.try_place(symbol, **fields)
        assert payload["errors"] == [], payload
        return payload["order"]  # type: ignore[no-any-return]

    async def cancel(self, order_id: str) -> dict[str, Any]:
        payload = await self.call(self.cancel_document, id=order_id)
        assert payload["errors"] == [], payload
        return payload["order"]  # type: ignore[no-any-return]

    async def order(self, order_id: str) -> dict[str, Any]:
        return await self.call(self.order_document, id=order_id)

    async def wait(self, order_id: str, timeout: float = 10.0, **expected: Any) -> dict[str, Any]:
        """The order once every field of `expected` has that value (AssertionError after
        `timeout` seconds, saying what it was)."""
        seen: list[dict[str, Any]] = []

        async def reached() -> bool:
            seen[:] = [await self.order(order_id)]
            return all(seen[0][k] == v for k, v in expected.items())

        try:
            await eventually(reached, timeout)
        except AssertionError:
            raise AssertionError(
                f"order is {seen[0] if seen else '?'}, wanted {expected}"
            ) from None
        return seen[0]
