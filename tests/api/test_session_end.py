"""A socket lives only as long as its session: closed with 4401 at the instant the session
expires, and a new operation on it is refused (the socket closed) once the session has ended."""

from __future__ import annotations

import asyncio
import json

import pytest
import websockets
from sqlalchemy import text

from services.accounts.sessions import _cache_key, hash_token
from services.infra.container import Services
from tests.api.test_processes import open_socket
from tests.graphql_client import GraphQLClient


async def expire_session(services: Services, token: str, seconds_from_now: float) -> None:
    """Move the session's expiry, as time would, and drop its cached lookup."""
    token_hash = hash_token(token)
    async with services.engine.begin() as conn:
        await conn.execute(
            text(
                "UPDATE sessions SET expires_at = now() + make_interval(secs => :s) "
                "WHERE token_hash = :h"
            ),
            {"s": seconds_from_now, "h": token_hash},
        )
    await services.redis.delete(_cache_key(token_hash))


async def closed_code(ws: websockets.ClientConnection, within: float) -> int | None:
    with pytest.raises(websockets.ConnectionClosed) as closed:
        while True:
            await asyncio.wait_for(ws.recv(), within)
    return closed.value.rcvd.code if closed.value.rcvd else None


async def test_a_socket_is_closed_when_its_session_expires(
    gql: GraphQLClient, services: Services, api_url: str
) -> None:
    user = await gql.register_user()
    await expire_session(services, user["token"], 1.5)
    ws = await open_socket(api_url, user["token"], "subscription { orderUpdates { event } }")
    try:
        assert await closed_code(ws, 5) == 4401
    finally:
        await ws.close()


async def test_a_new_subscribe_after_the_session_ended_closes_the_socket(
    gql: GraphQLClient, services: Services, api_url: str
) -> None:
    user = await gql.register_user()
    ws = await open_socket(api_url, user["token"], "subscription { orderUpdates { event } }")
    try:
        await expire_session(services, user["token"], -1)  # ended since the socket opened
        await ws.send(
            json.dumps(
                {"id": "2", "type": "subscribe", "payload": {"query": "{ me { id email } }"}}
            )
        )
        assert await closed_code(ws, 5) == 4401
    finally:
        await ws.close()
