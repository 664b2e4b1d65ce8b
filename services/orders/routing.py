"""Venue router: best execution of one order over simulated venues, each behind a circuit breaker.

Each venue quotes a fixed number of ticks worse than the consolidated quote and shows a limited
size at that price. The router sends the order to the best-priced venue first (then the fastest),
moves the rest on to the next one, and skips a venue whose breaker is open. A venue that errors or
times out counts as a breaker failure; the remainder goes to the next venue, so the order still
fills elsewhere.

Breakers (purgatory): `breaker_threshold` consecutive failures open a venue's breaker; after
`breaker_reset_seconds` the next order sends one probe to it (half-open, at most one probe in
flight across concurrent orders): a success closes the breaker, a failure opens it again.

Execution ids are `{venue}:{order_key}:{n}`, n the 1-based position of the attempt within the
route call. Replaying the same decision (same `order_key`, which includes the order's version)
yields the same ids, so the unique index on `executions.venue_execution_id` makes a replay
harmless.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from types import MappingProxyType

from prometheus_client import Counter, Gauge
from purgatory import AsyncCircuitBreakerFactory
from purgatory.domain.messages.base import Event
from purgatory.domain.messages.events import ContextChanged
from purgatory.domain.model import CLOSED, HALF_OPENED, OPENED, OpenedState

from services.infra.compat import AsyncCircuitBreaker
from services.money import round_shares_down
from services.orders.order_model import Side

log = logging.getLogger("tradeql.routing")

ONE_DOLLAR = Decimal(1)
PENNY_TICK = Decimal("0.01")
SUB_DOLLAR_TICK = Decimal("0.0001")

BREAKER_STATE_VALUES: Mapping[str, int] = MappingProxyType({CLOSED: 0, HALF_OPENED: 1, OPENED: 2})

VENUE_BREAKER_STATE = Gauge(
    "tradeql_venue_breaker_state",
    "Circuit breaker of each venue: 0 closed, 1 half-open (probe in flight), 2 open",
    ["venue"],
)
VENUE_FILLS = Counter("tradeql_venue_fills_total", "Executions received from a venue", ["venue"])
VENUE_FAILURES = Counter(
    "tradeql_venue_failures_total",
    "Venue attempts that failed (kind: error or timeout)",
    ["venue", "kind"],
)


def check_rate(venue: str, rate: float) -> float:
    """A failure or fault rate is a probability."""
    if not (0.0 <= rate <= 1.0):  # also refuses NaN
        raise ValueError(f"{venue}: rate must be between 0 and 1, got {rate!r}")
    return rate


class VenueError(Exception):
    """A venue refused or failed an execution request."""

    def __init__(self, venue: str, message: str) -> None:
        super().__init__(f"{venue}: {message}")
        self.venue = venue


@dataclass(frozen=True)
class VenueSpec:
    """How a simulated venue behaves: its price relative to the quote, depth, speed, reliability."""

    name: str
    price_offset_ticks: int
    displayed_size: Decimal
    latency_ms: float
    failure_rate: float

    def __post_init__(self) -> None:
        if not self.name or "=" in self.name or "," in self.name or ":" in self.name:
            raise ValueError(f"venue name {self.name!r} must be non-empty without '=', ',' or ':'")
        if not self.displayed_size.is_finite() or self.displayed_size <= 0:
            raise ValueError(f"{self.name}: displayed_size must be positive")
        if round_shares_down(self.displayed_size) != self.displayed_size:
            raise ValueError(f"{self.name}: displayed_size has more than 6 decimal places")
        if not math.isfinite(self.latency_ms) or self.latency_ms < 0:
            raise ValueError(f"{self.name}: latency_ms must be zero or more")
        check_rate(self.name, self.failure_rate)


@dataclass(frozen=True)
class VenueFill:
    """One execution at a venue."""

    venue: str
    quantity: Decimal
    price: Decimal
    venue_execution_id: str


DEFAULT_VENUES: tuple[VenueSpec, ...] = (
    VenueSpec("EDGX", 0, Decimal(100), 1.0, 0.002),
    VenueSpec("ARCA", 1, Decimal(1000), 2.0, 0.005),
    VenueSpec("IEXG", 2, Decimal(1_000_000_000), 3.0, 0.001),
)


def parse_faults(text: str) -> dict[str, float]:
    """Fault rates from a setting such as "EDGX=1.0,ARCA=0.5"; an empty string means none."""
    faults: dict[str, float] = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        name, sep, value = (piece.strip() for piece in item.partition("="))
        if not sep or not name or not value:
            raise ValueError(f"fault {item!r}: expected VENUE=RATE, e.g. EDGX=1.0")
        if name in faults:
            raise ValueError(f"fault for {name} given twice")
        try:
            rate = float(value)
        except ValueError:
            raise ValueError(f"fault {item!r}: {value!r} is not a number") from None
        faults[name] = check_rate(name, rate)
    return faults


def tick_size(price: Decimal) -> Decimal:
    """Minimum price increment: $0.01 at or above $1, $0.0001 below."""
    return PENNY_TICK if price >= ONE_DOLLAR else SUB_DOLLAR_TICK


def _tick_up(price: Decimal) -> Decimal:
    return price + tick_size(price)


def _tick_down(price: Decimal) -> Decimal:
    """One tick lower; from $1.00 the next price down is $0.9999, not $0.99."""
    return price - (SUB_DOLLAR_TICK if price <= ONE_DOLLAR else PENNY_TICK)


def venue_price(side: Side, reference: Decimal, offset_ticks: int) -> Decimal:
    """The reference (ask for a buy, bid for a sell) moved `offset_ticks` ticks against the
    customer, one tick at a time so the result stays on the grid across the $1 boundary."""
    worse_is_up = side is Side.BUY
    up = worse_is_up if offset_ticks >= 0 else not worse_is_up
    step = _tick_up if up else _tick_down
    price = reference
    for _ in range(abs(offset_ticks)):
        price = step(price)
    return price


def within_limit(side: Side, price: Decimal, limit_price: Decimal | None) -> bool:
    if limit_price is None:
        return True
    return price <= limit_price if side is Side.BUY else price >= limit_price


class SimulatedVenue:
    """A venue that answers after its latency, fails at its rate and fills at most its size."""

    def __init__(
        self,
        spec: VenueSpec,
        *,
        rng: random.Random | None = None,
        fault_rate: float | None = None,
    ) -> None:
        self.spec = spec
        self.calls = 0
        self._rng = rng if rng is not None else random.Random()
        self._fault_rate: float | None = None
        self.set_fault(fault_rate)

    @property
    def failure_rate(self) -> float:
        """The injected fault rate while one is set, else the venue's own rate."""
        return self.spec.failure_rate if self._fault_rate is None else self._fault_rate

    def set_fault(self, rate: float | None) -> None:
        self._fault_rate = None if rate is None else check_rate(self.spec.name, rate)

    async def execute(
        self, *, side: Side, quantity: Decimal, price: Decimal, execution_id: str
    ) -> VenueFill:
        """Fill up to the displayed size at `price`, or raise `VenueError`.

        One random draw per call, after the latency, so a seeded venue fails on the same calls
        every run. A call cancelled by the router's timeout never executes."""
        self.calls += 1
        await asyncio.sleep(self.spec.latency_ms / 1000)
        if self._rng.random() < self.failure_rate:
            raise VenueError(self.spec.name, f"{side.value} {execution_id} rejected")
        filled = min(quantity, self.spec.displayed_size)
        return VenueFill(self.spec.name, filled, price, execution_id)


