"""One-minute bars: the builder on hand-computed quotes, the merging upsert, the SQL roll-ups to
five minutes, hours and New York days, and the bars worker end to end over real streams."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from services.infra.container import Services
from services.infra.db import asyncpg_url
from services.infra.settings import Settings
from services.infra.streams import quote_stream, quote_streams
from services.market_data.bars import (
    NS_PER_MINUTE,
    Bar,
    BarBuilder,
    Bars,
    Interval,
    MinuteBar,
    upsert_bars,
)
from services.market_data.marketdata import Quote
from workers.bars import GROUP, BarsWorker
from workers.feed import StreamPublisher

S = 1_000_000_000  # one second in nanoseconds
D = Decimal


def ns(moment: str) -> int:
    return int(datetime.fromisoformat(moment).timestamp()) * S


def utc(moment: str) -> datetime:
    return datetime.fromisoformat(moment).astimezone(UTC)


M = ns("2026-11-24T15:00:00+00:00")  # a minute's start
assert M % NS_PER_MINUTE == 0


async def eventually(predicate: Callable[[], object], within: float = 5) -> None:
    """Poll `predicate` (sync or async) until it is truthy, or fail after `within` seconds."""
    deadline = time.monotonic() + within
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


def built(builder: BarBuilder) -> list[MinuteBar]:
    return sorted(builder.take_dirty(), key=lambda b: (b.symbol, b.start_ns))


# --- BarBuilder --------------------------------------------------------------------------------


def test_a_minute_of_quotes_makes_one_bar_and_the_next_minute_a_new_one() -> None:
    builder = BarBuilder()
    for last, volume, at in [("10.00", 1000, 1), ("10.50", 1100, 10), ("9.80", 1250, 30)]:
        builder.apply("BBA", D(last), volume, M + at * S)
    builder.apply("BBA", D("10.20"), 1300, M + 59 * S + 999_999_999)
    assert built(builder) == [
        MinuteBar(
            "BBA",
            M,
            open=D("10.00"),
            high=D("10.50"),
            low=D("9.80"),
            close=D("10.20"),
            open_ns=M + 1 * S,
            close_ns=M + 59 * S + 999_999_999,
            volume_start=1000,  # first sight: its own volume (what came before is unknown)
            volume_end=1300,
        )
    ]
    builder.apply("BBA", D("10.30"), 1400, M + 60 * S)  # exactly the next minute
    builder.apply("BBA", D("10.25"), 1420, M + 61 * S)
    (bar,) = built(builder)  # only the new minute changed
    assert bar == MinuteBar(
        "BBA", M + 60 * S, D("10.30"), D("10.30"), D("10.25"), D("10.25"), M + 60 * S, M + 61 * S,
        volume_start=1300,  # the cumulative volume of the quote before it
        volume_end=1420,
    )  # fmt: skip
    assert bar.volume_end - bar.volume_start == 120
    assert bar.start == datetime(2026, 11, 24, 15, 1, tzinfo=UTC)


def test_quotes_without_a_trade_make_no_bar() -> None:
    builder = BarBuilder()
    builder.apply("BBN", D("0.00"), 0, M + S)
    assert builder.take_dirty() == []
    builder.apply("BBN", D("5.00"), 10, M + 2 * S)
    builder.apply("BBN", D("0"), 10, M + 3 * S)
    (bar,) = built(builder)
    assert (bar.open, bar.close, bar.close_ns) == (D("5.00"), D("5.00"), M + 2 * S)


def test_symbols_are_built_apart() -> None:
    builder = BarBuilder()
    builder.apply("BBX", D("1.00"), 10, M + S)
    builder.apply("BBY", D("2.00"), 20, M + 2 * S)
    builder.apply("BBX", D("1.50"), 15, M + 3 * S)
    x, y = built(builder)
    assert (x.symbol, x.open, x.close, x.volume_start, x.volume_end) == ("BBX", 1, D("1.5"), 10, 15)
    assert (y.symbol, y.open, y.close, y.volume_start, y.volume_end) == ("BBY", 2, 2, 20, 20)


def test_out_of_order_quotes_within_a_minute() -> None:
    """Open and close go by source time, not arrival; a late quote's lower cumulative volume is
    not a volume reset, so the next minute still starts from the newest quote's volume."""
    builder = BarBuilder()
    builder.apply("BBO", D("10.00"), 100, M + 10 * S)
    builder.apply("BBO", D("12.00"), 300, M + 30 * S)
    builder.apply("BBO", D("11.00"), 200, M + 20 * S)  # late
    builder.apply("BBO", D("9.50"), 90, M + 5 * S)  # late, and earlier than the open
    builder.apply("BBO", D("13.00"), 400, M + 65 * S)  # the next minute
    first, second = built(builder)
    assert first == MinuteBar(
        "BBO", M, open=D("9.50"), high=D("12.00"), low=D("9.50"), close=D("12.00"),
        open_ns=M + 5 * S, close_ns=M + 30 * S,
        volume_start=90,  # the 10 shares between 0:05 and 0:10 were traded in this minute
        volume_end=300,
    )  # fmt: skip
    assert (second.start_ns, second.open, second.volume_start, second.volume_end) == (
        M + 60 * S,
        D("13.00"),
        300,  # the newest quote before it (0:30), not the last to arrive (0:05)
        400,
    )


