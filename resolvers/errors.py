"""The one mapping from domain errors to the contract's UserError codes."""

from __future__ import annotations

from schema.errors import ErrorCode, UserError
from services import errors

CODES: dict[type[errors.DomainError], ErrorCode] = {
    errors.InvalidInput: ErrorCode.INVALID_INPUT,
    errors.UnknownSymbol: ErrorCode.UNKNOWN_SYMBOL,
    errors.InsufficientBuyingPower: ErrorCode.INSUFFICIENT_BUYING_POWER,
    errors.InsufficientShares: ErrorCode.INSUFFICIENT_SHARES,
    errors.MarketClosed: ErrorCode.MARKET_CLOSED,
    errors.NotFound: ErrorCode.NOT_FOUND,
    errors.NotCancellable: ErrorCode.NOT_CANCELLABLE,
    errors.NotReplaceable: ErrorCode.NOT_REPLACEABLE,
    errors.IdempotencyConflict: ErrorCode.IDEMPOTENCY_CONFLICT,
    errors.EmailTaken: ErrorCode.EMAIL_TAKEN,
    errors.InvalidCredentials: ErrorCode.INVALID_CREDENTIALS,
    errors.WeakPassword: ErrorCode.WEAK_PASSWORD,
    errors.LimitExceeded: ErrorCode.LIMIT_EXCEEDED,
}


def to_user_error(error: errors.DomainError) -> UserError:
    code = next(c for kind, c in CODES.items() if isinstance(error, kind))
    return UserError(code=code, message=error.message, field=error.field)
