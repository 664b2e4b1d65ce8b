"""Price-alert benchmark: 1,000,000 active alerts at 10,000 quote updates/s.

Target: an alert is triggered and published less than 100 ms (p99) after the quote that crossed
it was stamped by its source.

Two parts, each printing its figures:

* ``index``, in this process: 1M alerts over 10k symbols in an `AlertIndex`, then a random walk
  of 10k quotes/s (simulated time) through the worker's own parse-and-cross step
  (`workers.alerts.cross_quotes`), one 10 ms batch of stream messages at a time. Figures: build
  time and memory, CPU per quote, per-batch time (what the index adds to a quote's latency),
  triggers/s.
* ``e2e``, the real thing: a fresh database with 1M ACTIVE alerts (one INSERT ... SELECT over
  generate_series), the real checker process(es) (``--checkers N``), and this process appending
  10k quotes/s to the quote streams as the feed does (10 ms batches, one entry per partition),
  each quote stamped with its send time. A separate listener process receives every triggered
  alert on the users' channels and measures source time -> received. Figures: load time and
  memory of the checker, quotes checked/s, triggers/s, latency percentiles, CPU of the checker,
  Redis, PostgreSQL and the machine, the stream backlog, and a check that every alert
  triggered in PostgreSQL was pushed exactly once.

    python -m bench.alerts                          # both parts, defaults below
    python -m bench.alerts --part index --alerts 1000000
    python -m bench.alerts --part e2e --checkers 2 --seconds 60 --volatility 0.001

Thresholds: per symbol, half ABOVE and half BELOW its starting price, spread evenly from 0.1% to
``--spread`` (5%) away; the walk moves each quote's last price by ``--volatility`` (0.05%, one
standard deviation) per update, so a run triggers alerts steadily (about 1k/s by default).

Servers (e2e): DATABASE_URL / REDIS_URL if set, else PostgreSQL and Redis on their standard local
ports; loopback only. It uses its own database (dropped and created again) and Redis db
(``--redis-db``, flushed); it never touches the others.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import math
import multiprocessing
import os
import random
import signal
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import psutil

from bench._metrics import BUCKETS_PER_MS, percentiles, scrape, total
from bench._procs import (
    BenchError,
    CpuWindow,
    Managed,
    Registry,
    child_env,
    sleep_watching,
    wait_until,
)
from bench._setup import STATE_DIR, free_port, server_urls, with_path
from services.infra import keys
from services.infra.streams import quote_stream

TARGET_P99_MS = 100.0
BATCH_SECONDS = 0.01  # the feed's batching window
LATENCY_QS = (0.5, 0.9, 0.99, 0.999, 1.0)
PARTITIONS = 4


# ------------------------------------------------------------------------------------------------
# The market: symbols, starting prices, thresholds, and a random walk of last prices (in cents)


def symbol_name(i: int) -> str:
    return f"SYN{i:05d}"


def base_cents(i: int) -> int:
    """Symbol i's starting price: $10.00 to $499.99, the same in Python and in SQL."""
    return 1000 + (i * 7919) % 49000