def test_a_straggler_from_a_closed_minute_is_dropped_and_changes_nothing() -> None:
    builder = BarBuilder()
    builder.apply("BBS", D("10.00"), 100, M + 10 * S)
    builder.apply("BBS", D("11.00"), 200, M + 70 * S)  # minute 1 starts
    builder.take_dirty()
    builder.apply("BBS", D("99.00"), 150, M + 50 * S)  # minute 0 is closed here
    assert builder.take_dirty() == []
    builder.apply("BBS", D("12.00"), 260, M + 130 * S)  # minute 2
    (bar,) = built(builder)
    assert (bar.start_ns, bar.volume_start, bar.volume_end) == (M + 120 * S, 200, 260)


def test_a_volume_reset_starts_counting_again() -> None:
    """The day's volume starts again from zero (a new session): the first quote after the reset
    is treated like a first sight (its own volume is the baseline), the ones after it count."""
    builder = BarBuilder()
    builder.apply("BBR", D("50.00"), 5_000_000, M - 60 * S)
    builder.take_dirty()
    day = M + 18 * 3600 * S  # the next morning
    builder.apply("BBR", D("51.00"), 300, day + 5 * S)
    builder.apply("BBR", D("51.50"), 450, day + 30 * S)
    builder.apply("BBR", D("51.25"), 500, day + 65 * S)
    first, second = built(builder)
    assert (first.start_ns, first.volume_start, first.volume_end) == (day, 300, 450)
    assert (first.open, first.high, first.low, first.close) == (
        D("51.00"),
        D("51.50"),
        D("51.00"),
        D("51.50"),
    )
    assert (second.start_ns, second.volume_start, second.volume_end) == (day + 60 * S, 450, 500)


# --- upsert ----------------------------------------------------------------------------------

ROW = text(
    "SELECT open, high, low, close, open_ns, close_ns, volume_start, volume_end "
    "FROM bars_1m WHERE symbol = :s ORDER BY start"
)


async def rows(engine: AsyncEngine, symbol: str) -> list[tuple[object, ...]]:
    async with engine.connect() as conn:
        return [tuple(r) for r in await conn.execute(ROW, {"s": symbol})]


def minute_bar(symbol: str, *values: object) -> MinuteBar:
    o, h, low, c, open_at, close_at, vs, ve = values
    return MinuteBar(
        symbol, M, D(str(o)), D(str(h)), D(str(low)), D(str(c)), M + int(str(open_at)) * S,
        M + int(str(close_at)) * S, int(str(vs)), int(str(ve)),
    )  # fmt: skip


