"""The alert checker for real: quotes on the streams, alerts in PostgreSQL, triggers on pub/sub."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from uuid import UUID

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

from services.alerts import price_alerts as alerts
from services.alerts.alert_index import Condition
from services.alerts.price_alerts import Crossing, PriceAlert, Triggered
from services.infra.container import Services
from services.infra.keys import ns
from services.infra.streams import partition_of, quote_stream
from services.market_data.marketdata import Quote
from tests.trading import eventually, listed, quote, trader, unique_symbol
from workers.alerts import AlertChecker
from workers.feed import StreamPublisher

D = Decimal
ABOVE, BELOW = Condition.ABOVE, Condition.BELOW
StartChecker = Callable[..., Awaitable[AlertChecker]]


@dataclass
class Running:
    checkers: dict[int, tuple[asyncio.Event, asyncio.Task[None]]] = field(default_factory=dict)

    async def stop(self, checker: AlertChecker) -> None:
        stop, task = self.checkers.pop(id(checker))
        stop.set()
        await asyncio.wait_for(task, 15)


@pytest.fixture
async def running() -> AsyncIterator[Running]:
    held = Running()
    yield held
    for stop, _task in held.checkers.values():
        stop.set()
    for _, task in held.checkers.values():
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 15)


@pytest.fixture
def start_checker(services: Services, running: Running) -> StartChecker:
    async def start(**options: object) -> AlertChecker:
        options.setdefault("consumer", f"test-{uuid.uuid4().hex[:8]}")
        checker = AlertChecker(services, **options)  # type: ignore[arg-type]
        stop = asyncio.Event()
        task = asyncio.create_task(checker.run(stop))
        running.checkers[id(checker)] = (stop, task)
        ready = asyncio.create_task(checker.ready.wait())
        await asyncio.wait({ready, task}, timeout=20, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            task.result()
        assert checker.ready.is_set(), "the checker did not start"
        return checker

    return start


@pytest.fixture
async def published(services: Services) -> AsyncIterator[list[Triggered]]:
    """Every triggered alert published on any user's channel, in order."""
    seen: list[Triggered] = []
    pubsub = services.redis.pubsub()
    await pubsub.psubscribe(ns("alerts:*"))
    while (await pubsub.get_message(timeout=1.0) or {}).get("type") != "psubscribe":
        pass

    async def listen() -> None:
        async for message in pubsub.listen():
            if message["type"] == "pmessage" and message["channel"] != alerts.changes_channel():
                seen.append(alerts.decode_triggered(message["data"]))

    task = asyncio.create_task(listen())
    yield seen
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await pubsub.aclose()


@pytest.fixture
async def symbol(services: Services) -> str:
    name = unique_symbol("L")
    await listed(services, name)
    await quote(services, name, "100.00", "100.02", "100.01")
    return name


@pytest.fixture
async def owner(services: Services) -> UUID:
    return await trader(services, cash="0")


async def create(
    services: Services, owner: UUID, symbol: str, condition: Condition, threshold: str
) -> PriceAlert:
    return await services.alerts.create(owner, symbol, condition, D(threshold))


async def watching(checker: AlertChecker, *made: PriceAlert, timeout: float = 5.0) -> None:
    async def held() -> bool:
        return all(a.id in checker.index for a in made)

    await eventually(held, timeout)


async def status(services: Services, alert_id: UUID) -> tuple[str, datetime | None, D | None]:
    async with services.engine.connect() as conn:
        row = (
            await conn.execute(
                text(
                    "SELECT status, triggered_at, triggered_price FROM price_alerts WHERE id = :i"
                ),
                {"i": alert_id},
            )
        ).one()
    return row.status, row.triggered_at, row.triggered_price


async def wait_triggered(services: Services, alert_id: UUID, timeout: float = 10.0) -> None:
    async def done() -> bool:
        return (await status(services, alert_id))[0] == "TRIGGERED"

    await eventually(done, timeout)


