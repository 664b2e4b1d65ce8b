"""What every benchmark shares: servers, databases, child processes, CPU, metrics, percentiles,
py-spy profiles and the command line.

A benchmark (`python -m bench.<name>`) runs against a dedicated database and Redis db on loopback
addresses only (DATABASE_URL / REDIS_URL if set, only as the place to connect, else the standard
local ports); other TRADEQL_* settings in its environment reach the processes under test. Every
child process is recorded (pid and start time) in a state file, so a run killed with SIGKILL
leaves nothing behind for long: the next run ends exactly those processes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import math
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import IO, Any
from urllib.parse import urlsplit, urlunsplit

import psutil

ROOT = Path(__file__).resolve().parent.parent
STATE_DIR = Path(tempfile.gettempdir()) / "tradeql-bench"
DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
START_TIMEOUT = 60.0
STOP_GRACE = 10.0
BUCKETS_PER_MS = 10  # latency histograms: bucket (0.1 ms) -> count
BENCH_REDIS_DBS = range(11, 16)  # the tests take 1-9 (their locks 10): a bench never flushes them


class BenchError(RuntimeError):
    """The benchmark cannot go on (a process died, a server did not answer in time)."""


def fmt(value: float | None, spec: str = ",.1f") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, spec)


# Servers and settings


def with_path(url: str, path: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=path))


def require_loopback(url: str, what: str) -> None:
    host = urlsplit(url).hostname or ""
    with contextlib.suppress(ValueError):
        if host == "localhost" or ipaddress.ip_address(host).is_loopback:
            return
    raise BenchError(f"{what} must point at a loopback address, not {host!r}")


def server_urls(redis_base: str | None = None) -> tuple[str, str]:
    """(the admin database URL, the Redis base URL), both checked to be loopback addresses."""
    database = os.environ.get("DATABASE_URL") or DEFAULT_DATABASE_URL
    redis = redis_base or os.environ.get("REDIS_URL") or DEFAULT_REDIS_URL
    require_loopback(database, "DATABASE_URL")
    require_loopback(redis, "REDIS_URL")
    return with_path(database, "/postgres"), redis


def bench_env(args: argparse.Namespace, redis_base: str | None = None) -> dict[str, str]:
    """The environment of the processes under test: the bench database and Redis db, the market
    always open, and no per-address rate limit (every simulated user comes from 127.0.0.1; the
    per-session limits stay on). The Redis namespace is derived here as the processes derive it."""
    from services.infra import keys

    admin, redis = server_urls(redis_base)
    env = {
        "DATABASE_URL": with_path(admin, f"/{args.database}"),
        "REDIS_URL": with_path(redis, f"/{args.redis_db}"),
        "TRADEQL_LOG_LEVEL": getattr(args, "log_level", "WARNING"),
        "TRADEQL_MARKET_ALWAYS_OPEN": "true",
        "TRADEQL_RATE_LIMIT_IP_PER_SECOND": "0",
    }
    keys.configure(env["DATABASE_URL"])
    return env


def settings_for(env: Mapping[str, str]) -> Any:
    """The `Settings` the processes under test read from `env`."""
    from services.infra.settings import Settings

    saved = dict(os.environ)
    try:
        os.environ.update(env)
        return Settings()
    finally:
        os.environ.clear()
        os.environ.update(saved)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def redis_client(url: str) -> Any:
    import redis

    return redis.Redis.from_url(url, decode_responses=True, socket_timeout=5)


def group_backlog(redis: Any, streams: Iterable[str], group: str) -> tuple[int | None, int, int]:
    """(entries not yet delivered to a consumer group, delivered but not acknowledged, entries
    ever added) over some Redis streams; the first None when Redis cannot tell."""
    lag: int | None = 0
    pending = added = 0
    for stream in streams:
        try:
            added += int(redis.xinfo_stream(stream).get("entries-added") or 0)
            groups = redis.xinfo_groups(stream)
        except Exception:  # the stream does not exist yet
            continue
        for g in (g for g in groups if g.get("name") == group):
            pending += int(g.get("pending") or 0)
            lag = None if lag is None or g.get("lag") is None else lag + int(g["lag"])
    return lag, pending, added


def redis_pid(url: str) -> int | None:
    """The Redis server's pid, when it runs on this machine (for its CPU)."""
    with contextlib.suppress(Exception):
        client = redis_client(url)
        pid = int(client.info("server")["process_id"])
        client.close()
        return pid if psutil.pid_exists(pid) else None
    return None


# PostgreSQL


async def _pg(url: str, work: Callable[[Any], Any]) -> Any:
    import asyncpg

    conn = await asyncpg.connect(url, timeout=10)
    try:
        return await work(conn)
    finally:
        await conn.close()


def pg_fetch(url: str, sql: str, *params: Any) -> list[Any]:
    return list(asyncio.run(_pg(url, lambda c: c.fetch(sql, *params))))


