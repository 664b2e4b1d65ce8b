"""Price-alert benchmark: 1,000,000 active alerts at 10,000 quote updates/s. Target: an alert
triggered and published less than 100 ms (p99) after the quote that crossed it was stamped.

* ``index``, in this process: 1M alerts over 10k symbols in an `AlertIndex`, then a random walk
  of 10k quotes/s (simulated time) through the worker's parse-and-cross step in 10 ms batches:
  build time and memory, CPU per quote, triggers/s.
* ``e2e``: 1M ACTIVE alerts in a recreated database, the real checker(s) (`tradeql alerts`,
  ``--checkers N``), and this process appending 10k quotes/s to the quote streams as the feed
  does; a listener process times every triggered alert from its quote's stamp: load time and
  memory, quotes checked/s, triggers/s, latency, CPU, and that every alert triggered in
  PostgreSQL was pushed exactly once.

Thresholds: per symbol, half ABOVE and half BELOW its starting price, 0.1% to ``--spread`` away;
each update moves a price by ``--volatility`` (one standard deviation), ~1k triggers/s by default.

    python -m bench.alerts --part e2e --checkers 2 --duration 60 --volatility 0.001
"""

from __future__ import annotations

import argparse
import asyncio
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
from multiprocessing.connection import Connection
from typing import Any

import psutil

from bench import harness as h

TARGET_P99_MS = 100.0
BATCH_SECONDS = 0.01  # the feed's batching window
LATENCY_QS = {0.5: "p50", 0.9: "p90", 0.99: "p99", 0.999: "p99.9", 1.0: "max"}
PARTITIONS = 4


def symbol_name(i: int) -> str:
    return f"SYN{i:05d}"


def base_cents(i: int) -> int:
    """Symbol i's starting price: $10.00 to $499.99, the same in Python and in SQL."""
    return 1000 + (i * 7919) % 49000


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
        self.position, self.volatility, self.volume = 0, volatility, 1000

    def records(self, count: int, ts_ns: int) -> dict[int, list[str]]:
        """`count` quote records, `symbol|bid|ask|bid size|ask size|last|volume|ts`, by stream
        partition (as the feed would write them)."""
        from services.infra.streams import partition_of

        by_partition: dict[int, list[str]] = {}
        gauss, order, cents, names = self.random.gauss, self.order, self.cents, self.names
        for _ in range(count):
            i = order[self.position]
            self.position = (self.position + 1) % len(order)
            last = cents[i] = max(1, round(cents[i] * math.exp(gauss(0.0, self.volatility))))
            self.volume += 1
            record = (f"{names[i]}|{price_text(max(1, last - 1))}|{price_text(last + 1)}|100|100|"
                      f"{price_text(last)}|{self.volume}|{ts_ns}")  # fmt: skip
            by_partition.setdefault(partition_of(names[i], PARTITIONS), []).append(record)
        return by_partition


# Part 1: the index in process


