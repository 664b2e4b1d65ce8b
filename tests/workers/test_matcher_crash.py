"""The matcher killed with SIGKILL at random moments during 1,000 orders loses and doubles nothing,
and `tradeql check` is clean after, every order rebuilt from its events included.

The matcher runs as a real process (`python -m gateway.cli matcher`). While 1,000 orders are
placed in concurrent waves (market buys and sells, dollar-amount buys, resting and marketable
limits, IOCs, and cancels racing the matcher) and quotes move, a killer sends SIGKILL to the
matcher at seeded random moments once it has taken its leases, and starts the next one at once
(which waits for the dead one's leases to expire). Once every order is placed the killing stops,
the last matcher is left running, quotes are moved through every resting limit, and the books are
checked against the executions order by order, account by account and position by position.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import IO, Any
from uuid import UUID

import pytest
from sqlalchemy import text

from services.accounts.reconcile import find_differences
from services.errors import NotCancellable
from services.infra.container import Services
from services.infra.settings import Settings
from services.infra.streams import partition_of
from services.money import round_cash_up
from services.orders.order_history import history_differences
from services.orders.order_model import Order, Side, Status
from services.orders.order_store import orders_by_id
from services.portfolio.positions import fill_value
from tests.trading import listed, place, quote, trader, unique_symbol
from workers.matcher import lease_key

SEED = int(os.environ.get("TRADEQL_CRASH_SEED", "20240611"))
ORDER_COUNT = 1000
WAVES = 40
WAVE_PAUSE = (0.3, 0.8)  # seconds between waves: about 30 s of placing, and of killing
KILL_DELAY = (0.3, 1.5)  # seconds a matcher lives once it holds a lease: often mid-rebuild
TRADERS = 4
DEPOSIT = Decimal("1000000")
SEED_SHARES = Decimal(200)
BASES = ("23.45", "58.10", "101.00", "142.30", "187.65", "12.80")
CENT = Decimal("0.01")
SPREAD = Decimal("0.02")
REPO = Path(__file__).resolve().parents[2]


# -- the matcher processes ---------------------------------------------------------------------


@dataclass
class Kill:
    generation: int
    pid: int
    at: float  # seconds since the chaos began
    lived: float  # seconds since it was started
    held: frozenset[int]  # the partitions it held when killed


class Matchers:
    """`python -m gateway.cli matcher` processes, one at a time, all logging to one file."""

    def __init__(
        self, services: Services, log_path: Path, started: list[subprocess.Popen[bytes]]
    ) -> None:
        self.redis = services.redis
        self.partitions = services.settings.quote_partitions
        self.log_path = log_path
        self.started = started
        self.kills: list[Kill] = []
        self._log: IO[bytes] = log_path.open("ab")
        self._born: dict[int, float] = {}
        self._sentinel = f"tradeql:test-matcher-crash:{uuid.uuid4().hex}"

    async def mark_redis(self) -> None:
        await self.redis.set(self._sentinel, "1", ex=600)

    async def redis_note(self) -> str:
        """A failure's likely cause when the test's Redis db was flushed under it (another test
        session sharing the db): quotes, streams and leases all gone at once."""
        if await self.redis.exists(self._sentinel):
            return ""
        return "\n!!! the test's Redis db was FLUSHED during the run by someone else !!!"

    @property
    def current(self) -> subprocess.Popen[bytes]:
        return self.started[-1]

    def start(self) -> subprocess.Popen[bytes]:
        self._log.write(f"\n=== matcher #{len(self.started) + 1} starting ===\n".encode())
        self._log.flush()
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "matcher"],
            cwd=REPO,
            env=os.environ.copy(),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, killed as a whole
        )
        self.started.append(proc)
        self._born[proc.pid] = time.monotonic()
        return proc

    @staticmethod
    def owner(proc: subprocess.Popen[bytes]) -> str:
        return f"matcher-{socket.gethostname()}-{proc.pid}"  # services.streams.consumer_name

    async def held(self, proc: subprocess.Popen[bytes]) -> frozenset[int]:
        owners = await self.redis.mget([lease_key(p) for p in range(self.partitions)])
        return frozenset(p for p, o in enumerate(owners) if o == self.owner(proc))

    async def kill(self, proc: subprocess.Popen[bytes], chaos_began: float) -> Kill:
        held = await self.held(proc)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await asyncio.to_thread(proc.wait, 10)
        now = time.monotonic()
        kill = Kill(
            len(self.started), proc.pid, now - chaos_began, now - self._born[proc.pid], held
        )
        self.kills.append(kill)
        return kill

    async def wait_for_leases(self, proc: subprocess.Popen[bytes], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while len(await self.held(proc)) < self.partitions:
            self.check_alive(proc)
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"matcher pid {proc.pid} did not take every partition in {timeout:.0f} s; "
                    f"leases: {await self.redis.mget([lease_key(p) for p in range(self.partitions)])}"
                    f"\n{self.tail()}"
                )
            await asyncio.sleep(0.05)

    def check_alive(self, proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is not None:
            raise AssertionError(
                f"matcher pid {proc.pid} exited ({proc.returncode})\n{self.tail()}"
            )

    def tail(self, lines: int = 80) -> str:
        self._log.flush()
        text_ = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        return "--- matcher log (tail) ---\n" + "\n".join(text_)

    async def stop(self, proc: subprocess.Popen[bytes], timeout: float = 20) -> int | None:
        """SIGTERM: a clean stop (it releases its leases); None if it did not stop in time."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            return await asyncio.to_thread(proc.wait, timeout)
        except subprocess.TimeoutExpired:
            return None

    async def cleanup(self) -> None:
        """Every process this test started is gone, and so are the leases they held."""
        for proc in self.started:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    await asyncio.to_thread(proc.wait, 10)
        owners = {self.owner(p) for p in self.started}
        for partition in range(self.partitions):
            with contextlib.suppress(Exception):
                if await self.redis.get(lease_key(partition)) in owners:
                    await self.redis.delete(lease_key(partition))
        self._log.close()


