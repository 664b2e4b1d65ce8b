"""Price bars: one-minute OHLCV built from quotes, rolled up in SQL to longer intervals."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from enum import Enum

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.errors import InvalidInput
from services.infra.replica import ReadRouter

NS_PER_MINUTE = 60_000_000_000
MAX_BARS_PER_REQUEST = 5000


class Interval(Enum):
    MINUTE = "MINUTE"
    FIVE_MINUTES = "FIVE_MINUTES"
    HOUR = "HOUR"
    DAY = "DAY"


INTERVAL_LENGTH = {
    Interval.MINUTE: timedelta(minutes=1),
    Interval.FIVE_MINUTES: timedelta(minutes=5),
    Interval.HOUR: timedelta(hours=1),
    Interval.DAY: timedelta(days=1),
}
# How far back `bars` looks when the caller gives no `from`.
DEFAULT_SPAN = {
    Interval.MINUTE: timedelta(hours=8),
    Interval.FIVE_MINUTES: timedelta(days=5),
    Interval.HOUR: timedelta(days=30),
    Interval.DAY: timedelta(days=365),
}


@dataclass
class MinuteBar:
    """A bar in the making. Volume is the day's cumulative volume at its two edges."""

    symbol: str
    start_ns: int
    open: Decimal
    high: Decimal
    low: Decimal
    close: Decimal
    open_ns: int
    close_ns: int
    volume_start: int
    volume_end: int

    @property
    def start(self) -> datetime:
        return datetime.fromtimestamp(self.start_ns // 1_000_000_000, tz=UTC)


@dataclass(frozen=True, slots=True)
class Bar:
    start: datetime
    open: Decimal
    high: Decimal
    low: Decimal
    close: Decimal
    volume: int


class BarBuilder:
    """Folds quotes (last price, cumulative volume, source time) into one-minute bars."""

    def __init__(self) -> None:
        self.current: dict[str, MinuteBar] = {}
        # Per symbol, (source time, cumulative volume) of the newest quote seen: the baseline of
        # the next minute. A quote that arrives late must not move it back.
        self._newest: dict[str, tuple[int, int]] = {}
        self.dirty: dict[tuple[str, int], MinuteBar] = {}

    def apply(self, symbol: str, last: Decimal, volume: int, ts_ns: int) -> None:
        if last <= 0:
            return  # no trade yet: nothing to chart
        start_ns = ts_ns - ts_ns % NS_PER_MINUTE
        bar = self.current.get(symbol)
        if bar is not None and start_ns < bar.start_ns:
            return  # a straggler from a minute already closed here: dropped
        newest = self._newest.get(symbol)
        late = newest is not None and ts_ns < newest[0]
        if not late:
            self._newest[symbol] = (ts_ns, volume)
        if bar is None or bar.start_ns != start_ns:
            # The day's volume as of the quote before this one; on first sight, or when the day's
            # volume starts again from zero, this quote's own volume.
            baseline = volume if newest is None or volume < newest[1] else newest[1]
            bar = MinuteBar(
                symbol, start_ns, last, last, last, last, ts_ns, ts_ns, baseline, volume
            )
            self.current[symbol] = bar
        else:
            bar.high = max(bar.high, last)
            bar.low = min(bar.low, last)
            if ts_ns >= bar.close_ns:
                bar.close, bar.close_ns = last, ts_ns
            if ts_ns < bar.open_ns:
                bar.open, bar.open_ns = last, ts_ns
            bar.volume_end = max(bar.volume_end, volume)
            if late:  # the volume earlier in this minute: the bar started at most there
                bar.volume_start = min(bar.volume_start, volume)
        self.dirty[(symbol, start_ns)] = bar

    def take_dirty(self) -> list[MinuteBar]:
        bars, self.dirty = list(self.dirty.values()), {}
        return bars


_UPSERT = text(
    """
    INSERT INTO bars_1m (symbol, start, open, high, low, close, open_ns, close_ns,
                         volume_start, volume_end)
    VALUES (:symbol, :start, :open, :high, :low, :close, :open_ns, :close_ns,
            :volume_start, :volume_end)
    ON CONFLICT (symbol, start) DO UPDATE SET
        open = CASE WHEN EXCLUDED.open_ns < bars_1m.open_ns THEN EXCLUDED.open ELSE bars_1m.open END,
        open_ns = LEAST(bars_1m.open_ns, EXCLUDED.open_ns),
        close = CASE WHEN EXCLUDED.close_ns >= bars_1m.close_ns
                     THEN EXCLUDED.close ELSE bars_1m.close END,
        close_ns = GREATEST(bars_1m.close_ns, EXCLUDED.close_ns),
        high = GREATEST(bars_1m.high, EXCLUDED.high),
        low = LEAST(bars_1m.low, EXCLUDED.low),
        volume_start = LEAST(bars_1m.volume_start, EXCLUDED.volume_start),
        volume_end = GREATEST(bars_1m.volume_end, EXCLUDED.volume_end)
    """
)


async def upsert_bars(conn: AsyncConnection, bars: Sequence[MinuteBar]) -> None:
    """Merging, so writing the same bar twice (a replay after a crash) changes nothing."""
    if bars:
        await conn.execute(
            _UPSERT,
            [
                {
                    "symbol": b.symbol,
                    "start": b.start,
                    "open": b.open,
                    "high": b.high,
                    "low": b.low,
                    "close": b.close,
                    "open_ns": b.open_ns,
                    "close_ns": b.close_ns,
                    "volume_start": b.volume_start,
                    "volume_end": b.volume_end,
                }
                for b in bars
            ],
        )


_BUCKET = {
    Interval.MINUTE: "start",
    # Explicitly in UTC: a bare timestamptz literal, and date_trunc, follow the session's
    # TimeZone, which would put hours at :30 past in a half-hour zone.
    Interval.FIVE_MINUTES: "date_bin(interval '5 minutes', start, "
    "timestamptz '2000-01-03 00:00:00+00')",
    Interval.HOUR: "date_trunc('hour', start, 'UTC')",
    # A trading day is a New York calendar day.
    Interval.DAY: "(date_trunc('day', start AT TIME ZONE 'America/New_York') "
    "AT TIME ZONE 'America/New_York')",
}


def _rollup_sql(interval: Interval) -> str:
    bucket = _BUCKET[interval]
    return f"""
        SELECT symbol, {bucket} AS bucket,
               (array_agg(open ORDER BY start))[1] AS open,
               max(high) AS high, min(low) AS low,
               (array_agg(close ORDER BY start DESC))[1] AS close,
               sum(volume_end - volume_start) AS volume
          FROM bars_1m
         WHERE symbol = ANY(:symbols) AND start >= :start AND start < :end
         GROUP BY symbol, bucket
         ORDER BY symbol, bucket
    """


def bucket_window(
    interval: Interval, start: datetime | None, end: datetime | None, now: datetime
) -> tuple[datetime, datetime]:
    end = end or now
    try:
        start = start or end - DEFAULT_SPAN[interval]
    except OverflowError as exc:  # `to` near year 1: no default span before it
        raise InvalidInput(
            "`to` is too early to look back from; give `from` too", field="to"
        ) from exc
    return start, end


class Bars:
    def __init__(self, engine: AsyncEngine, reads: ReadRouter | None = None) -> None:
        self._engine = engine
        self._reads = reads

    async def for_symbols(
        self, symbols: Sequence[str], interval: Interval, start: datetime, end: datetime
    ) -> dict[str, list[Bar]]:
        """Every symbol's bars over one window, in one query (on the replica, if any)."""
        engine = await self._reads.engine_for() if self._reads else self._engine
        async with engine.connect() as conn:
            rows = await conn.execute(
                text(_rollup_sql(interval)),
                {"symbols": list(symbols), "start": start, "end": end},
            )
            result: dict[str, list[Bar]] = {s: [] for s in symbols}
            for r in rows:
                result[r.symbol].append(
                    Bar(r.bucket, r.open, r.high, r.low, r.close, int(r.volume))
                )
        return result
