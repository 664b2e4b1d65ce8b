"""Runs end of day after each market close, by the real NYSE calendar (even when the demo
clock keeps the market open)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from services.clock import MarketClock
from services.container import Services
from services.eod import run_eod

log = logging.getLogger("tradeql.scheduler")
NEW_YORK = ZoneInfo("America/New_York")


async def run_scheduler(services: Services, stop: asyncio.Event) -> None:
    calendar = MarketClock(always_open=False)
    while not stop.is_set():
        close_at = calendar.state().next_close
        wait = (close_at - datetime.now(UTC)).total_seconds()
        log.info("next end of day at %s", close_at.isoformat())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), max(wait, 0) + 1)
        if stop.is_set():
            return
        await run_eod(services, close_at.astimezone(NEW_YORK).date(), close_at)
