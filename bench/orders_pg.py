"""PostgreSQL for the orders benchmark: scratch databases, the pgbench reference, and what the
server does during a window (commits, wait events, the statements on CPU, CPU of its processes).
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import re
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psutil

from bench._pg import SamplerThread, drop_database, recreate_database

_TPS = re.compile(r"^tps = ([0-9.]+) \(without initial connection time\)", re.MULTILINE)
_LATENCY = re.compile(r"^latency average = ([0-9.]+) ms", re.MULTILINE)
PGBENCH_DATABASE = "tradeql_bench_pgbench"


# ------------------------------------------------------------------------------------------------
# Databases


async def _server_facts(url: str) -> dict[str, Any]:
    import asyncpg

    conn = await asyncpg.connect(url, timeout=10)
    try:
        facts: dict[str, Any] = {"version": await conn.fetchval("SHOW server_version")}
        for name in ("synchronous_commit", "fsync", "shared_buffers", "max_connections"):
            facts[name] = await conn.fetchval(f"SHOW {name}")
        backend = await conn.fetchval("SELECT pg_backend_pid()")
        facts["postmaster_pid"] = None
        with contextlib.suppress(psutil.Error):
            facts["postmaster_pid"] = psutil.Process(int(backend)).ppid()
        return facts
    finally:
        await conn.close()


def server_facts(url: str) -> dict[str, Any]:
    """Version, durability settings and the postmaster's pid (the server runs on this machine)."""
    return asyncio.run(_server_facts(url))


# ------------------------------------------------------------------------------------------------
# pgbench


def find_pgbench() -> str | None:
    found = shutil.which("pgbench")
    if found:
        return found
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin/pgbench"), reverse=True):
        return candidate
    venv = Path(sys.executable).resolve().parent.parent
    for candidate in glob.glob(
        str(venv / "lib/python*/site-packages/pgserver/pginstall/bin/pgbench")
    ):
        return candidate
    return None


@dataclass
class PgbenchResult:
    exe: str | None
    commands: list[str] = field(default_factory=list)
    tps: float | None = None
    latency_ms: float | None = None
    error: str | None = None
    output: str = ""


def run_pgbench(
    admin_url: str, *, scale: int, clients: int, threads: int, seconds: int
) -> PgbenchResult:
    """`pgbench -i -s SCALE` in a scratch database, then a tpcb-like run; the scratch is dropped."""
    exe = find_pgbench()
    result = PgbenchResult(exe)
    if exe is None:
        result.error = "pgbench not found (PATH, /usr/lib/postgresql/*/bin, pgserver)"
        return result
    parts = urlsplit(admin_url)
    conn_args = ["-h", parts.hostname or "127.0.0.1", "-p", str(parts.port or 5432)]
    if parts.username:
        conn_args += ["-U", parts.username]
    env = {"PATH": "/usr/bin:/bin"}
    if parts.password:
        env["PGPASSWORD"] = parts.password
    init = [exe, *conn_args, "-i", "-q", "-s", str(scale), PGBENCH_DATABASE]
    run = [
        exe,
        *conn_args,
        "-c",
        str(clients),
        "-j",
        str(threads),
        "-T",
        str(seconds),
        "-b",
        "tpcb-like",
        PGBENCH_DATABASE,
    ]
    result.commands = [" ".join(init), " ".join(run)]
    try:
        recreate_database(admin_url, PGBENCH_DATABASE)
        done = subprocess.run(
            init, capture_output=True, text=True, timeout=600, check=False, env=env
        )
        if done.returncode != 0:
            result.error = f"pgbench -i failed: {done.stderr.strip()[-500:]}"
            return result
        done = subprocess.run(
            run, capture_output=True, text=True, timeout=seconds + 120, check=False, env=env
        )
        result.output = done.stdout
        if done.returncode != 0:
            result.error = f"pgbench failed: {done.stderr.strip()[-500:]}"
            return result
        tps, latency = _TPS.search(done.stdout), _LATENCY.search(done.stdout)
        result.tps = float(tps.group(1)) if tps else None
        result.latency_ms = float(latency.group(1)) if latency else None
        if result.tps is None:
            result.error = f"no tps in pgbench's output: {done.stdout[-500:]}"
    except (OSError, subprocess.TimeoutExpired) as exc:
        result.error = f"pgbench: {type(exc).__name__}: {exc}"
    finally:
        with contextlib.suppress(Exception):
            drop_database(admin_url, PGBENCH_DATABASE)
    return result


# ------------------------------------------------------------------------------------------------
# What the server does during a window