async def audit_actions(services: Services, alert_id: UUID) -> list[str]:
    async with services.engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT action FROM audit_log WHERE entity_type = 'price_alert' "
                "AND entity_id = :i ORDER BY id"
            ),
            {"i": str(alert_id)},
        )
        return [r.action for r in rows]


def pushes_of(published: list[Triggered], alert_id: UUID) -> list[Triggered]:
    return [t for t in published if t.alert.id == alert_id]


async def pushed_once(published: list[Triggered], *alert_ids: UUID) -> None:
    async def arrived() -> bool:
        return all(pushes_of(published, i) for i in alert_ids)

    await eventually(arrived, 5.0)


def source_time(q: Quote) -> datetime:
    return alerts.EPOCH + timedelta(microseconds=q.timestamp_ns // 1000)


async def settle() -> None:
    """Long enough for a running checker to read, judge and publish what was just written."""
    await asyncio.sleep(0.5)


async def test_an_alert_triggers_on_the_first_last_price_that_crosses_it(
    services: Services,
    start_checker: StartChecker,
    symbol: str,
    owner: UUID,
    published: list[Triggered],
) -> None:
    checker = await start_checker()
    above = await create(services, owner, symbol, ABOVE, "105.00")
    below = await create(services, owner, symbol, BELOW, "95.00")
    await watching(checker, above, below)
    await quote(services, symbol, "104.98", "104.99", "104.99")
    await quote(services, symbol, "106.00", "106.02", "104.50")  # the bid is past it; last is not
    await quote(services, symbol, "95.01", "95.02", "95.01")
    await settle()
    assert (await status(services, above.id))[0] == "ACTIVE"
    assert (await status(services, below.id))[0] == "ACTIVE"
    crossing = await quote(services, symbol, "104.99", "105.01", "105.00")  # at: >= triggers
    await wait_triggered(services, above.id)
    assert await status(services, above.id) == ("TRIGGERED", source_time(crossing), D("105.00"))
    crossing = await quote(services, symbol, "94.99", "95.01", "95.00")  # at: <= triggers
    await wait_triggered(services, below.id)
    assert await status(services, below.id) == ("TRIGGERED", source_time(crossing), D("95.00"))
    await pushed_once(published, above.id, below.id)
    pushed = {t.alert.id: t for t in published if t.alert.user_id == owner}
    assert set(pushed) == {above.id, below.id}
    assert pushed[below.id].alert.triggered_price == D("95.00")
    assert pushed[below.id].quote_ts_ns == crossing.timestamp_ns
    assert await audit_actions(services, above.id) == ["alert.created", "alert.triggered"]
    assert above.id not in checker.index and below.id not in checker.index


async def test_an_alert_triggers_once_however_far_the_price_goes(
    services: Services,
    start_checker: StartChecker,
    symbol: str,
    owner: UUID,
    published: list[Triggered],
) -> None:
    checker = await start_checker()
    alert = await create(services, owner, symbol, ABOVE, "101")
    await watching(checker, alert)
    for last in ("101.50", "102", "103", "101.20"):
        await quote(services, symbol, last, last, last)
    await wait_triggered(services, alert.id)
    await settle()
    assert (await status(services, alert.id))[2] == D("101.50")
    assert len(pushes_of(published, alert.id)) == 1
    assert await audit_actions(services, alert.id) == ["alert.created", "alert.triggered"]


async def test_a_quote_without_a_last_price_triggers_nothing(
    services: Services, start_checker: StartChecker, symbol: str, owner: UUID
) -> None:
    checker = await start_checker()
    alert = await create(services, owner, symbol, BELOW, "95")
    await watching(checker, alert)
    await quote(services, symbol, "99.00", "99.02", "0")  # no trade yet
    await settle()
    assert (await status(services, alert.id))[0] == "ACTIVE"


async def test_a_quote_stamped_before_the_alert_existed_does_not_trigger_it(
    services: Services, start_checker: StartChecker, symbol: str, owner: UUID
) -> None:
    checker = await start_checker()
    alert = await create(services, owner, symbol, ABOVE, "101")
    await watching(checker, alert)
    created_ns = (alert.created_at - alerts.EPOCH) // timedelta(microseconds=1) * 1000
    stale = Quote(symbol, D(110), D(110), 100, 100, D(110), 1000, created_ns - 1_000_000)
    await StreamPublisher(services.redis, services.settings, "test").publish([stale])
    await settle()
    assert (await status(services, alert.id))[0] == "ACTIVE"
    assert alert.id in checker.index
    await quote(services, symbol, "110", "110", "110")
    await wait_triggered(services, alert.id)


async def test_new_and_cancelled_alerts_reach_the_checker_within_a_second(
    services: Services, start_checker: StartChecker, symbol: str, owner: UUID
) -> None:
    checker = await start_checker(resync_seconds=600)  # only the notifications count here
    alert = await create(services, owner, symbol, ABOVE, "150")
    started = time.monotonic()
    await watching(checker, alert, timeout=1.0)
    await services.alerts.cancel(owner, alert.id)

    async def dropped() -> bool:
        return alert.id not in checker.index

    await eventually(dropped, timeout=1.0)
    assert time.monotonic() - started < 2.0


async def test_a_lost_notification_is_found_by_the_periodic_resync(
    services: Services, start_checker: StartChecker, symbol: str, owner: UUID
) -> None:
    checker = await start_checker(resync_seconds=0.3)
    async with services.engine.begin() as conn:  # committed, but never announced
        alert_id = (
            await conn.execute(
                text(
                    "INSERT INTO price_alerts (user_id, symbol, condition, threshold) "
                    "VALUES (:u, :s, 'BELOW', 90) RETURNING id"
                ),
                {"u": owner, "s": symbol},
            )
        ).scalar_one()

    async def held() -> bool:
        return alert_id in checker.index

    await eventually(held, timeout=3.0)
    async with services.engine.begin() as conn:  # cancelled behind its back
        await conn.execute(
            text(
                "UPDATE price_alerts SET status = 'CANCELLED', cancelled_at = now(), "
                "updated_at = now() WHERE id = :i"
            ),
            {"i": alert_id},
        )

    async def dropped() -> bool:
        return alert_id not in checker.index

    await eventually(dropped, timeout=3.0)


async def test_a_cancelled_alert_never_triggers(
    services: Services,
    start_checker: StartChecker,
    symbol: str,
    owner: UUID,
    published: list[Triggered],
) -> None:
    checker = await start_checker(resync_seconds=600)
    told = await create(services, owner, symbol, ABOVE, "101")
    untold = await create(services, owner, symbol, ABOVE, "102")
    await watching(checker, told, untold)
    await services.alerts.cancel(owner, told.id)
    async with services.engine.begin() as conn:  # the checker never hears of this one
        await conn.execute(
            text(
                "UPDATE price_alerts SET status = 'CANCELLED', cancelled_at = now(), "
                "updated_at = now() WHERE id = :i"
            ),
            {"i": untold.id},
        )
    assert untold.id in checker.index
    raced = checker.raced
    await quote(services, symbol, "110", "110", "110")

    async def tried() -> bool:
        return checker.raced > raced

    await eventually(tried)  # it crossed the stale entry and PostgreSQL said no
    await settle()
    for alert in (told, untold):
        assert (await status(services, alert.id))[0] == "CANCELLED"
        assert pushes_of(published, alert.id) == []
    assert untold.id not in checker.index


async def test_two_checkers_trigger_each_alert_exactly_once(
    services: Services,
    start_checker: StartChecker,
    symbol: str,
    owner: UUID,
    published: list[Triggered],
) -> None:
    """Both hold every alert and the quotes are split between them: each rising quote crosses
    the alerts of the quotes before it in the other checker's index too, so they race."""
    users = [owner, await trader(services, cash="0")]
    made = [
        await create(services, users[i % 2], symbol, ABOVE, f"{101 + i * 0.25:.2f}")
        for i in range(60)
    ]
    one, two = await start_checker(), await start_checker()
    await watching(one, *made)
    await watching(two, *made)
    for i in range(70):
        last = f"{101 + i * 0.25:.2f}"
        await quote(services, symbol, last, last, last)
        await asyncio.sleep(0.01)
    for alert in made:
        await wait_triggered(services, alert.id)
    await settle()
    assert one.quotes_checked > 0 and two.quotes_checked > 0  # the group split the quotes
    assert one.triggered + two.triggered == len(made)
    for alert in made:
        assert len(pushes_of(published, alert.id)) == 1, alert.threshold
        assert await audit_actions(services, alert.id) == ["alert.created", "alert.triggered"]
        assert alert.id not in one.index and alert.id not in two.index


async def test_a_restarted_checker_triggers_what_crossed_while_none_ran_once(
    services: Services,
    start_checker: StartChecker,
    running: Running,
    symbol: str,
    owner: UUID,
    published: list[Triggered],
) -> None:
    """The group remembers what was read: the new checker reads the quotes written while no
    checker ran (those still in the stream), and triggers on them, once."""
    first = await start_checker()
    seen = await create(services, owner, symbol, ABOVE, "105")
    await watching(first, seen)
    await running.stop(first)
    unseen = await create(services, owner, symbol, BELOW, "90")  # created while none ran
    crossing = await quote(services, symbol, "106", "106.02", "106")
    await quote(services, symbol, "89", "89.02", "89")
    second = await start_checker()
    await wait_triggered(services, seen.id)
    await wait_triggered(services, unseen.id)
    await quote(services, symbol, "107", "107.02", "107")
    await settle()
    assert await status(services, seen.id) == ("TRIGGERED", source_time(crossing), D("106"))
    assert (await status(services, unseen.id))[2] == D("89")
    assert len(pushes_of(published, seen.id)) == 1
    assert len(pushes_of(published, unseen.id)) == 1
    assert second.triggered >= 2


async def test_a_trigger_the_database_refused_is_retried_and_recorded_once(
    services: Services,
    start_checker: StartChecker,
    symbol: str,
    owner: UUID,
    published: list[Triggered],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    checker = await start_checker()
    alert = await create(services, owner, symbol, BELOW, "99")
    await watching(checker, alert)
    real = alerts.mark_triggered
    failures: list[object] = []

    async def failing_once(conn: AsyncConnection, crossings: list[Crossing]) -> list[Triggered]:
        if not failures:
            failures.append(crossings)
            raise DBAPIError("UPDATE price_alerts", {}, ConnectionError("connection lost"))
        return await real(conn, crossings)

    monkeypatch.setattr(alerts, "mark_triggered", failing_once)
    crossing = await quote(services, symbol, "98", "98.02", "98")
    await wait_triggered(services, alert.id)
    await settle()
    assert len(failures) == 1
    assert await status(services, alert.id) == ("TRIGGERED", source_time(crossing), D("98"))
    assert len(pushes_of(published, alert.id)) == 1


async def test_malformed_stream_records_are_skipped(
    services: Services, start_checker: StartChecker, symbol: str, owner: UUID
) -> None:
    checker = await start_checker()
    alert = await create(services, owner, symbol, ABOVE, "101")
    await watching(checker, alert)
    stream = quote_stream(partition_of(symbol, services.settings.quote_partitions))
    for bad in (f"{symbol}|1|2", f"{symbol}|1|1|1|1|abc|1|1", f"{symbol}|1|1|1|1|200|1|x", ""):
        await services.redis.xadd(stream, {"q": bad})
    await settle()
    assert (await status(services, alert.id))[0] == "ACTIVE"
    await quote(services, symbol, "101", "101", "101")
    await wait_triggered(services, alert.id)