# -- the market and the orders -----------------------------------------------------------------


@dataclass(frozen=True)
class Spec:
    user: UUID
    symbol: str
    side: str
    type: str = "MARKET"
    tif: str = "DAY"
    quantity: Decimal | None = None
    notional: Decimal | None = None
    limit: Decimal | None = None
    resting: bool = False  # deliberately out of reach: must still be working at the end

    async def place(self, services: Services) -> Order:
        return await place(
            services,
            self.user,
            self.symbol,
            self.side,
            type=self.type,
            tif=self.tif,
            quantity=None if self.quantity is None else str(self.quantity),
            notional=None if self.notional is None else str(self.notional),
            limit=None if self.limit is None else str(self.limit),
        )


class Market:
    """The quotes the test publishes: bid = level, ask = level + 2 cents, within 4% of the base."""

    def __init__(self, services: Services, bases: dict[str, Decimal]) -> None:
        self.services = services
        self.base = bases
        self.bid = dict(bases)

    def ask(self, symbol: str) -> Decimal:
        return self.bid[symbol] + SPREAD

    def walk(self, symbol: str, rng: random.Random) -> None:
        base = self.base[symbol]
        moved = self.bid[symbol] * (1 + Decimal(rng.randint(-10, 10)) / 1000)
        self.bid[symbol] = min(max(moved, base * Decimal("0.96")), base * Decimal("1.04")).quantize(
            CENT
        )

    def set_all(self, factor: str) -> None:
        self.bid = {s: (b * Decimal(factor)).quantize(CENT) for s, b in self.base.items()}

    async def publish(self, symbols: list[str] | None = None) -> None:
        for symbol in symbols or list(self.bid):
            await quote(self.services, symbol, str(self.bid[symbol]), str(self.ask(symbol)))


