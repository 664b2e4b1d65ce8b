"""Price alerts: create, cancel, list, and the live `alertTriggered` subscription."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from decimal import Decimal
from uuid import UUID

import strawberry
from strawberry import UNSET

from resolvers.context import Info, require_session
from resolvers.errors import to_user_error
from schema import alerts as schema
from services.alerts import price_alerts as alerts
from services.errors import DomainError, NotFound
from services.infra.compat import Unsubscribed
from services.infra.pubsub import RESUBSCRIBED


def to_price_alert(alert: alerts.PriceAlert) -> schema.PriceAlert:
    return schema.PriceAlert(
        id=strawberry.ID(str(alert.id)),
        symbol=alert.symbol,
        condition=schema.AlertCondition(alert.condition.value),
        threshold=alert.threshold,
        status=schema.AlertStatus(alert.status.value),
        created_at=alert.created_at,
        triggered_at=alert.triggered_at,
        triggered_price=alert.triggered_price,
    )


def _parse_id(value: str) -> UUID | None:
    try:
        return UUID(str(value))
    except ValueError:
        return None


async def create_price_alert(
    info: Info, symbol: str, condition: schema.AlertCondition, threshold: Decimal
) -> schema.PriceAlertPayload:
    session = require_session(info)
    try:
        alert = await info.context.services.alerts.create(
            session.user_id, symbol, alerts.Condition(condition.value), threshold
        )
    except DomainError as error:
        return schema.PriceAlertPayload(errors=[to_user_error(error)])
    return schema.PriceAlertPayload(alert=to_price_alert(alert))


async def cancel_price_alert(info: Info, id: strawberry.ID) -> schema.PriceAlertPayload:
    """Someone else's alert, like a missing one, is NOT_FOUND; a triggered or cancelled one is
    NOT_CANCELLABLE."""
    session = require_session(info)
    alert_id = _parse_id(id)
    try:
        if alert_id is None:
            raise NotFound("no such alert", field="id")
        alert = await info.context.services.alerts.cancel(session.user_id, alert_id)
    except DomainError as error:
        return schema.PriceAlertPayload(errors=[to_user_error(error)])
    return schema.PriceAlertPayload(alert=to_price_alert(alert))


async def price_alerts(
    info: Info, status: schema.AlertStatus | None = UNSET
) -> list[schema.PriceAlert]:
    """The signed-in user's alerts, newest first (at most 1,000), of one status if given."""
    session = require_session(info)
    wanted = alerts.AlertStatus(status.value) if status else None
    found = await info.context.services.alerts.owned_by(session.user_id, wanted)
    return [to_price_alert(a) for a in found]


async def subscribe_alert_triggered(info: Info) -> AsyncGenerator[schema.PriceAlert, None]:
    """The signed-in user's alerts as they trigger, from whichever checker triggered them:
    every API process receives the user's channel through Redis pub/sub."""
    session = require_session(info)
    channel = alerts.alert_channel(session.user_id)
    async with info.context.services.broadcast.subscribe(channel) as subscriber:
        while True:
            try:
                event = await subscriber.get()
            except Unsubscribed:
                return
            if event.message == RESUBSCRIBED:
                continue  # alert pushes are at most once (the trigger is recorded once in PG)
            triggered = alerts.decode_triggered(event.message)
            if triggered.alert.user_id == session.user_id:  # the channel is theirs; be sure
                yield to_price_alert(triggered.alert)
