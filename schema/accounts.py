"""Users, sessions, cash and the portfolio."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from enum import Enum
from uuid import UUID

import strawberry

from schema.decimals import (
    MONEY,
    PERCENT,
    PRICE,
    QUANTITY,
    Scaled,
    described,
    scaled,
    to_scale,
)
from schema.errors import UserError
from schema.marketdata import Quote
from schema.orders import OrderSide, PageInfo


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
    user_id: strawberry.Private[UUID]

    @strawberry.field(description=described(PRICE, "the last close before today's session"))
    async def previous_close(self, info: strawberry.Info) -> Decimal | None:
        from resolvers.portfolio import position_previous_close

        return to_scale(await position_previous_close(info, self), PRICE)

    @strawberry.field(description=described(MONEY, "the position's change in value since then"))
    async def day_change(self, info: strawberry.Info) -> Decimal | None:
        from resolvers.portfolio import position_day_change

        return to_scale(await position_day_change(info, self), MONEY)


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

    @strawberry.field(
        description=described(
            MONEY, "equity now less equity at the last close, deposits in between left out"
        )
    )
    async def day_change(self, info: strawberry.Info) -> Decimal:
        from resolvers.portfolio import portfolio_day_change

        return to_scale((await portfolio_day_change(info, self.user_id))[0], MONEY)

    @strawberry.field(description=described(PERCENT, "the day change of the equity at the close"))
    async def day_change_percent(self, info: strawberry.Info) -> Decimal | None:
        from resolvers.portfolio import portfolio_day_change

        return to_scale((await portfolio_day_change(info, self.user_id))[1], PERCENT)


@strawberry.enum
class ActivityType(Enum):
    FILL = "FILL"
    DEPOSIT = "DEPOSIT"


@strawberry.type
class Activity(Scaled):
    id: strawberry.ID
    type: ActivityType
    at: datetime
    amount: Decimal = scaled(MONEY, "the cash this activity moved: negative for a buy")
    symbol: str | None
    side: OrderSide | None
    quantity: Decimal | None = scaled(QUANTITY)
    price: Decimal | None = scaled(PRICE)
    order_id: strawberry.ID | None


@strawberry.type
class ActivityEdge:
    cursor: str
    node: Activity


@strawberry.type
class ActivityConnection:
    edges: list[ActivityEdge]
    page_info: PageInfo


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