def _shares(rng: random.Random, high: int) -> Decimal:
    if rng.random() < 0.3:  # fractional shares, so fills' values round to the cent
        return Decimal(rng.randint(10, high * 100)) / 100
    return Decimal(rng.randint(1, high))


class OrderMaker:
    """Seeded orders within each trader's free shares (and cash, which is ample)."""

    def __init__(
        self, rng: random.Random, market: Market, users: list[UUID], symbols: list[str]
    ) -> None:
        self.rng = rng
        self.market = market
        self.users = users
        self.symbols = symbols
        self.free = {(u, s): SEED_SHARES for u in users for s in symbols}  # buys never count

    def _sell(self, user: UUID, symbol: str, quantity: Decimal) -> bool:
        if self.free[(user, symbol)] < quantity:
            return False
        self.free[(user, symbol)] -= quantity
        return True

    def next(self) -> Spec:
        rng, market = self.rng, self.market
        user, symbol = rng.choice(self.users), rng.choice(self.symbols)
        bid, ask, base = market.bid[symbol], market.ask(symbol), market.base[symbol]
        r = rng.random()
        if r < 0.27:
            qty = _shares(rng, 5)
            if self._sell(user, symbol, qty):
                return Spec(user, symbol, "SELL", quantity=qty)
        elif r < 0.32:
            notional = Decimal(rng.randint(5_000, 150_000)) / 100
            return Spec(user, symbol, "BUY", notional=notional)
        elif r < 0.40:  # a buy limit below the market, some big enough to fill in parts
            qty = Decimal(rng.randint(120, 150)) if rng.random() < 0.15 else _shares(rng, 30)
            limit = (bid * (1 - Decimal(rng.randint(2, 30)) / 1000)).quantize(CENT)
            return Spec(user, symbol, "BUY", "LIMIT", rng.choice(["DAY", "GTC"]), qty, limit=limit)
        elif r < 0.48:  # a sell limit above the market
            qty = _shares(rng, 10)
            limit = (ask * (1 + Decimal(rng.randint(2, 30)) / 1000)).quantize(CENT)
            if self._sell(user, symbol, qty):
                return Spec(
                    user, symbol, "SELL", "LIMIT", rng.choice(["DAY", "GTC"]), qty, limit=limit
                )
        elif r < 0.53:  # marketable limits, some IOC
            tif = rng.choice(["DAY", "IOC"])
            if rng.random() < 0.5:
                limit = (ask * Decimal("1.01")).quantize(CENT)
                return Spec(user, symbol, "BUY", "LIMIT", tif, _shares(rng, 20), limit=limit)
            qty = _shares(rng, 5)
            if self._sell(user, symbol, qty):
                limit = (bid * Decimal("0.99")).quantize(CENT)
                return Spec(user, symbol, "SELL", "LIMIT", tif, qty, limit=limit)
        elif r < 0.55:  # out of reach on purpose: still working, and holding, at the end
            if rng.random() < 0.5:
                limit = (base / 2).quantize(CENT)
                return Spec(user, symbol, "BUY", "LIMIT", "GTC", _shares(rng, 3), None, limit, True)
            if self._sell(user, symbol, Decimal(1)):
                limit = base * 2
                return Spec(user, symbol, "SELL", "LIMIT", "GTC", Decimal(1), None, limit, True)
        return Spec(user, symbol, "BUY", quantity=_shares(rng, 20))


def _symbols(partitions: int, count: int) -> list[str]:
    """Fresh symbols covering every partition, so every partition's matcher has work."""
    chosen: list[str] = []
    covered: set[int] = set()
    while len(covered) < partitions or len(chosen) < count:
        symbol = unique_symbol("K")
        partition = partition_of(symbol, partitions)
        if partition not in covered or len(covered) == partitions:
            covered.add(partition)
            chosen.append(symbol)
    return chosen


@dataclass
class Run:
    """What the test did, to compare with what the database says."""

    specs: dict[UUID, Spec] = field(default_factory=dict)
    cancelled: set[UUID] = field(default_factory=set)  # cancels that answered CANCELLED
    refused_cancels: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)


