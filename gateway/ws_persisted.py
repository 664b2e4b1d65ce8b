"""Persisted queries over graphql-transport-ws.

strawberry's handler reads only `payload.query` of a `subscribe` message and drops
`payload.extensions`. This one resolves `extensions.persistedQuery` (or `documentId`) first, with
the same rules as HTTP; a refusal is an `error` message for that operation, carrying the code
(PERSISTED_QUERY_NOT_FOUND makes an APQ client send the query again). A partner's API key comes
from the handshake's `X-API-Key` header or the `X-API-Key` field of the `connection_init` payload.
"""

from __future__ import annotations

from typing import Any

from starlette.websockets import WebSocket
from strawberry.exceptions import ConnectionRejectionError
from strawberry.subscriptions.protocols.graphql_transport_ws.handlers import (
    BaseGraphQLTransportWSHandler,
)
from strawberry.subscriptions.protocols.graphql_transport_ws.types import (
    ConnectionAckMessage,
    ErrorMessage,
    SubscribeMessage,
)
from strawberry.types.unset import UnsetType

from gateway.connections import CONNECTIONS
from gateway.persisted import API_KEY_HEADER, DocumentResolver, PersistedQueryError
from gateway.ws_frames import message_problem
from resolvers.context import Context


def websocket_api_key(context: Context) -> str | None:
    params = context.connection_params
    if isinstance(params, dict):
        for name, value in params.items():
            if isinstance(name, str) and name.lower() == API_KEY_HEADER:
                return value if isinstance(value, str) else ""
    value = context.request.headers.get(API_KEY_HEADER)
    return value if isinstance(value, str) else None


async def session_still_live(context: Context) -> bool:
    """A socket signed in with a token runs each new operation only while that session lives
    (it may have expired or been revoked since `connection_init`); one that is not is closed
    with 4401. An anonymous socket stays anonymous."""
    if context.token is None:
        return True
    if await context.services.sessions.authenticate(context.token) is not None:
        return True
    assert isinstance(context.request, WebSocket)
    await CONNECTIONS.close_socket(context.request, "session ended")
    return False


class PersistedGraphQLTransportWSHandler(BaseGraphQLTransportWSHandler[Context, None]):
    async def handle_connection_init(self, message: Any) -> None:
        """strawberry's, but a refused session closes with 4401, not 4403: graphql-ws (the JS
        client) retries 4403 six times, about 30 s before the app hears of it, and stops on
        4401, which the protocol keeps for an unauthorized client."""
        if self.connection_timed_out:
            return
        if self.connection_init_timeout_task:
            self.connection_init_timeout_task.cancel()
        payload = message.get("payload", {})
        if not isinstance(payload, dict):
            await self.websocket.close(code=4400, reason="Invalid connection init payload")
            return
        if self.connection_init_received:
            await self.websocket.close(code=4429, reason="Too many initialisation requests")
            return
        self.connection_init_received = True
        self.context.connection_params = payload
        try:
            ack_payload = await self.view.on_ws_connect(self.context)
        except ConnectionRejectionError:
            await self.websocket.close(code=4401, reason="Unauthorized")
            return
        ack = ConnectionAckMessage(type="connection_ack")
        if not (isinstance(ack_payload, UnsetType) or ack_payload is None):
            ack["payload"] = ack_payload
        await self.send_message(ack)
        self.connection_acknowledged = True

    async def handle_message(self, message: Any) -> None:
        problem = message_problem(message)
        if problem is not None:
            await self.handle_invalid_message(problem)  # 4400 with the reason
            return
        await super().handle_message(message)

    async def handle_subscribe(self, message: SubscribeMessage) -> None:
        if self.connection_acknowledged and not await session_still_live(self.context):
            return
        payload: Any = message.get("payload")
        # Protocol violations (before the ack, a reused id, a malformed payload) stay strawberry's.
        if (
            self.connection_acknowledged
            and isinstance(payload, dict)
            and isinstance(payload.get("query"), str | None)
            and message.get("id") not in self.operations
        ):
            resolver = DocumentResolver.for_services(self.context.services)
            try:
                query = await resolver.resolve(
                    query=payload.get("query"),
                    extensions=payload.get("extensions"),
                    document_id=payload.get("documentId"),
                    api_key=websocket_api_key(self.context),
                    method="WEBSOCKET",
                )
            except PersistedQueryError as exc:
                await self.send_message(
                    ErrorMessage(id=message["id"], type="error", payload=[exc.formatted])
                )
                return
            if query is not None:
                payload["query"] = query
        await super().handle_subscribe(message)
