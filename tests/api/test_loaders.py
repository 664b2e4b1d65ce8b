"""One operation reads each quote once: the quotes loader and the valuations share the reads."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from decimal import Decimal
from typing import Any
from uuid import UUID

import pytest

from resolvers.loaders import Loaders
from resolvers.portfolio import shown_quote
from services.infra.container import Services
from services.market_data.marketdata import Quote
from tests.trading import book_fill, listed, quote, trader, unique_symbol


async def test_a_portfolio_and_a_quote_in_one_operation_read_each_symbol_once(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    user = await trader(services, cash="1000")
    held, other = unique_symbol("L"), unique_symbol("L")
    await listed(services, held, other)
    for symbol in (held, other):
        await quote(services, symbol, "9.00", "11.00", last="10.00")
    await book_fill(services, user, held, "BUY", "2", "10.00")

    reads: list[list[str]] = []
    real = services.quote_mirror.read

    async def counted(symbols: Sequence[str]) -> list[Quote | None]:
        reads.append(list(symbols))
        return await real(symbols)

    monkeypatch.setattr(services.quote_mirror, "read", counted)
    loaders = Loaders(services)
    asked_first = await loaders.quotes.load(held)
    valuation, (again, beside) = await asyncio.gather(
        loaders.valuation(user), loaders.quotes.load_many([held, other])
    )
    assert valuation is not None
    assert valuation.positions[0].quote is asked_first is again  # one read, seen by all
    assert beside is not None and beside.last == Decimal("10.00")
    assert sorted(s for batch in reads for s in batch) == sorted([held, other])


async def test_concurrent_askers_share_one_valuation_and_a_failure_is_not_kept(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    user = await trader(services, cash="10")
    loaders = Loaders(services)
    calls = 0
    real = loaders._value

    async def counted(user_id: UUID) -> Any:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.01)  # the second asker arrives while the first is valuing
        if calls == 1:
            raise RuntimeError("PostgreSQL went away")
        return await real(user_id)

    monkeypatch.setattr(loaders, "_value", counted)
    failed = await asyncio.gather(
        loaders.valuation(user), loaders.valuation(user), return_exceptions=True
    )
    assert [type(f) for f in failed] == [RuntimeError, RuntimeError]
    first, second = await asyncio.gather(loaders.valuation(user), loaders.valuation(user))
    assert first is second and first is not None and first.balances.cash == Decimal("10.00")
    assert calls == 2


async def test_a_cancelled_waiter_leaves_the_valuation_whole(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    user = await trader(services, cash="10")
    loaders = Loaders(services)
    real = loaders._value

    async def slow(user_id: UUID) -> Any:
        await asyncio.sleep(0.05)
        return await real(user_id)

    monkeypatch.setattr(loaders, "_value", slow)
    first = asyncio.ensure_future(loaders.valuation(user))
    await asyncio.sleep(0.01)
    waiter = asyncio.ensure_future(loaders.valuation(user))
    await asyncio.sleep(0.01)
    waiter.cancel()
    valued = await first
    assert valued is not None and valued.balances.cash == Decimal("10.00")
    assert await loaders.valuation(user) is valued


def test_portfolios_holding_one_quote_show_one_object_for_it() -> None:
    quote = Quote("AAA", Decimal("130"), Decimal("130"), 1, 1, Decimal("130"), 1, 1)
    shown = shown_quote(quote)
    assert shown_quote(quote) is shown
    assert shown.last == Decimal("130") and shown.symbol == "AAA"
    moved = Quote("AAA", Decimal("131"), Decimal("131"), 1, 1, Decimal("131"), 1, 1)
    assert shown_quote(moved) is not shown and shown_quote(moved).last == Decimal("131")
