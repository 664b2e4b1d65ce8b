"""GraphQL over WebSocket through a third-party client (gql), both subprotocols."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
import websockets
from gql import Client, gql
from gql.transport.exceptions import TransportError
from gql.transport.websockets import WebsocketsTransport

SUBPROTOCOLS = {
    "graphql-transport-ws": WebsocketsTransport.GRAPHQLWS_SUBPROTOCOL,
    "graphql-ws": WebsocketsTransport.APOLLO_SUBPROTOCOL,
}


def ws_url(api_url: str) -> str:
    return api_url.replace("http://", "ws://") + "/graphql"


def transport(api_url: str, protocol: str, init_payload: dict[str, Any] | None = None) -> Any:
    return WebsocketsTransport(
        url=ws_url(api_url),
        subprotocols=[SUBPROTOCOLS[protocol]],
        init_payload=init_payload or {},
        connect_timeout=10,
        close_timeout=5,
    )


@pytest.mark.parametrize("protocol", sorted(SUBPROTOCOLS))
async def test_connection_init_authenticates_the_socket(
    api_url: str, user: dict[str, str], protocol: str
) -> None:
    payload = {"Authorization": f"Bearer {user['token']}"}
    async with Client(transport=transport(api_url, protocol, payload)) as session:
        result = await session.execute(gql("{ me { id email } portfolio { cash } }"))
    assert result["me"]["id"] == user["id"]
    assert result["portfolio"] == {"cash": "0.00"}


@pytest.mark.parametrize("protocol", sorted(SUBPROTOCOLS))
async def test_an_anonymous_socket_has_no_session(api_url: str, protocol: str) -> None:
    async with Client(transport=transport(api_url, protocol)) as session:
        result = await session.execute(gql("{ me { id } }"))
        assert result == {"me": None}
        with pytest.raises(TransportError) as raised:  # gql raises TransportQueryError
            await session.execute(gql("{ portfolio { cash } }"))
    assert "UNAUTHENTICATED" in str(getattr(raised.value, "errors", raised.value))


@pytest.mark.parametrize("protocol", sorted(SUBPROTOCOLS))
@pytest.mark.parametrize("authorization", ["Bearer forged", "not-bearer", 42])
async def test_a_bad_token_is_refused_at_connection_init(
    api_url: str, protocol: str, authorization: object
) -> None:
    with pytest.raises(Exception) as raised:
        async with Client(
            transport=transport(api_url, protocol, {"Authorization": authorization})
        ) as session:
            await session.execute(gql("{ me { id } }"))
    assert raised.value is not None


async def test_a_revoked_token_is_refused_on_a_new_socket(
    api_url: str, user: dict[str, str]
) -> None:
    payload = {"Authorization": f"Bearer {user['token']}"}
    async with Client(transport=transport(api_url, "graphql-transport-ws", payload)) as session:
        assert (await session.execute(gql("mutation { logout }"))) == {"logout": True}
    with pytest.raises(Exception):  # noqa: B017
        async with Client(transport=transport(api_url, "graphql-transport-ws", payload)) as session:
            await session.execute(gql("{ me { id } }"))


async def raw_socket(api_url: str, protocol: str, init: dict[str, Any] | None = None) -> Any:
    ws = await websockets.connect(ws_url(api_url), subprotocols=[protocol], close_timeout=2)
    await ws.send(json.dumps({"type": "connection_init", "payload": init or {}}))
    return ws


async def close_of(ws: Any, within: float = 5) -> tuple[int | None, str]:
    with pytest.raises(websockets.ConnectionClosed) as closed:
        while True:
            await asyncio.wait_for(ws.recv(), within)
    received = closed.value.rcvd
    return (received.code, received.reason) if received else (None, "")


MALFORMED = ["[]", "null", "123", '"text"', "{}"]
BAD_OPERATIONS = {
    "graphql-transport-ws": [
        {"id": "1", "type": "subscribe", "payload": "x"},
        {"id": "1", "type": "subscribe", "payload": None},
        {"id": "1", "type": "subscribe", "payload": []},
        {"id": 1, "type": "subscribe", "payload": {"query": "{ me { id } }"}},
        {"id": "1", "type": "subscribe", "payload": {"query": 5}},
    ],
    "graphql-ws": [
        {"id": "1", "type": "start", "payload": "x"},
        {"id": "1", "type": "start", "payload": None},
        {"id": "1", "type": "start", "payload": {"query": "{ me { id } }", "variables": []}},
    ],
}


@pytest.mark.parametrize("protocol", sorted(SUBPROTOCOLS))
@pytest.mark.parametrize("frame", [*MALFORMED, "bad operation"])
async def test_a_malformed_message_closes_the_socket_with_4400_and_a_reason(
    api_url: str, protocol: str, frame: str
) -> None:
    frames = (
        [json.dumps(m) for m in BAD_OPERATIONS[protocol]] if frame == "bad operation" else [frame]
    )
    for sent in frames:
        ws = await raw_socket(api_url, protocol)
        try:
            assert json.loads(await asyncio.wait_for(ws.recv(), 5))["type"] == "connection_ack"
            await ws.send(sent)
            code, reason = await close_of(ws)
            assert code == 4400 and reason, sent
        finally:
            await ws.close()


async def test_a_bad_token_on_the_legacy_protocol_is_4401_not_a_server_error(
    api_url: str,
) -> None:
    ws = await raw_socket(api_url, "graphql-ws", {"Authorization": "Bearer forged"})
    try:
        message = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert message["type"] == "connection_error"
        assert (await close_of(ws))[0] == 4401
    finally:
        await ws.close()


async def who_am_i(api_url: str, protocol: str, init: dict[str, Any], headers: Any = None) -> Any:
    ws = await websockets.connect(
        ws_url(api_url), subprotocols=[protocol], close_timeout=2, additional_headers=headers
    )
    try:
        await ws.send(json.dumps({"type": "connection_init", "payload": init}))
        ack = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert ack["type"] == "connection_ack", ack
        start = "subscribe" if protocol == "graphql-transport-ws" else "start"
        await ws.send(json.dumps({"id": "1", "type": start, "payload": {"query": "{ me { id } }"}}))
        while True:
            message = json.loads(await asyncio.wait_for(ws.recv(), 5))
            if message["type"] in ("next", "data"):
                return message["payload"]["data"]["me"]
    finally:
        await ws.close()


@pytest.mark.parametrize("protocol", sorted(SUBPROTOCOLS))
@pytest.mark.parametrize("form", ["authToken", "bearer authToken", "headers", "handshake"])
async def test_the_common_websocket_auth_forms_sign_the_socket_in(
    api_url: str, user: dict[str, str], protocol: str, form: str
) -> None:
    token, init, headers = user["token"], {}, None
    if form == "authToken":
        init = {"authToken": token}
    elif form == "bearer authToken":
        init = {"authToken": f"Bearer {token}"}
    elif form == "headers":
        init = {"headers": {"Authorization": f"Bearer {token}"}}
    else:
        headers = {"Authorization": f"Bearer {token}"}
    me = await who_am_i(api_url, SUBPROTOCOLS[protocol], init, headers)
    assert me == {"id": user["id"]}


@pytest.mark.parametrize("init", [{"Authorization": "Bearer forged"}, {"authToken": "forged"}])
async def test_a_bad_token_closes_the_socket_with_4401_so_clients_stop_retrying(
    api_url: str, init: dict[str, Any]
) -> None:
    ws = await raw_socket(api_url, "graphql-transport-ws", init)
    try:
        assert (await close_of(ws))[0] == 4401
    finally:
        await ws.close()
