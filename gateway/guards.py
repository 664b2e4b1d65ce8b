"""Guards in front of the GraphQL endpoint: request size, rate limits and document limits.

Two pure ASGI middlewares, both answering with a GraphQL-shaped JSON error and a code:
- `BodySizeLimitMiddleware`: 413 PAYLOAD_TOO_LARGE for a body over the limit, judged by its
  Content-Length or, when chunked, by counting (never reading more than the limit plus a chunk);
  414 URI_TOO_LONG for a query string over it; a WebSocket message over it closes the socket 1009.
- `RateLimitMiddleware`: 429 RATE_LIMITED with Retry-After, per session, partner key and client
  address (`gateway.ratelimit`), for HTTP requests to /graphql, WebSocket connection attempts
  (closed 4429) and operations sent over a WebSocket (answered with an error message).
  Redis trouble lets requests through: a limiter outage must not become an API outage.

And the document limits' validation rules, built once per schema, whose errors carry a code.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from graphql import ASTValidationRule, GraphQLError, GraphQLSyntaxError, ValidationContext
from graphql.language import (
    FieldNode,
    FragmentSpreadNode,
    InlineFragmentNode,
    OperationDefinitionNode,
    SelectionSetNode,
)
from graphql.validation import NoSchemaIntrospectionCustomRule
from prometheus_client import Counter
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from strawberry.extensions.max_aliases import create_validator as alias_validator
from strawberry.extensions.query_depth_limiter import create_validator as depth_validator

from gateway.client_address import parse_networks, request_client_address
from gateway.metrics import REGISTRY
from gateway.ratelimit import ALLOWED, Bucket, Decision, Limit, RateLimiter
from gateway.view import SESSION_LOOKUP_STATE, bearer_token
from services.accounts.sessions import hash_token
from services.infra.redis import RedisClient
from services.infra.settings import Settings

log = logging.getLogger("tradeql.guards")

GRAPHQL_PATHS = frozenset({"/graphql"})
LIMITER_TIMEOUT_SECONDS = 0.5
FAILURE_LOG_INTERVAL_SECONDS = 10.0
WS_PROTOCOLS = ("graphql-transport-ws", "graphql-ws")
WS_RATE_LIMITED = 4429
WS_MESSAGE_TOO_BIG = 1009

REFUSED = Counter(
    "tradeql_rate_limited_total",
    "Requests and WebSocket operations refused by a rate limit",
    ["limit"],
    registry=REGISTRY,
)
LIMITER_FAILURES = Counter(
    "tradeql_rate_limiter_failures_total",
    "Rate limit checks that failed (Redis down or slow) and let the request through",
    registry=REGISTRY,
)


def error_json(message: str, code: str, **extensions: Any) -> bytes:
    error = {"message": message, "extensions": {"code": code, **extensions}}
    return json.dumps({"errors": [error]}).encode()


async def send_json(
    send: Send, status: int, body: bytes, headers: Iterable[tuple[str, str]] = ()
) -> None:
    raw_headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *((name.encode(), value.encode()) for name, value in headers),
    ]
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": body})


# ---------------------------------------------------------------------------------------------
# Request size


class BodySizeLimitMiddleware:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            await self.app(scope, self._limit_messages(receive, send), send)
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if len(scope.get("query_string", b"")) > self.max_bytes:
            body = error_json(
                f"the query string is longer than {self.max_bytes} bytes: send the document "
                "in a POST body",
                "URI_TOO_LONG",
                maxBytes=self.max_bytes,
            )
            await send_json(send, 414, body)
            return
        length = Headers(scope=scope).get("content-length")
        if length is not None:
            if length.isdigit() and int(length) > self.max_bytes:
                await self._too_large(send)
                return
            await self.app(scope, receive, send)  # the server holds the body to its length
            return
        await self._chunked(scope, receive, send)

    async def _chunked(self, scope: Scope, receive: Receive, send: Send) -> None:
        """No Content-Length: read up to the limit, then hand the body on, or refuse."""
        messages: list[Message] = []
        size = 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break  # a disconnect: the app will see it
            size += len(message.get("body", b""))
            if size > self.max_bytes:
                await self._too_large(send)
                return
            if not message.get("more_body", False):
                break

        async def replay() -> Message:
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, send: Send) -> None:
        body = error_json(
            f"the request body is larger than {self.max_bytes} bytes",
            "PAYLOAD_TOO_LARGE",
            maxBytes=self.max_bytes,
        )
        # No `Connection: close`: uvicorn then discards the rest of the body as it arrives (never
        # storing it) and the client reads the 413; closing at once would reset the connection
        # under a client still sending, which then sees a broken pipe instead of the answer.
        await send_json(send, 413, body)

    def _limit_messages(self, receive: Receive, send: Send) -> Receive:
        async def limited() -> Message:
            message = await receive()
            if message["type"] == "websocket.receive":
                if _larger_than(message, self.max_bytes):
                    reason = f"message larger than {self.max_bytes} bytes"
                    await send(
                        {"type": "websocket.close", "code": WS_MESSAGE_TOO_BIG, "reason": reason}
                    )
                    return {"type": "websocket.disconnect", "code": WS_MESSAGE_TOO_BIG}
            return message

        return limited


def _larger_than(message: Message, limit: int) -> bool:
    """A WebSocket message over `limit` bytes? (Text is encoded only when that could decide.)"""
    text = message.get("text")
    if text is None:
        return len(message.get("bytes") or b"") > limit
    if len(text) > limit or len(text) * 4 <= limit:  # UTF-8: 1 to 4 bytes a character
        return len(text) > limit
    return len(text.encode()) > limit


# ---------------------------------------------------------------------------------------------
# Rate limits


def _sha256(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


class RateLimitMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        settings: Settings,
        *,
        redis: RedisClient | None = None,
        paths: frozenset[str] = GRAPHQL_PATHS,
    ) -> None:
        self.app = app
        self.enabled = settings.rate_limit_enabled
        self.paths = paths
        self.session = Limit(
            "session", settings.rate_limit_session_per_second, settings.rate_limit_session_burst
        )
        self.partner = Limit(
            "partner", settings.rate_limit_partner_per_second, settings.rate_limit_partner_burst
        )
        self.ip = Limit("ip", settings.rate_limit_ip_per_second, settings.rate_limit_ip_burst)
        self.trusted = parse_networks(settings.trusted_proxies)
        self._limiter = RateLimiter(redis) if redis is not None else None
        self._last_failure_log = 0.0
        self._failures_since_log = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            not self.enabled
            or scope["type"] not in ("http", "websocket")
            or scope["path"] not in self.paths
        ):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        ip = Bucket(self.ip, request_client_address(scope, self.trusted))
        token = bearer_token(headers.get("authorization"))
        token_hash = hash_token(token) if token else None  # the bucket's and the session's key
        buckets = [ip, *self._credential_buckets(token_hash, headers.get("x-api-key"))]
        # An HTTP request's session is looked up in the same round trip (the view takes it from
        # the request's state); a WebSocket signs in later, in its connection_init.
        session_token = token if scope["type"] == "http" else None
        decision = await self._check(scope, buckets, session_token, token_hash)
        if scope["type"] == "http":
            if decision.allowed:
                await self.app(scope, receive, send)
            else:
                await self._refuse_http(send, decision)
        elif decision.allowed:
            await self.app(scope, self._limit_operations(scope, receive, send, buckets), send)
        else:
            await self._refuse_websocket(scope, receive, send, decision)

    def _credential_buckets(self, token_hash: str | None, api_key: str | None) -> list[Bucket]:
        buckets = []
        if token_hash:
            buckets.append(Bucket(self.session, token_hash))
        if api_key:
            buckets.append(Bucket(self.partner, _sha256(api_key)))
        return buckets

    async def _check(
        self,
        scope: Scope,
        buckets: Sequence[Bucket],
        session_token: str | None = None,
        token_hash: str | None = None,
    ) -> Decision:
        try:
            limiter = self._limiter or self._limiter_of(scope)
            async with asyncio.timeout(LIMITER_TIMEOUT_SECONDS):
                if session_token is None:
                    decision = await limiter.hit(buckets)
                else:
                    decision, lookup = await limiter.hit_and_look_up(
                        buckets, session_token, token_hash=token_hash
                    )
                    if lookup is not None:
                        scope.setdefault("state", {})[SESSION_LOOKUP_STATE] = lookup
        except Exception as exc:  # any failure of the limiter: let the request through
            self._failed(exc)
            return ALLOWED
        if decision.refused_by is not None:
            REFUSED.labels(decision.refused_by.name).inc()
        return decision

    def _limiter_of(self, scope: Scope) -> RateLimiter:
        self._limiter = RateLimiter(scope["app"].state.services.redis)
        return self._limiter

    def _failed(self, exc: Exception) -> None:
        LIMITER_FAILURES.inc()
        self._failures_since_log += 1
        now = time.monotonic()
        if now - self._last_failure_log >= FAILURE_LOG_INTERVAL_SECONDS:
            log.warning(
                "rate limiter unavailable, letting requests through (%d since last report): %s",
                self._failures_since_log,
                repr(exc),
            )
            self._last_failure_log, self._failures_since_log = now, 0

    @staticmethod
    def _message(decision: Decision) -> str:
        name = decision.refused_by.name if decision.refused_by else "request"
        return f"too many requests for this {name}: retry after {decision.retry_after_header} s"

    def _error(self, decision: Decision) -> dict[str, Any]:
        return {
            "message": self._message(decision),
            "extensions": {
                "code": "RATE_LIMITED",
                "retryAfter": int(decision.retry_after_header),
                "limit": decision.refused_by.name if decision.refused_by else None,
            },
        }

    async def _refuse_http(self, send: Send, decision: Decision) -> None:
        body = json.dumps({"errors": [self._error(decision)]}).encode()
        await send_json(send, 429, body, [("retry-after", decision.retry_after_header)])

    async def _refuse_websocket(
        self, scope: Scope, receive: Receive, send: Send, decision: Decision
    ) -> None:
        """Accept, then close 4429: a refused handshake reaches a browser as a bare 1006."""
        message = await receive()
        if message["type"] != "websocket.connect":
            return
        offered = scope.get("subprotocols") or []
        subprotocol = next((p for p in offered if p in WS_PROTOCOLS), None)
        await send({"type": "websocket.accept", "subprotocol": subprotocol})
        reason = f"rate limited: retry after {decision.retry_after_header} s"
        await send({"type": "websocket.close", "code": WS_RATE_LIMITED, "reason": reason})

    def _limit_operations(
        self, scope: Scope, receive: Receive, send: Send, buckets: list[Bucket]
    ) -> Receive:
        """Every operation sent over the socket counts like an HTTP request; a refused one is
        answered with an error message for its id and never reaches the GraphQL handler. The
        session is the one `connection_init` names, as for the GraphQL handler itself."""
        buckets = list(buckets)

        async def limited() -> Message:
            nonlocal buckets
            while True:
                message = await receive()
                frame = _frame(message)
                kind = frame.get("type") if frame else None
                if kind == "connection_init":
                    payload = frame.get("payload") if frame else None
                    if isinstance(payload, Mapping):
                        token = bearer_token(
                            payload.get("Authorization", payload.get("authorization"))
                        )
                        buckets = [b for b in buckets if b.limit is not self.session]
                        buckets += self._credential_buckets(
                            hash_token(token) if token else None, None
                        )
                if kind not in ("subscribe", "start"):
                    return message
                decision = await self._check(scope, buckets)
                if decision.allowed:
                    return message
                assert frame is not None
                error = self._error(decision)
                payload = [error] if kind == "subscribe" else error
                reply = {"type": "error", "id": frame.get("id"), "payload": payload}
                await send({"type": "websocket.send", "text": json.dumps(reply)})

        return limited


def _frame(message: Message) -> dict[str, Any] | None:
    """A WebSocket text message's JSON object, or None."""
    text = message.get("text") if message["type"] == "websocket.receive" else None
    if not text:
        return None
    try:
        frame = json.loads(text)
    except ValueError:
        return None
    return frame if isinstance(frame, dict) else None


