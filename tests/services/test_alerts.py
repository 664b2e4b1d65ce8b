"""Price alerts: the threshold index (against brute force), and the service's rules in PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from uuid import UUID

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from services.alerts import price_alerts as alerts
from services.alerts.alert_index import AlertIndex, Condition, WatchedAlert, from_ticks, to_ticks
from services.alerts.price_alerts import AlertStatus, Change, Crossing, PriceAlert, Triggered
from services.errors import InvalidInput, LimitExceeded, NotCancellable, NotFound, UnknownSymbol
from services.infra.container import Services
from tests.trading import listed, trader, unique_symbol

D = Decimal
ABOVE, BELOW = Condition.ABOVE, Condition.BELOW


def watched(
    condition: Condition, threshold: str, *, symbol: str = "AAPL", created_us: int = 0
) -> WatchedAlert:
    return WatchedAlert(uuid.uuid4(), symbol, condition, to_ticks(D(threshold)), created_us)


# -- the index ---------------------------------------------------------------------------------


def test_above_triggers_at_or_over_the_threshold_and_below_at_or_under() -> None:
    index = AlertIndex()
    above, below = watched(ABOVE, "101.00"), watched(BELOW, "99.00")
    index.add_many([above, below])
    assert index.cross("AAPL", D("100.99"), 1) == []
    assert index.cross("AAPL", D("99.01"), 1) == []
    assert index.cross("AAPL", D("101.00"), 1) == [above]
    assert index.cross("AAPL", D("99.00"), 1) == [below]
    assert len(index) == 0
    assert "AAPL" not in index.symbols()


def test_a_crossed_alert_leaves_the_index_so_it_is_returned_once() -> None:
    index = AlertIndex()
    alert = watched(ABOVE, "10")
    index.add(alert)
    assert index.cross("AAPL", D("11"), 1) == [alert]
    assert index.cross("AAPL", D("12"), 2) == []
    assert alert.id not in index


def test_a_quote_crosses_only_its_own_symbol() -> None:
    index = AlertIndex()
    index.add(watched(ABOVE, "10", symbol="MSFT"))
    assert index.cross("AAPL", D("50"), 1) == []
    assert len(index) == 1


def test_a_quote_without_a_last_price_crosses_nothing() -> None:
    index = AlertIndex()
    index.add_many([watched(BELOW, "5"), watched(ABOVE, "0.0001")])
    for last in ("0", "0.00", "-1", "NaN", "Infinity"):
        assert index.cross("AAPL", D(last), 1) == [], last
    assert len(index) == 2


def test_a_quote_stamped_before_the_alert_was_created_does_not_cross_it() -> None:
    index = AlertIndex()
    old, new = watched(ABOVE, "10", created_us=100), watched(ABOVE, "10", created_us=300)
    index.add_many([old, new])
    assert index.cross("AAPL", D("11"), 200) == [old]
    assert new.id in index
    assert index.cross("AAPL", D("11"), 300) == [new]


def test_prices_off_the_grid_compare_exactly() -> None:
    index = AlertIndex()
    above, below = watched(ABOVE, "1.0001"), watched(BELOW, "1.0000")
    index.add_many([above, below])
    assert index.cross("AAPL", D("1.00005"), 1) == []  # above 1.0000, below 1.0001
    assert index.cross("AAPL", D("1.00010000001"), 1) == [above]
    assert index.cross("AAPL", D("0.99999999"), 1) == [below]


def test_ticks_are_exact_and_refuse_prices_off_the_grid() -> None:
    assert to_ticks(D("187.25")) == 1_872_500
    assert to_ticks(D("0.0001")) == 1
    assert from_ticks(1_872_500) == D("187.25")
    for bad in ("0.00001", "NaN", "Infinity"):
        with pytest.raises(ValueError):
            to_ticks(D(bad))


def test_removed_alerts_are_skipped_and_never_returned() -> None:
    index = AlertIndex()
    keep, drop = watched(ABOVE, "10"), watched(ABOVE, "9")
    index.add_many([keep, drop])
    assert index.remove(drop.id) == drop
    assert index.remove(drop.id) is None
    assert index.cross("AAPL", D("20"), 1) == [keep]


def test_adding_a_watched_alert_again_changes_nothing() -> None:
    index = AlertIndex()
    alert = watched(BELOW, "10")
    assert index.add(alert) is True
    assert index.add(alert) is False
    assert index.add_many([alert]) == 0
    assert index.cross("AAPL", D("5"), 1) == [alert]


def test_a_quote_touches_only_the_alerts_it_crosses() -> None:
    """The cost of a quote is the alerts it crosses, not the alerts there are."""
    index = AlertIndex()
    index.add_many(watched(ABOVE, f"{100 + i * 0.01:.2f}") for i in range(10_000))
    index.add_many(watched(BELOW, f"{99 - i * 0.01:.2f}") for i in range(10_000))
    index.visited = 0
    assert index.cross("AAPL", D("99.50"), 1) == []
    assert index.visited == 0
    crossed = index.cross("AAPL", D("100.04"), 1)
    assert [a.threshold for a in crossed] == [D(f"100.0{i}") for i in range(5)]
    assert index.visited == 5
    crossed = index.cross("AAPL", D("98.97"), 1)
    assert sorted(a.threshold for a in crossed) == [D("98.97"), D("98.98"), D("98.99"), D("99")]
    assert index.visited == 9


def test_removals_do_not_leave_memory_behind() -> None:
    index = AlertIndex()
    many = [watched(ABOVE, f"{10 + i * 0.01:.2f}") for i in range(5_000)]
    index.add_many(many)
    for alert in many[:-10]:
        index.remove(alert.id)
    heap = index._symbols["AAPL"].above  # the dead entries were compacted away
    assert len(heap.entries) < 200
    assert len(index.cross("AAPL", D("1000"), 1)) == 10
    assert index.symbols() == set()


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_the_index_answers_like_a_scan_of_every_alert(data: st.DataObject) -> None:
    """Random adds, removes and quotes on two symbols: the index crosses exactly the alerts a
    scan of every alert would, and each of them once."""
    index = AlertIndex()
    model: dict[UUID, WatchedAlert] = {}
    made: list[UUID] = []
    for _ in range(data.draw(st.integers(0, 80), label="operations")):
        kind = data.draw(st.sampled_from(["add", "remove", "cross"]))
        symbol = data.draw(st.sampled_from(["AAA", "BBB"]))
        if kind == "add":
            condition = data.draw(st.sampled_from([ABOVE, BELOW]))
            cents = data.draw(st.integers(1, 30))
            created = data.draw(st.integers(0, 5))
            alert = WatchedAlert(uuid.uuid4(), symbol, condition, cents * 100, created)
            made.append(alert.id)
            model[alert.id] = alert
            assert index.add(alert)
        elif kind == "remove" and made:
            alert_id = data.draw(st.sampled_from(made))
            assert (index.remove(alert_id) is not None) == (model.pop(alert_id, None) is not None)
        elif kind == "cross":
            cents = data.draw(st.integers(-1, 32))
            beyond_grid = data.draw(st.sampled_from([0, 3, 5, 9]))  # 0.xx00y
            last = D(cents).scaleb(-2) + D(beyond_grid).scaleb(-5)
            at = data.draw(st.integers(0, 6))
            expected = {
                a.id
                for a in model.values()
                if a.symbol == symbol
                and last > 0
                and a.created_us <= at
                and (
                    (a.condition is ABOVE and last >= a.threshold)
                    or (a.condition is BELOW and last <= a.threshold)
                )
            }
            got = [a.id for a in index.cross(symbol, last, at)]
            assert len(got) == len(set(got))
            assert set(got) == expected
            for alert_id in expected:
                del model[alert_id]
        assert len(index) == len(model)
        assert set(index.symbols()) == {a.symbol for a in model.values()}


# -- the service, in PostgreSQL -----------------------------------------------------------------


@pytest.fixture
async def symbol(services: Services) -> str:
    name = unique_symbol("A")
    await listed(services, name)
    return name


@pytest.fixture
async def owner(services: Services) -> UUID:
    return await trader(services, cash="0")


@pytest.fixture
def limit(services: Services, monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setattr(services.settings, "alert_max_active", 3)
    return 3


async def _status(
    services: Services, alert_id: UUID
) -> tuple[str, datetime | None, Decimal | None]:
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


async def _audit(services: Services, alert_id: UUID) -> list[str]:
    async with services.engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT action FROM audit_log WHERE entity_type = 'price_alert' "
                "AND entity_id = :i ORDER BY id"
            ),
            {"i": str(alert_id)},
        )
        return [r.action for r in rows]


async def _trigger(
    services: Services, alert: PriceAlert, price: str, ts_ns: int | None = None
) -> list[Triggered]:
    crossing = Crossing(alert.id, D(price), ts_ns or time.time_ns())
    async with services.engine.begin() as conn:
        return await alerts.mark_triggered(conn, [crossing])


async def test_an_alert_is_created_active_and_audited(
    services: Services, owner: UUID, symbol: str
) -> None:
    alert = await services.alerts.create(owner, symbol.lower(), ABOVE, D("187.5"))
    assert (alert.user_id, alert.symbol, alert.condition) == (owner, symbol, ABOVE)
    assert alert.threshold == D("187.5")
    assert alert.status is AlertStatus.ACTIVE
    assert alert.triggered_at is None and alert.triggered_price is None
    assert abs(alert.created_at - datetime.now(UTC)) < timedelta(seconds=10)
    assert await _audit(services, alert.id) == ["alert.created"]


async def test_an_unknown_symbol_is_refused(services: Services, owner: UUID) -> None:
    for name in ("NOPE" + uuid.uuid4().hex[:4].upper(), "not a symbol", "", "X" * 40):
        with pytest.raises(UnknownSymbol) as refused:
            await services.alerts.create(owner, name, ABOVE, D("10"))
        assert refused.value.field == "symbol"


@pytest.mark.parametrize(
    "threshold", ["0", "-1", "0.00001", "12.34567", "NaN", "Infinity", "1000000.01", "1e30"]
)
async def test_a_threshold_must_be_a_positive_price_on_the_grid(
    services: Services, owner: UUID, symbol: str, threshold: str
) -> None:
    with pytest.raises(InvalidInput) as refused:
        await services.alerts.create(owner, symbol, BELOW, D(threshold))
    assert refused.value.field == "threshold"


async def test_thresholds_on_the_grid_are_taken_exactly(
    services: Services, owner: UUID, symbol: str
) -> None:
    for threshold in ("0.0001", "12.3456", "999999.9999", "1000000", "5.10000"):
        alert = await services.alerts.create(owner, symbol, BELOW, D(threshold))
        assert alert.threshold == D(threshold)


async def test_a_user_holds_at_most_the_configured_number_of_active_alerts(
    services: Services, owner: UUID, symbol: str, limit: int
) -> None:
    made = [await services.alerts.create(owner, symbol, ABOVE, D(10 + i)) for i in range(limit)]
    with pytest.raises(LimitExceeded):
        await services.alerts.create(owner, symbol, ABOVE, D("99"))
    other = await trader(services, cash="0")  # the limit is per user
    await services.alerts.create(other, symbol, ABOVE, D("99"))
    await services.alerts.cancel(owner, made[0].id)  # a cancelled alert frees its place
    replacement = await services.alerts.create(owner, symbol, ABOVE, D("99"))
    assert (await _trigger(services, replacement, "100"))[0].alert.id == replacement.id
    await services.alerts.create(owner, symbol, ABOVE, D("98"))  # so does a triggered one
    with pytest.raises(LimitExceeded):
        await services.alerts.create(owner, symbol, ABOVE, D("97"))


async def test_concurrent_creates_cannot_pass_the_limit_together(
    services: Services, owner: UUID, symbol: str, limit: int
) -> None:
    results = await asyncio.gather(
        *(services.alerts.create(owner, symbol, BELOW, D(i + 1)) for i in range(10)),
        return_exceptions=True,
    )
    created = [r for r in results if isinstance(r, PriceAlert)]
    refused = [r for r in results if isinstance(r, LimitExceeded)]
    assert (len(created), len(refused)) == (limit, 10 - limit)


async def test_cancel_moves_an_active_alert_to_cancelled_once(
    services: Services, owner: UUID, symbol: str
) -> None:
    alert = await services.alerts.create(owner, symbol, ABOVE, D("10"))
    cancelled = await services.alerts.cancel(owner, alert.id)
    assert cancelled.status is AlertStatus.CANCELLED
    with pytest.raises(NotCancellable) as again:
        await services.alerts.cancel(owner, alert.id)
    assert again.value.field == "id"
    assert await _audit(services, alert.id) == ["alert.created", "alert.cancelled"]


async def test_someone_elses_alert_or_no_alert_is_not_found(
    services: Services, owner: UUID, symbol: str
) -> None:
    alert = await services.alerts.create(owner, symbol, ABOVE, D("10"))
    intruder = await trader(services, cash="0")
    with pytest.raises(NotFound):
        await services.alerts.cancel(intruder, alert.id)
    with pytest.raises(NotFound):
        await services.alerts.cancel(owner, uuid.uuid4())
    assert (await _status(services, alert.id))[0] == "ACTIVE"
    assert await services.alerts.owned_by(intruder) == []


async def test_a_triggered_alert_cannot_be_cancelled(
    services: Services, owner: UUID, symbol: str
) -> None:
    alert = await services.alerts.create(owner, symbol, BELOW, D("10"))
    await _trigger(services, alert, "9.99")
    with pytest.raises(NotCancellable, match="TRIGGERED"):
        await services.alerts.cancel(owner, alert.id)


async def test_a_users_alerts_newest_first_and_by_status(
    services: Services, owner: UUID, symbol: str
) -> None:
    first = await services.alerts.create(owner, symbol, ABOVE, D("10"))
    second = await services.alerts.create(owner, symbol, BELOW, D("5"))
    third = await services.alerts.create(owner, symbol, ABOVE, D("20"))
    await services.alerts.cancel(owner, second.id)
    await _trigger(services, third, "21")
    assert [a.id for a in await services.alerts.owned_by(owner)] == [third.id, second.id, first.id]
    by_status = {s: [a.id for a in await services.alerts.owned_by(owner, s)] for s in AlertStatus}
    assert by_status == {
        AlertStatus.ACTIVE: [first.id],
        AlertStatus.CANCELLED: [second.id],
        AlertStatus.TRIGGERED: [third.id],
    }


async def test_a_trigger_records_the_quotes_price_and_time_once(
    services: Services, owner: UUID, symbol: str
) -> None:
    alert = await services.alerts.create(owner, symbol, ABOVE, D("10"))
    at = datetime.now(UTC).replace(microsecond=123456)
    ts_ns = (at - alerts.EPOCH) // timedelta(microseconds=1) * 1000 + 789
    (fired,) = await _trigger(services, alert, "10.25", ts_ns)
    assert fired.quote_ts_ns == ts_ns
    assert fired.alert.status is AlertStatus.TRIGGERED
    assert (fired.alert.triggered_price, fired.alert.triggered_at) == (D("10.25"), at)
    assert await _status(services, alert.id) == ("TRIGGERED", at, D("10.25"))
    assert await _trigger(services, alert, "11") == []  # never again
    assert await _status(services, alert.id) == ("TRIGGERED", at, D("10.25"))
    assert await _audit(services, alert.id) == ["alert.created", "alert.triggered"]


async def test_a_cancelled_alert_never_triggers(
    services: Services, owner: UUID, symbol: str
) -> None:
    alert = await services.alerts.create(owner, symbol, ABOVE, D("10"))
    await services.alerts.cancel(owner, alert.id)
    assert await _trigger(services, alert, "50") == []
    assert (await _status(services, alert.id))[0] == "CANCELLED"


async def test_racing_triggers_record_each_alert_exactly_once(
    services: Services, owner: UUID, symbol: str
) -> None:
    """Two checkers crossing the same alerts at once, in opposite orders: each alert is
    triggered by exactly one of them, and neither deadlocks."""
    made = [await services.alerts.create(owner, symbol, BELOW, D(50 + i)) for i in range(40)]
    now_ns = time.time_ns()

    async def checker(order: list[PriceAlert], price: str) -> list[UUID]:
        async with services.engine.begin() as conn:
            fired = await alerts.mark_triggered(
                conn, [Crossing(a.id, D(price), now_ns) for a in order]
            )
            await asyncio.sleep(0.05)  # hold the locks while the other one waits
            return [t.alert.id for t in fired]

    one, two = await asyncio.gather(checker(made, "1.00"), checker(made[::-1], "2.00"))
    assert set(one).isdisjoint(two)
    assert set(one) | set(two) == {a.id for a in made}
    for alert in made:
        assert await _audit(services, alert.id) == ["alert.created", "alert.triggered"]


async def test_overlapping_batches_at_once_never_deadlock_and_trigger_once(
    services: Services, owner: UUID, symbol: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As checkers write: each batch one autocommit statement, several at once, the same
    alerts in different orders."""
    monkeypatch.setattr(services.settings, "alert_max_active", 1000)
    rng = random.Random(5)

    async def batch(alerts_in_order: list[PriceAlert]) -> list[UUID]:
        crossings = [Crossing(a.id, D("1"), time.time_ns()) for a in alerts_in_order]
        async with services.engine.connect() as conn:
            autocommit = await conn.execution_options(isolation_level="AUTOCOMMIT")
            return [t.alert.id for t in await alerts.mark_triggered(autocommit, crossings)]

    for _ in range(8):
        made = [await services.alerts.create(owner, symbol, BELOW, D(i + 1)) for i in range(30)]
        orders = [rng.sample(made, k=20) for _ in range(4)]
        results = await asyncio.gather(*(batch(order) for order in orders))
        fired = [alert_id for result in results for alert_id in result]
        assert len(fired) == len(set(fired))
        assert set(fired) == {a.id for order in orders for a in order}


