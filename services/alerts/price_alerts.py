"""Price alerts: create, cancel and list them; record a trigger exactly once; tell whoever listens.

An alert is ACTIVE until a quote's last price crosses its threshold (ABOVE: last >= threshold,
BELOW: last <= threshold), when it becomes TRIGGERED with that quote's last price and source
time, or until its owner cancels it (CANCELLED). Both are final; the database refuses any other
change. A user holds at most `alert_max_active` ACTIVE alerts.

Channels (Redis pub/sub), each message published after the commit it tells of:

* `alerts:changes`: alerts to start or stop watching, for every alert checker. Best effort: a
  checker also re-reads recent changes from PostgreSQL every few seconds.
* `alerts:{user_id}`: the user's alerts as they trigger (the `alertTriggered` subscription).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from typing import Any
from uuid import UUID

from redis.exceptions import RedisError
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.alerts.alert_index import PRICE_PLACES, Condition, WatchedAlert, to_ticks
from services.errors import InvalidInput, LimitExceeded, NotCancellable, NotFound, UnknownSymbol
from services.infra import audit
from services.infra.keys import ns, tag
from services.infra.redis import RedisClient, publish, queue_publish
from services.infra.settings import Settings
from services.infra.tables import PriceAlertRow, column_list
from services.market_data.securities import MAX_SYMBOL_LENGTH, is_valid_symbol, normalize_symbol
from services.money import decimal_places, require_finite

__all__ = [
    "AlertStatus",
    "Change",
    "Condition",
    "Crossing",
    "PriceAlert",
    "PriceAlerts",
    "Triggered",
    "alert_channel",
    "changed_since",
    "changes_channel",
    "decode_change",
    "decode_triggered",
    "load_active",
    "mark_triggered",
    "publish_triggered",
    "validate_threshold",
]

log = logging.getLogger("tradeql.alerts")

LIST_LIMIT = 1000  # alerts(status) answers at most this many, newest first
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
ONE_MICROSECOND = timedelta(microseconds=1)


def changes_channel() -> str:
    """Where new and cancelled alerts are announced to the checkers."""
    return ns("alerts:changes")


def alert_channel(user_id: UUID) -> str:
    return ns(f"alerts:{tag(user_id)}")


class AlertStatus(StrEnum):
    ACTIVE = "ACTIVE"
    TRIGGERED = "TRIGGERED"
    CANCELLED = "CANCELLED"


@dataclass(frozen=True, slots=True)
class PriceAlert:
    id: UUID
    user_id: UUID
    symbol: str
    condition: Condition
    threshold: Decimal
    status: AlertStatus
    created_at: datetime
    triggered_at: datetime | None = None
    triggered_price: Decimal | None = None

    def watched(self) -> WatchedAlert:
        return WatchedAlert(
            self.id,
            self.symbol,
            self.condition,
            to_ticks(self.threshold),
            (self.created_at - EPOCH) // ONE_MICROSECOND,
        )


@dataclass(frozen=True, slots=True)
class Crossing:
    """An alert a quote crossed, by the checker's index: a trigger to record if still ACTIVE."""

    alert_id: UUID
    price: Decimal  # the quote's last price
    quote_ts_ns: int  # the quote's source time


@dataclass(frozen=True, slots=True)
class Triggered:
    """An alert this trigger moved to TRIGGERED, and when the quote behind it was stamped."""

    alert: PriceAlert
    quote_ts_ns: int


@dataclass(frozen=True, slots=True)
class Change:
    """What a checker should do: watch `alert` (ACTIVE), or stop watching the alerts `gone`."""

    alert: PriceAlert | None = None
    gone: tuple[UUID, ...] = ()


_COLUMNS = column_list(
    PriceAlertRow,
    "id", "user_id", "symbol", "condition", "threshold", "status", "created_at", "triggered_at",
    "triggered_price",
)  # fmt: skip


def _alert_from_row(row: Any) -> PriceAlert:
    return PriceAlert(
        id=row.id,
        user_id=row.user_id,
        symbol=row.symbol,
        condition=Condition(row.condition),
        threshold=row.threshold,
        status=AlertStatus(row.status),
        created_at=row.created_at,
        triggered_at=row.triggered_at,
        triggered_price=row.triggered_price,
    )


