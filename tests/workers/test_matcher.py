"""The matcher for real: placement, the streams, the venues and the fills, in PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from prometheus_client import REGISTRY
from redis.exceptions import RedisError

from services.accounts.reconcile import find_differences
from services.infra.container import Services
from services.market_data.marketdata import Quote
from services.orders.eod import expire_day_orders
from services.orders.order_model import Order, Status
from services.orders.routing import DEFAULT_VENUES as VENUES
from services.orders.routing import VenueRouter
from tests.api_trader import running_matcher
from tests.services.test_matching import make_order
from tests.trading import (
    balances,
    cut_database,
    listed,
    place,
    position,
    quote,
    reload,
    trader,
    unique_symbol,
    wait_status,
)
from workers.matcher import Matcher, PartitionMatcher


@pytest.fixture
async def matcher(services: Services) -> AsyncIterator[Matcher]:
    async with running_matcher(services) as running:
        yield running


@pytest.fixture
async def books_balance(services: Services) -> AsyncIterator[None]:
    yield
    assert await find_differences(services.engine) == []


@pytest.fixture
async def symbol(services: Services) -> str:
    name = unique_symbol("M")
    await listed(services, name)
    await quote(services, name, "100.00", "100.02", "100.01")
    return name


async def test_a_market_buy_fills_at_once_at_the_best_venue(
    services: Services, matcher: Matcher, symbol: str, books_balance: None
) -> None:
    user = await trader(services)
    order = await place(services, user, symbol, quantity="10")
    filled = await wait_status(services, order.id, Status.FILLED)
    assert filled.filled_quantity == 10
    assert filled.average_fill_price == Decimal("100.02")  # EDGX quotes the consolidated ask
    cash, reserved = await balances(services, user)
    assert cash == Decimal("100000") - Decimal("1000.20")
    assert reserved == 0
    assert await position(services, user, symbol) == (Decimal(10), Decimal(0))


async def test_a_large_order_sweeps_venues_by_price(
    services: Services, matcher: Matcher, symbol: str, books_balance: None
) -> None:
    user = await trader(services)
    order = await place(services, user, symbol, quantity="150")
    filled = await wait_status(services, order.id, Status.FILLED)
    executions = (await services.order_store.executions_for([order.id]))[order.id]
    assert [(e.venue, e.quantity, e.price) for e in executions] == [
        ("EDGX", Decimal(100), Decimal("100.02")),
        ("ARCA", Decimal(50), Decimal("100.03")),
    ]
    assert filled.status is Status.FILLED


async def test_a_limit_buy_rests_until_the_quote_crosses(
    services: Services, matcher: Matcher, symbol: str, books_balance: None
) -> None:
    user = await trader(services)
    order = await place(services, user, symbol, type="LIMIT", quantity="5", limit="99.50")
    await wait_status(services, order.id, Status.SUBMITTED)
    assert (await balances(services, user))[1] == Decimal("497.50")
    await quote(services, symbol, "99.40", "99.45")
    filled = await wait_status(services, order.id, Status.FILLED)
    assert filled.average_fill_price == Decimal("99.45")  # at the quote, not the limit
    cash, reserved = await balances(services, user)
    assert (cash, reserved) == (Decimal("100000") - Decimal("497.25"), Decimal(0))


async def test_a_limit_sell_rests_until_the_bid_reaches_it(
    services: Services, matcher: Matcher, symbol: str, books_balance: None
) -> None:
    user = await trader(services)
    await wait_status(
        services, (await place(services, user, symbol, quantity="4")).id, Status.FILLED
    )
    sell = await place(services, user, symbol, "SELL", type="LIMIT", quantity="4", limit="101.00")
    await wait_status(services, sell.id, Status.SUBMITTED)
    assert await position(services, user, symbol) == (Decimal(4), Decimal(4))
    await quote(services, symbol, "101.00", "101.05")
    await wait_status(services, sell.id, Status.FILLED)
    assert await position(services, user, symbol) == (Decimal(0), Decimal(0))


async def test_a_stop_buy_triggers_on_the_last_price_and_executes_as_market(
    services: Services, matcher: Matcher, symbol: str, books_balance: None
) -> None:
    user = await trader(services)
    order = await place(services, user, symbol, type="STOP", quantity="3", stop="102.00")
    await wait_status(services, order.id, Status.SUBMITTED)
    await quote(services, symbol, "101.50", "101.60", last="101.90")
    await asyncio.sleep(0.3)
    assert (await reload(services, order.id)).status is Status.SUBMITTED
    await quote(services, symbol, "102.00", "102.04", last="102.01")
    filled = await wait_status(services, order.id, Status.FILLED)
    assert filled.triggered and filled.average_fill_price == Decimal("102.04")


async def test_a_stop_limit_sell_becomes_a_limit_when_triggered(
    services: Services, matcher: Matcher, symbol: str, books_balance: None
) -> None:
    user = await trader(services)
    await wait_status(
        services, (await place(services, user, symbol, quantity="2")).id, Status.FILLED
    )
    order = await place(
        services, user, symbol, "SELL", type="STOP_LIMIT", quantity="2", stop="98.00", limit="97.50"
    )
    await wait_status(services, order.id, Status.SUBMITTED)
    await quote(services, symbol, "97.00", "97.10", last="97.90")  # triggers; bid < limit
    await asyncio.sleep(0.3)
    working = await reload(services, order.id)
    assert working.triggered and working.status is Status.SUBMITTED
    await quote(services, symbol, "97.60", "97.70", last="97.60")
    filled = await wait_status(services, order.id, Status.FILLED)
    assert filled.average_fill_price == Decimal("97.60")


async def test_ioc_fills_what_it_can_and_cancels_the_rest(
    services: Services, matcher: Matcher, symbol: str, books_balance: None
) -> None:
    user = await trader(services)
    order = await place(
        services, user, symbol, type="LIMIT", tif="IOC", quantity="300", limit="100.02"
    )
    done = await wait_status(services, order.id, Status.CANCELLED)
    assert done.filled_quantity == 100  # only EDGX quotes within the limit, 100 shown
    assert (await balances(services, user))[1] == 0


async def test_fok_is_all_or_nothing(
    services: Services, matcher: Matcher, symbol: str, books_balance: None
) -> None:
    user = await trader(services)
    killed = await place(
        services, user, symbol, type="LIMIT", tif="FOK", quantity="150", limit="100.02"
    )
    done = await wait_status(services, killed.id, Status.CANCELLED)
    assert done.filled_quantity == 0
    filled = await place(
        services, user, symbol, type="LIMIT", tif="FOK", quantity="150", limit="100.03"
    )
    assert (await wait_status(services, filled.id, Status.FILLED)).filled_quantity == 150


async def test_venue_faults_open_its_breaker_and_orders_fill_elsewhere(
    services: Services, matcher: Matcher, symbol: str, books_balance: None
) -> None:
    user = await trader(services)
    matcher.router.set_fault("EDGX", 1.0)
    try:
        for _ in range(services.settings.venue_breaker_threshold + 1):
            order = await place(services, user, symbol, quantity="1")
            filled = await wait_status(services, order.id, Status.FILLED)
            executions = (await services.order_store.executions_for([order.id]))[order.id]
            assert {e.venue for e in executions} == {"ARCA"}
            assert filled.filled_quantity == 1
        assert matcher.router.breaker_states()["EDGX"] == "opened"
        assert REGISTRY.get_sample_value("tradeql_venue_breaker_state", {"venue": "EDGX"}) == 2
    finally:
        matcher.router.set_fault("EDGX", 0.0)


async def test_a_lost_hand_off_is_found_by_the_sweep(
    services: Services,
    matcher: Matcher,
    symbol: str,
    books_balance: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def lost(_orders: object) -> None:
        return None

    user = await trader(services)
    monkeypatch.setattr(services.placement, "_hand_off", lost)
    order = await place(services, user, symbol, quantity="2")
    assert (await reload(services, order.id)).status is Status.PENDING
    await wait_status(services, order.id, Status.FILLED, timeout=15)


async def test_a_restarted_matcher_rebuilds_its_book_from_postgres(
    services: Services, symbol: str, books_balance: None
) -> None:
    user = await trader(services)
    order = await place(services, user, symbol, type="LIMIT", quantity="1", limit="90.00")
    await asyncio.sleep(0.2)
    assert (await reload(services, order.id)).status is Status.PENDING  # no matcher yet
    stop = asyncio.Event()
    first = Matcher(services)
    task = asyncio.create_task(first.run(stop))
    try:
        await wait_status(services, order.id, Status.SUBMITTED)
        stop.set()
        await asyncio.wait_for(task, 20)
        stop, second = asyncio.Event(), Matcher(services)
        task = asyncio.create_task(second.run(stop))
        await asyncio.sleep(1.0)
        await quote(services, symbol, "89.90", "89.95")
        await wait_status(services, order.id, Status.FILLED)
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 20)


async def test_a_cancelled_order_never_fills(
    services: Services, matcher: Matcher, symbol: str, books_balance: None
) -> None:
    user = await trader(services)
    order = await place(services, user, symbol, type="LIMIT", quantity="1", limit="95.00")
    await wait_status(services, order.id, Status.SUBMITTED)
    cancelled = await services.cancellation.cancel(user, order.id)
    assert cancelled.status is Status.CANCELLED
    await quote(services, symbol, "94.00", "94.05")
    await asyncio.sleep(0.5)
    after = await reload(services, order.id)
    assert after.status is Status.CANCELLED and after.filled_quantity == 0
    assert (await balances(services, user))[1] == 0


async def test_day_orders_expire_at_the_close_and_gtc_orders_stay(
    services: Services, matcher: Matcher, symbol: str, books_balance: None
) -> None:
    user = await trader(services)
    day = await place(services, user, symbol, type="LIMIT", quantity="1", limit="80.00")
    gtc = await place(services, user, symbol, type="LIMIT", tif="GTC", quantity="1", limit="80.00")
    await wait_status(services, day.id, Status.SUBMITTED)
    await wait_status(services, gtc.id, Status.SUBMITTED)
    await expire_day_orders(services, datetime.now(UTC) + timedelta(seconds=1))
    assert (await reload(services, day.id)).status is Status.EXPIRED
    assert (await reload(services, gtc.id)).status is Status.SUBMITTED
    assert (await balances(services, user))[1] == Decimal("80.00")
    await services.cancellation.cancel(user, gtc.id)


async def test_a_new_market_order_uses_the_quote_as_it_is_now(
    services: Services, matcher: Matcher, symbol: str, books_balance: None
) -> None:
    """The matcher's stream copy of a quote can be old for a symbol with nothing resting."""
    user = await trader(services)
    resting = await place(services, user, symbol, type="LIMIT", quantity="1", limit="90.00")
    await wait_status(services, resting.id, Status.SUBMITTED)
    await services.cancellation.cancel(user, resting.id)
    await asyncio.sleep(0.3)
    await quote(services, symbol, "110.00", "110.02")
    order = await place(services, user, symbol, quantity="1")
    filled = await wait_status(services, order.id, Status.FILLED)
    assert filled.average_fill_price == Decimal("110.02")