async def test_upserting_the_same_bar_twice_leaves_one_identical_row(services: Services) -> None:
    bar = minute_bar("UPS1", "10.00", "12.00", "9.50", "11.00", 5, 30, 1000, 1200)
    for _ in range(2):
        async with services.engine.begin() as conn:
            await upsert_bars(conn, [bar])
    assert await rows(services.engine, "UPS1") == [
        (D("10.00"), D("12.00"), D("9.50"), D("11.00"), M + 5 * S, M + 30 * S, 1000, 1200)
    ]


@pytest.mark.parametrize("symbol,reverse", [("UPS2", False), ("UPS3", True)])
async def test_two_partial_views_of_a_minute_merge(
    services: Services, symbol: str, reverse: bool
) -> None:
    """Two consumers (or a replay) saw different parts of one minute: whichever is written first,
    the row ends with the earliest open, the latest close, the extremes and the widest volume."""
    a = minute_bar(symbol, "10.00", "12.00", "9.50", "11.00", 5, 30, 1000, 1200)
    b = minute_bar(symbol, "10.50", "11.50", "9.00", "10.80", 2, 50, 900, 1300)
    for bar in [b, a] if reverse else [a, b]:
        async with services.engine.begin() as conn:
            await upsert_bars(conn, [bar])
    assert await rows(services.engine, symbol) == [
        (D("10.50"), D("12.00"), D("9.00"), D("10.80"), M + 2 * S, M + 50 * S, 900, 1300)
    ]


# --- roll-ups --------------------------------------------------------------------------------


async def insert_rows(services: Services, symbol: str, rows: Sequence[tuple[object, ...]]) -> None:
    """Rows of (start, open, high, low, close, volume_start, volume_end), in the given order."""
    async with services.engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO bars_1m VALUES (:s, :t, :o, :h, :l, :c, 0, 0, :vs, :ve) "
                "ON CONFLICT DO NOTHING"
            ),
            [
                {
                    "s": symbol,
                    "t": utc(str(t)),
                    "o": D(str(o)),
                    "h": D(str(h)),
                    "l": D(str(low)),
                    "c": D(str(c)),
                    "vs": vs,
                    "ve": ve,
                }
                for t, o, h, low, c, vs, ve in rows
            ],
        )


INTRADAY = [  # inserted out of order on purpose: open/close must follow `start`
    ("2026-11-24T16:00:00+00:00", "103.00", "103.50", "102.50", "103.10", 1500, 1520),
    ("2026-11-24T15:03:00+00:00", "101.75", "101.80", "100.10", "100.20", 1250, 1300),
    ("2026-11-24T14:58:00+00:00", "100.00", "101.00", "99.50", "100.50", 1000, 1100),
    ("2026-11-24T15:05:00+00:00", "100.80", "103.00", "100.70", "102.90", 1310, 1500),
    ("2026-11-24T15:00:00+00:00", "100.50", "102.00", "100.25", "101.75", 1100, 1250),
    ("2026-11-24T15:04:00+00:00", "100.20", "100.90", "100.00", "100.80", 1300, 1310),
]


def bar(start: str, o: str, h: str, low: str, c: str, volume: int) -> Bar:
    return Bar(utc(start), D(o), D(h), D(low), D(c), volume)


@pytest.fixture
async def intraday(services: Services) -> str:
    await insert_rows(services, "RBA1", INTRADAY)
    await insert_rows(services, "RBA2", [("2026-11-24T15:01:00+00:00", 7, 8, 6, 7.5, 10, 25)])
    return "RBA1"