def validate_threshold(value: Decimal, *, maximum: Decimal) -> Decimal:
    """A positive price with at most 4 decimal places (the price grid), at most `maximum`."""
    require_finite(value, "threshold")
    if value <= 0:
        raise InvalidInput("threshold must be greater than zero", field="threshold")
    if decimal_places(value.normalize()) > PRICE_PLACES:
        raise InvalidInput(
            f"threshold has more than {PRICE_PLACES} decimal places", field="threshold"
        )
    if value > maximum:
        raise InvalidInput(f"threshold must be at most {maximum}", field="threshold")
    return value


# -- the wire form of alerts on the channels ---------------------------------------------------
def _encode_alert(alert: PriceAlert) -> dict[str, Any]:
    return {
        "id": str(alert.id),
        "user_id": str(alert.user_id),
        "symbol": alert.symbol,
        "condition": alert.condition.value,
        "threshold": str(alert.threshold),
        "status": alert.status.value,
        "created_at": alert.created_at.isoformat(),
        "triggered_at": alert.triggered_at.isoformat() if alert.triggered_at else None,
        "triggered_price": str(alert.triggered_price) if alert.triggered_price else None,
    }


def _decode_alert(data: dict[str, Any]) -> PriceAlert:
    return PriceAlert(
        id=UUID(data["id"]),
        user_id=UUID(data["user_id"]),
        symbol=data["symbol"],
        condition=Condition(data["condition"]),
        threshold=Decimal(data["threshold"]),
        status=AlertStatus(data["status"]),
        created_at=datetime.fromisoformat(data["created_at"]),
        triggered_at=datetime.fromisoformat(data["triggered_at"]) if data["triggered_at"] else None,
        triggered_price=Decimal(data["triggered_price"]) if data["triggered_price"] else None,
    )


def encode_triggered(triggered: Triggered) -> str:
    return json.dumps({"alert": _encode_alert(triggered.alert), "quote_ts": triggered.quote_ts_ns})


def decode_triggered(payload: str) -> Triggered:
    data = json.loads(payload)
    return Triggered(_decode_alert(data["alert"]), int(data["quote_ts"]))


def encode_change(change: Change) -> str:
    if change.alert is not None:
        return json.dumps({"watch": _encode_alert(change.alert)})
    return json.dumps({"gone": [str(i) for i in change.gone]})


def decode_change(payload: str) -> Change:
    """ValueError, KeyError or TypeError if the payload is not a change."""
    data = json.loads(payload)
    if "watch" in data:
        return Change(alert=_decode_alert(data["watch"]))
    return Change(gone=tuple(UUID(i) for i in data["gone"]))


async def publish_change(redis: RedisClient, change: Change) -> None:
    """Tell the checkers at once; if Redis fails, their re-sync finds the change in seconds."""
    try:
        await publish(redis, changes_channel(), encode_change(change))
    except (RedisError, OSError) as exc:
        log.warning("alert change not published (the checkers' re-sync will find it): %s", exc)


async def publish_triggered(redis: RedisClient, triggered: Sequence[Triggered]) -> None:
    """Each alert to its owner's channel, and the lot to the checkers (who may still watch them)."""
    if not triggered:
        return
    async with redis.pipeline(transaction=False) as pipe:
        for t in triggered:
            queue_publish(pipe, alert_channel(t.alert.user_id), encode_triggered(t))
        queue_publish(
            pipe,
            changes_channel(),
            encode_change(Change(gone=tuple(t.alert.id for t in triggered))),
        )
        await pipe.execute()


# -- the checker's side --------------------------------------------------------------------------
# Where a re-sync starts: every transaction older than the oldest one still running when this
# is read has committed or aborted. Read it before the alerts, with a snapshot no later than
# theirs, and any change a read misses has a transaction id at or above it (it was running, or
# had not begun), so the next read, `changed_xid >= watermark`, finds it. Exact, with no clock.
_WATERMARK = text("SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint")
_LOAD_ACTIVE = text(
    "SELECT id, symbol, condition, (threshold * 10000)::bigint AS ticks, "
    "(extract(epoch FROM created_at) * 1000000)::bigint AS created_us "
    "FROM price_alerts WHERE status = 'ACTIVE'"
)


