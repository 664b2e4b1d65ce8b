"""The GraphQL endpoint: strawberry's ASGI view, with our context, auth and JSON errors."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import aclosing
from datetime import timedelta
from typing import Any, cast

import orjson
from cross_web import AsyncHTTPRequestAdapter, HTTPException
from graphql import GraphQLError, GraphQLSyntaxError, OperationType, get_operation_ast, parse
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket
from strawberry.asgi import GraphQL
from strawberry.exceptions import ConnectionRejectionError
from strawberry.http import GraphQLHTTPResponse, GraphQLRequestData
from strawberry.http.base import BaseRequestProtocol
from strawberry.http.streaming import MultipartSubscriptionTransport, SSETransport
from strawberry.http.types import HTTPMethod
from strawberry.schema import BaseSchema
from strawberry.subscriptions import (
    GRAPHQL_SSE_PROTOCOL,
    GRAPHQL_TRANSPORT_WS_PROTOCOL,
    GRAPHQL_WS_PROTOCOL,
    MULTIPART_SUBSCRIPTION_PROTOCOL,
)
from strawberry.types import ExecutionResult, SubscriptionExecutionResult
from strawberry.types.graphql import OperationType as StrawberryOperationType
from strawberry.types.unset import UnsetType

from gateway.client_address import parse_networks, request_client_address
from gateway.connections import CONNECTIONS
from gateway.http_streams import LiveStream
from gateway.legacy_ws import GraphQLWSHandler, operation_type
from gateway.metrics import WEBSOCKETS_OPEN
from gateway.persisted import (
    DocumentResolver,
    PersistedQueryError,
    names_a_persisted_document,
    resolve_http,
)
from gateway.web import graphiql_page
from gateway.ws_persisted import PersistedGraphQLTransportWSHandler
from resolvers.context import Context, Unauthenticated
from services.infra.container import Services
from services.infra.request_context import current_request_id
from services.infra.settings import Settings

# Where the rate limiter leaves the session it looked up for an HTTP request (a CachedLookup).
SESSION_LOOKUP_STATE = "tradeql.session_lookup"
# Set on a request whose answer is a GraphQL request error (the document was refused).
REQUEST_ERROR_STATE = "graphql_request_error"
# Where the view keeps the context of a request answered with a stream (SSE, multipart).
STREAM_CONTEXT_STATE = "tradeql.stream_context"
PLAIN_SUBSCRIPTION_REFUSAL = (
    "a subscription is not served as a plain JSON request: use Server-Sent Events (POST or GET "
    "with Accept: text/event-stream), multipart (Accept: multipart/mixed;subscriptionSpec=1.0) "
    "or a WebSocket (graphql-transport-ws or graphql-ws) at /graphql"
)


def bearer_token(value: object) -> str | None:
    """The token of an `Authorization: Bearer <token>` value, or None."""
    if not isinstance(value, str):
        return None
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def websocket_token(params: Mapping[str, Any], handshake: str | None) -> tuple[bool, str | None]:
    """(whether the client offered credentials, the session token if well formed) from the
    forms client libraries send: `connection_init` payload `{"Authorization": "Bearer t"}`,
    `{"headers": {"Authorization": "Bearer t"}}` or `{"authToken": t}` / `{"token": t}` (the
    bare token, or `Bearer t`), else the handshake's own `Authorization` header."""
    headers = params.get("headers")
    candidates: list[object] = [params.get("Authorization"), params.get("authorization")]
    if isinstance(headers, Mapping):
        candidates += [headers.get("Authorization"), headers.get("authorization")]
    for value in candidates:
        if value is not None:
            return True, bearer_token(value)
    for name in ("authToken", "token"):
        value = params.get(name)
        if value is not None:
            if not isinstance(value, str) or not value.strip():
                return True, None
            return True, bearer_token(value) or value.strip()
    if handshake is not None:
        return True, bearer_token(handshake)
    return False, None


BAD_TOKEN = "invalid or expired session token"


async def _only(result: ExecutionResult) -> AsyncIterator[ExecutionResult]:
    yield result


def error_body(message: str, code: str) -> dict[str, Any]:
    return {"errors": [{"message": message, "extensions": {"code": code}}]}


GRAPHQL_RESPONSE_JSON = "application/graphql-response+json; charset=utf-8"


def wants_graphql_response_json(accept: str | None) -> bool:
    """Whether a client's Accept prefers `application/graphql-response+json` (Apollo Client 4
    and the GraphQL-over-HTTP spec's clients) to `application/json`: by q-value, then order."""
    if not accept:
        return False
    best: tuple[float, int] | None = None
    json_rank: tuple[float, int] | None = None
    for position, part in enumerate(accept.split(",")):
        media, *params = (p.strip() for p in part.split(";"))
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        rank = (q, -position)
        if media.lower() == "application/graphql-response+json" and q > 0:
            best = rank
        elif media.lower() in ("application/json", "*/*", "application/*") and q > 0:
            json_rank = max(json_rank, rank) if json_rank else rank
    return best is not None and (json_rank is None or best > json_rank)