async def test_five_minute_bars(services: Services, intraday: str) -> None:
    got = await services.bars.for_symbols(
        ["RBA1", "RBA2", "RBA9"],
        Interval.FIVE_MINUTES,
        utc("2026-11-24T14:55:00+00:00"),
        utc("2026-11-24T16:05:00+00:00"),
    )
    assert got == {
        "RBA1": [
            bar("2026-11-24T14:55:00+00:00", "100.00", "101.00", "99.50", "100.50", 100),
            # 15:00, 15:03 and 15:04: 150 + 50 + 10
            bar("2026-11-24T15:00:00+00:00", "100.50", "102.00", "100.00", "100.80", 210),
            bar("2026-11-24T15:05:00+00:00", "100.80", "103.00", "100.70", "102.90", 190),
            bar("2026-11-24T16:00:00+00:00", "103.00", "103.50", "102.50", "103.10", 20),
        ],
        "RBA2": [bar("2026-11-24T15:00:00+00:00", "7", "8", "6", "7.5", 15)],
        "RBA9": [],
    }


HOURLY = [
    bar("2026-11-24T14:00:00+00:00", "100.00", "101.00", "99.50", "100.50", 100),
    bar("2026-11-24T15:00:00+00:00", "100.50", "103.00", "100.00", "102.90", 400),
    bar("2026-11-24T16:00:00+00:00", "103.00", "103.50", "102.50", "103.10", 20),
]


async def test_hour_bars_and_the_window(services: Services, intraday: str) -> None:
    day = (utc("2026-11-24T00:00:00+00:00"), utc("2026-11-25T00:00:00+00:00"))
    assert await services.bars.for_symbols(["RBA1"], Interval.HOUR, *day) == {"RBA1": HOURLY}
    # The window takes one-minute bars with start <= t < end.
    window = (utc("2026-11-24T15:00:00+00:00"), utc("2026-11-24T16:00:00+00:00"))
    assert await services.bars.for_symbols(["RBA1"], Interval.HOUR, *window) == {
        "RBA1": [HOURLY[1]]
    }


async def test_roll_ups_do_not_depend_on_the_session_time_zone(
    settings: Settings, intraday: str
) -> None:
    """A server (or role) set to a half-hour zone must still give bars on the hour."""
    assert settings.database_url is not None
    engine = create_async_engine(
        asyncpg_url(settings.database_url),
        connect_args={"server_settings": {"timezone": "Asia/Kolkata"}},
    )
    try:
        async with engine.connect() as conn:
            assert (await conn.execute(text("SHOW timezone"))).scalar() == "Asia/Kolkata"
        bars = Bars(engine)
        day = (utc("2026-11-24T00:00:00+00:00"), utc("2026-11-25T00:00:00+00:00"))
        assert await bars.for_symbols(["RBA1"], Interval.HOUR, *day) == {"RBA1": HOURLY}
        five = await bars.for_symbols(["RBA1"], Interval.FIVE_MINUTES, *day)
        assert [b.start.minute for b in five["RBA1"]] == [55, 0, 5, 0]
    finally:
        await engine.dispose()


