"""The Redis rate limiter (GCRA in one Lua script) and the rate-limit middleware, on a real Redis."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import socket
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio
from redis.asyncio import Redis
from starlette.types import Receive, Scope, Send

from gateway.client_address import bucket_address, client_address, parse_networks
from gateway.guards import BodySizeLimitMiddleware, RateLimitMiddleware
from gateway.metrics import REGISTRY
from gateway.ratelimit import Bucket, Decision, Limit, RateLimiter
from services.infra.container import Services
from services.infra.keys import ns
from services.infra.settings import Settings
from services.portfolio.holdings_version import version_key
from tests.trading import PASSWORD


@pytest_asyncio.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url, decode_responses=True)
    yield client
    await client.aclose()


def bucket(per_second: float, burst: int, name: str = "test") -> Bucket:
    return Bucket(Limit(name, per_second, burst), uuid.uuid4().hex)


async def hits(limiter: RateLimiter, buckets: list[Bucket], n: int) -> list[Decision]:
    return [await limiter.hit(buckets) for _ in range(n)]


# --- the limiter ------------------------------------------------------------------------------


async def test_a_burst_is_allowed_then_refused(redis: Redis) -> None:
    limiter = RateLimiter(redis)
    b = bucket(per_second=1, burst=5)
    decisions = await hits(limiter, [b], 6)
    assert [d.allowed for d in decisions] == [True] * 5 + [False]
    refused = decisions[-1]
    assert refused.refused_by == b.limit
    assert 0.9 < refused.retry_after <= 1.0
    assert refused.retry_after_header == "1"


async def test_retry_after_is_the_wait_for_the_next_slot_in_whole_seconds(redis: Redis) -> None:
    limiter = RateLimiter(redis)
    b = bucket(per_second=0.1, burst=2)  # one request every 10 s
    decisions = await hits(limiter, [b], 4)
    assert [d.allowed for d in decisions] == [True, True, False, False]
    assert 9.5 < decisions[2].retry_after <= 10.0
    assert decisions[2].retry_after_header == "10"
    # a refused request takes nothing: the wait does not grow
    assert decisions[3].retry_after <= decisions[2].retry_after


def test_retry_after_header_is_at_least_one_second() -> None:
    assert Decision(allowed=False, retry_after=0.004).retry_after_header == "1"
    assert Decision(allowed=False, retry_after=2.01).retry_after_header == "3"


async def test_the_bucket_refills_at_the_rate(redis: Redis) -> None:
    limiter = RateLimiter(redis)
    b = bucket(per_second=20, burst=2)  # a slot every 50 ms
    assert [d.allowed for d in await hits(limiter, [b], 3)] == [True, True, False]
    await asyncio.sleep(0.06)
    assert [d.allowed for d in await hits(limiter, [b], 2)] == [True, False]
    await asyncio.sleep(0.12)  # a whole burst's worth of quiet: the burst is back
    assert [d.allowed for d in await hits(limiter, [b], 3)] == [True, True, False]


async def test_buckets_are_independent(redis: Redis) -> None:
    limiter = RateLimiter(redis)
    limit = Limit("test", 1, 2)
    a, b = Bucket(limit, f"a-{uuid.uuid4().hex}"), Bucket(limit, f"b-{uuid.uuid4().hex}")
    assert [d.allowed for d in await hits(limiter, [a], 3)] == [True, True, False]
    assert (await limiter.hit([b])).allowed
    same_identity_other_limit = Bucket(Limit("other", 1, 2), a.identity)
    assert (await limiter.hit([same_identity_other_limit])).allowed


async def test_a_request_passes_only_if_every_bucket_has_room_and_a_refusal_takes_nothing(
    redis: Redis,
) -> None:
    limiter = RateLimiter(redis)
    tight, roomy = bucket(1, 1, "tight"), bucket(1, 3, "roomy")
    assert (await limiter.hit([tight, roomy])).allowed
    for _ in range(5):
        refused = await limiter.hit([tight, roomy])
        assert not refused.allowed
        assert refused.refused_by == tight.limit
    # the five refusals took nothing from the roomy bucket: two of its three remain
    assert [d.allowed for d in await hits(limiter, [roomy], 3)] == [True, True, False]


async def test_concurrent_requests_never_exceed_the_burst(redis: Redis, redis_url: str) -> None:
    """Two clients (two API processes) hammering one bucket at once: exactly the burst passes."""
    other = Redis.from_url(redis_url, decode_responses=True)
    try:
        limiters = [RateLimiter(redis), RateLimiter(other)]
        b = bucket(per_second=0.01, burst=10)
        decisions = await asyncio.gather(*(limiters[i % 2].hit([b]) for i in range(60)))
    finally:
        await other.aclose()
    assert sum(d.allowed for d in decisions) == 10


async def test_a_session_is_looked_up_in_the_same_round_trip_when_allowed(
    redis: Redis, services: Services
) -> None:
    """What an HTTP request with a bearer token needs before it runs, in one script call: the
    buckets, then the cached session and its user's holdings token."""
    signed = await services.users.register(f"rl-{uuid.uuid4().hex[:10]}@example.com", PASSWORD)
    await services.sessions.authenticate(signed.token)  # now cached in Redis
    limiter = RateLimiter(redis)
    b = bucket(per_second=1, burst=1)
    decision, lookup = await limiter.hit_and_look_up([b], signed.token)
    assert decision.allowed and lookup is not None and lookup.token == signed.token
    assert lookup.found is not None and len(lookup.found) == 2
    assert json.loads(lookup.found[0])["u"] == str(signed.user.id)
    assert lookup.found[1] == await redis.get(version_key(signed.user.id))
    session, token = await services.sessions.authenticate_request(signed.token, lookup)
    assert session is not None and session.user_id == signed.user.id and token == lookup.found[1]

    refused, nothing = await limiter.hit_and_look_up([b], signed.token)
    assert not refused.allowed and refused.refused_by == b.limit and nothing is None


