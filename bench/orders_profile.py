"""Where the API's and the matcher's time goes, from a py-spy raw recording, by component.

py-spy's own idle detection does not recognise every wait (on this kind of VM a thread parked in
epoll is often sampled as running), so samples whose leaf is the event loop's selector are counted
as idle here and left out: the shares below are shares of the non-idle samples. Each non-idle
sample goes to the first component whose marker appears anywhere in its stack (rules in order),
and separately to the kind of work at its leaf.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

IDLE_LEAVES = ("EpollSelector.select", "_PollLikeSelector.select", "select (selectors.py")

API_RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("GraphQL validation (validate_document)", ("validate_document",)),
    ("GraphQL parsing", ("parse (graphql/language/parser.py", "Parser.parse_document")),
    ("order placement batch (services/orders/placement.py)", ("services/orders/placement.py",)),
    (
        "orderUpdates subscriptions (pub/sub -> WebSocket)",
        (
            "subscribe_order_updates",
            "graphql_transport_ws",
            "websockets/",
            "pubsub.py",
            "broadcaster",
        ),
    ),
    ("session lookup (services/accounts/sessions.py)", ("services/accounts/sessions.py",)),
    ("GraphQL execution (resolvers, result)", ("Schema.execute", "graphql/execution")),
    ("HTTP / ASGI (uvicorn, starlette)", ("httptools_impl", "starlette/", "gateway/middleware.py")),
)
MATCHER_RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("fill transaction (services/orders/fills.py execute)", ("execute (services/orders/fills.py",)),
    ("PENDING->SUBMITTED / trigger (fills.mark)", ("mark (services/orders/fills.py",)),
    ("close / cancel (fills.close)", ("close (services/orders/fills.py",)),
    ("venue routing (services/orders/routing.py)", ("services/orders/routing.py",)),
    ("publishing order events", ("services/orders/order_events.py",)),
    ("quote stream reading (_read_quotes)", ("_read_quotes",)),
    ("sweep / rebuild (all open orders)", ("PartitionMatcher.sweep", "PartitionMatcher.rebuild")),
    ("reading new orders (XREADGROUP, orders_by_id)", ("_handle_messages", "ConsumerGroup.read")),
    ("transaction begin/commit (_transact)", ("PartitionMatcher._transact",)),
    ("lease tending", ("_tend_leases",)),
)
LEAF_KINDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("socket write syscalls", ("_SelectorSocketTransport.write", "writelines")),
    ("asyncpg driver", ("asyncpg/",)),
    ("SQLAlchemy", ("sqlalchemy/",)),
    ("redis-py", ("redis/",)),
    ("graphql-core", ("graphql/",)),
    ("strawberry", ("strawberry/",)),
    ("TradeQL code", ("services/", "workers/", "resolvers/", "gateway/", "schema/")),
)


def _first_match(text: str, rules: tuple[tuple[str, tuple[str, ...]], ...]) -> str:
    for name, markers in rules:
        if any(marker in text for marker in markers):
            return name
    return "other (event loop, logging, metrics, ...)"


def breakdown(path: Path, role: str, rate: int, seconds: float) -> str:
    rules = API_RULES if role.startswith("api") else MATCHER_RULES
    components: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    total = idle = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        leaf = stack.rsplit(";", 1)[-1]
        if any(marker in leaf for marker in IDLE_LEAVES):
            idle += count
            continue
        components[_first_match(stack, rules)] += count
        leaves[_first_match(leaf, LEAF_KINDS)] += count
    busy = total - idle
    if busy <= 0:
        return f"{role}: no non-idle samples"
    expected = max(rate * seconds, 1.0)
    lines = [
        f"{role}: {busy:,} non-idle samples of {total:,} (selector waits left out) -> sampled "
        f"running or runnable ~{100 * busy / expected:.0f}% of the window",
        "  by component (share of non-idle samples):",
    ]
    lines += [f"    {100 * n / busy:5.1f}%  {name}" for name, n in components.most_common()]
    lines.append("  by kind of work at the leaf:")
    lines += [f"    {100 * n / busy:5.1f}%  {name}" for name, n in leaves.most_common()]
    return "\n".join(lines)
