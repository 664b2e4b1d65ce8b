"""PostgreSQL during a reads window: CPU of the backends serving the benchmark's database (the
server is shared with other databases, so its whole process tree would over-count), what those
backends were doing (sampled from pg_stat_activity), and the database's counters."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import Counter
from typing import Any

import psutil

from bench._pg import SamplerThread

MAX_SAMPLES = 100_000


async def _fetch(url: str, sql: str, *args: Any) -> list[Any]:
    import asyncpg

    conn = await asyncpg.connect(url, timeout=10)
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


def backend_pids(url: str, database: str) -> list[int]:
    rows = asyncio.run(
        _fetch(
            url,
            "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
            database,
        )
    )
    return [int(r["pid"]) for r in rows]


def postmaster_pid(url: str) -> int | None:
    """The postmaster: the parent of a long-lived auxiliary process (a backend of our own
    connection would be gone by the time psutil looked)."""
    rows = asyncio.run(
        _fetch(
            url,
            "SELECT pid FROM pg_stat_activity WHERE backend_type IN "
            "('checkpointer', 'background writer', 'walwriter') ORDER BY backend_type",
        )
    )
    for row in rows:
        with contextlib.suppress(psutil.Error):
            return psutil.Process(int(row["pid"])).ppid()
    return None


def database_counters(url: str, database: str) -> dict[str, float]:
    rows = asyncio.run(
        _fetch(
            url,
            "SELECT xact_commit, xact_rollback, blks_read, blks_hit, tup_returned, tup_fetched, "
            "sessions "
            "FROM pg_stat_database WHERE datname = $1",
            database,
        )
    )
    return {k: float(v) for k, v in dict(rows[0]).items()} if rows else {}


class TreeCpu:
    """CPU of a process and its descendants over a window, per pid: a process born in the window
    counts from zero; one that ended before the end is left out (never a negative figure)."""

    def __init__(self, root_pid: int) -> None:
        self.root_pid = root_pid
        self._start: dict[int, float] = {}
        self._wall = 0.0

    def _pids(self) -> list[int]:
        with contextlib.suppress(psutil.Error):
            root = psutil.Process(self.root_pid)
            return [self.root_pid, *(c.pid for c in root.children(recursive=True))]
        return []

    def start(self) -> None:
        self._start = {}
        for pid in self._pids():
            used = BackendCpu._used(pid)
            if used is not None:
                self._start[pid] = used
        self._wall = time.monotonic()

    def stop(self) -> float:
        """Percent of one core."""
        wall = max(time.monotonic() - self._wall, 1e-9)
        used = 0.0
        for pid in self._pids():
            now = BackendCpu._used(pid)
            if now is not None:
                used += max(0.0, now - self._start.get(pid, 0.0))
        return 100.0 * used / wall


class BackendCpu:
    """CPU seconds of a database's backends over a window: the pids seen at the start and the
    end (a backend born in the window counts from zero, one gone before the end is missed)."""

    def __init__(self, url: str, database: str) -> None:
        self.url = url
        self.database = database
        self._start: dict[int, float] = {}
        self._wall = 0.0

    @staticmethod
    def _used(pid: int) -> float | None:
        with contextlib.suppress(psutil.Error):
            times = psutil.Process(pid).cpu_times()
            return float(times.user + times.system)
        return None

    def start(self) -> None:
        self._start = {}
        for pid in backend_pids(self.url, self.database):
            used = self._used(pid)
            if used is not None:
                self._start[pid] = used
        self._wall = time.monotonic()

    def stop(self) -> tuple[float, int]:
        """(percent of one core, backends counted)."""
        wall = max(time.monotonic() - self._wall, 1e-9)
        pids = set(self._start) | set(backend_pids(self.url, self.database))
        used = 0.0
        for pid in pids:
            now = self._used(pid)
            if now is not None:
                used += max(0.0, now - self._start.get(pid, 0.0))
        return 100.0 * used / wall, len(pids)


class ActivitySampler(SamplerThread):
    """pg_stat_activity of one database every `interval` seconds, in a thread: how many backends
    are active, and on what they wait (wait_event_type:wait_event, or CPU when none)."""

    def __init__(self, url: str, database: str, interval: float = 0.1) -> None:
        self.url = url
        self.database = database
        self.interval = interval
        self.samples = 0
        self.active: Counter[int] = Counter()
        self.waits: Counter[str] = Counter()
        self.states: Counter[str] = Counter()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: str | None = None

    async def _sample(self) -> None:
        import asyncpg

        conn = await asyncpg.connect(self.url, timeout=10)
        try:
            for _ in range(MAX_SAMPLES):
                if self._stop.is_set():
                    return
                rows = await conn.fetch(
                    "SELECT state, wait_event_type, wait_event FROM pg_stat_activity "
                    "WHERE datname = $1 AND pid <> pg_backend_pid()",
                    self.database,
                )
                self.samples += 1
                active = 0
                for r in rows:
                    self.states[r["state"] or "?"] += 1
                    if r["state"] == "active":
                        active += 1
                        wait = (
                            f"{r['wait_event_type']}:{r['wait_event']}"
                            if r["wait_event_type"]
                            else "CPU"
                        )
                        self.waits[wait] += 1
                self.active[active] += 1
                await asyncio.sleep(self.interval)
        finally:
            await conn.close()

    def summary(self) -> str:
        if not self.samples:
            return f"no pg_stat_activity samples ({self.error or 'none taken'})"
        mean_active = sum(k * v for k, v in self.active.items()) / self.samples
        per_state = {k: v / self.samples for k, v in self.states.items()}
        waits = ", ".join(f"{k} {v / self.samples:.2f}" for k, v in self.waits.most_common(5))
        states = ", ".join(f"{k} {v:.1f}" for k, v in sorted(per_state.items()))
        return (
            f"{self.samples} samples: mean active backends {mean_active:.2f} "
            f"(by wait: {waits or 'none'}); backends by state: {states}"
        )