@dataclass(frozen=True, slots=True)
class _Candidate:
    venue: SimulatedVenue
    price: Decimal

    @property
    def name(self) -> str:
        return self.venue.spec.name


class VenueRouter:
    """Routes orders over venues for the best price, each venue behind its own breaker."""

    def __init__(
        self,
        venues: Sequence[VenueSpec] = DEFAULT_VENUES,
        *,
        breaker_threshold: int = 5,
        breaker_reset_seconds: float = 10.0,
        timeout_ms: float = 250,
        faults: Mapping[str, float] | None = None,
        seed: int | None = None,
    ) -> None:
        names = [spec.name for spec in venues]
        if not names or len(set(names)) != len(names):
            raise ValueError(f"venues must be non-empty with distinct names, got {names}")
        unknown = set(faults or {}) - set(names)
        if unknown:
            raise ValueError(f"faults name unknown venues: {sorted(unknown)}")
        if breaker_threshold < 1 or breaker_reset_seconds <= 0 or timeout_ms <= 0:
            raise ValueError("breaker_threshold, breaker_reset_seconds and timeout_ms must be > 0")
        self._timeout = timeout_ms / 1000
        self._venues = {
            spec.name: SimulatedVenue(
                spec, rng=_venue_rng(seed, spec.name), fault_rate=(faults or {}).get(spec.name)
            )
            for spec in venues
        }
        self._factory = AsyncCircuitBreakerFactory(
            default_threshold=breaker_threshold, default_ttl=breaker_reset_seconds
        )
        self._factory.add_listener(self._on_breaker_event)
        self._breakers: dict[str, AsyncCircuitBreaker] = {}
        self._probing: set[str] = set()
        for name in names:
            VENUE_BREAKER_STATE.labels(name).set(0)

    @property
    def venues(self) -> Mapping[str, SimulatedVenue]:
        return MappingProxyType(self._venues)

    def set_fault(self, venue: str, rate: float | None) -> None:
        """Inject a failure rate at a venue (None restores its own rate)."""
        if venue not in self._venues:
            raise ValueError(f"unknown venue {venue!r}")
        self._venues[venue].set_fault(rate)

    def breaker_states(self) -> dict[str, str]:
        """Each venue's breaker: "closed", "opened" or "half-opened". An open breaker past its
        reset time reads "half-opened" (the next order probes it); purgatory itself only moves it
        on that next request, which is also when the gauge changes."""
        return {name: self._state(name) for name in self._venues}

    async def route(
        self,
        *,
        order_key: str,
        side: Side,
        quote_bid: Decimal,
        quote_ask: Decimal,
        quantity: Decimal | None = None,
        notional: Decimal | None = None,
        limit_price: Decimal | None = None,
        min_quantity: Decimal | None = None,
    ) -> list[VenueFill]:
        """Execute up to `quantity` shares (or up to `notional` dollars) at the best venues.

        Returns the fills, possibly partial or empty. With `min_quantity` (fill-or-kill) the
        result is all or nothing: [] without touching a venue when the displayed size of the
        eligible venues cannot cover it, and [] as well when venue failures leave the fills short
        of it; those partial fills are discarded, which undoes them since simulated venues keep
        no state (a real venue would need them busted). So for FOK the caller passes
        `min_quantity=quantity` and either books every fill (their sum equals the quantity) or,
        on [], cancels the order without booking anything."""
        reference = _validate(side, quote_bid, quote_ask, quantity, notional, limit_price)
        _validate_min_quantity(quantity, min_quantity)
        plan = self._plan(side, reference, limit_price)
        if min_quantity is not None and _displayed(plan) < min_quantity:
            return []
        fills = await self._fill(plan, order_key, side, quantity, notional)
        if min_quantity is not None and _filled(fills) < min_quantity:
            log.warning(
                "fill-or-kill %s: venues filled %s of %s; discarding %d fills",
                order_key,
                _filled(fills),
                min_quantity,
                len(fills),
            )
            return []
        return fills

    def _plan(
        self, side: Side, reference: Decimal, limit_price: Decimal | None
    ) -> list[_Candidate]:
        """Eligible venues with their prices, best price first, then lower latency."""
        candidates = [
            _Candidate(venue, venue_price(side, reference, venue.spec.price_offset_ticks))
            for venue in self._venues.values()
            if self._admits(venue.spec.name)
        ]
        eligible = [
            c for c in candidates if c.price > 0 and within_limit(side, c.price, limit_price)
        ]
        sign = 1 if side is Side.BUY else -1
        return sorted(eligible, key=lambda c: (sign * c.price, c.venue.spec.latency_ms))

    async def _fill(
        self,
        plan: Sequence[_Candidate],
        order_key: str,
        side: Side,
        quantity: Decimal | None,
        notional: Decimal | None,
    ) -> list[VenueFill]:
        """Walk the plan, sending each venue what is left (capped by its displayed size)."""
        ids = _ExecutionIds(order_key)
        fills: list[VenueFill] = []
        remaining_quantity, remaining_notional = quantity, notional
        for candidate in plan:
            if remaining_quantity == 0 or remaining_notional == 0:
                break
            child = _child_quantity(candidate, remaining_quantity, remaining_notional)
            if child <= 0:
                continue
            fill = await self._attempt(candidate, side, child, ids)
            if fill is None:
                continue
            fills.append(fill)
            if remaining_quantity is not None:
                remaining_quantity -= fill.quantity
            if remaining_notional is not None:
                remaining_notional -= fill.quantity * fill.price
        return fills

    async def _attempt(
        self, candidate: _Candidate, side: Side, quantity: Decimal, ids: _ExecutionIds
    ) -> VenueFill | None:
        """One venue call through its breaker; None when it is skipped or fails."""
        name = candidate.name
        breaker = await self._breaker(name)
        probe = self._state(name) != CLOSED
        if probe and name in self._probing:
            return None  # another order's probe is in flight: one probe at a time
        if probe:
            self._probing.add(name)
        try:
            # A cancelled route also counts as a failure here (purgatory sees the exception);
            # that only errs on the side of opening the breaker.
            async with breaker:
                self._publish_state(name)  # purgatory announces the half-open move only on exit
                execution = candidate.venue.execute(
                    side=side,
                    quantity=quantity,
                    price=candidate.price,
                    execution_id=ids.next_for(name),
                )
                fill = await asyncio.wait_for(execution, self._timeout)
        except OpenedState:
            return None
        except VenueError as exc:
            self._failed(name, "error", exc)
            return None
        except TimeoutError as exc:
            self._failed(name, "timeout", exc)
            return None
        finally:
            if probe:
                self._probing.discard(name)
        VENUE_FILLS.labels(name).inc()
        return fill

    def _failed(self, venue: str, kind: str, exc: BaseException) -> None:
        VENUE_FAILURES.labels(venue, kind).inc()
        log.warning("venue %s %s: %s", venue, kind, str(exc) or "no answer within the timeout")

    async def _breaker(self, name: str) -> AsyncCircuitBreaker:
        if name not in self._breakers:
            self._breakers[name] = await self._factory.get_breaker(name)
        return self._breakers[name]

    def _state(self, name: str) -> str:
        breaker = self._breakers.get(name)
        if breaker is None:
            return CLOSED
        context = breaker.context
        if context.state == OPENED and context.opened_at is not None:
            if time.time() > context.opened_at + context.ttl:  # purgatory's own test
                return HALF_OPENED
        return context.state

    def _admits(self, name: str) -> bool:
        """Closed, or due for a probe that no other order is sending."""
        state = self._state(name)
        return state == CLOSED or (state == HALF_OPENED and name not in self._probing)

    def _publish_state(self, name: str) -> None:
        breaker = self._breakers.get(name)
        if breaker is not None:
            VENUE_BREAKER_STATE.labels(name).set(BREAKER_STATE_VALUES[breaker.context.state])

    def _on_breaker_event(self, name: str, kind: str, event: Event) -> None:
        """purgatory listener: keeps the gauge in step with every state change."""
        if kind != "state_changed" or not isinstance(event, ContextChanged):
            return
        VENUE_BREAKER_STATE.labels(name).set(BREAKER_STATE_VALUES[event.state])
        level = logging.WARNING if event.state == OPENED else logging.INFO
        log.log(level, "venue %s breaker %s", name, event.state)


