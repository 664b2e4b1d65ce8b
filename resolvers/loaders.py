"""DataLoaders, made fresh for every operation (and every subscription event), never shared.

A WebSocket's context lives as long as the connection; loaders kept there would serve a quote
read minutes ago. So loaders live in a context variable that an extension sets per operation:
each operation runs in its own task, with its own copy of the variable.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import datetime
from functools import cached_property
from typing import Any
from uuid import UUID

from strawberry.dataloader import DataLoader

from services.infra.container import Services
from services.market_data import marketdata, securities
from services.market_data.bars import Bar, Interval
from services.orders import order_model
from services.orders.order_history import HistoryEvent
from services.portfolio import valuation as portfolio
from services.portfolio.day_change import DayBaseline

BarKey = tuple[str, Interval, datetime, datetime]


class Loaders:
    """One operation's DataLoaders, each made when first used: most operations use one or none,
    and making all of them for every request was a measurable share of a placement's CPU."""

    def __init__(
        self, services: Services, holdings_tokens: Mapping[UUID, str] | None = None
    ) -> None:
        self._services = services
        self._holdings_tokens = holdings_tokens
        # Every quote this operation has read, by symbol: the first read of a symbol is the one
        # the whole operation sees (the quotes loader and the valuations share it).
        self._quotes_seen: dict[str, marketdata.Quote | None] = {}
        self._valuations: dict[UUID, asyncio.Future[portfolio.Valuation | None]] = {}

    @cached_property
    def quotes(self) -> DataLoader[str, marketdata.Quote | None]:
        return DataLoader(load_fn=self._read_quotes)

    @cached_property
    def securities(self) -> DataLoader[str, securities.Security | None]:
        return DataLoader(load_fn=self._services.securities.by_symbols)

    @cached_property
    def bars(self) -> DataLoader[BarKey, list[Bar]]:
        return DataLoader(load_fn=self._load_bars)

    @cached_property
    def executions(self) -> DataLoader[UUID, list[order_model.Execution]]:
        return DataLoader(load_fn=self._load_executions)

    @cached_property
    def legs(self) -> DataLoader[UUID, list[order_model.Order]]:
        """Class orders' legs, by parent."""
        return DataLoader(load_fn=self._load_legs)

    async def _load_legs(self, parent_ids: list[UUID]) -> list[list[order_model.Order]]:
        found = await self._services.order_store.legs_for(parent_ids)
        return [found[i] for i in parent_ids]

    @cached_property
    def order_events(self) -> DataLoader[UUID, list[HistoryEvent]]:
        return DataLoader(load_fn=self._load_order_events)

    async def _load_order_events(self, order_ids: list[UUID]) -> list[list[HistoryEvent]]:
        found = await self._services.order_history.events_for(order_ids)
        return [found[i] for i in order_ids]

    @cached_property
    def day_baselines(self) -> DataLoader[UUID, DayBaseline | None]:
        """What today's change of a user's account is measured from (one read per operation,
        however many positions ask)."""
        return DataLoader(load_fn=self._load_day_baselines)

    async def _load_day_baselines(self, user_ids: list[UUID]) -> list[DayBaseline | None]:
        found: list[DayBaseline | None] = []
        for user_id in user_ids:  # an operation only ever values its own user: one
            value = await self.valuation(user_id)
            found.append(
                None
                if value is None
                else await self._services.day_changes.baseline(
                    user_id,
                    value.balances.account_id,
                    [p.position.symbol for p in value.positions],
                )
            )
        return found

    async def valuation(self, user_id: UUID) -> portfolio.Valuation | None:
        """The account valued once per operation, whoever asks (a portfolio and its history).
        Not a DataLoader: an operation only ever values its own user (rule 9), so there is
        nothing to batch, and the loader's batch task and futures were a visible share of a
        portfolio request's CPU. The first caller values; the others wait for its answer."""
        pending = self._valuations.get(user_id)
        if pending is not None:
            return await asyncio.shield(pending)  # a waiter cancelled leaves the answer whole
        future: asyncio.Future[portfolio.Valuation | None] = (
            asyncio.get_running_loop().create_future()
        )
        self._valuations[user_id] = future
        try:
            found = await self._value(user_id)
        except BaseException as exc:
            if self._valuations.get(user_id) is future:
                del self._valuations[user_id]  # whoever asks next tries again
            if not future.done():
                if isinstance(exc, asyncio.CancelledError):
                    future.cancel()
                else:
                    future.set_exception(exc)
                    future.exception()  # retrieved: no "never retrieved" warning if unawaited
            raise
        if not future.done():
            future.set_result(found)
        return found

    def forget_valuation(self, user_id: UUID) -> None:
        """After a write of this user's holdings within the operation: the next ask values
        again."""
        self._valuations.pop(user_id, None)

    def prime_valuation(self, user_id: UUID, valuation: portfolio.Valuation) -> None:
        done: asyncio.Future[portfolio.Valuation | None] = (
            asyncio.get_running_loop().create_future()
        )
        done.set_result(valuation)
        self._valuations[user_id] = done

    async def _load_bars(self, keys: list[BarKey]) -> list[list[Bar]]:
        """One query per distinct (interval, window), for all the symbols that asked for it."""
        groups: dict[tuple[Interval, datetime, datetime], set[str]] = defaultdict(set)
        for symbol, interval, start, end in keys:
            groups[(interval, start, end)].add(symbol)
        found = {}
        for (interval, start, end), symbols in groups.items():
            by_symbol = await self._services.bars.for_symbols(sorted(symbols), interval, start, end)
            for symbol, rows in by_symbol.items():
                found[(symbol, interval, start, end)] = rows
        return [found[key] for key in keys]

    async def _load_executions(self, order_ids: list[UUID]) -> list[list[order_model.Execution]]:
        found = await self._services.order_store.executions_for(order_ids)
        return [found[i] for i in order_ids]

    async def _value(self, user_id: UUID) -> portfolio.Valuation | None:
        """The account valued at one read of each quote (shared with the rest of the operation,
        so a position's quote and a security's quote agree); None without an account."""
        (holdings,) = await self._services.holdings.holdings([user_id], self._holdings_tokens)
        if holdings is None:
            return None
        return portfolio.value(holdings, await self._quotes_of(holdings.symbols))

    async def _quotes_of(self, symbols: list[str]) -> dict[str, marketdata.Quote | None]:
        """The operation's quotes of `symbols`, without a loader future per symbol (priming 50
        of them was a twentieth of a portfolio request's CPU)."""
        await self._read_quotes(symbols)
        seen = self._quotes_seen
        return {symbol: seen[symbol] for symbol in symbols}

    async def _read_quotes(self, symbols: list[str]) -> list[marketdata.Quote | None]:
        """Symbols not seen yet in this operation read at once; a symbol read by two callers at
        the same time keeps the first answer for both."""
        seen = self._quotes_seen
        unseen = [s for s in symbols if s not in seen]
        if unseen:
            read = await self._services.quote_mirror.read(unseen)
            for symbol, quote in zip(unseen, read, strict=True):
                seen.setdefault(symbol, quote)
        return [seen[s] for s in symbols]


def build_loaders(services: Services, holdings_tokens: Mapping[UUID, str] | None = None) -> Loaders:
    return Loaders(services, holdings_tokens)


_current: ContextVar[Loaders | None] = ContextVar("loaders", default=None)


def fresh_loaders(services: Services) -> Loaders:
    """Start a new set (a new operation, or the next event of a subscription)."""
    loaders = build_loaders(services)
    _current.set(loaders)
    return loaders


def current_loaders(services: Services) -> Loaders:
    return _current.get() or fresh_loaders(services)


@contextmanager
def operation_loaders(context: Any) -> Iterator[None]:
    """Fresh DataLoaders for the operation run inside (`gateway.operation_extension`)."""
    tokens = getattr(context, "holdings_tokens", None)  # a bare context (tests) has none
    token = _current.set(build_loaders(context.services, tokens))
    try:
        yield
    finally:
        try:
            _current.reset(token)
        except ValueError:  # a subscription may end in another context than it began
            _current.set(None)
