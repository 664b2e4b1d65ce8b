"""The pieces that do per hash slot on a Redis Cluster what one server does in one call, each
against the real cluster of this folder: the rate limiter, the sign-in throttle, the quote
store, consumer groups over several partitions, holdings versions. Keys are under this test
run's namespace, so they never meet the flows' platform on the same cluster."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import pytest_asyncio
from redis.asyncio.cluster import RedisCluster

from gateway.ratelimit import Bucket, Limit, RateLimiter
from services.accounts.login_throttle import LoginThrottle, ThrottleRules
from services.accounts.sessions import hash_token, lookup_key_and_args
from services.infra.redis import slot_of
from services.infra.streams import ConsumerGroup, quote_stream
from services.market_data.marketdata import Quote
from services.market_data.quote_store import QuoteStore
from services.portfolio.holdings_cache import HoldingsCache
from services.portfolio.holdings_version import forget, version_key
from tests.redis_cluster import RedisClusterServers

pytestmark = [pytest.mark.engines, pytest.mark.timeout(120)]


@pytest_asyncio.fixture(loop_scope="session")
async def redis(cluster_servers: RedisClusterServers) -> AsyncIterator[RedisCluster]:
    client = RedisCluster.from_url(cluster_servers.url, decode_responses=True)
    yield client
    await client.aclose()


def _run() -> str:
    return uuid.uuid4().hex[:8]  # names of this test only


async def test_rate_limits_per_slot_refuse_and_return_the_cached_session(
    redis: RedisCluster,
) -> None:
    limiter = RateLimiter(redis)
    token = f"token-{_run()}"
    token_hash = hash_token(token)
    user = uuid.uuid4()
    cached = {"s": str(uuid.uuid4()), "u": str(user), "e": "2999-01-01T00:00:00+00:00"}
    session_key, _ = lookup_key_and_args(token_hash, cluster=True)
    await redis.set(session_key, json.dumps(cached), ex=60)
    session = Bucket(Limit("session", 0.001, 2), token_hash)
    address = Bucket(Limit("ip", 0.001, 5), f"198.51.100.{_run()}")
    assert slot_of(session.key) == slot_of(session_key) != slot_of(address.key)

    decisions = [
        await limiter.hit_and_look_up([address, session], token, token_hash=token_hash)
        for _ in range(3)
    ]
    assert [d.allowed for d, _ in decisions] == [True, True, False]
    first = decisions[0][1]
    assert first is not None and first.found == [json.dumps(cached)]  # no holdings token here
    refused = decisions[2][0]
    assert refused.refused_by is session.limit and refused.retry_after > 0
    assert decisions[2][1] is None
    # What cluster mode changes: the address's bucket was spent by the refused request too.
    assert (await limiter.hit([address], cost=3)).allowed is False
    assert (await limiter.hit([address], cost=2)).allowed is True


async def test_sign_in_throttle_checks_the_address_then_the_email(redis: RedisCluster) -> None:
    throttle = LoginThrottle(
        redis,
        ThrottleRules(free=2, max_wait_seconds=60, address_limit=3, address_window_seconds=60),
    )
    email, address = f"{_run()}@example.com", f"203.0.113.{_run()}"
    assert [await throttle.begin(email, address) for _ in range(2)] == [0.0, 0.0]
    assert await throttle.begin(email, address) > 0  # past 2 failures, the e-mail waits
    other = f"{_run()}@example.com"
    for _ in range(3):
        await throttle.failed(address)
    assert await throttle.begin(other, address) > 0  # the address is over its limit
    await throttle.succeeded(email)
    assert await throttle.begin(email, f"203.0.113.{_run()}") == 0.0


def _quote(symbol: str, last: str, ts: int) -> Quote:
    price = Decimal(last)
    return Quote(symbol, price, price + Decimal("0.01"), 100, 100, price, 1000, ts)


async def test_the_quote_store_writes_forward_in_time_on_every_node(redis: RedisCluster) -> None:
    store = QuoteStore(redis)
    symbols = [f"Q{_run()}{i}".upper() for i in range(30)]
    assert len({slot_of(f"{{{s}}}") for s in symbols}) > 20  # across slots and nodes
    now = time.time_ns()
    written = await store.write([_quote(s, "10.00", now) for s in symbols])
    assert len(written) == len(symbols)
    newer_and_older = [_quote(s, "11.00", now + 1) for s in symbols[:10]] + [
        _quote(s, "9.00", now - 1) for s in symbols[10:]
    ]
    written = await store.write(newer_and_older)
    assert [q.symbol for q in written] == symbols[:10]  # an older quote never wins
    read = await store.read(symbols)
    assert [q.last if q else None for q in read] == [Decimal("11.00")] * 10 + [
        Decimal("10.00")
    ] * 20
    await redis.script_flush()  # every node forgets its scripts (as after a restart)
    assert len(await store.write([_quote(symbols[0], "12.00", now + 2)])) == 1


async def test_a_consumer_group_over_partitions_loses_nothing_and_waits_for_no_idle_one(
    redis: RedisCluster,
) -> None:
    streams = [f"{quote_stream(p)}:{_run()}" for p in range(4)]
    assert len({slot_of(s) for s in streams}) == 4
    group = ConsumerGroup(redis, "g", streams, "c")
    await group.ensure()
    try:
        sent = {s: [await redis.xadd(s, {"n": str(i)}) for i in range(5)] for s in streams}
        got: dict[str, list[str]] = {s: [] for s in streams}
        deadline = time.monotonic() + 10
        while sum(map(len, got.values())) < 20 and time.monotonic() < deadline:
            for message in await group.read(count=3, block_ms=500):
                got[message.stream].append(message.id)
        assert got == sent
        # Three partitions idle, one busy: the busy one's entry comes at once, not after the
        # idle ones' block runs out.
        started = time.monotonic()
        late = await redis.xadd(streams[2], {"n": "late"})
        messages = await group.read(count=10, block_ms=5_000)
        assert [m.id for m in messages] == [late] and time.monotonic() - started < 2.0
        pending: Any = await redis.xpending(streams[0], "g")
        assert pending["pending"] == 5  # read, not yet acknowledged: nothing dropped
    finally:
        await group.close()


async def test_holdings_versions_per_user_slot_and_retired_across_slots(
    redis: RedisCluster,
) -> None:
    cache = HoldingsCache(None, redis, size=10, ttl_seconds=10)  # type: ignore[arg-type]
    users = [uuid.uuid4() for _ in range(6)]
    assert len({slot_of(version_key(u)) for u in users}) == len(users)
    tokens = await cache._current_tokens(users)
    assert len(set(tokens)) == len(users)
    assert await cache._current_tokens(users) == tokens  # kept, not minted again
    async with redis.pipeline(transaction=False) as pipe:
        forget(pipe, users[:3])  # one DEL of several users' keys, split by slot
        await pipe.execute()
    again = await cache._current_tokens(users)
    assert [a != b for a, b in zip(again, tokens, strict=True)] == [True] * 3 + [False] * 3


async def test_an_expired_cached_session_is_not_served(redis: RedisCluster) -> None:
    """The session lookup on a cluster reads only the session's slot (no holdings token)."""
    from services.accounts.sessions import SessionStore

    token = f"token-{_run()}"
    expired = {
        "s": str(uuid.uuid4()),
        "u": str(uuid.uuid4()),
        "e": (datetime.now(UTC) - timedelta(seconds=1)).isoformat(),
    }
    key, _ = lookup_key_and_args(hash_token(token), cluster=True)
    await redis.set(key, json.dumps(expired), ex=60)
    store = SessionStore(None, redis, None)  # type: ignore[arg-type]
    assert await store.authenticate_request(token) == (None, None)
    live = {**expired, "e": "2999-01-01T00:00:00+00:00"}
    await redis.set(key, json.dumps(live), ex=60)
    session, holdings_token = await store.authenticate_request(token)
    assert session is not None and str(session.user_id) == live["u"] and holdings_token is None
    await asyncio.sleep(0)
