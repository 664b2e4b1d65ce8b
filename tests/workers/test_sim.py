"""The market simulator: grid, spread, volume and rate invariants, and determinism by seed."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterable
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.market_data.marketdata import Quote
from workers.sources.sim import DEFAULT_START_PRICES, SimulatedMarket

SECOND = 1_000_000_000
CENT = Decimal("0.01")
PIP = Decimal("0.0001")


def on_grid(price: Decimal) -> bool:
    tick = CENT if price >= 1 else PIP
    return price == price.quantize(tick)


def assert_sane(quotes: Iterable[Quote], now: int, volumes: dict[str, int]) -> None:
    """Every invariant a single quote must hold; `volumes` carries each symbol's last volume."""
    for q in quotes:
        for price in (q.bid, q.ask, q.last):
            assert isinstance(price, Decimal)
            assert price >= PIP, q
            assert on_grid(price), q
            # Exactly two places from $1 up, four below: what leaves is already on the grid.
            assert price.as_tuple().exponent == (-2 if price >= 1 else -4), q
        assert q.bid < q.ask, q
        assert q.bid <= q.last <= q.ask, q
        spread = q.ask - q.bid
        assert spread >= (CENT if q.bid >= 1 else PIP)
        # A few ticks, or a relative width that only cheap names reach.
        assert spread <= max(6 * (CENT if q.ask >= 1 else PIP), q.ask / 100), q
        for size in (q.bid_size, q.ask_size):
            assert size % 100 == 0 and 100 <= size <= 5000, q
        assert q.volume > volumes.get(q.symbol, 0), q
        volumes[q.symbol] = q.volume
        assert q.timestamp_ns == now


def run(market: SimulatedMarket, times: Iterable[int]) -> list[list[Quote]]:
    return [market.next_batch(t) for t in times]


def test_first_call_starts_the_schedule_and_time_going_back_yields_nothing() -> None:
    market = SimulatedMarket(["AAPL", "MSFT"], seed=1)
    assert market.next_batch(10 * SECOND) == []
    assert len(market.next_batch(11 * SECOND)) == 2
    assert market.next_batch(10 * SECOND) == []
    assert market.next_batch(11 * SECOND) == []
    assert len(market.next_batch(12 * SECOND)) == 2


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(min_value=0, max_value=2**64),
    starts=st.lists(
        st.decimals(min_value=Decimal("0.0001"), max_value=Decimal("2000"), places=4),
        min_size=1,
        max_size=8,
    ),
    rate=st.sampled_from([0.001, 0.05, 1.0, 20.0]),
)
def test_grid_spread_size_and_volume_invariants_hold_for_any_seed(
    seed: int, starts: list[Decimal], rate: float
) -> None:
    # Low rates mean long steps and large moves: the walk crosses $1 and hits the floor.
    symbols = [f"S{i}" for i in range(len(starts))] + ["AAPL", "DRAWN"]
    prices = {f"S{i}": p for i, p in enumerate(starts)}
    market = SimulatedMarket(symbols, seed=seed, rate_per_symbol=rate, start_prices=prices)
    step = int(SECOND / rate / 3)  # about a third of the symbols per batch
    volumes: dict[str, int] = {}
    seen = 0
    market.next_batch(0)
    for k in range(1, 301):
        batch = market.next_batch(k * step)
        assert len({q.symbol for q in batch}) == len(batch)
        assert_sane(batch, k * step, volumes)
        seen += len(batch)
    assert seen >= 90 * len(symbols)


def test_prices_cross_one_dollar_on_the_right_grids() -> None:
    # One step of 1,000 s at 15-80% volatility moves a price about 0.2-1%.
    symbols = [f"P{i}" for i in range(40)]
    market = SimulatedMarket(
        symbols, seed=7, rate_per_symbol=0.001, start_prices={s: Decimal("1.00") for s in symbols}
    )
    volumes: dict[str, int] = {}
    market.next_batch(0)
    below = above = 0
    for k in range(1, 201):
        now = k * 1000 * SECOND
        batch = market.next_batch(now)
        assert_sane(batch, now, volumes)
        below += sum(q.bid < 1 for q in batch)
        above += sum(q.bid >= 1 for q in batch)
    assert below > 500 and above > 500


def test_a_quote_straddling_one_dollar_has_its_ask_on_the_cent_grid() -> None:
    # Small steps around $0.999x: spreads of a few hundredths of a cent reach past $1.
    starts = {f"N{i}": Decimal("0.9990") + i * PIP for i in range(10)}
    market = SimulatedMarket(list(starts), seed=13, start_prices=starts)
    volumes: dict[str, int] = {}
    market.next_batch(0)
    straddles = 0
    for k in range(1, 101):
        batch = market.next_batch(k * SECOND)
        assert_sane(batch, k * SECOND, volumes)
        straddles += sum(q.bid < 1 <= q.ask for q in batch)
    assert straddles > 20