# ---------------------------------------------------------------------------------------------
# Document limits


class _CodedContext:
    """A ValidationContext whose reported errors carry extensions (a code, the limit)."""

    def __init__(self, context: ValidationContext, extensions: Mapping[str, Any]) -> None:
        self._context = context
        self._extensions = dict(extensions)

    def report_error(self, error: GraphQLError) -> None:
        error.extensions = {**self._extensions, **(error.extensions or {})}
        self._context.report_error(error)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


def _coded(rule: type[ASTValidationRule], extensions: Mapping[str, Any]) -> type[ASTValidationRule]:
    def __init__(self: ASTValidationRule, context: ValidationContext) -> None:
        rule.__init__(self, _CodedContext(context, extensions))  # type: ignore[arg-type]

    return type(f"Coded{rule.__name__}", (rule,), {"__init__": __init__})


SIGN_IN_FIELDS = frozenset({"login", "register"})


class OneSignInPerOperation(ASTValidationRule):
    """At most one `login` or `register` in an operation: aliases would otherwise make one
    request many password guesses (or many argon2 hashes) past the per-request limits."""

    def enter_operation_definition(self, node: OperationDefinitionNode, *_args: Any) -> None:
        found = self._sign_ins(node.selection_set, set())
        if found > 1:
            self.report_error(
                GraphQLError(
                    "one login or register per operation: send each in its own request",
                    node,
                    extensions={"code": "BAD_REQUEST"},
                )
            )

    def _sign_ins(self, selection_set: SelectionSetNode | None, seen: set[str]) -> int:
        if selection_set is None:
            return 0
        count = 0
        for selection in selection_set.selections:
            if isinstance(selection, FieldNode):
                count += selection.name.value in SIGN_IN_FIELDS
            elif isinstance(selection, InlineFragmentNode):
                count += self._sign_ins(selection.selection_set, seen)
            elif isinstance(selection, FragmentSpreadNode) and selection.name.value not in seen:
                seen.add(selection.name.value)
                fragment = self.context.get_fragment(selection.name.value)
                count += self._sign_ins(fragment.selection_set if fragment else None, seen)
        return count