def pg_execute(url: str, *statements: str) -> None:
    async def run(conn: Any) -> None:
        for statement in statements:
            await conn.execute(statement)

    asyncio.run(_pg(url, run))


def recreate_database(admin_url: str, name: str) -> None:
    """DROP (forcing other sessions off) and CREATE: every run starts from nothing."""
    drop = f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'
    pg_execute(admin_url, drop, f'CREATE DATABASE "{name}"')


class PrivatePostgres:
    """A PostgreSQL server of the run's own: `initdb` (the newest /usr/lib/postgresql/*/bin) in a
    temporary folder, a free loopback port, run as the `postgres` user when the run is root, with
    the server defaults (fsync and synchronous_commit on, as the machine's server). Its WAL and
    its processes' CPU are then the run's work only. `stop()` ends it and removes the folder."""

    RUN_AS = "postgres"

    def __init__(self, registry: Registry) -> None:
        found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: p.parts)
        if not found:
            raise BenchError("no PostgreSQL server binaries under /usr/lib/postgresql")
        self.bin, self.registry = found[-1].parent, registry
        self.folder = Path(tempfile.mkdtemp(prefix="tradeql-bench-pg-"))
        self.data, self.port, self.pid = self.folder / "data", free_port(), 0

    def _run(self, *argv: str) -> None:
        command = [*(["runuser", "-u", self.RUN_AS, "--"] if os.geteuid() == 0 else []), *argv]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
        if done.returncode:
            raise BenchError(f"{' '.join(argv)} failed: {(done.stdout + done.stderr)[-800:]}")

    def start(self) -> str:
        """The server's admin URL once it accepts connections."""
        if os.geteuid() == 0:
            shutil.chown(self.folder, self.RUN_AS, self.RUN_AS)
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres",
                  "--auth=trust", "-E", "UTF8", "--no-sync")  # fmt: skip
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write(f"port = {self.port}\nlisten_addresses = '127.0.0.1'\n"
                       f"unix_socket_directories = '{self.folder}'\nmax_connections = 200\n")  # fmt: skip
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l",
                  str(self.folder / "server.log"), "-w", "start")  # fmt: skip
        self.pid = int((self.data / "postmaster.pid").read_text().split()[0])
        self.registry.add(self.pid)
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def stop(self) -> None:
        if self.pid:
            with contextlib.suppress(BenchError):
                self._run(f"{self.bin}/pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")
            self.registry.remove(self.pid)
            self.pid = 0
        shutil.rmtree(self.folder, ignore_errors=True)


def postmaster_pid(url: str) -> int | None:
    """The postmaster: the parent of a long-lived auxiliary process."""
    sql = ("SELECT pid FROM pg_stat_activity WHERE backend_type IN "
           "('checkpointer', 'background writer', 'walwriter') ORDER BY backend_type")  # fmt: skip
    for row in pg_fetch(url, sql):
        with contextlib.suppress(psutil.Error):
            return psutil.Process(int(row["pid"])).ppid()
    return None


def database_stats(url: str, database: str) -> dict[str, float]:
    """pg_stat_database counters (they lag by up to the stats flush interval, ~1 s)."""
    with contextlib.suppress(Exception):  # a nicety: never fail a run over it
        rows = pg_fetch(url, "SELECT * FROM pg_stat_database WHERE datname = $1", database)
        return {k: float(v) for k, v in dict(rows[0]).items() if isinstance(v, int | float)}
    return {}


def migrate(database_url: str) -> None:
    from gateway.migrate import upgrade

    upgrade(database_url)


def load_securities(env: Mapping[str, str], wanted: int) -> list[str]:
    """The first `wanted` active symbols (what `tradeql feed --symbols N` simulates), after
    `tradeql securities defaults` (with `--synthetic N` when the defaults are too few)."""
    query = "SELECT symbol FROM securities WHERE active ORDER BY symbol"  # as the feed orders
    symbols = [r["symbol"] for r in pg_fetch(env["DATABASE_URL"], query)]
    for extra in ([], ["--synthetic", str(wanted)]):
        if len(symbols) >= wanted:
            break
        run_tradeql(env, "securities", "defaults", *extra)
        symbols = [r["symbol"] for r in pg_fetch(env["DATABASE_URL"], query)]
    if len(symbols) < wanted:
        raise BenchError(f"only {len(symbols)} securities after loading, {wanted} wanted")
    return symbols[:wanted]


def run_tradeql(env: Mapping[str, str], *args: str, check: bool = True) -> tuple[int, str]:
    """`tradeql <args>` to the end: (exit code, output); BenchError if it fails and `check`."""
    done = subprocess.run(
        tradeql_argv(*args), cwd=ROOT, env=child_env(env), capture_output=True, text=True,
        timeout=600, check=False,
    )  # fmt: skip
    out = (done.stdout + done.stderr).strip()
    if check and done.returncode:
        raise BenchError(f"tradeql {' '.join(args)} failed:\n{out[-2000:]}")
    return done.returncode, out


