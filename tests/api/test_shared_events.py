"""Shared subscription events: executed once per document, the same result for every subscriber."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncGenerator
from decimal import Decimal
from typing import Any
from uuid import UUID

import pytest
import strawberry
from graphql import Executor, GraphQLSchema, OperationDefinitionNode, parse

from gateway.event_execution import (
    ProjectingExecutionContext,
    Projection,
    compile_projection,
    event_shape_uses_variables,
)
from gateway.graphql_schema import build_schema
from resolvers.orders import to_order
from resolvers.shared_events import shared_event
from schema import orders as schema_orders
from schema.marketdata import Quote as SchemaQuote
from services.infra.settings import Settings
from services.market_data import marketdata
from services.orders import order_model
from tests.services.test_matching import make_order

completed: list[str] = []


@strawberry.type
class Tick:
    name: str

    @strawberry.field
    def price(self) -> str:
        completed.append(self.name)
        return f"{self.name}-price"


EVENTS: list[Tick] = []


@strawberry.type
class Query:
    ok: bool = True


@strawberry.type
class Subscription:
    @strawberry.subscription
    async def ticks(self, symbols: list[str]) -> AsyncGenerator[Tick, None]:
        for event in EVENTS:
            yield event


schema = strawberry.Schema(
    query=Query,
    subscription=Subscription,
    execution_context_class=ProjectingExecutionContext,
)


async def collect(query: str, variables: dict[str, Any] | None = None) -> list[Any]:
    stream = await schema.subscribe(query, variable_values=variables)
    assert not isinstance(stream, strawberry.types.ExecutionResult)
    return [result.data async for result in stream]


async def run_two(query: str, first: dict[str, Any], second: dict[str, Any]) -> list[list[Any]]:
    return list(await asyncio.gather(collect(query, first), collect(query, second)))


DOC = "subscription S($s: [String!]!) { ticks(symbols: $s) { name price } }"


async def test_a_shared_event_is_completed_once_for_every_subscriber_of_a_document() -> None:
    EVENTS[:] = [shared_event(Tick(name="A")), shared_event(Tick(name="B"))]
    completed.clear()
    one, two = await run_two(DOC, {"s": ["A"]}, {"s": ["B", "C"]})
    expected = [
        {"ticks": {"name": "A", "price": "A-price"}},
        {"ticks": {"name": "B", "price": "B-price"}},
    ]
    assert one == two == expected
    assert completed == ["A", "B"]  # not once per subscriber


async def test_events_not_marked_shared_are_completed_per_subscriber() -> None:
    EVENTS[:] = [Tick(name="A")]
    completed.clear()
    one, two = await run_two(DOC, {"s": ["A"]}, {"s": ["A"]})
    assert one == two
    assert completed == ["A", "A"]


async def test_a_selection_that_reads_a_variable_is_completed_per_subscriber() -> None:
    query = (
        "subscription S($s: [String!]!, $p: Boolean!) "
        "{ ticks(symbols: $s) { name price @include(if: $p) } }"
    )
    EVENTS[:] = [shared_event(Tick(name="A"))]
    completed.clear()
    with_price, without = await run_two(query, {"s": ["A"], "p": True}, {"s": ["A"], "p": False})
    assert with_price == [{"ticks": {"name": "A", "price": "A-price"}}]
    assert without == [{"ticks": {"name": "A"}}]
    assert completed == ["A"]  # completed only where included, and never shared by mistake


async def test_different_documents_each_get_their_own_result() -> None:
    EVENTS[:] = [shared_event(Tick(name="A"))]
    completed.clear()
    full, names = await asyncio.gather(
        collect(DOC, {"s": ["A"]}),
        collect('subscription { ticks(symbols: ["A"]) { name } }'),
    )
    assert full == [{"ticks": {"name": "A", "price": "A-price"}}]
    assert names == [{"ticks": {"name": "A"}}]
    assert completed == ["A"]


def shape_uses_variables(query: str) -> bool:
    document = parse(query)
    operation, *fragments = document.definitions
    return event_shape_uses_variables(operation, fragments)  # type: ignore[arg-type]


def test_variables_of_the_root_arguments_do_not_change_an_events_shape() -> None:
    assert not shape_uses_variables(DOC)
    assert shape_uses_variables(
        "subscription($p: Boolean!) { ticks(symbols: []) @skip(if: $p) { name } }"
    )
    assert shape_uses_variables(
        "subscription($p: Boolean!) { ticks(symbols: []) { ...F } } fragment F on Tick { price @include(if: $p) }"
    )
    assert shape_uses_variables(
        "subscription($p: Boolean!) @d(if: $p) { ticks(symbols: []) { name } }"
    )


# --- the compiled projection, against graphql-core's own execution, on the served schema --------

LIVE_QUOTE = marketdata.Quote(
    symbol="AAPL",
    bid=Decimal("189.9900"),
    ask=Decimal("190.01"),
    bid_size=300,
    ask_size=100,
    last=Decimal("190"),
    volume=12_345_678,
    timestamp_ns=1_764_000_000_123_456_789,
)


def executed(served: GraphQLSchema, query: str, event: object) -> Any:
    executor = Executor.build(served, parse(query), raw_variable_values={"s": ["AAPL"]})
    assert isinstance(executor, Executor)
    return executor.build_per_event_executor(event).execute_operation()


def served_projection(query: str) -> tuple[GraphQLSchema, Projection]:
    """The served schema, and the projection it compiles for `query` (which must be plain)."""
    served = build_schema(Settings())._schema
    operation = parse(query).definitions[0]
    assert isinstance(operation, OperationDefinitionNode)
    project = compile_projection(served, operation, [])
    assert project is not None
    return served, project


@pytest.mark.parametrize(
    "query",
    [
        "subscription($s: [String!]!) { quotes(symbols: $s) { symbol bid ask last volume timestamp } }",
        "subscription($s: [String!]!) { q: quotes(symbols: $s) "
        "{ __typename s: symbol bidSize askSize bid bid2: bid timestamp } }",
    ],
)
def test_the_projection_gives_exactly_what_the_executor_gives(query: str) -> None:
    served, project = served_projection(query)
    event = SchemaQuote.from_domain(LIVE_QUOTE)
    assert project(event) == executed(served, query, event)
    assert project(event).data == executed(served, query, event).data  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "query",
    [
        "subscription { quotes(symbols: []) { ...F } } fragment F on Quote { bid }",
        "subscription($p: Boolean!) { quotes(symbols: []) { bid @include(if: $p) } }",
        "subscription { quotes(symbols: []) @skip(if: false) { bid } }",
        "subscription { quotes(symbols: []) { bid } orderUpdates { kind } }",
        "subscription { quotes(symbols: []) { bid(x: 1) } }",  # arguments below the root
    ],
)
def test_anything_but_plain_leaf_fields_goes_the_ordinary_way(query: str) -> None:
    served = build_schema(Settings())._schema
    document = parse(query)
    operation, *fragments = document.definitions
    assert isinstance(operation, OperationDefinitionNode)
    assert compile_projection(served, operation, fragments) is None


def an_update(with_execution: bool) -> schema_orders.OrderUpdate:
    order = dataclasses.replace(
        make_order(
            limit="190.1000", quantity="2.500000", status=order_model.Status.PARTIALLY_FILLED
        ),
        time_in_force=order_model.TimeInForce.DAY,
        filled_quantity=Decimal("1.000000"),
        filled_value=Decimal("190.05"),
        reserved_cash=Decimal("285.15"),
    )
    at = order.created_at
    execution = order_model.Execution(
        UUID(int=9), order.id, Decimal("1"), Decimal("190.05"), "EDGX", "x-1", at
    )
    return schema_orders.OrderUpdate(
        event=order_model.Event.PARTIAL_FILL,
        order=to_order(order),
        execution=schema_orders.Execution.from_domain(execution) if with_execution else None,
    )


ORDER_UPDATES = (
    "subscription { orderUpdates { __typename event"
    " order { id symbol side type timeInForce quantity notional limitPrice stopPrice status"
    " filledQuantity averageFillPrice rejectReason createdAt updatedAt filledAt }"
    " fill: execution { id quantity price venue executedAt } } }"
)


@pytest.mark.parametrize("with_execution", [True, False])
def test_a_nested_projection_gives_exactly_what_the_executor_gives(with_execution: bool) -> None:
    served, project = served_projection(ORDER_UPDATES)
    event = an_update(with_execution)
    projected = project(event)
    assert projected == executed(served, ORDER_UPDATES, event)
    assert projected is not None and projected.data is not None
    assert (projected.data["orderUpdates"]["fill"] is None) is not with_execution


def test_a_null_where_the_schema_allows_none_is_left_to_the_executor() -> None:
    served, project = served_projection(ORDER_UPDATES)
    event = an_update(True)
    event.order.symbol = None  # type: ignore[assignment]
    assert project(event) is None
    assert executed(served, ORDER_UPDATES, event).errors  # graphql-core names the error
