"""One operation reads each quote once: the quotes loader and the valuations share the reads."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from decimal import Decimal

import pytest

from resolvers.loaders import Loaders
from services.container import Services
from services.marketdata import Quote
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
        loaders.valuations.load(user), loaders.quotes.load_many([held, other])
    )
    assert valuation is not None
    assert valuation.positions[0].quote is asked_first is again  # one read, seen by all
    assert beside is not None and beside.last == Decimal("10.00")
    assert sorted(s for batch in reads for s in batch) == sorted([held, other])
