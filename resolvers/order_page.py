"""The order-history page compiled to one SQL statement that writes its JSON (issue 17).

A page of 50 orders with their executions cost the API ~2.6 ms of CPU through the ordinary way:
asyncpg decoding ~200 rows' values into Decimals and datetimes, an `Order` object per row, then
graphql-core completing every field and orjson encoding it. PostGraphile answers the same page by
compiling it to SQL; so does this module, for the selections it knows: each field of an edge
becomes a SQL expression over the order row, PostgreSQL builds each edge's JSON, and the
resolver returns the connection as a pre-encoded `orjson.Fragment`, which the executor passes
through untouched (`gateway/event_execution.py`).

Every expression writes exactly what the ordinary way writes (the same trimmed decimals, the same
ISO-8601 instants, the same cursors): `tests/api/test_order_page_compiled.py` runs each document
both ways and compares. A selection it does not know (a directive, a field with arguments, a
fragment on another type, a field not in the tables below) is left to the ordinary way, as is
everything when the projection is switched off (`TRADEQL_PROJECTION=false`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from cachetools import LRUCache
from graphql.language import (
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    InlineFragmentNode,
    SelectionSetNode,
)

from schema.decimals import MONEY, PERCENT, PRICE, QUANTITY, Kind
from services.orders.order_store import AVERAGE_FILL_PRICE_SQL, CURSOR_SQL


def _scaled(column: str, kind: Kind) -> str:
    """`schema.decimals.Scaled`: the kind's places, half away from zero."""
    return f"round({column}, {kind.places})::text"


def _quantity(column: str) -> str:
    return _scaled(column, QUANTITY)


def _price(column: str) -> str:
    return _scaled(column, PRICE)


def _instant(column: str) -> str:
    """`schema.scalars.serialize_datetime`: UTC, milliseconds (truncated), 'Z'."""
    return f"to_char({column} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')"


# Leaf fields: their SQL over the order row `o` / the execution row `e`.
ORDER_LEAVES: Mapping[str, str] = {
    "id": "o.id::text",
    "idempotencyKey": "o.idempotency_key",
    "symbol": "o.symbol",
    "side": "o.side",
    "type": "o.type",
    "timeInForce": "o.time_in_force",
    "quantity": _quantity("o.quantity"),
    "notional": _scaled("o.notional", MONEY),
    "limitPrice": _price("o.limit_price"),
    "stopPrice": _price("o.stop_price"),
    "status": "o.status",
    "filledQuantity": _quantity("o.filled_quantity"),
    "averageFillPrice": _price(AVERAGE_FILL_PRICE_SQL),
    "rejectReason": "o.reject_reason",
    "createdAt": _instant("o.created_at"),
    "updatedAt": _instant("o.updated_at"),
    "filledAt": _instant("o.filled_at"),
    "version": "o.version",
    "trailPrice": _price("o.trail_price"),
    "trailPercent": _scaled("o.trail_percent", PERCENT),
    "highWaterMark": _price("o.high_water_mark"),
    "replaces": "o.replaces::text",
    "replacedBy": "o.replaced_by::text",
    "extendedHours": "o.extended_hours",
    "orderClass": "o.order_class",
    "parentId": "o.parent_id::text",
}
EXECUTION_LEAVES: Mapping[str, str] = {
    "id": "e.id::text",
    "quantity": _quantity("e.quantity"),
    "price": _price("e.price"),
    "venue": "e.venue",
    "executedAt": _instant("e.executed_at"),
}

Fragments = Mapping[str, FragmentDefinitionNode]
# The class attribute of an execution context that passes an `orjson.Fragment` a resolver
# returns through as the field's completed value (gateway/event_execution.py).
PASSES_PRE_ENCODED = "passes_pre_encoded"


class _NotCompilable(Exception):
    """A selection the compiler leaves to the ordinary execution."""


@dataclass(frozen=True, slots=True)
class PagePlan:
    """A compiled selection of `OrderConnection`: the SQL of one edge, and how to write the
    connection's own fields around the edges."""

    edge_sql: str
    connection: tuple[tuple[str, str], ...]  # (response key, field): edges, pageInfo, __typename
    page_info: tuple[tuple[str, str], ...]  # (response key, field) of pageInfo's selection

    def respond(self, edges: Sequence[tuple[str, str]], has_next: bool) -> orjson.Fragment:
        """The connection's JSON, with the edges PostgreSQL wrote spliced in as they are."""
        out: dict[str, Any] = {}
        for key, field in self.connection:
            if field == "edges":
                out[key] = orjson.Fragment("[" + ",".join(edge for _, edge in edges) + "]")
            elif field == "pageInfo":
                out[key] = self._page_info(edges, has_next)
            else:
                out[key] = "OrderConnection"
        return orjson.Fragment(orjson.dumps(out))

    def _page_info(self, edges: Sequence[tuple[str, str]], has_next: bool) -> dict[str, Any]:
        values = {
            "hasNextPage": has_next,
            "endCursor": edges[-1][0] if edges else None,
            "__typename": "PageInfo",
        }
        return {key: values[field] for key, field in self.page_info}


# Plans by root field node; each entry holds its node, so its id is not reused while it lives.
# Nodes of a cached document are the same objects from one request to the next.
_PLANS: LRUCache[int, tuple[FieldNode, PagePlan | None]] = LRUCache(maxsize=2048)


