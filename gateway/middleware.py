"""Pure ASGI middleware: a request id for every request, an access log line and HTTP metrics."""

from __future__ import annotations

import logging
import os
import re
import time

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.metrics import HTTP_REQUESTS
from services.infra.request_context import request_id_var

log = logging.getLogger("tradeql.access")
_SAFE_ID = re.compile(r"^[A-Za-z0-9._-]{8,64}$")
KNOWN_PATHS = frozenset({"/graphql", "/healthz", "/readyz", "/metrics", "/"})


def path_label(path: str) -> str:
    """The metrics label of a path: a known one, every static file as one, the rest as `other`
    (a label per path would let clients grow the series without bound)."""
    if path in KNOWN_PATHS:
        return path
    return "/static" if path.startswith("/static/") else "other"


# Subscriptions over HTTP (SSE, multipart): counted in tradeql_http_streams_open, not as latency.
STREAM_MEDIA_TYPES = ("text/event-stream", "multipart/mixed")


def incoming_request_id(headers: Headers) -> str:
    """Keep the caller's X-Request-ID when it is sane (tracing across services), else make one."""
    given = headers.get("x-request-id", "")
    return given if _SAFE_ID.match(given) else os.urandom(16).hex()  # a uuid4's hex, cheaper


class RequestIdMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        request_id = incoming_request_id(Headers(scope=scope))
        token = request_id_var.set(request_id)
        started = time.perf_counter()
        status = 500
        streamed = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, streamed
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = MutableHeaders(scope=message)
                headers.append("X-Request-ID", request_id)
                streamed = headers.get("content-type", "").startswith(STREAM_MEDIA_TYPES)
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            if scope["type"] == "http":
                elapsed = time.perf_counter() - started
                path = path_label(scope["path"])
                if not streamed:  # a subscription's stream lasts as long as it is watched
                    HTTP_REQUESTS.labels(path, scope["method"], str(status)).observe(elapsed)
                if path != "/metrics":
                    log.info(
                        "%s %s %s %.1fms",
                        scope["method"],
                        scope["path"],
                        status,
                        elapsed * 1000,
                        extra={"status": status, "duration_ms": round(elapsed * 1000, 2)},
                    )
            request_id_var.reset(token)
