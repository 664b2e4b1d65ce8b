"""TRADEQL_MATCHER_PARTITIONS: several matcher processes on one machine split the partitions."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from pydantic import ValidationError

from services.infra.container import Services
from services.infra.settings import Settings, parse_partitions
from services.infra.streams import partition_of
from services.orders.order_model import Status
from tests.trading import listed, place, quote, reload, trader, unique_symbol, wait_status
from workers.matcher import Matcher


def test_partition_ranges_parse() -> None:
    assert parse_partitions("") == []
    assert parse_partitions("0-1") == [0, 1]
    assert parse_partitions("3, 0-1,1") == [0, 1, 3]
    for bad in ("a", "2-1", "-1", "1-"):
        with pytest.raises(ValueError, match="partition range"):
            parse_partitions(bad)


def test_a_partition_beyond_the_count_is_refused_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRADEQL_QUOTE_PARTITIONS", "4")
    monkeypatch.setenv("TRADEQL_MATCHER_PARTITIONS", "2-4")
    with pytest.raises(ValidationError, match="names partition 4, but there are only 4"):
        Settings()
    monkeypatch.setenv("TRADEQL_MATCHER_PARTITIONS", "")
    assert Settings().matcher_partition_list() == [0, 1, 2, 3]


def symbol_in(partitions: range, count: int) -> str:
    """A fresh symbol whose stream partition is one of `partitions`."""
    while partition_of(name := unique_symbol("P"), count) not in partitions:
        pass
    return name


@asynccontextmanager
async def running(services: Services, partitions: str) -> AsyncIterator[Matcher]:
    settings = services.settings.model_copy(update={"matcher_partitions": partitions})
    matcher = Matcher(dataclasses.replace(services, settings=settings))
    stop = asyncio.Event()
    task = asyncio.create_task(matcher.run(stop))
    try:
        for _ in range(200):  # until it holds what it may hold
            if len(matcher.running) == len(matcher.partitions):
                break
            await asyncio.sleep(0.05)
        yield matcher
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 20)


async def test_two_matchers_given_disjoint_halves_each_fill_only_their_own_symbols(
    services: Services,
) -> None:
    count = services.settings.quote_partitions
    assert count >= 2, "the test needs at least two partitions"
    half = count // 2
    low, high = range(0, half), range(half, count)
    ours, theirs = symbol_in(low, count), symbol_in(high, count)
    await listed(services, ours, theirs)
    for symbol in (ours, theirs):
        await quote(services, symbol, "50.00", "50.02", "50.01")
    user = await trader(services)

    async with running(services, f"0-{half - 1}") as first:
        assert sorted(first.running) == list(low)
        mine = await place(services, user, ours, quantity="2")
        other = await place(services, user, theirs, quantity="3")
        await wait_status(services, mine.id, Status.FILLED)
        await asyncio.sleep(1.0)  # time enough for the first matcher to (wrongly) fill it
        assert (await reload(services, other.id)).status is Status.PENDING

        async with running(services, f"{half}-{count - 1}") as second:
            assert sorted(second.running) == list(high)
            assert sorted(first.running) == list(low)  # neither took the other's
            await wait_status(services, other.id, Status.FILLED)
            later = await place(services, user, ours, quantity="1")
            await wait_status(services, later.id, Status.FILLED)
