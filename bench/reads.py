"""Portfolio and order-history queries from 200 concurrent signed-in users (50 positions, 500
orders each): req/s and p50/p95/p99. Target: portfolio p95 < 20 ms at 1,000 req/s.

Setup (seconds, never through the API): a dedicated database is dropped, created and migrated
(`gateway.migrate.upgrade`), a dedicated Redis db flushed; `tradeql securities defaults
--synthetic 100` loads the symbols; then set-based SQL (bench/reads_seed.py) writes the users,
their accounts, sessions (random tokens, sha256 stored), FILLED orders with their executions,
positions at average cost and the ledger, so `tradeql check` passes (run after seeding unless
`--no-check`); `QuoteStore.write` puts a quote for every symbol into Redis.

Then one API process (`tradeql api --port P`, or `--api-workers N`: `tradeql api --workers N`,
SO_REUSEPORT processes; with `--live-quotes` also `tradeql feed` and `tradeql quotes`, so every
quote moves about once a second through the real path, as in market hours) and a separate client
process (bench/reads_client.py: raw HTTP/1.1
keep-alive, uvloop) run each scenario: warm-up, then a measured window:

* portfolio, closed loop: `--concurrency` users each with one request in flight;
* portfolio, open loop at each `--rate` (default 1,000/s): requests on a fixed schedule whatever
  the answers do, latency from the scheduled time;
* order history, closed loop (and open loop at each `--orders-rate`): each request the next
  page of the user's history (`orders(first: 50, after: endCursor)`), starting over at the end.

Each reports req/s, p50/p95/p99, errors, the server's own histogram, CPU % (API, the PostgreSQL
backends of the bench database and the whole server, Redis, the client, the machine), pool and
pg_stat_activity samples, and the load average (the machine may be shared). `--profile` adds
py-spy (installed into the venv with pip if missing) on the API during each window, grouped by
layer; when py-spy cannot attach, the API runs under cProfile instead.

`--cpu-ab` measures CPU per request in one process (bench/reads_cpu.py: the ASGI app called
directly, `time.process_time`), as shipped and with candidate fixes patched in
(bench/reads_whatif.py), which stays readable on a shared machine where req/s does not;
`--what-if FIX,...` runs the load scenarios against such a patched API.

    python -m bench.reads                            # the default: closed 200 + open 1,000/s
    python -m bench.reads --rate 1000 1500 --profile
    python -m bench.reads --api-workers 2 --reuse-setup
    python -m bench.reads --api-workers 2 --live-quotes --reuse-setup   # the README's figures
    python -m bench.reads --reuse-setup --cpu-ab --skip-portfolio --skip-orders

Servers: DATABASE_URL / REDIS_URL if set (only as the place to connect: host, port, user), else
PostgreSQL and Redis on their standard local ports; loopback addresses only.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import psutil

from bench._metrics import (
    Sample,
    histogram_delta,
    histogram_quantile,
    http_get,
    merge_histograms,
    percentiles,
    scrape,
    total,
)
from bench._pg import recreate_database
from bench._procs import (
    ROOT,
    BenchError,
    CpuWindow,
    Managed,
    Registry,
    child_env,
    log_tail,
    process_tree,
    raise_nofile_limit,
    tradeql_argv,
    wait_until,
)
from bench._setup import STATE_DIR, free_port, server_urls, with_path
from bench.reads_pg import (
    ActivitySampler,
    BackendCpu,
    TreeCpu,
    database_counters,
    postmaster_pid,
)

TARGET_RATE = 1000.0
TARGET_P95_MS = 20.0
QS = (0.5, 0.95, 0.99)
START_TIMEOUT_SECONDS = 60.0
OPERATION = {"portfolio": "Portfolio", "orders": "Orders"}


@dataclass(frozen=True)
class Scenario:
    kind: str  # portfolio | orders
    mode: str  # closed | open
    value: float  # concurrency or rate

    @property
    def label(self) -> str:
        what = "portfolio" if self.kind == "portfolio" else "order history (cursor walk)"
        if self.mode == "closed":
            return f"{what}, closed loop, {self.value:g} concurrent users"
        return f"{what}, open loop at {self.value:,.0f} req/s"

    @property
    def short(self) -> str:
        loop = f"closed {self.value:g}" if self.mode == "closed" else f"open {self.value:g}/s"
        return f"{self.kind} {loop}"


@dataclass
class Result:
    scenario: Scenario
    client: dict[str, Any] = field(default_factory=dict)
    latency: dict[float, float | None] = field(default_factory=dict)
    service: dict[float, float | None] = field(default_factory=dict)
    server: dict[float, float | None] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)
    pg_backends: int = 0
    pg: dict[str, float] = field(default_factory=dict)
    pool: str = ""
    activity: str = ""
    load: tuple[float, float, float] = (0.0, 0.0, 0.0)
    quotes_after: int = 0
    quotes_total: int = 0
    profiles: list[str] = field(default_factory=list)

    @property
    def window(self) -> float:
        return float(self.client.get("window_s", 1e-9))

    @property
    def rate(self) -> float:
        return float(self.client.get("ok", 0)) / max(self.window, 1e-9)

    @property
    def errors(self) -> int:
        return int(sum(self.client.get("errors", {}).values()))


@dataclass(frozen=True)
class Config:
    admin_url: str
    database: str
    database_url: str
    redis_url: str
    env: dict[str, str]
    log_dir: Path


# ------------------------------------------------------------------------------------------------
# Helpers


def _fmt(value: float | None, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def _load() -> tuple[float, float, float]:
    one, five, fifteen = os.getloadavg()
    return (one, five, fifteen)


def _load_text(load: tuple[float, float, float]) -> str:
    return f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"


def _read_tagged(process: Managed, tag: str, timeout: float, watch: Sequence[Managed]) -> str:
    """The rest of the next line of `process` that starts with `tag` (other lines skipped)."""
    deadline = time.monotonic() + timeout
    for _ in range(10_000):
        for other in watch:
            other.check_alive()
        line = process.read_line(deadline - time.monotonic())
        if line.startswith("FAILED"):
            raise BenchError(f"{process.name}: {line}")
        if line.startswith(tag):
            return line[len(tag) :].strip()
    raise BenchError(f"{process.name}: no {tag} line")


def redis_pid(redis_url: str) -> int | None:
    import redis

    client = redis.Redis.from_url(redis_url, socket_timeout=5)
    try:
        info: Any = client.info("server")
        pid = int(info["process_id"])
        return pid if psutil.pid_exists(pid) else None
    except Exception:  # no INFO (a managed Redis): just no CPU figure
        return None
    finally:
        client.close()


def redis_keys(redis_url: str) -> int:
    import redis

    client = redis.Redis.from_url(redis_url, socket_timeout=5)
    try:
        size: Any = client.dbsize()
        return int(size)
    finally:
        client.close()


def quotes_present(redis_url: str, symbols: Sequence[str]) -> int:
    """How many of the symbols have their `quote:{SYM}` hash in the bench's Redis db."""
    import redis

    from services.market_data.quote_store import quote_key

    client = redis.Redis.from_url(redis_url, socket_timeout=5)
    try:
        found: Any = client.exists(*[quote_key(s) for s in symbols]) if symbols else 0
        return int(found)
    finally:
        client.close()


