"""The strawberry Schema with its guards and caches, as every API process serves it."""

from __future__ import annotations

from typing import Any

import strawberry
from graphql import GraphQLError
from strawberry.extensions import (
    AddValidationRules,
    MaxTokensLimiter,
    ParserCache,
    ValidationCache,
)
from strawberry.schema.config import StrawberryConfig
from strawberry.types import ExecutionContext

from gateway.errors import MaskInternalErrors, log_errors
from gateway.event_execution import ProjectingExecutionContext
from gateway.guards import code_parse_limit_errors, query_limit_rules
from gateway.metrics import MetricsExtension
from resolvers.loaders import LoadersExtension
from schema.root import Mutation, Query, Subscription
from schema.scalars import SCALAR_OVERRIDES
from services.infra.settings import Settings, get_settings

DOCUMENT_CACHE_SIZE = 4096


class TradeQLSchema(strawberry.Schema):
    def process_errors(
        self, errors: list[GraphQLError], execution_context: ExecutionContext | None = None
    ) -> None:
        code_parse_limit_errors(errors)
        log_errors(errors, execution_context)


def build_schema(settings: Settings | None = None) -> strawberry.Schema:
    settings = settings or get_settings()
    # Rule classes made once, here: ValidationCache keys on them, so classes made per request
    # (as QueryDepthLimiter and MaxAliasesLimiter do when constructed) would never hit it.
    rules = query_limit_rules(
        max_depth=settings.max_query_depth,
        max_aliases=settings.max_aliases,
        introspection=settings.introspection,
    )
    max_tokens = settings.max_tokens
    extensions: list[Any] = [
        MetricsExtension,
        LoadersExtension,
        # strawberry keeps one LRU per maxsize, shared by every request's extension instance.
        lambda: ParserCache(maxsize=DOCUMENT_CACHE_SIZE),
        lambda: ValidationCache(maxsize=DOCUMENT_CACHE_SIZE),
        lambda: AddValidationRules(list(rules)),
        lambda: MaxTokensLimiter(max_token_count=max_tokens),
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
