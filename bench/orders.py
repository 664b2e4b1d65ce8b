"""Order placement and fills end to end: HTTP placeOrder -> batched placement -> matcher -> fills.

It recreates a dedicated database (migrated, default securities loaded) and flushes a dedicated
Redis db, then starts as subprocesses the quote cache, the simulated feed, one API process and
the matcher. A separate client process (this module with `--client`, see bench/orders_client.py)
registers and funds K users, holds one `orderUpdates` WebSocket per user (or per sampled user) and
places orders through the real HTTP API: ~70% market, ~30% limit near the quote, buys, and sells
of shares the user was seen to get. Each scenario is closed loop (`--concurrency C`: C requests
always in flight) or open loop (`--rate R`: R orders/s whatever the answers do) and reports:

* orders accepted/s, refusals by code, failures (timeouts, HTTP errors);
* accept latency (the HTTP round trip of placeOrder) p50/p95/p99, and the server's own view;
* placement-to-fill latency of market orders (just before the request -> the FILL event);
* executions/s booked by the matcher, its order backlog, PostgreSQL commits/s and where its
  active backends wait; CPU % of every process (PostgreSQL: postmaster and all backends);
* with --profile, where the API and the matcher spend their time (py-spy; cProfile fallback).

The reference, measured in the same run on the same machine before TradeQL starts: the simplest
design that can place an order (`bench/reference_app.py`: one uvicorn process, strawberry with
its caches, a raw asyncpg pool of 10, one transaction per request that UPDATEs an account's cash
and INSERTs an order row), under the same closed-loop concurrency with the same HTTP client;
each scenario reports its accepted orders/s as a ratio of it. The API runs as `tradeql up` runs
it (`--api-workers`, default TRADEQL_API_WORKERS: one process per core). `--pgbench` adds a
pgbench tpcb-like run, and `tradeql check` at the end says whether the books balance.

The issue's load (1-share market buys of six large caps, 64 connections, 15 s):

    python -m bench.orders --concurrency 64 --symbols 6 --market-share 1 --sell-share 0 \
        --max-quantity 1 --duration 15

    python -m bench.orders                                    # closed loop, concurrency 50
    python -m bench.orders --concurrency 50 200 --rate 1000 3000
    python -m bench.orders --rate 3000 --profile

Servers: DATABASE_URL / REDIS_URL if set (only as the place to connect: host, port, user), else
PostgreSQL and Redis on their standard local ports; loopback addresses only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from bench._metrics import Sample, histogram_quantile, http_get, percentiles, scrape, total
from bench._pg import recreate_database
from bench._procs import (
    ROOT,
    BenchError,
    CpuWindow,
    Managed,
    Registry,
    child_env,
    process_tree,
    raise_nofile_limit,
    sleep_watching,
    tradeql_argv,
    wait_until,
)
from bench._setup import STATE_DIR, active_symbols, free_port, redis_client, server_urls, with_path
from bench.orders_pg import (
    ActivitySampler,
    PgbenchResult,
    TreeCpu,
    database_stats,
    run_pgbench,
    server_facts,
)
from bench.quotes import redis_pid
from services.infra import keys
from services.market_data.quote_store import quote_key
from services.orders.placement import order_stream

TARGET_RATE = 3000.0
TARGET_ACCEPT_P95_MS = 50.0
TARGET_FILL_P95_MS = 150.0
START_TIMEOUT_SECONDS = 60.0
MATCHER_GROUP = "matcher"
QS = (0.5, 0.95, 0.99)
PROCESS_NAMES = ("api", "matcher", "postgres", "client", "redis", "quotes", "feed", "relay")


@dataclass(frozen=True)
class Scenario:
    mode: str  # "closed" or "open"
    value: float  # concurrency or rate

    @property
    def label(self) -> str:
        if self.mode == "closed":
            return f"closed loop, concurrency {self.value:g}"
        return f"open loop, rate {self.value:,.0f}/s"

    @property
    def short(self) -> str:
        return f"conc {self.value:g}" if self.mode == "closed" else f"rate {self.value:g}/s"


@dataclass
class Result:
    scenario: Scenario
    window_s: float = 0.0
    client: dict[str, Any] = field(default_factory=dict)
    accept_ms: dict[str, float | None] = field(default_factory=dict)
    fill_ms: dict[str, float | None] = field(default_factory=dict)
    server_accept_ms: dict[str, float | None] = field(default_factory=dict)
    executions_rate: float = 0.0
    backlog_start: int | None = None
    backlog_end: int | None = None
    catch_up_s: float | None = None
    pg: dict[str, float] = field(default_factory=dict)
    pool_checked_out: dict[str, float] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)
    load_average: float | None = None  # 1-minute, at the end of the window
    reference_rate: float | None = None  # the one-transaction reference, same concurrency
    activity: str = ""
    profiles: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def accepted_rate(self) -> float:
        return self.client.get("accepted", 0) / max(self.window_s, 1e-9)

    @property
    def sent_rate(self) -> float:
        return self.client.get("sent", 0) / max(self.window_s, 1e-9)


@dataclass(frozen=True)
class Config:
    admin_url: str
    database: str
    database_url: str
    redis_url: str
    partitions: int
    log_dir: Path
    env: dict[str, str]


# ------------------------------------------------------------------------------------------------
# Small helpers


def load_securities(config: Config, wanted: int) -> list[str]:
    """`tradeql securities defaults` (plus synthetic symbols past the defaults); the first
    `wanted` active symbols, which are what `tradeql feed --symbols N` simulates."""
    argv = tradeql_argv("securities", "defaults")
    print(f"loading securities: tradeql {' '.join(argv[3:])}", flush=True)
    for attempt in range(2):
        done = subprocess.run(
            argv,
            cwd=ROOT,
            env=child_env(config.env),
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if done.returncode != 0:
            raise BenchError(f"securities defaults failed:\n{done.stderr[-2000:]}")
        symbols = asyncio.run(active_symbols(config.database_url))
        if len(symbols) >= wanted or attempt:
            break
        argv = tradeql_argv("securities", "defaults", "--synthetic", str(wanted))
    if len(symbols) < wanted:
        raise BenchError(f"only {len(symbols)} securities after loading, {wanted} wanted")
    return symbols[:wanted]


def _read_tagged(process: Managed, tag: str, timeout: float, watch: Sequence[Managed]) -> str:
    """The rest of the next line of `process` starting with `tag` (other lines are skipped)."""
    deadline = time.monotonic() + timeout
    for _ in range(10_000):
        for other in watch:
            other.check_alive()
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        try:
            line = process.read_line(min(remaining, 1.0))
        except BenchError:
            if time.monotonic() < deadline and process.alive():
                continue  # nothing within the second: look at the others again
            raise
        if line.startswith(tag):
            return line[len(tag) :].strip()
    raise BenchError(f"{process.name}: no {tag!r} line within {timeout:.0f}s")


def scrape_or_empty(port: int, notes: list[str], what: str) -> list[Sample]:
    """The /metrics of a process; [] (and a note) when it does not answer within 10 s, as an
    overloaded API may not."""
    try:
        return scrape(port, timeout=10.0)
    except (OSError, ValueError) as exc:
        notes.append(f"{what} metrics unavailable ({type(exc).__name__}); numbers from it missing")
        return []


def orders_backlog(client: Any, partitions: int) -> int | None:
    """Orders handed off but not yet acknowledged by the matcher: lag + pending, all partitions."""
    backlog = 0
    for p in range(partitions):
        try:
            if not client.exists(order_stream(p)):
                continue  # no order yet on this partition
            groups = client.xinfo_groups(order_stream(p))
        except Exception:  # Redis busy or gone: unknown
            return None
        for group in groups:
            if group.get("name") != MATCHER_GROUP:
                continue
            if group.get("lag") is None:
                return None
            backlog += int(group["lag"]) + int(group.get("pending") or 0)
    return backlog


def wait_for_matcher(client: Any, partitions: int, seconds: float) -> float | None:
    """Seconds until the matcher's backlog is empty (None: not within `seconds`)."""
    started = time.monotonic()
    for _ in range(int(seconds / 0.2) + 1):
        backlog = orders_backlog(client, partitions)
        if backlog == 0:
            return time.monotonic() - started
        if time.monotonic() - started > seconds:
            return None
        time.sleep(0.2)
    return None


