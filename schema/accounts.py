"""Users, sessions, cash and the portfolio."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from enum import Enum
from uuid import UUID

import strawberry

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
class Position:
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


@strawberry.type
class PortfolioPoint:
    timestamp: datetime
    equity: Decimal


@strawberry.type
class Portfolio:
    """Cash and buying power come with the object; the valued fields are read together, once
    per request (or per subscription event), through the valuation loader."""

    user_id: strawberry.Private[UUID]
    cash: Decimal
    buying_power: Decimal = strawberry.field(description="cash less what open buy orders hold back")

    @strawberry.field
    async def market_value(self, info: strawberry.Info) -> Decimal:
        return (await self._valuation(info)).market_value

    @strawberry.field(description="cash plus market value")
    async def equity(self, info: strawberry.Info) -> Decimal:
        return (await self._valuation(info)).equity

    @strawberry.field
    async def realized_pnl(self, info: strawberry.Info) -> Decimal:
        return (await self._valuation(info)).realized_pnl

    @strawberry.field
    async def unrealized_pnl(self, info: strawberry.Info) -> Decimal:
        return (await self._valuation(info)).unrealized_pnl

    @strawberry.field
    async def positions(self, info: strawberry.Info) -> list[Position]:
        from resolvers.portfolio import to_position

        return [to_position(p) for p in (await self._valuation(info)).positions]

    @strawberry.field
    async def history(
        self, info: strawberry.Info, span: HistorySpan = HistorySpan.DAY
    ) -> list[PortfolioPoint]:
        from resolvers.portfolio import portfolio_history

        return await portfolio_history(info, self.user_id, span)

    async def _valuation(self, info: strawberry.Info):  # type: ignore[no-untyped-def]
        from resolvers.portfolio import valuation

        return await valuation(info, self.user_id)


@strawberry.type
class AuthPayload:
    token: str | None = None
    expires_at: datetime | None = None
    user: User | None = None
    errors: list[UserError] = strawberry.field(default_factory=list)


@strawberry.type
class DepositPayload:
    portfolio: Portfolio | None = None
    errors: list[UserError] = strawberry.field(default_factory=list)
