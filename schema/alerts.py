"""Price alerts: ABOVE or BELOW a threshold, and their status."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from enum import Enum

import strawberry

from schema.decimals import PRICE, Scaled, scaled
from schema.errors import UserError


@strawberry.enum
class AlertCondition(Enum):
    ABOVE = "ABOVE"
    BELOW = "BELOW"


@strawberry.enum
class AlertStatus(Enum):
    ACTIVE = "ACTIVE"
    TRIGGERED = "TRIGGERED"
    CANCELLED = "CANCELLED"


@strawberry.type
class PriceAlert(Scaled):
    id: strawberry.ID
    symbol: str
    condition: AlertCondition
    threshold: Decimal = scaled(PRICE)
    status: AlertStatus
    created_at: datetime
    triggered_at: datetime | None
    triggered_price: Decimal | None = scaled(PRICE)


@strawberry.type
class PriceAlertPayload:
    alert: PriceAlert | None = None
    errors: list[UserError] = strawberry.field(default_factory=list)