def wait_for_api_idle(port: int, seconds: float) -> float | None:
    """Seconds until the API has finished every placeOrder it holds (its PlaceOrder count stays
    still for a second; an open loop leaves thousands queued); None: not within `seconds`."""
    started = time.monotonic()
    last: float | None = None
    still_since = started
    for _ in range(int(seconds / 0.25) + 1):
        try:
            count = total(
                scrape(port, timeout=10.0),
                "tradeql_graphql_operations_total",
                operation="PlaceOrder",
            )
        except (OSError, ValueError):
            count = None
        now = time.monotonic()
        if count is None or count != last:
            last, still_since = count, now
        elif now - still_since >= 1.0:
            return now - started
        if now - started > seconds:
            return None
        time.sleep(0.25)
    return None


def labelled_histogram(
    before: Iterable[Sample], after: Iterable[Sample], name: str, **labels: str
) -> list[tuple[float, float]]:
    """[(upper bound s, cumulative count)] over an interval, for the series matching `labels`."""

    def rows(samples: Iterable[Sample]) -> dict[float, float]:
        out: dict[float, float] = {}
        for s in samples:
            if s.name != f"{name}_bucket":
                continue
            if any(s.labels.get(k) != v for k, v in labels.items()):
                continue
            le = s.labels.get("le", "")
            bound = math.inf if le == "+Inf" else float(le)
            out[bound] = out.get(bound, 0.0) + s.value
        return out

    start, end = rows(before), rows(after)
    return sorted((bound, count - start.get(bound, 0.0)) for bound, count in end.items())


def _fmt(value: float | None, spec: str = ",.1f", missing: str = "-") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return missing
    return format(value, spec)


def _le(value: float | None) -> str:
    """A histogram bucket bound in ms."""
    if value is None:
        return "-"
    return "inf" if math.isinf(value) else f"{1000 * value:g}"


# ------------------------------------------------------------------------------------------------
# The system under test


