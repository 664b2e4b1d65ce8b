"""Orders, executions, their history and their live updates."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

import strawberry
from strawberry import UNSET

from schema.decimals import MONEY, PERCENT, PRICE, QUANTITY, Scaled, scaled
from schema.errors import UserError
from schema.prefetch import prefetched
from services.orders import order_model

# The domain's enums are the contract's: one definition, exposed under the contract's names.
strawberry.enum(order_model.Side, name="OrderSide")
strawberry.enum(order_model.OrderType, name="OrderType")
strawberry.enum(order_model.TimeInForce, name="TimeInForce")
strawberry.enum(order_model.Status, name="OrderStatus")
strawberry.enum(order_model.Event, name="OrderEvent")
strawberry.enum(
    order_model.OrderClass,
    name="OrderClass",
    description="SIMPLE: one order. BRACKET: an entry with a take-profit and a stop-loss exit "
    "that work once the\nentry fills; one exit filling cancels the other. OCO: two exits of an "
    "existing position, one\ncancels the other. OTO: an entry whose one exit works once it "
    "fills.",
)
OrderSide = order_model.Side
OrderKind = order_model.OrderType
TimeInForce = order_model.TimeInForce
OrderStatus = order_model.Status
OrderEvent = order_model.Event
OrderClass = order_model.OrderClass


@strawberry.type
class Execution(Scaled):
    id: strawberry.ID
    quantity: Decimal = scaled(QUANTITY)
    price: Decimal = scaled(PRICE)
    venue: str
    executed_at: datetime

    @classmethod
    def from_domain(cls, e: order_model.Execution) -> Execution:
        return cls(
            id=strawberry.ID(str(e.id)),
            quantity=e.quantity,
            price=e.price,
            venue=e.venue,
            executed_at=e.executed_at,
        )


@strawberry.type
class Order(Scaled):
    id: strawberry.ID
    idempotency_key: str
    symbol: str
    side: OrderSide
    type: OrderKind
    time_in_force: TimeInForce
    quantity: Decimal = scaled(QUANTITY, "shares")
    notional: Decimal | None = scaled(
        MONEY, "the dollar amount asked for, when the order was placed by amount"
    )
    limit_price: Decimal | None = scaled(PRICE)
    stop_price: Decimal | None = scaled(PRICE)
    status: OrderStatus
    filled_quantity: Decimal = scaled(QUANTITY)
    average_fill_price: Decimal | None = scaled(
        PRICE, "the average price of the executions, half away from zero"
    )
    reject_reason: str | None
    created_at: datetime
    updated_at: datetime
    filled_at: datetime | None

    @strawberry.field(metadata=prefetched("prefetched_executions"))
    async def executions(self, info: strawberry.Info) -> list[Execution]:
        if self.prefetched_executions is not None:
            return self.prefetched_executions
        from resolvers.orders import order_executions

        return await order_executions(info, self.id)

    version: int = strawberry.field(
        description="grows with every change of the order: of two snapshots, the higher "
        "version is the newer"
    )
    order_class: OrderClass

    @strawberry.field(description="a bracket, OCO or OTO parent's exit orders")
    async def legs(self, info: strawberry.Info) -> list[Order]:
        if self.order_class is OrderClass.SIMPLE or self.parent_id is not None:
            return []  # a simple order or a leg: no legs to look for
        from resolvers.orders import order_legs

        return await order_legs(info, self.id)

    parent_id: strawberry.ID | None
    trail_price: Decimal | None = scaled(
        PRICE,
        "TRAILING_STOP: the distance below (sells) or above (buys) the best price seen, in dollars",
        default=None,
    )
    trail_percent: Decimal | None = scaled(
        PERCENT, "TRAILING_STOP: the same distance as a percentage of that price", default=None
    )
    high_water_mark: Decimal | None = scaled(
        PRICE, "TRAILING_STOP: the best price seen since the order started working", default=None
    )
    replaces: strawberry.ID | None = strawberry.field(
        default=None,
        description="the order this one replaced, and the order that replaced this one",
    )
    replaced_by: strawberry.ID | None = None
    extended_hours: bool = strawberry.field(
        description="a LIMIT DAY order that may also work in the PRE and POST sessions"
    )

    @strawberry.field(
        description="every change of the order, oldest first: its append-only history"
    )
    async def events(self, info: strawberry.Info) -> list[OrderLifecycleEvent]:
        from resolvers.orders import order_lifecycle

        return await order_lifecycle(info, self.id)

    # The executions, when they were read with the order (an order-history page).
    prefetched_executions: strawberry.Private[list[Execution] | None] = None


@strawberry.type
class OrderLifecycleEvent(Scaled):
    type: OrderEvent
    status: OrderStatus = strawberry.field(description="the order's status after this event")
    at: datetime
    quantity: Decimal | None = scaled(QUANTITY)
    price: Decimal | None = scaled(PRICE)
    venue: str | None
    reason: str | None


@strawberry.type
class PageInfo:
    has_next_page: bool
    end_cursor: str | None


@strawberry.type
class OrderEdge:
    cursor: str
    node: Order


@strawberry.type
class OrderConnection:
    edges: list[OrderEdge]
    page_info: PageInfo


@strawberry.input
class TakeProfitInput:
    limit_price: Decimal


@strawberry.input
class StopLossInput:
    stop_price: Decimal
    limit_price: Decimal | None = strawberry.field(
        default=UNSET, description="with it the stop-loss becomes a stop-limit"
    )


@strawberry.input
class PlaceOrderInput:
    symbol: str
    side: OrderSide
    type: OrderKind = OrderKind.MARKET
    time_in_force: TimeInForce = TimeInForce.DAY
    quantity: Decimal | None = strawberry.field(
        default=UNSET, description="shares; give exactly one of quantity and notional"
    )
    notional: Decimal | None = strawberry.field(
        default=UNSET, description="a dollar amount, for MARKET orders only"
    )
    limit_price: Decimal | None = UNSET
    stop_price: Decimal | None = UNSET
    trail_price: Decimal | None = strawberry.field(
        default=UNSET, description="TRAILING_STOP: give exactly one"
    )
    trail_percent: Decimal | None = UNSET
    extended_hours: bool = strawberry.field(default=False, description="LIMIT DAY orders only")
    order_class: OrderClass = OrderClass.SIMPLE
    take_profit: TakeProfitInput | None = strawberry.field(
        default=UNSET,
        description="BRACKET and OCO: the limit exit; OTO: give one of takeProfit and stopLoss",
    )
    stop_loss: StopLossInput | None = UNSET
    idempotency_key: str = strawberry.field(
        description="chosen by the client: the same key always answers with the same order"
    )


@strawberry.input(description="The fields to change; what is left out stays as it was.")
class ReplaceOrderInput:
    quantity: Decimal | None = UNSET
    limit_price: Decimal | None = UNSET
    stop_price: Decimal | None = UNSET
    trail_price: Decimal | None = UNSET
    trail_percent: Decimal | None = UNSET
    time_in_force: TimeInForce | None = UNSET
    idempotency_key: str


@strawberry.type
class OrderPayload:
    order: Order | None = None
    errors: list[UserError] = strawberry.field(default_factory=list)


@strawberry.type
class OrdersPayload:
    orders: list[Order] = strawberry.field(default_factory=list)
    errors: list[UserError] = strawberry.field(default_factory=list)


@strawberry.type
class OrderUpdate:
    event: OrderEvent
    order: Order
    execution: Execution | None = strawberry.field(
        description="the fill behind a PARTIAL_FILL or FILL event"
    )
