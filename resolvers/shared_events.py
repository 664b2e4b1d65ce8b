"""Subscription events that are the same for every subscriber (a public quote, say).

A resolver marks such an event with `shared_event`; the gateway's executor
(`gateway/event_execution.py`) then makes each document's result on it once and hands it to
every other subscriber with that document. Only events whose fields do not depend on who asks
may be marked.
"""

from __future__ import annotations

from typing import Any, TypeVar

T = TypeVar("T")

_RESULTS = "_tradeql_shared_results"


def shared_event(event: T) -> T:
    """Mark `event` as the same for every subscriber, so each document executes on it once."""
    object.__setattr__(event, _RESULTS, {})
    return event


def shared_results(event: object) -> dict[Any, Any] | None:
    """The results made on a shared event so far, by document; None if it is not shared."""
    results: dict[Any, Any] | None = getattr(event, _RESULTS, None)
    return results
