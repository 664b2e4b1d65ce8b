"""Quotes, bars, securities and the market clock."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from enum import Enum
from typing import Annotated

import strawberry
from strawberry import UNSET

from schema.decimals import PRICE, Scaled, scaled
from services.market_data import bars as bars_domain
from services.market_data import clock, marketdata


@strawberry.enum
class BarInterval(Enum):
    MINUTE = "MINUTE"
    FIVE_MINUTES = "FIVE_MINUTES"
    HOUR = "HOUR"
    DAY = "DAY"


@strawberry.type
class Quote(Scaled):
    id: strawberry.ID = strawberry.field(
        description="stable for a symbol, so client caches keep one entry per symbol"
    )
    symbol: str
    bid: Decimal = scaled(PRICE)
    ask: Decimal = scaled(PRICE)
    bid_size: int
    ask_size: int
    last: Decimal = scaled(PRICE)
    volume: int
    timestamp: datetime = strawberry.field(description="when the source stamped it")

    @classmethod
    def from_domain(cls, quote: marketdata.Quote) -> Quote:
        return cls(
            id=strawberry.ID(quote.symbol),
            symbol=quote.symbol,
            bid=quote.bid,
            ask=quote.ask,
            bid_size=quote.bid_size,
            ask_size=quote.ask_size,
            last=quote.last,
            volume=quote.volume,
            timestamp=quote.timestamp,
        )


@strawberry.type
class Bar(Scaled):
    start: datetime
    open: Decimal = scaled(PRICE)
    high: Decimal = scaled(PRICE)
    low: Decimal = scaled(PRICE)
    close: Decimal = scaled(PRICE)
    volume: int

    @classmethod
    def from_domain(cls, bar: bars_domain.Bar) -> Bar:
        return cls(
            start=bar.start,
            open=bar.open,
            high=bar.high,
            low=bar.low,
            close=bar.close,
            volume=bar.volume,
        )


@strawberry.type
class Security:
    id: strawberry.ID = strawberry.field(description="its symbol: one cache entry per security")
    symbol: str
    name: str

    @strawberry.field
    async def quote(self, info: strawberry.Info) -> Quote | None:
        from resolvers.marketdata import security_quote

        return await security_quote(info, self.symbol)

    @strawberry.field
    async def bars(
        self,
        info: strawberry.Info,
        interval: BarInterval = BarInterval.MINUTE,
        from_: Annotated[datetime | None, strawberry.argument(name="from")] = UNSET,
        to: datetime | None = UNSET,
    ) -> list[Bar]:
        from resolvers.marketdata import security_bars

        return await security_bars(info, self.symbol, interval, from_ or None, to or None)


strawberry.enum(
    clock.MarketSession,
    name="MarketSession",
    description="US equities: PRE 04:00-09:30, REGULAR 09:30-16:00, POST 16:00-20:00 New York "
    "time.",
)
MarketSession = clock.MarketSession


@strawberry.type
class MarketClock:
    now: datetime
    is_open: bool
    next_open: datetime
    next_close: datetime
    session: MarketSession
