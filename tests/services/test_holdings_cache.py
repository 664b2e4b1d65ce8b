"""`services/portfolio/holdings_cache.py`: an API process's copy of each user's balances and positions,
vouched for by a version token in Redis that every writer retires after its commit. Against the
real PostgreSQL and Redis, through the real writers (deposits, placement, fills, cancels)."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from services.infra.container import Services
from services.orders import order_events
from services.orders.order_model import Event
from services.orders.replace import ReplaceOrder
from services.portfolio.holdings_cache import HoldingsCache
from services.portfolio.holdings_version import version_key
from services.portfolio.valuation import Holdings, Portfolios
from tests.clocks import ManualClock
from tests.trading import PASSWORD, book_fill, listed, place, quote, trader, unique_symbol

TTL = 10.0


class CountingPortfolios(Portfolios):
    """The real reads, counted."""

    def __init__(self, services: Services) -> None:
        super().__init__(services.engine)
        self.reads: list[list[UUID]] = []

    async def holdings(self, user_ids: Sequence[UUID]) -> list[Holdings | None]:
        self.reads.append(list(user_ids))
        return await super().holdings(user_ids)


@pytest.fixture
def portfolios(services: Services) -> CountingPortfolios:
    return CountingPortfolios(services)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def cache(services: Services, portfolios: CountingPortfolios, clock: ManualClock) -> HoldingsCache:
    return HoldingsCache(portfolios, services.redis, size=100, ttl_seconds=TTL, clock=clock)


async def cash_of(cache: HoldingsCache, user_id: UUID) -> Decimal:
    (held,) = await cache.holdings([user_id])
    assert held is not None
    return held.balances.cash


async def test_a_second_read_is_served_from_the_process(
    services: Services, cache: HoldingsCache, portfolios: CountingPortfolios
) -> None:
    user = await trader(services, cash="100")
    first = await cache.holdings([user])
    assert await cache.holdings([user]) == first
    assert portfolios.reads == [[user]]
    assert (cache.hits, cache.misses) == (1, 1)


async def test_many_users_in_one_call_read_only_the_ones_not_held(
    services: Services, cache: HoldingsCache, portfolios: CountingPortfolios
) -> None:
    one, two, three = [await trader(services, cash=c) for c in ("1", "2", "3")]
    await cache.holdings([two])
    found = await cache.holdings([one, two, three])
    assert [h.balances.cash if h else None for h in found] == [
        Decimal("1.00"),
        Decimal("2.00"),
        Decimal("3.00"),
    ]
    assert portfolios.reads == [[two], [one, three]]


async def test_a_deposit_retires_the_copy(services: Services, cache: HoldingsCache) -> None:
    user = await trader(services, cash="100")
    assert await cash_of(cache, user) == Decimal("100.00")
    await services.cash.deposit(user, Decimal("50"), f"k-{uuid.uuid4().hex}")
    assert await cash_of(cache, user) == Decimal("150.00")


async def test_a_replayed_deposit_changes_nothing_and_keeps_the_copy_right(
    services: Services, cache: HoldingsCache
) -> None:
    user = await trader(services, cash="100")
    key = f"k-{uuid.uuid4().hex}"
    await services.cash.deposit(user, Decimal("50"), key)
    assert await cash_of(cache, user) == Decimal("150.00")
    await services.cash.deposit(user, Decimal("50"), key)
    assert await cash_of(cache, user) == Decimal("150.00")


async def test_an_accepted_order_retires_the_copy_so_its_hold_shows(
    services: Services, cache: HoldingsCache
) -> None:
    user = await trader(services, cash="1000")
    symbol = unique_symbol("H")
    await listed(services, symbol)
    (before,) = await cache.holdings([user])
    assert before is not None and before.balances.buying_power == Decimal("1000.00")
    await place(services, user, symbol, type="LIMIT", quantity="2", limit="100.00")
    (after,) = await cache.holdings([user])
    assert after is not None and after.balances.buying_power == Decimal("800.00")


async def test_a_fill_and_a_cancel_retire_the_copy(
    services: Services, cache: HoldingsCache
) -> None:
    user = await trader(services, cash="1000")
    symbol = unique_symbol("H")
    await listed(services, symbol)
    await quote(services, symbol, "9.00", "11.00")
    assert (await cache.holdings([user]))[0].positions == []  # type: ignore[union-attr]
    await book_fill(services, user, symbol, "BUY", "3", "10.00")
    (filled,) = await cache.holdings([user])
    assert filled is not None
    assert [(p.symbol, p.quantity) for p in filled.positions] == [(symbol, Decimal("3"))]
    resting = await place(services, user, symbol, type="LIMIT", quantity="1", limit="5.00")
    assert (await cache.holdings([user]))[0].balances.reserved_cash == Decimal("5.00")  # type: ignore[union-attr]
    await services.cancellation.cancel(user, resting.id)
    (cancelled,) = await cache.holdings([user])
    assert cancelled is not None and cancelled.balances.reserved_cash == Decimal("0.00")


async def test_a_replace_and_a_cancel_of_all_retire_the_copy(
    services: Services, cache: HoldingsCache
) -> None:
    user = await trader(services, cash="1000")
    symbol = unique_symbol("H")
    await listed(services, symbol)
    resting = await place(services, user, symbol, type="LIMIT", quantity="2", limit="5.00")
    assert (await cache.holdings([user]))[0].balances.reserved_cash == Decimal("10.00")  # type: ignore[union-attr]
    await services.replacement.replace(
        ReplaceOrder(user, resting.id, None, Decimal("7.00"), None, None, None, None, "r-1")
    )
    (replaced,) = await cache.holdings([user])
    assert replaced is not None and replaced.balances.reserved_cash == Decimal("14.00")
    await services.cancellation.cancel_all(user)
    (cancelled,) = await cache.holdings([user])
    assert cancelled is not None and cancelled.balances.reserved_cash == Decimal("0.00")


async def test_publishing_order_updates_retires_their_owners_tokens(
    services: Services, cache: HoldingsCache
) -> None:
    """The matcher, cancels and end of day all publish through `order_events.publish` after
    their commits: that is where the tokens go."""
    user = await trader(services, cash="100")
    symbol = unique_symbol("H")
    await listed(services, symbol)
    order = await place(services, user, symbol, type="LIMIT", quantity="1", limit="1.00")
    await cache.holdings([user])
    assert await services.redis.exists(version_key(user))
    await order_events.publish(services.redis, [order_events.OrderUpdate(Event.ACCEPTED, order)])
    assert not await services.redis.exists(version_key(user))


async def test_another_process_sees_a_write_made_through_this_one(
    services: Services, portfolios: CountingPortfolios
) -> None:
    """Two API processes, each with its own copy: the token lives in the shared Redis."""
    here = HoldingsCache(portfolios, services.redis, size=10, ttl_seconds=TTL)
    there = HoldingsCache(Portfolios(services.engine), services.redis, size=10, ttl_seconds=TTL)
    user = await trader(services, cash="100")
    assert await cash_of(here, user) == await cash_of(there, user) == Decimal("100.00")
    await services.cash.deposit(user, Decimal("1"), f"k-{uuid.uuid4().hex}")
    assert await cash_of(there, user) == await cash_of(here, user) == Decimal("101.00")


async def test_a_read_that_raced_a_commit_is_never_served_again(
    services: Services, clock: ManualClock
) -> None:
    """The reader takes the token, reads PostgreSQL, and a deposit commits (and retires the
    token) before the reader keeps what it read: that copy, older than the deposit, must not be
    served to the next request."""
    user = await trader(services, cash="100")

    class Racing(Portfolios):
        raced = False

        async def holdings(self, user_ids: Sequence[UUID]) -> list[Holdings | None]:
            read = await super().holdings(user_ids)
            if not self.raced:
                self.raced = True
                await services.cash.deposit(user, Decimal("25"), f"k-{uuid.uuid4().hex}")
            return read

    cache = HoldingsCache(Racing(services.engine), services.redis, size=10, ttl_seconds=TTL)
    assert await cash_of(cache, user) == Decimal("100.00")  # what the snapshot said
    assert await cash_of(cache, user) == Decimal("125.00")


async def test_a_copy_expires_after_its_lifetime_even_when_no_writer_retired_it(
    services: Services, cache: HoldingsCache, portfolios: CountingPortfolios, clock: ManualClock
) -> None:
    """The one case a token cannot cover: a writer that died between its commit and retiring
    the token (here, a write behind the services' back)."""
    user = await trader(services, cash="100")
    await cash_of(cache, user)
    async with services.engine.begin() as conn:
        await conn.exec_driver_sql(
            "UPDATE accounts SET cash = cash + 1 WHERE user_id = $1", (user,)
        )
    clock.now += TTL - 0.1
    assert await cash_of(cache, user) == Decimal("100.00")
    clock.now += 0.2
    assert await cash_of(cache, user) == Decimal("101.00")
    async with services.engine.begin() as conn:  # put the books back as they were
        await conn.exec_driver_sql(
            "UPDATE accounts SET cash = cash - 1 WHERE user_id = $1", (user,)
        )


async def test_a_flushed_redis_mints_new_tokens_so_nothing_old_is_served(
    services: Services, cache: HoldingsCache, portfolios: CountingPortfolios
) -> None:
    user = await trader(services, cash="100")
    await cash_of(cache, user)
    await services.redis.delete(version_key(user))  # as a flush or a restart would
    await cash_of(cache, user)
    assert portfolios.reads == [[user], [user]]


async def test_without_redis_holdings_come_from_postgresql_and_nothing_is_kept(
    services: Services,
    cache: HoldingsCache,
    portfolios: CountingPortfolios,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    user = await trader(services, cash="100")

    async def unreachable(*_args: object, **_kwargs: object) -> list[str]:
        raise RedisConnectionError("Redis is down")

    monkeypatch.setattr(cache, "_current_tokens", unreachable)
    assert await cash_of(cache, user) == Decimal("100.00")
    assert await cash_of(cache, user) == Decimal("100.00")
    assert portfolios.reads == [[user], [user]]
    monkeypatch.undo()
    await cash_of(cache, user)
    assert len(portfolios.reads) == 3  # nothing was kept while Redis was away


async def test_a_user_without_an_account_is_not_kept(
    services: Services, cache: HoldingsCache, portfolios: CountingPortfolios
) -> None:
    nobody = uuid.uuid4()
    assert await cache.holdings([nobody]) == [None]
    assert await cache.holdings([nobody]) == [None]
    assert len(portfolios.reads) == 2


async def test_size_zero_keeps_nothing_and_asks_redis_nothing(
    services: Services, portfolios: CountingPortfolios
) -> None:
    cache = HoldingsCache(portfolios, services.redis, size=0, ttl_seconds=TTL)
    user = await trader(services, cash="100")
    await cache.holdings([user])
    await cache.holdings([user])
    assert len(portfolios.reads) == 2
    assert not await services.redis.exists(version_key(user))


async def test_the_session_lookup_brings_the_users_token_in_the_same_round_trip(
    services: Services, cache: HoldingsCache, portfolios: CountingPortfolios
) -> None:
    signed = await services.users.register(f"h-{uuid.uuid4().hex[:10]}@example.com", PASSWORD)
    user = signed.user.id
    await services.sessions.authenticate(signed.token)  # cached in Redis from now on
    session, token = await services.sessions.authenticate_request(signed.token)
    assert session is not None and session.user_id == user
    assert token is not None and token == await services.redis.get(version_key(user))
    await cache.holdings([user], {user: token})
    await cache.holdings([user], {user: token})
    assert portfolios.reads == [[user]]
    await services.cash.deposit(user, Decimal("3"), f"k-{uuid.uuid4().hex}")
    _, after = await services.sessions.authenticate_request(signed.token)
    assert after is not None and after != token
    (held,) = await cache.holdings([user], {user: after})
    assert held is not None and held.balances.cash == Decimal("3.00")


async def test_a_token_given_for_one_user_does_not_stand_for_another(
    services: Services, cache: HoldingsCache, portfolios: CountingPortfolios
) -> None:
    one, two = await trader(services, cash="1"), await trader(services, cash="2")
    (token,) = await cache._current_tokens([one])
    found = await cache.holdings([one, two], {one: token})
    assert [h.balances.cash for h in found if h] == [Decimal("1.00"), Decimal("2.00")]
    assert await services.redis.exists(version_key(two))  # read (minted) for the other one


async def test_an_order_is_answered_only_after_its_owners_copy_is_retired(
    services: Services, cache: HoldingsCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hand-off (which retires the token) may be slow; the caller must not hear of its
    order, and read its old buying power anywhere, before it is done."""
    user = await trader(services, cash="1000")
    symbol = unique_symbol("H")
    await listed(services, symbol)
    await cache.holdings([user])
    assert await services.redis.exists(version_key(user))
    real = services.placement._hand_off

    async def slow(orders: list[Any]) -> None:
        await asyncio.sleep(0.2)
        await real(orders)

    monkeypatch.setattr(services.placement, "_hand_off", slow)
    await place(services, user, symbol, type="LIMIT", quantity="1", limit="50.00")
    assert not await services.redis.exists(version_key(user))
    (after,) = await cache.holdings([user])
    assert after is not None and after.balances.buying_power == Decimal("950.00")


async def test_an_order_is_answered_even_when_its_hand_off_fails(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    user = await trader(services, cash="1000")
    symbol = unique_symbol("H")
    await listed(services, symbol)

    async def broken(orders: list[Any]) -> None:
        raise RuntimeError("hand-off bug")

    monkeypatch.setattr(services.placement, "_hand_off", broken)
    order = await place(services, user, symbol, type="LIMIT", quantity="1", limit="50.00")
    assert order.status.value == "PENDING"


# Every module that writes cash or positions, and how it retires the owners' holdings versions.
# A new writer must retire them after its commit, be tested here, and then be added.
KNOWN_WRITERS = {
    "services/accounts/cash.py": "deposits: forget_now after the commit",
    "services/orders/fills.py": "fills, cancels, expiry: their callers publish the order events",
    "services/orders/placement.py": "holds: the hand-off retires them before the order is answered",
    "services/orders/replace.py": "swapped holds: its announcement retires them before the answer",
    "services/accounts/users.py": "a new account: nothing can be cached before it exists",
}


def test_every_writer_of_cash_or_positions_is_known() -> None:
    root = Path(__file__).resolve().parents[2]
    writes = re.compile(r"(UPDATE|INSERT INTO|DELETE FROM)\s+(accounts|positions)\b", re.I)
    found = {
        str(path.relative_to(root))
        for folder in ("services", "workers", "gateway", "resolvers", "schema")
        for path in (root / folder).rglob("*.py")
        if writes.search(path.read_text())
    }
    assert found == set(KNOWN_WRITERS)
