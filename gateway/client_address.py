"""The client address a request is counted against (rate limits, sign-in throttling): the peer,
or behind trusted proxies the nearest untrusted X-Forwarded-For hop; IPv6 by its /64."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from starlette.datastructures import Headers
from starlette.types import Scope

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(spec: str) -> tuple[Network, ...]:
    """`10.0.0.1, 10.1.0.0/16, ::1` -> networks; an empty string trusts nobody."""
    return tuple(
        ipaddress.ip_network(part.strip(), strict=False) for part in spec.split(",") if part.strip()
    )


def _address(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(value.strip())
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _trusted(value: str, trusted: Sequence[Network]) -> bool:
    address = _address(value)
    return address is not None and any(address in network for network in trusted)


def client_address(scope: Scope, trusted: Sequence[Network]) -> str:
    """The address to count a request against: the peer, or, when the peer is a trusted proxy,
    the nearest untrusted hop of X-Forwarded-For (the hops to its left are the client's word)."""
    client = scope.get("client")
    peer = str(client[0]) if client else ""
    if trusted and _trusted(peer, trusted):
        headers = Headers(scope=scope)
        hops = [h.strip() for h in ",".join(headers.getlist("x-forwarded-for")).split(",")]
        hops = [h for h in hops if h]
        for hop in reversed(hops):
            if not _trusted(hop, trusted):
                return bucket_address(hop)
        if hops:
            return bucket_address(hops[0])
    return bucket_address(peer) if peer else "unknown"


def bucket_address(value: str) -> str:
    """IPv4 as is; IPv6 by its /64 (one subscriber's usual allocation, which they can cycle)."""
    address = _address(value)
    if address is None:
        return value.strip().lower()[:64] or "unknown"
    if isinstance(address, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


_STATE_KEY = "tradeql.client_address"


def request_client_address(scope: Scope, trusted: Sequence[Network]) -> str:
    """`client_address` of a request, worked out once: the rate limiter and the view (for the
    sign-in throttle) both ask, and the answer is kept in the request's state."""
    state = scope.setdefault("state", {})
    address = state.get(_STATE_KEY)
    if address is None:
        address = state[_STATE_KEY] = client_address(scope, trusted)
    return str(address)
