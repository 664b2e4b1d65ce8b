"""What every resolver sees: the process's services and this request's session."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import strawberry
from graphql import GraphQLError
from starlette.requests import Request
from starlette.responses import Response
from starlette.websockets import WebSocket

from services.accounts.sessions import SessionInfo
from services.infra.container import Services


@dataclass
class Context:
    services: Services
    request: Request | WebSocket
    response: Response | WebSocket | None
    request_id: str
    token: str | None = None
    session: SessionInfo | None = None
    client_address: str = "unknown"  # as the rate limiter counts it (trusted proxies applied)
    connection_params: dict[str, Any] | None = field(default=None)
    # Holdings version tokens read with the session at the start of an HTTP request (never on a
    # WebSocket: its context outlives them).
    holdings_tokens: dict[UUID, str] = field(default_factory=dict)


Info = strawberry.Info[Context, None]


class Unauthenticated(GraphQLError):
    def __init__(self, message: str = "sign in first: this field needs a live session") -> None:
        super().__init__(message, extensions={"code": "UNAUTHENTICATED"})


def require_session(info: Info) -> SessionInfo:
    session = info.context.session
    if session is None:
        raise Unauthenticated()
    return session
