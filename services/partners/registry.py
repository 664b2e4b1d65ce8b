"""Partners: API keys that may run only their own trusted documents (a persisted-query manifest).

A key is 32 random bytes shown once; PostgreSQL keeps only its sha256. Lookups are cached in
Redis for a few seconds, and a revoke or a key rotation deletes the cache entry at once.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from graphql import GraphQLError, GraphQLSchema, OperationDefinitionNode, parse, validate
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from services.infra import audit
from services.infra.keys import ns
from services.infra.redis import RedisClient
from services.infra.settings import Settings

APOLLO_FORMAT = "apollo-persisted-query-manifest"
API_KEY_PREFIX = "tqp_"
MAX_API_KEY_LENGTH = 128
DOCUMENT_CACHE_SECONDS = 3600
OPERATION_TYPES = ("query", "mutation", "subscription")

_SHA256 = re.compile(r"[0-9a-f]{64}")
_SHA1 = re.compile(r"[0-9a-fA-F]{40}")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_MISSING = "-"  # cached "no such key" / "not one of this partner's documents"


class PartnerError(ValueError):
    """A request the partner registry refuses; the message says why, for a person to read."""


class ManifestError(PartnerError):
    pass


class PartnerNotFound(PartnerError):
    pass


@dataclass(frozen=True, slots=True)
class TrustedDocument:
    sha256: str
    body: str
    name: str | None = None
    operation_type: str | None = None


@dataclass(frozen=True, slots=True)
class Partner:
    id: UUID
    name: str
    documents_version: int


@dataclass(frozen=True, slots=True)
class PartnerSummary:
    name: str
    active: bool
    documents: int
    created_at: datetime
    updated_at: datetime
    revoked_at: datetime | None


@dataclass(frozen=True, slots=True)
class Registration:
    partner: Partner
    documents: int
    created: bool
    api_key: str | None  # set when a key was issued (a new partner, or --rotate-key)


def document_hash(body: str) -> str:
    """The persisted-query id of a document: the hex sha256 of its UTF-8 text, as Apollo does."""
    return hashlib.sha256(body.encode()).hexdigest()


def hash_api_key(api_key: str) -> str:
    return hashlib.sha256(api_key.encode()).hexdigest()


def new_api_key() -> str:
    return API_KEY_PREFIX + secrets.token_urlsafe(32)


def normalize_hash(value: object) -> str | None:
    """A sha256 id as lowercase hex (an optional `sha256:` prefix dropped), or None if it is not one."""
    if not isinstance(value, str):
        return None
    value = value.strip().lower().removeprefix("sha256:")
    return value if _SHA256.fullmatch(value) else None


def check_partner_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise PartnerError(
            f"invalid partner name {name!r}: 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


# --- manifests ---------------------------------------------------------------------------------


def parse_manifest(text_: str, *, max_document_bytes: int) -> list[TrustedDocument]:
    """The documents of a manifest, each verified: its id is the sha256 of its body, and it parses.

    Two formats: Apollo's persisted query manifest (`{"format": "apollo-persisted-query-manifest",
    "version": 1, "operations": [{"id", "name", "type", "body"}]}`) and the `{hash: document}` map
    that GraphQL Code Generator writes. Raises ManifestError naming the first problem.
    """
    try:
        data = json.loads(text_)
    except json.JSONDecodeError as exc:
        raise ManifestError(f"the manifest is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ManifestError("the manifest must be a JSON object")
    if "format" in data or "operations" in data:
        documents = _apollo_documents(data)
    else:
        documents = _codegen_documents(data)
    if not documents:
        raise ManifestError("the manifest has no operations")
    unique: dict[str, TrustedDocument] = {}
    for document in documents:
        _verify(document, max_document_bytes)
        unique.setdefault(document.sha256, document)
    return list(unique.values())


def _apollo_documents(data: dict[str, Any]) -> list[TrustedDocument]:
    if data.get("format") != APOLLO_FORMAT:
        raise ManifestError(
            f'unknown manifest format {data.get("format")!r}: expected "{APOLLO_FORMAT}"'
        )
    if data.get("version") != 1:
        raise ManifestError(f"unsupported manifest version {data.get('version')!r}: expected 1")
    operations = data.get("operations")
    if not isinstance(operations, list):
        raise ManifestError('"operations" must be a list')
    documents = []
    for index, operation in enumerate(operations):
        where = f"operations[{index}]"
        if not isinstance(operation, dict):
            raise ManifestError(f"{where} must be an object with id, name, type and body")
        id_, body = operation.get("id"), operation.get("body")
        name, kind = operation.get("name"), operation.get("type")
        if not isinstance(id_, str) or not isinstance(body, str):
            raise ManifestError(f'{where} needs a string "id" and a string "body"')
        if name is not None and not isinstance(name, str):
            raise ManifestError(f'{where}: "name" must be a string')
        if kind is not None and kind not in OPERATION_TYPES:
            raise ManifestError(f'{where}: "type" must be one of {", ".join(OPERATION_TYPES)}')
        documents.append(TrustedDocument(_manifest_id(id_, where), body, name, kind))
    return documents


def _codegen_documents(data: dict[str, Any]) -> list[TrustedDocument]:
    documents = []
    for key, body in data.items():
        if not isinstance(body, str):
            raise ManifestError(
                f"entry {key!r} is not a document: expected Apollo's manifest "
                f'("format": "{APOLLO_FORMAT}") or a {{"<sha256>": "<document>"}} map'
            )
        documents.append(TrustedDocument(_manifest_id(key, f"entry {key[:16]!r}"), body))
    return documents


def _manifest_id(value: str, where: str) -> str:
    sha = normalize_hash(value)
    if sha is not None:
        return sha
    if _SHA1.fullmatch(value.strip()):
        raise ManifestError(
            f"{where}: the id looks like a sha1 hash; ids must be sha256 "
            "(GraphQL Code Generator: persistedDocuments: { hashAlgorithm: 'sha256' })"
        )
    raise ManifestError(f"{where}: the id {value[:80]!r} is not a sha256 hex digest")


def _verify(document: TrustedDocument, max_document_bytes: int) -> None:
    label = f"document {document.sha256}" + (f" ({document.name})" if document.name else "")
    size = len(document.body.encode())
    if size > max_document_bytes:
        raise ManifestError(f"{label} is {size} bytes, more than the {max_document_bytes} allowed")
    actual = document_hash(document.body)
    if actual != document.sha256:
        raise ManifestError(f"{label}: the id does not match its body, whose sha256 is {actual}")
    try:
        parsed = parse(document.body)
    except GraphQLError as exc:
        raise ManifestError(f"{label} does not parse: {exc.message}") from exc
    operations = [d for d in parsed.definitions if isinstance(d, OperationDefinitionNode)]
    if not operations:
        raise ManifestError(f"{label} has no operation")
    kinds = {op.operation.value for op in operations}
    if document.operation_type is not None and len(operations) == 1:
        if document.operation_type not in kinds:
            raise ManifestError(
                f'{label} is a {kinds.pop()}, but the manifest says "{document.operation_type}"'
            )


def check_against_schema(documents: list[TrustedDocument], schema: GraphQLSchema) -> None:
    """Refuse a manifest any of whose documents the served schema would not validate."""
    for document in documents:
        errors = validate(schema, parse(document.body))
        if errors:
            label = f"document {document.sha256}" + (f" ({document.name})" if document.name else "")
            raise ManifestError(f"{label} is not valid against the schema: {errors[0].message}")


# --- the registry ------------------------------------------------------------------------------


def _key_cache(key_hash: str) -> str:
    return ns(f"tq:partner:key:{key_hash}")


def _document_cache(partner: Partner, sha256: str) -> str:
    return ns(f"tq:partner:doc:{partner.id}:{partner.documents_version}:{sha256}")


class Partners:
    """Registers partners and their documents (PostgreSQL, the truth) and looks keys up (Redis first)."""

    def __init__(self, engine: AsyncEngine, redis: RedisClient, settings: Settings) -> None:
        self._engine = engine
        self._redis = redis
        self._settings = settings

    async def register(
        self, name: str, documents: list[TrustedDocument], *, rotate_key: bool = False
    ) -> Registration:
        """Add a partner with these documents, or replace an active partner's documents.

        A new partner gets a new key. An existing one keeps its key unless `rotate_key`, which
        issues a new one and ends the old one at once.
        """
        check_partner_name(name)
        if not documents:
            raise ManifestError("the manifest has no operations")
        try:
            async with self._engine.begin() as conn:
                row = (
                    await conn.execute(
                        text(
                            "SELECT id, name, key_hash FROM partners WHERE lower(name) = lower(:n) "
                            "AND revoked_at IS NULL FOR UPDATE"
                        ),
                        {"n": name},
                    )
                ).first()
                api_key = new_api_key() if row is None or rotate_key else None
                if row is None:
                    assert api_key is not None
                    partner_row = (
                        await conn.execute(
                            text(
                                "INSERT INTO partners (name, key_hash) VALUES (:n, :k) "
                                "RETURNING id, name, documents_version"
                            ),
                            {"n": name, "k": hash_api_key(api_key)},
                        )
                    ).one()
                    old_key_hash = None
                else:
                    await conn.execute(
                        text("DELETE FROM partner_documents WHERE partner_id = :p"), {"p": row.id}
                    )
                    partner_row = (
                        await conn.execute(
                            text(
                                "UPDATE partners SET documents_version = documents_version + 1, "
                                "key_hash = coalesce(:k, key_hash), updated_at = now() "
                                "WHERE id = :p RETURNING id, name, documents_version"
                            ),
                            {"p": row.id, "k": hash_api_key(api_key) if api_key else None},
                        )
                    ).one()
                    old_key_hash = row.key_hash
                await conn.execute(
                    text(
                        "INSERT INTO partner_documents (partner_id, sha256, name, operation_type, body) "
                        "VALUES (:p, :h, :name, :kind, :body)"
                    ),
                    [
                        {
                            "p": partner_row.id,
                            "h": d.sha256,
                            "name": d.name,
                            "kind": d.operation_type,
                            "body": d.body,
                        }
                        for d in documents
                    ],
                )
                await audit.record(
                    conn,
                    user_id=None,
                    action="partner.registered" if row is None else "partner.documents_replaced",
                    entity_type="partner",
                    entity_id=str(partner_row.id),
                    details={
                        "name": partner_row.name,
                        "documents": len(documents),
                        "key_issued": api_key is not None,
                    },
                )
        except IntegrityError as exc:  # two `add` of one new name at once
            raise PartnerError(f"partner {name!r} was registered concurrently; try again") from exc
        if old_key_hash is not None:
            await self._redis.delete(_key_cache(old_key_hash))
        partner = Partner(partner_row.id, partner_row.name, partner_row.documents_version)
        return Registration(partner, len(documents), created=row is None, api_key=api_key)

    async def revoke(self, name: str) -> Partner:
        """End an active partner's key at once, on every process. Its documents stay for the record."""
        async with self._engine.begin() as conn:
            row = (
                await conn.execute(
                    text(
                        "UPDATE partners SET revoked_at = now(), updated_at = now() "
                        "WHERE lower(name) = lower(:n) AND revoked_at IS NULL "
                        "RETURNING id, name, key_hash, documents_version"
                    ),
                    {"n": name},
                )
            ).first()
            if row is None:
                raise PartnerNotFound(f"no active partner named {name!r}")
            await audit.record(
                conn,
                user_id=None,
                action="partner.revoked",
                entity_type="partner",
                entity_id=str(row.id),
                details={"name": row.name},
            )
        await self._redis.delete(_key_cache(row.key_hash))
        return Partner(row.id, row.name, row.documents_version)

    async def summaries(self) -> list[PartnerSummary]:
        async with self._engine.connect() as conn:
            rows = (
                await conn.execute(
                    text(
                        "SELECT p.name, p.created_at, p.updated_at, p.revoked_at, "
                        "(SELECT count(*) FROM partner_documents d WHERE d.partner_id = p.id) AS n "
                        "FROM partners p ORDER BY lower(p.name), p.created_at"
                    )
                )
            ).all()
        return [
            PartnerSummary(
                r.name, r.revoked_at is None, r.n, r.created_at, r.updated_at, r.revoked_at
            )
            for r in rows
        ]

    async def authenticate(self, api_key: str) -> Partner | None:
        """The active partner holding this key, or None (unknown, revoked or rotated away)."""
        if not api_key or len(api_key) > MAX_API_KEY_LENGTH:
            return None
        key_hash = hash_api_key(api_key)
        cached = await self._redis.get(_key_cache(key_hash))
        if cached == _MISSING:
            return None
        if cached:
            data = json.loads(cached)
            return Partner(UUID(data["id"]), data["name"], int(data["v"]))
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(
                    text(
                        "SELECT id, name, documents_version FROM partners "
                        "WHERE key_hash = :k AND revoked_at IS NULL"
                    ),
                    {"k": key_hash},
                )
            ).first()
        partner = None if row is None else Partner(row.id, row.name, row.documents_version)
        payload = (
            _MISSING
            if partner is None
            else json.dumps(
                {"id": str(partner.id), "name": partner.name, "v": partner.documents_version}
            )
        )
        await self._redis.set(
            _key_cache(key_hash), payload, ex=self._settings.partner_cache_seconds
        )
        return partner

    async def document(self, partner: Partner, sha256: str) -> str | None:
        """The body of one of this partner's documents, or None if it is not one of them.

        Cached per documents version: replacing a manifest bumps it, so old entries are never read.
        """
        cache_key = _document_cache(partner, sha256)
        cached = await self._redis.get(cache_key)
        if cached is not None:
            return None if cached == _MISSING else str(cached)
        async with self._engine.connect() as conn:
            body = (
                await conn.execute(
                    text(
                        "SELECT d.body FROM partner_documents d JOIN partners p ON p.id = d.partner_id "
                        "WHERE d.partner_id = :p AND d.sha256 = :h AND p.documents_version = :v"
                    ),
                    {"p": partner.id, "h": sha256, "v": partner.documents_version},
                )
            ).scalar_one_or_none()
        ttl = DOCUMENT_CACHE_SECONDS if body is not None else self._settings.partner_cache_seconds
        await self._redis.set(cache_key, _MISSING if body is None else body, ex=ttl)
        return None if body is None else str(body)
