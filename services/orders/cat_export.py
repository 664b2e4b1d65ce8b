"""A day's order events as CSV shaped after the FINRA CAT order events (`tradeql orders export`).

One row per reportable event, oldest first, with CAT's field names (docs/orders.md has the
mapping): MENO (new order) for ACCEPTED; MEOR (order route) the first time an order fills at a
venue (the router's tries that filled nothing are not recorded; an internal cross is no route,
docs/order-book.md); MEOT (trade) for each fill;
MEOM (order modified) for a stop's trigger and a replace; MEOC (order cancelled) for a cancel, an
expiry and a rejection. Internal events (SUBMITTED, UPDATED) are not reportable. The day is a New
York calendar day; times are UTC, ISO-8601 with microseconds.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any, TextIO
from zoneinfo import ZoneInfo

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from services.money import trim_price, trim_quantity
from services.orders.internal_cross import VENUE as INTERNAL

NEW_YORK = ZoneInfo("America/New_York")
COLUMNS = [
    "type", "firmROEID", "CATReporterIMID", "orderKeyDate", "orderID", "symbol",
    "eventTimestamp", "manualFlag", "side", "price", "quantity", "orderType", "timeInForce",
    "tradingSession", "handlingInstructions", "deptType", "accountHolderType",
    "firmDesignatedID", "routedOrderID", "destination", "destinationType", "tradeID",
    "leavesQty", "cancelQty", "initiator", "cancelReason", "requestID",
]  # fmt: skip
EVENT_TYPES = {
    "ACCEPTED": "MENO",
    "FILL": "MEOT",
    "PARTIAL_FILL": "MEOT",
    "TRIGGERED": "MEOM",
    "REPLACED": "MEOM",
    "CANCELLED": "MEOC",
    "EXPIRED": "MEOC",
    "REJECTED": "MEOC",
}
USER_CANCEL = "cancelled by the user"

_DAY_EVENTS = text(
    """
    WITH day_orders AS (
        SELECT DISTINCT order_id FROM order_events WHERE created_at >= :start AND created_at < :end
    ), events AS (
        SELECT e.*, sum(CASE WHEN e.kind IN ('FILL', 'PARTIAL_FILL') THEN e.quantity ELSE 0 END)
                    OVER (PARTITION BY e.order_id ORDER BY e.version, e.seq) AS filled
          FROM order_events e WHERE e.order_id IN (SELECT order_id FROM day_orders)
    )
    SELECT e.kind, e.created_at, e.quantity AS event_quantity, e.price AS event_price, e.venue,
           e.reason, e.request_id, e.execution_id, e.filled, e.seq,
           o.id, o.account_id, o.symbol, o.side, o.type, o.time_in_force, o.quantity,
           o.limit_price, o.stop_price, o.extended_hours, o.created_at AS order_created
      FROM events e JOIN orders o ON o.id = e.order_id
     WHERE e.created_at >= :start AND e.created_at < :end AND e.kind = ANY(:kinds)
     ORDER BY e.created_at, e.seq
    """
)


def day_bounds(day: date) -> tuple[datetime, datetime]:
    """A New York calendar day as UTC instants."""
    start = datetime.combine(day, time(0), NEW_YORK)
    end = datetime.combine(day + timedelta(days=1), time(0), NEW_YORK)
    return start.astimezone(UTC), end.astimezone(UTC)


def _stamp(at: datetime) -> str:
    return at.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _decimal(value: Decimal | None, trim: Any) -> str:
    return "" if value is None else str(trim(value))


def _tif(row: Any) -> str:
    if row.time_in_force == "DAY":
        return f"DAY={row.order_created.astimezone(NEW_YORK):%Y%m%d}"
    return str(row.time_in_force)


def _handling(row: Any) -> str:
    return f"STOP={trim_price(row.stop_price)}" if row.stop_price is not None else ""


def _rows(
    row: Any, imid: str, next_id: Callable[[], str], routed: set[tuple[object, str]]
) -> list[dict[str, str]]:
    kind = EVENT_TYPES[row.kind]
    base = {
        "CATReporterIMID": imid,
        "orderKeyDate": _stamp(row.order_created),
        "orderID": str(row.id),
        "symbol": row.symbol,
        "eventTimestamp": _stamp(row.created_at),
        "manualFlag": "false",
        "side": "B" if row.side == "BUY" else "SL",
        "requestID": row.request_id or "",
    }
    leaves = _decimal(max(row.quantity - row.filled, Decimal(0)), trim_quantity)
    out: list[dict[str, str]] = []
    if kind == "MENO" or kind == "MEOM":
        out.append(
            base
            | {
                "type": kind,
                "price": _decimal(row.limit_price, trim_price),
                "quantity": _decimal(row.quantity, trim_quantity),
                "orderType": "LMT" if row.limit_price is not None else "MKT",
                "timeInForce": _tif(row),
                "tradingSession": "ALL" if row.extended_hours else "REG",
                "handlingInstructions": _handling(row),
                "deptType": "A",
                "accountHolderType": "I",
                "firmDesignatedID": str(row.account_id),
            }
        )
    elif kind == "MEOT":
        route = (row.id, row.venue)
        internal = row.venue == INTERNAL  # crossed in the local book: routed nowhere
        if not internal and route not in routed:  # the first fill at a venue: it went there
            routed.add(route)
            out.append(
                base
                | {
                    "type": "MEOR",
                    "price": _decimal(row.limit_price, trim_price),
                    "quantity": _decimal(row.event_quantity, trim_quantity),
                    "orderType": "LMT" if row.limit_price is not None else "MKT",
                    "timeInForce": _tif(row),
                    "tradingSession": "ALL" if row.extended_hours else "REG",
                    "handlingInstructions": _handling(row),
                    "deptType": "A",
                    "routedOrderID": f"{row.id}:{row.venue}",
                    "destination": row.venue,
                    "destinationType": "E",
                }
            )
        out.append(
            base
            | {
                "type": "MEOT",
                "price": _decimal(row.event_price, trim_price),
                "quantity": _decimal(row.event_quantity, trim_quantity),
                "destination": "" if internal else row.venue or "",
                "destinationType": "" if internal else "E",
                "routedOrderID": "" if internal else f"{row.id}:{row.venue}",
                "tradeID": str(row.execution_id or ""),
                "leavesQty": leaves,
            }
        )
    else:  # MEOC
        out.append(
            base
            | {
                "type": "MEOC",
                "cancelQty": _decimal(row.event_quantity, trim_quantity),
                "leavesQty": "0",
                "initiator": "C" if row.reason == USER_CANCEL else "F",
                "cancelReason": row.kind if row.reason is None else f"{row.kind}: {row.reason}",
            }
        )
    for line in out:
        line["firmROEID"] = next_id()
    return out


async def export_day(engine: AsyncEngine, day: date, out: TextIO, *, imid: str) -> int:
    """Write `day`'s reportable order events to `out` as CSV; the number of rows written."""
    start, end = day_bounds(day)
    async with engine.connect() as conn:
        rows = await conn.execute(
            _DAY_EVENTS, {"start": start, "end": end, "kinds": list(EVENT_TYPES)}
        )
        writer = csv.DictWriter(out, fieldnames=COLUMNS, restval="", lineterminator="\n")
        writer.writeheader()
        count = 0

        def next_id() -> str:
            nonlocal count
            count += 1
            return f"{day:%Y%m%d}_{count}"

        routed: set[tuple[object, str]] = set()
        for row in rows:
            writer.writerows(_rows(row, imid, next_id, routed))
    return count
