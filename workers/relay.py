"""`tradeql relay`: the outbox relay as a worker loop (services/orders/outbox.py does the work).

Every `TRADEQL_OUTBOX_RELAY_INTERVAL_SECONDS` it publishes the order events older than
`TRADEQL_OUTBOX_GRACE_SECONDS` that their writers did not publish. An outage of PostgreSQL or
Redis is waited out with backoff; any other failure of a round is logged and counted, and the
next round tries again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from services.infra.container import Services
from services.infra.retry import Backoff, is_transient
from services.orders.outbox import OutboxRelay
from workers.metrics import OUTBOX_RELAYED, OUTBOX_ROUND_FAILURES

log = logging.getLogger("tradeql.relay")


async def run_relay(services: Services, stop: asyncio.Event) -> None:
    settings = services.settings
    relay = OutboxRelay(
        services.engine, services.redis, grace_seconds=settings.outbox_grace_seconds
    )
    interval = settings.outbox_relay_interval_seconds
    backoff = Backoff(initial=2 * interval, maximum=5.0)
    while not stop.is_set():
        try:
            done = await relay.relay_once()
            OUTBOX_RELAYED.inc(done.published)
            backoff.succeeded()
            delay = interval
        except Exception as exc:
            OUTBOX_ROUND_FAILURES.labels("outage" if is_transient(exc) else "error").inc()
            first, delay = backoff.failed()
            if first:
                log.warning("outbox relay round failed: %s", exc, exc_info=not is_transient(exc))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)
