"""The strawberry Schema with its guards and caches, as every API process serves it."""

from __future__ import annotations

from typing import Any

import strawberry
from graphql import GraphQLError
from strawberry.schema.config import StrawberryConfig
from strawberry.types import ExecutionContext

from gateway.errors import MaskInternalErrors, log_errors
from gateway.event_execution import ProjectingExecutionContext
from gateway.guards import code_parse_limit_errors, query_limit_rules
from gateway.operation_extension import Documents, OperationExtension
from schema.root import Mutation, Query, Subscription
from schema.scalars import SCALAR_OVERRIDES
from services.infra.settings import Settings, get_settings


class TradeQLSchema(strawberry.Schema):
    def process_errors(
        self, errors: list[GraphQLError], execution_context: ExecutionContext | None = None
    ) -> None:
        code_parse_limit_errors(errors)
        log_errors(errors, execution_context)


def build_schema(settings: Settings | None = None) -> strawberry.Schema:
    settings = settings or get_settings()
    # Rule classes made once, here: the document cache keeps each document's validation errors
    # with the rules they were found with.
    rules = query_limit_rules(
        max_depth=settings.max_query_depth,
        max_aliases=settings.max_aliases,
        introspection=settings.introspection,
    )
    documents = Documents(max_tokens=settings.max_tokens)
    extensions: list[Any] = [
        lambda: OperationExtension(documents, rules),
        MaskInternalErrors,
    ]
    return TradeQLSchema(
        query=Query,
        mutation=Mutation,
        subscription=Subscription,
        extensions=extensions,
        scalar_overrides=SCALAR_OVERRIDES,
        # graphql-core's own executor when the projection is switched off (a strawberry or
        # graphql-core upgrade it was not checked against, or to rule it out)
        execution_context_class=ProjectingExecutionContext if settings.projection else None,
        config=StrawberryConfig(auto_camel_case=True),
    )