async def test_a_cancel_racing_a_trigger_leaves_one_outcome(
    services: Services, owner: UUID, symbol: str
) -> None:
    for _ in range(10):
        alert = await services.alerts.create(owner, symbol, ABOVE, D("10"))
        cancel, fired = await asyncio.gather(
            services.alerts.cancel(owner, alert.id),
            _trigger(services, alert, "11"),
            return_exceptions=True,
        )
        status = (await _status(services, alert.id))[0]
        if status == "CANCELLED":
            assert isinstance(cancel, PriceAlert) and fired == []
        else:
            assert status == "TRIGGERED" and isinstance(cancel, NotCancellable)
            assert isinstance(fired, list) and len(fired) == 1


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE price_alerts SET status = 'ACTIVE', triggered_at = NULL, triggered_price = NULL",
        "UPDATE price_alerts SET status = 'CANCELLED', cancelled_at = now(), "
        "triggered_at = NULL, triggered_price = NULL",
    ],
)
async def test_the_database_refuses_to_reopen_a_triggered_alert(
    services: Services, owner: UUID, symbol: str, statement: str
) -> None:
    alert = await services.alerts.create(owner, symbol, BELOW, D("10"))
    await _trigger(services, alert, "9")
    with pytest.raises(DBAPIError, match="can no longer change"):
        async with services.engine.begin() as conn:
            await conn.execute(text(statement + " WHERE id = :i"), {"i": alert.id})