def threshold_cents(i: int, j: int, per_symbol: int, spread: float) -> tuple[bool, int]:
    """Alert j of symbol i: (ABOVE?, threshold in cents), as `_INSERT_ALERTS` computes it."""
    above = j % 2 == 0
    offset = spread * (j // 2 + 1) / max(1, per_symbol // 2)
    return above, max(1, round(base_cents(i) * (1 + offset if above else 1 - offset)))


def price_text(cents: int) -> str:
    return f"{cents // 100}.{cents % 100:02d}"


class Walk:
    """Each symbol's last price, moved by a lognormal step per update; symbols in a shuffled
    round robin, so each one updates rate/symbols times a second."""

    def __init__(self, symbols: int, volatility: float, seed: int) -> None:
        self.random = random.Random(seed)
        self.cents = [base_cents(i) for i in range(symbols)]
        self.names = [symbol_name(i) for i in range(symbols)]
        self.order = list(range(symbols))
        self.random.shuffle(self.order)
        self.position = 0
        self.volatility = volatility
        self.volume = 1000

    def records(self, count: int, ts_ns: int) -> dict[int, list[str]]:
        """`count` quote records, each `symbol|bid|ask|bid size|ask size|last|volume|ts`, by
        stream partition (as the feed would write them)."""
        from services.infra.streams import partition_of

        by_partition: dict[int, list[str]] = {}
        gauss, order, cents, names = self.random.gauss, self.order, self.cents, self.names
        for _ in range(count):
            i = order[self.position]
            self.position = (self.position + 1) % len(order)
            last = max(1, round(cents[i] * math.exp(gauss(0.0, self.volatility))))
            cents[i] = last
            self.volume += 1
            name = names[i]
            record = (
                f"{name}|{price_text(max(1, last - 1))}|{price_text(last + 1)}|100|100|"
                f"{price_text(last)}|{self.volume}|{ts_ns}"
            )
            by_partition.setdefault(partition_of(name, PARTITIONS), []).append(record)
        return by_partition


# ------------------------------------------------------------------------------------------------
# Part 1: the index in process


@dataclass
class IndexResult:
    alerts: int = 0
    symbols: int = 0
    build_s: float = 0.0
    memory_mb: float = 0.0
    quotes: int = 0
    triggered: int = 0
    visited: int = 0
    cpu_us_per_quote: float = 0.0
    batch_ms: dict[float, float | None] = field(default_factory=dict)
    core_percent_at_rate: float = 0.0


def run_index(args: argparse.Namespace) -> IndexResult:

    from services.alerts.alert_index import AlertIndex, Condition, WatchedAlert
    from services.infra.streams import StreamMessage
    from workers.alerts import cross_quotes
    from workers.metrics import LogOncePerKind

    per_symbol = args.alerts // args.symbols
    result = IndexResult(alerts=per_symbol * args.symbols, symbols=args.symbols)
    rng = random.Random(args.seed)
    process = psutil.Process()
    gc.collect()
    rss_before = process.memory_info().rss
    started = time.perf_counter()
    gc.disable()  # as the checker loads: no cyclic GC while the index is built, then frozen
    index = AlertIndex()
    for i in range(args.symbols):  # per symbol, so the alert objects are never all in a list
        name = symbol_name(i)
        chunk = []
        for j in range(per_symbol):
            above, cents = threshold_cents(i, j, per_symbol, args.spread)
            chunk.append(
                WatchedAlert(
                    uuid.UUID(int=rng.getrandbits(128), version=4),
                    name,
                    Condition.ABOVE if above else Condition.BELOW,
                    cents * 100,  # cents -> 0.0001 ticks
                    0,
                )
            )
        index.add_many(chunk)
    gc.enable()
    gc.freeze()
    result.build_s = time.perf_counter() - started
    result.memory_mb = (process.memory_info().rss - rss_before) / 1e6
    print(
        f"index: {len(index):,} alerts over {args.symbols:,} symbols built in "
        f"{result.build_s:.1f}s, +{result.memory_mb:,.0f} MB "
        f"({result.memory_mb * 1e6 / max(1, len(index)):.0f} bytes/alert)",
        flush=True,
    )

    walk = Walk(args.symbols, args.volatility, args.seed)
    report = LogOncePerKind("bench")
    per_batch = max(1, round(args.rate * BATCH_SECONDS))
    batches = int(args.index_seconds / BATCH_SECONDS)
    ts_ns = time.time_ns()
    histogram: dict[int, int] = {}
    cpu = 0.0
    index.visited = 0
    gc.collect()
    for _ in range(batches):
        ts_ns += int(BATCH_SECONDS * 1e9)
        messages = [
            StreamMessage(quote_stream(p), "0-0", {"q": "\n".join(records)})
            for p, records in walk.records(per_batch, ts_ns).items()
        ]
        cpu_start, wall_start = time.process_time(), time.perf_counter()
        crossed, checked = cross_quotes(index, messages, report)
        wall = time.perf_counter() - wall_start
        cpu += time.process_time() - cpu_start
        result.quotes += checked
        result.triggered += len(crossed)
        bucket = int(wall * 1000 * BUCKETS_PER_MS)
        histogram[bucket] = histogram.get(bucket, 0) + 1
    result.visited = index.visited
    result.cpu_us_per_quote = cpu / max(1, result.quotes) * 1e6
    result.batch_ms = percentiles(histogram, LATENCY_QS)
    result.core_percent_at_rate = result.cpu_us_per_quote * args.rate / 1e4
    simulated = batches * BATCH_SECONDS
    print(
        f"index: {result.quotes:,} quotes ({args.rate:,}/s for {simulated:.0f} simulated s): "
        f"{result.cpu_us_per_quote:.2f} us CPU/quote (parse + cross) = "
        f"{result.core_percent_at_rate:.1f}% of a core at {args.rate:,}/s; "
        f"{result.triggered:,} triggered ({result.triggered / simulated:,.0f}/s), "
        f"{result.visited:,} heap entries visited",
        flush=True,
    )
    print(
        "index: per 10 ms batch of "
        f"{per_batch} quotes: " + _format_percentiles(result.batch_ms) + " (wall)",
        flush=True,
    )
    return result


# ------------------------------------------------------------------------------------------------
# Part 2: end to end, with the real checker


@dataclass(frozen=True)
class Config:
    admin_database_url: str
    database_url: str
    database: str
    redis_url: str
    log_dir: Path


_INSERT_ALERTS = """
INSERT INTO price_alerts (user_id, symbol, condition, threshold)
SELECT u.id,
       'SYN' || lpad(s.i::text, 5, '0'),
       CASE WHEN a.j % 2 = 0 THEN 'ABOVE' ELSE 'BELOW' END,
       greatest(1, round((1000 + (s.i * 7919) % 49000)
                         * (1 + CASE WHEN a.j % 2 = 0 THEN 1 ELSE -1 END
                              * $3::float8 * (a.j / 2 + 1) / greatest(1, $2::int / 2)))) / 100.0
FROM generate_series(0, $1::int - 1) AS s(i)
CROSS JOIN generate_series(0, $2::int - 1) AS a(j)
JOIN bench_users u ON u.n = (s.i * $2::int + a.j) % $4::int
"""


async def _prepare_database(config: Config, args: argparse.Namespace) -> int:
    import asyncpg

    admin = await asyncpg.connect(config.admin_database_url, timeout=10)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{config.database}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{config.database}"')
    finally:
        await admin.close()
    from gateway.migrate import upgrade

    await asyncio.to_thread(upgrade, config.database_url)
    per_symbol = args.alerts // args.symbols
    conn = await asyncpg.connect(config.database_url, timeout=10)
    try:
        await conn.execute("SET statement_timeout = 0")
        await conn.execute(
            "INSERT INTO securities (symbol, name, exchange) "
            "SELECT 'SYN' || lpad(i::text, 5, '0'), 'Synthetic security ' || i, 'SIM' "
            "FROM generate_series(0, $1::int - 1) AS i",
            args.symbols,
        )
        await conn.execute(
            "CREATE TEMP TABLE bench_users AS WITH made AS ("
            " INSERT INTO users (email, password_hash) "
            " SELECT 'alerts-bench-' || n || '@example.com', 'not-a-hash' "
            " FROM generate_series(0, $1::int - 1) AS n RETURNING id, email) "
            "SELECT id, split_part(split_part(email, '-', 3), '@', 1)::int AS n FROM made",
            args.users,
        )
        await conn.execute("CREATE INDEX ON bench_users (n)")
        started = time.perf_counter()
        await conn.execute(_INSERT_ALERTS, args.symbols, per_symbol, args.spread, args.users)
        inserted = await conn.fetchval("SELECT count(*) FROM price_alerts WHERE status = 'ACTIVE'")
        print(
            f"e2e: {inserted:,} ACTIVE alerts inserted in {time.perf_counter() - started:.1f}s "
            f"({args.users:,} users, {args.symbols:,} symbols)",
            flush=True,
        )
        await conn.execute("VACUUM ANALYZE price_alerts")
        return int(inserted)
    finally:
        await conn.close()


async def _database_counts(config: Config) -> tuple[int, int]:
    import asyncpg

    conn = await asyncpg.connect(config.database_url, timeout=10)
    try:
        triggered = await conn.fetchval(
            "SELECT count(*) FROM price_alerts WHERE status = 'TRIGGERED'"
        )
        audited = await conn.fetchval(
            "SELECT count(*) FROM audit_log WHERE action = 'alert.triggered'"
        )
        return int(triggered), int(audited)
    finally:
        await conn.close()


def _listen(redis_url: str, pattern: str, ready: Any, stop: Any, out: Connection) -> None:
    """A separate process: every triggered alert pushed to any user's channel, as (source time of
    the crossing quote, received - source time). On `stop` it answers on `out` with latency
    histograms (0.1 ms buckets), overall and for quotes stamped within the window it was sent."""
    import redis

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.psubscribe(pattern)  # every user's alert channel, in the deployment's namespace
    pubsub.get_message(timeout=1.0)
    ready.set()
    samples: list[tuple[int, int]] = []
    seen: set[str] = set()
    duplicates = 0
    while not stop.is_set():
        message = pubsub.get_message(timeout=0.2)
        if message is None or message["channel"].endswith(":alerts:changes"):
            continue
        now = time.time_ns()
        data = json.loads(message["data"])
        alert_id = data["alert"]["id"]
        duplicates += alert_id in seen
        seen.add(alert_id)
        quote_ts = int(data["quote_ts"])
        samples.append((quote_ts, now - quote_ts))
    start, end = out.recv() if out.poll(5) else (0, 2**63)
    overall: dict[int, int] = {}
    window: dict[int, int] = {}
    for quote_ts, latency_ns in samples:
        bucket = int(latency_ns / 1e6 * BUCKETS_PER_MS)
        overall[bucket] = overall.get(bucket, 0) + 1
        if start <= quote_ts < end:
            window[bucket] = window.get(bucket, 0) + 1
    out.send({"all": overall, "window": window, "received": len(samples), "dups": duplicates})
    pubsub.close()
    client.close()


async def _feed(
    redis_url: str, args: argparse.Namespace, stop: asyncio.Event, sent: list[int]
) -> None:
    """10 ms batches of rate/100 quotes, one stream entry per partition, paced on the clock."""
    from redis.asyncio import Redis

    redis = Redis.from_url(redis_url, decode_responses=True)
    walk = Walk(args.symbols, args.volatility, args.seed)
    per_batch = max(1, round(args.rate * BATCH_SECONDS))
    next_at = time.monotonic()
    try:
        while not stop.is_set():
            by_partition = walk.records(per_batch, time.time_ns())
            async with redis.pipeline(transaction=False) as pipe:
                for partition, records in by_partition.items():
                    pipe.xadd(
                        quote_stream(partition),
                        {"q": "\n".join(records)},
                        maxlen=10_000,
                        approximate=True,
                    )
                await pipe.execute()
            sent[0] += per_batch
            next_at += BATCH_SECONDS
            delay = next_at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -1.0:  # fell behind by a second: say so, do not burst to catch up
                sent[1] += 1
                next_at = time.monotonic()
    finally:
        await redis.aclose()


def _stream_backlog(redis_url: str) -> tuple[int | None, int]:
    """(entries not yet delivered to the group "alerts", delivered but not acknowledged)."""
    import redis

    client: Any = redis.Redis.from_url(redis_url, decode_responses=True)
    lag: int | None = 0
    pending = 0
    try:
        for p in range(PARTITIONS):
            for group in client.xinfo_groups(quote_stream(p)):
                if group.get("name") != "alerts":
                    continue
                pending += int(group.get("pending") or 0)
                if group.get("lag") is None or lag is None:
                    lag = None
                else:
                    lag += int(group["lag"])
    finally:
        client.close()
    return lag, pending


def _redis_pid(redis_url: str) -> int | None:
    import redis

    with contextlib.suppress(Exception):
        client: Any = redis.Redis.from_url(redis_url)
        pid = int(client.info("server")["process_id"])
        client.close()
        return pid if psutil.pid_exists(pid) else None
    return None


class PostgresCpu:
    """CPU of the PostgreSQL server's processes over a window. Backends come and go (other
    clients connect and leave): each process counts from when it is first seen to its last
    sample, so one that ends in the window neither vanishes nor turns the sum negative."""

    def __init__(self) -> None:
        self._first: dict[int, float] = {}
        self._last: dict[int, float] = {}
        self._wall = 0.0

    def sample(self) -> None:
        for process in psutil.process_iter(["name", "cpu_times"]):
            if not (process.info.get("name") or "").startswith("postgres"):
                continue
            times = process.info.get("cpu_times")
            if times is None:
                continue
            used = times.user + times.system
            self._first.setdefault(process.pid, used)
            self._last[process.pid] = used

    def start(self) -> None:
        self.sample()
        self._wall = time.monotonic()

    def stop(self) -> float:
        """Percent of one core."""
        self.sample()
        used = sum(self._last[pid] - first for pid, first in self._first.items())
        return 100.0 * used / max(time.monotonic() - self._wall, 1e-9)


@dataclass
class E2eResult:
    checkers: int = 0
    alerts: int = 0
    load_s: float = 0.0
    checker_rss_mb: list[float] = field(default_factory=list)
    window_s: float = 0.0
    offered_rate: float = 0.0
    checked_rate: float = 0.0
    triggered_rate: float = 0.0
    raced: float = 0.0
    latency_ms: dict[float, float | None] = field(default_factory=dict)
    latency_all_ms: dict[float, float | None] = field(default_factory=dict)
    checker_p99_bucket_ms: float | None = None
    read_p99_bucket_ms: float | None = None
    record_p99_bucket_ms: float | None = None
    cpu: dict[str, float] = field(default_factory=dict)
    lag: int | None = None
    pending: int = 0
    feeder_stalls: int = 0
    triggered_in_db: int = 0
    audited: int = 0
    pushed: int = 0
    duplicates: int = 0


def run_e2e(args: argparse.Namespace) -> E2eResult:
    base_db, base_redis = server_urls()
    config = Config(
        admin_database_url=base_db,
        database_url=with_path(base_db, f"/{args.database}"),
        database=args.database,
        redis_url=with_path(base_redis, f"/{args.redis_db}"),
        log_dir=STATE_DIR / "alerts-logs",
    )
    keys.configure(config.database_url)  # the processes under test derive the same namespace
    registry = Registry(STATE_DIR / "alerts-pids.json")
    ended = registry.end_leftovers()
    if ended:
        print(f"ended {len(ended)} processes a previous run left: {ended}", flush=True)
    result = E2eResult(checkers=args.checkers)
    result.alerts = asyncio.run(_prepare_database(config, args))
    import redis

    client = redis.Redis.from_url(config.redis_url)
    client.flushdb()
    client.close()

    env = child_env(
        {
            "DATABASE_URL": config.database_url,
            "REDIS_URL": config.redis_url,
            "TRADEQL_LOG_JSON": "false",
            "TRADEQL_QUOTE_PARTITIONS": str(PARTITIONS),
            "PYTHONPATH": str(Path(__file__).resolve().parent.parent),
        }
    )
    ports = [free_port() for _ in range(args.checkers)]
    checkers = [
        Managed(
            f"checker-{n}",
            [sys.executable, "-m", "bench.alerts", "--run-checker", "--metrics-port", str(port)],
            env,
            config.log_dir / f"checker-{n}.log",
            registry,
        )
        for n, port in enumerate(ports)
    ]
    ctx = multiprocessing.get_context("spawn")
    listener_ready, listener_stop = ctx.Event(), ctx.Event()
    ours, theirs = ctx.Pipe()
    listener = ctx.Process(
        target=_listen,
        args=(config.redis_url, keys.ns("alerts:*"), listener_ready, listener_stop, theirs),
    )
    try:
        started = time.perf_counter()
        for checker in checkers:
            checker.start()

        def loaded() -> bool:
            return all(
                total(scrape(port), "tradeql_alerts_watched") >= result.alerts for port in ports
            )

        wait_until("checkers loading the alerts", checkers, loaded, timeout=600, interval=0.5)
        result.load_s = time.perf_counter() - started
        result.checker_rss_mb = [psutil.Process(c.pid).memory_info().rss / 1e6 for c in checkers]
        print(
            f"e2e: {args.checkers} checker(s) loaded {result.alerts:,} alerts in "
            f"{result.load_s:.1f}s; RSS "
            + ", ".join(f"{mb:,.0f} MB" for mb in result.checker_rss_mb),
            flush=True,
        )
        listener.start()
        if not listener_ready.wait(10):
            raise BenchError("the latency listener did not start")
        _measure(args, config, checkers, ports, ours, listener_stop, result)
    finally:
        for checker in checkers:
            checker.stop()
        listener_stop.set()
        if listener.is_alive():
            listener.join(10)
        if listener.is_alive():
            listener.terminate()
    result.triggered_in_db, result.audited = asyncio.run(_database_counts(config))
    _print_e2e(args, result)
    return result


def _measure(
    args: argparse.Namespace,
    config: Config,
    checkers: Sequence[Managed],
    ports: Sequence[int],
    listener: Connection,
    listener_stop: Any,
    result: E2eResult,
) -> None:
    stop = asyncio.Event()
    sent = [0, 0]

    async def feed_and_measure() -> tuple[int, int]:
        feeder = asyncio.create_task(_feed(config.redis_url, args, stop, sent))
        await asyncio.sleep(args.warmup)
        redis_pid = _redis_pid(config.redis_url)
        window = CpuWindow(
            {
                "checkers": [c.pid for c in checkers],
                "redis": [redis_pid] if redis_pid else [],
                "bench feeder": [os.getpid()],
            }
        )
        postgres = PostgresCpu()
        before = [scrape(p) for p in ports]
        sent_before = sent[0]
        window_start_ns = time.time_ns()
        window.start()
        postgres.start()
        t0 = time.monotonic()
        await asyncio.to_thread(  # the feeder keeps running in this loop
            sleep_watching, args.seconds, checkers, 0.5, postgres.sample
        )
        result.window_s = time.monotonic() - t0
        result.cpu = window.stop()
        result.cpu["postgres (all clients)"] = postgres.stop()
        window_end_ns = time.time_ns()
        after = [scrape(p) for p in ports]
        result.offered_rate = (sent[0] - sent_before) / result.window_s
        window_ns = (window_start_ns, window_end_ns)

        def delta(name: str) -> float:
            return sum(total(a, name) - total(b, name) for a, b in zip(after, before, strict=True))

        result.checked_rate = delta("tradeql_alert_quotes_checked_total") / result.window_s
        result.triggered_rate = delta("tradeql_alerts_triggered_total") / result.window_s
        result.raced = delta("tradeql_alert_triggers_lost_total")
        result.checker_p99_bucket_ms = _checker_p99(before, after, "tradeql_alert_trigger_seconds")
        result.read_p99_bucket_ms = _checker_p99(
            before, after, "tradeql_alert_quote_age_at_read_seconds"
        )
        result.record_p99_bucket_ms = _checker_p99(before, after, "tradeql_alert_record_seconds")
        result.lag, result.pending = _stream_backlog(config.redis_url)
        stop.set()
        await feeder
        return window_ns

    window_ns = asyncio.run(feed_and_measure())
    result.feeder_stalls = sent[1]
    deadline = time.monotonic() + 60  # the checkers finish what the feed wrote
    while time.monotonic() < deadline and _stream_backlog(config.redis_url) != (0, 0):
        time.sleep(0.2)
    time.sleep(1.0)  # and the last pushes arrive
    listener_stop.set()
    listener.send(window_ns)
    if not listener.poll(30):
        raise BenchError("the latency listener did not answer")
    data = listener.recv()
    result.latency_ms = percentiles(data["window"], LATENCY_QS)
    result.latency_all_ms = percentiles(data["all"], LATENCY_QS)
    result.pushed, result.duplicates = data["received"], data["dups"]


def _checker_p99(before: list[Any], after: list[Any], name: str) -> float | None:
    """The upper bound (ms) of the bucket holding the p99 of a checker histogram."""
    from bench._metrics import histogram_delta, histogram_quantile

    rows: dict[float, float] = {}
    for b, a in zip(before, after, strict=True):
        for bound, count in histogram_delta(b, a, name):
            rows[bound] = rows.get(bound, 0.0) + count
    quantile = histogram_quantile(sorted(rows.items()), 0.99)
    return None if quantile is None else quantile * 1000


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} ms"


