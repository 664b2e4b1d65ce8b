"""Domain errors, raised by name. `resolvers/errors.py` maps each one to a contract `ErrorCode`."""

from __future__ import annotations


class DomainError(Exception):
    """An expected failure of a use case: the caller did something the rules refuse."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class InvalidInput(DomainError):
    pass


class UnknownSymbol(DomainError):
    pass


class InsufficientBuyingPower(DomainError):
    pass


class InsufficientShares(DomainError):
    pass


class MarketClosed(DomainError):
    pass


class NotFound(DomainError):
    pass


class NotCancellable(DomainError):
    pass


class NotReplaceable(DomainError):
    pass


class IdempotencyConflict(DomainError):
    pass


class EmailTaken(DomainError):
    pass


class InvalidCredentials(DomainError):
    pass


class WeakPassword(DomainError):
    pass


class LimitExceeded(DomainError):
    pass