def _operation_type(data: GraphQLRequestData, max_tokens: int) -> OperationType | None:
    """The type of the operation a stream would run (None: it does not parse or name one;
    the stream itself then says why)."""
    if not data.query:
        return None
    try:
        operation = get_operation_ast(parse(data.query, max_tokens=max_tokens), data.operation_name)
    except GraphQLError:
        return None
    return operation.operation if operation is not None else None


def is_subscription(query: str | None, operation_name: str | None) -> bool:
    """Whether the operation a request runs is a subscription. Only a document that says
    `subscription` is parsed for it (strawberry parses it again, from its cache)."""
    if not query or "subscription" not in query:
        return False
    return operation_type(query, operation_name) is OperationType.SUBSCRIPTION


def throttled_for(response: object) -> int | None:
    """The seconds to wait when an attempt was throttled (a RATE_LIMITED error with
    `retryAfter` from a resolver, such as a sign-in), else None."""
    if not isinstance(response, Mapping):
        return None
    waits = [
        int(e["extensions"]["retryAfter"])
        for e in response.get("errors") or []
        if isinstance(e, Mapping)
        and (e.get("extensions") or {}).get("code") == "RATE_LIMITED"
        and "retryAfter" in (e.get("extensions") or {})
    ]
    return max(waits) if waits else None


def is_request_error(response: Mapping[str, Any]) -> bool:
    """No data and only errors without a path: the document itself was refused (parse, validate)."""
    errors = response.get("errors") or []
    return response.get("data") is None and bool(errors) and all(not e.get("path") for e in errors)


