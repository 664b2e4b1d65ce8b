"""PostgreSQL helpers shared by the benchmarks: scratch databases, and a sampler thread."""

from __future__ import annotations

import asyncio
import threading


async def admin(admin_url: str, *statements: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(admin_url, timeout=10)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


def recreate_database(admin_url: str, name: str) -> None:
    """DROP (forcing other sessions off) and CREATE `name`: every run starts from nothing."""
    asyncio.run(
        admin(
            admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', f'CREATE DATABASE "{name}"'
        )
    )


def drop_database(admin_url: str, name: str) -> None:
    asyncio.run(admin(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


class SamplerThread:
    """Runs the coroutine `_sample` in its own daemon thread ("pg-activity") from `start()`
    until `stop()`; a failure is kept in `error` (a sampler must not end the benchmark)."""

    _stop: threading.Event
    _thread: threading.Thread | None
    error: str | None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="pg-activity", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def _run(self) -> None:
        try:
            asyncio.run(self._sample())
        except Exception as exc:
            self.error = f"{type(exc).__name__}: {exc}"

    async def _sample(self) -> None:
        raise NotImplementedError