def run_index(args: argparse.Namespace) -> None:
    from services.alerts.alert_index import AlertIndex, Condition, WatchedAlert
    from services.infra.streams import StreamMessage, quote_stream
    from workers.alerts import cross_quotes
    from workers.metrics import LogOncePerKind

    per_symbol = args.alerts // args.symbols
    rng = random.Random(args.seed)
    process = psutil.Process()
    gc.collect()
    rss_before = process.memory_info().rss
    started = time.perf_counter()
    gc.disable()  # as the checker loads: no cyclic GC while the index is built, then frozen
    index = AlertIndex()
    for i in range(args.symbols):  # per symbol, so the alert objects are never all in a list
        chunk = []
        for j in range(per_symbol):  # as _INSERT_ALERTS computes them
            above = j % 2 == 0
            offset = args.spread * (j // 2 + 1) / max(1, per_symbol // 2)
            cents = max(1, round(base_cents(i) * (1 + offset if above else 1 - offset)))
            condition = Condition.ABOVE if above else Condition.BELOW
            alert_id = uuid.UUID(int=rng.getrandbits(128), version=4)
            chunk.append(WatchedAlert(alert_id, symbol_name(i), condition, cents * 100, 0))  # ticks
        index.add_many(chunk)
    gc.enable()
    gc.freeze()
    build_s = time.perf_counter() - started
    memory_mb = (process.memory_info().rss - rss_before) / 1e6
    print(f"index: {len(index):,} alerts over {args.symbols:,} symbols built in {build_s:.1f}s, "
          f"+{memory_mb:,.0f} MB ({memory_mb * 1e6 / max(1, len(index)):.0f} bytes/alert)",
          flush=True)  # fmt: skip
    walk = Walk(args.symbols, args.volatility, args.seed)
    report = LogOncePerKind("bench")
    per_batch = max(1, round(args.rate * BATCH_SECONDS))
    batches = int(args.index_seconds / BATCH_SECONDS)
    ts_ns, cpu, quotes, triggered = time.time_ns(), 0.0, 0, 0
    index.visited = 0
    gc.collect()
    for _ in range(batches):
        ts_ns += int(BATCH_SECONDS * 1e9)
        messages = [StreamMessage(quote_stream(p), "0-0", {"q": "\n".join(records)})
                    for p, records in walk.records(per_batch, ts_ns).items()]  # fmt: skip
        cpu_start = time.process_time()
        crossed, checked = cross_quotes(index, messages, report)
        cpu += time.process_time() - cpu_start
        quotes, triggered = quotes + checked, triggered + len(crossed)
    us_per_quote = cpu / max(1, quotes) * 1e6
    simulated = batches * BATCH_SECONDS
    print(f"index: {quotes:,} quotes ({args.rate:,}/s for {simulated:.0f} simulated s): "
          f"{us_per_quote:.2f} us CPU/quote (parse + cross) = "
          f"{us_per_quote * args.rate / 1e4:.1f}% of a core at {args.rate:,}/s; {triggered:,} "
          f"triggered ({triggered / simulated:,.0f}/s), {index.visited:,} heap entries visited",
          flush=True)  # fmt: skip


# Part 2: end to end, with the real checker
_INSERT_ALERTS = """
INSERT INTO price_alerts (user_id, symbol, condition, threshold)
SELECT ($4::uuid[])[(s.i * $2::int + a.j) % cardinality($4::uuid[]) + 1],
       'SYN' || lpad(s.i::text, 5, '0'),
       CASE WHEN a.j % 2 = 0 THEN 'ABOVE' ELSE 'BELOW' END,
       greatest(1, round((1000 + (s.i * 7919) % 49000)
                         * (1 + CASE WHEN a.j % 2 = 0 THEN 1 ELSE -1 END
                              * $3::float8 * (a.j / 2 + 1) / greatest(1, $2::int / 2)))) / 100.0
FROM generate_series(0, $1::int - 1) AS s(i)
CROSS JOIN generate_series(0, $2::int - 1) AS a(j)
"""


async def prepare_database(url: str, args: argparse.Namespace) -> int:
    import asyncpg

    conn = await asyncpg.connect(url, timeout=10)
    try:
        await conn.execute("SET statement_timeout = 0")
        await conn.execute(
            "INSERT INTO securities (symbol, name, exchange) SELECT 'SYN' || lpad(i::text, 5, "
            "'0'), 'Synthetic security ' || i, 'SIM' FROM generate_series(0, $1::int - 1) AS i",
            args.symbols,
        )
        users = [uuid.uuid4() for _ in range(args.users)]
        await conn.execute(
            "INSERT INTO users (id, email, password_hash) SELECT id, 'alerts-bench-' || n || "
            "'@example.com', 'not-a-hash' FROM unnest($1::uuid[]) WITH ORDINALITY AS u(id, n)",
            users,
        )
        started = time.perf_counter()
        per_symbol = args.alerts // args.symbols
        await conn.execute(_INSERT_ALERTS, args.symbols, per_symbol, args.spread, users)
        active = "SELECT count(*) FROM price_alerts WHERE status = 'ACTIVE'"
        inserted = int(await conn.fetchval(active))
        print(f"e2e: {inserted:,} ACTIVE alerts inserted in {time.perf_counter() - started:.1f}s "
              f"({args.users:,} users, {args.symbols:,} symbols)", flush=True)  # fmt: skip
        await conn.execute("VACUUM ANALYZE price_alerts")
        return inserted
    finally:
        await conn.close()


def listen(redis_url: str, pattern: str, ready: Any, stop: Any, out: Connection) -> None:
    """A separate process: every triggered alert pushed to any user's channel, as (source time of
    the crossing quote, received - source time). On `stop` it answers on `out` with the latency
    histogram (0.1 ms buckets) of the quotes stamped within the window it was sent."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    client = h.redis_client(redis_url)
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
        duplicates += data["alert"]["id"] in seen
        seen.add(data["alert"]["id"])
        samples.append((int(data["quote_ts"]), now - int(data["quote_ts"])))
    start, end = out.recv() if out.poll(5) else (0, 2**63)
    window: dict[int, int] = {}
    for quote_ts, latency_ns in samples:
        if start <= quote_ts < end:
            h.observe(window, latency_ns / 1e6)
    out.send({"window": window, "received": len(samples), "dups": duplicates})
    pubsub.close()
    client.close()


async def feed(redis_url: str, args: argparse.Namespace, stop: asyncio.Event,
               sent: list[int]) -> None:  # fmt: skip
    """10 ms batches of rate/100 quotes, one stream entry per partition, paced on the clock."""
    from redis.asyncio import Redis

    from services.infra.streams import quote_stream

    redis = Redis.from_url(redis_url, decode_responses=True)
    walk = Walk(args.symbols, args.volatility, args.seed)
    per_batch = max(1, round(args.rate * BATCH_SECONDS))
    next_at = time.monotonic()
    try:
        while not stop.is_set():
            async with redis.pipeline(transaction=False) as pipe:
                for partition, records in walk.records(per_batch, time.time_ns()).items():
                    pipe.xadd(quote_stream(partition), {"q": "\n".join(records)},
                              maxlen=10_000, approximate=True)  # fmt: skip
                await pipe.execute()
            sent[0] += per_batch
            next_at += BATCH_SECONDS
            if (delay := next_at - time.monotonic()) > 0:
                await asyncio.sleep(delay)
            elif delay < -1.0:  # fell behind by a second: say so, do not burst to catch up
                sent[1] += 1
                next_at = time.monotonic()
    finally:
        await redis.aclose()


def run_e2e(args: argparse.Namespace, run: h.Run) -> dict[str, Any]:
    """The end-to-end part; its figures (also printed)."""
    from services.infra import keys

    env = h.bench_env(args)
    env |= {"TRADEQL_LOG_JSON": "false", "TRADEQL_QUOTE_PARTITIONS": str(PARTITIONS)}
    url, redis_url = env["DATABASE_URL"], env["REDIS_URL"]
    h.recreate_database(h.server_urls()[0], args.database)
    h.migrate(url)
    alerts = asyncio.run(prepare_database(url, args))
    h.redis_client(redis_url).flushdb()
    ports = [h.free_port() for _ in range(args.checkers)]
    started = time.perf_counter()
    argv = [h.tradeql_argv("alerts", "--metrics-port", str(port)) for port in ports]
    checkers = [run.start(f"checker-{n}", a, env) for n, a in enumerate(argv)]
    h.wait_until("checkers loading the alerts", checkers, timeout=600, interval=0.5,
                 check=lambda: all(h.total(h.scrape(port), "tradeql_alerts_watched") >= alerts
                                   for port in ports))  # fmt: skip
    rss = ", ".join(f"{psutil.Process(c.pid).memory_info().rss / 1e6:,.0f} MB" for c in checkers)
    print(f"e2e: {args.checkers} checker(s) loaded {alerts:,} alerts in "
          f"{time.perf_counter() - started:.1f}s; RSS {rss}", flush=True)  # fmt: skip
    ctx = multiprocessing.get_context("spawn")
    ready, stop_listening = ctx.Event(), ctx.Event()
    ours, theirs = ctx.Pipe()
    listener_args = (redis_url, keys.ns("alerts:*"), ready, stop_listening, theirs)
    listener = ctx.Process(target=listen, args=listener_args)
    listener.start()
    try:
        if not ready.wait(10):
            raise h.BenchError("the latency listener did not start")
        return measure(args, env, checkers, ports, ours, stop_listening)
    finally:
        stop_listening.set()
        listener.join(10)
        if listener.is_alive():
            listener.terminate()


def measure(args: argparse.Namespace, env: dict[str, str], checkers: list[h.Managed],
            ports: list[int], listener: Connection,
            stop_listening: Any) -> dict[str, Any]:  # fmt: skip
    from services.infra.streams import quote_stream

    redis_url, sent, stop = env["REDIS_URL"], [0, 0], asyncio.Event()
    streams = [quote_stream(p) for p in range(PARTITIONS)]

    def backlog() -> tuple[int | None, int]:
        """(entries not yet delivered to the group "alerts", delivered but not acknowledged)."""
        return h.group_backlog(h.redis_client(redis_url), streams, "alerts")[:2]

    postmaster = h.postmaster_pid(h.server_urls()[0])
    groups: dict[str, Any] = {"checkers": [c.pid for c in checkers], "bench feeder": [os.getpid()]}
    if (rpid := h.redis_pid(redis_url)) is not None:
        groups["redis"] = [rpid]
    cpu = h.CpuWindow(groups | {"postgres (all clients)": h.pg_tree(postmaster)})
    counters = {"checked": "tradeql_alert_quotes_checked_total",
                "triggered": "tradeql_alerts_triggered_total",
                "lost": "tradeql_alert_triggers_lost_total"}  # fmt: skip

    async def feed_and_measure() -> dict[str, Any]:
        feeder = asyncio.create_task(feed(redis_url, args, stop, sent))
        await asyncio.sleep(args.warmup)
        before, sent_before, start_ns = [h.scrape(p) for p in ports], sent[0], time.time_ns()
        cpu.start()
        t0 = time.monotonic()
        # the feeder keeps running in this loop meanwhile
        await asyncio.to_thread(h.sleep_watching, args.duration, checkers, 0.5, cpu.tick)
        window = time.monotonic() - t0
        out = {"window": window, "cpu": cpu.stop(), "ns": (start_ns, time.time_ns()),
               "offered": (sent[0] - sent_before) / window}  # fmt: skip
        after = [h.scrape(p) for p in ports]
        for key, name in counters.items():
            out[key] = sum(h.total(a, name) - h.total(b, name)
                           for a, b in zip(after, before, strict=True))  # fmt: skip
        out["backlog"] = backlog()
        stop.set()
        await feeder
        return out

    r = asyncio.run(feed_and_measure())
    for _ in range(300):  # the checkers finish what the feed wrote, at most 60 s
        if backlog() == (0, 0):
            break
        time.sleep(0.2)
    time.sleep(1.0)  # and the last pushes arrive
    stop_listening.set()
    listener.send(r["ns"])
    if not listener.poll(30):
        raise h.BenchError("the latency listener did not answer")
    data = listener.recv()
    count = "SELECT count(*) FROM {} WHERE {}"
    triggered = h.pg_fetch(url := env["DATABASE_URL"],
                           count.format("price_alerts", "status = 'TRIGGERED'"))[0][0]  # fmt: skip
    audited = h.pg_fetch(url, count.format("audit_log", "action = 'alert.triggered'"))[0][0]
    window = r["window"]
    print(f"e2e: window {window:.0f}s: offered {r['offered']:,.0f} quotes/s, checked "
          f"{r['checked'] / window:,.0f}/s, triggered {r['triggered'] / window:,.0f} "
          f"alerts/s ({r['lost']:,.0f} crossings lost to another checker)", flush=True)  # fmt: skip
    latency = h.percentiles(data["window"], LATENCY_QS)
    p99 = latency.get(0.99)
    verdict = "" if p99 is None else (" MEETS" if p99 < TARGET_P99_MS else " MISSES")
    shown = ", ".join(f"{LATENCY_QS[q]} {h.fmt(v)} ms" for q, v in latency.items())
    print(f"e2e: quote source time -> triggered alert received: {shown};"
          f"{verdict} the p99 < {TARGET_P99_MS:.0f} ms target", flush=True)  # fmt: skip
    print("e2e: CPU (% of one core): " + ", ".join(f"{k} {v:.1f}" for k, v in r["cpu"].items())
          + f" (machine has {psutil.cpu_count()} cores)", flush=True)  # fmt: skip
    print(f"e2e: stream backlog at the end: lag {r['backlog'][0]}, pending {r['backlog'][1]}; "
          f"feeder stalls {sent[1]}", flush=True)  # fmt: skip
    ok = data["received"] == triggered == audited and data["dups"] == 0
    print(f"e2e: exactly once: {triggered:,} TRIGGERED in PostgreSQL, {audited:,} audit rows, "
          f"{data['received']:,} pushes received, {data['dups']} duplicates: "
          f"{'OK' if ok else 'MISMATCH'}", flush=True)  # fmt: skip
    return {"window_s": window, "offered_per_s": r["offered"], "cpu": r["cpu"],
            "checked_per_s": r["checked"] / window, "triggered_per_s": r["triggered"] / window,
            "latency_ms": {LATENCY_QS[q]: v for q, v in latency.items()},
            "exactly_once": ok}  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    p = h.parser("alerts", __doc__, database="tradeql_bench_alerts", redis_db=11, duration=30.0,
                 warmup=3.0, profile=False)  # fmt: skip
    p.add_argument("--part", choices=["index", "e2e", "both"], default="both")
    p.add_argument("--alerts", type=h.positive, default=1_000_000)
    p.add_argument("--symbols", type=h.positive, default=10_000)
    p.add_argument("--rate", type=h.positive, default=10_000, help="quote updates per second")
    p.add_argument("--spread", type=float, default=0.05, help="farthest threshold, fraction")
    p.add_argument("--volatility", type=float, default=0.0005, help="per update, fraction")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--index-seconds", type=h.positive_float, default=30.0,
                   help="simulated seconds")  # fmt: skip
    p.add_argument("--checkers", type=h.positive, default=1)
    p.add_argument("--users", type=h.positive, default=1000)
    return p


def main() -> int:
    p = build_parser()
    args = p.parse_args()
    if args.alerts < args.symbols:
        p.error("need at least one alert per symbol")
    run = h.Run("alerts", args.log_dir)

    def body() -> int:
        if args.part in ("index", "both"):
            run_index(args)
        if args.part in ("e2e", "both"):
            run_e2e(args, run)
        return 0

    return h.execute(body, run.stop_all)


if __name__ == "__main__":
    sys.exit(main())
