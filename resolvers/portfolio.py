"""The portfolio: valuation, positions, equity history, and the live `portfolio` subscription."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from uuid import UUID

import strawberry
from cachetools import LRUCache
from graphql import GraphQLError

from resolvers.context import Info, require_session
from resolvers.loaders import current_loaders, fresh_loaders
from resolvers.shared_events import shared_value
from schema.accounts import HistorySpan, Portfolio, PortfolioPoint, Position
from schema.marketdata import Quote
from services.market_data import marketdata
from services.portfolio import valuation as domain
from services.portfolio.day_change import DayBaseline
from services.portfolio.day_change import change_percent as day_change_percent

# How far back each span looks, and the bucket that thins its snapshots.
SPANS: dict[HistorySpan, tuple[timedelta | None, str | None]] = {
    HistorySpan.DAY: (timedelta(days=1), None),  # every intraday snapshot: one per 5 minutes
    HistorySpan.WEEK: (timedelta(days=7), "hour"),
    HistorySpan.MONTH: (timedelta(days=31), "day"),
    HistorySpan.YEAR: (timedelta(days=366), "day"),
    HistorySpan.ALL: (None, "day"),
}


async def valuation(info: Info, user_id: UUID) -> domain.Valuation:
    found = await current_loaders(info.context.services).valuation(user_id)
    if found is None:
        raise GraphQLError("no account for this user", extensions={"code": "NOT_FOUND"})
    return found


# One shown quote per quote object, whoever holds it: 200 portfolios holding one symbol share
# one, instead of 200 copies kept alive (and walked by every full garbage collection).
_SHOWN_QUOTES: LRUCache[int, tuple[marketdata.Quote, Quote]] = LRUCache(maxsize=50_000)


def shown_quote(quote: marketdata.Quote) -> Quote:
    known = _SHOWN_QUOTES.get(id(quote))
    if known is not None and known[0] is quote:
        return known[1]
    shown = Quote.from_domain(quote)
    _SHOWN_QUOTES[id(quote)] = (quote, shown)  # holding `quote` keeps its id from being reused
    return shown


def to_position(row: domain.PositionValue, account_id: UUID, user_id: UUID) -> Position:
    """A valued position as the API shows it: made once per valuation of the position
    (`PositionValue.view`) and shared by the requests that reuse it, so it is never changed."""
    p = row.position
    return shared_value(
        Position(
            id=strawberry.ID(f"{account_id}:{p.symbol}"),
            symbol=p.symbol,
            quantity=p.quantity,
            reserved_quantity=p.reserved_quantity,
            average_cost=row.average_cost,
            cost_basis=row.cost_basis,
            quote=shown_quote(row.quote) if row.quote else None,
            market_value=row.market_value,
            unrealized_pnl=row.unrealized_pnl,
            unrealized_pnl_percent=row.unrealized_pnl_percent,
            user_id=user_id,
        )
    )


def to_portfolio(value: domain.Valuation, user_id: UUID) -> Portfolio:
    account_id = value.balances.account_id
    return Portfolio(
        user_id=user_id,
        id=strawberry.ID(str(account_id)),
        cash=value.balances.cash,
        buying_power=value.balances.buying_power,
        market_value=value.market_value,
        equity=value.equity,
        realized_pnl=value.realized_pnl,
        unrealized_pnl=value.unrealized_pnl,
        positions=[
            p.view(lambda row: to_position(row, account_id, user_id)) for p in value.positions
        ],
    )


def holdings_written(info: Info, user_id: UUID) -> None:
    """After a mutation changed the user's cash or positions: this process's copy and this
    operation's valuation go, so what the operation shows next (its payload, a second mutation
    of the same request) is read again, whatever happened to the shared version token."""
    info.context.services.holdings.discard(user_id)
    current_loaders(info.context.services).forget_valuation(user_id)


async def valued_portfolio(info: Info, user_id: UUID) -> Portfolio:
    return to_portfolio(await valuation(info, user_id), user_id)


async def portfolio(info: Info) -> Portfolio:
    session = require_session(info)
    return await valued_portfolio(info, session.user_id)


async def portfolio_history(info: Info, user_id: UUID, span: HistorySpan) -> list[PortfolioPoint]:
    """Snapshots (intraday every 5 minutes, and each close), then the live value."""
    services = info.context.services
    value = await valuation(info, user_id)
    back, bucket = SPANS[span]
    now = datetime.now(UTC)
    points = await services.portfolios.history(
        value.balances.account_id, now - back if back else None, bucket
    )
    return [PortfolioPoint(timestamp=t, equity=e) for t, e in points] + [
        PortfolioPoint(timestamp=now, equity=value.equity)
    ]


async def _baseline(info: Info, user_id: UUID) -> DayBaseline:
    found = await current_loaders(info.context.services).day_baselines.load(user_id)
    if found is None:
        raise GraphQLError("no account for this user", extensions={"code": "NOT_FOUND"})
    return found


async def position_previous_close(info: Info, position: Position) -> Decimal | None:
    close = (await _baseline(info, position.user_id)).previous_close(position.symbol)
    return close


async def position_day_change(info: Info, position: Position) -> Decimal | None:
    baseline = await _baseline(info, position.user_id)
    last = position.quote.last if position.quote is not None else None
    return baseline.position_change(position.symbol, position.quantity, last)


async def portfolio_day_change(info: Info, user_id: UUID) -> tuple[Decimal, Decimal | None]:
    """(dayChange, dayChangePercent): every symbol held or traded since the close, at the
    operation's one valuation."""
    value = await valuation(info, user_id)
    baseline = await _baseline(info, user_id)
    held = {p.position.symbol: p.position.quantity for p in value.positions}
    lasts = {p.position.symbol: p.quote.last if p.quote else None for p in value.positions}
    missing = [s for s in baseline.flows if s not in lasts]
    if missing:  # sold out since the close: their change is in the cash they brought
        quotes = await current_loaders(info.context.services).quotes.load_many(missing)
        lasts.update({s: q.last if q else None for s, q in zip(missing, quotes, strict=True)})
    change = baseline.account_change(held, lasts)
    return change, day_change_percent(change, value.equity, baseline.deposits)


async def subscribe_portfolio(info: Info) -> AsyncGenerator[Portfolio, None]:
    """The signed-in user's portfolio, revalued when a held symbol's quote moves (at most once
    a second) and when a fill changes it. All of a user's sockets on this process share one
    revaluation."""
    session = require_session(info)
    services = info.context.services
    async with services.portfolio_hub.watch(session.user_id) as watcher:
        while True:
            value = await watcher.next()
            fresh_loaders(services).prime_valuation(session.user_id, value)
            yield to_portfolio(value, session.user_id)
