"""Shared subscription events: executed once per document, the same result for every subscriber."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from decimal import Decimal
from typing import Any

import pytest
import strawberry
from graphql import Executor, GraphQLSchema, OperationDefinitionNode, parse

from gateway.graphql_schema import build_schema
from resolvers.shared_events import (
    SharedEventExecutionContext,
    compile_projection,
    event_shape_uses_variables,
    shared_event,
)
from schema.marketdata import Quote as SchemaQuote
from services import marketdata
from services.settings import Settings

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
    execution_context_class=SharedEventExecutionContext,
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


@pytest.mark.parametrize(
    "query",
    [
        "subscription($s: [String!]!) { quotes(symbols: $s) { symbol bid ask last volume timestamp } }",
        "subscription($s: [String!]!) { q: quotes(symbols: $s) "
        "{ __typename s: symbol bidSize askSize bid bid2: bid timestamp } }",
    ],
)
def test_the_projection_gives_exactly_what_the_executor_gives(query: str) -> None:
    served = build_schema(Settings())._schema
    operation = parse(query).definitions[0]
    assert isinstance(operation, OperationDefinitionNode)
    project = compile_projection(served, operation, [])
    assert project is not None
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
        "subscription { portfolio { positions { symbol } } }",  # objects below the root
    ],
)
def test_anything_but_plain_leaf_fields_goes_the_ordinary_way(query: str) -> None:
    served = build_schema(Settings())._schema
    document = parse(query)
    operation, *fragments = document.definitions
    assert isinstance(operation, OperationDefinitionNode)
    assert compile_projection(served, operation, fragments) is None