STAT_COLUMNS = ("xact_commit", "xact_rollback", "tup_inserted", "tup_updated", "deadlocks")


async def _database_stats(url: str, name: str) -> dict[str, float]:
    import asyncpg

    conn = await asyncpg.connect(url, timeout=10)
    try:
        row = await conn.fetchrow(
            f"SELECT {', '.join(STAT_COLUMNS)} FROM pg_stat_database WHERE datname = $1", name
        )
        return {k: float(row[k]) for k in STAT_COLUMNS} if row else {}
    finally:
        await conn.close()


def database_stats(url: str, name: str) -> dict[str, float]:
    """Counters of pg_stat_database (they lag by up to the stats flush interval, ~1 s)."""
    try:
        return asyncio.run(_database_stats(url, name))
    except Exception:  # the stats are a nicety: never fail a run over them
        return {}


def _statement(query: str) -> str:
    words = " ".join(query.split())
    return words[:90]


class ActivitySampler(SamplerThread):
    """Samples pg_stat_activity of one database every `interval` seconds, in its own thread:
    how many backends are active, on what they wait (or CPU), and which statements they run."""

    def __init__(self, url: str, database: str, interval: float = 0.1) -> None:
        self.url = url
        self.database = database
        self.interval = interval
        self.samples = 0
        self.active = 0
        self.waits: Counter[str] = Counter()
        self.statements: Counter[str] = Counter()
        self.idle_in_transaction = 0
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    async def _sample(self) -> None:
        import asyncpg

        conn = await asyncpg.connect(self.url, timeout=10)
        try:
            for _ in range(1_000_000):
                if self._stop.is_set():
                    return
                rows = await conn.fetch(
                    "SELECT state, wait_event_type, wait_event, query FROM pg_stat_activity "
                    "WHERE datname = $1 AND pid <> pg_backend_pid() AND backend_type = "
                    "'client backend'",
                    self.database,
                )
                self.samples += 1
                for row in rows:
                    if row["state"] == "idle in transaction":
                        self.idle_in_transaction += 1
                    if row["state"] != "active":
                        continue
                    self.active += 1
                    wait = (
                        f"{row['wait_event_type']}:{row['wait_event']}"
                        if row["wait_event_type"]
                        else "CPU (no wait event)"
                    )
                    self.waits[wait] += 1
                    self.statements[_statement(row["query"] or "")] += 1
                await asyncio.sleep(self.interval)
        finally:
            await conn.close()

    def summary(self, top: int = 8) -> str:
        if self.error:
            return f"pg_stat_activity sampling failed: {self.error}"
        if not self.samples:
            return "pg_stat_activity: no samples"
        n = self.samples
        lines = [
            f"pg_stat_activity ({n} samples every {self.interval * 1000:.0f} ms): "
            f"{self.active / n:.2f} backends active on average, "
            f"{self.idle_in_transaction / n:.2f} idle in transaction (waiting on the client)"
        ]
        if self.active:
            lines.append("  active backends by wait event (share of active samples):")
            for wait, count in self.waits.most_common(top):
                lines.append(f"    {100 * count / self.active:5.1f}%  {wait}")
            lines.append("  active backends by statement:")
            for statement, count in self.statements.most_common(top):
                lines.append(f"    {100 * count / self.active:5.1f}%  {statement}")
        return "\n".join(lines)


class TreeCpu:
    """CPU of a process and its children (the PostgreSQL server: postmaster and backends) over
    one interval; children that start during it count in full, those that end are lost."""

    def __init__(self, root_pid: int | None) -> None:
        self.root_pid = root_pid
        self._start: dict[tuple[int, float], float] = {}
        self._began = 0.0

    def _processes(self) -> list[psutil.Process]:
        if self.root_pid is None:
            return []
        try:
            root = psutil.Process(self.root_pid)
            return [root, *root.children(recursive=True)]
        except psutil.Error:
            return []

    @staticmethod
    def _used(process: psutil.Process) -> tuple[tuple[int, float], float] | None:
        try:
            times = process.cpu_times()
            return (process.pid, process.create_time()), times.user + times.system
        except psutil.Error:
            return None

    def start(self) -> None:
        self._began = time.monotonic()
        self._start = dict(filter(None, (self._used(p) for p in self._processes())))

    def stop(self) -> float | None:
        """Percent of one core, or None without a server to watch."""
        if self.root_pid is None:
            return None
        wall = max(time.monotonic() - self._began, 1e-9)
        used = 0.0
        for entry in filter(None, (self._used(p) for p in self._processes())):
            key, seconds = entry
            used += seconds - self._start.get(key, 0.0)
        return 100.0 * used / wall
