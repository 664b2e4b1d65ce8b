"""Prometheus metrics of the worker processes, each served on its own port (`--metrics-port`)."""

from __future__ import annotations

import logging

from prometheus_client import Counter, Gauge, Histogram, start_http_server

log = logging.getLogger("tradeql.workers")

FEED_QUOTES = Counter("tradeql_feed_quotes_total", "Quotes appended to the streams", ["source"])
FEED_MALFORMED = Counter(
    "tradeql_feed_malformed_total", "Malformed source records skipped", ["source", "kind"]
)
FEED_DROPPED = Counter("tradeql_feed_dropped_total", "Quotes dropped instead of queued", ["reason"])
FEED_BREAKER_OPEN = Gauge(
    "tradeql_feed_redis_breaker_open", "1 while the Redis circuit breaker of the feed is open"
)
FEED_RECONNECTS = Counter("tradeql_feed_reconnects_total", "Source reconnections", ["source"])

QUOTES_WRITTEN = Counter("tradeql_quotes_written_total", "Quotes written to quote:{SYMBOL}")
QUOTES_STALE = Counter(
    "tradeql_quotes_stale_total", "Quotes not written because a newer one was held"
)
QUOTE_WINDOW_SECONDS = Histogram(
    "tradeql_quote_window_flush_seconds",
    "Time to write and publish one coalescing window",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
)
SOURCE_TO_CACHE_SECONDS = Histogram(
    "tradeql_quote_source_to_cache_seconds",
    "Source timestamp to quote cache write",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1, 5),
)
OUTBOX_RELAYED = Counter(
    "tradeql_outbox_relayed_total", "Order events the relay published for their writers"
)
OUTBOX_ROUND_FAILURES = Counter(
    "tradeql_outbox_round_failures_total", "Relay rounds that failed", ["kind"]
)
BARS_UPSERTED = Counter("tradeql_bars_upserted_total", "One-minute bars written")
GROUPS_RECREATED = Counter(
    "tradeql_stream_groups_recreated_total",
    "Consumer groups created again after a Redis loss",
    ["group"],
)


class LogOncePerKind:
    """Malformed input is logged the first time each kind is seen, then only counted."""

    def __init__(self, source: str) -> None:
        self.source = source
        self._seen: set[str] = set()

    def __call__(self, kind: str, detail: str) -> None:
        FEED_MALFORMED.labels(self.source, kind).inc()
        if kind not in self._seen:
            self._seen.add(kind)
            log.warning(
                "%s feed: malformed record (%s): %s; further ones of this kind are only counted",
                self.source,
                kind,
                detail,
            )


def serve_metrics(port: int) -> None:
    if port:
        start_http_server(port, addr="127.0.0.1")
        log.info("metrics on http://127.0.0.1:%s/metrics", port)


MATCHER_PARTITIONS = Gauge("tradeql_matcher_partitions", "Partitions this matcher holds")
MATCHER_WORKING = Gauge("tradeql_matcher_working_orders", "Working orders in memory", ["partition"])
MATCHER_EXECUTIONS = Counter("tradeql_matcher_executions_total", "Executions booked")
