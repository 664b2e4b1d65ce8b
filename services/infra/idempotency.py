"""Durable idempotency keys: unique per user and scope, written in the protected transaction."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from services.errors import IdempotencyConflict, InvalidInput

MAX_KEY_LENGTH = 255


@dataclass(frozen=True, slots=True)
class Claim:
    is_new: bool
    resource_id: str | None


def request_fingerprint(request: dict[str, Any]) -> str:
    canonical = json.dumps(request, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def validate_key(key: str) -> str:
    if not key or not key.strip():
        raise InvalidInput("idempotencyKey must not be empty", field="idempotencyKey")
    if not key.isprintable():
        raise InvalidInput(
            "idempotencyKey must be printable text (no control characters)", field="idempotencyKey"
        )
    if len(key) > MAX_KEY_LENGTH:
        raise InvalidInput(
            f"idempotencyKey is longer than {MAX_KEY_LENGTH} characters", field="idempotencyKey"
        )
    return key


async def claim(
    conn: AsyncConnection, *, user_id: UUID, scope: str, key: str, fingerprint: str
) -> Claim:
    """Take `key` for this request, or find who took it.

    A concurrent claim of the same key waits on the unique index until the first transaction
    ends, then sees its row: so exactly one transaction ever acts on a key.
    """
    inserted = (
        await conn.execute(
            text(
                "INSERT INTO idempotency_keys (user_id, scope, key, request_hash) "
                "VALUES (:u, :s, :k, :h) ON CONFLICT DO NOTHING RETURNING key"
            ),
            {"u": user_id, "s": scope, "k": key, "h": fingerprint},
        )
    ).first()
    if inserted is not None:
        return Claim(is_new=True, resource_id=None)
    row = (
        await conn.execute(
            text(
                "SELECT request_hash, resource_id FROM idempotency_keys "
                "WHERE user_id = :u AND scope = :s AND key = :k"
            ),
            {"u": user_id, "s": scope, "k": key},
        )
    ).one()
    if row.request_hash != fingerprint:
        raise IdempotencyConflict(
            "this idempotencyKey was already used for a different request",
            field="idempotencyKey",
        )
    return Claim(is_new=False, resource_id=row.resource_id)


async def attach_resource(
    conn: AsyncConnection, *, user_id: UUID, scope: str, key: str, resource_id: str
) -> None:
    await conn.execute(
        text(
            "UPDATE idempotency_keys SET resource_id = :r "
            "WHERE user_id = :u AND scope = :s AND key = :k"
        ),
        {"r": resource_id, "u": user_id, "s": scope, "k": key},
    )
