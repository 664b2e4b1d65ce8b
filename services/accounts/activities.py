"""The account's activities: its fills and its deposits, newest first, by keyset.

A fill is an execution of one of the user's orders; its amount is the cash its ledger
transaction moved (negative for a buy; a fill worth less than half a cent moves none). A deposit
is a ledger transaction of kind `deposit` on the account's cash. Both are read from what the
money moved by, so the amounts add up to the ledger. Pages are keyset over (time, key), the key
being the activity's id as text (an execution's uuid, or `deposit:<ledger transaction>`), so a
page costs the same at any depth.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any
from uuid import UUID

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from services.errors import InvalidInput
from services.infra.db import single_read
from services.money import round_cash

MAX_PAGE = 200


class ActivityType(StrEnum):
    FILL = "FILL"
    DEPOSIT = "DEPOSIT"


@dataclass(frozen=True, slots=True)
class Activity:
    key: str  # its id, as the API shows it
    type: ActivityType
    at: datetime
    amount: Decimal
    symbol: str | None = None
    side: str | None = None
    quantity: Decimal | None = None
    price: Decimal | None = None
    order_id: UUID | None = None


@dataclass(frozen=True, slots=True)
class ActivityPage:
    activities: list[Activity]
    has_more: bool


def encode_cursor(activity: Activity) -> str:
    raw = f"{activity.at.isoformat()}|{activity.key}"
    return base64.urlsafe_b64encode(raw.encode()).decode()


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        at, sep, key = base64.urlsafe_b64decode(cursor.encode()).decode().partition("|")
        if not sep or not key:
            raise ValueError("no key")
        return datetime.fromisoformat(at), key
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidInput("`after` is not a cursor this server gave out", field="after") from exc


# Each branch is newest first and limited on its own, so the merge reads at most two pages.
_FILLS = """
    SELECT 'FILL' AS type, e.id::text COLLATE "C" AS key, e.executed_at AS at,
           coalesce((SELECT sum(l.amount) FROM ledger_transactions t
                       JOIN ledger_entries l ON l.transaction_id = t.id
                      WHERE t.reference = e.venue_execution_id AND t.kind IN ('fill.buy', 'fill.sell')
                        AND l.account_id = (SELECT id FROM account)
                        AND l.book = 'cash' AND l.asset = 'USD'),
                    0) AS amount,
           e.symbol, e.side, e.quantity, e.price, e.order_id
      FROM executions e
     WHERE e.user_id = :user {after}
     ORDER BY at DESC, key DESC LIMIT :n
"""
_DEPOSITS = """
    SELECT 'DEPOSIT' AS type, ('deposit:' || t.id::text) COLLATE "C" AS key, t.created_at AS at,
           l.amount, NULL::text AS symbol, NULL::text AS side, NULL::numeric AS quantity,
           NULL::numeric AS price, NULL::uuid AS order_id
      FROM ledger_entries l JOIN ledger_transactions t ON t.id = l.transaction_id
     WHERE l.account_id = (SELECT id FROM account) AND l.book = 'cash' AND l.asset = 'USD'
       AND t.kind = 'deposit' {after}
     ORDER BY at DESC, key DESC LIMIT :n
"""


def _activity(r: Any) -> Activity:
    """A row as an activity; the ledger keeps 6 places, cash moves in whole cents."""
    return Activity(
        r.key, ActivityType(r.type), r.at, round_cash(r.amount), r.symbol, r.side, r.quantity, r.price,
        r.order_id,
    )  # fmt: skip


class Activities:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def page(
        self,
        user_id: UUID,
        *,
        types: Sequence[ActivityType] | None,
        first: int,
        after: str | None,
    ) -> ActivityPage:
        if not 0 < first <= MAX_PAGE:
            raise InvalidInput(f"first must be between 1 and {MAX_PAGE}", field="first")
        wanted = set(types or ActivityType)
        params: dict[str, object] = {"user": user_id, "n": first + 1}
        fills_after = deposits_after = ""
        if after:
            params["at"], params["key"] = decode_cursor(after)
            fills_after = 'AND (e.executed_at, e.id::text COLLATE "C") < (:at, :key)'
            deposits_after = (
                "AND (t.created_at, ('deposit:' || t.id::text) COLLATE \"C\") < (:at, :key)"
            )
        branches = []
        if ActivityType.FILL in wanted:
            branches.append(f"({_FILLS.format(after=fills_after)})")
        if ActivityType.DEPOSIT in wanted:
            branches.append(f"({_DEPOSITS.format(after=deposits_after)})")
        sql = (
            "WITH account AS (SELECT id FROM accounts WHERE user_id = :user) "
            f"SELECT * FROM ({' UNION ALL '.join(branches)}) a ORDER BY at DESC, key DESC LIMIT :n"
        )
        async with single_read(self._engine) as conn:
            rows = (await conn.execute(text(sql), params)).all()
        activities = [_activity(r) for r in rows[:first]]
        return ActivityPage(activities, len(rows) > first)
