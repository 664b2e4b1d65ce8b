"""The append-only audit log: one row per change of state, in the transaction that makes it."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any
from uuid import UUID

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from services.infra.request_context import current_request_id

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


# Many rows for one entity, for a caller to run inside a statement of its own (a CTE of the
# statement that makes the change): the same columns and request id as `record`, each row's
# details as JSON text. Parameters: those `rows_params` returns.
INSERT_ROWS = """
    INSERT INTO audit_log (user_id, action, entity_type, entity_id, details, request_id)
    SELECT CAST(:audit_user AS uuid), a.action, CAST(:audit_entity_type AS text),
           CAST(:audit_entity AS text), CAST(a.details AS jsonb), CAST(:audit_request AS text)
      FROM unnest(CAST(:audit_actions AS text[]), CAST(:audit_details AS text[]))
           WITH ORDINALITY AS a(action, details, ord)
     ORDER BY a.ord
"""


def rows_params(
    *,
    user_id: UUID | None,
    entity_type: str,
    entity_id: str,
    rows: Sequence[tuple[str, dict[str, Any]]],
) -> dict[str, Any]:
    """The parameters of INSERT_ROWS for `rows` of (action, details)."""
    return {
        "audit_user": user_id,
        "audit_entity_type": entity_type,
        "audit_entity": entity_id,
        "audit_request": current_request_id(),
        "audit_actions": [action for action, _ in rows],
        "audit_details": [json.dumps(details, default=str) for _, details in rows],
    }
