"""The market clock against the NYSE calendar (exchange-calendars)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from services.market_data.clock import MarketClock

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