class GraphQLView(GraphQL[Context, None]):
    graphql_ws_handler_class = GraphQLWSHandler
    graphql_transport_ws_handler_class = PersistedGraphQLTransportWSHandler

    def __init__(self, schema: BaseSchema, settings: Settings) -> None:
        super().__init__(
            schema,
            graphql_ide="graphiql" if settings.graphiql else None,
            connection_init_wait_timeout=timedelta(
                seconds=settings.ws_connection_init_timeout_seconds
            ),
            max_subscriptions_per_connection=settings.ws_max_subscriptions,
            allowed_origins=settings.cors_origin_list,
            subscription_protocols=(
                GRAPHQL_TRANSPORT_WS_PROTOCOL,
                GRAPHQL_WS_PROTOCOL,
                GRAPHQL_SSE_PROTOCOL,
                MULTIPART_SUBSCRIPTION_PROTOCOL,
            ),
        )
        self._trusted = parse_networks(settings.trusted_proxies)

    def encode_json(self, data: object) -> str:
        """Every response and WebSocket message: orjson (several times faster), json past its range.

        orjson refuses what json takes (integers past 64 bits, keys that are not strings); those
        rare payloads go through json as strawberry would send them.
        """
        try:
            return orjson.dumps(data).decode()
        except TypeError:  # orjson.JSONEncodeError is a TypeError
            return json.dumps(data, separators=(",", ":"))

    def parse_json(self, data: str | bytes) -> Any:
        """A request body (or GET `variables`/`extensions`) as JSON: anything that is not JSON
        (invalid UTF-8, an integer past 64 bits, nesting past 1,024 levels) or not an object (a
        list of them, for a batch) is a 400, never a 500."""
        try:
            parsed = orjson.loads(data)
        except (orjson.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
            raise HTTPException(400, "Unable to parse request body as JSON") from exc
        if isinstance(parsed, dict) or (
            isinstance(parsed, list) and all(isinstance(item, dict) for item in parsed)
        ):
            return parsed
        raise HTTPException(400, "The request body must be a JSON object")

    async def parse_http_body(
        self, request: AsyncHTTPRequestAdapter
    ) -> GraphQLRequestData | list[GraphQLRequestData]:
        """Nearly every request is a JSON POST that asks for no stream: read it directly.
        strawberry's parser takes the content type apart with `email.message` and tries each
        stream transport against the Accept header first (a tenth of a `{ __typename }`
        request's CPU); anything else (GET, multipart bodies, an Accept naming a stream or
        multipart, a batch, ill-typed fields) still goes through it, with its checks and words."""
        media_type = (request.content_type or "").partition(";")[0].strip().lower()
        accept = request.headers.get("accept", "").lower()
        if (
            request.method != "POST"
            or media_type != "application/json"
            or "stream" in accept
            or "multipart" in accept
        ):
            return await super().parse_http_body(request)
        data = self.parse_json(await request.get_body())
        if not isinstance(data, dict):
            return await super().parse_http_body(request)
        query, variables = data.get("query"), data.get("variables")
        extensions = data.get("extensions")
        if not (
            isinstance(query, str | None)
            and isinstance(variables, dict | None)
            and isinstance(extensions, dict | None)
        ):
            return await super().parse_http_body(request)  # its refusal, its wording
        return GraphQLRequestData(
            query=query,
            variables=variables,
            operation_name=data.get("operationName"),
            extensions=extensions,
            protocol="http",
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            WEBSOCKETS_OPEN.inc()
            try:
                await super().__call__(scope, receive, send)
            finally:
                CONNECTIONS.remove(scope)
                WEBSOCKETS_OPEN.dec()
            return
        request = Request(scope, receive=receive)
        try:
            response = await self.run(request)
        except ClientDisconnect:
            return  # the client left before sending its body: nobody to answer
        except HTTPException as exc:
            status = exc.status_code
            if request.method == "GET" and "not allowed" in exc.reason.lower():
                status = 405  # a mutation over GET: the method is wrong, not the document
            code = "METHOD_NOT_ALLOWED" if status == 405 else "BAD_REQUEST"
            response = JSONResponse(error_body(exc.reason, code), status_code=status)
            if status == 405:
                response.headers["Allow"] = "POST" if request.method == "GET" else "GET, POST"
        except PersistedQueryError as exc:
            response = exc.response()
        graphql_json = wants_graphql_response_json(request.headers.get("accept"))
        if response.headers.get("content-type", "").startswith("application/json"):
            if graphql_json:
                response.headers["content-type"] = GRAPHQL_RESPONSE_JSON
            if getattr(request.state, REQUEST_ERROR_STATE, False):
                # GraphQL over HTTP: a request error (the document does not parse or validate,
                # bad variables) is a 4xx in application/graphql-response+json, and a 200 in
                # application/json, which older clients read only from a 200.
                response.status_code = 400 if graphql_json else 200
        await response(scope, receive, send)

    @property
    def graphql_ide_html(self) -> str:
        """GraphiQL with its scripts served by the gateway, not a CDN (works offline)."""
        return graphiql_page()

    def should_render_graphql_ide(self, request: BaseRequestProtocol) -> bool:
        return super().should_render_graphql_ide(request) and not names_a_persisted_document(
            request.query_params, request.headers
        )

    async def execute_operation(
        self,
        request: Request,
        request_adapter: AsyncHTTPRequestAdapter,
        request_data: GraphQLRequestData | list[GraphQLRequestData],
        context: Context,
        root_value: None,
        sub_response: Response,
    ) -> ExecutionResult | list[ExecutionResult] | SubscriptionExecutionResult:
        """Persisted queries first (APQ, partners' documents): strawberry has none. A
        subscription sent as a plain JSON request is refused: its transports are SSE, multipart
        and WebSocket."""
        await resolve_http(DocumentResolver.for_services(context.services), request, request_data)
        if not isinstance(request_data, list) and request_data.protocol != "http":
            return await self.stream_operation(request, request_data, context)
        for data in request_data if isinstance(request_data, list) else [request_data]:
            if is_subscription(data.query, data.operation_name):
                raise HTTPException(400, PLAIN_SUBSCRIPTION_REFUSAL)
        return await super().execute_operation(
            request, request_adapter, request_data, context, root_value, sub_response
        )

    async def stream_operation(
        self, request: Request, data: GraphQLRequestData, context: Context
    ) -> SubscriptionExecutionResult:
        """An operation answered with a stream (SSE: any operation, subscriptions over GET too,
        since a browser's EventSource only GETs; multipart: subscriptions). A token that names
        no live session is refused in the stream itself, as its only message: graphql-sse
        retries a refused request five times before the app hears of it, and stops on an
        error it receives. The context lives as long as the stream, so it keeps no holdings
        versions read at its start."""
        context.holdings_tokens.clear()
        request.scope.setdefault("state", {})[STREAM_CONTEXT_STATE] = context
        if context.token is not None and context.session is None:
            refused = _only(ExecutionResult(data=None, errors=[Unauthenticated(BAD_TOKEN)]))
            return cast(SubscriptionExecutionResult, refused)
        transport = self._get_stream_transport(data.protocol)
        assert transport is not None
        kind = _operation_type(data, context.services.settings.max_tokens)
        if kind is OperationType.MUTATION and request.method == "GET":
            raise HTTPException(405, "mutations are not allowed over GET: POST them")
        if kind not in (None, OperationType.SUBSCRIPTION) and isinstance(
            transport, MultipartSubscriptionTransport
        ):
            raise HTTPException(
                400,
                "multipart subscriptions (subscriptionSpec=1.0) run subscriptions only: send "
                "queries and mutations as plain JSON",
            )
        allowed = StrawberryOperationType.from_http(cast(HTTPMethod, request.method))
        stream = await self.schema.stream(
            data.query,  # type: ignore[arg-type]
            variable_values=data.variables,
            context_value=context,
            operation_name=data.operation_name,
            operation_extensions=data.extensions,
            allowed_operation_types=transport.allowed_operation_types(allowed),  # GET: no mutation
        )
        return cast(SubscriptionExecutionResult, self._syntax_errors_as_results(stream))

    async def _syntax_errors_as_results(self, stream: AsyncIterator[Any]) -> AsyncIterator[Any]:
        """strawberry's stream raises the syntax error of a document that does not parse when
        the document cache parses it (its `on_parse` hook runs outside the stream's own handling):
        answer it as the stream's one result, as an invalid document is."""
        try:
            async with aclosing(stream) as results:  # type: ignore[type-var]
                async for result in results:
                    yield result
        except GraphQLSyntaxError as error:
            self.schema.process_errors([error])
            yield ExecutionResult(data=None, errors=[error])

    async def create_streaming_response(
        self,
        request: Request | WebSocket,
        stream: Callable[[], AsyncIterator[str]],
        sub_response: Response,
        headers: Mapping[str, str],
    ) -> Response:
        """strawberry's events, parts and heartbeats, through a stream that ends with its
        session and at shutdown like a WebSocket (gateway/http_streams.py)."""
        assert isinstance(request, Request)
        transport = self._get_stream_transport_from_headers(request.headers)
        assert isinstance(transport, SSETransport | MultipartSubscriptionTransport)
        context = request.scope.get("state", {}).get(STREAM_CONTEXT_STATE)
        session = context.session if isinstance(context, Context) else None
        body = LiveStream(transport).run(request, stream, session, self.encode_json_string)
        return StreamingResponse(body, status_code=200, headers={**sub_response.headers, **headers})

    async def get_context(
        self, request: Request | WebSocket, response: Response | WebSocket
    ) -> Context:
        services: Services = request.app.state.services
        context = Context(
            services=services,
            request=request,
            response=response,
            request_id=current_request_id() or uuid.uuid4().hex,
        )
        context.client_address = request_client_address(request.scope, self._trusted)
        if isinstance(request, WebSocket):
            CONNECTIONS.add(request)
        else:
            token = bearer_token(request.headers.get("authorization"))
            if token:
                context.token = token
                prefetched = request.scope.get("state", {}).get(SESSION_LOOKUP_STATE)
                session, holdings_token = await services.sessions.authenticate_request(
                    token, prefetched
                )
                context.session = session
                if session is not None and holdings_token is not None:
                    context.holdings_tokens[session.user_id] = holdings_token
        return context

    async def on_ws_connect(self, context: Context) -> UnsetType | dict[str, object] | None:
        params = context.connection_params or {}
        if not isinstance(params, dict):
            raise ConnectionRejectionError({"message": "connection_init payload must be an object"})
        offered, token = websocket_token(params, context.request.headers.get("authorization"))
        if not offered:
            return None  # anonymous: public fields work, private ones answer UNAUTHENTICATED
        session = await context.services.sessions.authenticate(token) if token else None
        if session is None:
            raise ConnectionRejectionError({"message": BAD_TOKEN})
        context.token = token
        context.session = session
        assert isinstance(context.request, WebSocket)
        CONNECTIONS.bind(context.request, session.session_id, session.expires_at)
        return None

    async def process_result(self, request: Request, result: Any) -> GraphQLHTTPResponse:
        processed = await super().process_result(request, result)
        if is_request_error(processed):  # its status depends on the media type (see __call__)
            setattr(request.state, REQUEST_ERROR_STATE, True)
        errors: list[dict[str, Any]] = list(processed.get("errors") or [])  # type: ignore[arg-type]
        for error in errors:
            extensions = error.setdefault("extensions", {})
            if "code" not in extensions and not error.get("path"):
                parse_failed = error.get("message", "").startswith("Syntax Error")
                extensions["code"] = (
                    "GRAPHQL_PARSE_FAILED" if parse_failed else "GRAPHQL_VALIDATION_FAILED"
                )
        return processed

    def create_response(
        self,
        response_data: GraphQLHTTPResponse | list[GraphQLHTTPResponse],
        sub_response: Response,
    ) -> Response:
        request_error = isinstance(response_data, dict) and is_request_error(response_data)
        if request_error:  # a request error has no `data` entry (GraphQL over HTTP)
            assert isinstance(response_data, dict)
            response_data = {k: v for k, v in response_data.items() if k != "data"}  # type: ignore[assignment]
        response = super().create_response(response_data, sub_response)
        retry_after = throttled_for(response_data)
        if retry_after is not None:
            response.status_code = 429
            response.headers["Retry-After"] = str(retry_after)
        return response