def _venue_rng(seed: int | None, venue: str) -> random.Random:
    """One generator per venue, so a venue's failures do not depend on calls to the others."""
    return random.Random(f"{seed}:{venue}") if seed is not None else random.Random()


class _ExecutionIds:
    """Ids for the venue calls of one route call: `{venue}:{order_key}:{n}`, n counting from 1."""

    def __init__(self, order_key: str) -> None:
        self._order_key = order_key
        self._count = 0

    def next_for(self, venue: str) -> str:
        self._count += 1
        return f"{venue}:{self._order_key}:{self._count}"


def _child_quantity(
    candidate: _Candidate, remaining_quantity: Decimal | None, remaining_notional: Decimal | None
) -> Decimal:
    """Shares to send to one venue: what is left (or affordable), capped by its displayed size."""
    if remaining_notional is not None:
        wanted = round_shares_down(remaining_notional / candidate.price)
    else:
        assert remaining_quantity is not None
        wanted = remaining_quantity
    return round_shares_down(min(wanted, candidate.venue.spec.displayed_size))


def _displayed(plan: Sequence[_Candidate]) -> Decimal:
    return sum((c.venue.spec.displayed_size for c in plan), Decimal(0))


def _filled(fills: Sequence[VenueFill]) -> Decimal:
    return sum((f.quantity for f in fills), Decimal(0))