async def test_a_session_not_cached_is_looked_up_by_the_view_itself(
    redis: Redis, services: Services
) -> None:
    signed = await services.users.register(f"rl-{uuid.uuid4().hex[:10]}@example.com", PASSWORD)
    await redis.delete(*[k async for k in redis.scan_iter(ns("tq:session:*"))])
    decision, lookup = await RateLimiter(redis).hit_and_look_up([], signed.token)
    assert decision.allowed and lookup is not None and lookup.found is None
    session, token = await services.sessions.authenticate_request(signed.token, lookup)
    assert session is not None and token is None  # read from PostgreSQL, then cached


async def test_a_lookup_made_for_another_token_is_not_used(
    redis: Redis, services: Services
) -> None:
    one = await services.users.register(f"rl-{uuid.uuid4().hex[:10]}@example.com", PASSWORD)
    two = await services.users.register(f"rl-{uuid.uuid4().hex[:10]}@example.com", PASSWORD)
    await services.sessions.authenticate(one.token)
    _, lookup = await RateLimiter(redis).hit_and_look_up([], one.token)
    session, _ = await services.sessions.authenticate_request(two.token, lookup)
    assert session is not None and session.user_id == two.user.id


async def test_buckets_expire_once_full_again(redis: Redis) -> None:
    limiter = RateLimiter(redis)
    b = bucket(per_second=10, burst=5)  # empty to full in 0.5 s
    await hits(limiter, [b], 3)
    ttl = await redis.pttl(b.key)
    assert 0 < ttl <= 300  # three slots of 100 ms to give back


async def test_a_disabled_limit_costs_no_round_trip() -> None:
    limiter = RateLimiter(Redis(host="127.0.0.1", port=1))  # nothing listens there
    assert (await limiter.hit([bucket(per_second=0, burst=10)])).allowed
    assert (await limiter.hit([])).allowed


# --- client addresses -------------------------------------------------------------------------


def scope_from(peer: str | None, forwarded: list[str] | None = None) -> Scope:
    headers = [(b"x-forwarded-for", value.encode()) for value in forwarded or []]
    return {
        "type": "http",
        "client": (peer, 50000) if peer else None,
        "headers": headers,
    }


def test_forwarded_for_is_ignored_unless_the_peer_is_a_trusted_proxy() -> None:
    scope = scope_from("203.0.113.9", ["198.51.100.1"])
    assert client_address(scope, ()) == "203.0.113.9"
    assert client_address(scope, parse_networks("10.0.0.0/8")) == "203.0.113.9"


def test_a_trusted_proxy_names_the_client_and_spoofed_hops_are_skipped() -> None:
    trusted = parse_networks("10.0.0.0/8, 127.0.0.1")
    # the client wrote "1.1.1.1" itself; our proxies appended the address they saw
    scope = scope_from("10.0.0.2", ["1.1.1.1, 198.51.100.7", "10.0.0.5"])
    assert client_address(scope, trusted) == "198.51.100.7"
    assert client_address(scope_from("10.0.0.2", ["10.0.0.9"]), trusted) == "10.0.0.9"
    assert client_address(scope_from("10.0.0.2"), trusted) == "10.0.0.2"


