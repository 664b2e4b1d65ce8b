"""A simulated market: seeded random-walk quotes for any number of symbols, at a steady rate.

Each symbol follows a geometric random walk with its own volatility. Updates are spread evenly
over time: with N symbols at r updates per second each, one symbol is due every 1/(N*r) seconds,
in a fixed round-robin order (shuffled by the seed), so a batch covering 50 ms holds about
5% of the symbols at r = 1.

Prices are kept as floats for the walk and turned into integer ticks of $0.0001 ("units") for the
quote; Decimal appears only at the edge, through a cache, so the inner loop does no Decimal
arithmetic. Every price leaves on its grid: $0.01 at or above $1, $0.0001 below.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from decimal import Decimal
from functools import cache
from statistics import NormalDist

from services.market_data.marketdata import Quote

__all__ = ["DEFAULT_START_PRICES", "SimulatedMarket"]

# Roughly where these traded in mid-2024; a starting point, not a claim about today's market.
DEFAULT_START_PRICES: dict[str, Decimal] = {
    "AAPL": Decimal("190.00"),
    "MSFT": Decimal("420.00"),
    "GOOGL": Decimal("170.00"),
    "GOOG": Decimal("172.00"),
    "AMZN": Decimal("185.00"),
    "NVDA": Decimal("120.00"),
    "META": Decimal("500.00"),
    "TSLA": Decimal("250.00"),
    "BRK.B": Decimal("410.00"),
    "JPM": Decimal("200.00"),
    "V": Decimal("275.00"),
    "MA": Decimal("450.00"),
    "UNH": Decimal("500.00"),
    "JNJ": Decimal("150.00"),
    "XOM": Decimal("115.00"),
    "WMT": Decimal("68.00"),
    "PG": Decimal("165.00"),
    "HD": Decimal("350.00"),
    "KO": Decimal("63.00"),
    "PEP": Decimal("165.00"),
    "BAC": Decimal("39.00"),
    "DIS": Decimal("100.00"),
    "NFLX": Decimal("650.00"),
    "AMD": Decimal("160.00"),
    "INTC": Decimal("30.00"),
    "SPY": Decimal("560.00"),
    "QQQ": Decimal("480.00"),
    "IWM": Decimal("210.00"),
}

_UNITS_PER_DOLLAR = 10_000  # internal price unit: $0.0001, the sub-dollar tick
_CENT = 100  # the $0.01 tick, in units
_ONE_DOLLAR = _UNITS_PER_DOLLAR
_MIN_MID = 1.5  # the mid never falls below 1.5 units, so a bid of one unit always fits under it

# Volatilities are annualized over trading time: 252 sessions of 6.5 hours.
_TRADING_SECONDS_PER_YEAR = 252 * 6.5 * 3600
_VOL_MIN, _VOL_MAX = 0.15, 0.80
_START_MIN, _START_MAX = 5.0, 500.0

# Extra ticks of spread on top of a symbol's base, indexed by 3 random bits: mostly none.
_SPREAD_JITTER = (0, 0, 0, 0, 1, 1, 2, 3)
# Displayed sizes in round lots, indexed by 6 random bits: mostly small, sometimes 5,000.
_SIZES = tuple(
    100 * k
    for k, n in (
        (1, 16),
        (2, 12),
        (3, 8),
        (4, 6),
        (5, 6),
        (8, 4),
        (10, 4),
        (20, 3),
        (30, 2),
        (40, 2),
        (50, 1),
    )
    for _ in range(n)
)
# Shares traded between two updates (adds to volume), indexed by 5 random bits; odd lots included.
_TRADE_SIZES = (
    (100,) * 10
    + (200,) * 5
    + (300,) * 3
    + (500,) * 3
    + (1000,) * 2
    + (1, 10, 25, 50, 75, 150, 250, 2500, 5000)
)
_DECIMAL_CACHE_MAX = 1 << 17

assert len(_SIZES) == 64 and len(_TRADE_SIZES) == 32 and len(_SPREAD_JITTER) == 8


@cache
def _normal_table() -> tuple[float, ...]:
    """Standard normal quantiles at 65,536 midpoints: a draw is one table lookup, not a gauss().

    The tails stop at about 4.2 sigma, which is fine for a simulator and 4x faster than gauss().
    """
    nd = NormalDist()
    n = 1 << 16
    return tuple(nd.inv_cdf((i + 0.5) / n) for i in range(n))


def _units_to_decimal(units: int) -> Decimal:
    """A price in $0.0001 units as a Decimal: 2 places at or above $1, 4 below."""
    if units >= _ONE_DOLLAR:
        return Decimal(units // _CENT).scaleb(-2)
    return Decimal(units).scaleb(-4)


def _decimal_to_units(price: Decimal) -> float:
    return float(price) * _UNITS_PER_DOLLAR


class SimulatedMarket:
    """Seeded quotes for a set of symbols; `next_batch` returns what came due since the last call.

    The same seed, symbols, rate, start prices and sequence of `now_ns` values give exactly the
    same quotes. A batch never holds the same symbol twice: when more than one full round is due
    (a caller that fell behind), each symbol's pending updates are folded into one quote whose
    move has the variance of all of them, rather than replaying the backlog.
    """

    def __init__(
        self,
        symbols: Sequence[str],
        *,
        seed: int | None,
        rate_per_symbol: float = 1.0,
        start_prices: Mapping[str, Decimal] | None = None,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        if isinstance(symbols, str):
            raise TypeError("symbols must be a sequence of symbols, not one string")
        if not symbols:
            raise ValueError("at least one symbol is needed")
        if len(set(symbols)) != len(symbols):
            raise ValueError("symbols must be unique")
        if not (rate_per_symbol > 0 and math.isfinite(rate_per_symbol)):
            raise ValueError("rate_per_symbol must be a positive number")
        start_prices = dict(start_prices or {})
        for sym, price in start_prices.items():
            if not (price.is_finite() and price > 0):
                raise ValueError(f"start price of {sym} must be positive, got {price}")

        self.seed: int = seed if seed is not None else random.SystemRandom().randrange(1 << 63)
        self.rate_per_symbol = float(rate_per_symbol)
        self._clock = clock

        order = list(symbols)
        random.Random(f"{self.seed}:order").shuffle(order)
        self.symbols: tuple[str, ...] = tuple(order)  # in schedule order
        n = len(order)

        dt = 1.0 / self.rate_per_symbol
        step_scale = math.sqrt(dt / _TRADING_SECONDS_PER_YEAR)
        self._mid: list[float] = []
        self._sigma: list[float] = []
        self._drift: list[float] = []
        self._spread_base: list[int] = []
        self._spread_rel_cents: list[float] = []
        self._spread_rel_units: list[float] = []
        self._volume: list[int] = [0] * n
        for sym in order:
            # Each symbol's parameters come from (seed, symbol) alone: adding or removing other
            # symbols does not change them.
            prng = random.Random(f"{self.seed}:{sym}")
            vol = _VOL_MIN * math.exp(prng.random() * math.log(_VOL_MAX / _VOL_MIN))
            drawn = _START_MIN * math.exp(prng.random() * math.log(_START_MAX / _START_MIN))
            if sym in start_prices:
                mid = _decimal_to_units(start_prices[sym])
            elif sym in DEFAULT_START_PRICES:
                mid = _decimal_to_units(DEFAULT_START_PRICES[sym])
            else:
                mid = drawn * _UNITS_PER_DOLLAR
            sigma = vol * step_scale
            wild = (vol - _VOL_MIN) / (_VOL_MAX - _VOL_MIN)  # 0 calm .. 1 wild
            self._mid.append(max(mid, _MIN_MID))
            self._sigma.append(sigma)
            self._drift.append(-0.5 * sigma * sigma)  # keeps the walk a martingale in price
            self._spread_base.append(1 + int(wild * 2.999))  # 1..3 ticks
            # Relative floors on the spread: ~0.2-0.8 bp above $1, 10-30 bp below.
            self._spread_rel_cents.append(2e-5 * (1.0 + 3.0 * wild))
            self._spread_rel_units.append(1e-3 * (1.0 + 2.0 * wild))

        self._rng = random.Random(self.seed)
        self._normal = _normal_table()
        self._decimals: dict[int, Decimal] = {}
        self._start_ns: int | None = None
        self._last_now: int = 0
        self._emitted = 0  # schedule slots consumed since the start

    @property
    def volatility(self) -> dict[str, float]:
        """Annualized volatility of each symbol's walk."""
        scale = math.sqrt(_TRADING_SECONDS_PER_YEAR * self.rate_per_symbol)
        return {s: sig * scale for s, sig in zip(self.symbols, self._sigma, strict=True)}

    def next_batch(self, now_ns: int | None = None) -> list[Quote]:
        """The quotes due since the last call, stamped `now_ns` (default: the clock).

        The first call starts the schedule and returns nothing; a `now_ns` earlier than the
        previous one returns nothing and does not move the schedule back.
        """
        now = self._clock() if now_ns is None else now_ns
        if self._start_ns is None:
            self._start_ns = self._last_now = now
            return []
        if now <= self._last_now:
            return []
        self._last_now = now
        n = len(self.symbols)
        rate = n * self.rate_per_symbol
        due = int((now - self._start_ns) * rate / 1e9)
        count = due - self._emitted
        if count <= 0:
            return []
        pos = self._emitted % n
        self._emitted = due
        out: list[Quote] = []
        if count <= n:
            self._emit(out, pos, count, 1, now)
        else:
            per, extra = divmod(count, n)
            if extra:
                self._emit(out, pos, extra, per + 1, now)
            self._emit(out, (pos + extra) % n, n - extra, per, now)
        return out

    def _emit(self, out: list[Quote], pos: int, count: int, steps: int, now: int) -> None:
        """Append `count` quotes for the symbols from schedule position `pos` on (wrapping)."""
        n = len(self.symbols)
        end = pos + count
        self._emit_range(out, pos, min(end, n), steps, now)
        if end > n:
            self._emit_range(out, 0, end - n, steps, now)

    def _emit_range(self, out: list[Quote], lo: int, hi: int, steps: int, now: int) -> None:
        # Hot loop: locals only, ints and floats until the edge, one 64-bit draw per quote:
        # bits 0-15 the move, 16-18 spread jitter, 19-23 trade size, 24-35 displayed sizes,
        # 36-51 where `last` falls in the spread.
        symbols = self.symbols
        mids = self._mid
        if steps == 1:
            sigmas = self._sigma
            drifts = self._drift
        else:
            sigmas = [s * math.sqrt(steps) for s in self._sigma]
            drifts = [d * steps for d in self._drift]
        bases = self._spread_base
        rel_cents = self._spread_rel_cents
        rel_units = self._spread_rel_units
        volumes = self._volume
        normal = self._normal
        bits = self._rng.getrandbits
        exp = math.exp
        jitter = _SPREAD_JITTER
        sizes = _SIZES
        trades = _TRADE_SIZES
        decimals = self._decimals
        append = out.append
        if len(decimals) > _DECIMAL_CACHE_MAX:
            decimals.clear()

        for i in range(lo, hi):
            r = bits(64)
            m = mids[i] * exp(sigmas[i] * normal[r & 0xFFFF] + drifts[i])
            if m < _MIN_MID:
                m = _MIN_MID
            mids[i] = m
            if m >= _ONE_DOLLAR:
                c = m * 0.01  # mid in cents
                s = int(c * rel_cents[i])
                b0 = bases[i]
                if s < b0:
                    s = b0
                s += jitter[(r >> 16) & 7]
                if c < 300.0:  # under $3 a cent is already a wide spread: at most ~2%
                    cap = int(c * 0.02)
                    if s > cap:
                        s = cap if cap > 1 else 1
                b = int(c - s * 0.5 + 0.5)
                if b < 1:
                    b = 1
                bid = b * _CENT
                ask = bid + s * _CENT
                last = bid + ((((r >> 36) & 0xFFFF) * (s + 1)) >> 16) * _CENT
            else:
                s = int(m * rel_units[i])
                b0 = bases[i]
                if s < b0:
                    s = b0
                s += jitter[(r >> 16) & 7]
                bid = int(m - s * 0.5 + 0.5)
                if bid < 1:
                    bid = 1
                elif bid >= _ONE_DOLLAR:
                    bid = _ONE_DOLLAR - 1
                ask = bid + s
                last = bid + ((((r >> 36) & 0xFFFF) * (s + 1)) >> 16)
                if ask >= _ONE_DOLLAR:
                    # On the cent grid from $1 up: round down, which stays >= $1.00 > bid.
                    ask = ask // _CENT * _CENT
                    if last >= _ONE_DOLLAR:
                        last = last // _CENT * _CENT
            vol = volumes[i] + trades[(r >> 19) & 31] * steps
            volumes[i] = vol
            try:
                bd = decimals[bid]
                ad = decimals[ask]
                ld = decimals[last]
            except KeyError:
                bd, ad, ld = self._decimals_for(bid, ask, last)
            append(
                Quote(
                    symbols[i], bd, ad, sizes[(r >> 24) & 63], sizes[(r >> 30) & 63], ld, vol, now
                )
            )

    def _decimals_for(self, *units: int) -> tuple[Decimal, ...]:
        cache = self._decimals
        out = []
        for u in units:
            d = cache.get(u)
            if d is None:
                d = cache[u] = _units_to_decimal(u)
            out.append(d)
        return tuple(out)

    async def stream(self, *, batch_interval: float = 0.01) -> AsyncIterator[list[Quote]]:
        """Batches in real time, one every `batch_interval` seconds (empty ones are skipped).

        A consumer that falls behind does not cause a burst of catch-up batches: the pacing
        restarts from now, and the next batch folds the backlog (see `next_batch`).
        """
        if not batch_interval > 0:
            raise ValueError("batch_interval must be positive")
        loop = asyncio.get_running_loop()
        deadline = loop.time()
        while True:
            batch = self.next_batch()
            if batch:
                yield batch
            deadline += batch_interval
            delay = deadline - loop.time()
            if delay < 0:
                deadline = loop.time()
                delay = 0.0
            await asyncio.sleep(delay)
