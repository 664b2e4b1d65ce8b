"""What every operation needs around it, as one strawberry extension.

strawberry makes each extension per request and, for every hook (operation, parse, validate,
execute), walks every extension for it: with seven (metrics, DataLoaders, strawberry's parser
and validation caches, validation rules, the token limit, error masking) that walk was a tenth
of a cached query's CPU. This one does the first six; error masking stays strawberry's own
(`gateway.errors.MaskInternalErrors`), since it also masks streamed results.

The document cache keys on the query text and keeps the document with its validation errors,
so a document seen before is neither parsed nor validated again: one lookup for both."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from cachetools import LRUCache
from graphql import ASTValidationRule, DocumentNode, GraphQLError, parse
from strawberry.extensions import SchemaExtension
from strawberry.schema.schema import validate_document

from gateway.metrics import record_operation
from resolvers.loaders import operation_loaders
from services.infra.compat import graphql_core_schema

DOCUMENT_CACHE_SIZE = 4096


@dataclass
class _Checked:
    document: DocumentNode
    rules: tuple[type[ASTValidationRule], ...] | None = None
    errors: list[GraphQLError] | None = None


class Documents:
    """Parsed (within the token limit) and validated documents, by query text, for a schema."""

    def __init__(self, *, max_tokens: int, maxsize: int = DOCUMENT_CACHE_SIZE) -> None:
        self.max_tokens = max_tokens
        self._cache: LRUCache[str, _Checked] = LRUCache(maxsize=maxsize)

    def parse(self, query: str) -> DocumentNode:
        found = self._cache.get(query)
        if found is None:  # a syntax error raises, and is not kept
            found = self._cache[query] = _Checked(parse(query, max_tokens=self.max_tokens))
        return found.document

    def validate(
        self, schema: Any, query: str, document: DocumentNode, rules: tuple[Any, ...]
    ) -> list[GraphQLError]:
        found = self._cache.get(query)
        if found is None or found.document is not document:
            return validate_document(schema, document, rules)  # not a document of the cache
        if found.errors is None or found.rules != rules:
            found.errors, found.rules = validate_document(schema, document, rules), rules
        return found.errors


class OperationExtension(SchemaExtension):
    """Per operation: the limits' validation rules, the cached document, this operation's
    DataLoaders, and its metrics (count, duration, errors by code)."""

    def __init__(self, documents: Documents, rules: tuple[type[ASTValidationRule], ...]) -> None:
        self._documents = documents
        self._rules = rules

    def on_operation(self) -> Iterator[None]:
        context = self.execution_context
        started = time.perf_counter()
        context.parse_options["max_tokens"] = self._documents.max_tokens  # any parse elsewhere
        context.validation_rules = context.validation_rules + self._rules
        with operation_loaders(context.context):
            yield
        record_operation(context, time.perf_counter() - started)

    def on_parse(self) -> Iterator[None]:
        context = self.execution_context
        if context.query:  # none: strawberry answers that itself
            context.graphql_document = self._documents.parse(context.query)
        yield

    def on_validate(self) -> Iterator[None]:
        context = self.execution_context
        if context.query and context.graphql_document is not None:
            context.pre_execution_errors = self._documents.validate(
                graphql_core_schema(context.schema),
                context.query,
                context.graphql_document,
                context.validation_rules,
            )
        yield