class Activity:
    """pg_stat_activity of one database, sampled every `interval` s in a thread of its own: the
    backends active on average, on what they wait (or CPU), the statements they run."""

    def __init__(self, url: str, database: str, interval: float = 0.1) -> None:
        self.url, self.database, self.interval = url, database, interval
        self.samples = self.active = self.idle_in_transaction = 0
        self.waits: Counter[str] = Counter()
        self.statements: Counter[str] = Counter()
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import asyncpg

        loop = asyncio.new_event_loop()
        conn: Any = None
        sql = ("SELECT state, wait_event_type, wait_event, query FROM pg_stat_activity WHERE "
               "datname = $1 AND pid <> pg_backend_pid() AND backend_type = 'client backend'")  # fmt: skip
        while not self._stop.is_set():
            try:  # a sampler never ends the benchmark
                if conn is None:
                    conn = loop.run_until_complete(asyncpg.connect(self.url, timeout=10))
                self._count(loop.run_until_complete(conn.fetch(sql, self.database)))
            except Exception as exc:
                self.error = f"{type(exc).__name__}: {exc}"
            self._stop.wait(self.interval)
        if conn is not None:
            with contextlib.suppress(Exception):
                loop.run_until_complete(conn.close())
        loop.close()

    def _count(self, rows: list[Any]) -> None:
        self.samples += 1
        for row in rows:
            self.idle_in_transaction += row["state"] == "idle in transaction"
            if row["state"] == "active":
                self.active += 1
                kind = row["wait_event_type"]
                self.waits[f"{kind}:{row['wait_event']}" if kind else "CPU (no wait event)"] += 1
                self.statements[" ".join((row["query"] or "").split())[:90]] += 1

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)

    def summary(self, top: int = 6) -> str:
        if not self.samples:
            return f"pg_stat_activity: no samples ({self.error or 'none taken'})"
        n = self.samples
        lines = [
            f"pg_stat_activity ({n} samples every {self.interval * 1000:.0f} ms): "
            f"{self.active / n:.2f} backends active on average, "
            f"{self.idle_in_transaction / n:.2f} idle in transaction"
        ]
        for title, counts in (("wait event", self.waits), ("statement", self.statements)):
            if self.active:
                lines.append(f"  active backends by {title} (share of active samples):")
                common = counts.most_common(top)
                lines += [f"    {100 * c / self.active:5.1f}%  {k}" for k, c in common]
        return "\n".join(lines)


# Child processes


def tradeql_argv(*args: str) -> list[str]:
    """`tradeql <args>` with this interpreter (the venv's), as `gateway.supervisor` does."""
    return [sys.executable, "-m", "gateway.cli", *args]


def child_env(extra: Mapping[str, str]) -> dict[str, str]:
    return {**os.environ, **extra}


def log_tail(path: Path, lines: int = 30) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return "(no log)"