class System:
    """The processes under test, started in order and always stopped."""

    def __init__(self, config: Config, args: argparse.Namespace, registry: Registry) -> None:
        self.config = config
        self.args = args
        self.registry = registry
        self.api_port = free_port()
        self.matcher_port = free_port()
        self.quotes_port = free_port()
        self.feed_port = free_port()
        self.env = child_env(config.env)
        logs = config.log_dir
        self.quotes = Managed(
            "quotes",
            tradeql_argv("quotes", "--metrics-port", str(self.quotes_port)),
            self.env,
            logs / "quotes.log",
            registry,
        )
        self.feed = Managed(
            "feed",
            tradeql_argv(
                "feed",
                "--source",
                "sim",
                "--symbols",
                str(args.symbols),
                "--seed",
                str(args.feed_seed),
                "--metrics-port",
                str(self.feed_port),
            ),
            self.env,
            logs / "feed.log",
            registry,
        )
        self.api = self._api(cprofile=False)
        self.matcher = self._matcher(cprofile=False)
        self.relay = Managed("relay", tradeql_argv("relay"), self.env, logs / "relay.log", registry)
        self.cprofile = False
        self.client: Managed | None = None

    def _api(self, cprofile: bool) -> Managed:
        if cprofile:
            argv = [
                sys.executable,
                "-m",
                "bench.orders_cprofile",
                "--role",
                "api",
                "--port",
                str(self.api_port),
                "--out",
                str(self.config.log_dir / "cprofile-api.pstats"),
            ]
        else:
            argv = tradeql_argv(
                "api",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.api_port),
                "--workers",
                str(api_workers(self.args)),
            )
        return Managed("api", argv, self.env, self.config.log_dir / "api.log", self.registry)

    def _matcher(self, cprofile: bool) -> Managed:
        if cprofile:
            argv = [
                sys.executable,
                "-m",
                "bench.orders_cprofile",
                "--role",
                "matcher",
                "--metrics-port",
                str(self.matcher_port),
                "--out",
                str(self.config.log_dir / "cprofile-matcher.pstats"),
            ]
        else:
            argv = tradeql_argv("matcher", "--metrics-port", str(self.matcher_port))
        return Managed(
            "matcher", argv, self.env, self.config.log_dir / "matcher.log", self.registry
        )

    @property
    def servers(self) -> list[Managed]:
        return [self.quotes, self.feed, self.api, self.matcher, self.relay]

    @property
    def everything(self) -> list[Managed]:
        return [*self.servers, *([self.client] if self.client else [])]

    def start_servers(self, redis: Any, symbols: list[str]) -> None:
        self.quotes.start()
        wait_until(
            "quote cache metrics",
            [self.quotes],
            lambda: http_get(self.quotes_port, "/metrics")[0] == 200,
            START_TIMEOUT_SECONDS,
        )
        self.feed.start()
        self.relay.start()
        self._start_api_and_matcher()
        wait_until(
            f"quotes of all {len(symbols)} symbols in Redis",
            self.servers,
            lambda: all(redis.exists(quote_key(s)) for s in symbols),
            START_TIMEOUT_SECONDS,
        )

    def _start_api_and_matcher(self) -> None:
        self.api.start()
        wait_until(
            "API /readyz",
            [self.quotes, self.feed, self.api],
            lambda: http_get(self.api_port, "/readyz")[0] == 200,
            START_TIMEOUT_SECONDS,
        )
        self.matcher.start()
        partitions = self.config.partitions
        wait_until(
            f"matcher holding all {partitions} partitions",
            self.servers,
            lambda: total(scrape(self.matcher_port), "tradeql_matcher_partitions") >= partitions,
            START_TIMEOUT_SECONDS,
        )

    def switch_to_cprofile(self) -> None:
        """Restart the API and the matcher under the cProfile wrapper (before the client)."""
        self.matcher.stop()
        self.api.stop()
        self.api = self._api(cprofile=True)
        self.matcher = self._matcher(cprofile=True)
        self.cprofile = True
        self._start_api_and_matcher()

    def start_client(self, symbols_file: Path, budget: float) -> Managed:
        args = self.args
        self.client = Managed(
            "client",
            [
                sys.executable,
                "-m",
                "bench.orders",
                "--client",
                "--port",
                str(self.api_port),
                "--symbols-file",
                str(symbols_file),
                "--users",
                str(args.users),
                "--subscribers",
                str(args.subscribers or args.users),
                "--deposit",
                args.deposit,
                "--seed",
                str(args.seed),
                "--run-id",
                str(args.run_id),
                "--request-timeout",
                f"{args.request_timeout:g}",
                "--setup-concurrency",
                str(args.setup_concurrency),
                "--client-max-seconds",
                f"{budget:.0f}",
            ],
            self.env,
            self.config.log_dir / "client.log",
            self.registry,
            pipe=True,
        )
        self.client.start()
        return self.client

    def stop(self) -> None:
        for process in [*([self.client] if self.client else []), *reversed(self.servers)]:
            process.stop()


# ------------------------------------------------------------------------------------------------
# One scenario


def _profilers(
    system: System, args: argparse.Namespace, py_spy: str | None, tag: str
) -> tuple[list[Any], list[str]]:
    """Start the window's profilers: py-spy recordings, or the cProfile wrappers' SIGUSR1."""
    recordings: list[Any] = []
    started: list[str] = []
    if not args.profile:
        return recordings, started
    targets = {"api": system.api, "matcher": system.matcher}
    if system.cprofile:
        for name in args.profile_procs:
            with contextlib.suppress(ProcessLookupError):
                os.kill(targets[name].pid, signal.SIGUSR1)
                started.append(name)
    elif py_spy:
        from bench._profile import PySpyRecording

        for name in args.profile_procs:
            recording = PySpyRecording(
                py_spy,
                f"{name}-{tag}",
                process_tree(targets[name].pid)[-1],  # a worker, when a supervisor leads
                args.duration,
                args.profile_rate,
                system.config.log_dir,
            )
            recording.start()
            recordings.append(recording)
    return recordings, started


def _profile_summaries(
    system: System,
    args: argparse.Namespace,
    recordings: list[Any],
    cprofiled: list[str],
    window_s: float,
) -> list[str]:
    out: list[str] = []
    if recordings:
        from bench._profile import summarize
        from bench.orders_profile import breakdown

        for recording in recordings:
            ok, error = recording.finish(args.duration + 30)
            if not ok:
                out.append(f"py-spy on {recording.name} failed: {error}")
                continue
            out.append(
                breakdown(recording.out, recording.name, recording.rate, recording.seconds)
                + "\n"
                + summarize(recording, args.profile_top)
            )
    if cprofiled:
        from bench.orders_cprofile import summarize as summarize_cprofile

        for name in cprofiled:
            path = system.config.log_dir / f"cprofile-{name}.pstats"
            for _ in range(100):  # the wrapper writes it on SIGUSR2
                if path.exists():
                    break
                time.sleep(0.1)
            if path.exists():
                out.append(summarize_cprofile(path, name, window_s, args.profile_top))
                path.rename(path.with_suffix(f".{int(time.time())}.pstats"))
            else:
                out.append(f"cProfile of {name}: no stats written")
    return out


