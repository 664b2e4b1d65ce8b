"""GraphQL over WebSocket through a third-party client (gql), both subprotocols."""

from __future__ import annotations

from typing import Any

import pytest
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
