"""Resolver fields whose value may already be on the object: a field's metadata names the
attribute that holds it (None: not read yet, the resolver reads it). The executor's projection
(`gateway/event_execution.py`) reads such a value directly, so an object with one of these
fields can still be read without graphql-core's per-field completion."""

from __future__ import annotations

PREFETCHED = "tradeql_prefetched"


def prefetched(attribute: str) -> dict[str, str]:
    """The metadata of a field whose value may be in `attribute` already."""
    return {PREFETCHED: attribute}
