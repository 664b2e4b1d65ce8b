"""Every Decimal the API serves has its kind's fixed scale, said in its field's description: money
2 places, prices 4, quantities 6, percentages 2 (issue 14)."""

from __future__ import annotations

import re
import uuid
from decimal import Decimal
from typing import Any

import pytest
from graphql import (
    GraphQLList,
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLSchema,
    build_schema,
    get_named_type,
)

from gateway.graphql_schema import build_schema as build_served
from services.infra.container import Services
from services.orders.fills import Fill, execute
from tests.graphql_client import GraphQLClient
from tests.trading import listed, place, quote, reload, unique_symbol

_SCALE = re.compile(r"\((?:money|price|quantity|percent): (?:0-100, )?(\d) decimal places\)$")
_SCALE_ALONE = re.compile(r"^(?:Money|Price|Quantity|Percent): (?:0-100, )?(\d) decimal places$")


@pytest.fixture(scope="module")
def served() -> GraphQLSchema:
    return build_schema(build_served().as_str())


def places_of(description: str | None) -> int | None:
    for pattern in (_SCALE, _SCALE_ALONE):
        found = pattern.search(description or "")
        if found:
            return int(found.group(1))
    return None


def test_every_decimal_output_field_says_its_scale(served: GraphQLSchema) -> None:
    unscaled = [
        f"{type_.name}.{name}"
        for type_ in served.type_map.values()
        if isinstance(type_, GraphQLObjectType) and not type_.name.startswith("__")
        for name, field in type_.fields.items()
        if get_named_type(field.type).name == "Decimal" and places_of(field.description) is None
    ]
    assert unscaled == []


def _check(value: Any, type_: Any, path: str, seen: list[str]) -> None:
    """Walks a response (fields by name, no aliases) alongside the schema's types."""
    if value is None:
        return
    if isinstance(type_, GraphQLNonNull):
        _check(value, type_.of_type, path, seen)
    elif isinstance(type_, GraphQLList):
        for i, item in enumerate(value):
            _check(item, type_.of_type, f"{path}[{i}]", seen)
    elif isinstance(type_, GraphQLObjectType):
        for name, item in value.items():
            field = type_.fields[name]
            if get_named_type(field.type).name == "Decimal" and not isinstance(item, list):
                places = places_of(field.description)
                if item is not None:
                    assert places is not None and re.fullmatch(rf"-?\d+\.\d{{{places}}}", item), (
                        f"{path}.{name} = {item!r}: not {places} decimal places"
                    )
                    seen.append(f"{type_.name}.{name}")
            else:
                _check(item, field.type, f"{path}.{name}", seen)


async def test_every_decimal_served_has_its_kinds_places(
    gql: GraphQLClient, user: dict[str, str], services: Services, served: GraphQLSchema
) -> None:
    symbol = unique_symbol("S")
    await listed(services, symbol)
    await quote(services, symbol, "12.3", "12.35", last="12.31")
    token = user["token"]
    deposit = 'mutation { deposit(amount: "1000.5", idempotencyKey: "s") { errors { code } } }'
    assert (await gql(deposit, token=token))["data"]["deposit"]["errors"] == []
    user_id = uuid.UUID(user["id"])
    bought = await place(services, user_id, symbol, type="LIMIT", quantity="3", limit="12.4")
    async with services.engine.begin() as conn:
        await execute(
            conn,
            await reload(services, bought.id),
            [
                Fill("EDGX", Decimal(1), Decimal("12.35"), f"s:{bought.id}:1"),
                Fill("EDGX", Decimal("0.5"), Decimal("12.3"), f"s:{bought.id}:2"),
            ],
        )
    await place(services, user_id, symbol, type="MARKET", quantity=None, notional="10")
    alert = f'mutation {{ createPriceAlert(symbol: "{symbol}", condition: BELOW, threshold: "9") {{ errors {{ code }} }} }}'
    assert (await gql(alert, token=token))["data"]["createPriceAlert"]["errors"] == []
    document = f"""{{
      portfolio {{ cash buyingPower marketValue equity realizedPnl unrealizedPnl
        history {{ equity }}
        positions {{ quantity reservedQuantity averageCost costBasis marketValue unrealizedPnl
          unrealizedPnlPercent quote {{ bid ask last }} }} }}
      quote(symbol: "{symbol}") {{ bid ask last }}
      orders(first: 10) {{ edges {{ node {{ quantity notional limitPrice stopPrice filledQuantity
        averageFillPrice executions {{ quantity price }} }} }} }}
      alerts {{ threshold triggeredPrice }}
    }}"""
    body = await gql(document, token=token)
    assert "errors" not in body, body
    seen: list[str] = []
    query_type = served.query_type
    assert query_type is not None
    _check(body["data"], query_type, "data", seen)
    assert {
        "Portfolio.cash",
        "Position.averageCost",
        "Position.quantity",
        "Position.unrealizedPnlPercent",
        "Quote.last",
        "Order.notional",
        "Order.averageFillPrice",
        "Execution.quantity",
        "PriceAlert.threshold",
    } <= set(seen)
    node = body["data"]["orders"]["edges"][-1]["node"]
    assert node["averageFillPrice"] == "12.3333"  # 18.5 / 1.5, half away from zero
    assert node["quantity"] == "3.000000" and node["limitPrice"] == "12.4000"
