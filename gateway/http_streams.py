"""Subscriptions over HTTP: GraphQL over Server-Sent Events (the `graphql-sse` client's distinct
connections mode, `Accept: text/event-stream`) and Apollo's multipart subscriptions (`Accept:
multipart/mixed; subscriptionSpec=1.0`).

strawberry encodes both (`strawberry.http.streaming`: events, parts and heartbeats); this module
makes a stream live like a WebSocket does: it is registered with the process's connections, so it
ends when its session expires or is revoked and when the server shuts down, and a client that
goes away releases its subscription at once (Starlette cancels the body, which closes every
generator down to the resolver's pub/sub listener). How a stream ends, by protocol:

| why | SSE | multipart |
| --- | --- | --- |
| the operation finished | `event: complete` | the closing boundary |
| the session ended (4401) | `next` with an UNAUTHENTICATED error, then `complete` (the client stops) | a part `{"payload": null, "errors": [UNAUTHENTICATED]}`, then the closing boundary (Apollo's fatal error) |
| shutdown (1001) | the body ends without `complete` (graphql-sse reconnects, to another process) | a part `{"payload": null, "errors": [SHUTTING_DOWN]}`, then the closing boundary |
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable

from prometheus_client import Gauge
from starlette.requests import Request
from strawberry.http.streaming import MultipartSubscriptionTransport, SSETransport

from gateway.connections import CONNECTIONS, GOING_AWAY, SESSION_REVOKED
from gateway.metrics import REGISTRY
from services.accounts.sessions import SessionInfo

log = logging.getLogger("tradeql.streams")
JSONEncoder = Callable[[object], str]

STREAMS_OPEN = Gauge(
    "tradeql_http_streams_open",
    "Subscriptions open over HTTP streams, by transport",
    ["transport"],
    registry=REGISTRY,
)

# What the last message of a stream ended by the server says, by close code.
END_ERRORS = {
    SESSION_REVOKED: "UNAUTHENTICATED",
    GOING_AWAY: "SHUTTING_DOWN",
}


def end_error(code: int, reason: str) -> dict[str, object]:
    message = (
        "server shutting down: subscribe again"
        if code == GOING_AWAY
        else f"{reason}: sign in again"
    )
    return {"message": message, "extensions": {"code": END_ERRORS.get(code, "UNAUTHENTICATED")}}


class LiveStream:
    """One subscription over an HTTP stream, as the process's connections see it."""

    def __init__(self, transport: SSETransport | MultipartSubscriptionTransport) -> None:
        self.transport = transport
        self._ended = asyncio.Event()
        self._open = True
        self._code = 0
        self._reason = ""

    @property
    def name(self) -> str:
        return "sse" if isinstance(self.transport, SSETransport) else "multipart"

    def is_open(self) -> bool:
        return self._open and not self._ended.is_set()

    async def close(self, code: int, reason: str) -> None:
        self._code, self._reason = code, reason
        self._ended.set()

    def last_message(self, encode_json: JSONEncoder) -> str:
        """What the stream sends when the server ends it (empty: nothing)."""
        error = end_error(self._code, self._reason)
        if isinstance(self.transport, SSETransport):
            if self._code == GOING_AWAY:
                return ""  # no `complete`: the client reconnects, elsewhere
            return (
                self.transport.encode_next(
                    {"data": None, "errors": [error]},  # type: ignore[typeddict-item]
                    encode_json,
                )
                + self.transport.encode_complete()
            )
        part = self.transport.encode_multipart_data(
            {"payload": None, "errors": [error]}, encode_json
        )
        return part + self.transport.encode_complete()

    async def run(
        self,
        request: Request,
        stream: Callable[[], AsyncIterator[str]],
        session: SessionInfo | None,
        encode_json: JSONEncoder,
    ) -> AsyncIterator[str]:
        """The response body: `stream` (strawberry's events and heartbeats) until it finishes,
        the client leaves, or the server ends it (session over, shutdown).

        The subscription is read by a task of its own: Starlette runs the body in an anyio task
        group, whose cancellation (the client left) strikes again at every await, so cleanup
        there could not unsubscribe from Redis; the task's own cancellation can."""
        chunks: asyncio.Queue[str | None] = asyncio.Queue(maxsize=1)
        CONNECTIONS.add_peer(request, self)
        if session is not None:
            CONNECTIONS.bind(request, session.session_id, session.expires_at)
        STREAMS_OPEN.labels(self.name).inc()
        pump = asyncio.create_task(self._pump(stream, chunks))
        ended = asyncio.ensure_future(self._ended.wait())
        getter: asyncio.Future[str | None] | None = None
        try:
            if isinstance(self.transport, SSETransport):
                # As the graphql-sse server does: some browsers show nothing of a stream before
                # its first bytes, and the first event may be minutes away.
                yield self.transport.encode_comment("connected")
            while True:
                getter = asyncio.ensure_future(chunks.get())
                await asyncio.wait((getter, ended), return_when=asyncio.FIRST_COMPLETED)
                if not getter.done():
                    last = self.last_message(encode_json)  # ended by the server
                    if last:
                        yield last
                    return
                chunk = getter.result()
                if chunk is None:
                    return
                yield chunk
        finally:  # nothing awaited here: the client may have left (see above)
            self._open = False
            for pending in (getter, ended, pump):
                if pending is not None:
                    pending.cancel()
            CONNECTIONS.remove(request.scope)
            STREAMS_OPEN.labels(self.name).dec()

    @staticmethod
    async def _pump(
        stream: Callable[[], AsyncIterator[str]], chunks: asyncio.Queue[str | None]
    ) -> None:
        """Read the subscription into `chunks` (None: it ended). Cancelled when the body ends,
        which closes the source down to the resolver's listeners, in this task."""
        try:
            source = stream()
            try:
                async for chunk in source:
                    await chunks.put(chunk)
            finally:
                close = getattr(source, "aclose", None)
                if close is not None:
                    await close()
            await chunks.put(None)
        except Exception:  # never leave the client waiting on a stream that died
            log.exception("an HTTP subscription stream failed")
            await chunks.put(None)