def run_scenario(
    scenario: Scenario,
    system: System,
    args: argparse.Namespace,
    redis: Any,
    py_spy: str | None,
    postmaster: int | None,
) -> Result:
    config = system.config
    client = system.client
    assert client is not None
    result = Result(scenario)
    if wait_for_api_idle(system.api_port, args.settle) is None:
        result.notes.append(
            f"the API was still placing earlier orders after {args.settle:g} s; measured anyway"
        )
    if wait_for_matcher(redis, config.partitions, args.settle) is None:
        result.notes.append(
            f"the matcher still had a backlog from before after {args.settle:g} s; measured anyway"
        )
    max_inflight = args.max_inflight
    if scenario.mode == "closed":
        max_inflight = max(max_inflight, int(scenario.value))
    spec = {
        "mode": scenario.mode,
        "concurrency": int(scenario.value) if scenario.mode == "closed" else 0,
        "rate": scenario.value if scenario.mode == "open" else 0,
        "warmup": args.warmup,
        "duration": args.duration,
        "drain": args.drain,
        "max_inflight": max_inflight,
        "market_share": args.market_share,
        "sell_share": args.sell_share,
        "max_quantity": args.max_quantity,
        "limit_spread": args.limit_spread,
    }
    pids: dict[str, list[int]] = {
        "api": process_tree(system.api.pid),
        "matcher": [system.matcher.pid],
        "quotes": [system.quotes.pid],
        "feed": [system.feed.pid],
        "relay": [system.relay.pid],
        "client": [client.pid],
    }
    rpid = redis_pid(redis)
    if rpid is not None:
        pids["redis"] = [rpid]
    cpu = CpuWindow(pids)
    pg_cpu = TreeCpu(postmaster)
    sampler = ActivitySampler(config.database_url, config.database, args.pg_sample_ms / 1000)
    recordings: list[Any] = []
    cprofiled: list[str] = []
    watch = system.servers
    tag = f"{scenario.mode}{scenario.value:g}"
    try:
        client.send_line("RUN " + json.dumps(spec))
        _read_tagged(client, "MEASURING", args.warmup + 60, watch)
        cpu.start()
        pg_cpu.start()
        measured_from = time.monotonic()
        matcher_before = scrape_or_empty(system.matcher_port, result.notes, "matcher")
        api_before = scrape_or_empty(system.api_port, result.notes, "API")
        pg_before = database_stats(config.database_url, config.database)
        result.backlog_start = orders_backlog(redis, config.partitions)
        sampler.start()
        recordings, cprofiled = _profilers(system, args, py_spy, tag)
        _read_tagged(client, "MEASURED", args.duration + 60, watch)
        result.cpu = cpu.stop()
        with contextlib.suppress(OSError):
            result.load_average = os.getloadavg()[0]
        pg_percent = pg_cpu.stop()
        if pg_percent is not None:
            result.cpu["postgres"] = pg_percent
        window = time.monotonic() - measured_from
        for name in cprofiled:
            with contextlib.suppress(ProcessLookupError):
                os.kill((system.api if name == "api" else system.matcher).pid, signal.SIGUSR2)
        sampler.stop()
        matcher_after = scrape_or_empty(system.matcher_port, result.notes, "matcher")
        api_after = scrape_or_empty(system.api_port, result.notes, "API")
        result.backlog_end = orders_backlog(redis, config.partitions)
        outcome = json.loads(
            _read_tagged(client, "RESULT", args.request_timeout + args.drain + 120, watch)
        )
        pg_after = database_stats(config.database_url, config.database)
        result.catch_up_s = wait_for_matcher(redis, config.partitions, args.settle)
    except BaseException:
        for recording in recordings:
            recording.stop()
        raise
    finally:
        sampler.stop()
    result.client = outcome
    result.window_s = float(outcome.get("window_seconds") or window)
    accept = percentiles({int(k): int(v) for k, v in outcome["accept_hist"].items()}, QS)
    fill = percentiles({int(k): int(v) for k, v in outcome["fill_hist"].items()}, QS)
    result.accept_ms = {f"p{round(q * 100)}": accept[q] for q in QS}
    result.accept_ms["max"] = outcome.get("max_accept_ms")
    result.fill_ms = {f"p{round(q * 100)}": fill[q] for q in QS}
    result.fill_ms["max"] = outcome.get("max_fill_ms") if outcome.get("market_filled") else None
    rows = labelled_histogram(
        api_before, api_after, "tradeql_graphql_operation_seconds", operation="PlaceOrder"
    )
    result.server_accept_ms = {f"p{round(q * 100)}": histogram_quantile(rows, q) for q in QS}
    executions = total(matcher_after, "tradeql_matcher_executions_total") - total(
        matcher_before, "tradeql_matcher_executions_total"
    )
    result.executions_rate = executions / window
    result.pool_checked_out = {
        "api": total(api_after, "tradeql_db_pool_connections", state="checkedout"),
    }
    if pg_before and pg_after:
        result.pg = {k: (pg_after[k] - pg_before.get(k, 0.0)) for k in pg_after}
        result.pg["seconds"] = window
    result.activity = sampler.summary()
    result.profiles = _profile_summaries(system, args, recordings, cprofiled, window)
    _notes(result, args)
    return result


def _notes(result: Result, args: argparse.Namespace) -> None:
    c = result.client
    if c.get("skipped"):
        result.notes.append(
            f"{c['skipped']:,} orders due were not sent: {args.max_inflight} already in flight "
            "(the open loop never queues beyond --max-inflight)"
        )
    if result.scenario.mode == "open" and c.get("scheduled"):
        sent_share = c["sent"] / max(c["scheduled"], 1)
        if sent_share < 0.98:
            result.notes.append(f"only {100 * sent_share:.0f}% of the orders due were sent")
    if c.get("market_unfilled_after_drain"):
        result.notes.append(
            f"{c['market_unfilled_after_drain']:,} market orders of the window had no FILL event "
            f"{args.drain:g} s after the window (left out of the fill percentiles)"
        )
    if c.get("market_closed_unfilled"):
        result.notes.append(
            f"{c['market_closed_unfilled']:,} market orders of the window were cancelled unfilled"
        )
    if c.get("failed"):
        result.notes.append(f"failures: {c['failed']}, e.g. {c.get('sample_errors', [])[:2]}")
    if c.get("socket_errors"):
        result.notes.append(
            f"client-side errors (sockets, quote refresh): {c['socket_errors'][:2]}"
        )
    if result.cpu.get("client", 0.0) > 90:
        result.notes.append("the client process was saturated: rates are bounded by it")
    if result.catch_up_s is None:
        result.notes.append(f"the matcher had not caught up {args.settle:g} s after the window")


# ------------------------------------------------------------------------------------------------
# Report


def target_verdict(result: Result) -> str:
    accepted = result.accepted_rate
    p95_accept = result.accept_ms.get("p95")
    p95_fill = result.fill_ms.get("p95")
    rate_ok = accepted >= 0.98 * TARGET_RATE
    accept_ok = p95_accept is not None and p95_accept < TARGET_ACCEPT_P95_MS
    fill_ok = p95_fill is not None and p95_fill < TARGET_FILL_P95_MS
    verdict = "MET" if rate_ok and accept_ok and fill_ok else "MISSED"
    return (
        f"target ({TARGET_RATE:,.0f} orders/s, p95 accept < {TARGET_ACCEPT_P95_MS:.0f} ms, "
        f"p95 placement-to-fill < {TARGET_FILL_P95_MS:.0f} ms): {verdict} - {accepted:,.0f}/s "
        f"({'ok' if rate_ok else 'short'}), p95 accept {_fmt(p95_accept)} ms "
        f"({'ok' if accept_ok else 'over'}), p95 fill {_fmt(p95_fill)} ms "
        f"({'ok' if fill_ok else 'over'})"
    )