class Registry:
    """The state file of the processes a benchmark started and has not yet seen end."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _update(self, change: Callable[[dict[str, float]], Any]) -> dict[str, float]:
        """{pid: start time} before `change`, which is then saved."""
        try:
            entries = {str(k): float(v) for k, v in json.loads(self.path.read_text()).items()}
        except (OSError, ValueError, TypeError, AttributeError):
            entries = {}
        before = dict(entries)
        change(entries)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.with_suffix(".tmp").write_text(json.dumps(entries))
        self.path.with_suffix(".tmp").replace(self.path)
        return before

    def add(self, pid: int) -> None:
        with contextlib.suppress(psutil.Error):
            created = psutil.Process(pid).create_time()
            self._update(lambda entries: entries.update({str(pid): created}))

    def remove(self, pid: int) -> None:
        self._update(lambda entries: entries.pop(str(pid), None))

    def end_leftovers(self) -> list[int]:
        """End the processes a previous run left (same pid and start time only)."""
        ended: list[int] = []
        for pid, created in self._update(dict.clear).items():
            with contextlib.suppress(psutil.Error, ValueError):
                process = psutil.Process(int(pid))
                if abs(process.create_time() - created) < 0.01:
                    process.terminate()
                    ended.append(int(pid))
                    try:
                        process.wait(STOP_GRACE)
                    except psutil.TimeoutExpired:
                        process.kill()
        return ended


class Managed:
    """One child process in its own session, its output in a log file (or, with `pipe=True`,
    its stdout lines to the caller and its stdin from it)."""

    def __init__(self, name: str, argv: Sequence[str], env: Mapping[str, str], log: Path,
                 registry: Registry, *, pipe: bool = False) -> None:  # fmt: skip
        self.name, self.argv, self.env, self.log_path = name, list(argv), dict(env), log
        self.registry, self.pipe = registry, pipe
        self.popen: subprocess.Popen[str] | None = None
        self._log: IO[str] | None = None
        self._lines: queue.Queue[str | None] = queue.Queue()

    @property
    def pid(self) -> int:
        assert self.popen is not None, f"{self.name} was not started"
        return self.popen.pid

    def start(self) -> Managed:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "a", encoding="utf-8")  # closed in stop()
        pipe = subprocess.PIPE if self.pipe else None
        self.popen = subprocess.Popen(
            self.argv, cwd=ROOT, env=self.env, stdin=pipe or subprocess.DEVNULL,
            stdout=pipe or self._log, stderr=self._log, text=True, bufsize=1,
            start_new_session=True,  # Ctrl-C reaches the benchmark only; it ends the children
        )  # fmt: skip
        self.registry.add(self.popen.pid)
        if self.pipe:
            threading.Thread(target=self._read_stdout, daemon=True).start()
        return self

    def _read_stdout(self) -> None:
        assert self.popen is not None and self.popen.stdout is not None
        for line in self.popen.stdout:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def check_alive(self) -> None:
        if self.popen is not None and self.popen.poll() is not None:
            raise BenchError(
                f"{self.name} exited with code {self.popen.returncode}; "
                f"last lines of {self.log_path}:\n{log_tail(self.log_path)}"
            )

    def send_line(self, line: str) -> None:
        assert self.popen is not None and self.popen.stdin is not None
        try:
            self.popen.stdin.write(line + "\n")
            self.popen.stdin.flush()
        except OSError as exc:
            raise BenchError(f"{self.name} stopped reading its input: {exc}") from exc

    def read_tagged(self, tag: str, timeout: float, watch: Sequence[Managed] = ()) -> str:
        """The rest of the next stdout line starting with `tag` (other lines skipped), checking
        every second that the processes in `watch` still run; a `FAILED` line is an error."""
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            for other in watch:
                other.check_alive()
            try:
                line = self._lines.get(timeout=min(remaining, 1.0))
            except queue.Empty:
                continue
            if line is None:
                self.check_alive()
                raise BenchError(f"{self.name} closed its output")
            if line.startswith("FAILED"):
                raise BenchError(f"{self.name}: {line}")
            if line.startswith(tag):
                return line[len(tag) :].strip()
        raise BenchError(f"{self.name}: no {tag!r} line within {timeout:.0f}s")

    def stop(self, grace: float = STOP_GRACE) -> None:
        """SIGTERM, then SIGKILL after `grace` seconds; idempotent."""
        if (popen := self.popen) is not None:
            with contextlib.suppress(OSError, AttributeError):
                popen.stdin.close()  # type: ignore[union-attr]
            with contextlib.suppress(ProcessLookupError):
                popen.terminate()
            try:
                popen.wait(grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, subprocess.TimeoutExpired):
                    popen.kill()
                    popen.wait(5)
            if popen.poll() is not None:
                self.registry.remove(popen.pid)
        if self._log is not None:
            self._log.close()
            self._log = None


class Run:
    """One benchmark run: its log folder, the registry of its children, and every child it
    started (stopped in reverse order by `stop_all`)."""

    def __init__(self, name: str, log_dir: Path | None) -> None:
        self.log_dir = log_dir or Path(tempfile.mkdtemp(prefix=f"tradeql-bench-{name}-"))
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.registry = Registry(STATE_DIR / f"{name}-pids.json")
        self.children: list[Managed] = []
        self.keep: set[Managed] = set()  # left running by stop_others (a server parts share)
        ended = self.registry.end_leftovers()
        if ended:
            print(f"ended processes a previous run left behind: {ended}", flush=True)

    def start(self, name: str, argv: Sequence[str], env: Mapping[str, str], *,
              pipe: bool = False, log: str | None = None) -> Managed:  # fmt: skip
        child = Managed(name, argv, child_env(env), self.log_dir / (log or f"{name}.log"),
                        self.registry, pipe=pipe)  # fmt: skip
        self.children.append(child)
        return child.start()

    def stop(self, *children: Managed) -> None:
        for child in children:
            if child.pipe and child.alive():
                with contextlib.suppress(BenchError):
                    child.send_line("QUIT")
            child.stop()
            with contextlib.suppress(ValueError):
                self.children.remove(child)

    def stop_all(self) -> None:
        self.stop(*reversed(self.children))

    def stop_others(self) -> None:
        """Every child but those in `keep`, newest first."""
        self.stop(*(c for c in reversed(self.children) if c not in self.keep))


def wait_until(what: str, watch: Sequence[Managed], check: Callable[[], bool],
               timeout: float = START_TIMEOUT, interval: float = 0.1) -> None:  # fmt: skip
    """Poll `check()` until true, at most `timeout` seconds, failing fast if a child dies."""
    deadline = time.monotonic() + timeout
    last_error = ""
    while True:
        for process in watch:
            process.check_alive()
        try:
            if check():
                return
        except Exception as exc:  # not up yet: connection refused, 503, missing group...
            last_error = f" ({type(exc).__name__}: {exc})"
        if time.monotonic() > deadline:
            raise BenchError(f"{what}: not ready within {timeout:.0f}s{last_error}")
        time.sleep(interval)


def answers(port: int, path: str = "/readyz") -> Callable[[], bool]:
    return lambda: http_get(port, path)[0] == 200


def sleep_watching(seconds: float, watch: Sequence[Managed], interval: float = 0.5,
                   tick: Callable[[], None] | None = None) -> None:  # fmt: skip
    """Sleep, checking every `interval` that every child still runs (and calling `tick`)."""
    deadline = time.monotonic() + seconds
    while True:
        for process in watch:
            process.check_alive()
        if tick is not None:
            tick()
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        time.sleep(min(interval, remaining))


def process_tree(pid: int) -> list[int]:
    """A process and its descendants (an API started with --workers is a supervisor and them)."""
    with contextlib.suppress(psutil.Error):
        return [pid, *(c.pid for c in psutil.Process(pid).children(recursive=True))]
    return [pid]


def raise_nofile_limit(wanted: int = 16_384) -> None:
    """Many sockets need many descriptors: raise the soft limit toward the hard one."""
    with contextlib.suppress(ImportError, ValueError, OSError):
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        target = min(wanted, hard) if hard != resource.RLIM_INFINITY else wanted
        if soft < target:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


# CPU


def _machine_times() -> tuple[float, float]:
    """(total, idle) CPU seconds of the whole machine, all cores."""
    t = psutil.cpu_times()
    idle = t.idle + getattr(t, "iowait", 0.0)
    extra = sum(getattr(t, n, 0.0) for n in ("nice", "irq", "softirq", "steal"))
    return t.user + t.system + idle + extra, idle


class CpuWindow:
    """CPU of named groups of processes over one window, in % of one core, plus `machine` (all
    cores: up to 100 x cores). A group given as a callable is looked up again at every sample
    (`tick`, start and stop): a process counts from the start (or from zero when born later) to
    its last sample, so one that ends in the window is not lost if a tick saw it."""

    def __init__(self, groups: Mapping[str, Sequence[int] | Callable[[], Sequence[int]]]) -> None:
        self.groups = dict(groups)
        self._first: dict[str, dict[tuple[int, float], float]] = {g: {} for g in self.groups}
        self._last: dict[str, dict[tuple[int, float], float]] = {g: {} for g in self.groups}
        self._wall = 0.0
        self._machine = (0.0, 0.0)

    def tick(self) -> None:
        for name, group in self.groups.items():
            for pid in group() if callable(group) else group:
                with contextlib.suppress(psutil.Error):
                    process = psutil.Process(pid)
                    key, times = (pid, process.create_time()), process.cpu_times()
                    self._last[name][key] = used = times.user + times.system
                    # a process first seen after the start was born in the window: from zero
                    self._first[name].setdefault(key, 0.0 if self._wall else used)

    def start(self) -> CpuWindow:
        self._wall = 0.0
        self.tick()
        self._machine, self._wall = _machine_times(), time.monotonic()
        return self

    def count(self, name: str) -> int:
        """Processes of the group seen in the window."""
        return len(self._last[name])

    def stop(self) -> dict[str, float]:
        self.tick()
        wall = max(time.monotonic() - self._wall, 1e-9)
        out = {
            name: 100.0 * sum(v - self._first[name][k] for k, v in self._last[name].items()) / wall
            for name in self.groups
        }
        total, idle = _machine_times()
        out["machine"] = 100.0 * ((total - self._machine[0]) - (idle - self._machine[1])) / wall
        return out


def wait_idle(pids: Callable[[], Sequence[int]], max_seconds: float) -> float | None:
    """Seconds until the processes use under 15% of a core for a whole second (requests a client
    gave up on keep running on the server), or None if still busy at the limit."""
    started = time.monotonic()
    while time.monotonic() - started <= max_seconds:
        window = CpuWindow({"p": pids}).start()
        time.sleep(1.0)
        if window.stop()["p"] < 15.0:
            return time.monotonic() - started
    return None


def pg_tree(postmaster: int | None) -> Callable[[], list[int]]:
    """The PostgreSQL server's processes (postmaster and backends), for a CpuWindow group."""
    return lambda: process_tree(postmaster) if postmaster else []