def test_sub_dollar_names_quote_in_hundredths_of_a_cent_and_never_reach_zero() -> None:
    starts = {"PENNY": Decimal("0.0500"), "DUST": Decimal("0.0001"), "HALF": Decimal("0.5000")}
    market = SimulatedMarket(list(starts), seed=3, rate_per_symbol=0.0001, start_prices=starts)
    volumes: dict[str, int] = {}
    market.next_batch(0)
    quotes: list[Quote] = []
    for k in range(1, 501):
        now = k * 10_000 * SECOND
        batch = market.next_batch(now)
        assert_sane(batch, now, volumes)
        quotes += batch
    dust = [q for q in quotes if q.symbol == "DUST"]
    assert min(q.bid for q in dust) == PIP
    assert all(q.ask > PIP for q in dust)
    penny = [q for q in quotes if q.symbol == "PENNY"]
    assert any(q.bid.as_tuple().digits[-1] != 0 for q in penny)  # sub-cent prices do occur
    half = [q for q in quotes if q.symbol == "HALF"]
    assert len({q.bid for q in half}) > 100  # the walk moves


def test_spreads_are_a_few_cents_for_large_caps() -> None:
    market = SimulatedMarket(list(DEFAULT_START_PRICES), seed=11)
    market.next_batch(0)
    quotes = [q for k in range(1, 61) for q in market.next_batch(k * SECOND)]
    spreads = Counter(int((q.ask - q.bid) / CENT) for q in quotes)
    assert min(spreads) >= 1 and max(spreads) <= 10
    assert sum(n for s, n in spreads.items() if s <= 4) > 0.8 * len(quotes)


def test_defaults_cover_the_large_caps_and_start_near_their_price() -> None:
    assert len(DEFAULT_START_PRICES) >= 25
    for sym in (
        "AAPL",
        "MSFT",
        "GOOGL",
        "AMZN",
        "NVDA",
        "META",
        "TSLA",
        "SPY",
        "QQQ",
        "JPM",
        "V",
        "BRK.B",
    ):
        assert sym in DEFAULT_START_PRICES
    market = SimulatedMarket(
        ["AAPL", "BRK.B", "OTHER"], seed=5, start_prices={"OTHER": Decimal("42.00")}
    )
    market.next_batch(0)
    first = {q.symbol: q for q in market.next_batch(SECOND)}
    assert abs(first["AAPL"].last - DEFAULT_START_PRICES["AAPL"]) < 2
    assert abs(first["BRK.B"].last - DEFAULT_START_PRICES["BRK.B"]) < 4
    assert abs(first["OTHER"].last - Decimal(42)) < 1


