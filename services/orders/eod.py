"""End of day: expire DAY orders, snapshot equity, roll order partitions, purge old keys.

Every step is idempotent, so running it twice for a day (or after a crash half-way) is harmless.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal

from sqlalchemy import text

from services.infra.container import Services
from services.market_data.clock import MarketClock
from services.money import round_cash
from services.orders import fills
from services.orders.order_model import Status, TimeInForce
from services.orders.order_store import ORDER_COLUMNS, order_from_row

log = logging.getLogger("tradeql.eod")
PARTITION_NAME = re.compile(r"^orders_(\d{4})_(\d{2})$")
MONTHS_AHEAD = 3


@dataclass
class EodSummary:
    trading_day: date
    expired: int = 0
    snapshots: int = 0
    partitions_created: list[str] = field(default_factory=list)
    partitions_detached: list[str] = field(default_factory=list)
    keys_purged: int = 0


def _month_start(day: date, offset: int) -> date:
    months = day.year * 12 + (day.month - 1) + offset
    return date(months // 12, months % 12 + 1, 1)


async def expire_day_orders(
    services: Services, before: datetime, *, extended_hours: bool = False
) -> int:
    """Expire the open DAY orders placed before `before`: at the close, those for the regular
    session (one placed after the close works in the next one); at the end of POST
    (`extended_hours`), those for extended hours."""
    async with services.engine.connect() as conn:
        rows = await conn.execute(
            text(
                f"SELECT {ORDER_COLUMNS} FROM orders WHERE time_in_force = :day "
                "AND status IN ('PENDING', 'SUBMITTED', 'PARTIALLY_FILLED') AND created_at < :before "
                "AND extended_hours = :extended"
            ),
            {"day": TimeInForce.DAY.value, "before": before, "extended": extended_hours},
        )
        orders = [order_from_row(r) for r in rows]
    reason = (
        "a DAY order for extended hours expires at the end of POST"
        if extended_hours
        else "a DAY order expires at the close"
    )
    expired = 0
    for order in orders:
        try:
            async with services.engine.begin() as conn:
                outcome = await fills.close(conn, order, Status.EXPIRED, reason=reason)
        except fills.StaleOrder:
            continue  # filled or cancelled meanwhile
        expired += 1
        # the order expired, an entry's legs made, an exit's sibling expired with it
        await fills.publish(
            services.redis,
            outcome.updates,
            [outcome.order, *outcome.linked],
            services.settings.quote_partitions,
        )
    return expired


async def snapshot_equity(services: Services, taken_at: datetime, kind: str = "close") -> int:
    """cash + market value of every account at the current quotes (the last price)."""
    async with services.engine.connect() as conn:
        accounts = (await conn.execute(text("SELECT id, cash FROM accounts"))).all()
        positions = (
            await conn.execute(
                text("SELECT account_id, symbol, quantity FROM positions WHERE quantity > 0")
            )
        ).all()
    symbols = sorted({p.symbol for p in positions})
    quotes = dict(zip(symbols, await services.quote_store.read(symbols), strict=True))
    value: dict[object, Decimal] = {}
    for p in positions:
        quote = quotes.get(p.symbol)
        if quote is not None:
            value[p.account_id] = value.get(p.account_id, Decimal(0)) + p.quantity * quote.last
    rows = [
        {
            "a": a.id,
            "t": taken_at,
            "k": kind,
            "c": a.cash,
            "m": round_cash(value.get(a.id, Decimal(0))),
            "e": a.cash + round_cash(value.get(a.id, Decimal(0))),
        }
        for a in accounts
    ]
    if rows:
        async with services.engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO equity_snapshots (account_id, taken_at, kind, cash, market_value, "
                    "equity) VALUES (:a, :t, :k, :c, :m, :e) ON CONFLICT DO NOTHING"
                ),
                rows,
            )
    return len(rows)


async def roll_partitions(services: Services, today: date) -> tuple[list[str], list[str]]:
    """Create the coming months' partitions; detach (never delete) those past retention."""
    created: list[str] = []
    detached: list[str] = []
    oldest_kept = _month_start(today, -services.settings.order_retention_months)
    async with services.engine.begin() as conn:
        existing = set(
            (
                await conn.execute(
                    text(
                        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                        "WHERE i.inhparent = 'orders'::regclass"
                    )
                )
            ).scalars()
        )
        for offset in range(MONTHS_AHEAD + 1):
            name = (
                await conn.execute(
                    text("SELECT ensure_order_partition(:m)"), {"m": _month_start(today, offset)}
                )
            ).scalar_one()
            if name not in existing:
                created.append(name)
        for name in sorted(existing):
            match = PARTITION_NAME.match(name)
            if match and date(int(match[1]), int(match[2]), 1) < oldest_kept:
                await conn.execute(text(f'ALTER TABLE orders DETACH PARTITION "{name}"'))
                detached.append(name)
    return created, detached


async def purge_idempotency_keys(services: Services) -> int:
    hours = max(24, services.settings.idempotency_ttl_hours)
    async with services.engine.begin() as conn:
        result = await conn.execute(
            text(
                "DELETE FROM idempotency_keys WHERE created_at < now() - make_interval(hours => :h)"
            ),
            {"h": hours},
        )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


async def run_eod(
    services: Services, trading_day: date, close_at: datetime | None = None
) -> EodSummary:
    close_at = close_at or _close_of(trading_day)
    summary = EodSummary(trading_day)
    summary.expired = await expire_day_orders(services, close_at)
    summary.snapshots = await snapshot_equity(services, close_at)
    summary.partitions_created, summary.partitions_detached = await roll_partitions(
        services, trading_day
    )
    summary.keys_purged = await purge_idempotency_keys(services)
    async with services.engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO eod_runs (trading_day, summary) VALUES (:d, CAST(:s AS jsonb)) "
                "ON CONFLICT (trading_day) DO UPDATE SET finished_at = now(), summary = EXCLUDED.summary"
            ),
            {"d": trading_day, "s": _json(summary)},
        )
    log.info("end of day %s: %s", trading_day, summary)
    return summary


def _close_of(trading_day: date) -> datetime:
    """The day's regular close once it has passed (a DAY order placed after it works in the next
    session, so an end of day run by hand later must not expire it); else now."""
    now = datetime.now(UTC)
    day = MarketClock().trading_day(trading_day)
    return day.close if day is not None and day.close <= now else now


def _json(summary: EodSummary) -> str:
    return json.dumps(
        {
            "expired": summary.expired,
            "snapshots": summary.snapshots,
            "created": summary.partitions_created,
            "detached": summary.partitions_detached,
            "keys_purged": summary.keys_purged,
        }
    )
