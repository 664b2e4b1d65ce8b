"""The order examples in docs/orders.md are documents the served schema accepts: a renamed field
or enum value fails here before a reader copies a stale example."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from graphql import GraphQLSchema, parse, validate
from graphql import build_schema as build_sdl

from gateway.graphql_schema import build_schema

ORDERS_DOC = Path(__file__).resolve().parents[2] / "docs" / "orders.md"
# A row of the examples table: | what | `{input}` |
EXAMPLE_ROW = re.compile(r"^\| (?P<what>[^|]+?) \| `(?P<input>\{.*\})` \|$")
SELECTION = "{ order { id status } errors { code message field } }"


def examples() -> list[tuple[str, str]]:
    rows = [EXAMPLE_ROW.match(line) for line in ORDERS_DOC.read_text().splitlines()]
    return [(m["what"], m["input"]) for m in rows if m and "..." not in m["input"]]


@pytest.fixture(scope="module")
def served() -> GraphQLSchema:
    return build_sdl(build_schema().as_str())


def test_the_examples_table_is_there() -> None:
    names = " ".join(what for what, _ in examples())
    for kind in ("MARKET", "LIMIT", "STOP", "STOP_LIMIT", "TRAILING_STOP", "BRACKET", "OTO", "OCO"):
        assert kind in names, f"docs/orders.md has no example of {kind}"


@pytest.mark.parametrize(("what", "given"), examples())
def test_each_example_is_a_valid_place_order_input(
    served: GraphQLSchema, what: str, given: str
) -> None:
    document = parse(f"mutation {{ placeOrder(input: {given}) {SELECTION} }}")
    assert validate(served, document) == [], what
