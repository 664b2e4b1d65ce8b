"""Users, sessions and cash."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

import strawberry

from schema.errors import UserError


@strawberry.type
class User:
    id: strawberry.ID
    email: str
    created_at: datetime


@strawberry.type
class Portfolio:
    cash: Decimal
    buying_power: Decimal = strawberry.field(description="cash less what open buy orders hold back")


@strawberry.type
class AuthPayload:
    token: str | None = None
    expires_at: datetime | None = None
    user: User | None = None
    errors: list[UserError] = strawberry.field(default_factory=list)


@strawberry.type
class DepositPayload:
    portfolio: Portfolio | None = None
    errors: list[UserError] = strawberry.field(default_factory=list)
