"""A small GraphQL-over-HTTP client for the API tests."""

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


class GraphQLClient:
    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http

    async def post(
        self, query: str, variables: dict[str, Any] | None = None, *, token: str | None = None
    ) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return await self.http.post(
            "/graphql", json={"query": query, "variables": variables or {}}, headers=headers
        )

    async def __call__(
        self, query: str, variables: dict[str, Any] | None = None, *, token: str | None = None
    ) -> dict[str, Any]:
        response = await self.post(query, variables, token=token)
        assert response.headers["content-type"].startswith("application/json"), response.text
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
