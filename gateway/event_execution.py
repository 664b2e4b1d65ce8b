"""Subscription events made cheaply: plain selections projected, shared events made once.

graphql-core executes every subscription event for every subscriber: for live quotes that was
~250-380 us of CPU per delivered quote, nearly all of it completing fields. Two shortcuts, each
giving exactly what graphql-core would:

* A document that selects only plain fields of the event (attributes, leaves or objects of
  concrete types; no lists, fragments, directives or arguments below the root field) is read by
  a projection compiled once per subscription. Anything else, and any null where the schema
  allows none, goes the ordinary way, errors included.
* An event marked shared by its resolver (`resolvers/shared_events.py`: the same object for every
  subscriber, whose fields do not depend on who asks) gets one result per document, reused for
  every other subscriber with the same document text and operation, when no variable is used
  below the root field's own arguments (those only select the stream) and it had no errors.

`tradeql_subscription_events_total{how}` counts events by the way their result was made.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from inspect import isawaitable
from typing import Any

import orjson
from cachetools import LRUCache
from graphql import (
    ExecutionResult,
    GraphQLError,
    GraphQLLeafType,
    GraphQLList,
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLSchema,
    is_leaf_type,
)
from graphql.language import (
    DirectiveNode,
    FieldNode,
    FragmentDefinitionNode,
    Node,
    OperationDefinitionNode,
    VariableNode,
)
from graphql.pyutils import AwaitableOrValue, Undefined
from prometheus_client import Counter
from strawberry.schema.schema_converter import GraphQLCoreConverter
from strawberry.types.field import StrawberryField

from gateway.metrics import REGISTRY
from resolvers.shared_events import shared_results
from schema.prefetch import PREFETCHED
from services.infra.compat import StrawberryGraphQLCoreExecutionContext

_UNKNOWN: Any = object()
log = logging.getLogger("tradeql.execution")

EVENTS = Counter(
    "tradeql_subscription_events_total",
    "subscription events by how their result was made: shared (made for another subscriber), "
    "projected (plain fields read directly) or executed (graphql-core)",
    ["how"],
    registry=REGISTRY,
)
_SHARED, _PROJECTED, _EXECUTED = (EVENTS.labels(how) for how in ("shared", "projected", "executed"))
PRE_ENCODED = Counter(
    "tradeql_pre_encoded_results_total",
    "objects a resolver answered as JSON written already (an order-history page compiled to "
    "one SQL statement: resolvers/order_page.py), by type",
    ["type"],
    registry=REGISTRY,
)


def _uses_variables(node: Node | None) -> bool:
    if node is None:
        return False
    if isinstance(node, VariableNode):
        return True
    for key in node.keys:
        value = getattr(node, key, None)
        children: Iterable[Any] = value if isinstance(value, tuple | list) else (value,)
        if any(isinstance(c, Node) and _uses_variables(c) for c in children):
            return True
    return False


def _root_field_uses_variables(field: Node) -> bool:
    """Variables in a root field's directives or selections; its arguments are left out."""
    if not isinstance(field, FieldNode):  # an inline fragment or spread at the root
        return _uses_variables(field)
    directives: tuple[DirectiveNode, ...] = tuple(field.directives or ())
    return any(_uses_variables(d) for d in directives) or _uses_variables(field.selection_set)


def event_shape_uses_variables(
    operation: OperationDefinitionNode, fragments: Iterable[FragmentDefinitionNode]
) -> bool:
    """Whether what an event looks like can depend on the operation's variables."""
    if any(_uses_variables(d) for d in operation.directives or ()):
        return True
    if any(_root_field_uses_variables(s) for s in operation.selection_set.selections):
        return True
    return any(_uses_variables(f) for f in fragments)


Projection = Callable[[Any], ExecutionResult | None]
_Read = Callable[[Any], Any]


class _ExecutorDecides(Exception):
    """A null where the schema allows none: graphql-core reports it, with its path."""


FALLBACKS = Counter(
    "tradeql_projection_fallbacks_total",
    "values the projection left to graphql-core, by where and why (a null or value it would "
    "report, or an unexpected exception: a bug, logged once)",
    ["where", "why"],
    registry=REGISTRY,
)
_LOGGED: set[type[BaseException]] = set()