async def _read(services: Services, sql: str, **params: Any) -> list[Any]:
    async with services.engine.connect() as conn:
        return list(await conn.execute(text(sql), params))


async def _orders(services: Services, ids: list[UUID]) -> dict[UUID, Order]:
    async with services.engine.connect() as conn:
        return await orders_by_id(conn, ids)


def _describe(order: Order, spec: Spec | None) -> str:
    limit = f" @ {order.limit_price}" if order.limit_price is not None else ""
    resting = " (resting on purpose)" if spec is not None and spec.resting else ""
    return (
        f"{order.id} {order.symbol} {order.side.value} {order.type.value} "
        f"{order.time_in_force.value} {order.status.value} {order.filled_quantity}/"
        f"{order.quantity}{limit} v{order.version}{resting}"
    )


async def _wait_until(
    services: Services,
    matchers: Matchers,
    run: Run,
    what: str,
    done: Callable[[Order], bool],
    timeout: float,
    every_second: Callable[[], Awaitable[None]] | None = None,
) -> float:
    """Poll until `done` holds for every order placed; fail listing the orders it does not."""
    began = time.monotonic()
    next_tick = began + 1.0
    while True:
        orders = await _orders(services, list(run.specs))
        stuck = [o for i, o in orders.items() if not done(o)]
        missing = [i for i in run.specs if i not in orders]
        if not stuck and not missing:
            return time.monotonic() - began
        matchers.check_alive(matchers.current)
        if time.monotonic() - began > timeout:
            listed_ = "\n".join(_describe(o, run.specs.get(o.id)) for o in stuck[:40])
            raise AssertionError(
                f"{what}: not reached in {timeout:.0f} s; {len(stuck)} orders stuck, "
                f"{len(missing)} missing:\n{listed_}\n{matchers.tail()}"
                f"{await matchers.redis_note()}"
            )
        if every_second is not None and time.monotonic() >= next_tick:
            await every_second()
            next_tick = time.monotonic() + 1.0
        await asyncio.sleep(0.2)


def _immediate(spec: Spec) -> bool:
    return spec.type == "MARKET" or spec.tif == "IOC"


# -- the test ----------------------------------------------------------------------------------


