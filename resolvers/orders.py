"""Placing and cancelling orders, order history, and the live `orderUpdates` subscription."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import cast
from uuid import UUID

import strawberry
from graphql import GraphQLError
from strawberry import UNSET
from strawberry.types.nodes import SelectedField, Selection

from resolvers import order_page
from resolvers.context import Info, require_session
from resolvers.errors import to_user_error
from resolvers.loaders import current_loaders, fresh_loaders
from resolvers.order_page import PASSES_PRE_ENCODED
from resolvers.portfolio import holdings_written
from schema import orders as schema
from services.errors import DomainError, NotFound
from services.infra.compat import Unsubscribed, raw_info
from services.infra.pubsub import RESUBSCRIBED
from services.money import average_price
from services.orders import order_events, order_model
from services.orders.order_history import HistoryEvent
from services.orders.order_rules import PlaceOrder
from services.orders.order_store import encode_cursor
from services.orders.replace import ReplaceOrder


def to_order(
    order: order_model.Order, executions: list[order_model.Execution] | None = None
) -> schema.Order:
    """The GraphQL view of an order; `executions`, when they were read with it."""
    return schema.Order(
        id=strawberry.ID(str(order.id)),
        idempotency_key=order.idempotency_key,
        symbol=order.symbol,
        side=order.side,
        type=order.type,
        time_in_force=order.time_in_force,
        quantity=order.quantity,
        notional=order.notional,
        limit_price=order.limit_price,
        stop_price=order.stop_price,
        status=order.status,
        filled_quantity=order.filled_quantity,
        average_fill_price=average_price(order.filled_value, order.filled_quantity)
        if order.filled_quantity
        else None,
        reject_reason=order.reject_reason,
        created_at=order.created_at,
        updated_at=order.updated_at,
        filled_at=order.filled_at,
        version=order.version,
        trail_price=order.trail_price,
        trail_percent=order.trail_percent,
        high_water_mark=order.high_water_mark,
        replaces=strawberry.ID(str(order.replaces)) if order.replaces else None,
        replaced_by=strawberry.ID(str(order.replaced_by)) if order.replaced_by else None,
        extended_hours=order.extended_hours,
        order_class=order.order_class,
        parent_id=strawberry.ID(str(order.parent_id)) if order.parent_id else None,
        prefetched_executions=None
        if executions is None
        else [schema.Execution.from_domain(e) for e in executions],
    )


def _given(value: Decimal | None) -> Decimal | None:
    """An input field left out arrives as UNSET; the domain only knows None."""
    return None if value is UNSET else value


def _parse_id(value: str) -> UUID | None:
    try:
        return UUID(str(value))
    except ValueError:
        return None


async def place_order(info: Info, input: schema.PlaceOrderInput) -> schema.OrderPayload:
    session = require_session(info)
    command = PlaceOrder(
        user_id=session.user_id,
        symbol=input.symbol,
        side=input.side,
        type=input.type,
        time_in_force=input.time_in_force,
        quantity=_given(input.quantity),
        notional=_given(input.notional),
        limit_price=_given(input.limit_price),
        stop_price=_given(input.stop_price),
        idempotency_key=input.idempotency_key,
        trail_price=_given(input.trail_price),
        trail_percent=_given(input.trail_percent),
        extended_hours=input.extended_hours,
        order_class=input.order_class,
        take_profit_limit=input.take_profit.limit_price if input.take_profit else None,
        stop_loss_stop=input.stop_loss.stop_price if input.stop_loss else None,
        stop_loss_limit=_given(input.stop_loss.limit_price) if input.stop_loss else None,
    )
    try:
        order = await info.context.services.placement.place(command)
    except DomainError as error:
        return schema.OrderPayload(errors=[to_user_error(error)])
    holdings_written(info, session.user_id)  # its hold
    return schema.OrderPayload(order=to_order(order))


async def cancel_order(info: Info, id: strawberry.ID) -> schema.OrderPayload:
    session = require_session(info)
    order_id = _parse_id(id)
    try:
        if order_id is None:
            raise NotFound("no such order", field="id")
        order = await info.context.services.cancellation.cancel(session.user_id, order_id)
    except DomainError as error:
        return schema.OrderPayload(errors=[to_user_error(error)])
    holdings_written(info, session.user_id)  # the hold released
    return schema.OrderPayload(order=to_order(order))


async def replace_order(
    info: Info, id: strawberry.ID, input: schema.ReplaceOrderInput
) -> schema.OrderPayload:
    session = require_session(info)
    order_id = _parse_id(id)
    try:
        if order_id is None:
            raise NotFound("no such order", field="id")
        order = await info.context.services.replacement.replace(
            ReplaceOrder(
                user_id=session.user_id,
                order_id=order_id,
                quantity=_given(input.quantity),
                limit_price=_given(input.limit_price),
                stop_price=_given(input.stop_price),
                trail_price=_given(input.trail_price),
                trail_percent=_given(input.trail_percent),
                time_in_force=None if input.time_in_force is UNSET else input.time_in_force,
                idempotency_key=input.idempotency_key,
            )
        )
    except DomainError as error:
        return schema.OrderPayload(errors=[to_user_error(error)])
    holdings_written(info, session.user_id)  # the holds swapped
    return schema.OrderPayload(order=to_order(order))


async def cancel_all_orders(info: Info) -> schema.OrdersPayload:
    session = require_session(info)
    cancelled = await info.context.services.cancellation.cancel_all(session.user_id)
    holdings_written(info, session.user_id)
    return schema.OrdersPayload(orders=[to_order(o) for o in cancelled])


async def close_position(
    info: Info,
    symbol: str,
    quantity: Decimal | None = UNSET,
    percentage: Decimal | None = UNSET,
    *,
    idempotency_key: str,
) -> schema.OrderPayload:
    session = require_session(info)
    try:
        order = await info.context.services.closing.close_position(
            session.user_id, symbol, _given(quantity), _given(percentage), idempotency_key
        )
    except DomainError as error:
        return schema.OrderPayload(errors=[to_user_error(error)])
    holdings_written(info, session.user_id)
    return schema.OrderPayload(order=to_order(order))


async def close_all_positions(
    info: Info, cancel_orders: bool = True, *, idempotency_key: str
) -> schema.OrdersPayload:
    session = require_session(info)
    try:
        placed, failed = await info.context.services.closing.close_all(
            session.user_id, cancel_orders=cancel_orders, idempotency_key=idempotency_key
        )
    except DomainError as error:
        return schema.OrdersPayload(errors=[to_user_error(error)])
    holdings_written(info, session.user_id)
    errors = []
    for symbol, failure in failed:
        user_error = to_user_error(failure)
        user_error.message = f"{symbol}: {user_error.message}"
        errors.append(user_error)
    return schema.OrdersPayload(orders=[to_order(o) for o in placed], errors=errors)


async def order(info: Info, id: strawberry.ID) -> schema.Order | None:
    """Someone else's order, like a missing one, is null."""
    session = require_session(info)
    order_id = _parse_id(id)
    if order_id is None:
        return None
    found = (await info.context.services.order_store.by_ids([order_id])).get(order_id)
    return to_order(found) if found and found.user_id == session.user_id else None


