"""Orders as the domain sees them: sides, types, statuses, and the allowed transitions."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from uuid import UUID


class Side(StrEnum):
    BUY = "BUY"
    SELL = "SELL"


class OrderType(StrEnum):
    MARKET = "MARKET"
    LIMIT = "LIMIT"
    STOP = "STOP"
    STOP_LIMIT = "STOP_LIMIT"
    TRAILING_STOP = "TRAILING_STOP"


class OrderClass(StrEnum):
    """SIMPLE: one order. BRACKET: a buy entry whose take-profit and stop-loss exits (its legs)
    are made when it ends; one filling cancels (or reduces) the other. OTO: the same with one
    exit. OCO: a take-profit sell (the parent) and its stop-loss leg; one cancels the other."""

    SIMPLE = "SIMPLE"
    BRACKET = "BRACKET"
    OCO = "OCO"
    OTO = "OTO"


class TimeInForce(StrEnum):
    DAY = "DAY"
    GTC = "GTC"
    IOC = "IOC"
    FOK = "FOK"


class Status(StrEnum):
    PENDING = "PENDING"
    SUBMITTED = "SUBMITTED"
    PARTIALLY_FILLED = "PARTIALLY_FILLED"
    FILLED = "FILLED"
    CANCELLED = "CANCELLED"
    REJECTED = "REJECTED"
    EXPIRED = "EXPIRED"
    REPLACED = "REPLACED"


class Event(StrEnum):
    ACCEPTED = "ACCEPTED"
    PARTIAL_FILL = "PARTIAL_FILL"
    FILL = "FILL"
    CANCELLED = "CANCELLED"
    REJECTED = "REJECTED"
    EXPIRED = "EXPIRED"
    REPLACED = "REPLACED"
    TRIGGERED = "TRIGGERED"


PRICE_STEP = Decimal("0.0001")
ENTRY_CLASSES = frozenset({OrderClass.BRACKET, OrderClass.OTO})

OPEN_STATUSES = frozenset({Status.PENDING, Status.SUBMITTED, Status.PARTIALLY_FILLED})
TERMINAL_STATUSES = frozenset(
    {Status.FILLED, Status.CANCELLED, Status.REJECTED, Status.EXPIRED, Status.REPLACED}
)
# Orders that rest until a price is crossed, then execute (or, STOP_LIMIT, start working).
STOP_TYPES = frozenset({OrderType.STOP, OrderType.STOP_LIMIT, OrderType.TRAILING_STOP})

# The one place the allowed changes of status live. Migrations 0003 and 0009 load the same pairs into
# `order_transitions`, which a trigger checks on every UPDATE; a test keeps the two equal.
# An order whose status stays the same (more fills while PARTIALLY_FILLED) is not a transition.
TRANSITIONS: frozenset[tuple[Status, Status]] = frozenset(
    {
        (Status.PENDING, Status.SUBMITTED),
        (Status.PENDING, Status.PARTIALLY_FILLED),
        (Status.PENDING, Status.FILLED),
        (Status.PENDING, Status.CANCELLED),
        (Status.PENDING, Status.REJECTED),
        (Status.PENDING, Status.EXPIRED),
        (Status.SUBMITTED, Status.PARTIALLY_FILLED),
        (Status.SUBMITTED, Status.FILLED),
        (Status.SUBMITTED, Status.CANCELLED),
        (Status.SUBMITTED, Status.REJECTED),
        (Status.SUBMITTED, Status.EXPIRED),
        (Status.PARTIALLY_FILLED, Status.FILLED),
        (Status.PARTIALLY_FILLED, Status.CANCELLED),
        (Status.PARTIALLY_FILLED, Status.EXPIRED),
        (Status.PENDING, Status.REPLACED),
        (Status.SUBMITTED, Status.REPLACED),
        (Status.PARTIALLY_FILLED, Status.REPLACED),
    }
)


def can_transition(current: Status, new: Status) -> bool:
    return (current == new and current not in TERMINAL_STATUSES) or (current, new) in TRANSITIONS


@dataclass(frozen=True, slots=True)
class Order:
    """An order as stored, the unit the matcher, the fills and the API pass around."""

    id: UUID
    user_id: UUID
    account_id: UUID
    symbol: str
    side: Side
    type: OrderType
    time_in_force: TimeInForce
    quantity: Decimal
    notional: Decimal | None
    limit_price: Decimal | None
    stop_price: Decimal | None
    status: Status
    filled_quantity: Decimal
    filled_value: Decimal
    reserved_cash: Decimal
    reserved_quantity: Decimal
    triggered: bool
    version: int
    idempotency_key: str
    reject_reason: str | None
    created_at: datetime
    updated_at: datetime
    filled_at: datetime | None
    request_id: str | None = None  # the request that placed it
    # TRAILING_STOP: the trail (one of the two) and the best last price seen since it started
    # working; `stop_price` is the stop that trail makes of it.
    trail_price: Decimal | None = None
    trail_percent: Decimal | None = None
    high_water_mark: Decimal | None = None
    replaces: UUID | None = None  # the order this one replaced
    replaced_by: UUID | None = None  # the order that replaced this one (status REPLACED)
    extended_hours: bool = False  # a LIMIT DAY order that also works in the PRE and POST sessions
    order_class: OrderClass = OrderClass.SIMPLE
    parent_id: UUID | None = None  # a leg's parent (an entry, or an OCO's take-profit)
    # A BRACKET or OTO entry's exits, made into legs when it ends (an OCO's, for the record)
    take_profit_limit: Decimal | None = None
    stop_loss_stop: Decimal | None = None
    stop_loss_limit: Decimal | None = None

    @property
    def remaining_quantity(self) -> Decimal:
        return self.quantity - self.filled_quantity

    @property
    def remaining_notional(self) -> Decimal | None:
        return None if self.notional is None else self.notional - self.filled_value

    @property
    def is_open(self) -> bool:
        return self.status in OPEN_STATUSES

    @property
    def is_entry(self) -> bool:
        """A BRACKET or OTO entry: its exits are made when it ends."""
        return self.order_class in ENTRY_CLASSES and self.parent_id is None

    @property
    def is_exit(self) -> bool:
        """One of a pair (or a lone OTO exit) whose fill or close moves its siblings: a leg, or
        an OCO's take-profit parent."""
        return self.parent_id is not None or (
            self.order_class is OrderClass.OCO and self.parent_id is None
        )

    @property
    def average_fill_price(self) -> Decimal | None:
        if not self.filled_quantity:
            return None
        return self.filled_value / self.filled_quantity


@dataclass(frozen=True, slots=True)
class Execution:
    id: UUID
    order_id: UUID
    quantity: Decimal
    price: Decimal
    venue: str
    venue_execution_id: str
    executed_at: datetime