async def test_the_database_refuses_to_move_a_threshold(
    services: Services, owner: UUID, symbol: str
) -> None:
    alert = await services.alerts.create(owner, symbol, BELOW, D("10"))
    with pytest.raises(DBAPIError, match="only its status changes"):
        async with services.engine.begin() as conn:
            await conn.execute(
                text("UPDATE price_alerts SET threshold = 11 WHERE id = :i"), {"i": alert.id}
            )
    with pytest.raises(DBAPIError, match="check"):
        async with services.engine.begin() as conn:  # TRIGGERED needs its price and time
            await conn.execute(
                text("UPDATE price_alerts SET status = 'TRIGGERED' WHERE id = :i"), {"i": alert.id}
            )


@pytest.fixture
async def changes(services: Services) -> AsyncIterator[asyncio.Queue[Change]]:
    """What the checkers hear on `alerts:changes`."""
    received: asyncio.Queue[Change] = asyncio.Queue()
    pubsub = services.redis.pubsub()
    await pubsub.subscribe(alerts.changes_channel())

    async def listen() -> None:
        async for message in pubsub.listen():
            if message["type"] == "message":
                await received.put(alerts.decode_change(message["data"]))

    task = asyncio.create_task(listen())
    await asyncio.sleep(0.1)
    yield received
    task.cancel()
    await pubsub.aclose()


