"""DataLoaders, made fresh for every operation (and every subscription event), never shared.

A WebSocket's context lives as long as the connection; loaders kept there would serve a quote
read minutes ago. So loaders live in a context variable that an extension sets per operation:
each operation runs in its own task, with its own copy of the variable.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from strawberry.dataloader import DataLoader
from strawberry.extensions import SchemaExtension

from services import bars, marketdata, order_model, portfolio, securities
from services.container import Services

BarKey = tuple[str, bars.Interval, datetime, datetime]


@dataclass
class Loaders:
    quotes: DataLoader[str, marketdata.Quote | None]
    securities: DataLoader[str, securities.Security | None]
    bars: DataLoader[BarKey, list[bars.Bar]]
    executions: DataLoader[UUID, list[order_model.Execution]]
    valuations: DataLoader[UUID, portfolio.Valuation | None]


def build_loaders(services: Services) -> Loaders:
    async def load_quotes(symbols: list[str]) -> list[marketdata.Quote | None]:
        return await services.quote_store.read(symbols)

    async def load_securities(symbols: list[str]) -> list[securities.Security | None]:
        return await services.securities.by_symbols(symbols)

    async def load_bars(keys: list[BarKey]) -> list[list[bars.Bar]]:
        """One query per distinct (interval, window), for all the symbols that asked for it."""
        groups: dict[tuple[bars.Interval, datetime, datetime], set[str]] = defaultdict(set)
        for symbol, interval, start, end in keys:
            groups[(interval, start, end)].add(symbol)
        found = {}
        for (interval, start, end), symbols in groups.items():
            by_symbol = await services.bars.for_symbols(sorted(symbols), interval, start, end)
            for symbol, rows in by_symbol.items():
                found[(symbol, interval, start, end)] = rows
        return [found[key] for key in keys]

    async def load_executions(order_ids: list[UUID]) -> list[list[order_model.Execution]]:
        found = await services.order_store.executions_for(order_ids)
        return [found[i] for i in order_ids]

    quotes_loader: DataLoader[str, marketdata.Quote | None] = DataLoader(load_fn=load_quotes)

    async def load_valuations(user_ids: list[UUID]) -> list[portfolio.Valuation | None]:
        """Every asked-for account, valued at one read of each quote (shared with the rest of
        the operation, so a position's quote and a security's quote agree)."""
        holdings = await services.portfolios.holdings(user_ids)
        symbols = sorted({p.symbol for h in holdings if h for p in h.positions})
        quotes = dict(zip(symbols, await quotes_loader.load_many(symbols), strict=True))
        return [portfolio.value(h, quotes) if h else None for h in holdings]

    return Loaders(
        quotes=quotes_loader,
        securities=DataLoader(load_fn=load_securities),
        bars=DataLoader(load_fn=load_bars),
        executions=DataLoader(load_fn=load_executions),
        valuations=DataLoader(load_fn=load_valuations),
    )


_current: ContextVar[Loaders | None] = ContextVar("loaders", default=None)


def fresh_loaders(services: Services) -> Loaders:
    """Start a new set (a new operation, or the next event of a subscription)."""
    loaders = build_loaders(services)
    _current.set(loaders)
    return loaders


def current_loaders(services: Services) -> Loaders:
    return _current.get() or fresh_loaders(services)


class LoadersExtension(SchemaExtension):
    def on_operation(self) -> Iterator[None]:
        token = _current.set(build_loaders(self.execution_context.context.services))
        try:
            yield
        finally:
            try:
                _current.reset(token)
            except ValueError:  # a subscription may end in another context than it began
                _current.set(None)