# ------------------------------------------------------------------------------------------------
# Setup


def make_config(args: argparse.Namespace, log_dir: Path) -> Config:
    from services.infra import keys

    admin, redis_base = server_urls()
    admin = with_path(admin, "/postgres")
    env = {
        "DATABASE_URL": with_path(admin, f"/{args.database}"),
        "REDIS_URL": with_path(redis_base, f"/{args.redis_db}"),
        "TRADEQL_LOG_LEVEL": args.log_level,
        "TRADEQL_MARKET_ALWAYS_OPEN": "true",
        # Every simulated user connects from 127.0.0.1: the per-address limit (meant for many
        # users behind many addresses) would refuse most of the load. The per-session limits
        # stay on, so the limiter's Redis round trip is still paid on every request.
        "TRADEQL_RATE_LIMIT_IP_PER_SECOND": "0",
    }
    for item in args.api_env or []:
        key, sep, value = item.partition("=")
        if not sep or not key.startswith("TRADEQL_"):
            raise BenchError(f"--api-env wants TRADEQL_NAME=VALUE, not {item!r}")
        env[key] = value
    keys.configure(env["DATABASE_URL"], env.get("TRADEQL_REDIS_NAMESPACE", ""))  # as the API
    return Config(admin, args.database, env["DATABASE_URL"], env["REDIS_URL"], env, log_dir=log_dir)


