"""Valuing an account: positions at their last price, P&L by the average-cost method.

One valuation reads the balances and positions once and each quote once, so every total is the
sum of the rows it shows, to the cent. A position without a quote yet is valued at its cost
(no unrealized P&L) in the totals, and shows no market value of its own.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import TypeVar, cast
from uuid import UUID

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from services.accounts.cash import Balances
from services.infra.db import single_read
from services.infra.replica import ReadRouter
from services.market_data.marketdata import Quote
from services.money import round_cash

ZERO = Decimal("0.00")
PRICE_PLACES = Decimal("0.0001")
PERCENT_PLACES = Decimal("0.01")
View = TypeVar("View")


@dataclass(frozen=True, slots=True)
class HeldPosition:
    symbol: str
    quantity: Decimal
    reserved_quantity: Decimal
    cost_basis: Decimal
    realized_pnl: Decimal


@dataclass(frozen=True, slots=True)
class PositionValue:
    position: HeldPosition
    quote: Quote | None
    average_cost: Decimal
    cost_basis: Decimal
    market_value: Decimal | None
    unrealized_pnl: Decimal | None
    unrealized_pnl_percent: Decimal | None
    _view: object = field(default=None, compare=False, repr=False)

    def view(self, present: Callable[[PositionValue], View]) -> View:
        """`present(self)`, made once: a position valued at the same quote is shown the same
        way to every request that reuses it. Every caller must pass the same `present`."""
        if self._view is None:
            object.__setattr__(self, "_view", present(self))
        return cast(View, self._view)


@dataclass(frozen=True, slots=True)
class Valuation:
    balances: Balances
    positions: list[PositionValue]
    market_value: Decimal
    equity: Decimal
    realized_pnl: Decimal
    unrealized_pnl: Decimal


@dataclass(frozen=True, slots=True)
class Holdings:
    """One snapshot of an account. Kept between requests (services/portfolio/holdings_cache.py), it also
    remembers how it was last valued, so a request at the same quotes reuses that."""

    balances: Balances
    positions: list[HeldPosition]  # open ones; never changed once made
    realized_pnl: Decimal  # over every position, closed ones included
    _valued: dict[str, tuple[Quote | None, PositionValue]] = field(
        default_factory=dict, compare=False, repr=False
    )
    _last: list[Valuation] = field(default_factory=list, compare=False, repr=False)
    _totals: list[Decimal] = field(
        default_factory=lambda: [ZERO, ZERO], compare=False, repr=False
    )  # market value and unrealized P&L of the rows in _valued

    @property
    def symbols(self) -> list[str]:
        return [p.symbol for p in self.positions]


def value_position(position: HeldPosition, quote: Quote | None) -> PositionValue:
    cost = round_cash(position.cost_basis)
    average = (position.cost_basis / position.quantity).quantize(PRICE_PLACES)
    if quote is None or quote.last <= 0:
        return PositionValue(position, quote, average, cost, None, None, None)
    market_value = round_cash(position.quantity * quote.last)
    unrealized = market_value - cost
    percent = (unrealized * 100 / cost).quantize(PERCENT_PLACES) if cost else None
    return PositionValue(position, quote, average, cost, market_value, unrealized, percent)


def value(holdings: Holdings, quotes: Mapping[str, Quote | None]) -> Valuation:
    """The account at these quotes. A position whose quote is the very object it was last
    valued at keeps that value (quotes are immutable, and the quote mirror hands out one object
    per published quote), and the totals move by what the others changed; when none moved, the
    whole valuation is the last one. Sums of decimals are exact, so the totals are always the
    sums of the rows."""
    valued, totals = holdings._valued, holdings._totals
    moved = not holdings._last
    for p in holdings.positions:
        quote = quotes.get(p.symbol)
        known = valued.get(p.symbol)
        if known is not None and known[0] is quote:
            continue
        row = value_position(p, quote)
        if known is not None:
            totals[0] -= _counted_value(known[1])
            totals[1] -= known[1].unrealized_pnl or ZERO
        totals[0] += _counted_value(row)
        totals[1] += row.unrealized_pnl or ZERO
        valued[p.symbol] = (quote, row)
        moved = True
    if not moved:
        return holdings._last[0]
    market_value = totals[0]
    valuation = Valuation(
        balances=holdings.balances,
        positions=[valued[p.symbol][1] for p in holdings.positions],
        market_value=market_value,
        equity=holdings.balances.cash + market_value,
        realized_pnl=round_cash(holdings.realized_pnl),
        unrealized_pnl=totals[1],
    )
    holdings._last[:] = [valuation]
    return valuation


def _counted_value(row: PositionValue) -> Decimal:
    """What a row adds to the market value: its own, or its cost while it has no quote."""
    return row.market_value if row.market_value is not None else row.cost_basis


_HOLDINGS = text(
    "SELECT a.user_id, a.id AS account_id, a.cash, a.reserved_cash, p.symbol, p.quantity, "
    "p.reserved_quantity, p.cost_basis, p.realized_pnl "
    "FROM accounts a LEFT JOIN positions p ON p.account_id = a.id "
    "WHERE a.user_id = ANY(:u) ORDER BY a.id, p.symbol"
)


class Portfolios:
    def __init__(self, engine: AsyncEngine, reads: ReadRouter | None = None) -> None:
        self._engine = engine
        self._reads = reads

    async def holdings(self, user_ids: Sequence[UUID]) -> list[Holdings | None]:
        """Balances and positions of many users (the DataLoader's batch) in one round trip.

        One statement is one snapshot, so cash and positions always agree (a fill commits both
        at once), and needs no transaction around it (`single_read`)."""
        async with single_read(self._engine) as conn:
            rows = (await conn.execute(_HOLDINGS, {"u": list(user_ids)})).all()
        accounts: dict[UUID, Balances] = {}
        by_account: dict[UUID, list[HeldPosition]] = {}
        realized: dict[UUID, Decimal] = {}
        for r in rows:
            if r.user_id not in accounts:
                accounts[r.user_id] = Balances(r.account_id, r.cash, r.reserved_cash)
            if r.symbol is None:
                continue  # an account without positions
            realized[r.account_id] = realized.get(r.account_id, ZERO) + r.realized_pnl
            if r.quantity > 0:
                by_account.setdefault(r.account_id, []).append(
                    HeldPosition(
                        r.symbol, r.quantity, r.reserved_quantity, r.cost_basis, r.realized_pnl
                    )
                )
        result: list[Holdings | None] = []
        for user_id in user_ids:
            balances = accounts.get(user_id)
            if balances is None:
                result.append(None)
                continue
            result.append(
                Holdings(
                    balances,
                    by_account.get(balances.account_id, []),
                    realized.get(balances.account_id, ZERO),
                )
            )
        return result

    async def history(
        self, account_id: UUID, since: datetime | None, bucket: str | None
    ) -> list[tuple[datetime, Decimal]]:
        """Equity snapshots since `since`, the last one per bucket (`hour`, `day`), or all."""
        where = "account_id = :a" + (" AND taken_at >= :since" if since else "")
        if bucket is None:
            sql = f"SELECT taken_at, equity FROM equity_snapshots WHERE {where} ORDER BY taken_at"
        else:
            sql = (
                "SELECT DISTINCT ON (date_trunc(:bucket, taken_at AT TIME ZONE "
                "'America/New_York')) taken_at, equity FROM equity_snapshots "
                f"WHERE {where} ORDER BY date_trunc(:bucket, taken_at AT TIME ZONE "
                "'America/New_York'), taken_at DESC"
            )
        params: dict[str, object] = {"a": account_id, "since": since, "bucket": bucket}
        # Snapshots are the scheduler's, not the user's writes: any replica within the bound.
        engine = await self._reads.engine_for() if self._reads else self._engine
        async with engine.connect() as conn:
            rows = await conn.execute(text(sql), params)
            return sorted((r.taken_at, r.equity) for r in rows)