def _lat(values: dict[str, float | None]) -> str:
    return "  ".join(f"{k} {_fmt(values.get(k))}" for k in ("p50", "p95", "p99", "max"))


def format_result(result: Result, index: int, count: int, users: int) -> str:
    s, c, cpu, w = result.scenario, result.client, result.cpu, result.window_s
    refused = ", ".join(f"{k} {v:,}" for k, v in sorted(c.get("refused", {}).items())) or "none"
    failed = ", ".join(f"{k} {v:,}" for k, v in sorted(c.get("failed", {}).items())) or "none"
    kinds = ", ".join(f"{k} {v:,}" for k, v in sorted(c.get("accepted_by_kind", {}).items()))
    sent_line = (
        f"  orders sent                   {c.get('sent', 0):>9,}  ({result.sent_rate:,.0f}/s)"
    )
    if s.mode == "open":
        sent_line += (
            f"; due {c.get('scheduled', 0):,} ({c.get('scheduled', 0) / max(w, 1e-9):,.0f}/s), "
            f"skipped {c.get('skipped', 0):,}; {c.get('connections', 0):,} HTTP connections"
        )
    backlog = f"{_fmt(result.backlog_start, ',.0f')} -> {_fmt(result.backlog_end, ',.0f')} orders"
    if result.backlog_start is not None and result.backlog_end is not None:
        backlog += f" ({(result.backlog_end - result.backlog_start) / max(w, 1e-9):+,.0f}/s)"
    backlog += (
        f"; caught up {_fmt(result.catch_up_s)} s after the results"
        if result.catch_up_s is not None
        else "; NOT caught up"
    )
    pg = result.pg
    pg_line = "  PostgreSQL                    (no pg_stat_database numbers)"
    if pg:
        seconds = max(pg.get("seconds", w), 1e-9)
        commits = pg.get("xact_commit", 0.0) / seconds
        per_order = commits / max(result.accepted_rate, 1e-9)
        pg_line = (
            f"  PostgreSQL                    {commits:>9,.0f} commits/s ({per_order:.2f} per "
            f"accepted order), {pg.get('xact_rollback', 0) / seconds:,.0f} rollbacks/s, "
            f"{pg.get('tup_inserted', 0) / seconds:,.0f} rows inserted/s, "
            f"{pg.get('tup_updated', 0) / seconds:,.0f} updated/s, deadlocks "
            f"{pg.get('deadlocks', 0):,.0f}"
        )
    cpu_line = "  ".join(f"{name} {cpu[name]:.0f}" for name in PROCESS_NAMES if name in cpu)
    other = max(0.0, cpu.get("machine", 0.0) - sum(cpu.get(n, 0.0) for n in PROCESS_NAMES))
    cpu_per_order = "  ".join(
        f"{name} {10 * cpu[name] / max(result.accepted_rate, 1e-9):.2f}"
        for name in ("api", "matcher", "postgres", "client")
        if name in cpu
    )
    executions = max(result.executions_rate, 1e-9)
    matcher_per_fill = 10 * cpu.get("matcher", 0.0) / executions
    lines = [
        f"== scenario {index}/{count}: {s.label}; {users} users; measured {w:.1f} s ==",
        sent_line,
        f"  accepted                      {c.get('accepted', 0):>9,}  "
        f"({result.accepted_rate:,.1f}/s): {kinds}",
        f"  refused (code)                {refused}",
        f"  failed                        {failed}",
        f"  accept latency (HTTP RTT)     {_lat(result.accept_ms)} ms   "
        f"(server PlaceOrder p50 <= {_le(result.server_accept_ms.get('p50'))}, p95 <= "
        f"{_le(result.server_accept_ms.get('p95'))}, p99 <= "
        f"{_le(result.server_accept_ms.get('p99'))} ms)",
        f"  placement->FILL (market)      {_lat(result.fill_ms)} ms   "
        f"(n={c.get('market_filled', 0):,} of {c.get('accepted_market', 0):,} accepted market "
        f"orders)",
        f"  fills                         {result.executions_rate:>9,.1f} executions/s booked by "
        f"the matcher; client saw {c.get('fill_events', 0) / max(w, 1e-9):,.1f} FILL/"
        f"PARTIAL_FILL events/s on {c.get('sockets_open', 0)} sockets; limit orders of the "
        f"window filled: {c.get('limit_filled', 0):,}",
        f"  matcher backlog (orders:*)    {backlog}",
        pg_line,
        f"  API DB pool checked out       {_fmt(result.pool_checked_out.get('api'), ',.0f')} "
        f"at the end of the window",
        f"  CPU % of one core             {cpu_line}   | machine {cpu.get('machine', 0):.0f} "
        f"of {100 * (os.cpu_count() or 1)} (other processes ~{other:.0f}; load average "
        f"{_fmt(result.load_average, '.2f')})",
        f"  CPU ms per accepted order     {cpu_per_order}   (matcher per execution "
        f"{matcher_per_fill:.2f} ms)",
        f"  {target_verdict(result)}",
    ]
    lines += [f"  note: {n}" for n in result.notes]
    if result.activity:
        lines += [f"  {line}" for line in result.activity.splitlines()]
    for profile in result.profiles:
        lines.append("")
        lines += [f"  {line}" for line in profile.splitlines()]
    return "\n".join(lines)