async def _next_change_for(queue: asyncio.Queue[Change], alert_id: UUID) -> Change:
    while True:
        change = await asyncio.wait_for(queue.get(), 5)
        if (change.alert and change.alert.id == alert_id) or alert_id in change.gone:
            return change


async def test_creates_and_cancels_are_told_to_the_checkers(
    services: Services, owner: UUID, symbol: str, changes: asyncio.Queue[Change]
) -> None:
    alert = await services.alerts.create(owner, symbol, ABOVE, D("12.5"))
    created = await _next_change_for(changes, alert.id)
    assert created.alert == alert
    assert created.alert.watched() == WatchedAlert(
        alert.id,
        symbol,
        ABOVE,
        125_000,
        (alert.created_at - alerts.EPOCH) // timedelta(microseconds=1),
    )
    await services.alerts.cancel(owner, alert.id)
    assert (await _next_change_for(changes, alert.id)).gone == (alert.id,)


async def test_a_recent_change_is_found_again_in_postgresql(
    services: Services, owner: UUID, symbol: str
) -> None:
    async with services.engine.connect() as conn:
        _, since = await alerts.load_active(conn)
    kept = await services.alerts.create(owner, symbol, ABOVE, D("10"))
    dropped = await services.alerts.create(owner, symbol, ABOVE, D("11"))
    fired = await services.alerts.create(owner, symbol, ABOVE, D("12"))
    await services.alerts.cancel(owner, dropped.id)
    await _trigger(services, fired, "13")
    async with services.engine.connect() as conn:
        found, _ = await alerts.changed_since(conn, since)
    mine = {a.id: active for a, active in found if a.user_id == owner}
    assert mine == {kept.id: True, dropped.id: False}  # a trigger is not a change to re-read


