"""Well-formed WebSocket messages, checked before strawberry's handlers read them: those index
into a message as the protocol shapes it, so `[]`, `null`, `123` or a `subscribe` whose payload
is a string dropped the socket without a close frame (1006). A malformed message closes the
socket with 4400 and a reason, as graphql-transport-ws says (and as its graphql-ws clients
understand)."""

from __future__ import annotations

from typing import Any

_NEEDS_ID = frozenset({"subscribe", "complete", "start", "stop"})
_NEEDS_PAYLOAD = frozenset({"subscribe", "start"})


def message_problem(message: Any) -> str | None:
    """Why a protocol message is malformed, or None. Both protocols share the shape: an object
    with a string `type`; operations carry a string `id`; `subscribe`/`start` an object
    payload whose `query` is a string (or absent, for a persisted document)."""
    if not isinstance(message, dict):
        return "a message must be a JSON object"
    kind = message.get("type")
    if not isinstance(kind, str):
        return "a message needs a string `type`"
    if kind in _NEEDS_ID and not isinstance(message.get("id"), str):
        return f"a `{kind}` message needs a string `id`"
    if kind in _NEEDS_PAYLOAD:
        payload = message.get("payload")
        if not isinstance(payload, dict):
            return f"a `{kind}` message needs an object `payload`"
        if not isinstance(payload.get("query"), str | None):
            return "`payload.query` must be a string"
        for name in ("variables", "extensions"):
            if not isinstance(payload.get(name), dict | None):
                return f"`payload.{name}` must be an object"
    return None