def test_addresses_are_bucketed_sensibly() -> None:
    assert bucket_address("::ffff:192.0.2.4") == "192.0.2.4"
    assert bucket_address("2001:db8:1:2:3:4:5:6") == "2001:db8:1:2::/64"
    assert bucket_address("2001:db8:1:2:ffff::1") == "2001:db8:1:2::/64"
    assert bucket_address(" Not-An-IP ") == "not-an-ip"
    assert client_address(scope_from(None), ()) == "unknown"


def test_a_bad_trusted_proxy_setting_fails_at_startup() -> None:
    with pytest.raises(ValueError, match="not-an-address"):
        Settings(trusted_proxies="10.0.0.1, not-an-address")


# --- the middleware, in front of a stub app -----------------------------------------------------


async def ok_app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "http":
        while (await receive()).get("more_body"):
            pass
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def limited_settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "rate_limit_session_per_second": 1,
        "rate_limit_session_burst": 2,
        "rate_limit_partner_per_second": 1,
        "rate_limit_partner_burst": 3,
        "rate_limit_ip_per_second": 1,
        "rate_limit_ip_burst": 4,
        **overrides,
    }
    return Settings(**values)


def fresh_address() -> str:
    """A client address that no other test (nor an earlier run) shares a rate-limit bucket with.

    IPv6 addresses are limited by their /64, and the documentation prefix 2001:db8::/32 leaves
    32 bits of it to draw at random; a pick among 250 IPv4 addresses collided now and then.
    """
    network = uuid.uuid4().int & 0xFFFF_FFFF
    return str(ipaddress.IPv6Address((0x2001_0DB8 << 96) | (network << 64) | 1))


def client(app: Any, peer: str | None = None) -> httpx.AsyncClient:
    peer = peer or fresh_address()
    transport = httpx.ASGITransport(app=app, client=(peer, 40000))
    return httpx.AsyncClient(transport=transport, base_url="http://test")


async def test_the_refusal_is_a_429_graphql_error_with_retry_after(redis: Redis) -> None:
    app = RateLimitMiddleware(ok_app, limited_settings(), redis=redis)
    token = uuid.uuid4().hex
    async with client(app) as http:
        statuses = [
            (await http.post("/graphql", headers={"Authorization": f"Bearer {token}"})).status_code
            for _ in range(2)
        ]
        refused = await http.post("/graphql", headers={"Authorization": f"Bearer {token}"})
    assert statuses == [200, 200]
    assert refused.status_code == 429
    assert refused.headers["content-type"] == "application/json"
    assert refused.headers["retry-after"] == "1"
    (error,) = refused.json()["errors"]
    assert error["extensions"] == {"code": "RATE_LIMITED", "retryAfter": 1, "limit": "session"}
    assert "retry after 1 s" in error["message"]


async def test_sessions_partners_and_addresses_have_their_own_buckets(redis: Redis) -> None:
    app = RateLimitMiddleware(ok_app, limited_settings(), redis=redis)
    async with client(app) as http:

        async def status(**headers: str) -> int:
            return (await http.post("/graphql", headers=headers)).status_code

        alice, bob = f"Bearer {uuid.uuid4().hex}", f"Bearer {uuid.uuid4().hex}"
        assert [await status(Authorization=alice) for _ in range(3)] == [200, 200, 429]
        assert await status(Authorization=bob) == 200  # same address, other session
        # a refused request takes nothing: the address has spent 3 of its 4
        assert [await status(), await status()] == [200, 429]
    async with client(app) as elsewhere:  # alice's token from another address: same bucket
        assert (
            await elsewhere.post("/graphql", headers={"Authorization": alice})
        ).status_code == 429
    key = uuid.uuid4().hex
    async with client(app) as http:
        codes = [
            (await http.post("/graphql", headers={"X-API-Key": key})).status_code for _ in range(4)
        ]
        assert codes == [200, 200, 200, 429]
        assert (await http.post("/graphql")).status_code == 200  # the address's 4th
        assert (await http.post("/graphql")).json()["errors"][0]["extensions"]["limit"] == "ip"


async def test_only_the_graphql_endpoint_is_limited(redis: Redis) -> None:
    app = RateLimitMiddleware(ok_app, limited_settings(rate_limit_ip_burst=1), redis=redis)
    async with client(app) as http:
        assert (await http.get("/graphql")).status_code == 200
        assert (await http.get("/graphql")).status_code == 429
        for path in ("/healthz", "/readyz", "/metrics"):
            assert (await http.get(path)).status_code == 200