async def load_active(
    conn: AsyncConnection, *, chunk: int = 20_000
) -> tuple[list[WatchedAlert], int]:
    """Every ACTIVE alert, streamed in chunks (a checker may hold millions), and the watermark
    to re-sync from (`changed_since`)."""
    watermark = (await conn.execute(_WATERMARK)).scalar_one()
    symbols: dict[str, str] = {}  # one str object per symbol, not one per alert
    conditions = {c.value: c for c in Condition}
    loaded: list[WatchedAlert] = []
    result = await conn.stream(_LOAD_ACTIVE.execution_options(yield_per=chunk))
    async for rows in result.partitions():
        for r in rows:
            symbol = symbols.setdefault(r.symbol, r.symbol)
            loaded.append(
                WatchedAlert(r.id, symbol, conditions[r.condition], r.ticks, r.created_us)
            )
    return loaded, watermark


async def changed_since(
    conn: AsyncConnection, watermark: int
) -> tuple[list[tuple[PriceAlert, bool]], int]:
    """Alerts created or cancelled since the read that returned `watermark`, as (alert, still
    active), and the watermark for the next call. Triggers are left out: the checker that
    recorded one announces it, and a stale entry costs a conditional update that does nothing.
    A transaction left open somewhere on the server holds the watermark back, so each call
    reads again what changed since it began: more work, never a miss."""
    next_watermark = (await conn.execute(_WATERMARK)).scalar_one()
    rows = await conn.execute(
        text(
            f"SELECT {_COLUMNS} FROM price_alerts WHERE changed_xid >= :w AND status <> 'TRIGGERED'"
        ),
        {"w": watermark},
    )
    changes = [(a, a.status is AlertStatus.ACTIVE) for a in map(_alert_from_row, rows)]
    return changes, next_watermark


# One statement, so it is one round trip and, run alone, its own transaction. `locked` takes the
# row locks of the crossed alerts still ACTIVE in id order (a MATERIALIZED CTE with FOR UPDATE:
# LockRows above the Sort), so two checkers whose batches overlap never deadlock; a row that
# another checker triggered or a user cancelled while we waited for its lock is re-checked against
# its new version and drops out. Only locked rows are updated, and each gets its audit row.
_TRIGGER = text(
    f"""
WITH crossing AS (
    SELECT * FROM unnest(CAST(:ids AS uuid[]), CAST(:prices AS numeric[]),
                         CAST(:ats AS timestamptz[])) AS c(id, price, at)
), locked AS MATERIALIZED (
    SELECT id FROM price_alerts
    WHERE id = ANY(CAST(:ids AS uuid[])) AND status = 'ACTIVE'
    ORDER BY id
    FOR UPDATE
), fired AS (
    UPDATE price_alerts a
    SET status = 'TRIGGERED', triggered_price = c.price, triggered_at = c.at, updated_at = now()
    FROM crossing c
    WHERE a.id = c.id AND a.id IN (SELECT id FROM locked) AND a.status = 'ACTIVE'
    RETURNING {", ".join(f"a.{c.strip()}" for c in _COLUMNS.split(","))}
), audited AS (
    INSERT INTO audit_log (user_id, action, entity_type, entity_id, details)
    SELECT user_id, 'alert.triggered', 'price_alert', id::text,
           jsonb_build_object('price', triggered_price::text, 'at', triggered_at)
    FROM fired
)
SELECT * FROM fired
"""
)


