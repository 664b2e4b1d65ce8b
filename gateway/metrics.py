"""Prometheus metrics (prometheus_client): operations, latency, errors, WebSockets, pool use."""

from __future__ import annotations

import functools
import gc
import re
import time
from collections.abc import Iterator
from typing import Any

from graphql import GraphQLError
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy.ext.asyncio import AsyncEngine
from strawberry.types import ExecutionContext

from services.infra.replica import ReadRouter
from services.market_data.quote_mirror import QuoteMirror
from services.portfolio.holdings_cache import HoldingsCache
from services.portfolio.portfolio_hub import PortfolioHub

REGISTRY = CollectorRegistry(auto_describe=True)

OPERATIONS = Counter(
    "tradeql_graphql_operations_total",
    "GraphQL operations by name, type and outcome",
    ["operation", "type", "outcome"],
    registry=REGISTRY,
)
OPERATION_SECONDS = Histogram(
    "tradeql_graphql_operation_seconds",
    "GraphQL operation latency",
    ["operation", "type"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
    registry=REGISTRY,
)
ERRORS = Counter(
    "tradeql_graphql_errors_total", "GraphQL errors by code", ["code"], registry=REGISTRY
)
HTTP_REQUESTS = Histogram(
    "tradeql_http_request_seconds",
    "HTTP requests by route and status",
    ["path", "method", "status"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5),
    registry=REGISTRY,
)
WEBSOCKETS_OPEN = Gauge("tradeql_websockets_open", "WebSocket connections open", registry=REGISTRY)
GC_PAUSES = Histogram(
    "tradeql_gc_pause_seconds",
    "how long each garbage collection stopped the process (every request waits), by generation",
    ["generation"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25),
    registry=REGISTRY,
)
_gc_started: list[float] = []


def _time_gc(phase: str, info: dict[str, Any]) -> None:
    if phase == "start":
        _gc_started[:] = [time.perf_counter()]
    elif _gc_started:
        GC_PAUSES.labels(str(info["generation"])).observe(time.perf_counter() - _gc_started[0])


def watch_gc_pauses() -> None:
    """Time every garbage collection of this process (`tradeql_gc_pause_seconds`): a full one
    stops every request for as long as it walks the heap, the usual cause of a latency tail."""
    if _time_gc not in gc.callbacks:
        gc.callbacks.append(_time_gc)

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
MAX_OPERATION_LABELS = 500
_seen_operations: set[str] = set()


def operation_label(name: str | None) -> str:
    """Bound the label's cardinality: clients choose operation names, Prometheus pays for each."""
    if not name or not _NAME.match(name):
        return "anonymous"
    if name in _seen_operations:
        return name
    if len(_seen_operations) >= MAX_OPERATION_LABELS:
        return "other"
    _seen_operations.add(name)
    return name


def error_code(error: GraphQLError) -> str:
    code = (error.extensions or {}).get("code")
    if isinstance(code, str):
        return code
    return "INTERNAL_SERVER_ERROR" if error.original_error else "GRAPHQL_VALIDATION_FAILED"


@functools.cache
def _operation_series(name: str, op_type: str, outcome: str) -> tuple[Counter, Histogram]:
    """An operation's series, looked up once (`labels` validates and locks on every call);
    `operation_label` bounds the names, so this stays small."""
    return OPERATIONS.labels(name, op_type, outcome), OPERATION_SECONDS.labels(name, op_type)


def record_operation(context: ExecutionContext, seconds: float) -> None:
    """An operation's count, duration and errors by code (`gateway.operation_extension`)."""
    try:
        op_type = context.operation_type.value
    except Exception:  # the document did not parse: no operation type to report
        op_type = "unknown"
    name = operation_label(context.operation_name)
    errors = getattr(context.result, "errors", None) or context.pre_execution_errors or []
    count, duration = _operation_series(name, op_type, "error" if errors else "ok")
    count.inc()
    duration.observe(seconds)
    for error in errors:
        ERRORS.labels(error_code(error)).inc()


class CacheCollector(Collector):
    """How often the API process's own copies served a read, read when scraped: holdings
    (checked against their version in Redis) and quotes (the mirror of published quotes)."""

    def __init__(self, holdings: HoldingsCache, quotes: QuoteMirror) -> None:
        self._holdings = holdings
        self._quotes = quotes

    def collect(self) -> Iterator[CounterMetricFamily]:
        for name, doc, cache in (
            (
                "tradeql_holdings_cache_reads",
                "holdings read from this process's copy or not",
                self._holdings,
            ),
            (
                "tradeql_quote_mirror_reads",
                "quotes read from this process's mirror or not",
                self._quotes,
            ),
        ):
            family = CounterMetricFamily(name, doc, labels=["result"])
            family.add_metric(["hit"], float(cache.hits))
            family.add_metric(["miss"], float(cache.misses))
            yield family


class HubCollector(Collector):
    """Long-lived feeds of the API process that failed and were restarted, read when scraped."""

    def __init__(self, portfolio_hub: PortfolioHub) -> None:
        self._portfolio_hub = portfolio_hub

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(
            "tradeql_live_feed_restarts",
            "live feeds restarted after a failure, by hub",
            labels=["hub"],
        )
        family.add_metric(["portfolio"], float(self._portfolio_hub.failures))
        yield family


class ReplicaCollector(Collector):
    """Reads that could go to the replica, by the server that served them, and the replica's
    lag as last probed; read when scraped (only with DATABASE_REPLICA_URL)."""

    def __init__(self, reads: ReadRouter) -> None:
        self._reads = reads

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        served = CounterMetricFamily(
            "tradeql_db_routed_reads",
            "reads that could go to the replica, by the server that served them",
            labels=["server"],
        )
        for server, count in self._reads.served.items():
            served.add_metric([server], float(count))
        yield served
        lag = self._reads.lag_seconds
        if lag is not None:
            yield GaugeMetricFamily(
                "tradeql_db_replica_lag_seconds",
                "how far the replica's replay is behind (0: it replayed all it received)",
                value=lag,
            )


class PoolCollector(Collector):
    """Connections of the PostgreSQL pool in use, idle and allowed, read when scraped."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    def collect(self) -> Iterator[GaugeMetricFamily]:
        pool = self._engine.pool
        family = GaugeMetricFamily(
            "tradeql_db_pool_connections", "PostgreSQL pool connections", labels=["state"]
        )
        for state in ("checkedout", "checkedin", "size", "overflow"):
            reader = getattr(pool, state, None)
            if callable(reader):
                family.add_metric([state], float(reader()))
        yield family