# PostgreSQL WAL and Redis work over a window


class ServerWindow:
    """What the servers did over one window (start() to stop()): seconds, WAL bytes (the LSN moved),
    records and full-page images (pg_stat_wal: the whole server, every database writes the one
    WAL), Redis CPU seconds (INFO cpu) and calls per command (INFO commandstats: every db); a
    counter a snapshot could not read is left out."""

    def __init__(self, pg_url: str, redis_url: str | None) -> None:
        self.pg_url, self.redis_url = pg_url, redis_url
        self._before: dict[str, Any] = {}

    def _snapshot(self) -> dict[str, Any]:
        snap: dict[str, Any] = {"at": time.monotonic(), "wal": {}, "redis_cpu": None, "calls": {}}
        with contextlib.suppress(Exception):  # a nicety: never fail a run over it
            sql = ("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::float8 AS lsn, "
                   "wal_records::float8 AS records, wal_fpi::float8 AS fpi, "
                   "wal_bytes::float8 AS bytes FROM pg_stat_wal")  # fmt: skip
            snap["wal"] = {k: float(v) for k, v in dict(pg_fetch(self.pg_url, sql)[0]).items()}
        with contextlib.suppress(Exception):
            client = redis_client(self.redis_url or "")
            cpu = client.info("cpu")
            snap["redis_cpu"] = float(cpu["used_cpu_sys"]) + float(cpu["used_cpu_user"])
            stats = client.info("commandstats").items()
            snap["calls"] = {k.removeprefix("cmdstat_"): float(v["calls"]) for k, v in stats}
            client.close()
        return snap

    def start(self) -> ServerWindow:
        self._before = self._snapshot()
        return self

    def stop(self) -> dict[str, Any]:
        before, after = self._before, self._snapshot()
        wal = {k: v - before["wal"][k] for k, v in after["wal"].items() if k in before["wal"]}
        calls = {k: v - before["calls"].get(k, 0.0) for k, v in after["calls"].items()}
        cpu = None
        if after["redis_cpu"] is not None and before["redis_cpu"] is not None:
            cpu = after["redis_cpu"] - before["redis_cpu"]
        return {"seconds": after["at"] - before["at"], "wal": wal, "redis_cpu_s": cpu,
                "calls": {k: v for k, v in calls.items() if v > 0}}  # fmt: skip


