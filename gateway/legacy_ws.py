"""The legacy `graphql-ws` protocol (subscriptions-transport-ws) with queries and mutations.

The protocol carries every operation type, and its clients send queries over it; strawberry's
handler runs only subscriptions. This handler executes the others once and completes them.
"""

from __future__ import annotations

import asyncio
from typing import Any

from graphql import GraphQLError, OperationType, get_operation_ast, parse
from strawberry.exceptions import ConnectionRejectionError
from strawberry.subscriptions.protocols.graphql_ws.handlers import BaseGraphQLWSHandler
from strawberry.subscriptions.protocols.graphql_ws.types import CompleteMessage, ErrorMessage
from strawberry.types.unset import UnsetType

from gateway.ws_frames import message_problem
from gateway.ws_persisted import session_still_live


def operation_type(query: str, operation_name: str | None) -> OperationType | None:
    """The type of the operation a request runs; None if the document does not parse or does
    not name one operation (graphql-core then reports why)."""
    try:
        operation = get_operation_ast(parse(query), operation_name)
    except GraphQLError:
        return None
    return operation.operation if operation is not None else None


class GraphQLWSHandler(BaseGraphQLWSHandler[Any, Any]):
    async def handle_message(self, message: Any) -> None:
        problem = message_problem(message)
        if problem is not None:
            await self.websocket.close(code=4400, reason=problem)
            return
        await super().handle_message(message)

    async def handle_connection_init(self, message: Any) -> None:
        """strawberry answers a refused `connection_init` with `connection_error` and then 1011
        (a server error); a bad or expired token is the client's: 4401, as on the other
        protocol, after the same `connection_error`."""
        payload = message.get("payload")
        if payload is not None and not isinstance(payload, dict):
            await self.send_message({"type": "connection_error"})
            await self.websocket.close(
                code=4400, reason="connection_init payload must be an object"
            )
            return
        if isinstance(self.context, dict):
            self.context["connection_params"] = payload
        elif hasattr(self.context, "connection_params"):
            self.context.connection_params = payload
        try:
            ack_payload = await self.view.on_ws_connect(self.context)
        except ConnectionRejectionError as rejected:
            await self.send_message({"type": "connection_error", "payload": rejected.payload})
            await self.websocket.close(code=4401, reason="unauthorized")
            return
        if isinstance(ack_payload, UnsetType) or ack_payload is None:
            await self.send_message({"type": "connection_ack"})
        else:
            await self.send_message({"type": "connection_ack", "payload": ack_payload})
        self.connection_acknowledged = True
        if self.keep_alive:
            self.keep_alive_task = asyncio.create_task(self.handle_keep_alive())

    async def handle_async_results(
        self,
        operation_id: str,
        query: str,
        operation_name: str | None,
        variables: dict[str, object] | None,
    ) -> None:
        if not await session_still_live(self.context):
            return
        kind = operation_type(query, operation_name)
        if kind in (None, OperationType.SUBSCRIPTION):
            await super().handle_async_results(operation_id, query, operation_name, variables)
            return
        try:
            result = await self.schema.execute(
                query,
                variable_values=variables,
                context_value=self.context,
                root_value=self.root_value,
                operation_name=operation_name,
            )
            if result.data is None and result.errors:
                await self.send_message(
                    ErrorMessage(type="error", id=operation_id, payload=result.errors[0].formatted)
                )
            else:
                await self.send_data_message(result, operation_id)  # type: ignore[arg-type]
            await self.send_message(CompleteMessage(type="complete", id=operation_id))
        except asyncio.CancelledError:
            await self.send_message(CompleteMessage(type="complete", id=operation_id))
        finally:
            self.tasks.pop(operation_id, None)