def plan_for(field_nodes: Sequence[FieldNode], fragments: Fragments) -> PagePlan | None:
    """The compiled plan of an `orders` field, or None when the ordinary way must read it."""
    if len(field_nodes) != 1:  # the field selected twice: merged selections, left alone
        return None
    node = field_nodes[0]
    known = _PLANS.get(id(node))
    if known is not None and known[0] is node:
        return known[1]
    try:
        plan: PagePlan | None = _compile(node, fragments)
    except _NotCompilable:
        plan = None
    _PLANS[id(node)] = (node, plan)
    return plan


def _compile(node: FieldNode, fragments: Fragments) -> PagePlan:
    if node.directives or node.selection_set is None:
        raise _NotCompilable
    connection: list[tuple[str, str]] = []
    edge_sql = "NULL"
    page_info: tuple[tuple[str, str], ...] = ()
    for field in _collect(node.selection_set, "OrderConnection", fragments):
        name = field.name.value
        if name == "edges":
            edge_sql = _object(_sub(field), "OrderEdge", fragments, _edge_field)
        elif name == "pageInfo":
            page_info = tuple(
                (_key(f), _leaf(f, ("hasNextPage", "endCursor", "__typename")))
                for f in _collect(_sub(field), "PageInfo", fragments)
            )
        elif name != "__typename" or field.selection_set is not None:
            raise _NotCompilable
        connection.append((_key(field), name))
    return PagePlan(edge_sql, tuple(connection), page_info)


def _edge_field(field: FieldNode, fragments: Fragments) -> str:
    name = field.name.value
    if name == "cursor" and field.selection_set is None:
        return CURSOR_SQL
    if name == "node":
        return _object(_sub(field), "Order", fragments, _order_field)
    return _typename(field, "OrderEdge")


def _order_field(field: FieldNode, fragments: Fragments) -> str:
    name = field.name.value
    if name == "executions":
        each = _object(_sub(field), "Execution", fragments, _execution_field)
        return (
            f"coalesce((SELECT json_agg({each} ORDER BY e.executed_at, e.id) "
            "FROM executions e WHERE e.order_id = o.id), '[]'::json)"
        )
    if name in ORDER_LEAVES and field.selection_set is None:
        return ORDER_LEAVES[name]
    return _typename(field, "Order")


def _execution_field(field: FieldNode, _fragments: Fragments) -> str:
    name = field.name.value
    if name in EXECUTION_LEAVES and field.selection_set is None:
        return EXECUTION_LEAVES[name]
    return _typename(field, "Execution")


def _object(
    selection: SelectionSetNode,
    type_name: str,
    fragments: Fragments,
    field_sql: Any,
) -> str:
    """json_build_object of the selection's fields, in the order graphql-core writes them."""
    pairs = [
        f"'{_key(field)}', {field_sql(field, fragments)}"
        for field in _collect(selection, type_name, fragments)
    ]
    return f"json_build_object({', '.join(pairs)})"


def _typename(field: FieldNode, type_name: str) -> str:
    if field.name.value != "__typename" or field.selection_set is not None:
        raise _NotCompilable
    return f"'{type_name}'::text"


def _leaf(field: FieldNode, allowed: Iterable[str]) -> str:
    if field.name.value not in allowed or field.selection_set is not None:
        raise _NotCompilable
    return field.name.value


def _sub(field: FieldNode) -> SelectionSetNode:
    if field.selection_set is None:
        raise _NotCompilable
    return field.selection_set


def _key(field: FieldNode) -> str:
    return field.alias.value if field.alias else field.name.value


def _collect(selection: SelectionSetNode, type_name: str, fragments: Fragments) -> list[FieldNode]:
    """The fields of a selection on a concrete type, fragments spread in place, in graphql-core's
    order (a response key stands where it first appears). A directive, an argument, a fragment
    on another type or a response key given to two different fields is not compiled; a leaf
    selected twice is written once, as graphql-core merges it."""
    fields: dict[str, FieldNode] = {}
    for field in _spread(selection, type_name, fragments, depth=0):
        if field.arguments or field.directives:
            raise _NotCompilable
        key = _key(field)
        first = fields.get(key)
        if first is None:
            fields[key] = field
        elif first.name.value != field.name.value or field.selection_set or first.selection_set:
            raise _NotCompilable  # merging sub-selections is graphql-core's to do
    return list(fields.values())


def _spread(
    selection: SelectionSetNode, type_name: str, fragments: Fragments, depth: int
) -> Iterable[FieldNode]:
    if depth > 8:
        raise _NotCompilable
    for item in selection.selections:
        if item.directives:
            raise _NotCompilable
        if isinstance(item, FieldNode):
            yield item
            continue
        if isinstance(item, InlineFragmentNode):
            condition, inner = item.type_condition, item.selection_set
        elif isinstance(item, FragmentSpreadNode):
            fragment = fragments.get(item.name.value)
            if fragment is None or fragment.directives:
                raise _NotCompilable
            condition, inner = fragment.type_condition, fragment.selection_set
        else:
            raise _NotCompilable
        if condition is not None and condition.name.value != type_name:
            raise _NotCompilable
        yield from _spread(inner, type_name, fragments, depth + 1)