def setup(config: Config, args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """The database, Redis and data; (tokens, symbols). Prints what it did and how long."""
    from bench import reads_seed

    before = redis_keys(config.redis_url)
    if before:
        print(
            f"note: redis db {args.redis_db} held {before} keys before the flush (another "
            "process may share it; quotes are checked before and after every window)",
            flush=True,
        )
    tokens_file = STATE_DIR / f"reads-tokens-{args.database}.json"
    symbols_file = STATE_DIR / f"reads-symbols-{args.database}.json"
    if (
        args.reuse_setup
        and tokens_file.exists()
        and symbols_file.exists()
        and _users_in(config.database_url) == len(json.loads(tokens_file.read_text()))
    ):
        tokens = json.loads(tokens_file.read_text())
        symbols = json.loads(symbols_file.read_text())
        print(f"reusing database {args.database} and its {len(tokens)} sessions", flush=True)
        if args.migrate_to == "head":  # a run of older code may have left it behind
            from gateway.migrate import upgrade

            upgrade(config.database_url)
        reads_seed.flush_redis(config.redis_url)
        written, how = reads_seed.write_quotes(config.redis_url, symbols)
        print(f"redis db {args.redis_db} flushed; {written} quotes written ({how})", flush=True)
        return tokens, symbols
    started = time.perf_counter()
    recreate_database(config.admin_url, config.database)
    from gateway.migrate import upgrade

    try:
        if args.migrate_to == "head":
            upgrade(config.database_url)
        else:
            _upgrade_to(config.database_url, args.migrate_to)
    except Exception as exc:  # alembic's errors are many kinds; the hint is the same
        raise BenchError(
            f"migrating to {args.migrate_to} failed ({type(exc).__name__}: {exc}); if another "
            "change is adding migrations right now, --migrate-to a complete revision (0003 "
            "holds every table this benchmark reads)"
        ) from exc
    migrated = time.perf_counter()
    print(
        f"database {config.database}: dropped, created, migrated to {args.migrate_to} in "
        f"{migrated - started:.1f} s",
        flush=True,
    )
    done = subprocess.run(
        tradeql_argv("securities", "defaults", "--synthetic", str(args.synthetic)),
        cwd=ROOT,
        env=child_env(config.env),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if done.returncode != 0:
        raise BenchError(f"securities defaults failed:\n{done.stderr[-2000:]}")
    print(
        f"tradeql securities defaults --synthetic {args.synthetic}: {done.stdout.strip()} "
        f"({time.perf_counter() - migrated:.1f} s)",
        flush=True,
    )
    plan = reads_seed.SeedPlan(args.users, args.positions, args.orders)
    seeded = reads_seed.seed_database(config.database_url, plan)
    steps = ", ".join(f"{k} {v:.1f}" for k, v in seeded.seconds.items())
    print(
        f"seeded {args.users} users: {seeded.orders:,} orders, {seeded.executions:,} executions, "
        f"{seeded.positions:,} positions, {seeded.ledger_entries:,} ledger entries "
        f"(seconds: {steps})",
        flush=True,
    )
    reads_seed.flush_redis(config.redis_url)
    written, how = reads_seed.write_quotes(config.redis_url, seeded.symbols)
    print(f"redis db {args.redis_db} flushed; {written} quotes written ({how})")
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    for path, data in ((tokens_file, seeded.tokens), (symbols_file, seeded.symbols)):
        path.write_text(json.dumps(data))
        path.chmod(0o600)
    if args.check:
        mark = time.perf_counter()
        code, text = run_check(config)
        verdict = "books balance" if code == 0 else "BOOKS DO NOT BALANCE"
        print(f"tradeql check: {verdict} ({time.perf_counter() - mark:.1f} s): {text[:300]}")
        if code != 0:
            raise BenchError("the seeded data does not pass tradeql check")
    print(f"setup took {time.perf_counter() - started:.1f} s in all", flush=True)
    return seeded.tokens, seeded.symbols


def _upgrade_to(database_url: str, revision: str) -> None:
    """`gateway.migrate.upgrade` to `revision`, from a copy of alembic/ holding only the
    migrations up to it (numbered files): a later migration being written right now, with its
    chain not yet whole, cannot stop alembic from loading the ones this benchmark needs."""
    import shutil

    from alembic import command

    from gateway.migrate import PROJECT_ROOT, alembic_config

    source = PROJECT_ROOT / "alembic"
    with tempfile.TemporaryDirectory(prefix="tradeql-bench-alembic-") as tmp:
        target = Path(tmp) / "alembic"
        shutil.copytree(source, target, ignore=shutil.ignore_patterns("versions", "__pycache__"))
        (target / "versions").mkdir()
        for path in sorted((source / "versions").glob("*.py")):
            if path.name[:4].isdigit() and path.name[:4] <= revision:
                shutil.copy2(path, target / "versions" / path.name)
        config = alembic_config(database_url)
        config.set_main_option("script_location", str(target))
        command.upgrade(config, revision)


def _users_in(database_url: str) -> int | None:
    """Users in the bench database, or None when it is missing or not migrated."""
    import asyncio

    import asyncpg

    async def count() -> int:
        conn = await asyncpg.connect(database_url, timeout=10)
        try:
            return int(await conn.fetchval("SELECT count(*) FROM users"))
        finally:
            await conn.close()

    try:
        return asyncio.run(count())
    except (OSError, asyncpg.PostgresError):
        return None


def run_check(config: Config) -> tuple[int, str]:
    done = subprocess.run(
        tradeql_argv("check"),
        cwd=ROOT,
        env=child_env(config.env),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    return done.returncode, (done.stdout + done.stderr).strip()


# ------------------------------------------------------------------------------------------------
# Processes


class System:
    """The API (one process or a supervisor of N) and the client; always stopped."""

    def __init__(self, config: Config, args: argparse.Namespace, registry: Registry) -> None:
        self.config = config
        self.args = args
        self.registry = registry
        self.port = free_port()
        self.env = child_env(config.env)
        self.cprofile_out = config.log_dir / "cprofile-api.pstats"
        self.api: Managed | None = None
        self.client: Managed | None = None
        self.market: list[Managed] = []

    def start_api(self, cprofile: bool) -> Managed:
        if cprofile:
            argv = [
                sys.executable,
                "-m",
                "bench.reads_profile",
                "--port",
                str(self.port),
                "--out",
                str(self.cprofile_out),
            ]
        elif self.args.what_if:
            argv = [
                sys.executable,
                "-m",
                "bench.reads_whatif",
                "--port",
                str(self.port),
                "--fix",
                self.args.what_if,
            ]
        else:
            argv = tradeql_argv("api", "--host", "127.0.0.1", "--port", str(self.port))
            if self.args.api_workers > 1:
                argv += ["--workers", str(self.args.api_workers)]
        api = Managed("api", argv, self.env, self.config.log_dir / "api.log", self.registry)
        api.start()
        self.api = api
        self.start_market()
        wait_until(
            "the API's /readyz",
            [api],
            lambda: http_get(self.port, "/readyz")[0] == 200,
            START_TIMEOUT_SECONDS,
        )
        if self.args.api_workers > 1 and not cprofile:  # every worker up, not just the first
            wait_until(
                f"{self.args.api_workers} API workers",
                [api],
                lambda: len(process_tree(api.pid)) > self.args.api_workers,
                START_TIMEOUT_SECONDS,
            )
            time.sleep(2.0)
        return api

    def start_market(self) -> None:
        """With --live-quotes: the simulated feed and the quote cache, so every symbol's quote
        moves about once a second through the real path (streams, quote:SYM, the md:quotes
        publish that API processes mirror), as in market hours."""
        if not self.args.live_quotes or self.market:
            return
        for name in ("feed", "quotes"):
            worker = Managed(
                name,
                tradeql_argv(name),
                self.env,
                self.config.log_dir / f"{name}.log",
                self.registry,
            )
            worker.start()
            self.market.append(worker)

    def stop_api(self) -> None:
        for worker in self.market:
            worker.stop()
        self.market = []
        if self.api is not None:
            self.api.stop()
            self.api = None

    def api_pids(self) -> list[int]:
        return process_tree(self.api.pid) if self.api else []

    def api_workers(self) -> list[int]:
        """The processes that serve requests (not the supervisor of --workers N)."""
        pids = self.api_pids()
        return pids[1:] if self.args.api_workers > 1 and len(pids) > 1 else pids[:1]

    def start_client(self, tokens_path: Path, budget: float) -> Managed:
        argv = [
            sys.executable,
            "-m",
            "bench.reads_client",
            "--port",
            str(self.port),
            "--tokens",
            str(tokens_path),
            "--timeout",
            str(self.args.timeout),
            "--max-seconds",
            str(budget),
        ]
        client = Managed(
            "client", argv, self.env, self.config.log_dir / "client.log", self.registry, pipe=True
        )
        client.start()
        self.client = client
        return client

    def stop(self) -> None:
        if self.client is not None:
            if self.client.alive():
                with contextlib.suppress(BenchError):
                    self.client.send_line("QUIT")
            self.client.stop(5)
        self.stop_api()

    @property
    def watched(self) -> list[Managed]:
        return [p for p in (self.api, self.client) if p is not None]


class PoolSampler:
    """`tradeql_db_pool_connections{state="checkedout"}` from /metrics once a second."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.values: list[float] = []
        self.size = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pool-sampler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        for _ in range(100_000):
            with contextlib.suppress(OSError, ValueError):
                samples = scrape(self.port)
                self.size = total(samples, "tradeql_db_pool_connections", state="size")
                self.values.append(
                    total(samples, "tradeql_db_pool_connections", state="checkedout")
                )
            if self._stop.wait(1.0):
                return

    def summary(self) -> str:
        if not self.values:
            return "no samples"
        mean = sum(self.values) / len(self.values)
        return (
            f"checked out mean {mean:.1f}, max {max(self.values):.0f} "
            f"(pool_size {self.size:.0f} + max_overflow; {len(self.values)} samples)"
        )


# ------------------------------------------------------------------------------------------------
# One scenario


def _start_profilers(
    system: System, args: argparse.Namespace, py_spy: str | None, tag: str
) -> list[Any]:
    if not args.profile:
        return []
    if py_spy is None:
        if system.api is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(system.api.pid, signal.SIGUSR1)
        return []
    from bench._profile import PySpyRecording

    recordings = []
    for i, pid in enumerate(system.api_workers()):
        recording = PySpyRecording(
            py_spy,
            f"api{i}-{tag}",
            pid,
            args.duration,
            args.profile_rate,
            system.config.log_dir,
        )
        recording.start()
        recordings.append(recording)
    return recordings


def _finish_profilers(
    system: System, args: argparse.Namespace, recordings: list[Any], window_s: float
) -> list[str]:
    from bench.reads_profile import summarize_cprofile, summarize_layers

    if not args.profile:
        return []
    out: list[str] = []
    if not recordings:  # cProfile in the API process
        if system.api is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(system.api.pid, signal.SIGUSR2)
        for _ in range(100):
            if system.cprofile_out.exists():
                break
            time.sleep(0.1)
        if system.cprofile_out.exists():
            out.append(summarize_cprofile(system.cprofile_out, "api", window_s, args.profile_top))
            system.cprofile_out.rename(
                system.cprofile_out.with_suffix(f".{int(time.time())}.pstats")
            )
        else:
            out.append("cProfile of the API: no stats written")
        return out
    for recording in recordings:
        ok, error = recording.finish(args.duration + 30)
        if ok:
            out.append(
                summarize_layers(
                    recording.out,
                    f"{recording.name} (pid {recording.pid})",
                    recording.rate,
                    recording.seconds,
                    args.profile_top,
                )
            )
        else:
            out.append(f"py-spy on {recording.name} failed: {error}")
    return out


def run_scenario(
    scenario: Scenario,
    system: System,
    args: argparse.Namespace,
    py_spy: str | None,
    pids: dict[str, list[int]],
    symbols: Sequence[str],
    postmaster: int | None,
) -> Result:
    assert system.client is not None
    from bench.reads_seed import write_quotes

    present = quotes_present(system.config.redis_url, symbols)
    if present < len(symbols):
        written, _how = write_quotes(system.config.redis_url, list(symbols))
        print(
            f"  note: only {present} of {len(symbols)} quotes were in redis db "
            f"{args.redis_db} (someone flushed it?): {written} rewritten",
            flush=True,
        )
    client = system.client
    result = Result(scenario)
    spec = {
        "kind": scenario.kind,
        "mode": scenario.mode,
        "concurrency": scenario.value,
        "rate": scenario.value,
        "warmup": args.warmup,
        "duration": args.duration,
        "max_in_flight": args.max_in_flight,
    }
    client.send_line("RUN " + json.dumps(spec))
    watch = system.watched
    _read_tagged(client, "MEASURING", args.warmup + 60, watch)
    single = args.api_workers == 1
    before: list[Sample] = []
    if single:
        with contextlib.suppress(OSError, ValueError):
            before = scrape(system.port)
    cpu = CpuWindow({**pids, "api": system.api_pids(), "client": [client.pid]})
    server_tree = TreeCpu(postmaster) if postmaster is not None else None
    backends = BackendCpu(system.config.admin_url, system.config.database)
    activity = ActivitySampler(system.config.admin_url, system.config.database)
    pool = PoolSampler(system.port) if single else None
    counters_before = database_counters(system.config.admin_url, system.config.database)
    backends.start()
    if server_tree is not None:
        server_tree.start()
    cpu.start()
    activity.start()
    if pool is not None:
        pool.start()
    tag = scenario.short.replace(" ", "-").replace("/", "")
    recordings = _start_profilers(system, args, py_spy, tag)
    try:
        _read_tagged(client, "MEASURED", args.duration + 60, watch)
    finally:
        result.cpu = cpu.stop()
        if server_tree is not None:
            result.cpu["postgres"] = server_tree.stop()
        result.cpu["postgres (bench db backends)"], result.pg_backends = backends.stop()
        result.load = _load()
        activity.stop()
        if pool is not None:
            pool.stop()
    counters_after = database_counters(system.config.admin_url, system.config.database)
    if single:
        with contextlib.suppress(OSError, ValueError):
            after = scrape(system.port)
            rows = histogram_delta(
                [s for s in before if s.labels.get("operation") == OPERATION[scenario.kind]],
                [s for s in after if s.labels.get("operation") == OPERATION[scenario.kind]],
                "tradeql_graphql_operation_seconds",
            )
            result.server = {q: histogram_quantile(rows, q) for q in QS}
    result.quotes_after = quotes_present(system.config.redis_url, symbols)
    result.quotes_total = len(symbols)
    raw = _read_tagged(client, "RESULT", args.timeout + 60, watch)
    result.client = json.loads(raw)
    result.latency = percentiles(merge_histograms([result.client["hist"]]), QS)
    result.service = percentiles(merge_histograms([result.client["service_hist"]]), QS)
    window = max(result.window, 1e-9)
    result.pg = {
        k: (counters_after.get(k, 0.0) - counters_before.get(k, 0.0)) / window
        for k in counters_after
    }
    result.pool = pool.summary() if pool is not None else "(not sampled with --api-workers > 1)"
    result.activity = activity.summary()
    result.profiles = _finish_profilers(system, args, recordings, window)
    return result


def wait_api_idle(system: System, max_seconds: float) -> float | None:
    """Seconds until the API's CPU falls under 15% of a core for a whole second (requests the
    client gave up on keep running on the server), or None if it is still busy at the limit."""
    started = time.monotonic()
    for _ in range(int(max_seconds) + 1):
        window = CpuWindow({"api": system.api_pids()})
        window.start()
        time.sleep(1.0)
        if window.stop()["api"] < 15.0:
            return time.monotonic() - started
        if time.monotonic() - started > max_seconds:
            break
    return None


# ------------------------------------------------------------------------------------------------
# Reporting


def _ms(values: dict[float, float | None]) -> str:
    return "  ".join(f"p{int(q * 100)} {_fmt(values.get(q))}" for q in QS)


def verdict(result: Result) -> str | None:
    s = result.scenario
    if s.kind != "portfolio" or s.mode != "open" or s.value < TARGET_RATE:
        return None
    p95 = result.latency.get(0.95)
    rate_ok = result.rate >= 0.98 * s.value and result.errors == 0
    latency_ok = p95 is not None and p95 < TARGET_P95_MS
    ok = rate_ok and latency_ok
    return (
        f"target (portfolio p95 < {TARGET_P95_MS:g} ms at {TARGET_RATE:,.0f} req/s): "
        f"{'MET' if ok else 'NOT MET'} - served {result.rate:,.0f} req/s of {s.value:,.0f} "
        f"scheduled, p95 {_fmt(p95)} ms"
    )


def format_result(result: Result, index: int, count: int) -> str:
    c = result.client
    s = result.scenario
    errors = ", ".join(f"{k} {v}" for k, v in c.get("errors", {}).items()) or "none"
    lines = [
        f"[{index}/{count}] {s.label}: {result.window:.1f} s window",
        f"  throughput: {result.rate:,.1f} req/s ({c.get('ok', 0):,} ok of {c.get('sent', 0):,} "
        f"sent); errors: {errors}",
        f"  latency ms: {_ms(result.latency)}"
        + (" (from the scheduled send time)" if s.mode == "open" else ""),
    ]
    for sample in c.get("sample_errors", [])[:3]:
        lines.append(f"    e.g. {sample[:200]}")
    if c.get("missing_quotes"):
        lines.append(
            f"  WARNING: {c['missing_quotes']:,} portfolio responses had positions without a "
            "quote (the Redis db was flushed under the benchmark?)"
        )
    if result.quotes_after < result.quotes_total:
        lines.append(
            f"  WARNING: {result.quotes_after} of {result.quotes_total} quotes left in Redis at "
            "the end of the window"
        )
    if s.mode == "open":
        lines.append(
            f"  service ms (from the actual write): {_ms(result.service)}; scheduled "
            f"{c.get('scheduled', 0):,}, skipped at the in-flight cap {c.get('skipped', 0):,}, "
            f"max in flight {c.get('max_in_flight', 0)}"
        )
    if result.server:
        lines.append(
            "  server (tradeql_graphql_operation_seconds, bucket upper bounds): "
            + "  ".join(
                f"p{int(q * 100)} <= {_fmt(v * 1000 if v is not None else None, 'g')}"
                for q, v in result.server.items()
            )
            + " ms"
        )
    if s.kind == "orders" and c.get("page_hist"):
        depth = []
        for page in sorted(c["page_hist"], key=int)[:12]:
            p = percentiles(merge_histograms([c["page_hist"][page]]), (0.5, 0.95))
            depth.append(f"{page}: {_fmt(p[0.5])}/{_fmt(p[0.95])}")
        lines.append(f"  by page of the walk (p50/p95 ms): {'  '.join(depth)}")
        lines.append(
            f"  full 10-page walks completed in the window: {c.get('walks_completed', 0):,}"
        )
    if c.get("ok"):
        lines.append(f"  response size: {c.get('bytes_received', 0) / c['ok']:,.0f} bytes average")
    cpu = result.cpu
    lines.append(
        f"  CPU % of one core: api {_fmt(cpu.get('api'), '.0f')}, postgres "
        f"{_fmt(cpu.get('postgres (bench db backends)'), '.0f')} ({result.pg_backends} backends "
        f"of the bench db; whole server {_fmt(cpu.get('postgres'), '.0f')}), redis "
        f"{_fmt(cpu.get('redis'), '.0f')} (shared server), client {_fmt(cpu.get('client'), '.0f')}"
        f"; machine {_fmt(cpu.get('machine'), '.0f')} of {100 * (os.cpu_count() or 1)}"
    )
    if c.get("ok"):
        per = 1000.0 / 100.0 / max(result.rate, 1e-9)  # ms of CPU per request at 1% of a core
        api_ms = (cpu.get("api") or 0.0) * per
        pg_ms = (cpu.get("postgres (bench db backends)") or 0.0) * per
        lines.append(
            f"  CPU per request: api {api_ms:.2f} ms, postgres {pg_ms:.2f} ms -> one API core "
            f"would serve ~{1000.0 / max(api_ms, 1e-9):,.0f} req/s at this cost"
        )
    pg = result.pg
    if pg:
        hits = pg.get("blks_hit", 0.0)
        reads = pg.get("blks_read", 0.0)
        xacts = pg.get("xact_commit", 0.0) + pg.get("xact_rollback", 0.0)
        lines.append(
            f"  postgres: {pg.get('xact_commit', 0):,.0f} commits/s + "
            f"{pg.get('xact_rollback', 0):,.0f} rollbacks/s = "
            f"{xacts / max(result.rate, 1e-9):.1f} transactions per ok request (every read is a "
            f"BEGIN ... ROLLBACK; a ping after an idle spell one more), {pg.get('tup_fetched', 0):,.0f}"
            f" tuples fetched/s, cache hit {100 * hits / max(hits + reads, 1):.1f}%, "
            f"{pg.get('sessions', 0):.1f} sessions opened/s (connection churn)"
        )
    lines.append(f"  pool: {result.pool}")
    lines.append(f"  pg_stat_activity: {result.activity}")
    lines.append(f"  load average at the end of the window: {_load_text(result.load)}")
    target = verdict(result)
    if target:
        lines.append(f"  {target}")
    for profile in result.profiles:
        lines.append("  " + profile.replace("\n", "\n  "))
    return "\n".join(lines)


def format_summary(results: Sequence[Result]) -> str:
    head = (
        f"{'scenario':<26} {'req/s':>8} {'p50':>7} {'p95':>7} {'p99':>7} {'errors':>6} "
        f"{'api%':>5} {'pg%':>5} {'client%':>7} {'load1':>6}"
    )
    lines = [head]
    for r in results:
        lines.append(
            f"{r.scenario.short:<26} {r.rate:>8,.0f} {_fmt(r.latency.get(0.5)):>7} "
            f"{_fmt(r.latency.get(0.95)):>7} {_fmt(r.latency.get(0.99)):>7} {r.errors:>6} "
            f"{_fmt(r.cpu.get('api'), '.0f'):>5} "
            f"{_fmt(r.cpu.get('postgres (bench db backends)'), '.0f'):>5} "
            f"{_fmt(r.cpu.get('client'), '.0f'):>7} {r.load[0]:>6.2f}"
        )
    lines.append("(latency in ms; open loop: from the scheduled send time)")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# CPU per request, A/B of candidate fixes (bench/reads_cpu.py)

AB_VARIANTS = ("", "preping", "preping,autocommit")


def run_cpu_ab(config: Config, args: argparse.Namespace, tokens_path: Path) -> str:
    """Each variant in its own process, the variants interleaved `--ab-rounds` times; the
    lowest CPU per request of each (the least disturbed by the rest of the machine)."""
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in AB_VARIANTS}
    for round_ in range(args.ab_rounds):
        for variant in AB_VARIANTS:
            argv = [
                sys.executable,
                "-m",
                "bench.reads_cpu",
                "--tokens",
                str(tokens_path),
                "--requests",
                str(args.ab_requests),
            ]
            if variant:
                argv += ["--fix", variant]
            done = subprocess.run(
                argv,
                cwd=ROOT,
                env=child_env(config.env),
                capture_output=True,
                text=True,
                timeout=600,
                check=False,
            )
            line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
            if done.returncode != 0 or line is None:
                raise BenchError(
                    f"reads_cpu {variant or 'baseline'} failed:\n{done.stderr[-1500:]}"
                )
            runs[variant].append(json.loads(line[7:]))
            print(
                f"  round {round_ + 1}, {variant or 'baseline'}: portfolio "
                f"{runs[variant][-1]['portfolio']['cpu_ms']:.2f} ms, orders "
                f"{runs[variant][-1]['orders']['cpu_ms']:.2f} ms CPU/request",
                flush=True,
            )
    base: dict[str, float] = {}
    lines = [
        f"{'variant (API patched in-process)':<34} {'kind':<9} {'CPU ms/req':>10} {'vs base':>8} "
        f"{'wall ms':>8} {'SQL':>4} {'redis':>5} {'pg xact':>7}"
    ]
    for variant in AB_VARIANTS:
        for kind in ("portfolio", "orders"):
            best = min(runs[variant], key=lambda r: float(r[kind]["cpu_ms"]))[kind]
            cpu = float(best["cpu_ms"])
            base.setdefault(kind, cpu)
            lines.append(
                f"{variant or 'baseline (as shipped)':<34} {kind:<9} {cpu:>10.2f} "
                f"{100 * (cpu - base[kind]) / base[kind]:>+7.0f}% {best['wall_ms']:>8.2f} "
                f"{best['sql_per_request']:>4.1f} {best['redis_per_request']:>5.1f} "
                f"{best['pg_transactions_per_request']:>7.1f}"
            )
    lines.append(
        "(sequential requests through the ASGI app in one process, no HTTP parsing; "
        f"{args.ab_requests} requests per kind, best of {args.ab_rounds} interleaved rounds; "
        "SQL = statements, redis = commands + pipelines, pg xact = commits + rollbacks per request)"
    )
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# Main


def scenarios_of(args: argparse.Namespace) -> list[Scenario]:
    out: list[Scenario] = []
    if not args.skip_portfolio:
        out += [Scenario("portfolio", "closed", float(c)) for c in args.concurrency]
        out += [Scenario("portfolio", "open", float(r)) for r in args.rate if r > 0]
    if not args.skip_orders:
        out += [Scenario("orders", "closed", float(c)) for c in args.concurrency]
        out += [Scenario("orders", "open", float(r)) for r in args.orders_rate if r > 0]
    return out


def _py_spy_works(exe: str) -> str | None:
    """None when py-spy can sample a process here (ptrace allowed), else why not."""
    probe = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(30)"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(0.5)
        done = subprocess.run(
            [exe, "dump", "--pid", str(probe.pid), "--nonblocking"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        return None if done.returncode == 0 else (done.stderr or done.stdout).strip()[-300:]
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{type(exc).__name__}: {exc}"
    finally:
        probe.kill()
        probe.wait(5)


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def run_benchmark(args: argparse.Namespace) -> int:
    signal.signal(signal.SIGTERM, _on_sigterm)
    raise_nofile_limit()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    log_dir = args.log_dir or STATE_DIR / f"reads-{stamp}"
    log_dir.mkdir(parents=True, exist_ok=True)
    registry = Registry(STATE_DIR / "reads-pids.json")
    ended = registry.end_leftovers()
    if ended:
        print(f"ended processes a previous run left behind: {ended}")
    scenarios = scenarios_of(args)
    if not scenarios and not args.cpu_ab:
        print("nothing to run (every scenario skipped)", file=sys.stderr)
        return 2
    results: list[Result] = []
    system: System | None = None
    code = 0
    started = time.monotonic()
    load_start = _load()
    try:
        config = make_config(args, log_dir)
        print(
            f"reads benchmark: {len(scenarios)} scenario(s), {args.warmup:g} s warm-up + "
            f"{args.duration:g} s each; {args.users} users x {args.positions} positions x "
            f"{args.orders} orders; API workers {args.api_workers}"
            f"{'; API patched: ' + args.what_if if args.what_if else ''}; API settings "
            f"{' '.join(f'{k}={v}' for k, v in config.env.items() if k.startswith('TRADEQL_'))}; "
            f"{os.cpu_count()} cores; "
            f"load average {_load_text(load_start)}; db {args.database}, redis db "
            f"{args.redis_db}; logs in {log_dir}",
            flush=True,
        )
        py_spy: str | None = None
        use_cprofile = False
        if args.profile:
            from bench._profile import find_py_spy

            py_spy, note = find_py_spy(install=True)
            print(note or f"py-spy: {py_spy}", flush=True)
            problem = _py_spy_works(py_spy) if py_spy else "py-spy unavailable"
            if args.cprofile:
                problem = "--cprofile asked for"
            if problem:
                print(f"py-spy cannot sample here ({problem}): cProfile in the API instead")
                py_spy = None
                use_cprofile = True
                if args.api_workers > 1:
                    raise BenchError("the cProfile fallback needs --api-workers 1")
        tokens, symbols = setup(config, args)
        tokens_path = log_dir / "tokens.json"
        tokens_path.write_text(json.dumps(tokens))
        tokens_path.chmod(0o600)
        system = System(config, args, registry)
        api = system.start_api(cprofile=use_cprofile)
        print(f"API up on 127.0.0.1:{system.port} (pids {system.api_pids()})", flush=True)
        if args.cpu_ab:
            print(
                f"\nCPU per request, A/B of candidate fixes ({args.ab_rounds} rounds):", flush=True
            )
            ab_table = run_cpu_ab(config, args, tokens_path)
            print(ab_table, flush=True)
        if not scenarios:
            return 0
        budget = 300 + len(scenarios) * (args.warmup + args.duration + args.timeout + 120)
        client = system.start_client(tokens_path, budget)
        ready = json.loads(_read_tagged(client, "READY", 120, [api]))
        print(
            f"client check (user 0): {ready['positions']} positions ({ready['quoted_positions']}"
            f" with a quote), equity {ready['equity']}, realized {ready['realized_pnl']}, "
            f"unrealized {ready['unrealized_pnl']}; order history {ready['orders']} orders in "
            f"{ready['pages']} pages with {ready['executions']} executions",
            flush=True,
        )
        if ready["positions"] != args.positions or ready["orders"] != args.orders:
            raise BenchError(f"the API does not show the seeded data: {ready}")
        pids: dict[str, list[int]] = {}
        postmaster = postmaster_pid(config.admin_url)
        found = redis_pid(config.redis_url)
        if found is not None:
            pids["redis"] = [found]
        for index, scenario in enumerate(scenarios, start=1):
            print(f"\nrunning {scenario.label} ...", flush=True)
            idle = wait_api_idle(system, args.drain)
            if idle is None or idle > 1.5:
                took = f"after {idle:.0f} s" if idle is not None else f"NOT within {args.drain:g} s"
                print(
                    f"  the API went idle {took} (work left from the previous load: requests the "
                    "client had given up on still run to the end on the server)",
                    flush=True,
                )
            result = run_scenario(scenario, system, args, py_spy, pids, symbols, postmaster)
            results.append(result)
            print(format_result(result, index, len(scenarios)), flush=True)
    except KeyboardInterrupt:
        print("\ninterrupted: every process started was stopped", file=sys.stderr)
        code = 130
    except BenchError as exc:
        print(f"\nbenchmark failed: {exc}", file=sys.stderr)
        code = 1
    except Exception:
        print("\nbenchmark failed:", file=sys.stderr)
        traceback.print_exc()
        code = 1
    finally:
        if system is not None:
            system.stop()
            if code and system.api is None:
                print(f"API log tail:\n{log_tail(log_dir / 'api.log', 15)}", file=sys.stderr)
    if results:
        print(
            f"\nsummary ({time.monotonic() - started:.0f} s in all; load average at start "
            f"{_load_text(load_start)}, at end {_load_text(_load())}; {os.cpu_count()} cores)"
        )
        print(format_summary(results))
        for r in results:
            target = verdict(r)
            if target:
                print(target)
    if args.json_out and results:
        args.json_out.write_text(
            json.dumps(
                [
                    {
                        "scenario": r.scenario.short,
                        "rate": r.rate,
                        "latency_ms": r.latency,
                        "service_ms": r.service,
                        "errors": r.client.get("errors"),
                        "cpu": r.cpu,
                        "load": r.load,
                    }
                    for r in results
                ],
                indent=2,
            )
        )
    return code


def _positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be positive")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be positive")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.reads",
        description=(
            "Portfolio and order-history queries from concurrent signed-in users: req/s and "
            "p50/p95/p99. Target: portfolio p95 < 20 ms at 1,000 req/s."
        ),
    )
    data = parser.add_argument_group("data")
    data.add_argument("--users", type=_positive, default=200)
    data.add_argument("--positions", type=_positive, default=50, help="per user")
    data.add_argument("--orders", type=_positive, default=500, help="per user (>= positions)")
    data.add_argument("--synthetic", type=int, default=100, help="securities defaults --synthetic")
    data.add_argument(
        "--migrate-to", default="head", help="alembic revision for gateway.migrate.upgrade"
    )
    data.add_argument(
        "--reuse-setup",
        action="store_true",
        help="keep the database and sessions of the previous run (quotes rewritten)",
    )
    data.add_argument(
        "--no-check", dest="check", action="store_false", help="skip tradeql check after seeding"
    )
    load = parser.add_argument_group("load")
    load.add_argument("--duration", type=_positive_float, default=20.0, help="measured seconds")
    load.add_argument("--warmup", type=float, default=5.0, help="seconds before each window")
    load.add_argument(
        "--concurrency", type=_positive, nargs="+", default=[200], help="closed-loop users"
    )
    load.add_argument(
        "--rate",
        type=float,
        nargs="+",
        default=[TARGET_RATE],
        help="open-loop portfolio rates, req/s (0: none)",
    )
    load.add_argument(
        "--orders-rate",
        type=float,
        nargs="+",
        default=[],
        help="open-loop order-history rates, req/s (default: none)",
    )
    load.add_argument("--skip-portfolio", action="store_true")
    load.add_argument("--skip-orders", action="store_true")
    load.add_argument("--max-in-flight", type=_positive, default=2000, help="open-loop cap")
    load.add_argument("--timeout", type=_positive_float, default=10.0, help="seconds per request")
    load.add_argument(
        "--drain",
        type=_positive_float,
        default=120.0,
        help="at most this many seconds waiting for the API to go idle before a scenario",
    )
    system = parser.add_argument_group("system")
    system.add_argument("--api-workers", type=_positive, default=1, help="tradeql api --workers")
    system.add_argument(
        "--live-quotes",
        action="store_true",
        help="run the simulated feed and the quote cache: every quote moves ~once a second",
    )
    system.add_argument(
        "--api-env",
        action="append",
        metavar="TRADEQL_NAME=VALUE",
        help="extra settings for the API (e.g. TRADEQL_DB_POOL_SIZE=20); repeatable",
    )
    system.add_argument(
        "--cpu-ab",
        action="store_true",
        help="before the load scenarios, CPU per request in-process for the API as shipped and "
        "with candidate fixes (bench/reads_cpu.py); alone with --skip-portfolio --skip-orders",
    )
    system.add_argument("--ab-rounds", type=_positive, default=2)
    system.add_argument("--ab-requests", type=_positive, default=300, help="per kind and run")
    system.add_argument(
        "--what-if",
        default="",
        metavar="FIX,...",
        help="run the API with candidate fixes patched in (bench/reads_whatif.py): "
        "preping, autocommit; measurement only",
    )
    system.add_argument("--database", default="tradeql_bench_reads", help="dropped, recreated")
    system.add_argument(
        "--redis-db",
        type=int,
        default=15,
        help="Redis db, flushed (the tests use 1-9, their locks 10)",
    )
    system.add_argument(
        "--log-level",
        default="WARNING",
        help="TRADEQL_LOG_LEVEL of the API (INFO logs each request)",
    )
    system.add_argument("--log-dir", type=Path, default=None)
    system.add_argument("--json-out", type=Path, default=None, help="results as JSON")
    profile = parser.add_argument_group("profile")
    profile.add_argument("--profile", action="store_true", help="py-spy (or cProfile) on the API")
    profile.add_argument("--profile-rate", type=_positive, default=100, help="py-spy samples/s")
    profile.add_argument(
        "--cprofile", action="store_true", help="with --profile: cProfile even if py-spy works"
    )
    profile.add_argument("--profile-top", type=_positive, default=15)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.what_if:
        from bench.reads_whatif import FIXES

        unknown = set(args.what_if.split(",")) - set(FIXES)
        if unknown or args.api_workers > 1:
            print(
                f"--what-if takes {','.join(FIXES)} (not {sorted(unknown)}), one API process",
                file=sys.stderr,
            )
            return 2
    if args.orders < args.positions:
        print(
            "--orders must be at least --positions (each position has its orders)", file=sys.stderr
        )
        return 2
    return run_benchmark(args)


if __name__ == "__main__":
    sys.exit(main())
