"""The market clock against the NYSE calendar (exchange-calendars)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from services.market_data.clock import MarketClock, MarketSession

CLOCK = MarketClock()


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@pytest.mark.parametrize(
    ("moment", "is_open"),
    [
        ("2026-11-25T14:29:00", False),  # 9:29 in New York
        ("2026-11-25T14:30:00", True),  # 9:30: the open
        ("2026-11-25T20:59:00", True),
        ("2026-11-25T21:00:00", False),  # 16:00: the close
        ("2026-11-26T15:00:00", False),  # Thanksgiving
        ("2026-11-28T15:00:00", False),  # a Saturday
        ("2026-11-27T17:59:00", True),  # the day after Thanksgiving closes early, at 13:00
        ("2026-11-27T18:00:00", False),
        ("2026-07-06T13:30:00", True),  # summer time: the open is 13:30 UTC
    ],
)
def test_regular_hours_holidays_and_early_closes(moment: str, is_open: bool) -> None:
    assert CLOCK.state(at(moment)).is_open is is_open


def test_next_open_and_close_skip_the_holiday() -> None:
    state = CLOCK.state(at("2026-11-25T22:00:00"))
    assert state.next_open == at("2026-11-27T14:30:00")
    assert state.next_close == at("2026-11-27T18:00:00")


def test_always_open_for_demos() -> None:
    state = MarketClock(always_open=True).state(at("2026-11-26T15:00:00"))
    assert state.is_open is True
    assert state.next_open == at("2026-11-27T14:30:00")


@pytest.mark.parametrize(
    ("moment", "session"),
    [
        ("2026-11-25T08:59:00", MarketSession.CLOSED),  # 3:59 in New York
        ("2026-11-25T09:00:00", MarketSession.PRE),  # 4:00
        ("2026-11-25T14:29:00", MarketSession.PRE),
        ("2026-11-25T14:30:00", MarketSession.REGULAR),
        ("2026-11-25T21:00:00", MarketSession.POST),  # 16:00
        ("2026-11-26T00:59:00", MarketSession.POST),  # 19:59
        ("2026-11-26T01:00:00", MarketSession.CLOSED),  # 20:00
        ("2026-11-26T15:00:00", MarketSession.CLOSED),  # Thanksgiving: no session at all
        ("2026-11-27T18:00:00", MarketSession.POST),  # an early close: POST 13:00-17:00
        ("2026-11-27T21:59:00", MarketSession.POST),
        ("2026-11-27T22:00:00", MarketSession.CLOSED),
        ("2026-07-06T08:00:00", MarketSession.PRE),  # summer time: PRE starts 08:00 UTC
    ],
)
def test_sessions_of_the_trading_day(moment: str, session: MarketSession) -> None:
    state = CLOCK.state(at(moment))
    assert state.session is session
    assert state.is_open is (session is MarketSession.REGULAR)


def test_a_forced_session_wins_over_the_calendar_and_always_open() -> None:
    clock = MarketClock(always_open=True, session="POST")
    assert clock.session(at("2026-11-25T15:00:00")) is MarketSession.POST
    assert clock.is_open(at("2026-11-25T15:00:00")) is False
    assert MarketClock(always_open=True).session(at("2026-11-26T15:00:00")) is (
        MarketSession.REGULAR
    )


@pytest.mark.parametrize(
    ("moment", "previous_close"),
    [
        ("2026-11-25T15:00:00", "2026-11-24T21:00:00"),  # during the day: yesterday's close
        ("2026-11-25T23:00:00", "2026-11-24T21:00:00"),  # during POST: still yesterday's
        ("2026-11-26T02:00:00", "2026-11-25T21:00:00"),  # after POST: the next day is Friday
        ("2026-11-27T15:00:00", "2026-11-25T21:00:00"),  # Friday: Wednesday's close
        ("2026-11-30T10:00:00", "2026-11-27T18:00:00"),  # Monday's PRE: Friday's early close
    ],
)
def test_the_previous_close_is_the_last_close_before_the_trading_day(
    moment: str, previous_close: str
) -> None:
    assert CLOCK.previous_close(at(moment)) == at(previous_close)


def test_an_end_of_day_run_by_hand_cuts_at_the_days_close() -> None:
    from services.orders.eod import _close_of

    assert _close_of(at("2026-11-25T00:00:00").date()) == at("2026-11-25T21:00:00")
    before = datetime.now(UTC)
    assert _close_of(at("2026-11-26T00:00:00").date()) >= before  # Thanksgiving: no close