def test_drawn_start_prices_and_volatilities_are_plausible() -> None:
    symbols = [f"X{i:04d}" for i in range(2000)]
    market = SimulatedMarket(symbols, seed=9)
    market.next_batch(0)
    quotes = market.next_batch(SECOND)
    assert len(quotes) == len(symbols)
    lasts = sorted(q.last for q in quotes)
    assert Decimal(4) < lasts[0] and lasts[-1] < Decimal(510)
    # Log-uniform from $5 to $500: the median sits near $50.
    assert Decimal(35) < lasts[len(lasts) // 2] < Decimal(70)
    vols = market.volatility.values()
    assert 0.149 < min(vols) and max(vols) < 0.801


@given(seed=st.integers(min_value=0, max_value=2**32))
@settings(max_examples=25, deadline=None)
def test_same_seed_same_quotes(seed: int) -> None:
    symbols = ["AAPL", "MSFT", "ZZZ", "PENNY", "BRK.B"]
    starts = {"PENNY": Decimal("0.2500")}
    times = [0, 137_000_000, 500_000_000, 1_900_000_000, 2_000_000_001, 9 * SECOND, 9 * SECOND + 1]
    a = run(SimulatedMarket(symbols, seed=seed, start_prices=starts, rate_per_symbol=3), times)
    b = run(SimulatedMarket(symbols, seed=seed, start_prices=starts, rate_per_symbol=3), times)
    assert a == b
    assert sum(map(len, a)) > 0


def test_different_seeds_give_different_quotes() -> None:
    times = [k * 100_000_000 for k in range(30)]
    a = run(SimulatedMarket(["AAPL", "MSFT", "ZZZ"], seed=1), times)
    b = run(SimulatedMarket(["AAPL", "MSFT", "ZZZ"], seed=2), times)
    assert a != b


def test_no_seed_is_random_but_reproducible_from_the_seed_it_picked() -> None:
    times = [k * 100_000_000 for k in range(30)]
    market = SimulatedMarket(["AAPL", "ZZZ"], seed=None)
    first = run(market, times)
    assert run(SimulatedMarket(["AAPL", "ZZZ"], seed=market.seed), times) == first


def test_a_symbol_keeps_its_parameters_whatever_the_other_symbols() -> None:
    alone = SimulatedMarket(["ZZZ"], seed=4)
    crowd = SimulatedMarket(["AAA", "ZZZ", "MMM"], seed=4)
    assert alone.volatility["ZZZ"] == crowd.volatility["ZZZ"]


def test_quotes_do_not_depend_on_how_time_is_cut_into_batches() -> None:
    """Up to the timestamps: the same quotes in the same order, batched finely or coarsely."""
    symbols = [f"S{i}" for i in range(50)]

    def strip(batches: list[list[Quote]]) -> list[tuple[object, ...]]:
        return [
            (q.symbol, q.bid, q.ask, q.bid_size, q.ask_size, q.last, q.volume)
            for b in batches
            for q in b
        ]

    fine = run(SimulatedMarket(symbols, seed=8), range(0, 5 * SECOND + 1, 10_000_000))
    coarse = run(SimulatedMarket(symbols, seed=8), range(0, 5 * SECOND + 1, 500_000_000))
    assert strip(fine) == strip(coarse)


@pytest.mark.parametrize(
    ("n_symbols", "rate", "batch_ms"), [(1000, 1.0, 50), (200, 10.0, 10), (30, 0.5, 100)]
)
def test_rate_is_symbols_times_rate_spread_evenly(
    n_symbols: int, rate: float, batch_ms: int
) -> None:
    symbols = [f"S{i:04d}" for i in range(n_symbols)]
    market = SimulatedMarket(symbols, seed=2, rate_per_symbol=rate)
    market.next_batch(0)
    seconds = 4
    batches = run(market, range(batch_ms * 1_000_000, seconds * SECOND + 1, batch_ms * 1_000_000))
    total = sum(map(len, batches))
    assert total == int(n_symbols * rate * seconds)
    expected = n_symbols * rate * batch_ms / 1000
    assert all(abs(len(b) - expected) <= 1 for b in batches)
    per_symbol = Counter(q.symbol for b in batches for q in b)
    assert set(per_symbol.values()) == {int(rate * seconds)}


def test_a_late_caller_gets_each_symbol_once_with_the_whole_move() -> None:
    symbols = [f"S{i}" for i in range(100)]
    market = SimulatedMarket(symbols, seed=6)
    market.next_batch(0)
    market.next_batch(SECOND // 4)
    late = market.next_batch(10 * SECOND + SECOND // 2)
    assert sorted(q.symbol for q in late) == sorted(symbols)
    # After the fold the schedule continues where wall time says it is.
    assert len(market.next_batch(11 * SECOND)) == 50
    assert_sane(late, 10 * SECOND + SECOND // 2, {})


def test_volume_only_grows() -> None:
    market = SimulatedMarket(["AAPL", "MSFT"], seed=12, rate_per_symbol=50)
    market.next_batch(0)
    last: dict[str, int] = {}
    for k in range(1, 200):
        for q in market.next_batch(k * 20_000_000):
            assert q.volume > last.get(q.symbol, 0)
            last[q.symbol] = q.volume


def test_the_clock_stamps_quotes_when_no_time_is_given() -> None:
    now = [1_700_000_000 * SECOND]
    market = SimulatedMarket(["AAPL", "MSFT"], seed=1, clock=lambda: now[0])
    assert market.next_batch() == []
    now[0] += SECOND
    batch = market.next_batch()
    assert len(batch) == 2 and {q.timestamp_ns for q in batch} == {now[0]}


@pytest.mark.parametrize(
    ("symbols", "kwargs"),
    [
        ([], {}),
        (["A", "A"], {}),
        (["A"], {"rate_per_symbol": 0}),
        (["A"], {"rate_per_symbol": float("nan")}),
        (["A"], {"start_prices": {"A": Decimal(0)}}),
        (["A"], {"start_prices": {"A": Decimal(-1)}}),
        (["A"], {"start_prices": {"A": Decimal("Infinity")}}),
    ],
)
def test_bad_arguments_are_refused(symbols: list[str], kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        SimulatedMarket(symbols, seed=1, **kwargs)  # type: ignore[arg-type]


def test_a_string_is_not_a_list_of_symbols() -> None:
    with pytest.raises(TypeError):
        SimulatedMarket("AAPL", seed=1)


async def test_stream_yields_batches_in_real_time() -> None:
    symbols = [f"S{i}" for i in range(20)]
    market = SimulatedMarket(symbols, seed=1, rate_per_symbol=50)  # 1,000 quotes/s
    received: list[list[Quote]] = []
    started = time.monotonic()

    async def consume() -> None:
        async for batch in market.stream(batch_interval=0.01):
            received.append(batch)
            if sum(map(len, received)) >= 200:
                return

    await asyncio.wait_for(consume(), timeout=5)
    elapsed = time.monotonic() - started
    total = sum(map(len, received))
    assert 0.15 < elapsed < 3.0  # 200 quotes at 1,000/s: about 0.2 s, not all at once
    assert total >= 200 and len(received) >= 5
    stamps = [b[0].timestamp_ns for b in received]
    assert stamps == sorted(stamps)
    volumes: dict[str, int] = {}
    for b in received:
        assert_sane(b, b[0].timestamp_ns, volumes)


async def test_stream_refuses_a_nonpositive_interval() -> None:
    market = SimulatedMarket(["AAPL"], seed=1)
    with pytest.raises(ValueError):
        await anext(market.stream(batch_interval=0))
