"""Subscription clients over HTTP, for the tests: GraphQL over SSE (distinct connections, as the
`graphql-sse` client reads it) and Apollo's multipart subscriptions (parsed as Apollo Client's
`readMultipartBody` does: parts split on CRLF--boundary, headers, then a JSON body)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx

SSE_ACCEPT = "text/event-stream"
# What Apollo Client sends for a subscription over HTTP (HttpLink, and its Relay/urql adapters).
MULTIPART_ACCEPT = "multipart/mixed;boundary=graphql;subscriptionSpec=1.0,application/json"
TRANSPORTS = ("sse", "multipart")


def headers_for(
    transport: str, token: str | None = None, api_key: str | None = None
) -> dict[str, str]:
    headers = {"Accept": SSE_ACCEPT if transport == "sse" else MULTIPART_ACCEPT}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if api_key:
        headers["X-API-Key"] = api_key
    return headers


async def sse_events(response: httpx.Response) -> AsyncIterator[tuple[str, Any]]:
    """("next", result), ("complete", None) and (":", comment) in the order they arrive."""
    event, data = None, []
    async for line in response.aiter_lines():
        if line.startswith(":"):
            yield ":", line[1:].strip()
        elif line.startswith("event:"):
            event = line[len("event:") :].strip()
        elif line.startswith("data:"):
            data.append(line[len("data:") :].strip())
        elif line == "" and event is not None:
            text = "\n".join(data)
            yield event, json.loads(text) if text else None
            event, data = None, []


async def multipart_parts(response: httpx.Response) -> AsyncIterator[dict[str, Any]]:
    """Every JSON part, heartbeats (`{}`) included, as Apollo Client splits them."""
    content_type = response.headers["content-type"]
    assert "boundary=" in content_type, content_type
    value = content_type.split("boundary=", 1)[1].split(";", 1)[0].strip("'\" ")
    boundary = f"\r\n--{value}"
    buffer = ""
    async for chunk in response.aiter_text():
        buffer += chunk
        while (at := buffer.find(boundary)) > -1:
            message, buffer = buffer[:at], buffer[at + len(boundary) :]
            split = message.find("\r\n\r\n")
            if split == -1:
                continue  # the empty part before the closing delimiter
            headers = message[:split].lower()
            assert "content-type: application/json" in headers, message
            yield json.loads(message[split:])


async def results(response: httpx.Response, transport: str) -> AsyncIterator[dict[str, Any]]:
    """The GraphQL results of a stream, whatever its transport; ends when the server ends it.

    SSE: each `next`'s data, until `complete`. Multipart: each part's `payload`; a part with
    top-level `errors` (Apollo's fatal error) is given as {"errors": [...], "fatal": True}."""
    if transport == "sse":
        async for event, data in sse_events(response):
            if event == "next":
                yield data
            elif event == "complete":
                return
        return
    async for part in multipart_parts(response):
        if "errors" in part and part.get("payload") is None:
            yield {"errors": part["errors"], "fatal": True}
        elif part.get("payload") is not None:
            yield part["payload"]


@asynccontextmanager
async def subscribe(
    http: httpx.AsyncClient,
    transport: str,
    query: str | None,
    variables: dict[str, Any] | None = None,
    *,
    token: str | None = None,
    api_key: str | None = None,
    extensions: dict[str, Any] | None = None,
) -> AsyncIterator[httpx.Response]:
    body: dict[str, Any] = {"variables": variables or {}}
    if query is not None:
        body["query"] = query
    if extensions is not None:
        body["extensions"] = extensions
    async with http.stream(
        "POST", "/graphql", json=body, headers=headers_for(transport, token, api_key)
    ) as response:
        yield response
