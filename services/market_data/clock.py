"""The US equity market clock: regular hours 9:30-16:00 America/New_York on NYSE trading days,
holidays and early closes from exchange-calendars (XNYS)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property
from typing import Any


@dataclass(frozen=True, slots=True)
class ClockState:
    now: datetime
    is_open: bool
    next_open: datetime
    next_close: datetime


class MarketClock:
    def __init__(self, *, always_open: bool = False) -> None:
        self.always_open = always_open

    @cached_property
    def _calendar(self) -> Any:
        import exchange_calendars  # loads pandas: only where the clock is used

        return exchange_calendars.get_calendar("XNYS")

    def state(self, now: datetime | None = None) -> ClockState:
        import pandas as pd

        now = now or datetime.now(UTC)
        minute = pd.Timestamp(now).tz_convert("UTC").floor("min")
        calendar = self._calendar
        is_open = self.always_open or bool(calendar.is_open_on_minute(minute))
        return ClockState(
            now=now,
            is_open=is_open,
            next_open=calendar.next_open(minute).to_pydatetime(),
            next_close=calendar.next_close(minute).to_pydatetime(),
        )

    def is_open(self, now: datetime | None = None) -> bool:
        return self.always_open or self.state(now).is_open