def _fell_back(where: str, exc: Exception) -> None:
    """Expected (a null where none is allowed, a value a scalar refuses: graphql-core reports
    it) or not (a bug in the projection, or a library change): counted either way, and an
    unexpected kind logged once with its traceback."""
    expected = isinstance(exc, _ExecutorDecides | GraphQLError | TypeError | ValueError)
    FALLBACKS.labels(where, "expected" if expected else type(exc).__name__).inc()
    if not expected and type(exc) not in _LOGGED:
        _LOGGED.add(type(exc))
        log.error("projection fell back on an unexpected %s", type(exc).__name__, exc_info=exc)


def compile_projection(
    schema: GraphQLSchema, operation: OperationDefinitionNode, fragments: Iterable[object]
) -> Projection | None:
    """A direct reader for a subscription that selects only plain fields, or None.

    Plain: attributes of the event (strawberry fields without a resolver or field extensions,
    or resolver fields whose value is already on the object: schema/prefetch.py), leaves,
    objects of concrete types or lists of either, no fragments, directives or arguments below
    the root field. Everything else is left to graphql-core."""
    root_type = schema.subscription_type
    selections = operation.selection_set.selections
    if root_type is None or operation.directives or any(True for _ in fragments):
        return None
    if len(selections) != 1 or not isinstance(selections[0], FieldNode):
        return None
    root = selections[0]
    root_def = root_type.fields.get(root.name.value)
    if root.directives or root.selection_set is None or root_def is None:
        return None
    event_type = root_def.type.of_type if isinstance(root_def.type, GraphQLNonNull) else None
    if not isinstance(event_type, GraphQLObjectType):
        return None
    read_event = _object_reader(event_type, root.selection_set.selections)
    if read_event is None:
        return None
    root_key = root.alias.value if root.alias else root.name.value

    def project(event: Any) -> ExecutionResult | None:
        try:
            return ExecutionResult(data={root_key: read_event(event)})
        except Exception as exc:  # a null, a value a scalar refuses: graphql-core says what
            _fell_back("event", exc)
            return None

    return project


def _object_reader(object_type: GraphQLObjectType, nodes: Iterable[object]) -> _Read | None:
    if object_type.is_type_of is not None:  # a type behind an interface: executor's to check
        return None
    fields: list[tuple[str, _Read]] = []
    for node in nodes:
        field = _field_reader(object_type, node)
        if field is None:
            return None
        fields.append(field)
    if len({key for key, _ in fields}) != len(fields):  # graphql-core merges repeated fields
        return None

    def read(obj: Any) -> dict[str, Any]:
        return {key: read_field(obj) for key, read_field in fields}

    return read


def _field_reader(object_type: GraphQLObjectType, node: object) -> tuple[str, _Read] | None:
    if not isinstance(node, FieldNode) or node.directives or node.arguments:
        return None
    key = node.alias.value if node.alias else node.name.value
    if node.name.value == "__typename":
        name = object_type.name
        return (key, lambda _obj: name) if node.selection_set is None else None
    field = object_type.fields.get(node.name.value)
    origin = field.extensions.get(GraphQLCoreConverter.DEFINITION_BACKREF) if field else None
    if field is None or not isinstance(origin, StrawberryField) or origin.extensions:
        return None
    attribute = _plain_attribute(origin)
    if attribute is None:
        return None
    non_null = isinstance(field.type, GraphQLNonNull)
    inner = field.type.of_type if isinstance(field.type, GraphQLNonNull) else field.type
    if isinstance(inner, GraphQLList):
        convert = _list_reader(inner, node)
    else:
        convert = _value_reader(inner, node)
    if convert is None:
        return None
    read_value = convert
    prefetched_only = attribute != origin.python_name

    def read(obj: Any) -> Any:
        value = getattr(obj, attribute)
        if value is None:
            if non_null or prefetched_only:  # a null, or not read yet: the executor's
                raise _ExecutorDecides(attribute)
            return None
        return read_value(value)

    return key, read