@pytest.fixture
def reaper() -> Iterator[list[subprocess.Popen[bytes]]]:
    """The matchers a test starts; none outlives it, even when pytest-timeout cuts it short."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)


async def test_sigkilled_matcher_loses_and_doubles_nothing(
    services: Services,
    settings: Settings,
    tmp_path: Path,
    reaper: list[subprocess.Popen[bytes]],
) -> None:
    began = time.monotonic()
    rng, kill_rng = random.Random(SEED), random.Random(SEED + 1)
    partitions = settings.quote_partitions
    symbols = _symbols(partitions, len(BASES))
    await listed(services, *symbols)
    market = Market(services, {s: Decimal(b) for s, b in zip(symbols, BASES, strict=True)})
    await market.publish()
    users = [await trader(services, str(DEPOSIT)) for _ in range(TRADERS)]
    maker = OrderMaker(rng, market, users, symbols)
    run = Run()

    # A matcher left by an earlier test releases its leases when it stops; a crashed one's expire.
    for _ in range(int(settings.matcher_lease_seconds * 20) + 20):
        if not any(await services.redis.mget([lease_key(p) for p in range(partitions)])):
            break
        await asyncio.sleep(0.05)

    matchers = Matchers(services, tmp_path / "matcher.log", reaper)
    try:
        await matchers.mark_redis()
        matchers.start()
        await matchers.wait_for_leases(matchers.current, timeout=30)

        # Positions to sell from, bought through the matcher before the killing starts.
        seeds = [Spec(u, s, "BUY", quantity=SEED_SHARES) for u in users for s in symbols]
        for spec, order in zip(
            seeds, await asyncio.gather(*(s.place(services) for s in seeds)), strict=True
        ):
            run.specs[order.id] = spec
        await _wait_until(
            services, matchers, run, "seed buys filled", lambda o: o.status is Status.FILLED, 30
        )
        setup_seconds = time.monotonic() - began

        placed = asyncio.Event()
        chaos_began = time.monotonic()

        async def killer() -> None:
            while not placed.is_set():
                proc = matchers.current
                while not placed.is_set() and not await matchers.held(proc):
                    matchers.check_alive(proc)  # a matcher that dies by itself is a failure
                    await asyncio.sleep(0.05)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(placed.wait(), kill_rng.uniform(*KILL_DELAY))
                if placed.is_set():
                    return  # every order is placed: this one is the matcher left running
                kill = await matchers.kill(proc, chaos_began)
                print(
                    f"kill #{len(matchers.kills)} at {kill.at:5.1f} s: pid {kill.pid} after "
                    f"{kill.lived:.2f} s, holding partitions {sorted(kill.held)}"
                )
                matchers.start()

        async def cancel(order_id: UUID, user: UUID) -> None:
            try:
                cancelled = await services.cancellation.cancel(user, order_id)
            except NotCancellable as exc:
                run.refused_cancels[str(exc)] += 1
                return
            except Exception as exc:  # anything else is a failure of its own
                run.failures.append(f"cancel {order_id}: {exc!r}")
                return
            if cancelled.status is Status.CANCELLED:
                run.cancelled.add(order_id)
            else:
                run.failures.append(f"cancel {order_id} answered {cancelled.status}")

        async def placer() -> None:
            cancellable: list[UUID] = []
            try:
                for wave in range(WAVES):
                    for symbol in rng.sample(symbols, 3):
                        market.walk(symbol, rng)
                    await market.publish()
                    count = ORDER_COUNT // WAVES + (wave < ORDER_COUNT % WAVES)
                    specs = [maker.next() for _ in range(count)]
                    results = await asyncio.gather(
                        *(s.place(services) for s in specs), return_exceptions=True
                    )
                    fresh: list[tuple[UUID, Spec]] = []
                    for spec, result in zip(specs, results, strict=True):
                        if isinstance(result, BaseException):
                            run.failures.append(f"placing {spec}: {result!r}")
                            continue
                        run.specs[result.id] = spec
                        fresh.append((result.id, spec))
                    # Cancels: older working limits, and fresh orders racing the matcher.
                    targets = rng.sample(cancellable, min(2, len(cancellable)))
                    targets += [i for i, s in fresh if not s.resting and rng.random() < 0.04]
                    await asyncio.gather(*(cancel(i, run.specs[i].user) for i in targets))
                    cancellable += [i for i, s in fresh if s.type == "LIMIT" and s.tif != "IOC"]
                    cancellable = [
                        i
                        for i in cancellable
                        if i not in run.cancelled and not run.specs[i].resting
                    ]
                    await asyncio.sleep(rng.uniform(*WAVE_PAUSE))
            finally:
                placed.set()

        killing = asyncio.create_task(killer(), name="killer")
        try:
            await placer()
        finally:
            await killing
        chaos_seconds = time.monotonic() - chaos_began
        print(f"{len(matchers.kills)} kills in {chaos_seconds:.1f} s of placing (seed {SEED})")
        assert not run.failures, "\n".join(run.failures[:20]) + await matchers.redis_note()
        assert len(run.specs) == ORDER_COUNT + len(seeds)

        # The last matcher keeps running: it must pick up whatever the dead ones left.
        final = matchers.current
        await matchers.wait_for_leases(final, timeout=30)
        immediate_seconds = await _wait_until(
            services,
            matchers,
            run,
            "market and IOC orders done, every order accepted by the matcher",
            lambda o: (
                o.status is not Status.PENDING and not (o.is_open and _immediate(run.specs[o.id]))
            ),
            45,  # the backlog the dead matchers left: hundreds of orders on a busy machine
        )

        # Quotes through every resting limit: the buys first, then the sells. A feed republishes
        # quotes continuously; so does this, once a second, while it waits.
        market.set_all("0.85")
        await market.publish()
        buy_seconds = await _wait_until(
            services,
            matchers,
            run,
            "buy limits crossed by the quote filled",
            lambda o: not (o.is_open and o.side is Side.BUY and not run.specs[o.id].resting),
            20,
            market.publish,
        )
        market.set_all("1.15")
        await market.publish()
        sell_seconds = await _wait_until(
            services,
            matchers,
            run,
            "sell limits crossed by the quote filled",
            lambda o: o.is_open == run.specs[o.id].resting,
            20,
            market.publish,
        )

        # -- the books ----------------------------------------------------------------------
        # Every order rebuilt from its events alone matches its row, kills and all (check does
        # it too, with the ledger).
        assert await history_differences(services.engine) == []
        assert await find_differences(services.engine) == []
        check = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "gateway.cli",
            "check",
            cwd=REPO,
            env=os.environ.copy(),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        check_output, _ = await asyncio.wait_for(check.communicate(), 60)
        assert check.returncode == 0, check_output.decode(errors="replace")

        orders = await _orders(services, list(run.specs))
        assert set(orders) == set(run.specs), "orders placed but not in PostgreSQL"
        executions = await _read(
            services,
            "SELECT order_id, user_id, symbol, side, quantity, price, venue_execution_id "
            "FROM executions WHERE user_id = ANY(:u)",
            u=users,
        )
        duplicates = await _read(
            services,
            "SELECT venue_execution_id, count(*) AS n FROM executions "
            "GROUP BY venue_execution_id HAVING count(*) > 1",
        )
        assert duplicates == [], f"venue execution ids booked twice: {duplicates[:10]}"
        ids = [e.venue_execution_id for e in executions]
        assert len(ids) == len(set(ids))
        assert {e.order_id for e in executions} <= set(orders), "executions of unknown orders"

        executed: dict[UUID, Decimal] = defaultdict(Decimal)
        worth: dict[UUID, Decimal] = defaultdict(Decimal)
        for e in executions:
            executed[e.order_id] += e.quantity
            worth[e.order_id] += e.quantity * e.price
        problems: list[str] = []
        for order_id, order in orders.items():
            spec = run.specs[order_id]
            line = _describe(order, spec)
            if order.filled_quantity != executed[order_id]:
                problems.append(f"filled {order.filled_quantity} != executed: {line}")
            if order.filled_value != worth[order_id]:
                problems.append(f"filled value {order.filled_value} != executed: {line}")
            if order.status is Status.FILLED and order.filled_quantity != order.quantity:
                problems.append(f"FILLED but not fully: {line}")
            if order.status is Status.CANCELLED and order.filled_quantity == order.quantity:
                problems.append(f"CANCELLED yet fully filled: {line}")
            if spec.resting:
                if order.status is not Status.SUBMITTED or order.filled_quantity:
                    problems.append(f"should still be working, untouched: {line}")
            elif order.status is Status.CANCELLED:
                if order_id not in run.cancelled and spec.tif != "IOC":
                    problems.append(f"cancelled by nobody: {line} ({order.reject_reason})")
                if spec.type == "MARKET" and order.filled_quantity:
                    problems.append(f"market order filled in part, then cancelled: {line}")
            elif order.status is not Status.FILLED:
                problems.append(f"neither filled nor cancelled: {line}")
            if order_id in run.cancelled and order.status is not Status.CANCELLED:
                problems.append(f"a cancel answered CANCELLED, the order is not: {line}")
        assert not problems, (
            f"{len(problems)} orders wrong:\n"
            + "\n".join(problems[:40])
            + await matchers.redis_note()
        )

        # Cash, holds and positions, recomputed from the executions.
        accounts = {
            r.user_id: r
            for r in await _read(
                services,
                "SELECT user_id, id, cash, reserved_cash FROM accounts WHERE user_id = ANY(:u)",
                u=users,
            )
        }
        positions = {
            (r.user_id, r.symbol): r
            for r in await _read(
                services,
                "SELECT a.user_id, p.symbol, p.quantity, p.reserved_quantity FROM positions p "
                "JOIN accounts a ON a.id = p.account_id WHERE a.user_id = ANY(:u)",
                u=users,
            )
        }
        # A fill moves the change it makes to its order's running value rounded to the cent
        # (services.fills.fill_cash), so an order moves its exact total, rounded once.
        cash = dict.fromkeys(users, DEPOSIT)
        for order_id, exact in worth.items():
            value = fill_value(exact, Decimal(1))
            cash[orders[order_id].user_id] += -value if orders[order_id].side is Side.BUY else value
        shares: dict[tuple[UUID, str], Decimal] = defaultdict(Decimal)
        for e in executions:
            buy = e.side == Side.BUY.value
            shares[(e.user_id, e.symbol)] += e.quantity if buy else -e.quantity
        held_cash: dict[UUID, Decimal] = defaultdict(Decimal)
        held_shares: dict[tuple[UUID, str], Decimal] = defaultdict(Decimal)
        open_cash: dict[UUID, Decimal] = defaultdict(Decimal)
        for order_id, order in orders.items():
            spec = run.specs[order_id]
            if order.is_open:
                open_cash[order.user_id] += order.reserved_cash
            if spec.resting and spec.side == "BUY":
                assert spec.quantity is not None and spec.limit is not None
                held_cash[spec.user] += round_cash_up(spec.quantity * spec.limit)
            elif spec.resting:
                assert spec.quantity is not None
                held_shares[(spec.user, spec.symbol)] += spec.quantity
        for user in users:
            account = accounts[user]
            assert account.cash == cash[user], f"cash of {user}: {account.cash} != {cash[user]}"
            assert account.reserved_cash == open_cash[user] == held_cash[user], (
                f"reserved cash of {user}: {account.reserved_cash}, open orders hold "
                f"{open_cash[user]}, the resting buys {held_cash[user]}"
            )
        for key in set(positions) | set(shares):
            row = positions.get(key)
            stored = (row.quantity, row.reserved_quantity) if row else (Decimal(0), Decimal(0))
            assert stored == (shares[key], held_shares[key]), f"position {key}: {stored}"

        # -- what the killing amounted to -----------------------------------------------------
        statuses = Counter(o.status.value for o in orders.values())
        print(
            f"\nseed {SEED}: {len(run.specs)} orders ({ORDER_COUNT} under fire), "
            f"{len(executions)} executions, statuses {dict(statuses)}; "
            f"{len(run.cancelled)} cancelled by the test, refused cancels "
            f"{sum(run.refused_cancels.values())}\n"
            f"{len(matchers.kills)} kills ({sum(1 for k in matchers.kills if k.held)} holding "
            f"leases) in {chaos_seconds:.1f} s of placing; lived "
            f"{', '.join(f'{k.lived:.1f}' for k in matchers.kills)} s\n"
            f"setup {setup_seconds:.1f} s, last matcher caught up in {immediate_seconds:.1f} s, "
            f"buy sweep {buy_seconds:.1f} s, sell sweep {sell_seconds:.1f} s"
        )
        assert sum(1 for k in matchers.kills if k.held) > 3, (
            f"only {len(matchers.kills)} kills, {[k.held for k in matchers.kills]}: "
            "the test proved little"
        )

        # The last matcher still stops cleanly (SIGTERM), releasing its leases.
        assert await matchers.stop(final) == 0, matchers.tail()
        assert not any(await services.redis.mget([lease_key(p) for p in range(partitions)]))
    finally:
        await matchers.cleanup()
        # The orders left working on purpose would otherwise outlive the test.
        for order_id, spec in run.specs.items():
            if spec.resting:
                with contextlib.suppress(Exception):
                    await services.cancellation.cancel(spec.user, order_id)