async def test_forwarded_addresses_from_a_trusted_proxy_get_their_own_buckets(
    redis: Redis,
) -> None:
    proxy = "10.1.2.3"
    settings = limited_settings(rate_limit_ip_burst=1, trusted_proxies="10.0.0.0/8")
    app = RateLimitMiddleware(ok_app, settings, redis=redis)
    first, second = f"198.51.100.{uuid.uuid4().int % 250}", fresh_address()
    async with client(app, peer=proxy) as http:
        assert (await http.get("/graphql", headers={"X-Forwarded-For": first})).status_code == 200
        assert (await http.get("/graphql", headers={"X-Forwarded-For": first})).status_code == 429
        assert (await http.get("/graphql", headers={"X-Forwarded-For": second})).status_code == 200
        spoofed = f"203.0.113.{uuid.uuid4().int % 250}, {first}"  # the client's own claim first
        assert (await http.get("/graphql", headers={"X-Forwarded-For": spoofed})).status_code == 429


def failures() -> float:
    return REGISTRY.get_sample_value("tradeql_rate_limiter_failures_total") or 0.0


async def test_a_limiter_outage_lets_requests_through_logs_and_counts(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with socket.socket() as s:  # a port where nothing listens
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]
    dead = Redis(host="127.0.0.1", port=dead_port, socket_connect_timeout=0.2)
    app = RateLimitMiddleware(ok_app, limited_settings(rate_limit_ip_burst=1), redis=dead)
    before = failures()
    with caplog.at_level(logging.WARNING, logger="tradeql.guards"):
        async with client(app) as http:
            statuses = [(await http.get("/graphql")).status_code for _ in range(3)]
    assert statuses == [200, 200, 200]
    assert failures() == before + 3
    assert any("rate limiter unavailable" in r.getMessage() for r in caplog.records)
    await dead.aclose()


async def test_a_slow_limiter_lets_requests_through(
    redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def stuck(self: RateLimiter, buckets: object, cost: int = 1) -> Decision:
        await asyncio.sleep(30)
        raise AssertionError("not reached")

    monkeypatch.setattr(RateLimiter, "hit", stuck)
    app = RateLimitMiddleware(ok_app, limited_settings(), redis=redis)
    started = time.monotonic()
    async with client(app) as http:
        assert (await http.get("/graphql")).status_code == 200
    assert time.monotonic() - started < 2


async def test_rate_limits_can_be_switched_off(redis: Redis) -> None:
    app = RateLimitMiddleware(ok_app, limited_settings(rate_limit_enabled=False), redis=redis)
    async with client(app) as http:
        assert {(await http.get("/graphql")).status_code for _ in range(10)} == {200}


# --- the body size middleware, in front of a stub app -------------------------------------------


async def test_a_body_over_the_limit_is_refused_by_its_length_unread() -> None:
    received: list[int] = []

    async def counting_app(scope: Scope, receive: Receive, send: Send) -> None:
        received.append(1)
        await ok_app(scope, receive, send)

    app = BodySizeLimitMiddleware(counting_app, max_bytes=1024)
    async with client(app) as http:
        assert (await http.post("/graphql", content=b"x" * 1024)).status_code == 200
        refused = await http.post("/graphql", content=b"x" * 1025)
    assert received == [1]
    assert refused.status_code == 413
    assert refused.json()["errors"][0]["extensions"] == {
        "code": "PAYLOAD_TOO_LARGE",
        "maxBytes": 1024,
    }


async def test_a_chunked_body_is_counted_and_refused_without_reading_it_all() -> None:
    sent: list[int] = []

    async def chunks(count: int) -> AsyncIterator[bytes]:
        for _ in range(count):
            sent.append(1)
            yield b"y" * 400

    app = BodySizeLimitMiddleware(ok_app, max_bytes=1024)
    async with client(app) as http:
        small = await http.post("/graphql", content=chunks(2))
        assert small.status_code == 200
        sent.clear()
        refused = await http.post("/graphql", content=chunks(1000))
    assert refused.status_code == 413
    assert refused.json()["errors"][0]["extensions"]["code"] == "PAYLOAD_TOO_LARGE"
    assert len(sent) < 10  # stopped at the chunk that crossed the limit


async def test_a_query_string_over_the_limit_is_414() -> None:
    app = BodySizeLimitMiddleware(ok_app, max_bytes=1024)
    async with client(app) as http:
        assert (await http.get("/graphql", params={"query": "{ me { id } }"})).status_code == 200
        refused = await http.get("/graphql", params={"query": "{ " + "x " * 1000 + "}"})
    assert refused.status_code == 414
    assert json.loads(refused.content)["errors"][0]["extensions"]["code"] == "URI_TOO_LONG"