async def test_a_buy_never_pays_more_than_its_hold_covers(
    services: Services, symbol: str, books_balance: None
) -> None:
    """Placed while no matcher runs, then the market jumps past the collar: the order fills
    nothing it cannot pay for; it is cancelled, and the partition goes on working."""
    user = await trader(services, cash="105.03")  # exactly the hold of 1 share at 100.02 + 5%
    order = await place(services, user, symbol, quantity="1")
    await quote(services, symbol, "120.00", "120.02")
    other = await trader(services)
    next_order = await place(services, other, symbol, quantity="1")
    stop, running = asyncio.Event(), Matcher(services)
    task = asyncio.create_task(running.run(stop))
    try:
        done = await wait_status(services, order.id, Status.CANCELLED)
        assert done.filled_quantity == 0
        assert await balances(services, user) == (Decimal("105.03"), Decimal(0))
        assert (await wait_status(services, next_order.id, Status.FILLED)).filled_quantity == 1
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)


# --- new orders of several symbols at once -------------------------------------------------------


class Recording(PartitionMatcher):
    """A partition whose order processing only records when each order starts and ends."""

    def __init__(self, services: Services, fail_on: str | None = None) -> None:
        super().__init__(0, services, VenueRouter(VENUES), "test")
        self.events: list[tuple[str, str]] = []
        self.running_now = 0
        self.most_at_once = 0
        self.fail_on = fail_on

    async def process_safely(
        self, order: Order, quotes: dict[str, Quote | None] | None = None
    ) -> None:
        self.running_now += 1
        self.most_at_once = max(self.most_at_once, self.running_now)
        self.events.append(("start", order.idempotency_key))
        await asyncio.sleep(0.01)
        self.running_now -= 1
        if order.idempotency_key == self.fail_on:
            raise RedisError("redis went away")
        self.events.append(("end", order.idempotency_key))