async def orders(
    info: Info,
    status: list[schema.OrderStatus] | None = UNSET,
    symbol: str | None = UNSET,
    first: int = 50,
    after: str | None = UNSET,
) -> schema.OrderConnection:
    """Newest first. A selection `resolvers/order_page.py` compiles is read as one statement
    that writes the page's JSON; any other the ordinary way."""
    session = require_session(info)
    store = info.context.services.order_store
    plan = (
        order_page.plan_for(raw_info(info).field_nodes, raw_info(info).fragments)
        if getattr(info.schema.execution_context_class, PASSES_PRE_ENCODED, False)
        else None  # graphql-core's own executor would complete the JSON as an object
    )
    try:
        if plan is not None:
            written, has_next = await store.history_json(
                session.user_id,
                statuses=list(status or []),
                symbol=symbol or None,
                first=first,
                after=after or None,
                edge_json=plan.edge_sql,
            )
            return cast(schema.OrderConnection, plan.respond(written, has_next))
        page = await store.history(
            session.user_id,
            statuses=list(status or []),
            symbol=symbol or None,
            first=first,
            after=after or None,
            with_executions=selects(
                [child for field in info.selected_fields for child in field.selections],
                ("edges", "node", "executions"),
            ),
        )
    except DomainError as error:
        raise GraphQLError(error.message, extensions={"code": "INVALID_INPUT"}) from error
    read = page.executions  # with the page, when it asks for them
    edges = [
        schema.OrderEdge(
            cursor=encode_cursor(o), node=to_order(o, None if read is None else read[o.id])
        )
        for o in page.orders
    ]
    return schema.OrderConnection(
        edges=edges,
        page_info=schema.PageInfo(
            has_next_page=page.has_more, end_cursor=edges[-1].cursor if edges else None
        ),
    )


