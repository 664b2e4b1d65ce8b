"""Orders, executions, their history and their live updates."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

import strawberry
from strawberry import UNSET

from schema.errors import UserError
from schema.prefetch import prefetched
from services.money import trim_price, trim_quantity
from services.orders import order_model

# The domain's enums are the contract's: one definition, exposed under the contract's names.
strawberry.enum(order_model.Side, name="OrderSide")
strawberry.enum(order_model.OrderType, name="OrderType")
strawberry.enum(order_model.TimeInForce, name="TimeInForce")
strawberry.enum(order_model.Status, name="OrderStatus")
strawberry.enum(order_model.Event, name="OrderEvent")
OrderSide = order_model.Side
OrderKind = order_model.OrderType
TimeInForce = order_model.TimeInForce
OrderStatus = order_model.Status
OrderEvent = order_model.Event


@strawberry.type
class Execution:
    id: strawberry.ID
    quantity: Decimal
    price: Decimal
    venue: str
    executed_at: datetime

    @classmethod
    def from_domain(cls, e: order_model.Execution) -> Execution:
        return cls(
            id=strawberry.ID(str(e.id)),
            quantity=trim_quantity(e.quantity),
            price=trim_price(e.price),
            venue=e.venue,
            executed_at=e.executed_at,
        )


@strawberry.type
class Order:
    id: strawberry.ID
    idempotency_key: str
    symbol: str
    side: OrderSide
    type: OrderKind
    time_in_force: TimeInForce
    quantity: Decimal = strawberry.field(
        description="shares; fractional orders carry up to 6 decimal places"
    )
    notional: Decimal | None = strawberry.field(
        description="the dollar amount asked for, when the order was placed by amount"
    )
    limit_price: Decimal | None
    stop_price: Decimal | None
    status: OrderStatus
    filled_quantity: Decimal
    average_fill_price: Decimal | None
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
class OrderLifecycleEvent:
    type: OrderEvent
    status: OrderStatus = strawberry.field(description="the order's status after this event")
    at: datetime
    quantity: Decimal | None
    price: Decimal | None
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
    extended_hours: bool = strawberry.field(default=False, description="LIMIT DAY orders only")
    idempotency_key: str = strawberry.field(
        description="chosen by the client: the same key always answers with the same order"
    )


@strawberry.type
class OrderPayload:
    order: Order | None = None
    errors: list[UserError] = strawberry.field(default_factory=list)


@strawberry.type
class OrderUpdate:
    event: OrderEvent
    order: Order
    execution: Execution | None = strawberry.field(
        description="the fill behind a PARTIAL_FILL or FILL event"
    )