def _validate(
    side: Side,
    quote_bid: Decimal,
    quote_ask: Decimal,
    quantity: Decimal | None,
    notional: Decimal | None,
    limit_price: Decimal | None,
) -> Decimal:
    """Checks a route request; returns the reference price (ask for a buy, bid for a sell)."""
    if (quantity is None) == (notional is None):
        raise ValueError("give exactly one of quantity and notional")
    if quantity is not None:
        _require_shares(quantity, "quantity")
    if notional is not None and (not notional.is_finite() or notional <= 0):
        raise ValueError("notional must be a positive amount")
    if limit_price is not None and (not limit_price.is_finite() or limit_price <= 0):
        raise ValueError("limit_price must be positive")
    reference = quote_ask if side is Side.BUY else quote_bid
    if not reference.is_finite() or reference <= 0:
        label = "quote_ask" if side is Side.BUY else "quote_bid"
        raise ValueError(f"{label} must be positive to route a {side.value.lower()}")
    return reference


def _validate_min_quantity(quantity: Decimal | None, min_quantity: Decimal | None) -> None:
    if min_quantity is None:
        return
    _require_shares(min_quantity, "min_quantity")
    if quantity is not None and min_quantity > quantity:
        raise ValueError("min_quantity exceeds quantity")


def _require_shares(value: Decimal, field: str) -> None:
    if not value.is_finite() or value <= 0:
        raise ValueError(f"{field} must be positive")
    if round_shares_down(value) != value:
        raise ValueError(f"{field} has more than 6 decimal places")