def query_limit_rules(
    *, max_depth: int, max_aliases: int, introspection: bool
) -> tuple[type[ASTValidationRule], ...]:
    """Validation rules for depth, aliases and (unless allowed) introspection. Build them once per
    schema: the document cache keeps validation errors per rule tuple, so classes made per
    request would never hit it."""
    rules: list[type[ASTValidationRule]] = [
        OneSignInPerOperation,
        _coded(depth_validator(max_depth, None), {"code": "QUERY_TOO_DEEP", "maxDepth": max_depth}),
        _coded(
            alias_validator(max_aliases), {"code": "TOO_MANY_ALIASES", "maxAliases": max_aliases}
        ),
    ]
    if not introspection:
        rules.append(_coded(NoSchemaIntrospectionCustomRule, {"code": "INTROSPECTION_DISABLED"}))
    return tuple(rules)


_TOO_MANY_TOKENS = re.compile(r"Document contains more than (\d+) tokens")


def code_parse_limit_errors(errors: Iterable[GraphQLError]) -> None:
    """The token limit is a parser option (strawberry's MaxTokensLimiter), so its error is a plain
    syntax error: give it its code. Call from `Schema.process_errors`, which sees every error of
    HTTP and WebSocket operations alike before it is sent."""
    for error in errors:
        if isinstance(error, GraphQLSyntaxError) and not (error.extensions or {}).get("code"):
            found = _TOO_MANY_TOKENS.search(error.message)
            if found:
                error.extensions = {"code": "TOO_MANY_TOKENS", "maxTokens": int(found.group(1))}
