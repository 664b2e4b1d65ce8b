"""Running a worker as a process: settings, logging, metrics, and a clean stop on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable

from services.infra.container import Services
from services.infra.settings import Settings
from workers.metrics import serve_metrics

log = logging.getLogger("tradeql.workers")

WorkerMain = Callable[[Services, asyncio.Event], Awaitable[None]]


def run_worker(name: str, settings: Settings, main: WorkerMain, *, metrics_port: int = 0) -> None:
    """Run `main` until SIGTERM/SIGINT sets its stop event; it then flushes, acks and returns."""

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        serve_metrics(metrics_port)
        services = Services.from_settings(settings)
        log.info("%s started", name)
        try:
            await main(services, stop)
        finally:
            await services.close()
            log.info("%s stopped", name)

    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        runner.run(run())


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop where it is installed (as the API runs under uvicorn): a worker's time is mostly
    socket I/O to PostgreSQL and Redis, which uvloop does in C."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop
