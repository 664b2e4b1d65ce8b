"""The order's history as its events: every change writes one, append-only; `tradeql check`
rebuilds every order from them and finds an order row that disagrees; the day's events export
as CAT-shaped CSV."""

from __future__ import annotations

import csv
import io
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from uuid import UUID

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from services.accounts.reconcile import find_differences
from services.infra.container import Services
from services.market_data.clock import NEW_YORK
from services.orders import fills
from services.orders.cat_export import COLUMNS, export_day
from services.orders.order_history import (
    BrokenHistory,
    HistoryEvent,
    Rebuilt,
    history_differences,
    replay,
)
from services.orders.order_model import Status
from tests.trading import book_fill, listed, place, reload, trader, unique_symbol

D = Decimal
NOW = datetime(2026, 11, 25, 15, 0, tzinfo=UTC)


def event(kind: str, status: Status, version: int, q: str | None = None, p: str | None = None,
          reason: str | None = None) -> HistoryEvent:  # fmt: skip
    return HistoryEvent(
        uuid.UUID(int=1), kind, status, NOW, None if q is None else D(q),
        None if p is None else D(p), None, reason, None, version, version, None, False,
    )  # fmt: skip


def test_replay_folds_fills_and_the_close() -> None:
    rebuilt = replay(
        [
            event("ACCEPTED", Status.PENDING, 0, "10", "50.00"),
            event("SUBMITTED", Status.SUBMITTED, 1),
            event("PARTIAL_FILL", Status.PARTIALLY_FILLED, 2, "4", "49.50"),
            event("PARTIAL_FILL", Status.CANCELLED, 3, "1", "49.60"),
            event("CANCELLED", Status.CANCELLED, 3, "5", reason="no liquidity"),
        ]
    )
    assert rebuilt == Rebuilt(Status.CANCELLED, D(5), D("247.60"), 3, "no liquidity")


@pytest.mark.parametrize(
    "events",
    [
        [],
        [event("FILL", Status.FILLED, 1, "1", "1.00")],
        [event("ACCEPTED", Status.PENDING, 0), event("FILL", Status.FILLED, 1, "1", "1.00"),
         event("CANCELLED", Status.CANCELLED, 2)],
        [event("ACCEPTED", Status.PENDING, 0), event("FILL", Status.FILLED, 1)],
    ],
)  # fmt: skip
def test_replay_refuses_what_cannot_be_a_history(events: list[HistoryEvent]) -> None:
    with pytest.raises(BrokenHistory):
        replay(events)


async def kinds(services: Services, order_id: UUID) -> list[tuple[str, str, str | None, bool]]:
    async with services.engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT kind, status, event, payload IS NULL AS silent FROM order_events "
                "WHERE order_id = :o ORDER BY version, seq"
            ),
            {"o": order_id},
        )
        return [(r.kind, r.status, r.event, r.silent) for r in rows]


async def test_every_change_is_an_event_and_check_rebuilds_every_order(services: Services) -> None:
    symbol = unique_symbol("H")
    await listed(services, symbol)
    user = await trader(services)
    filled = await book_fill(services, user, symbol, "BUY", "3", "20.00")
    stop = await place(services, user, symbol, "SELL", type="STOP", quantity="2", stop="19.00")
    async with services.engine.begin() as conn:  # the matcher's trigger: no subscriber is told
        triggered = (await fills.mark(conn, stop, triggered=True)).order
    cancelled = await services.cancellation.cancel(user, triggered.id)
    assert await kinds(services, filled.id) == [
        ("ACCEPTED", "PENDING", "ACCEPTED", False),
        ("FILL", "FILLED", "FILL", False),
    ]
    assert await kinds(services, cancelled.id) == [
        ("ACCEPTED", "PENDING", "ACCEPTED", False),
        ("TRIGGERED", "PENDING", None, True),  # history only: never published
        ("CANCELLED", "CANCELLED", "CANCELLED", False),
    ]
    assert await history_differences(services.engine) == []
    assert await find_differences(services.engine) == []


async def test_check_finds_an_order_row_its_events_do_not_explain(services: Services) -> None:
    symbol = unique_symbol("H")
    await listed(services, symbol)
    user = await trader(services)
    order = await place(services, user, symbol, type="LIMIT", quantity="1", limit="10.00")
    tamper = "UPDATE orders SET version = version + :d WHERE id = :o"
    async with services.engine.begin() as conn:
        await conn.execute(text(tamper), {"d": 1, "o": order.id})
    try:
        problems = await history_differences(services.engine)
        assert problems == [
            f"order version differs from its events: {order.id}: stored 1, computed 0"
        ]
    finally:
        async with services.engine.begin() as conn:
            await conn.execute(text(tamper), {"d": -1, "o": order.id})
    assert await history_differences(services.engine) == []
    await services.cancellation.cancel(user, order.id)


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE order_events SET reason = 'rewritten'",
        "DELETE FROM order_events",
        "TRUNCATE order_events",
    ],
)
async def test_the_events_are_append_only(services: Services, statement: str) -> None:
    async with services.engine.connect() as conn:
        with pytest.raises(DBAPIError, match="append-only"):
            await conn.execute(text(statement))


async def test_the_day_exports_as_cat_order_events(services: Services) -> None:
    symbol = unique_symbol("H")
    await listed(services, symbol)
    user = await trader(services)
    filled = await book_fill(services, user, symbol, "BUY", "5", "30.00")
    resting = await place(services, user, symbol, type="LIMIT", quantity="2", limit="25.00")
    await services.cancellation.cancel(user, resting.id)
    out = io.StringIO()
    count = await export_day(
        services.engine, datetime.now(UTC).astimezone(NEW_YORK).date(), out, imid="TQLTEST"
    )
    rows = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert list(rows[0]) == COLUMNS and len(rows) == count
    assert len({r["firmROEID"] for r in rows}) == count  # unique per row
    mine = [r for r in rows if r["orderID"] in (str(filled.id), str(resting.id))]
    assert [(r["orderID"] == str(filled.id), r["type"]) for r in mine] == [
        (True, "MENO"),
        (True, "MEOR"),
        (True, "MEOT"),
        (False, "MENO"),
        (False, "MEOC"),
    ]
    new, route, trade, _, cancel = mine
    assert (new["side"], new["price"], new["quantity"], new["orderType"]) == (
        "B",
        "30.00",
        "5",
        "LMT",
    )
    assert new["timeInForce"].startswith("DAY=") and new["tradingSession"] == "REG"
    assert (route["destination"], route["destinationType"]) == ("EDGX", "E")
    executions = (await services.order_store.executions_for([filled.id]))[filled.id]
    assert (trade["tradeID"], trade["price"], trade["quantity"], trade["leavesQty"]) == (
        str(executions[0].id), "30.00", "5", "0",
    )  # fmt: skip
    assert (cancel["cancelQty"], cancel["initiator"]) == ("2", "C")
    assert (await reload(services, resting.id)).status is Status.CANCELLED