def _format_percentiles(values: dict[float, float | None]) -> str:
    names = {0.5: "p50", 0.9: "p90", 0.99: "p99", 0.999: "p99.9", 1.0: "max"}
    return ", ".join(
        f"{names.get(q, q)} {v:.1f} ms" if v is not None else f"{names.get(q, q)} -"
        for q, v in values.items()
    )


def _print_e2e(args: argparse.Namespace, r: E2eResult) -> None:
    print(
        f"e2e: window {r.window_s:.0f}s: offered {r.offered_rate:,.0f} quotes/s, checked "
        f"{r.checked_rate:,.0f}/s, triggered {r.triggered_rate:,.0f} alerts/s "
        f"({r.raced:,.0f} crossings lost to another checker)",
        flush=True,
    )
    p99 = r.latency_ms.get(0.99)
    verdict = "" if p99 is None else (" MEETS" if p99 < TARGET_P99_MS else " MISSES")
    print(
        "e2e: quote source time -> triggered alert received: "
        + _format_percentiles(r.latency_ms)
        + f";{verdict} the p99 < {TARGET_P99_MS:.0f} ms target",
        flush=True,
    )
    print(
        "e2e: the checker's histograms (p99 bucket bound): source -> published "
        f"<= {_ms(r.checker_p99_bucket_ms)}, source -> read by the checker "
        f"<= {_ms(r.read_p99_bucket_ms)}, record + publish a batch <= "
        f"{_ms(r.record_p99_bucket_ms)}",
        flush=True,
    )
    print(
        "e2e: CPU (% of one core): "
        + ", ".join(f"{name} {value:.1f}" for name, value in r.cpu.items())
        + f" (machine has {psutil.cpu_count()} cores)",
        flush=True,
    )
    print(
        f"e2e: stream backlog at the end: lag {r.lag}, pending {r.pending}; "
        f"feeder stalls {r.feeder_stalls}",
        flush=True,
    )
    ok = r.pushed == r.triggered_in_db == r.audited and r.duplicates == 0
    print(
        f"e2e: exactly once: {r.triggered_in_db:,} TRIGGERED in PostgreSQL, {r.audited:,} audit "
        f"rows, {r.pushed:,} pushes received, {r.duplicates} duplicates: "
        + ("OK" if ok else "MISMATCH"),
        flush=True,
    )


