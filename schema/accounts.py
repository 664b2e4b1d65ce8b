"""Users, sessions, cash and the portfolio."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from enum import Enum
from uuid import UUID

import strawberry

from schema.decimals import MONEY, PERCENT, PRICE, QUANTITY, Scaled, scaled
from schema.errors import UserError
from schema.marketdata import Quote


@strawberry.type
class User:
    id: strawberry.ID
    email: str
    created_at: datetime


@strawberry.enum
class HistorySpan(Enum):
    DAY = "DAY"
    WEEK = "WEEK"
    MONTH = "MONTH"
    YEAR = "YEAR"
    ALL = "ALL"


@strawberry.type
class Position(Scaled):
    id: strawberry.ID = strawberry.field(
        description="its account and symbol: one cache entry per holding"
    )
    symbol: str
    quantity: Decimal = scaled(QUANTITY, "shares held")
    reserved_quantity: Decimal = scaled(QUANTITY, "shares held back by open sell orders")
    average_cost: Decimal = scaled(PRICE, "cost per share, by the average-cost method")
    cost_basis: Decimal = scaled(MONEY)
    quote: Quote | None
    market_value: Decimal | None = scaled(MONEY, "at the last price")
    unrealized_pnl: Decimal | None = scaled(MONEY)
    unrealized_pnl_percent: Decimal | None = scaled(PERCENT, "of the cost basis")


@strawberry.type
class PortfolioPoint(Scaled):
    timestamp: datetime
    equity: Decimal = scaled(MONEY)


@strawberry.type
class Portfolio(Scaled):
    """One valuation of the account (every total the sum of its rows, at one read of each
    quote), made before the object is: plain fields, read directly by the executor."""

    user_id: strawberry.Private[UUID]
    id: strawberry.ID = strawberry.field(
        description="the account's id: one cache entry per account"
    )
    cash: Decimal = scaled(MONEY)
    buying_power: Decimal = scaled(MONEY, "cash less what open buy orders hold back")
    market_value: Decimal = scaled(MONEY)
    equity: Decimal = scaled(MONEY, "cash plus market value")
    realized_pnl: Decimal = scaled(MONEY)
    unrealized_pnl: Decimal = scaled(MONEY)
    positions: list[Position]

    @strawberry.field
    async def history(
        self, info: strawberry.Info, span: HistorySpan = HistorySpan.DAY
    ) -> list[PortfolioPoint]:
        from resolvers.portfolio import portfolio_history

        return await portfolio_history(info, self.user_id, span)


@strawberry.type
class AuthPayload:
    token: str | None = None
    expires_at: datetime | None = None
    user: User | None = None
    errors: list[UserError] = strawberry.field(default_factory=list)


@strawberry.type
class DepositPayload:
    """The portfolio is valued only when asked for, after the deposit committed: if valuing
    fails (Redis unreachable, say), `portfolio` alone is null with its error, and `errors` still
    says the deposit went through."""

    user_id: strawberry.Private[UUID | None] = None

    @strawberry.field
    async def portfolio(self, info: strawberry.Info) -> Portfolio | None:
        if self.user_id is None:
            return None
        from resolvers.portfolio import valued_portfolio

        return await valued_portfolio(info, self.user_id)

    errors: list[UserError] = strawberry.field(default_factory=list)