def format_summary(results: Sequence[Result]) -> str:
    header = (
        f"{'scenario':<16} {'sent/s':>7} {'acc/s':>7} {'refused':>7} {'failed':>6} "
        f"{'acc p50':>7} {'p95':>6} {'p99':>6} {'fill p50':>8} {'p95':>6} {'p99':>6} "
        f"{'exec/s':>7} {'backlog':>8} {'api%':>5} {'match%':>6} {'pg%':>5} {'clnt%':>5} "
        f"{'mach%':>5} {'ref/s':>6} {'ratio':>5}"
    )
    lines = [header, "-" * len(header)]
    for r in results:
        c, cpu, a, f = r.client, r.cpu, r.accept_ms, r.fill_ms
        refused = sum(c.get("refused", {}).values())
        failed = sum(c.get("failed", {}).values())
        lines.append(
            f"{r.scenario.short:<16} {r.sent_rate:>7,.0f} {r.accepted_rate:>7,.0f} "
            f"{refused:>7,} {failed:>6,} {_fmt(a.get('p50')):>7} {_fmt(a.get('p95')):>6} "
            f"{_fmt(a.get('p99')):>6} {_fmt(f.get('p50')):>8} {_fmt(f.get('p95')):>6} "
            f"{_fmt(f.get('p99')):>6} {r.executions_rate:>7,.0f} "
            f"{_fmt(r.backlog_end, ',.0f'):>8} {cpu.get('api', 0):>5.0f} "
            f"{cpu.get('matcher', 0):>6.0f} {_fmt(cpu.get('postgres'), '.0f'):>5} "
            f"{cpu.get('client', 0):>5.0f} {cpu.get('machine', 0):>5.0f} "
            f"{_fmt(r.reference_rate, ',.0f'):>6} {_fmt(_ratio(r), '.2f'):>5}"
        )
    lines.append(
        "latencies in ms (accept: placeOrder HTTP round trip; fill: just before placeOrder -> "
        "FILL event, market orders); backlog: orders handed off, not yet acked by the matcher at "
        "the end of the window; CPU in % of one core, machine = all cores; ref/s: the "
        "one-transaction reference at the same concurrency, ratio = acc/s / ref/s"
    )
    return "\n".join(lines)


def _ratio(result: Result) -> float | None:
    if not result.reference_rate:
        return None
    return result.accepted_rate / result.reference_rate


def format_pgbench(result: PgbenchResult) -> str:
    if result.error:
        return f"pgbench reference: failed: {result.error}"
    return (
        f"pgbench reference (tpcb-like, same server, scratch database): {_fmt(result.tps, ',.0f')} "
        f"tps, latency average {_fmt(result.latency_ms, '.2f')} ms\n  "
        + "\n  ".join(f"$ {cmd}" for cmd in result.commands)
    )


# ------------------------------------------------------------------------------------------------
# The one-transaction reference


REFERENCE_DATABASE = "tradeql_bench_reference"


def api_workers(args: argparse.Namespace) -> int:
    """What `tradeql up` starts: --api-workers, else TRADEQL_API_WORKERS, else one per core."""
    if args.api_workers:
        return int(args.api_workers)
    return int(os.environ.get("TRADEQL_API_WORKERS") or 0) or os.cpu_count() or 1


def run_reference(
    config: Config,
    args: argparse.Namespace,
    registry: Registry,
    concurrency: int,
    postmaster: int | None,
) -> dict[str, Any]:
    """The reference app on a scratch database, loaded by bench.reference_client."""
    recreate_database(config.admin_url, REFERENCE_DATABASE)
    url = with_path(config.admin_url, "/" + REFERENCE_DATABASE)
    port = free_port()
    app = Managed(
        "reference",
        [sys.executable, "-m", "bench.reference_app", "--database-url", url, "--port", str(port)],
        child_env(config.env),
        config.log_dir / "reference.log",
        registry,
    )
    app.start()
    try:
        wait_until(
            "reference app",
            [app],
            lambda: http_get(port, "/graphql?query=%7Bok%7D", timeout=1.0)[0] == 200,
            START_TIMEOUT_SECONDS,
        )
        app_cpu, pg_cpu = CpuWindow({"app": process_tree(app.pid)}), TreeCpu(postmaster)
        app_cpu.start()
        pg_cpu.start()
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "bench.reference_client",
                "--port",
                str(port),
                "--concurrency",
                str(concurrency),
                "--warmup",
                str(args.warmup),
                "--duration",
                str(args.duration),
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=args.warmup + args.duration + 120,
            check=False,
        )
        cpu = {"app": app_cpu.stop().get("app", 0.0), "postgres": pg_cpu.stop() or 0.0}
        for line in done.stdout.splitlines():
            if line.startswith("RESULT "):
                outcome: dict[str, Any] = json.loads(line[len("RESULT ") :])
                outcome["cpu_percent"] = cpu
                return outcome
        return {"error": (done.stderr or done.stdout)[-500:]}
    finally:
        app.stop()


def format_reference(outcome: dict[str, Any]) -> str:
    if "error" in outcome:
        return f"  reference failed: {outcome['error']}"
    rate = max(float(outcome["rate"]), 1e-9)
    per = {name: pct * 10 / rate for name, pct in outcome.get("cpu_percent", {}).items()}
    return (
        f"  reference: {outcome['rate']:,.0f} mutations/s, p50/p95/p99 "
        f"{_fmt(outcome['p50_ms'])}/{_fmt(outcome['p95_ms'])}/{_fmt(outcome['p99_ms'])} ms, "
        f"{outcome['failed']} failed; CPU ms per mutation: app {per.get('app', 0):.2f}, "
        f"postgres {per.get('postgres', 0):.2f} (over warm-up and window)"
    )


# ------------------------------------------------------------------------------------------------
# Run