def orders_of(symbol: str, n: int) -> list[Order]:
    return [
        dataclasses.replace(make_order(symbol=symbol), idempotency_key=f"{symbol}-{i}")
        for i in range(n)
    ]


async def test_symbols_overlap_and_each_keeps_its_arrival_order(services: Services) -> None:
    settings = services.settings.model_copy(update={"matcher_order_concurrency": 3})
    partition = Recording(dataclasses.replace(services, settings=settings))
    groups = [orders_of(s, 3) for s in ("AAA", "BBB", "CCC", "DDD", "EEE")]
    await partition._process_symbols(groups, {})
    assert partition.most_at_once == 3  # overlapped, and never more than the setting
    for group in groups:
        keys = [o.idempotency_key for o in group]
        assert [k for what, k in partition.events if what == "end" and k in keys] == keys
        ends = [i for i, (what, k) in enumerate(partition.events) if what == "end" and k in keys]
        starts = [
            i for i, (what, k) in enumerate(partition.events) if what == "start" and k in keys
        ]
        assert all(s > e for s, e in zip(starts[1:], ends, strict=False))  # one after another


async def test_an_outage_in_one_symbol_stops_the_batch_and_propagates(services: Services) -> None:
    partition = Recording(services, fail_on="BBB-0")
    with pytest.raises(RedisError, match="went away"):
        await partition._process_symbols([orders_of("AAA", 5), orders_of("BBB", 2)], {})
    started = {k for what, k in partition.events if what == "start" and k.startswith("AAA")}
    ended = {k for what, k in partition.events if what == "end" and k.startswith("AAA")}
    assert started == ended  # stopped between orders, never in the middle of one
    assert "AAA-4" not in started  # and stopped: the rest never began
    await asyncio.sleep(0.1)
    assert ("start", "AAA-4") not in partition.events


async def test_a_database_outage_mid_burst_fills_every_order_afterwards(
    services: Services, matcher: Matcher, symbol: str, books_balance: None
) -> None:
    """PostgreSQL refuses connections and its backends are terminated while a burst of orders
    is in flight: the matcher waits it out and fills every order; none is cancelled for it."""
    users = [await trader(services) for _ in range(4)]
    orders = await asyncio.gather(
        *(place(services, users[i % 4], symbol, quantity="1") for i in range(20))
    )
    await cut_database(services, cut=True)
    try:
        await asyncio.sleep(1.5)
    finally:
        await cut_database(services, cut=False)
    for order in orders:
        done = await wait_status(services, order.id, Status.FILLED, Status.CANCELLED, timeout=30)
        assert done.status is Status.FILLED, done.reject_reason