async def mark_triggered(conn: AsyncConnection, crossings: Sequence[Crossing]) -> list[Triggered]:
    """Move the crossed alerts that are still ACTIVE to TRIGGERED, with the price and source time
    of the quote that crossed them, and an audit row each; returns exactly those.

    This conditional update is what makes a trigger happen once: two checkers that cross the
    same alert both try, the row lock orders them, and only the first finds it ACTIVE. A
    cancelled alert is not ACTIVE, so it never triggers, whatever a checker's index still holds.
    One statement: atomic on an AUTOCOMMIT connection, or part of the caller's transaction.
    """
    first: dict[UUID, Crossing] = {}
    for crossing in crossings:
        first.setdefault(crossing.alert_id, crossing)  # a batch's earliest quote wins
    if not first:
        return []
    chosen = list(first.values())
    rows = await conn.execute(
        _TRIGGER,
        {
            "ids": [c.alert_id for c in chosen],
            "prices": [c.price for c in chosen],
            "ats": [EPOCH + timedelta(microseconds=c.quote_ts_ns // 1000) for c in chosen],
        },
    )
    return [Triggered(a, first[a.id].quote_ts_ns) for a in map(_alert_from_row, rows)]


# -- the API's side ------------------------------------------------------------------------------
class PriceAlerts:
    def __init__(self, engine: AsyncEngine, redis: RedisClient, settings: Settings) -> None:
        self._engine = engine
        self._redis = redis
        self._settings = settings

    async def create(
        self, user_id: UUID, symbol: str, condition: Condition, threshold: Decimal
    ) -> PriceAlert:
        """UNKNOWN_SYMBOL, INVALID_INPUT (threshold) or LIMIT_EXCEEDED (too many ACTIVE)."""
        threshold = validate_threshold(threshold, maximum=self._settings.order_max_price)
        symbol = normalize_symbol(symbol)
        if len(symbol) > MAX_SYMBOL_LENGTH or not is_valid_symbol(symbol):
            raise UnknownSymbol(f"unknown symbol {symbol!r}", field="symbol")
        limit = self._settings.alert_max_active
        async with self._engine.begin() as conn:
            known = await conn.execute(
                text("SELECT 1 FROM securities WHERE symbol = :s AND active"), {"s": symbol}
            )
            if known.first() is None:
                raise UnknownSymbol(f"unknown symbol {symbol!r}", field="symbol")
            # The user's row lock serializes their creates, so two at once cannot both pass
            # the count (NO KEY UPDATE: other tables' foreign keys to users are not blocked).
            user = await conn.execute(
                text("SELECT 1 FROM users WHERE id = :u FOR NO KEY UPDATE"), {"u": user_id}
            )
            if user.first() is None:
                raise NotFound("no such user")
            active = (
                await conn.execute(
                    text(
                        "SELECT count(*) FROM price_alerts WHERE user_id = :u AND status = 'ACTIVE'"
                    ),
                    {"u": user_id},
                )
            ).scalar_one()
            if active >= limit:
                raise LimitExceeded(
                    f"at most {limit} active alerts; cancel one or wait for one to trigger"
                )
            row = (
                await conn.execute(
                    text(
                        "INSERT INTO price_alerts (user_id, symbol, condition, threshold) "
                        f"VALUES (:u, :s, :c, :t) RETURNING {_COLUMNS}"
                    ),
                    {"u": user_id, "s": symbol, "c": condition.value, "t": threshold},
                )
            ).one()
            alert = _alert_from_row(row)
            await audit.record(
                conn,
                user_id=user_id,
                action="alert.created",
                entity_type="price_alert",
                entity_id=str(alert.id),
                details={"symbol": symbol, "condition": condition.value, "threshold": threshold},
            )
        await publish_change(self._redis, Change(alert=alert))
        return alert

    async def cancel(self, user_id: UUID, alert_id: UUID) -> PriceAlert:
        """ACTIVE alerts only. Someone else's (or no) alert is NOT_FOUND; a TRIGGERED or
        CANCELLED one is NOT_CANCELLABLE. A cancel racing a trigger: the row lock orders them,
        and the loser finds the alert no longer ACTIVE."""
        async with self._engine.begin() as conn:
            row = (
                await conn.execute(
                    text(
                        "UPDATE price_alerts SET status = 'CANCELLED', cancelled_at = now(), "
                        "updated_at = now() WHERE id = :id AND user_id = :u AND status = 'ACTIVE' "
                        f"RETURNING {_COLUMNS}"
                    ),
                    {"id": alert_id, "u": user_id},
                )
            ).first()
            if row is None:
                held = (
                    await conn.execute(
                        text("SELECT user_id, status FROM price_alerts WHERE id = :id"),
                        {"id": alert_id},
                    )
                ).first()
                if held is None or held.user_id != user_id:
                    raise NotFound("no such alert", field="id")
                raise NotCancellable(f"the alert is {held.status}", field="id")
            alert = _alert_from_row(row)
            await audit.record(
                conn,
                user_id=user_id,
                action="alert.cancelled",
                entity_type="price_alert",
                entity_id=str(alert.id),
            )
        await publish_change(self._redis, Change(gone=(alert.id,)))
        return alert

    async def owned_by(self, user_id: UUID, status: AlertStatus | None = None) -> list[PriceAlert]:
        """The user's alerts, newest first, at most LIST_LIMIT."""
        sql = f"SELECT {_COLUMNS} FROM price_alerts WHERE user_id = :u"
        params: dict[str, Any] = {"u": user_id, "n": LIST_LIMIT}
        if status is not None:
            sql += " AND status = :s"
            params["s"] = status.value
        sql += " ORDER BY created_at DESC, id DESC LIMIT :n"
        async with self._engine.connect() as conn:
            return [_alert_from_row(r) for r in await conn.execute(text(sql), params)]