def database_backends(admin_url: str, database: str) -> Callable[[], list[int]]:
    """The PostgreSQL backends connected to one database (looked up at every CPU sample), for a
    CpuWindow group: the CPU the database's own sessions use, not the server's other work."""
    sql = "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()"
    return lambda: [int(row[0]) for row in pg_fetch(admin_url, sql, database)]


# Prometheus metrics and latency histograms
_SAMPLE = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)(\{[^}]*\})?\s+(\S+)")
_LABEL = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"')
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback, no proxy


@dataclass(frozen=True, slots=True)
class Sample:
    name: str
    labels: Mapping[str, str]
    value: float


def parse_prometheus(text: str) -> list[Sample]:
    samples: list[Sample] = []
    for line in text.splitlines():
        match = _SAMPLE.match(line) if line and not line.startswith("#") else None
        if match is not None:
            name, labels, value = match.groups()
            with contextlib.suppress(ValueError):
                samples.append(Sample(name, dict(_LABEL.findall(labels or "")), float(value)))
    return samples


def http_get(port: int, path: str, timeout: float = 2.0) -> tuple[int, str]:
    """GET http://127.0.0.1:{port}{path}: (status, body); OSError when nothing answers."""
    try:
        with _OPENER.open(f"http://127.0.0.1:{port}{path}", timeout=timeout) as response:
            return int(response.status), response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode("utf-8", "replace")


def scrape(port: int, timeout: float = 2.0) -> list[Sample]:
    status, body = http_get(port, "/metrics", timeout)
    if status != 200:
        raise OSError(f"metrics on port {port} answered {status}")
    return parse_prometheus(body)


def scrape_or_empty(port: int, notes: list[str], what: str) -> list[Sample]:
    """/metrics, or [] and a note when it does not answer within 10 s (an overloaded API)."""
    try:
        return scrape(port, timeout=10.0)
    except (OSError, ValueError) as exc:
        notes.append(f"{what} metrics unavailable ({type(exc).__name__}); numbers from it missing")
        return []


def _matches(s: Sample, name: str, labels: Mapping[str, str]) -> bool:
    return s.name == name and all(s.labels.get(k) == v for k, v in labels.items())


