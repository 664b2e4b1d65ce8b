"""The venue router: best price first, limits, notional orders, breakers, timeouts, FOK, metrics."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from decimal import Decimal

import pytest
from prometheus_client import REGISTRY

from services.money import round_shares_down
from services.orders.order_model import Side
from services.orders.routing import (
    DEFAULT_VENUES,
    VenueFill,
    VenueRouter,
    VenueSpec,
    parse_faults,
    tick_size,
    venue_price,
)

D = Decimal
EDGX = VenueSpec("EDGX", 0, D(100), 0.0, 0.0)
ARCA = VenueSpec("ARCA", 1, D(1000), 0.0, 0.0)
IEXG = VenueSpec("IEXG", 2, D(1_000_000_000), 0.0, 0.0)
VENUES = (EDGX, ARCA, IEXG)
BID, ASK = D("10.00"), D("10.02")


def sample(name: str, labels: dict[str, str]) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def breaker_gauge(venue: str) -> float | None:
    return REGISTRY.get_sample_value("tradeql_venue_breaker_state", {"venue": venue})


def legs(fills: list[VenueFill]) -> list[tuple[str, Decimal, Decimal]]:
    return [(f.venue, f.quantity, f.price) for f in fills]


async def buy(router: VenueRouter, key: str, quantity: str, **kwargs: Decimal) -> list[VenueFill]:
    return await router.route(
        order_key=key, side=Side.BUY, quote_bid=BID, quote_ask=ASK, quantity=D(quantity), **kwargs
    )


# --- best execution --------------------------------------------------------------------------


async def test_a_small_buy_fills_at_the_best_priced_venue() -> None:
    router = VenueRouter(VENUES, seed=1)
    fills = await buy(router, "o1:v1", "50")
    assert fills == [VenueFill("EDGX", D(50), D("10.02"), "EDGX:o1:v1:1")]
    assert [v.calls for v in router.venues.values()] == [1, 0, 0]


async def test_a_large_buy_fills_the_best_venue_then_routes_the_rest_on() -> None:
    router = VenueRouter(VENUES, seed=1)
    fills = await buy(router, "o2:v1", "1500")
    assert legs(fills) == [
        ("EDGX", D(100), D("10.02")),
        ("ARCA", D(1000), D("10.03")),
        ("IEXG", D(400), D("10.04")),
    ]
    assert all(isinstance(f.price, Decimal) and isinstance(f.quantity, Decimal) for f in fills)


async def test_a_sell_mirrors_a_buy_from_the_bid_downwards() -> None:
    router = VenueRouter(VENUES, seed=1)
    fills = await router.route(
        order_key="o3:v1", side=Side.SELL, quote_bid=BID, quote_ask=ASK, quantity=D("1500")
    )
    assert legs(fills) == [
        ("EDGX", D(100), D("10.00")),
        ("ARCA", D(1000), D("9.99")),
        ("IEXG", D(400), D("9.98")),
    ]


async def test_the_venue_order_ignores_the_configured_order() -> None:
    router = VenueRouter((IEXG, ARCA, EDGX), seed=1)
    fills = await buy(router, "o4:v1", "1200")
    assert [f.venue for f in fills] == ["EDGX", "ARCA", "IEXG"]


async def test_equal_prices_go_to_the_faster_venue_first() -> None:
    slow = VenueSpec("SLOW", 0, D(10), 2.0, 0.0)
    fast = VenueSpec("FAST", 0, D(10), 1.0, 0.0)
    router = VenueRouter((slow, fast), seed=1)
    fills = await buy(router, "o5:v1", "15")
    assert legs(fills) == [("FAST", D(10), D("10.02")), ("SLOW", D(5), D("10.02"))]


async def test_an_order_larger_than_all_displayed_size_fills_partially() -> None:
    router = VenueRouter((EDGX, ARCA), seed=1)
    fills = await buy(router, "o6:v1", "5000")
    assert sum(f.quantity for f in fills) == D(1100)


# --- limit prices ----------------------------------------------------------------------------


async def test_a_buy_limit_excludes_venues_priced_above_it() -> None:
    router = VenueRouter(VENUES, seed=1)
    fills = await buy(router, "o7:v1", "1500", limit_price=D("10.03"))
    assert legs(fills) == [("EDGX", D(100), D("10.02")), ("ARCA", D(1000), D("10.03"))]
    assert router.venues["IEXG"].calls == 0


async def test_a_sell_limit_excludes_venues_priced_below_it() -> None:
    router = VenueRouter(VENUES, seed=1)
    fills = await router.route(
        order_key="o8:v1",
        side=Side.SELL,
        quote_bid=BID,
        quote_ask=ASK,
        quantity=D("1500"),
        limit_price=D("9.99"),
    )
    assert legs(fills) == [("EDGX", D(100), D("10.00")), ("ARCA", D(1000), D("9.99"))]


async def test_a_limit_that_no_venue_meets_executes_nothing() -> None:
    router = VenueRouter(VENUES, seed=1)
    assert await buy(router, "o9:v1", "10", limit_price=D("10.01")) == []
    assert all(v.calls == 0 for v in router.venues.values())


# --- notional orders -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("side", "notional", "bid", "ask"),
    [
        (Side.BUY, "1234.56", "10.00", "10.02"),
        (Side.BUY, "25000.00", "187.31", "187.33"),
        (Side.BUY, "0.05", "3.00", "3.01"),
        (Side.BUY, "999.99", "0.4999", "0.5003"),
        (Side.SELL, "1234.56", "10.00", "10.02"),
        (Side.SELL, "77777.77", "33.33", "33.35"),
    ],
)
async def test_a_notional_order_never_spends_more_than_asked(
    side: Side, notional: str, bid: str, ask: str
) -> None:
    router = VenueRouter(VENUES, seed=1)
    fills = await router.route(
        order_key="n:v1", side=side, quote_bid=D(bid), quote_ask=D(ask), notional=D(notional)
    )
    assert fills
    value = sum(f.quantity * f.price for f in fills)
    assert value <= D(notional)
    assert all(f.quantity > 0 and round_shares_down(f.quantity) == f.quantity for f in fills)
    # nothing more could be bought on the share grid at the worst price used
    assert D(notional) - value < max(f.price for f in fills) * D("0.000001")


async def test_a_notional_buy_caps_each_venue_at_its_displayed_size() -> None:
    router = VenueRouter(VENUES, seed=1)
    fills = await router.route(
        order_key="n2:v1", side=Side.BUY, quote_bid=BID, quote_ask=ASK, notional=D("1234.56")
    )
    # 1234.56 / 10.02 = 123.2 shares, but EDGX shows 100; the remaining 232.56 buys at ARCA
    assert legs(fills) == [("EDGX", D(100), D("10.02")), ("ARCA", D("23.186440"), D("10.03"))]


# --- ticks -----------------------------------------------------------------------------------


def test_tick_size_is_a_cent_from_one_dollar_and_a_hundredth_of_a_cent_below() -> None:
    assert tick_size(D("1.00")) == D("0.01")
    assert tick_size(D("0.9999")) == D("0.0001")


def test_venue_prices_stay_on_the_tick_grid_across_one_dollar() -> None:
    assert venue_price(Side.BUY, D("0.5000"), 2) == D("0.5002")
    assert venue_price(Side.BUY, D("0.9999"), 2) == D("1.01")
    assert venue_price(Side.SELL, D("1.00"), 1) == D("0.9999")
    assert venue_price(Side.SELL, D("1.01"), 2) == D("0.9999")
    assert venue_price(Side.SELL, D("10.00"), -1) == D("10.01")  # a negative offset improves


async def test_a_sub_dollar_buy_uses_hundredth_of_a_cent_ticks() -> None:
    router = VenueRouter(VENUES, seed=1)
    fills = await router.route(
        order_key="s1:v1",
        side=Side.BUY,
        quote_bid=D("0.4998"),
        quote_ask=D("0.5000"),
        quantity=D("1500"),
    )
    assert legs(fills) == [
        ("EDGX", D(100), D("0.5000")),
        ("ARCA", D(1000), D("0.5001")),
        ("IEXG", D(400), D("0.5002")),
    ]


async def test_a_sell_skips_venues_whose_price_would_not_be_positive() -> None:
    router = VenueRouter(VENUES, seed=1)
    fills = await router.route(
        order_key="s2:v1",
        side=Side.SELL,
        quote_bid=D("0.0001"),
        quote_ask=D("0.0002"),
        quantity=D("500"),
    )
    assert legs(fills) == [("EDGX", D(100), D("0.0001"))]


# --- failures and the breakers ---------------------------------------------------------------


async def test_a_faulty_venue_opens_its_breaker_and_is_then_skipped() -> None:
    errors = {"venue": "EDGX", "kind": "error"}
    errors_before = sample("tradeql_venue_failures_total", errors)
    router = VenueRouter(VENUES, breaker_threshold=3, faults={"EDGX": 1.0}, seed=1)
    for n in range(3):
        fills = await buy(router, f"f{n}:v1", "50")
        assert fills == [VenueFill("ARCA", D(50), D("10.03"), f"ARCA:f{n}:v1:2")]
    assert router.venues["EDGX"].calls == 3
    assert sample("tradeql_venue_failures_total", errors) == errors_before + 3
    assert router.breaker_states() == {"EDGX": "opened", "ARCA": "closed", "IEXG": "closed"}
    assert breaker_gauge("EDGX") == 2

    for n in range(3, 6):
        fills = await buy(router, f"f{n}:v1", "50")
        assert fills == [VenueFill("ARCA", D(50), D("10.03"), f"ARCA:f{n}:v1:1")]
    assert router.venues["EDGX"].calls == 3  # not called while open
    assert sample("tradeql_venue_failures_total", errors) == errors_before + 3


async def test_after_the_reset_time_one_successful_probe_closes_the_breaker() -> None:
    router = VenueRouter(
        VENUES, breaker_threshold=2, breaker_reset_seconds=0.2, faults={"EDGX": 1.0}, seed=1
    )
    for n in range(2):
        await buy(router, f"p{n}:v1", "50")
    assert router.breaker_states()["EDGX"] == "opened"
    router.set_fault("EDGX", None)
    assert (await buy(router, "p2:v1", "50"))[0].venue == "ARCA"  # still open: skipped
    assert router.venues["EDGX"].calls == 2

    await asyncio.sleep(0.25)
    assert router.breaker_states()["EDGX"] == "half-opened"
    fills = await buy(router, "p3:v1", "50")
    assert fills == [VenueFill("EDGX", D(50), D("10.02"), "EDGX:p3:v1:1")]
    assert router.venues["EDGX"].calls == 3
    assert router.breaker_states()["EDGX"] == "closed"
    assert breaker_gauge("EDGX") == 0


async def test_a_failed_probe_opens_the_breaker_again_at_once() -> None:
    router = VenueRouter(
        VENUES, breaker_threshold=2, breaker_reset_seconds=0.2, faults={"EDGX": 1.0}, seed=1
    )
    for n in range(2):
        await buy(router, f"q{n}:v1", "50")
    await asyncio.sleep(0.25)
    assert (await buy(router, "q2:v1", "50"))[0].venue_execution_id == "ARCA:q2:v1:2"
    assert router.venues["EDGX"].calls == 3  # the probe
    assert router.breaker_states()["EDGX"] == "opened"
    assert breaker_gauge("EDGX") == 2
    await buy(router, "q3:v1", "50")
    assert router.venues["EDGX"].calls == 3


async def test_only_one_probe_is_in_flight_across_concurrent_orders() -> None:
    slow_edgx = replace(EDGX, latency_ms=50.0)
    router = VenueRouter(
        (slow_edgx, ARCA, IEXG),
        breaker_threshold=1,
        breaker_reset_seconds=0.2,
        faults={"EDGX": 1.0},
        seed=1,
    )
    await buy(router, "c0:v1", "50")
    assert router.breaker_states()["EDGX"] == "opened"
    router.set_fault("EDGX", None)
    await asyncio.sleep(0.25)
    first, second = await asyncio.gather(buy(router, "c1:v1", "50"), buy(router, "c2:v1", "50"))
    assert router.venues["EDGX"].calls == 2  # the opening failure and one probe
    assert [first[0].venue, second[0].venue] == ["EDGX", "ARCA"]
    assert router.breaker_states()["EDGX"] == "closed"


async def test_a_venue_slower_than_the_timeout_counts_as_a_failure() -> None:
    timeouts = {"venue": "SLOWX", "kind": "timeout"}
    timeouts_before = sample("tradeql_venue_failures_total", timeouts)
    slow = VenueSpec("SLOWX", 0, D(100), 300.0, 0.0)
    router = VenueRouter((slow, ARCA), breaker_threshold=2, timeout_ms=20, seed=1)
    started = time.perf_counter()
    fills = await buy(router, "t1:v1", "50")
    assert time.perf_counter() - started < 0.2
    assert fills == [VenueFill("ARCA", D(50), D("10.03"), "ARCA:t1:v1:2")]
    assert sample("tradeql_venue_failures_total", timeouts) == timeouts_before + 1
    assert router.breaker_states()["SLOWX"] == "closed"
    await buy(router, "t2:v1", "50")
    assert router.breaker_states()["SLOWX"] == "opened"
    assert sample("tradeql_venue_failures_total", timeouts) == timeouts_before + 2


# --- execution ids ---------------------------------------------------------------------------


async def test_replaying_a_route_yields_the_same_execution_ids() -> None:
    router = VenueRouter(VENUES, seed=1)
    first = await buy(router, "r1:v3", "1500")
    again = await buy(router, "r1:v3", "1500")
    assert [f.venue_execution_id for f in first] == ["EDGX:r1:v3:1", "ARCA:r1:v3:2", "IEXG:r1:v3:3"]
    assert again == first
    next_version = await buy(router, "r1:v4", "1500")
    assert {f.venue_execution_id for f in next_version}.isdisjoint(
        f.venue_execution_id for f in first
    )


async def test_seeded_venue_failures_repeat_run_after_run() -> None:
    flaky = tuple(replace(spec, failure_rate=0.5) for spec in VENUES)

    async def run(seed: int) -> list[list[VenueFill]]:
        router = VenueRouter(flaky, breaker_threshold=1000, seed=seed)
        return [await buy(router, f"d{n}:v1", "150") for n in range(30)]

    first, second = await run(42), await run(42)
    assert first == second
    ids = [f.venue_execution_id for fills in first for f in fills]
    assert any(not i.endswith(":1") for i in ids)  # some first attempts failed
    assert await run(43) != first


# --- fill-or-kill ----------------------------------------------------------------------------


async def test_fok_beyond_the_displayed_size_executes_nothing() -> None:
    router = VenueRouter(VENUES, seed=1)
    fills = await buy(router, "k1:v1", "1500", limit_price=D("10.03"), min_quantity=D("1500"))
    assert fills == []
    assert all(v.calls == 0 for v in router.venues.values())


async def test_fok_within_the_displayed_size_fills_completely() -> None:
    router = VenueRouter(VENUES, seed=1)
    fills = await buy(router, "k2:v1", "1100", limit_price=D("10.03"), min_quantity=D("1100"))
    assert sum(f.quantity for f in fills) == D(1100)


async def test_fok_left_short_by_a_venue_failure_returns_nothing() -> None:
    router = VenueRouter((EDGX, ARCA), faults={"EDGX": 1.0}, seed=1)
    fills = await buy(router, "k3:v1", "1100", min_quantity=D("1100"))
    assert fills == []
    assert router.venues["EDGX"].calls == 1
    assert router.venues["ARCA"].calls == 1


# --- metrics ---------------------------------------------------------------------------------


async def test_fills_failures_and_breaker_state_are_exported() -> None:
    good = VenueSpec("MTRGOOD", 1, D(1000), 0.0, 0.0)
    bad = VenueSpec("MTRBAD", 0, D(1000), 0.0, 0.0)
    router = VenueRouter((good, bad), breaker_threshold=2, faults={"MTRBAD": 1.0}, seed=1)
    assert breaker_gauge("MTRBAD") == 0
    for n in range(3):
        await buy(router, f"m{n}:v1", "10")
    assert sample("tradeql_venue_fills_total", {"venue": "MTRGOOD"}) == 3
    assert sample("tradeql_venue_fills_total", {"venue": "MTRBAD"}) == 0
    assert sample("tradeql_venue_failures_total", {"venue": "MTRBAD", "kind": "error"}) == 2
    assert sample("tradeql_venue_failures_total", {"venue": "MTRBAD", "kind": "timeout"}) == 0
    assert breaker_gauge("MTRBAD") == 2
    assert breaker_gauge("MTRGOOD") == 0


# --- configuration and input checks ----------------------------------------------------------


def test_parse_faults_reads_venue_rates() -> None:
    assert parse_faults("EDGX=1.0,ARCA=0.5") == {"EDGX": 1.0, "ARCA": 0.5}
    assert parse_faults(" EDGX = 0 , ") == {"EDGX": 0.0}
    assert parse_faults("") == {}


@pytest.mark.parametrize(
    "bad", ["EDGX", "EDGX=", "=0.5", "EDGX=abc", "EDGX=1.5", "EDGX=-0.1", "EDGX=nan", "A=0,A=1"]
)
def test_parse_faults_refuses_bad_input(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_faults(bad)


def test_router_refuses_faults_for_unknown_venues() -> None:
    with pytest.raises(ValueError, match="unknown"):
        VenueRouter(VENUES, faults={"NYSE": 1.0})
    with pytest.raises(ValueError, match="unknown"):
        VenueRouter(VENUES).set_fault("NYSE", 1.0)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"quantity": D(1), "notional": D(10)},
        {},
        {"quantity": D("0.0000001")},
        {"quantity": D(0)},
        {"notional": D(-5)},
        {"quantity": D(10), "min_quantity": D(11)},
        {"quantity": D(10), "limit_price": D(0)},
    ],
)
async def test_route_refuses_malformed_requests(kwargs: dict[str, Decimal]) -> None:
    router = VenueRouter(VENUES, seed=1)
    with pytest.raises(ValueError):
        await router.route(order_key="x:v1", side=Side.BUY, quote_bid=BID, quote_ask=ASK, **kwargs)


async def test_route_refuses_a_buy_without_an_ask() -> None:
    router = VenueRouter(VENUES, seed=1)
    with pytest.raises(ValueError, match="quote_ask"):
        await router.route(
            order_key="x:v1", side=Side.BUY, quote_bid=BID, quote_ask=D(0), quantity=D(1)
        )


async def test_the_default_venues_fill_a_large_order_best_price_first() -> None:
    assert len(DEFAULT_VENUES) >= 3
    router = VenueRouter(seed=7)
    fills = await buy(router, "def:v1", "5000")
    assert sum(f.quantity for f in fills) == D(5000)
    prices = [f.price for f in fills]
    assert prices == sorted(prices)
