"""Every Redis key and channel of a deployment lives under its namespace (DESIGN rule 12).

Two deployments on one Redis server must never meet, and Redis pub/sub ignores the database
number: an instance on db 5 received the quotes of one on db 4. So every name is
`<namespace>:<name>`: `TRADEQL_REDIS_NAMESPACE`, or by default one derived from
`DATABASE_URL`'s host, port and database (deployments that share a PostgreSQL database are one
deployment). A plain prefix, without braces, so Redis Cluster hash tags in the names
(`orders:{3}`) stay valid. A process has one deployment: the namespace is set once, when its
services are built from the settings (`configure`), before any name is made.

Hash tags (`tag`): in a Redis Cluster only the part of a name between the first `{` and `}`
decides its hash slot, and a script or multi-key command may only touch one slot. So what is
used together carries the same tag, in both modes (one layout, one server or a cluster):
a stream partition's keys (`md:quotes:{3}`, `orders:{3}`, `matcher:lease:{3}`), a user's
(`holdings:v:{<user id>}`, the channels `user:{<user id>}` and `alerts:{<user id>}`), a session
token's (`tq:session:{<token hash>}` and its rate-limit bucket `tq:rl:session:{<token hash>}`),
a symbol's quote (`quote:{AAPL}`). tests/services/test_redis_slots.py checks the layout.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

_UNSAFE = re.compile(r"[^A-Za-z0-9._@-]+")
_namespace = "tq"


def namespace_for(database_url: str | None, explicit: str = "") -> str:
    """The deployment's namespace: the explicit one, else `tq@host-port-database`."""
    if explicit.strip():
        return _UNSAFE.sub("-", explicit.strip())
    if not database_url:
        return "tq"
    parts = urlsplit(database_url)
    host = parts.hostname or "local"
    try:
        port = parts.port or 5432
    except ValueError:
        port = 5432
    database = parts.path.lstrip("/") or "postgres"
    return _UNSAFE.sub("-", f"tq@{host}-{port}-{database}")


def configure(database_url: str | None, explicit: str = "") -> str:
    """Set this process's namespace; returns it."""
    global _namespace
    _namespace = namespace_for(database_url, explicit)
    return _namespace


def current() -> str:
    return _namespace


def ns(name: str) -> str:
    """`name` (a key or a channel) in this deployment's namespace."""
    return f"{_namespace}:{name}"


def tag(value: object) -> str:
    """`{value}`: a Redis Cluster hash tag, so names that carry the same one share a slot."""
    return f"{{{value}}}"