def total(samples: Iterable[Sample], name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    return sum(s.value for s in samples if _matches(s, name, labels))


def histogram_delta(before: Iterable[Sample], after: Iterable[Sample], name: str,
                    **labels: str) -> list[tuple[float, float]]:  # fmt: skip
    """[(upper bound s, cumulative count)] of a Prometheus histogram over an interval, summed
    over the series whose labels include `labels`."""

    def rows(samples: Iterable[Sample]) -> dict[float, float]:
        out: dict[float, float] = {}
        for s in samples:
            if _matches(s, f"{name}_bucket", labels):
                le = s.labels.get("le", "")
                bound = math.inf if le == "+Inf" else float(le)
                out[bound] = out.get(bound, 0.0) + s.value
        return out

    start, end = rows(before), rows(after)
    return sorted((bound, count - start.get(bound, 0.0)) for bound, count in end.items())


def histogram_quantile(rows: list[tuple[float, float]], q: float) -> float | None:
    """The upper bound of the bucket holding the q-quantile (None without observations)."""
    if not rows or rows[-1][1] <= 0:
        return None
    return next((bound for bound, count in rows if count >= q * rows[-1][1]), rows[-1][0])


def observe(histogram: dict[int, int], ms: float) -> float:
    bucket = int(ms * BUCKETS_PER_MS) if ms > 0 else 0
    histogram[bucket] = histogram.get(bucket, 0) + 1
    return ms


def merge_histograms(histograms: Iterable[Mapping[Any, Any]]) -> dict[int, int]:
    merged: dict[int, int] = {}
    for histogram in histograms:
        for bucket, count in histogram.items():
            merged[int(bucket)] = merged.get(int(bucket), 0) + int(count)
    return merged


def percentiles(histogram: Mapping[Any, Any], qs: Iterable[float]) -> dict[float, float | None]:
    """Percentiles in ms from a 0.1 ms-bucket histogram (each bucket at its upper edge)."""
    hist, pending = merge_histograms([histogram]), sorted(qs)
    count, cumulative = sum(hist.values()), 0
    out: dict[float, float | None] = dict.fromkeys(pending)
    pending = pending if count else []
    for bucket in sorted(hist):
        cumulative += hist[bucket]
        while pending and cumulative >= pending[0] * count:
            out[pending.pop(0)] = (bucket + 1) / BUCKETS_PER_MS
    for q in pending:  # rounding at q = 1.0
        out[q] = (max(hist) + 1) / BUCKETS_PER_MS
    return out


# py-spy (--profile)
# Frames under every sample of a process: left out of the "including callees" list.
_SPINE = ("runpy", "click/core.py", "typer/", "asyncio/runners.py", "asyncio/base_events.py",
          "asyncio/events.py", "gateway/cli.py", "uvicorn/main.py", "uvicorn/server.py",
          "workers/runner.py", "gateway/server.py", "uvicorn/_compat.py")  # fmt: skip
_IDLE_LEAVES = ("EpollSelector.select", "_PollLikeSelector.select", "select (selectors.py")
_PACKAGES = ("asyncpg", "sqlalchemy", "redis", "graphql", "strawberry", "starlette", "uvicorn",
             "websockets", "orjson", "json", "prometheus_client", "logging", "asyncio",
             "schema", "resolvers", "services", "gateway", "workers")  # fmt: skip
_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>.*?)(?::\d+)?\)$")


class Profiler:
    """py-spy (`record --nonblocking -f raw`, installed into the venv with pip if missing) on
    some processes during each window. Samples whose leaf is the event loop's selector count as
    idle and are left out; shares are of the other (running or runnable) samples."""

    def __init__(self, args: argparse.Namespace, out_dir: Path) -> None:
        self.rate, self.top, self.out_dir = args.profile_rate, args.profile_top, out_dir
        self.exe: str | None = None
        self.recordings: list[tuple[str, int, Path, subprocess.Popen[bytes]]] = []
        self.seconds = 1
        if args.profile:
            venv = Path(sys.executable).parent
            self.exe = shutil.which("py-spy", path=f"{venv}:{os.environ.get('PATH', '')}")
            if self.exe is None:
                print("installing py-spy into the venv (pip install py-spy)", flush=True)
                subprocess.run([sys.executable, "-m", "pip", "install", "-q", "py-spy"],
                               check=False, timeout=300)  # fmt: skip
                self.exe = shutil.which("py-spy", path=str(venv))
            if self.exe is None:
                print("py-spy is not available: no profiles", flush=True)

    def start(self, targets: Mapping[str, int], seconds: float, tag: str) -> None:
        self.seconds = max(1, round(seconds))
        for name, pid in targets.items() if self.exe else ():
            out = self.out_dir / f"py-spy-{name}-{tag}-{pid}.txt"
            argv = [str(self.exe), "record", "--pid", str(pid), "--duration", str(self.seconds),
                    "--rate", str(self.rate), "--format", "raw", "--output", str(out),
                    "--nonblocking"]  # fmt: skip
            with open(out.with_suffix(".log"), "wb") as log:
                popen = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
            self.recordings.append((name, pid, out, popen))

    def finish(self) -> list[str]:
        out: list[str] = []
        for name, pid, path, popen in self.recordings:
            try:
                popen.wait(self.seconds + 30)
            except subprocess.TimeoutExpired:
                popen.kill()
            if popen.returncode == 0 and path.exists():
                out.append(self.summarize(f"{name} (pid {pid})", path.read_text(errors="replace")))
            else:
                out.append(f"py-spy on {name} failed: {log_tail(path.with_suffix('.log'), 5)}")
        self.recordings = []
        return out

    def summarize(self, name: str, text: str) -> str:
        own: Counter[str] = Counter()
        inclusive: Counter[str] = Counter()
        layers: Counter[str] = Counter()
        busy = idle = 0
        for line in text.splitlines():
            stack, _, count_text = line.rpartition(" ")
            if not stack or not count_text.isdigit():
                continue
            frames, count = [f for f in stack.split(";") if f], int(count_text)
            if any(m in frames[-1] for m in _IDLE_LEAVES):
                idle += count
                continue
            busy += count
            names = [_short(f) for f in frames]
            own[names[-1]] += count
            for n in set(names):
                inclusive[n] += count
            layers[_layer(frames)] += count
        if not busy:
            return f"py-spy {name}: no non-idle samples"
        callees = [(k, c) for k, c in inclusive.most_common() if not any(s in k for s in _SPINE)]
        callees = callees[: self.top]
        lines = [
            f"py-spy {name}: {busy:,} non-idle samples ({idle:,} idle left out) at {self.rate} "
            f"Hz over {self.seconds} s -> running or runnable ~"
            f"{100 * busy / (self.rate * self.seconds):.0f}% of the window",
            "  by layer (the innermost frame of a known package):",
            *(f"  {100 * c / busy:6.1f}%  {k}" for k, c in layers.most_common()),
            f"  {'self %':>7} {'total %':>8}  function (by own time)",
            *(f"  {100 * c / busy:7.1f} {100 * inclusive[k] / busy:8.1f}  {k}"
              for k, c in own.most_common(self.top)),
            f"  {'self %':>7} {'total %':>8}  function (by time including callees)",
            *(f"  {100 * own[k] / busy:7.1f} {100 * c / busy:8.1f}  {k}" for k, c in callees),
        ]  # fmt: skip
        return "\n".join(lines)