async def test_a_change_still_uncommitted_during_one_resync_is_found_by_the_next(
    services: Services, owner: UUID, symbol: str
) -> None:
    async with services.engine.connect() as conn:
        _, watermark = await alerts.load_active(conn)
    async with services.engine.connect() as slow:
        await slow.execute(  # begun before the re-sync, committed after it
            text(
                "INSERT INTO price_alerts (user_id, symbol, condition, threshold) "
                "VALUES (:u, :s, 'ABOVE', 77)"
            ),
            {"u": owner, "s": symbol},
        )
        async with services.engine.connect() as conn:
            found, next_watermark = await alerts.changed_since(conn, watermark)
        assert [a for a, _ in found if a.user_id == owner] == []
        await slow.commit()
    async with services.engine.connect() as conn:
        found, _ = await alerts.changed_since(conn, next_watermark)
    assert [(a.threshold, active) for a, active in found if a.user_id == owner] == [(D(77), True)]


async def test_the_checkers_load_every_active_alert(
    services: Services, owner: UUID, symbol: str
) -> None:
    alert = await services.alerts.create(owner, symbol, BELOW, D("0.0001"))
    gone = await services.alerts.create(owner, symbol, BELOW, D("2"))
    await services.alerts.cancel(owner, gone.id)
    async with services.engine.connect() as conn:
        loaded, _ = await alerts.load_active(conn)
    by_id = {a.id: a for a in loaded}
    assert by_id[alert.id] == alert.watched()
    assert gone.id not in by_id


def test_the_wire_forms_round_trip() -> None:
    alert = PriceAlert(
        uuid.uuid4(),
        uuid.uuid4(),
        "AAPL",
        BELOW,
        D("187.2500"),
        AlertStatus.TRIGGERED,
        datetime(2026, 11, 25, 14, 30, 0, 123456, tzinfo=UTC),
        datetime(2026, 11, 25, 15, 0, 0, 1, tzinfo=UTC),
        D("187.2400"),
    )
    triggered = Triggered(alert, 1_790_000_000_123_456_789)
    assert alerts.decode_triggered(alerts.encode_triggered(triggered)) == triggered
    for change in (Change(alert=alert), Change(gone=(alert.id, uuid.uuid4()))):
        assert alerts.decode_change(alerts.encode_change(change)) == change
    assert json.loads(alerts.encode_triggered(triggered))["alert"]["threshold"] == "187.2500"