def selects(fields: Sequence[Selection], path: tuple[str, ...]) -> bool:
    """Whether the field at `path` below `fields` is asked for (through fragments too)."""
    for field in fields:
        if not isinstance(field, SelectedField):  # a fragment: its fields stand where it does
            if selects(field.selections, path):
                return True
        elif field.name == path[0] and (len(path) == 1 or selects(field.selections, path[1:])):
            return True
    return False


async def order_legs(info: Info, order_id: strawberry.ID) -> list[schema.Order]:
    """A parent's legs, through the operation's loader: a page of class orders is one read."""
    found = await current_loaders(info.context.services).legs.load(UUID(str(order_id)))
    return [to_order(leg) for leg in found]


async def order_executions(info: Info, order_id: strawberry.ID) -> list[schema.Execution]:
    loaders = current_loaders(info.context.services)
    found = await loaders.executions.load(UUID(str(order_id)))
    return [schema.Execution.from_domain(e) for e in found]


def _lifecycle_event(event: HistoryEvent) -> schema.OrderLifecycleEvent | None:
    """An event as the contract shows it; None for an internal kind (SUBMITTED, UPDATED)."""
    shown = _SHOWN_KINDS.get(event.kind)
    if shown is None:
        return None
    return schema.OrderLifecycleEvent(
        type=shown,
        status=event.status,
        at=event.at,
        quantity=event.quantity,
        price=event.price,
        venue=event.venue,
        reason=event.reason,
    )


# The contract's OrderEvent values, by the kind order_events records.
_SHOWN_KINDS = {event.value: event for event in order_model.Event}


async def order_lifecycle(info: Info, order_id: strawberry.ID) -> list[schema.OrderLifecycleEvent]:
    found = await current_loaders(info.context.services).order_events.load(UUID(str(order_id)))
    return [shown for shown in map(_lifecycle_event, found) if shown is not None]


async def subscribe_order_updates(info: Info) -> AsyncGenerator[schema.OrderUpdate, None]:
    """Status changes and fills of the signed-in user's orders, from whichever process made
    them: every API process receives the user's channel through Redis pub/sub. When this
    process's pub/sub connection was lost and is back, what was published meanwhile reached
    nobody here: the events written since the last one delivered are read back from the
    outbox, so none is missed (one may come twice; `Order.version` tells which is newer)."""
    session = require_session(info)
    services = info.context.services
    channel = order_events.user_channel(session.user_id)
    delivered = _Delivered(datetime.now(UTC))
    async with services.broadcast.subscribe(channel) as subscriber:
        while True:
            try:
                event = await subscriber.get()
            except Unsubscribed:
                return
            if event.message == RESUBSCRIBED:
                missed = await order_events.events_since(
                    services.engine, session.user_id, delivered.catch_up_from()
                )
            else:
                missed = [order_events.decode_update(event.message)]
            for update in missed:
                if delivered.is_new(update):
                    fresh_loaders(services)  # executions read for this event, not an earlier one
                    yield _to_update(update)


def _to_update(update: order_events.OrderUpdate) -> schema.OrderUpdate:
    return schema.OrderUpdate(
        event=update.event,
        order=to_order(update.order),
        execution=schema.Execution.from_domain(update.execution) if update.execution else None,
    )


class _Delivered:
    """What a subscription delivered lately, so a catch-up after a lost connection sends only
    what it missed: events by (order, version, event, execution), and the newest event's time."""

    MARGIN = timedelta(seconds=5)  # clocks of writers and commit order: read back a little more

    def __init__(self, started: datetime) -> None:
        self._since = started
        self._seen: dict[tuple[object, ...], None] = {}

    def catch_up_from(self) -> datetime:
        return self._since - self.MARGIN

    def is_new(self, update: order_events.OrderUpdate) -> bool:
        execution = update.execution.venue_execution_id if update.execution else None
        key = (update.order.id, update.order.version, update.event, execution)
        if key in self._seen:
            return False
        self._seen[key] = None
        if len(self._seen) > 1000:  # keep the newest only
            del self._seen[next(iter(self._seen))]
        self._since = max(self._since, update.order.updated_at)
        return True
