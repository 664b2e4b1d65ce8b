"""Users, sessions, cash and the portfolio."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from enum import Enum
from uuid import UUID

import strawberry

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
class Position:
    id: strawberry.ID = strawberry.field(
        description="its account and symbol: one cache entry per holding"
    )
    symbol: str
    quantity: Decimal
    reserved_quantity: Decimal = strawberry.field(
        description="shares held back by open sell orders"
    )
    average_cost: Decimal
    cost_basis: Decimal
    quote: Quote | None
    market_value: Decimal | None
    unrealized_pnl: Decimal | None
    unrealized_pnl_percent: Decimal | None
    user_id: strawberry.Private[UUID]

    @strawberry.field(
        description="the last close before today's session, and the position's change in "
        "value since it"
    )
    async def previous_close(self, info: strawberry.Info) -> Decimal | None:
        from resolvers.portfolio import position_previous_close

        return await position_previous_close(info, self)

    @strawberry.field
    async def day_change(self, info: strawberry.Info) -> Decimal | None:
        from resolvers.portfolio import position_day_change

        return await position_day_change(info, self)


@strawberry.type
class PortfolioPoint:
    timestamp: datetime
    equity: Decimal


@strawberry.type
class Portfolio:
    """One valuation of the account (every total the sum of its rows, at one read of each
    quote), made before the object is: plain fields, read directly by the executor."""

    user_id: strawberry.Private[UUID]
    id: strawberry.ID = strawberry.field(
        description="the account's id: one cache entry per account"
    )
    cash: Decimal
    buying_power: Decimal = strawberry.field(description="cash less what open buy orders hold back")
    market_value: Decimal
    equity: Decimal = strawberry.field(description="cash plus market value")
    realized_pnl: Decimal
    unrealized_pnl: Decimal
    positions: list[Position]

    @strawberry.field
    async def history(
        self, info: strawberry.Info, span: HistorySpan = HistorySpan.DAY
    ) -> list[PortfolioPoint]:
        from resolvers.portfolio import portfolio_history

        return await portfolio_history(info, self.user_id, span)

    @strawberry.field(
        description="equity now less equity at the last close, deposits in between left out"
    )
    async def day_change(self, info: strawberry.Info) -> Decimal:
        from resolvers.portfolio import portfolio_day_change

        return (await portfolio_day_change(info, self.user_id))[0]

    @strawberry.field
    async def day_change_percent(self, info: strawberry.Info) -> Decimal | None:
        from resolvers.portfolio import portfolio_day_change

        return (await portfolio_day_change(info, self.user_id))[1]


@strawberry.enum
class ActivityType(Enum):
    FILL = "FILL"
    DEPOSIT = "DEPOSIT"


@strawberry.type
class Activity:
    id: strawberry.ID
    type: ActivityType
    at: datetime
    amount: Decimal = strawberry.field(
        description="the cash this activity moved: negative for a buy"
    )
    symbol: str | None
    side: OrderSide | None
    quantity: Decimal | None
    price: Decimal | None
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