def run_check(config: Config) -> tuple[bool, str]:
    done = subprocess.run(
        tradeql_argv("check"),
        cwd=ROOT,
        env=child_env(config.env),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    text = (done.stdout + done.stderr).strip()
    lines = text.splitlines()
    if len(lines) > 20:
        text = "\n".join([*lines[:20], f"... ({len(lines) - 20} more lines)"])
    return done.returncode == 0, text


def make_config(args: argparse.Namespace, log_dir: Path) -> Config:
    from services.infra.settings import Settings

    admin, redis_base = server_urls()
    admin = with_path(admin, "/postgres")
    database_url = with_path(admin, f"/{args.database}")
    redis_url = with_path(redis_base, f"/{args.redis_db}")
    keys.configure(database_url)  # the processes under test derive the same Redis namespace
    env = {
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "TRADEQL_LOG_LEVEL": args.log_level,
        "TRADEQL_MARKET_ALWAYS_OPEN": "true",
        # Every simulated user connects from 127.0.0.1: the per-address limit would refuse
        # most of them (the per-session limits stay on, as in production).
        "TRADEQL_RATE_LIMIT_IP_PER_SECOND": "0",
        "TRADEQL_VENUE_FAULTS": "EDGX=0,ARCA=0,IEXG=0",
        "TRADEQL_PASSWORD_HASH_TIME_COST": "1",
        "TRADEQL_PASSWORD_HASH_MEMORY_KIB": "8192",
        "TRADEQL_FEED_SIM_RATE": f"{args.quote_rate:g}",
    }
    if args.batch_ms is not None:
        env["TRADEQL_ORDER_BATCH_MS"] = f"{args.batch_ms:g}"
    saved = dict(os.environ)
    try:
        os.environ.update(env)
        settings = Settings()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return Config(
        admin_url=admin,
        database=args.database,
        database_url=database_url,
        redis_url=redis_url,
        partitions=settings.quote_partitions,
        log_dir=log_dir,
        env=env,
    )


def _check_py_spy(exe: str, pid: int) -> str | None:
    """None when py-spy can read the process, else why not."""
    try:
        done = subprocess.run(
            [exe, "dump", "--pid", str(pid), "--nonblocking"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None if done.returncode == 0 else (done.stderr or done.stdout).strip()[-300:]


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def scenarios_of(args: argparse.Namespace) -> list[Scenario]:
    out = [Scenario("closed", float(c)) for c in args.concurrency or []]
    out += [Scenario("open", float(r)) for r in args.rate or []]
    return out or [Scenario("closed", 50.0)]


def run_benchmark(args: argparse.Namespace) -> int:
    signal.signal(signal.SIGTERM, _on_sigterm)
    raise_nofile_limit()
    log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix="tradeql-bench-orders-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    registry = Registry(STATE_DIR / "orders-pids.json")
    ended = registry.end_leftovers()
    if ended:
        print(f"ended processes a previous run left behind: {ended}")
    scenarios = scenarios_of(args)
    results: list[Result] = []
    code = 0
    started = time.monotonic()
    system: System | None = None
    redis: Any = None
    try:
        config = make_config(args, log_dir)
        facts = server_facts(config.admin_url)
        print(
            f"orders benchmark: {len(scenarios)} scenario(s), {args.warmup:g} s warm-up + "
            f"{args.duration:g} s each; {os.cpu_count()} cores; {args.users} users "
            f"({args.subscribers or args.users} with an orderUpdates socket), {args.symbols} "
            f"symbols, {args.market_share:.0%} market; order batch "
            f"{config.env.get('TRADEQL_ORDER_BATCH_MS', 'default')} ms; PostgreSQL "
            f"{facts['version']} (synchronous_commit={facts['synchronous_commit']}, "
            f"fsync={facts['fsync']}, shared_buffers={facts['shared_buffers']}); db "
            f"{args.database}, redis db {args.redis_db}; logs in {log_dir}",
            flush=True,
        )
        py_spy: str | None = None
        if args.profile and args.profile_with == "py-spy":
            from bench._profile import find_py_spy

            py_spy, note = find_py_spy(install=True)
            print(note or f"py-spy: {py_spy}", flush=True)
        references: dict[int, float | None] = {}
        if args.reference:
            for concurrency in sorted({int(s.value) for s in scenarios if s.mode == "closed"}):
                print(f"reference: one-transaction mutation, concurrency {concurrency} ...")
                outcome = run_reference(
                    config, args, registry, concurrency, facts.get("postmaster_pid")
                )
                print(format_reference(outcome), flush=True)
                references[concurrency] = outcome.get("rate")  # type: ignore[assignment]
        if args.pgbench:
            print(
                f"pgbench: scale {args.pgbench_scale}, -c {args.pgbench_clients} -j "
                f"{args.pgbench_threads} -T {args.pgbench_seconds} ...",
                flush=True,
            )
            reference = run_pgbench(
                config.admin_url,
                scale=args.pgbench_scale,
                clients=args.pgbench_clients,
                threads=args.pgbench_threads,
                seconds=args.pgbench_seconds,
            )
            print(format_pgbench(reference), flush=True)
        print(f"database {args.database}: dropped and created; migrating", flush=True)
        recreate_database(config.admin_url, args.database)
        from gateway.migrate import upgrade

        upgrade(config.database_url)
        symbols = load_securities(config, args.symbols)
        symbols_file = log_dir / "symbols.json"
        symbols_file.write_text(json.dumps(symbols))
        redis = redis_client(config.redis_url)
        redis.flushdb()
        system = System(config, args, registry)
        system.start_servers(redis, symbols)
        if args.profile and args.profile_with == "cprofile":
            print("restarting the API and the matcher under cProfile", flush=True)
            system.switch_to_cprofile()
        elif args.profile:
            problem = _check_py_spy(py_spy, system.api.pid) if py_spy else "py-spy unavailable"
            if problem:
                print(f"py-spy cannot sample the processes ({problem})", flush=True)
                if args.profile_fallback:
                    print("restarting the API and the matcher under cProfile", flush=True)
                    system.switch_to_cprofile()
        budget = 600 + len(scenarios) * (
            args.warmup + args.duration + args.drain + args.settle + 300
        )
        client = system.start_client(symbols_file, budget)
        ready = json.loads(_read_tagged(client, "READY", 300 + args.users, system.servers))
        print(
            f"client ready: {ready['users']} users registered and funded in "
            f"{ready['register_s']:.1f} s, {ready['subscribed']} orderUpdates sockets "
            f"({ready['subscribe_failed']} failed), quotes for {ready['quotes']} symbols",
            flush=True,
        )
        if ready.get("user_failures") or ready.get("socket_errors"):
            print(f"  setup errors: {ready['user_failures']} {ready['socket_errors']}", flush=True)
        postmaster = facts.get("postmaster_pid")
        for index, scenario in enumerate(scenarios, start=1):
            print(f"\nrunning {scenario.label} ...", flush=True)
            result = run_scenario(scenario, system, args, redis, py_spy, postmaster)
            if scenario.mode == "closed":
                result.reference_rate = references.get(int(scenario.value))
            results.append(result)
            print(format_result(result, index, len(scenarios), ready["users"]), flush=True)
            sleep_watching(0.5, system.everything)
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
            if system.client is not None and system.client.alive():
                with contextlib.suppress(BenchError):
                    system.client.send_line("QUIT")
            system.stop()
        if redis is not None:
            redis.close()
    if results:
        print(f"\nsummary ({time.monotonic() - started:.0f} s in all)")
        print(format_summary(results))
    if system is not None and code != 130:
        balanced, text = run_check(system.config)
        print(f"\ntradeql check: {'books balance' if balanced else 'BOOKS DO NOT BALANCE'}")
        print("  " + text.replace("\n", "\n  "))
        if not balanced:
            code = code or 1
    if args.json_out and results:
        args.json_out.write_text(json.dumps([asdict(r) for r in results], indent=2, default=str))
    return code


# ------------------------------------------------------------------------------------------------
# Entry points


def _positive_float(text: str) -> float:
    value = float(text)
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError("must be a positive number")
    return value


def _positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be a positive integer")
    return value


def _share(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError("must be between 0 and 1")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.orders",
        description=(
            "Orders end to end: accepted orders/s, accept and placement-to-fill latency, fills/s, "
            "CPU per process and a pgbench reference, for each closed- or open-loop scenario."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    run = parser.add_argument_group("scenarios (each --concurrency and --rate value is one)")
    run.add_argument(
        "--concurrency",
        type=_positive,
        nargs="+",
        help="closed loop: requests always in flight (default, without --rate: 50)",
    )
    run.add_argument("--rate", type=_positive_float, nargs="+", help="open loop: orders/s offered")
    run.add_argument("--duration", type=_positive_float, default=20.0, help="window, seconds")
    run.add_argument("--warmup", type=_positive_float, default=5.0, help="seconds of load before")
    run.add_argument(
        "--drain", type=_positive_float, default=15.0, help="max wait for the window's fills"
    )
    run.add_argument(
        "--settle",
        type=_positive_float,
        default=60.0,
        help="max wait for the matcher's backlog to empty between scenarios",
    )
    run.add_argument("--users", type=_positive, default=200, help="simulated users")
    run.add_argument(
        "--subscribers",
        type=int,
        default=0,
        help="users with an orderUpdates socket (0: all); the others only buy",
    )
    run.add_argument("--symbols", type=_positive, default=28, help="symbols traded and simulated")
    run.add_argument("--market-share", type=_share, default=0.7, help="share of market orders")
    run.add_argument(
        "--sell-share", type=_share, default=0.4, help="share of sells when the user holds shares"
    )
    run.add_argument("--max-quantity", type=_positive, default=5, help="shares per order, at most")
    run.add_argument(
        "--limit-spread",
        type=_share,
        default=0.003,
        help="limit prices within this fraction of the quote",
    )
    run.add_argument("--deposit", default="1000000", help="cash each user deposits")
    run.add_argument("--max-inflight", type=_positive, default=2000, help="open loop bound")
    run.add_argument(
        "--request-timeout", type=_positive_float, default=30.0, help="placeOrder timeout, s"
    )
    run.add_argument("--seed", type=int, default=1, help="seed of the order flow")
    run.add_argument("--feed-seed", type=int, default=1, help="seed of the simulator")
    run.add_argument(
        "--quote-rate", type=_positive_float, default=5.0, help="quote updates/s per symbol"
    )

    system = parser.add_argument_group("system under test")
    system.add_argument("--database", default="tradeql_bench_orders", help="dropped, recreated")
    system.add_argument("--redis-db", type=int, default=13, help="Redis db, flushed")
    system.add_argument("--batch-ms", type=float, help="TRADEQL_ORDER_BATCH_MS override")
    system.add_argument(
        "--api-workers",
        type=_positive,
        help="API processes (default: TRADEQL_API_WORKERS, else one per core, as tradeql up)",
    )
    system.add_argument(
        "--log-level", default="WARNING", help="TRADEQL_LOG_LEVEL of the processes under test"
    )
    system.add_argument("--log-dir", type=Path, help="where logs go (default: a temp dir)")
    system.add_argument(
        "--pg-sample-ms", type=_positive, default=100, help="pg_stat_activity sampling interval"
    )
    system.add_argument(
        "--setup-concurrency", type=_positive, default=8, help="registrations at once"
    )

    ref = parser.add_argument_group("references")
    ref.add_argument(
        "--no-reference",
        dest="reference",
        action="store_false",
        help="skip the one-transaction reference mutation",
    )
    ref.add_argument("--pgbench", action="store_true", help="also run pgbench tpcb-like")
    ref.add_argument("--pgbench-scale", type=_positive, default=10)
    ref.add_argument("--pgbench-clients", type=_positive, default=8)
    ref.add_argument("--pgbench-threads", type=_positive, default=2)
    ref.add_argument("--pgbench-seconds", type=_positive, default=15)

    prof = parser.add_argument_group("profiling")
    prof.add_argument("--profile", action="store_true", help="profile during each window")
    prof.add_argument(
        "--profile-procs",
        nargs="+",
        choices=("api", "matcher"),
        default=["api", "matcher"],
        help="which processes",
    )
    prof.add_argument(
        "--profile-with",
        choices=("py-spy", "cprofile"),
        default="py-spy",
        help="py-spy from outside (installed into the venv if missing), or cProfile inside the "
        "API and the matcher (restarted under bench/orders_cprofile.py; slows them down)",
    )
    prof.add_argument("--profile-rate", type=_positive, default=100, help="py-spy samples/s")
    prof.add_argument("--profile-top", type=_positive, default=20, help="functions listed")
    prof.add_argument(
        "--no-profile-fallback",
        dest="profile_fallback",
        action="store_false",
        help="no cProfile when py-spy cannot attach",
    )
    parser.add_argument("--json-out", type=Path, help="also write the results as JSON here")

    internal = parser.add_argument_group("internal (the benchmark runs itself with these)")
    internal.add_argument("--client", action="store_true", help="run the client half")
    internal.add_argument("--port", type=int, help="client: the API's port")
    internal.add_argument("--symbols-file", type=Path, help="client: JSON list of symbols")
    internal.add_argument("--run-id", type=int, default=int(time.time()), help="client: key prefix")
    internal.add_argument(
        "--client-max-seconds", type=_positive_float, default=3600.0, help="client: time limit"
    )
    return parser


def client_main(args: argparse.Namespace) -> int:
    from bench.orders_client import main as orders_client_main

    if not args.port or not args.symbols_file:
        raise SystemExit("--client needs --port and --symbols-file")
    raise_nofile_limit()
    symbols = json.loads(args.symbols_file.read_text())
    return orders_client_main(args, symbols)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.client:
        return client_main(args)
    return run_benchmark(args)


if __name__ == "__main__":
    sys.exit(main())
