"""Objects that are the same for whoever reads them: a published quote, a position valued at
one quote.

A resolver marks a subscription event with `shared_event`; the gateway's executor
(`gateway/event_execution.py`) then makes each document's result on it once and hands it to
every other subscriber with that document. A value returned by a query field and kept between
requests (a valued position) is marked with `shared_value`: the executor reads each plain
selection of it once and reuses that. Only objects whose fields do not depend on who asks, and
that nothing changes once marked, may be marked.
"""

from __future__ import annotations

from typing import Any, TypeVar

T = TypeVar("T")

_RESULTS = "_tradeql_shared_results"


def shared_event(event: T) -> T:
    """Mark `event` as the same for every subscriber, so each document executes on it once."""
    return shared_value(event)


def shared_value(value: T) -> T:
    """Mark `value`, and everything it holds, as the same for every reader and never changed
    again, so each selection of it is read once."""
    object.__setattr__(value, _RESULTS, {})
    return value


def shared_results(value: object) -> dict[Any, Any] | None:
    """What was made of a shared object so far (results by document, readings by selection);
    None if it is not shared."""
    results: dict[Any, Any] | None = getattr(value, _RESULTS, None)
    return results