def _plain_attribute(origin: StrawberryField) -> str | None:
    """Where a field's value is on the object: its own attribute (no resolver), the attribute
    a resolver field keeps its value in once read (schema/prefetch.py), or None."""
    if origin.is_basic_field and origin.default_resolver is getattr:
        return origin.python_name
    attribute = origin.metadata.get(PREFETCHED) if origin.metadata else None
    return attribute if isinstance(attribute, str) else None


def _value_reader(inner: Any, node: FieldNode) -> _Read | None:
    """A leaf's output coercion, or an object's reader."""
    if is_leaf_type(inner) and node.selection_set is None:
        assert isinstance(inner, GraphQLLeafType)
        return _leaf_coercion(inner)
    if isinstance(inner, GraphQLObjectType) and node.selection_set is not None:
        nested = _object_reader(inner, node.selection_set.selections)
        if nested is None:
            return None
        return lambda obj: _read_object(nested, obj)  # an object marked shared: read once
    return None


def _list_reader(list_type: GraphQLList[Any], node: FieldNode) -> _Read | None:
    """A list of leaves or of objects, item by item, as graphql-core completes it."""
    item_type = list_type.of_type
    item_non_null = isinstance(item_type, GraphQLNonNull)
    item_inner = item_type.of_type if item_non_null else item_type
    if isinstance(item_inner, GraphQLList):
        return None
    read_item = _value_reader(item_inner, node)
    if read_item is None:
        return None

    def read(values: Any) -> list[Any]:
        if not isinstance(values, list | tuple):
            raise _ExecutorDecides("not a list")
        out: list[Any] = []
        for value in values:
            if value is None:
                if item_non_null:
                    raise _ExecutorDecides("null item")
                out.append(None)
            elif isawaitable(value):
                raise _ExecutorDecides("awaitable item")
            else:
                out.append(read_item(value))
        return out

    return read


def _leaf_coercion(leaf: GraphQLLeafType) -> _Read:
    """What graphql-core's complete_leaf_value does: the type's output coercion, which must not
    give null."""
    coerce = leaf.coerce_output_value

    def convert(value: Any) -> Any:
        coerced = coerce(value)
        if coerced is None or coerced is Undefined:
            raise _ExecutorDecides(leaf.name)
        return coerced

    return convert