def _short(frame: str) -> str:
    match = _FRAME.match(frame.strip())
    if match is None:
        return frame.strip()
    path = match["file"].replace("\\", "/")
    return f"{match['func']} ({'/'.join(path.split('/')[-2:])})"


def _layer(frames: list[str]) -> str:
    if frames[-1].startswith("Runner.run "):
        return "event loop C code (uvloop I/O, callbacks), or runnable waiting for a CPU"
    for frame in reversed(frames):
        path = frame.rpartition(" (")[2].replace("\\", "/")
        for marker in ("site-packages/", f"{ROOT}/"):
            path = path.rsplit(marker, 1)[-1]
        top = path.split("/", 1)[0]
        if top in _PACKAGES and top != "asyncio":
            return top
    return "event loop / other"


# Command line and the run


def positive(text: str) -> int:
    if (value := int(text)) <= 0:
        raise argparse.ArgumentTypeError("must be a positive integer")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError("must be a positive number")
    return value


def share(text: str) -> float:
    if not 0 <= (value := float(text)) <= 1:
        raise argparse.ArgumentTypeError("must be between 0 and 1")
    return value


def parser(prog: str, doc: str | None, *, database: str, redis_db: int, duration: float = 20.0,
           warmup: float = 5.0, profile: bool = True) -> argparse.ArgumentParser:  # fmt: skip
    """The options every benchmark takes; each adds its own."""
    p = argparse.ArgumentParser(
        prog=f"python -m bench.{prog}", description=(doc or "").split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )  # fmt: skip
    p.add_argument("--duration", type=positive_float, default=duration, help="measured seconds")
    p.add_argument("--warmup", type=float, default=warmup, help="seconds of load before")
    p.add_argument("--database", default=database, help="the benchmark's database")
    p.add_argument("--redis-db", type=int, default=redis_db, choices=BENCH_REDIS_DBS,
                   help="Redis db, flushed (11-15: the tests use 1-10)")  # fmt: skip
    p.add_argument("--log-level", default="WARNING", help="TRADEQL_LOG_LEVEL of the processes")
    p.add_argument("--log-dir", type=Path, help="where logs go (default: a temp dir)")
    if profile:
        p.add_argument("--profile", action="store_true", help="py-spy during each window")
        p.add_argument("--profile-rate", type=positive, default=100, help="py-spy samples/s")
        p.add_argument("--profile-top", type=positive, default=15, help="functions listed")
    return p


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def execute(body: Callable[[], int], *cleanups: Callable[[], None]) -> int:
    """Run a benchmark: SIGTERM as Ctrl-C, failures reported in a line, cleanups always run."""
    signal.signal(signal.SIGTERM, _on_sigterm)
    raise_nofile_limit()
    code = 1
    try:
        code = body()
    except KeyboardInterrupt:
        print("\ninterrupted: every process started was stopped", file=sys.stderr)
        code = 130
    except BenchError as exc:
        print(f"\nbenchmark failed: {exc}", file=sys.stderr)
    except Exception:
        print("\nbenchmark failed:", file=sys.stderr)
        traceback.print_exc()
    finally:
        for cleanup in cleanups:
            cleanup()
    return code
