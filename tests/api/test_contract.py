"""The served schema against ../shared/contract.graphql: every type and field built so far must
match the contract exactly (types, nullability, arguments, defaults), and nothing built may break
it. Parts of the contract that later issues build are listed here, and only those may be absent."""

from __future__ import annotations

import pytest
from graphql import (
    GraphQLEnumType,
    GraphQLInputObjectType,
    GraphQLObjectType,
    GraphQLSchema,
    build_schema,
    find_breaking_changes,
    print_type,
)

from gateway.graphql_schema import build_schema as build_served_schema
from tests.contract import contract_text

# Contract parts not served yet, by the issue that builds them. Shrinks to nothing.
_TRADING_PARITY: dict[str, set[str]] = {}  # 15


NOT_YET_BUILT: dict[str, set[str]] = _TRADING_PARITY
NOT_YET_BUILT_TYPES: set[str] = set()  # 15
NOT_YET_BUILT_ENUM_VALUES: dict[str, set[str]] = {}


@pytest.fixture(scope="module")
def contract() -> GraphQLSchema:
    return build_schema(contract_text())


@pytest.fixture(scope="module")
def served() -> GraphQLSchema:
    return build_schema(build_served_schema().as_str())


def _fields(type_: object) -> dict[str, object]:
    return dict(getattr(type_, "fields", {}) or {})


def test_every_contract_type_is_served_or_listed_as_not_yet_built(
    contract: GraphQLSchema, served: GraphQLSchema
) -> None:
    missing = {
        name
        for name in contract.type_map
        if not name.startswith("__") and name not in served.type_map
    }
    assert missing <= NOT_YET_BUILT_TYPES, (
        f"contract types not served: {missing - NOT_YET_BUILT_TYPES}"
    )
    built_but_listed = NOT_YET_BUILT_TYPES & set(served.type_map)
    assert not built_but_listed, f"served now, remove from NOT_YET_BUILT_TYPES: {built_but_listed}"


def test_every_served_contract_type_has_all_its_fields(
    contract: GraphQLSchema, served: GraphQLSchema
) -> None:
    for name, contract_type in contract.type_map.items():
        if name.startswith("__") or name not in served.type_map:
            continue
        served_type = served.type_map[name]
        assert type(served_type) is type(contract_type), name
        if isinstance(contract_type, GraphQLEnumType):
            served_values = set(served_type.values)  # type: ignore[attr-defined]
            absent = set(contract_type.values) - served_values
            listed = NOT_YET_BUILT_ENUM_VALUES.get(name, set())
            assert absent <= listed, f"{name} lacks values {absent - listed}"
            assert not (listed & served_values), (
                f"{name}: served now, remove from NOT_YET_BUILT_ENUM_VALUES: {listed & served_values}"
            )
        if isinstance(contract_type, GraphQLObjectType | GraphQLInputObjectType):
            missing = set(_fields(contract_type)) - set(_fields(served_type))
            allowed = NOT_YET_BUILT.get(name, set())
            assert missing <= allowed, f"{name} lacks {missing - allowed}"
            assert not (allowed & set(_fields(served_type))), (
                f"{name}: served now, remove from NOT_YET_BUILT: {allowed & set(_fields(served_type))}"
            )


def test_nothing_served_breaks_the_contract(contract: GraphQLSchema, served: GraphQLSchema) -> None:
    """graphql-core's own breaking-change check, less the absences listed above."""
    allowed = {f"Field {t}.{f} was removed." for t, fields in NOT_YET_BUILT.items() for f in fields}
    allowed |= {f"{t} was removed." for t in NOT_YET_BUILT_TYPES}
    allowed |= {
        f"Enum value {t}.{v} was removed."
        for t, values in NOT_YET_BUILT_ENUM_VALUES.items()
        for v in values
    }
    allowed |= {
        f"Standard scalar {t} was removed because it is not referenced anymore."
        for t in NOT_YET_BUILT_TYPES
    }
    breaking = [
        change.description
        for change in find_breaking_changes(contract, served)
        if change.description not in allowed
    ]
    assert breaking == []


def test_served_fields_print_like_the_contract(
    contract: GraphQLSchema, served: GraphQLSchema
) -> None:
    """Field by field, the printed signature (arguments, defaults, nullability) is the contract's."""
    for name, contract_type in contract.type_map.items():
        if name.startswith("__") or name not in served.type_map:
            continue
        if not isinstance(contract_type, GraphQLObjectType | GraphQLInputObjectType):
            continue
        contract_lines = _signature_lines(print_type(contract_type))
        served_lines = _signature_lines(print_type(served.type_map[name]))
        for field, line in contract_lines.items():
            if field in served_lines:
                assert served_lines[field] == line, f"{name}.{field}"


def _signature_lines(printed: str) -> dict[str, str]:
    lines: dict[str, str] = {}
    in_description = False
    for raw in printed.splitlines()[1:-1]:
        line = raw.strip()
        if line == '"""':  # a block description opens or closes: its lines are not fields
            in_description = not in_description
            continue
        if not line or line.startswith('"') or in_description:
            continue
        lines[line.split("(")[0].split(":")[0]] = line
    return lines
