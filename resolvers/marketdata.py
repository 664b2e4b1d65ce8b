"""Quotes, securities, bars, the market clock and the live `quotes` subscription."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from datetime import UTC, datetime

import strawberry
from graphql import GraphQLError

from resolvers.context import Info
from resolvers.loaders import current_loaders
from resolvers.shared_events import shared_event
from schema.marketdata import Bar, BarInterval, MarketClock, Quote, Security
from services.errors import DomainError
from services.market_data import bars, marketdata, securities
from services.market_data.securities import is_valid_symbol, normalize_symbol


def to_security(found: securities.Security) -> Security:
    return Security(id=strawberry.ID(found.symbol), symbol=found.symbol, name=found.name)


def input_error(message: str, code: str = "INVALID_INPUT") -> GraphQLError:
    return GraphQLError(message, extensions={"code": code})


def _checked_symbols(info: Info, symbols: list[str]) -> list[str]:
    limit = info.context.services.settings.quote_subscription_max_symbols
    if len(symbols) > limit:
        raise input_error(f"at most {limit} symbols at once, got {len(symbols)}", "LIMIT_EXCEEDED")
    return [normalize_symbol(s) for s in symbols]


async def _security(info: Info, symbol: str) -> Security | None:
    symbol = normalize_symbol(symbol)
    if not is_valid_symbol(symbol):
        return None
    found = await current_loaders(info.context.services).securities.load(symbol)
    return to_security(found) if found else None


async def security(info: Info, symbol: str) -> Security | None:
    return await _security(info, symbol)


async def quote(info: Info, symbol: str) -> Quote | None:
    """The current quote, or null for an unknown symbol or one without a quote yet."""
    found = await _security(info, symbol)
    return await security_quote(info, found.symbol) if found else None


async def quotes(info: Info, symbols: list[str]) -> list[Quote | None]:
    """One Redis round trip for all of them (the loaders batch the lookups)."""
    checked = _checked_symbols(info, symbols)
    loaders = current_loaders(info.context.services)
    known = await loaders.securities.load_many(checked)
    held = await loaders.quotes.load_many([s.symbol if s else "" for s in known])
    return [Quote.from_domain(q) if q and s else None for q, s in zip(held, known, strict=True)]


async def security_quote(info: Info, symbol: str) -> Quote | None:
    held = await current_loaders(info.context.services).quotes.load(symbol)
    return Quote.from_domain(held) if held else None


async def security_bars(
    info: Info,
    symbol: str,
    interval: BarInterval,
    start: datetime | None,
    end: datetime | None,
) -> list[Bar]:
    domain_interval = bars.Interval(interval.value)
    try:
        start, end = bars.bucket_window(domain_interval, start, end, datetime.now(UTC))
    except DomainError as error:
        raise input_error(error.message) from error
    if start >= end:
        raise input_error("`from` must be before `to`")
    expected = (end - start) / bars.INTERVAL_LENGTH[domain_interval]
    if expected > bars.MAX_BARS_PER_REQUEST:
        raise input_error(
            f"that range holds up to {int(expected)} bars; at most "
            f"{bars.MAX_BARS_PER_REQUEST} per request: narrow it or pick a longer interval"
        )
    rows = await current_loaders(info.context.services).bars.load(
        (symbol, domain_interval, start, end)
    )
    return [Bar.from_domain(b) for b in rows]


def clock(info: Info) -> MarketClock:
    state = info.context.services.clock.state()
    return MarketClock(
        now=state.now,
        is_open=state.is_open,
        next_open=state.next_open,
        next_close=state.next_close,
        session=state.session,
    )


async def subscribe_quotes(info: Info, symbols: list[str]) -> AsyncGenerator[Quote, None]:
    """Each symbol's current quote first, then every change (conflated for a slow client)."""
    services = info.context.services
    checked = list(dict.fromkeys(_checked_symbols(info, symbols)))
    if not checked:
        raise input_error("give at least one symbol")
    known = await services.securities.by_symbols(checked)
    unknown = [s for s, found in zip(checked, known, strict=True) if found is None]
    if unknown:
        raise input_error(f"unknown symbols: {', '.join(unknown)}", "UNKNOWN_SYMBOL")
    with services.quote_hub.subscribe(checked) as subscription:
        # Registered before the snapshot is read, so no change between the two is missed;
        # anything not newer than what was delivered is dropped.
        for current in await services.quote_store.read(checked):
            if current is not None:
                subscription.mark_delivered(current)
                yield Quote.from_domain(current)
        while True:
            for event in await subscription.next_events():
                yield event.view(_shared_quote)


def _shared_quote(quote: marketdata.Quote) -> Quote:
    """One schema object per published quote, executed once per document for all subscribers."""
    return shared_event(Quote.from_domain(quote))
