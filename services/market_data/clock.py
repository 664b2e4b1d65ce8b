"""The US equity market clock: NYSE trading days, holidays and early closes from exchange-calendars
(XNYS), and the sessions of a trading day in New York time: PRE 04:00 to the open (9:30), REGULAR
to the close (16:00, or 13:00 on an early close), POST from the close for four hours (to 20:00, or
17:00), CLOSED otherwise. `is_open` means REGULAR.

A session can be forced (`TRADEQL_MARKET_SESSION`, or `TRADEQL_MARKET_ALWAYS_OPEN` for REGULAR)
for tests and demos; the next open and close, and the session boundaries that end-of-day work
keys on, always follow the real calendar.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from enum import StrEnum
from functools import cached_property
from typing import Any
from zoneinfo import ZoneInfo

NEW_YORK = ZoneInfo("America/New_York")
PRE_START = time(4, 0)
POST_LENGTH = timedelta(hours=4)


class MarketSession(StrEnum):
    PRE = "PRE"
    REGULAR = "REGULAR"
    POST = "POST"
    CLOSED = "CLOSED"


EXTENDED = frozenset({MarketSession.PRE, MarketSession.POST})


@dataclass(frozen=True, slots=True)
class TradingDay:
    """One NYSE trading day's sessions, as UTC instants."""

    day: date
    pre_start: datetime
    open: datetime
    close: datetime
    post_end: datetime

    def session_at(self, now: datetime) -> MarketSession:
        if self.pre_start <= now < self.open:
            return MarketSession.PRE
        if self.open <= now < self.close:
            return MarketSession.REGULAR
        if self.close <= now < self.post_end:
            return MarketSession.POST
        return MarketSession.CLOSED


@dataclass(frozen=True, slots=True)
class ClockState:
    now: datetime
    is_open: bool
    next_open: datetime
    next_close: datetime
    session: MarketSession = MarketSession.CLOSED


class MarketClock:
    def __init__(
        self, *, always_open: bool = False, session: MarketSession | str | None = None
    ) -> None:
        self.always_open = always_open
        # A forced session (tests, demos); None follows the calendar.
        self.forced: MarketSession | None = (
            MarketSession(session) if session else MarketSession.REGULAR if always_open else None
        )
        self._days: dict[date, TradingDay | None] = {}

    @cached_property
    def _calendar(self) -> Any:
        import exchange_calendars  # loads pandas: only where the clock is used

        return exchange_calendars.get_calendar("XNYS")

    def trading_day(self, day: date) -> TradingDay | None:
        """The sessions of `day` (a New York date), or None when the exchange does not trade."""
        if day not in self._days:
            calendar = self._calendar
            if not calendar.is_session(day.isoformat()):
                self._days[day] = None
            else:
                opens = calendar.session_open(day.isoformat()).to_pydatetime()
                closes = calendar.session_close(day.isoformat()).to_pydatetime()
                pre = datetime.combine(day, PRE_START, NEW_YORK).astimezone(UTC)
                self._days[day] = TradingDay(day, pre, opens, closes, closes + POST_LENGTH)
        return self._days[day]

    def calendar_session(self, now: datetime | None = None) -> MarketSession:
        """The session by the exchange calendar alone."""
        now = now or datetime.now(UTC)
        today = self.trading_day(now.astimezone(NEW_YORK).date())
        return today.session_at(now) if today is not None else MarketSession.CLOSED

    def session(self, now: datetime | None = None) -> MarketSession:
        return self.forced or self.calendar_session(now)

    def current_or_next_day(self, now: datetime | None = None) -> TradingDay:
        """The trading day whose sessions are under way or come next: today's until its POST
        ends, else the next trading day."""
        now = now or datetime.now(UTC)
        day = now.astimezone(NEW_YORK).date()
        for _ in range(30):  # no exchange closes for a month
            found = self.trading_day(day)
            if found is not None and now < found.post_end:
                return found
            day += timedelta(days=1)
        raise RuntimeError(f"no NYSE trading day within 30 days of {now}")

    def previous_close(self, now: datetime | None = None) -> datetime:
        """The last regular close before the current (or next) trading day: what "today's
        change" is measured from."""
        current = self.current_or_next_day(now)
        day = current.day - timedelta(days=1)
        for _ in range(30):
            found = self.trading_day(day)
            if found is not None:
                return found.close
            day -= timedelta(days=1)
        raise RuntimeError(f"no NYSE trading day within 30 days before {current.day}")

    def state(self, now: datetime | None = None) -> ClockState:
        import pandas as pd

        now = now or datetime.now(UTC)
        minute = pd.Timestamp(now).tz_convert("UTC").floor("min")
        calendar = self._calendar
        session = self.session(now)
        return ClockState(
            now=now,
            is_open=session is MarketSession.REGULAR,
            next_open=calendar.next_open(minute).to_pydatetime(),
            next_close=calendar.next_close(minute).to_pydatetime(),
            session=session,
        )

    def is_open(self, now: datetime | None = None) -> bool:
        return self.session(now) is MarketSession.REGULAR