class ProjectingExecutionContext(StrawberryGraphQLCoreExecutionContext):
    """strawberry's executor, reading plain selections directly (whole subscription events, and
    plain objects anywhere in any operation) and reusing one result per document for events
    marked shared."""

    _shareable: bool = _UNKNOWN
    _projection: Projection | None = None
    passes_pre_encoded = True  # resolvers/order_page.py: PASSES_PRE_ENCODED

    def _plain_fields_allowed(self) -> bool:
        """No field middleware: a projection would skip it."""
        middleware = self.middleware_manager
        return middleware is None or not middleware.middlewares

    def build_per_event_executor(self, payload: Any) -> Any:
        if self._shareable is _UNKNOWN:  # once per subscription; the copies inherit it
            fragments = self.fragment_definitions.values()
            self._shareable = not event_shape_uses_variables(self.operation, fragments)
            if self._plain_fields_allowed():
                self._projection = compile_projection(self.schema, self.operation, fragments)
        return super().build_per_event_executor(payload)

    def execute_operation(self, serially: bool | None = None) -> AwaitableOrValue[Any]:
        results = shared_results(self.root_value) if self._shareable is True else None
        key = _operation_key(self.operation) if results is not None else None
        if results is not None:
            known = results.get(key)
            if known is not None:
                _SHARED.inc()
                return known
        projected = self._projection(self.root_value) if self._projection else None
        if projected is None:
            if self._shareable is not _UNKNOWN:  # a subscription event
                _EXECUTED.inc()
            result = super().execute_operation(serially)
        else:
            _PROJECTED.inc()
            result = projected
        if results is not None and isinstance(result, ExecutionResult) and not result.errors:
            results[key] = result
        return result

    def complete_object_value(  # type: ignore[override]
        self,
        return_type: GraphQLObjectType,
        field_details_list: Any,
        info: Any,
        path: Any,
        result: Any,
        position_context: Any,
    ) -> Any:
        """An object whose selection is plain (a position in a portfolio, say) is read directly:
        graphql-core's per-field machinery cost ~7 us a field, ~360 fields for 50 positions.
        Anything it cannot read (a null where none is allowed, a refused value) is completed the
        ordinary way, which reports it. An object its resolver wrote as JSON already (an
        `orjson.Fragment`: resolvers/order_page.py) is passed through as it is."""
        if isinstance(result, orjson.Fragment):
            PRE_ENCODED.labels(return_type.name).inc()
            return result
        read = self._object_reader_for(return_type, field_details_list)
        if read is not None:
            try:
                return _read_object(read, result)
            except Exception as exc:  # graphql-core says what is wrong, with its path
                _fell_back("object", exc)
        return super().complete_object_value(
            return_type, field_details_list, info, path, result, position_context
        )

    def complete_list_value(  # type: ignore[override]
        self,
        return_type: GraphQLList[Any],
        field_details_list: Any,
        info: Any,
        path: Any,
        result: Any,
        position_context: Any,
    ) -> Any:
        """A list of plain objects (a portfolio's positions) is read item by item directly,
        without graphql-core's completion of each item. A null item where none is allowed, an
        awaitable item or anything the reader refuses is completed the ordinary way."""
        item_type = return_type.of_type
        non_null = isinstance(item_type, GraphQLNonNull)
        inner = item_type.of_type if non_null else item_type
        if isinstance(inner, GraphQLObjectType) and isinstance(result, list | tuple):
            read = self._object_reader_for(inner, field_details_list)
            if read is not None and not field_details_list[0].node.directives:
                try:
                    return [_read_item(read, item, non_null) for item in result]
                except Exception as exc:  # graphql-core says what is wrong, with its path
                    _fell_back("list", exc)
        return super().complete_list_value(
            return_type, field_details_list, info, path, result, position_context
        )

    def _object_reader_for(self, object_type: GraphQLObjectType, details: Any) -> _Read | None:
        if len(details) != 1:  # the same field selected twice: merged selections, left alone
            return None
        field = details[0]
        if field.defer_usage is not None or field.fragment_variable_values is not None:
            return None
        node = field.node
        if node.selection_set is None or not self._plain_fields_allowed():
            return None
        # By node and type: under a union one node completes objects of several types. Nodes
        # of a cached document are the same objects from one request to the next, so a reader
        # is compiled once per document, not per operation.
        key = (id(node), id(object_type))
        known = _READERS.get(key)
        if known is not None and known[0] is node and known[1] is object_type:
            return known[2]
        read = _object_reader(object_type, node.selection_set.selections)
        _READERS[key] = (node, object_type, read)
        return read


# Compiled readers of plain objects, by (field node, object type); each entry holds its node and
# type, so their ids cannot be reused by other objects while it lives.
_READERS: LRUCache[tuple[int, int], tuple[FieldNode, GraphQLObjectType, _Read | None]] = LRUCache(
    maxsize=4096
)


def _read_item(read: _Read, item: Any, non_null: bool) -> Any:
    if item is None:
        if non_null:
            raise _ExecutorDecides("null item")
        return None
    if isawaitable(item):
        raise _ExecutorDecides("awaitable item")
    return _read_object(read, item)


def _read_object(read: _Read, obj: Any) -> Any:
    """`read(obj)`; for an object marked shared (`resolvers/shared_events.py`), made once per
    selection and reused (a position valued at one quote, read by every request until the quote
    moves)."""
    readings = shared_results(obj)
    if readings is None:
        return read(obj)
    made = readings.get(read)
    if made is None:
        made = readings[read] = read(obj)
    return made


def _operation_key(operation: OperationDefinitionNode) -> object:
    """The document's text and where the operation starts in it; the node itself if unlocated."""
    loc = operation.loc
    if loc is None:
        return operation  # nodes hash and compare by content
    return (loc.source.body, loc.start)
