"""Timed work: an equity snapshot of every account each 5 minutes while the market is open (the
portfolio history), end of day after each close, and the expiry of extended-hours DAY orders at
the end of each POST session, by the real NYSE calendar (even when the demo clock keeps the
market open)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from services.infra.container import Services
from services.market_data.clock import MarketClock
from services.orders.eod import expire_day_orders, run_eod, snapshot_equity

log = logging.getLogger("tradeql.scheduler")
NEW_YORK = ZoneInfo("America/New_York")
SNAPSHOT_EVERY_SECONDS = 300


async def _sleep(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), max(seconds, 0))


async def end_of_day_loop(services: Services, stop: asyncio.Event) -> None:
    calendar = MarketClock(always_open=False)
    while not stop.is_set():
        close_at = calendar.state().next_close
        log.info("next end of day at %s", close_at.isoformat())
        await _sleep(stop, (close_at - datetime.now(UTC)).total_seconds() + 1)
        if not stop.is_set():
            await run_eod(services, close_at.astimezone(NEW_YORK).date(), close_at)


async def extended_hours_expiry_loop(services: Services, stop: asyncio.Event) -> None:
    """DAY orders for extended hours work until the end of that day's POST session."""
    calendar = MarketClock(always_open=False)
    while not stop.is_set():
        post_end = calendar.current_or_next_day().post_end
        log.info("next end of POST at %s", post_end.isoformat())
        await _sleep(stop, (post_end - datetime.now(UTC)).total_seconds() + 1)
        if not stop.is_set():
            expired = await expire_day_orders(services, post_end, extended_hours=True)
            log.info("end of POST: %d extended-hours orders expired", expired)


async def intraday_snapshot_loop(services: Services, stop: asyncio.Event) -> None:
    """On the 5-minute marks, so every account's points line up."""
    while not stop.is_set():
        await _sleep(stop, SNAPSHOT_EVERY_SECONDS - time.time() % SNAPSHOT_EVERY_SECONDS)
        if stop.is_set():
            return
        if services.clock.is_open():
            taken_at = datetime.now(UTC).replace(second=0, microsecond=0)
            count = await snapshot_equity(services, taken_at, kind="intraday")
            log.info("intraday snapshot of %d accounts", count)


async def run_scheduler(services: Services, stop: asyncio.Event) -> None:
    await asyncio.gather(
        end_of_day_loop(services, stop),
        extended_hours_expiry_loop(services, stop),
        intraday_snapshot_loop(services, stop),
    )
