"""A small GraphQL-over-HTTP client for the API tests, asking for the media types Apollo Client 4
asks for."""

from __future__ import annotations

import uuid
from typing import Any

import httpx

REGISTER = """
mutation Register($email: String!, $password: String!) {
  register(email: $email, password: $password) {
    token expiresAt user { id email createdAt } errors { code message field }
  }
}"""

STRONG_PASSWORD = "violet-harbor-lantern-42"
# What Apollo Client 4 sends: so a request error is a 400 (GraphQL over HTTP), as it sees it.
ACCEPT = "application/graphql-response+json,application/json;q=0.9"


class GraphQLClient:
    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http

    async def post(
        self, query: str, variables: dict[str, Any] | None = None, *, token: str | None = None
    ) -> httpx.Response:
        headers = {"Accept": ACCEPT}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return await self.http.post(
            "/graphql", json={"query": query, "variables": variables or {}}, headers=headers
        )

    async def __call__(
        self, query: str, variables: dict[str, Any] | None = None, *, token: str | None = None
    ) -> dict[str, Any]:
        response = await self.post(query, variables, token=token)
        media_type = response.headers["content-type"]
        assert media_type.startswith(("application/graphql-response+json", "application/json")), (
            response.text
        )
        body: dict[str, Any] = response.json()
        return body

    async def register_user(self, email: str | None = None) -> dict[str, str]:
        email = email or f"user-{uuid.uuid4().hex[:10]}@example.com"
        body = await self(REGISTER, {"email": email, "password": STRONG_PASSWORD})
        payload = body["data"]["register"]
        assert payload["errors"] == [], payload
        return {
            "id": payload["user"]["id"],
            "email": email,
            "token": payload["token"],
            "password": STRONG_PASSWORD,
        }
