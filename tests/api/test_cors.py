"""Browser apps on other origins: CORS preflights and responses, and the WebSocket origin check,
from one allow-list (`TRADEQL_CORS_ORIGINS`); nothing is allowed across origins by default."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator

import httpx
import pytest
import websockets

from services.infra.settings import Settings
from tests.api_process import api_process

ALLOWED = "https://app.example.com"


@pytest.fixture(scope="module")
def cors_api(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    env = {**os.environ, "TRADEQL_CORS_ORIGINS": f"{ALLOWED}, http://localhost:5173"}
    with api_process(tmp_path_factory.mktemp("cors"), env=env) as (_, url):
        yield url


def preflight(origin: str) -> dict[str, str]:
    return {
        "Origin": origin,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type",
    }


async def test_an_allowed_origin_passes_the_preflight_and_reads_the_answer(cors_api: str) -> None:
    async with httpx.AsyncClient(base_url=cors_api) as http:
        answer = await http.options("/graphql", headers=preflight(ALLOWED))
        assert answer.status_code == 200
        assert answer.headers["access-control-allow-origin"] == ALLOWED
        assert "authorization" in answer.headers["access-control-allow-headers"].lower()
        response = await http.post(
            "/graphql", json={"query": "{ __typename }"}, headers={"Origin": ALLOWED}
        )
    assert response.json() == {"data": {"__typename": "Query"}}
    assert response.headers["access-control-allow-origin"] == ALLOWED
    assert "x-request-id" in response.headers["access-control-expose-headers"].lower()


async def test_another_origin_gets_no_cors_headers(cors_api: str) -> None:
    async with httpx.AsyncClient(base_url=cors_api) as http:
        answer = await http.options("/graphql", headers=preflight("https://evil.example"))
        response = await http.post(
            "/graphql", json={"query": "{ __typename }"}, headers={"Origin": "https://evil.example"}
        )
    assert answer.status_code == 400
    assert "access-control-allow-origin" not in answer.headers
    assert "access-control-allow-origin" not in response.headers


async def open_from(url: str, origin: str) -> str:
    ws = await websockets.connect(
        url.replace("http://", "ws://") + "/graphql",
        subprotocols=["graphql-transport-ws"],
        additional_headers={"Origin": origin},
        close_timeout=2,
    )
    try:
        await ws.send(json.dumps({"type": "connection_init", "payload": {}}))
        return str(json.loads(await asyncio.wait_for(ws.recv(), 5))["type"])
    finally:
        await ws.close()


async def test_the_websocket_origin_check_uses_the_same_list(cors_api: str) -> None:
    assert await open_from(cors_api, ALLOWED) == "connection_ack"
    with pytest.raises(websockets.InvalidStatus) as refused:
        await open_from(cors_api, "https://evil.example")
    assert refused.value.response.status_code == 403
