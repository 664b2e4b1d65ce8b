"""A live portfolio feed that fails (Redis or PostgreSQL away for a moment) restarts with backoff
and serves its sockets again; it never hangs them."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

import pytest

from services.infra.container import Services
from tests.trading import trader


async def test_a_failed_feed_restarts_and_serves_its_watchers_again(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    user = await trader(services, cash="1234.50")
    hub = services.portfolio_hub
    real = services.holdings.holdings
    failures = {"left": 2}

    async def flaky(user_ids: Any) -> Any:
        if failures["left"]:
            failures["left"] -= 1
            raise ConnectionError("redis went away")
        return await real(user_ids)

    monkeypatch.setattr(services.holdings, "holdings", flaky)
    before = hub.failures
    async with hub.watch(user) as watcher:
        valuation = await asyncio.wait_for(watcher.next(), 10)
    assert valuation.balances.cash == Decimal("1234.50")
    assert hub.failures - before == 2