# ------------------------------------------------------------------------------------------------
# The checker process


def run_checker(metrics_port: int) -> None:
    from services.infra.settings import get_settings
    from workers.alerts import AlertChecker
    from workers.runner import run_worker

    settings = get_settings()
    from gateway.logging import configure_logging

    configure_logging(settings.log_level, json_lines=settings.log_json)
    run_worker(
        "alert checker",
        settings,
        lambda services, stop: AlertChecker(services).run(stop),
        metrics_port=metrics_port,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=["index", "e2e", "both"], default="both")
    parser.add_argument("--alerts", type=int, default=1_000_000)
    parser.add_argument("--symbols", type=int, default=10_000)
    parser.add_argument("--rate", type=int, default=10_000, help="quote updates per second")
    parser.add_argument("--spread", type=float, default=0.05, help="farthest threshold, fraction")
    parser.add_argument("--volatility", type=float, default=0.0005, help="per update, fraction")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--index-seconds", type=float, default=30.0, help="simulated seconds")
    parser.add_argument("--seconds", type=float, default=30.0, help="e2e measuring window")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--checkers", type=int, default=1)
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--database", default="tradeql_bench_alerts", help="dropped, recreated")
    parser.add_argument("--redis-db", type=int, default=11, help="Redis db, flushed")
    parser.add_argument("--run-checker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--metrics-port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.run_checker:
        run_checker(args.metrics_port)
        return 0
    if args.symbols < 1 or args.alerts < args.symbols:
        parser.error("need at least one alert per symbol")
    try:
        if args.part in ("index", "both"):
            run_index(args)
        if args.part in ("e2e", "both"):
            run_e2e(args)
    except BenchError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