async def test_day_bars_are_new_york_calendar_days(services: Services) -> None:
    await insert_rows(
        services,
        "RBD1",
        [
            # 23:59 on Nov 23 in New York (EST, UTC-5)
            ("2026-11-24T04:59:00+00:00", "10", "11", "9", "10.5", 0, 100),
            ("2026-11-24T14:30:00+00:00", "20", "22", "19", "21", 100, 300),  # 09:30 Nov 24
            ("2026-11-24T23:30:00+00:00", "21", "25", "20.5", "24", 300, 350),  # 18:30 Nov 24
            ("2026-11-25T04:30:00+00:00", "24", "24.5", "18", "18.5", 350, 360),  # 23:30 Nov 24
            ("2026-11-25T05:00:00+00:00", "18.5", "19", "18", "18.75", 0, 40),  # 00:00 Nov 25
            # Summer (EDT, UTC-4): 23:30 on June 30, then midnight of July 1
            ("2026-07-01T03:30:00+00:00", "5", "5", "5", "5", 0, 10),
            ("2026-07-01T04:00:00+00:00", "6", "6.5", "6", "6.25", 10, 15),
        ],
    )
    november = await services.bars.for_symbols(
        ["RBD1"],
        Interval.DAY,
        utc("2026-11-23T00:00:00+00:00"),
        utc("2026-11-26T00:00:00+00:00"),
    )
    assert november == {
        "RBD1": [
            bar("2026-11-23T05:00:00+00:00", "10", "11", "9", "10.5", 100),
            bar("2026-11-24T05:00:00+00:00", "20", "25", "18", "18.5", 200 + 50 + 10),
            bar("2026-11-25T05:00:00+00:00", "18.5", "19", "18", "18.75", 40),
        ]
    }
    summer = await services.bars.for_symbols(
        ["RBD1"], Interval.DAY, utc("2026-06-30T00:00:00+00:00"), utc("2026-07-02T00:00:00+00:00")
    )
    assert summer == {
        "RBD1": [
            bar("2026-06-30T04:00:00+00:00", "5", "5", "5", "5", 10),
            bar("2026-07-01T04:00:00+00:00", "6", "6.5", "6", "6.25", 5),
        ]
    }


# --- BarsWorker ------------------------------------------------------------------------------


async def pending(services: Services, settings: Settings) -> int:
    total = 0
    for stream in quote_streams(settings.quote_partitions):
        total += (await services.redis.xpending(stream, GROUP))["pending"]
    return total


def q(last: str, volume: int, at: int) -> Quote:
    """A quote of BWE1 at `at` seconds after 16:00 UTC."""
    start = ns("2026-11-24T16:00:00+00:00")
    price = D(last)
    return Quote("BWE1", price, price, 1, 1, price, volume, start + at * S)


@pytest.fixture
async def bars_worker(services: Services, settings: Settings) -> AsyncIterator[BarsWorker]:
    fast = settings.model_copy(update={"bars_flush_ms": 100})
    worker = BarsWorker(services.engine, services.redis, fast)
    await worker.group.ensure()  # created at the streams' end: before anything is produced
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    yield worker
    stop.set()
    await asyncio.wait_for(task, 3)


async def test_the_bars_worker_builds_upserts_and_acks(
    services: Services, settings: Settings, bars_worker: BarsWorker
) -> None:
    publisher = StreamPublisher(services.redis, settings, "test")
    upserted_before = REGISTRY.get_sample_value("tradeql_bars_upserted_total") or 0.0
    assert await publisher.publish([q("10.00", 1000, 5), q("10.40", 1100, 20)])
    assert await publisher.publish([q("9.90", 1150, 40), q("0.00", 1150, 45)])  # no trade: skipped
    await services.redis.xadd(quote_stream(0), {"q": "BWE1|junk"})
    assert await publisher.publish([q("10.10", 1300, 65)])
    start = ns("2026-11-24T16:00:00+00:00")
    expected = [
        (D("10.00"), D("10.40"), D("9.90"), D("9.90"), start + 5 * S, start + 40 * S, 1000, 1150),
        (
            D("10.10"),
            D("10.10"),
            D("10.10"),
            D("10.10"),
            start + 65 * S,
            start + 65 * S,
            1150,
            1300,
        ),
    ]

    async def written() -> bool:
        return await rows(services.engine, "BWE1") == expected

    await eventually(written)
    await eventually(lambda: _none_pending(services, settings))
    assert (REGISTRY.get_sample_value("tradeql_bars_upserted_total") or 0.0) >= upserted_before + 2
    minutes = await services.bars.for_symbols(
        ["BWE1"],
        Interval.MINUTE,
        utc("2026-11-24T16:00:00+00:00"),
        utc("2026-11-24T16:02:00+00:00"),
    )
    assert [(b.start.minute, b.volume) for b in minutes["BWE1"]] == [(0, 150), (1, 150)]


async def _none_pending(services: Services, settings: Settings) -> bool:
    return await pending(services, settings) == 0
