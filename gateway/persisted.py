"""Persisted queries: Apollo's automatic persisted queries (APQ) and partners' trusted documents.

strawberry has none, so the view asks a DocumentResolver for the text to execute before it runs a
request. The rules, in order:

- With an `X-API-Key` header the request is a partner's: the key must belong to an active partner
  (else 401 INVALID_API_KEY), and the request must name one of that partner's documents, by
  `extensions.persistedQuery.sha256Hash` or `documentId` (else 403 PERSISTED_QUERY_NOT_ALLOWED).
  Partners never read or write the APQ store.
- Without one, `extensions.persistedQuery {version: 1, sha256Hash}` (or a `documentId`) is APQ:
  with the query, the hash is checked and the document stored in Redis (`apq:{sha256}`); without
  it, the stored document runs, or the answer is PersistedQueryNotFound (HTTP 200) so the client
  sends it again with the query.
- Anything else is an ordinary request, untouched (and costs no Redis round trip).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from graphql import (
    GraphQLError,
    GraphQLFormattedError,
    OperationDefinitionNode,
    OperationType,
    parse,
)
from starlette.requests import Request
from starlette.responses import JSONResponse
from strawberry.http import GraphQLRequestData

from services.infra.keys import ns
from services.infra.redis import RedisClient
from services.partners.registry import Partners, document_hash, normalize_hash

if TYPE_CHECKING:
    from services.infra.container import Services

APQ_VERSION = 1
API_KEY_HEADER = "x-api-key"

NOT_FOUND = "PERSISTED_QUERY_NOT_FOUND"
NOT_SUPPORTED = "PERSISTED_QUERY_NOT_SUPPORTED"
HASH_MISMATCH = "PERSISTED_QUERY_HASH_MISMATCH"
INVALID = "PERSISTED_QUERY_INVALID"
NOT_ALLOWED = "PERSISTED_QUERY_NOT_ALLOWED"
INVALID_API_KEY = "INVALID_API_KEY"


class PersistedQueryError(Exception):
    """A request refused before execution: a GraphQL error with a code, and its HTTP status."""

    def __init__(self, code: str, message: str, http_status: int) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.http_status = http_status

    @property
    def formatted(self) -> GraphQLFormattedError:
        return {"message": self.message, "extensions": {"code": self.code}}

    def response(self) -> JSONResponse:
        response = JSONResponse({"errors": [self.formatted]}, status_code=self.http_status)
        if self.http_status == 401:
            response.headers["WWW-Authenticate"] = 'ApiKey header="X-API-Key"'
        return response


def apq_key(sha256: str) -> str:
    return ns(f"apq:{sha256}")


class DocumentResolver:
    def __init__(
        self,
        redis: RedisClient,
        partners: Partners,
        *,
        ttl_seconds: int,
        max_document_bytes: int,
        max_tokens: int | None = None,
    ) -> None:
        self._redis = redis
        self._partners = partners
        self._ttl = ttl_seconds
        self._max_bytes = max_document_bytes
        self._max_tokens = max_tokens

    @classmethod
    def for_services(cls, services: Services) -> DocumentResolver:
        settings = services.settings
        return cls(
            services.redis,
            services.partners,
            ttl_seconds=settings.apq_ttl_seconds,
            max_document_bytes=settings.persisted_document_max_bytes,
            max_tokens=settings.max_tokens,
        )

    async def resolve(
        self,
        *,
        query: str | None,
        extensions: Mapping[str, Any] | None,
        document_id: object,
        api_key: str | None,
        method: str,
    ) -> str | None:
        """The query text to execute (None: the request carried none), or PersistedQueryError."""
        persisted = extensions.get("persistedQuery") if isinstance(extensions, Mapping) else None
        if api_key is not None:
            return await self._partner_document(query, persisted, document_id, api_key)
        if persisted is None and document_id is None:
            return query
        sha256 = _requested_hash(persisted, document_id)
        if query is not None:
            self._check_hash(query, sha256)
            await self._remember(sha256, query, method)
            return query
        stored = await self._redis.getex(apq_key(sha256), ex=self._ttl)
        if stored is None:
            raise PersistedQueryError(NOT_FOUND, "PersistedQueryNotFound", 200)
        return str(stored)

    async def _partner_document(
        self, query: str | None, persisted: object, document_id: object, api_key: str
    ) -> str:
        partner = await self._partners.authenticate(api_key)
        if partner is None:
            raise PersistedQueryError(INVALID_API_KEY, "invalid or revoked API key", 401)
        if persisted is None and document_id is None:
            raise PersistedQueryError(
                NOT_ALLOWED,
                "this API key runs only its registered documents: send "
                "extensions.persistedQuery.sha256Hash or documentId, not a query",
                403,
            )
        sha256 = _requested_hash(persisted, document_id)
        if query is not None:
            self._check_hash(query, sha256)
        document = await self._partners.document(partner, sha256)
        if document is None:
            raise PersistedQueryError(
                NOT_ALLOWED, f"document {sha256} is not registered for this API key", 403
            )
        return document

    @staticmethod
    def _check_hash(query: str, sha256: str) -> None:
        if document_hash(query) != sha256:
            raise PersistedQueryError(
                HASH_MISMATCH, "provided sha256Hash does not match the query", 400
            )

    async def _remember(self, sha256: str, query: str, method: str) -> None:
        """Store a verified document, if it is small, parses, and is not a mutation sent over GET.

        A document that is not stored still runs (or fails) as an ordinary request; the client
        just sends it again next time.
        """
        if len(query.encode()) > self._max_bytes:
            return
        try:
            document = parse(query, max_tokens=self._max_tokens)
        except GraphQLError:
            return
        if method == "GET" and any(
            d.operation is not OperationType.QUERY
            for d in document.definitions
            if isinstance(d, OperationDefinitionNode)
        ):
            return
        await self._redis.set(apq_key(sha256), query, ex=self._ttl)


def _requested_hash(persisted: object, document_id: object) -> str:
    """The sha256 a request names, by extensions.persistedQuery or documentId (they must agree)."""
    sha256: str | None = None
    if persisted is not None:
        if not isinstance(persisted, Mapping):
            raise PersistedQueryError(INVALID, "extensions.persistedQuery must be an object", 400)
        if persisted.get("version") != APQ_VERSION:
            # Apollo's clients match this exact message (or the code) and stop sending hashes
            raise PersistedQueryError(NOT_SUPPORTED, "PersistedQueryNotSupported", 400)
        sha256 = normalize_hash(persisted.get("sha256Hash"))
        if sha256 is None:
            raise PersistedQueryError(
                INVALID, "extensions.persistedQuery.sha256Hash must be a sha256 hex digest", 400
            )
    if document_id is not None:
        from_id = normalize_hash(document_id)
        if from_id is None:
            raise PersistedQueryError(
                INVALID, "documentId must be a sha256 hex digest (optionally 'sha256:<hex>')", 400
            )
        if sha256 is not None and from_id != sha256:
            raise PersistedQueryError(
                INVALID, "documentId and extensions.persistedQuery name different documents", 400
            )
        sha256 = from_id
    assert sha256 is not None
    return sha256


# --- HTTP --------------------------------------------------------------------------------------


def names_a_persisted_document(query_params: Mapping[str, Any], headers: Mapping[str, str]) -> bool:
    """A GET without `query` that is still a GraphQL request (so no GraphiQL page for it)."""
    return "extensions" in query_params or "documentId" in query_params or API_KEY_HEADER in headers


async def _document_ids(request: Request) -> list[object]:
    """`documentId` of a GET, or of each operation of a JSON body (strawberry drops the field)."""
    if request.method == "GET":
        return [request.query_params.get("documentId")]
    body = await request.body()  # Starlette caches it: strawberry has read it already
    if b"documentId" not in body:
        return []
    try:
        data = json.loads(body)
    except ValueError:
        return []
    items = data if isinstance(data, list) else [data]
    return [item.get("documentId") if isinstance(item, dict) else None for item in items]


async def resolve_http(
    resolver: DocumentResolver,
    request: Request,
    request_data: GraphQLRequestData | list[GraphQLRequestData],
) -> None:
    """Fill in each operation's query from its persisted document, or raise PersistedQueryError."""
    operations = request_data if isinstance(request_data, list) else [request_data]
    api_key = request.headers.get(API_KEY_HEADER)
    document_ids = await _document_ids(request)
    for index, data in enumerate(operations):
        data.query = await resolver.resolve(
            query=data.query,
            extensions=data.extensions,
            document_id=document_ids[index] if index < len(document_ids) else None,
            api_key=api_key,
            method=request.method,
        )
