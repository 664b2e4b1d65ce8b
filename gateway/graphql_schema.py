"""The strawberry Schema with its guards and caches, as every API process serves it."""

from __future__ import annotations

from typing import Any

import strawberry
from graphql import GraphQLError
from strawberry.extensions import (
    AddValidationRules,
    MaxAliasesLimiter,
    MaxTokensLimiter,
    ParserCache,
    QueryDepthLimiter,
    ValidationCache,
)
from strawberry.schema.config import StrawberryConfig
from strawberry.types import ExecutionContext

from gateway.errors import MaskInternalErrors, log_errors
from gateway.metrics import MetricsExtension
from resolvers.loaders import LoadersExtension
from schema.root import Mutation, Query, Subscription
from schema.scalars import SCALAR_OVERRIDES

DOCUMENT_CACHE_SIZE = 4096
MAX_DEPTH = 12
MAX_ALIASES = 30
MAX_TOKENS = 2000


class TradeQLSchema(strawberry.Schema):
    def process_errors(
        self, errors: list[GraphQLError], execution_context: ExecutionContext | None = None
    ) -> None:
        log_errors(errors, execution_context)


# The depth and alias limiters build their rule classes when constructed: built once here, so
# every request validates with the same rules and the ValidationCache can hit (built per
# request, every request missed it and paid for validation again).
LIMIT_RULES = [
    *QueryDepthLimiter(max_depth=MAX_DEPTH).validation_rules,
    *MaxAliasesLimiter(max_alias_count=MAX_ALIASES).validation_rules,
]


def build_schema() -> strawberry.Schema:
    extensions: list[Any] = [
        MetricsExtension,
        LoadersExtension,
        # strawberry keeps one LRU per maxsize, shared by every request's extension instance.
        lambda: ParserCache(maxsize=DOCUMENT_CACHE_SIZE),
        lambda: ValidationCache(maxsize=DOCUMENT_CACHE_SIZE),
        lambda: AddValidationRules(LIMIT_RULES),
        lambda: MaxTokensLimiter(max_token_count=MAX_TOKENS),
        MaskInternalErrors,
    ]
    return TradeQLSchema(
        query=Query,
        mutation=Mutation,
        subscription=Subscription,
        extensions=extensions,
        scalar_overrides=SCALAR_OVERRIDES,
        config=StrawberryConfig(auto_camel_case=True),
    )
