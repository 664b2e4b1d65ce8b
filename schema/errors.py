"""UserError and the contract's ErrorCode."""

from __future__ import annotations

from enum import Enum

import strawberry


@strawberry.enum
class ErrorCode(Enum):
    INVALID_INPUT = "INVALID_INPUT"
    UNKNOWN_SYMBOL = "UNKNOWN_SYMBOL"
    INSUFFICIENT_BUYING_POWER = "INSUFFICIENT_BUYING_POWER"
    INSUFFICIENT_SHARES = "INSUFFICIENT_SHARES"
    MARKET_CLOSED = "MARKET_CLOSED"
    NOT_FOUND = "NOT_FOUND"
    NOT_CANCELLABLE = "NOT_CANCELLABLE"
    IDEMPOTENCY_CONFLICT = "IDEMPOTENCY_CONFLICT"
    EMAIL_TAKEN = "EMAIL_TAKEN"
    INVALID_CREDENTIALS = "INVALID_CREDENTIALS"
    WEAK_PASSWORD = "WEAK_PASSWORD"
    LIMIT_EXCEEDED = "LIMIT_EXCEEDED"
    NOT_REPLACEABLE = "NOT_REPLACEABLE"


@strawberry.type
class UserError:
    code: ErrorCode
    message: str
    field: str | None = strawberry.field(
        default=None, description="the input field at fault, when there is one"
    )
