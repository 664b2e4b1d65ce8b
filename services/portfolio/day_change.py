"""Today's change of an account and of each position, from the last close.

The last close is the regular close before the current trading day (`MarketClock.
previous_close`); a symbol's previous close is the close of its last one-minute bar that started
before it. What moved since is read from what money moves by: each fill's shares from its
execution and its cash from its ledger transaction, deposits from the ledger. So, with
`shares since` and `cash since` the net of the fills after the close (cash negative for buys):

    shares at the close  = shares now - shares since
    position dayChange   = shares now x last - shares at the close x previous close + cash since

which is (last - previous close) x shares held at the close + (last - fill price) x shares bought
since when nothing was sold, and counts a sale's proceeds when something was. The account's
dayChange is the sum over every symbol held or traded (equity now less equity at the close, less
the deposits since); a symbol without a quote, or held at the close without a previous close,
counts no change.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from uuid import UUID

from cachetools import TTLCache
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from services.infra.db import single_read
from services.market_data.clock import MarketClock
from services.money import round_cash

ZERO = Decimal(0)
PERCENT_PLACES = Decimal("0.01")


@dataclass(frozen=True, slots=True)
class Flow:
    """A symbol's fills since the close: net shares bought, and the cash they moved."""

    shares: Decimal = ZERO
    cash: Decimal = ZERO


@dataclass(frozen=True, slots=True)
class DayBaseline:
    since: datetime  # the last close
    flows: dict[str, Flow]
    deposits: Decimal  # cash deposited since the close
    previous_closes: dict[str, Decimal | None] = field(default_factory=dict)

    def previous_close(self, symbol: str) -> Decimal | None:
        return self.previous_closes.get(symbol)

    def position_change(
        self, symbol: str, shares_now: Decimal, last: Decimal | None
    ) -> Decimal | None:
        """None without a price now, or without a previous close for shares held at it."""
        if last is None or last <= 0:
            return None
        flow = self.flows.get(symbol, Flow())
        at_close = shares_now - flow.shares
        close = self.previous_close(symbol)
        if at_close and close is None:
            return None
        return round_cash(shares_now * last - at_close * (close or ZERO) + flow.cash)

    def account_change(self, held: dict[str, Decimal], lasts: dict[str, Decimal | None]) -> Decimal:
        """The sum of every symbol's change: those held now and those traded since."""
        total = ZERO
        for symbol in set(held) | set(self.flows):
            change = self.position_change(symbol, held.get(symbol, ZERO), lasts.get(symbol))
            total += change or ZERO
        return round_cash(total)


def change_percent(change: Decimal, equity_now: Decimal, deposits: Decimal) -> Decimal | None:
    """The change against the equity at the close (equity now less the change and the deposits
    since); None when that was nothing."""
    at_close = equity_now - change - deposits
    if at_close <= 0:
        return None
    return (change * 100 / at_close).quantize(PERCENT_PLACES)


_FLOWS = text(
    """
    SELECT e.symbol,
           sum(CASE WHEN e.side = 'BUY' THEN e.quantity ELSE -e.quantity END) AS shares,
           coalesce(sum(c.amount), 0) AS cash
      FROM executions e
      LEFT JOIN LATERAL (
            SELECT sum(l.amount) AS amount FROM ledger_transactions t
              JOIN ledger_entries l ON l.transaction_id = t.id
             WHERE t.reference = e.venue_execution_id AND t.kind IN ('fill.buy', 'fill.sell')
               AND l.account_id = :account AND l.book = 'cash' AND l.asset = 'USD') c ON true
     WHERE e.user_id = :user AND e.executed_at >= :since
     GROUP BY e.symbol
    """
)
_DEPOSITS = text(
    "SELECT coalesce(sum(l.amount), 0) FROM ledger_entries l "
    "JOIN ledger_transactions t ON t.id = l.transaction_id "
    "WHERE l.account_id = :account AND l.book = 'cash' AND l.asset = 'USD' "
    "AND t.kind = 'deposit' AND t.created_at >= :since"
)
_CLOSES = text(
    "SELECT s.symbol, (SELECT b.close FROM bars_1m b WHERE b.symbol = s.symbol "
    "AND b.start < :since ORDER BY b.start DESC LIMIT 1) AS close "
    "FROM unnest(CAST(:symbols AS text[])) AS s(symbol)"
)


class DayChanges:
    def __init__(self, engine: AsyncEngine, clock: MarketClock) -> None:
        self._engine = engine
        self._clock = clock
        # A symbol's previous close is the same all day: kept a minute, for every request.
        self._closes: TTLCache[tuple[str, datetime], Decimal | None] = TTLCache(
            maxsize=100_000, ttl=60
        )

    async def baseline(self, user_id: UUID, account_id: UUID, held: Iterable[str]) -> DayBaseline:
        since = self._clock.previous_close()
        params = {"user": user_id, "account": account_id, "since": since}
        async with single_read(self._engine) as conn:
            flows = {r.symbol: Flow(r.shares, r.cash) for r in await conn.execute(_FLOWS, params)}
            deposits = (await conn.execute(_DEPOSITS, params)).scalar_one()
            symbols = sorted(set(held) | set(flows))
            missing = [s for s in symbols if (s, since) not in self._closes]
            if missing:
                rows = await conn.execute(_CLOSES, {"symbols": missing, "since": since})
                for r in rows:
                    self._closes[(r.symbol, since)] = r.close
        closes = {s: self._closes.get((s, since)) for s in symbols}
        return DayBaseline(since, flows, deposits, closes)
