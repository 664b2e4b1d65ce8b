"""What counts as an infrastructure failure, and the one retry policy for it (tenacity).

An infrastructure failure (PostgreSQL or Redis down, restarting, refusing connections, a
connection that died, a deadlock or serialization failure) is never an order's or a user's
fault: work that meets one is repeated, not refused.
"""

from __future__ import annotations

import logging
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, wait_exponential_jitter

# deadlock, serialization failure, admin shutdown, crash shutdown, cannot connect now,
# too many connections, and the whole class 08 (connection exceptions)
# and a database that does not accept connections now (55000: ALLOW_CONNECTIONS false)
CONFLICT_SQLSTATES = frozenset({"40P01", "40001"})  # deadlock, serialization failure
_TRANSIENT_SQLSTATES = CONFLICT_SQLSTATES | {"57P01", "57P02", "57P03", "53300", "55000"}


def is_transient(exc: BaseException) -> bool:
    """True for a failure of PostgreSQL, Redis or the network that a retry may get past."""
    if isinstance(exc, OSError | RedisConnectionError | RedisTimeoutError | TimeoutError):
        return True
    if isinstance(exc, DBAPIError):
        if exc.connection_invalidated or isinstance(exc, OperationalError | InterfaceError):
            return True
        sqlstate = str(getattr(exc.orig, "sqlstate", "") or "")
        if sqlstate in _TRANSIENT_SQLSTATES or sqlstate.startswith("08"):
            return True
        return isinstance(exc.orig, OSError)
    cause = exc.__cause__ or exc.__context__
    return cause is not None and cause is not exc and is_transient(cause)


def until_it_works(log: logging.Logger, what: str, *, max_wait: float = 2.0) -> AsyncRetrying:
    """Retry transient failures for as long as they last (backoff with jitter, at most
    `max_wait` seconds apart), logging the first and every tenth; anything else is raised."""

    def _log(state: RetryCallState) -> None:
        if state.attempt_number == 1 or state.attempt_number % 10 == 0:
            outcome: Any = state.outcome
            log.warning(
                "%s failed (%s), attempt %d; retrying",
                what,
                outcome.exception() if outcome is not None else "?",
                state.attempt_number,
            )

    return AsyncRetrying(
        retry=retry_if_exception(is_transient),
        wait=wait_exponential_jitter(multiplier=0.05, max=max_wait, jitter=0.05),
        before_sleep=_log,
        reraise=True,
    )


class Backoff:
    """The waits of a loop that goes on through failures: from `initial`, doubling to `maximum`
    while they last, back to the start after a success. `failed()` also says whether this
    failure starts a run (so a loop logs an outage once, not at every retry)."""

    def __init__(self, initial: float, maximum: float) -> None:
        self.initial = initial
        self.maximum = maximum
        self._delay = 0.0

    def failed(self) -> tuple[bool, float]:
        """(whether this failure starts a run, how long to wait before trying again)."""
        first = self._delay == 0.0
        self._delay = min(max(self._delay * 2, self.initial), self.maximum)
        return first, self._delay

    def succeeded(self) -> bool:
        """Back to the start; whether a run of failures ended here."""
        ended = self._delay != 0.0
        self._delay = 0.0
        return ended
