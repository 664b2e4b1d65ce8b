"""Subscription events executed once per document, not once per subscriber.

graphql-core executes every subscription event for every subscriber: for live quotes that was
~250-380 us of CPU per delivered quote, almost all of it completing the same fields of the same
object again. A resolver that yields a *shared* event (the same object to every subscriber, one
whose fields do not depend on who asks, such as a public quote) marks it with `shared_event`; the
executor below then executes each document once per event and hands every other subscriber with
that document the same result.

Such an event is also completed without graphql-core's machinery when the document only selects
plain leaf fields of it (no fragments, directives or arguments below the root field, and fields
that are attributes of the object): a projection compiled once per subscription reads and
serializes them directly, the same values the executor would give. Anything else (or a null
where the schema allows none) goes the ordinary way, errors included.

A result is reused only when it cannot differ: the same operation of the same document text, no
variable used below the root field's own arguments (those only select the source stream, not
what an event looks like), and no errors.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from graphql import (
    ExecutionResult,
    GraphQLLeafType,
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
from graphql.pyutils import AwaitableOrValue
from strawberry.schema.schema import StrawberryGraphQLCoreExecutionContext
from strawberry.schema.schema_converter import GraphQLCoreConverter
from strawberry.types.field import StrawberryField

T = TypeVar("T")

_RESULTS = "_tradeql_shared_results"
_UNKNOWN: Any = object()


def shared_event(event: T) -> T:
    """Mark `event` as the same for every subscriber, so each document executes on it once."""
    object.__setattr__(event, _RESULTS, {})
    return event


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
_LeafReader = tuple[str, str, Callable[[Any], Any], bool]  # key, attribute, serialize, non-null


def compile_projection(
    schema: GraphQLSchema, operation: OperationDefinitionNode, fragments: Iterable[object]
) -> Projection | None:
    """A direct reader for `subscription { root { leaf leaf ... } }`, or None if it is not one."""
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
    readers = [_leaf_reader(event_type, node) for node in root.selection_set.selections]
    if any(r is None for r in readers):
        return None
    leaves: list[_LeafReader] = [r for r in readers if r is not None]
    root_key = root.alias.value if root.alias else root.name.value

    def project(event: Any) -> ExecutionResult | None:
        data: dict[str, Any] = {}
        for key, attribute, serialize, non_null in leaves:
            value = getattr(event, attribute)
            if value is None:
                if non_null:
                    return None  # the executor reports this error
                data[key] = None
            else:
                data[key] = serialize(value)
        return ExecutionResult(data={root_key: data})

    return project


def _leaf_reader(object_type: GraphQLObjectType, node: object) -> _LeafReader | None:
    if not isinstance(node, FieldNode) or node.directives or node.arguments or node.selection_set:
        return None
    key = node.alias.value if node.alias else node.name.value
    if node.name.value == "__typename":
        name = object_type.name
        return key, "__class__", lambda _cls: name, True
    field = object_type.fields.get(node.name.value)
    if field is None:
        return None
    origin = field.extensions.get(GraphQLCoreConverter.DEFINITION_BACKREF)
    if not isinstance(origin, StrawberryField) or not origin.is_basic_field or origin.extensions:
        return None
    non_null = isinstance(field.type, GraphQLNonNull)
    leaf = field.type.of_type if isinstance(field.type, GraphQLNonNull) else field.type
    if not is_leaf_type(leaf) or origin.default_resolver is not getattr:
        return None
    assert isinstance(leaf, GraphQLLeafType)
    return key, origin.python_name, leaf.serialize, non_null


class SharedEventExecutionContext(StrawberryGraphQLCoreExecutionContext):
    """strawberry's executor, reusing one result per document for events marked shared."""

    _shareable: bool = _UNKNOWN
    _projection: Projection | None = None

    def build_per_event_executor(self, payload: Any) -> Any:
        if self._shareable is _UNKNOWN:  # once per subscription; the copies inherit it
            fragments = self.fragment_definitions.values()
            self._shareable = not event_shape_uses_variables(self.operation, fragments)
            self._projection = compile_projection(self.schema, self.operation, fragments)
        return super().build_per_event_executor(payload)

    def execute_operation(self, serially: bool | None = None) -> AwaitableOrValue[Any]:
        results: dict[object, ExecutionResult] | None = getattr(self.root_value, _RESULTS, None)
        if results is None or self._shareable is not True:
            return super().execute_operation(serially)
        key = _operation_key(self.operation)
        known = results.get(key)
        if known is not None:
            return known
        projected = self._projection(self.root_value) if self._projection else None
        result = super().execute_operation(serially) if projected is None else projected
        if isinstance(result, ExecutionResult) and not result.errors:
            results[key] = result
        return result


def _operation_key(operation: OperationDefinitionNode) -> object:
    """The document's text and where the operation starts in it; the node itself if unlocated."""
    loc = operation.loc
    if loc is None:
        return operation  # nodes hash and compare by content
    return (loc.source.body, loc.start)
