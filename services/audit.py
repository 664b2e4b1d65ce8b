"""The append-only audit log: one row per change of state, in the transaction that makes it."""

from __future__ import annotations

import json
from typing import Any
from uuid import UUID

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from services.request_context import current_request_id

_INSERT = text(
    "INSERT INTO audit_log (user_id, action, entity_type, entity_id, details, request_id) "
    "VALUES (:user_id, :action, :entity_type, :entity_id, CAST(:details AS jsonb), :request_id)"
)


async def record(
    conn: AsyncConnection,
    *,
    user_id: UUID | None,
    action: str,
    entity_type: str,
    entity_id: str,
    details: dict[str, Any] | None = None,
) -> None:
    await conn.execute(
        _INSERT,
        {
            "user_id": user_id,
            "action": action,
            "entity_type": entity_type,
            "entity_id": entity_id,
            "details": json.dumps(details or {}, default=str),
            "request_id": current_request_id(),
        },
    )
