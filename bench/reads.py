"""Portfolio and order-history queries from 200 concurrent signed-in users (50 positions, 500
orders each): req/s and p50/p95/p99. Target: portfolio p95 < 20 ms at 1,000 req/s.

Setup, in seconds and never through the API: a recreated database, `tradeql securities defaults
--synthetic 100`, bench/reads_seed.py's set-based SQL and a quote per symbol. A client process
(this module with `--client`) then runs each scenario against the API (`--api-workers N`;
`--live-quotes` adds the simulated feed and the quote cache, so quotes move as in market hours):
portfolio or order history (each request the user's next page), closed loop (`--concurrency`
users) or open loop (`--rate`, `--orders-rate`: a fixed schedule, latency from the scheduled
time). Each reports req/s, latency, errors, CPU per request of the API and of PostgreSQL, and
PostgreSQL transactions and sessions per request.

    python -m bench.reads --api-workers 2 --live-quotes      # the figures in docs/benchmarks.md
    python -m bench.reads --reuse-setup --skip-portfolio --profile
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from bench import harness as h
from bench.client import (
    HttpConnection,
    HttpError,
    Window,
    bearer,
    drive,
    emit,
    post_graphql,
    run_client,
    serve,
)

TARGET_RATE, TARGET_P95_MS = 1000.0, 20.0
QS = (0.5, 0.95, 0.99)
PORTFOLIO = ("query Portfolio { portfolio { cash buyingPower marketValue equity realizedPnl "
             "unrealizedPnl positions { symbol quantity averageCost marketValue unrealizedPnl "
             "quote { last } } } }")  # fmt: skip
ORDERS = ("query Orders($after: String) { orders(first: 50, after: $after) { edges { node { id "
          "status filledQuantity averageFillPrice executions { price } } } "
          "pageInfo { hasNextPage endCursor } } }")  # fmt: skip
BACKENDS = "postgres (bench db backends)"


# The client process: signed-in users reading


@dataclass
class User:
    auth: bytes
    cursor: str | None = None  # the next page of the history walk (None: the first)


@dataclass
class ReadsWindow(Window):
    sent: int = 0
    ok: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    sample_errors: list[str] = field(default_factory=list)
    hist: dict[int, int] = field(default_factory=dict)  # from the scheduled (closed: send) time
    missing_quotes: int = 0  # portfolio responses with a position without a quote


class Reader:
    def __init__(self, args: argparse.Namespace) -> None:
        self.port, self.timeout = args.port, args.timeout
        self.users = [User(bearer(t)) for t in json.loads(Path(args.tokens).read_text())]
        self.portfolio = orjson.dumps({"query": PORTFOLIO, "operationName": "Portfolio"})
        self.window = ReadsWindow()
        self.positions: int | None = None

    def orders_body(self, cursor: str | None) -> bytes:
        variables = {"after": cursor}
        return orjson.dumps({"query": ORDERS, "operationName": "Orders", "variables": variables})

    async def one(self, conn: HttpConnection, kind: str, user: User, due: float) -> None:
        """One request, timed and counted if it was sent inside the measuring window."""
        window, measured = self.window, self.window.measuring
        body = self.portfolio if kind == "portfolio" else self.orders_body(user.cursor)
        window.sent += measured
        try:
            async with asyncio.timeout(self.timeout):
                data, _ = await post_graphql(conn, body, user.auth)
            if kind == "portfolio":
                positions = data["portfolio"]["positions"]
                if self.positions is not None and len(positions) != self.positions:
                    raise HttpError(f"{len(positions)} positions, {self.positions} expected")
                window.missing_quotes += measured and any(p["quote"] is None for p in positions)
            else:
                info = data["orders"]["pageInfo"]
                user.cursor = info["endCursor"] if info["hasNextPage"] else None
        except (HttpError, TimeoutError, KeyError, TypeError, orjson.JSONDecodeError) as exc:
            if measured:  # "HTTP 503", "GraphQL errors", "TimeoutError"...
                text = str(exc) if isinstance(exc, HttpError) else ""
                what = text.partition(":")[0] or type(exc).__name__
                if what not in window.errors and len(window.sample_errors) < 5:
                    sample = text or f"{what}: {exc or 'no answer in time'}"
                    window.sample_errors.append(sample[:300])
                window.errors[what] += 1
            return
        if measured:
            window.ok += 1
            h.observe(window.hist, (time.perf_counter() - due) * 1000)

    async def run(self, text: str) -> str:
        spec = json.loads(text)
        kind, users = spec["kind"], self.users
        self.window = ReadsWindow()
        for user in users:
            user.cursor = None
        workers = int(spec.get("concurrency") or 1)

        async def one(conn: HttpConnection, due: float, worker: int, n: int) -> None:
            if spec["mode"] == "closed":
                # worker w takes turns among its own users (every w-th one): fewer workers than
                # users still spread the load over every session and never share a walk
                mine = users[worker % len(users) :: workers] or [users[worker % len(users)]]
                await self.one(conn, kind, mine[n % len(mine)], due)
            else:
                await self.one(conn, kind, users[n % len(users)], due)

        spec["clients"] = len(users)  # every user on connections of their own, as a browser
        await drive(self.port, spec, one, self.window, emit, self.timeout)
        return "RESULT " + json.dumps(vars(self.window) | {"window_s": self.window.seconds})

    async def check(self) -> dict[str, Any]:
        """What user 0 sees: positions with quotes, and every page of its order history."""
        conn, auth = HttpConnection(self.port), self.users[0].auth
        try:
            portfolio = (await post_graphql(conn, self.portfolio, auth))[0]["portfolio"]
            positions = portfolio["positions"]
            self.positions = len(positions)
            orders = executions = pages = 0
            cursor: str | None = None
            for _ in range(1000):
                page = (await post_graphql(conn, self.orders_body(cursor), auth))[0]["orders"]
                pages += 1
                orders += len(page["edges"])
                executions += sum(len(e["node"]["executions"]) for e in page["edges"])
                if not page["pageInfo"]["hasNextPage"]:
                    break
                cursor = page["pageInfo"]["endCursor"]
            return {
                "positions": len(positions), "equity": portfolio["equity"],
                "quoted_positions": sum(1 for p in positions if p["quote"] and p["quote"]["last"]),
                "orders": orders, "executions": executions, "pages": pages,
            }  # fmt: skip
        finally:
            conn.close()


# Setup


def setup(env: dict[str, str], args: argparse.Namespace) -> Path:
    """The database, Redis and data; the file of the users' session tokens."""
    from bench import reads_seed

    url, started = env["DATABASE_URL"], time.perf_counter()
    files = [h.STATE_DIR / f"reads-{what}-{args.database}.json" for what in ("tokens", "symbols")]
    tokens: list[str] | None = None
    if args.reuse_setup and all(path.exists() for path in files):
        tokens, symbols = (json.loads(path.read_text()) for path in files)
        try:
            users = h.pg_fetch(url, "SELECT count(*) FROM users")[0][0]
        except Exception:  # missing or not migrated: seed again
            users = None
        if users == len(tokens):
            print(f"reusing database {args.database} and its {len(tokens)} sessions", flush=True)
            h.migrate(url)  # a run of older code may have left it behind
        else:
            tokens = None
    if tokens is None:
        h.recreate_database(h.server_urls()[0], args.database)
        h.migrate(url)
        print(f"database {args.database}: dropped, created, migrated in "
              f"{time.perf_counter() - started:.1f} s", flush=True)  # fmt: skip
        h.run_tradeql(env, "securities", "defaults", "--synthetic", str(args.synthetic))
        plan = reads_seed.SeedPlan(args.users, args.positions, args.orders)
        seeded = reads_seed.seed_database(url, plan)
        print(f"seeded {args.users} users: {seeded.orders:,} orders, {seeded.executions:,} "
              f"executions, {seeded.positions:,} positions, {seeded.ledger_entries:,} ledger "
              f"entries in {seeded.seconds:.1f} s", flush=True)  # fmt: skip
        tokens, symbols = seeded.tokens, seeded.symbols
        h.STATE_DIR.mkdir(parents=True, exist_ok=True)
        for path, data in zip(files, (tokens, symbols), strict=True):
            path.write_text(json.dumps(data))
            path.chmod(0o600)
        if args.check:
            code, text = h.run_tradeql(env, "check", check=False)
            verdict = "BOOKS DO NOT BALANCE" if code else "books balance"
            print(f"tradeql check: {verdict}: {text[:300]}")
            if code:
                raise h.BenchError("the seeded data does not pass tradeql check")
    h.redis_client(env["REDIS_URL"]).flushdb()
    written = reads_seed.write_quotes(env["REDIS_URL"], symbols)
    print(f"redis db {args.redis_db} flushed; {written} quotes written", flush=True)
    print(f"setup took {time.perf_counter() - started:.1f} s in all", flush=True)
    return files[0]


# One scenario


@dataclass
class Result:
    kind: str  # portfolio | orders
    mode: str  # closed | open
    value: float  # concurrency or rate
    client: dict[str, Any] = field(default_factory=dict)
    latency: dict[float, float | None] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)
    pg_backends: int = 0
    pg: dict[str, float] = field(default_factory=dict)
    pool: tuple[float, ...] = ()  # the API's database connections: (checked out, pool size)
    load: tuple[float, ...] = (0.0, 0.0, 0.0)
    profiles: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        if self.mode == "closed":
            return f"{self.kind} closed loop of {self.value:g}"
        return f"{self.kind} open loop at {self.value:g}/s"

    @property
    def window(self) -> float:
        return float(self.client.get("window_s", 1e-9))

    @property
    def rate(self) -> float:
        return float(self.client.get("ok", 0)) / max(self.window, 1e-9)

    @property
    def errors(self) -> int:
        return int(sum(self.client.get("errors", {}).values()))

    def cpu_ms(self, group: str) -> float:
        """Milliseconds of CPU of a group of processes per answered request."""
        return 10.0 * (self.cpu.get(group) or 0.0) / max(self.rate, 1e-9)


def run_scenario(r: Result, env: dict[str, str], api: h.Managed, client: h.Managed, port: int,
                 args: argparse.Namespace, postmaster: int | None,
                 profiler: h.Profiler) -> None:  # fmt: skip
    admin, database = h.server_urls()[0], args.database
    spec = {"kind": r.kind, "mode": r.mode, "concurrency": r.value, "rate": r.value,
            "warmup": args.warmup, "duration": args.duration,
            "max_in_flight": args.max_in_flight}  # fmt: skip
    client.send_line("RUN " + json.dumps(spec))
    client.read_tagged("MEASURING", args.warmup + 60, [api])
    groups: dict[str, Any] = {
        "api": lambda: h.process_tree(api.pid), "client": [client.pid],
        "postgres": h.pg_tree(postmaster), BACKENDS: h.database_backends(admin, database),
    }  # fmt: skip
    if (rpid := h.redis_pid(env["REDIS_URL"])) is not None:
        groups["redis"] = [rpid]
    cpu = h.CpuWindow(groups)
    counters_before = h.database_stats(admin, database)
    cpu.start()
    servers = h.process_tree(api.pid)
    servers = servers[1:] or servers  # the processes that serve, not the supervisor
    tag = r.label.replace(" ", "-").replace("/", "")
    profiler.start({f"api{i}": pid for i, pid in enumerate(servers)}, args.duration, tag)
    try:
        client.read_tagged("MEASURED", args.duration + 60, [api])
    finally:
        r.cpu = cpu.stop()
        r.pg_backends = cpu.count(BACKENDS)
        r.load = os.getloadavg()
    counters_after = h.database_stats(admin, database)
    pool = h.scrape_or_empty(port, [], "API")  # with --api-workers > 1: one worker's pool
    r.pool = tuple(h.total(pool, "tradeql_db_pool_connections", state=s)
                   for s in ("checkedout", "size"))  # fmt: skip
    r.client = json.loads(client.read_tagged("RESULT", args.timeout + 60, [api]))
    r.latency = h.percentiles(r.client["hist"], QS)
    r.pg = {k: (v - counters_before.get(k, 0.0)) / r.window for k, v in counters_after.items()}
    r.profiles = profiler.finish()


# Report


def verdict(r: Result) -> str | None:
    if r.kind != "portfolio" or r.mode != "open" or r.value < TARGET_RATE:
        return None
    p95 = r.latency.get(0.95)
    ok = r.rate >= 0.98 * r.value and r.errors == 0 and p95 is not None and p95 < TARGET_P95_MS
    return (
        f"target (portfolio p95 < {TARGET_P95_MS:g} ms at {TARGET_RATE:,.0f} req/s): "
        f"{'MET' if ok else 'NOT MET'} - served {r.rate:,.0f} req/s of {r.value:,.0f} "
        f"scheduled, p95 {h.fmt(p95)} ms"
    )


def format_result(r: Result, index: int, count: int) -> str:
    c, cpu, pg = r.client, r.cpu, r.pg
    errors = ", ".join(f"{k} {v}" for k, v in c.get("errors", {}).items()) or "none"
    latency = "  ".join(f"p{int(q * 100)} {h.fmt(v)}" for q, v in r.latency.items())
    lines = [
        f"[{index}/{count}] {r.label}: {r.window:.1f} s window",
        f"  throughput: {r.rate:,.1f} req/s ({c.get('ok', 0):,} ok of {c.get('sent', 0):,} "
        f"sent); errors: {errors}",
        f"  latency ms: {latency}" + (" from the scheduled send time" if r.mode == "open" else ""),
        *(f"    e.g. {sample[:200]}" for sample in c.get("sample_errors", [])[:3]),
    ]  # fmt: skip
    if c.get("missing_quotes"):
        lines.append(f"  WARNING: {c['missing_quotes']:,} portfolio responses had positions "
                     "without a quote (the Redis db was flushed under the benchmark?)")  # fmt: skip
    if r.mode == "open":
        lines.append(f"  scheduled {c.get('scheduled', 0):,}, skipped at the in-flight cap "
                     f"{c.get('skipped', 0):,}")  # fmt: skip
    percent = {k: h.fmt(v, ".0f") for k, v in cpu.items()}
    lines.append(
        f"  CPU per request: api {r.cpu_ms('api'):.2f} ms, postgres {r.cpu_ms(BACKENDS):.2f} ms "
        f"({r.pg_backends} backends of the bench db); % of one core: api {percent['api']}, "
        f"postgres {percent[BACKENDS]} (whole server {percent['postgres']}), redis "
        f"{percent.get('redis', '-')} (shared server), client {percent['client']}; machine "
        f"{percent['machine']} of {100 * (os.cpu_count() or 1)}"
    )
    xacts = pg.get("xact_commit", 0.0) + pg.get("xact_rollback", 0.0)
    pool = "/".join(f"{n:.0f}" for n in r.pool) or "-"
    lines.append(f"  postgres: {xacts / max(r.rate, 1e-9):.1f} transactions per ok request, "
                 f"{pg.get('sessions', 0):.1f} sessions opened/s (connection churn); the API's "
                 f"pool: {pool} checked out/size at the end")  # fmt: skip
    lines.append("  load average at the end of the window: " + " ".join(f"{x:.2f}" for x in r.load))
    if target := verdict(r):
        lines.append(f"  {target}")
    lines += [f"  {line}" for profile in r.profiles for line in profile.splitlines()]
    return "\n".join(lines)


def format_summary(results: list[Result]) -> str:
    """A line a scenario: the figures docs/benchmarks.md tabulates."""
    lines = []
    for r in results:
        latency = "/".join(h.fmt(r.latency.get(q)) for q in QS)
        lines.append(f"{r.label}: {r.rate:,.0f} req/s, p50/p95/p99 {latency} ms, {r.errors} "
                     f"errors; CPU per request: api {r.cpu_ms('api'):.2f} ms, postgres "
                     f"{r.cpu_ms(BACKENDS):.2f} ms; load {r.load[0]:.2f}")  # fmt: skip
    return "\n".join([*lines, *filter(None, map(verdict, results))])


# Run


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def benchmark(args: argparse.Namespace, run: h.Run) -> int:
    env = h.bench_env(args)
    scenarios = []
    for kind, rates, skip in (("portfolio", args.rate, args.skip_portfolio),
                              ("orders", args.orders_rate, args.skip_orders)):  # fmt: skip
        if not skip:
            scenarios += [Result(kind, "closed", float(c)) for c in args.concurrency]
            scenarios += [Result(kind, "open", float(x)) for x in rates if x > 0]
    if not scenarios:
        raise h.BenchError("nothing to run (every scenario skipped)")
    load_start = loadavg()
    settings = " ".join(f"{k}={v}" for k, v in h.child_env(env).items() if k.startswith("TRADEQL_"))
    print(f"reads benchmark: {len(scenarios)} scenario(s), {args.warmup:g} s warm-up + "
          f"{args.duration:g} s each; {args.users} users x {args.positions} positions x "
          f"{args.orders} orders; API workers {args.api_workers}; API settings {settings}; "
          f"{os.cpu_count()} cores; load average {load_start}; db {args.database}, redis db "
          f"{args.redis_db}; logs in {run.log_dir}", flush=True)  # fmt: skip
    profiler = h.Profiler(args, run.log_dir)
    api, client, port, market = start(args, run, env, len(scenarios))
    postmaster = h.postmaster_pid(h.server_urls()[0])
    results: list[Result] = []
    started = time.monotonic()
    try:
        for index, r in enumerate(scenarios, start=1):
            print(f"\nrunning {r.label} ...", flush=True)
            idle = h.wait_idle(lambda: h.process_tree(api.pid), args.drain)
            if idle is None or idle > 1.5:
                after = f"after {idle:.0f} s" if idle else f"NOT within {args.drain:g} s"
                print(f"  the API went idle {after} (requests the client gave up on still run to "
                      "the end on the server)", flush=True)  # fmt: skip
            run_scenario(r, env, api, client, port, args, postmaster, profiler)
            results.append(r)
            print(format_result(r, index, len(scenarios)), flush=True)
            for process in market:
                process.check_alive()
    finally:
        if results:
            print(f"\nsummary ({time.monotonic() - started:.0f} s in all; load average at start "
                  f"{load_start}, at end {loadavg()}; {os.cpu_count()} cores)")  # fmt: skip
            print(format_summary(results))
    return 0


def start(args: argparse.Namespace, run: h.Run, env: dict[str, str],
          scenarios: int) -> tuple[h.Managed, h.Managed, int, list[h.Managed]]:  # fmt: skip
    """The data (setup), the API (and with --live-quotes the feed and the quote cache), and the
    client process, checked against the seeded data: (api, client, port, market processes)."""
    tokens_path = setup(env, args)
    port = h.free_port()
    argv = h.tradeql_argv("api", "--host", "127.0.0.1", "--port", str(port))
    if args.api_workers > 1:
        argv += ["--workers", str(args.api_workers)]
    api = run.start("api", argv, env)
    # --live-quotes: every quote moves ~once a second through the real path
    market = [run.start(name, h.tradeql_argv(name), env)
              for name in (("feed", "quotes") if args.live_quotes else ())]  # fmt: skip
    h.wait_until("the API's /readyz", [api], h.answers(port))
    if args.api_workers > 1:  # every worker up, not just the first
        h.wait_until(f"{args.api_workers} API workers", [api],
                     lambda: len(h.process_tree(api.pid)) > args.api_workers)  # fmt: skip
        time.sleep(2.0)
    print(f"API up on 127.0.0.1:{port} (pids {h.process_tree(api.pid)})", flush=True)
    budget = 300 + scenarios * (args.warmup + args.duration + args.timeout + 120)
    client_argv = (f"-m bench.reads --client --port {port} --tokens {tokens_path} --timeout "
                   f"{args.timeout} --client-max-seconds {budget}")  # fmt: skip
    client = run.start("client", [sys.executable, *client_argv.split()], env, pipe=True)
    ready = json.loads(client.read_tagged("READY", 120, [api]))
    print(f"client check (user 0): {ready['positions']} positions ({ready['quoted_positions']} "
          f"with a quote), equity {ready['equity']}; order history {ready['orders']} orders in "
          f"{ready['pages']} pages with {ready['executions']} executions", flush=True)  # fmt: skip
    if ready["positions"] != args.positions or ready["orders"] != args.orders:
        raise h.BenchError(f"the API does not show the seeded data: {ready}")
    return api, client, port, market


def build_parser() -> argparse.ArgumentParser:
    p = h.parser("reads", __doc__, database="tradeql_bench_reads", redis_db=15)
    p.add_argument("--users", type=h.positive, default=200)
    p.add_argument("--positions", type=h.positive, default=50, help="per user")
    p.add_argument("--orders", type=h.positive, default=500, help="per user (>= positions)")
    p.add_argument("--synthetic", type=int, default=100, help="securities defaults --synthetic")
    p.add_argument("--reuse-setup", action="store_true", help="keep the database and sessions "
                   "of the previous run (quotes rewritten)")  # fmt: skip
    p.add_argument("--no-check", dest="check", action="store_false",
                   help="skip tradeql check after seeding")  # fmt: skip
    p.add_argument("--concurrency", type=h.positive, nargs="+", default=[200],
                   help="closed-loop users")  # fmt: skip
    p.add_argument("--rate", type=float, nargs="+", default=[TARGET_RATE],
                   help="open-loop portfolio rates, req/s (0: none)")  # fmt: skip
    p.add_argument("--orders-rate", type=float, nargs="+", default=[],
                   help="open-loop order-history rates, req/s")  # fmt: skip
    p.add_argument("--skip-portfolio", action="store_true")
    p.add_argument("--skip-orders", action="store_true")
    p.add_argument("--max-in-flight", type=h.positive, default=2000, help="open-loop cap")
    p.add_argument("--timeout", type=h.positive_float, default=10.0, help="seconds per request")
    p.add_argument("--drain", type=h.positive_float, default=120.0,
                   help="at most this many seconds waiting for the API to go idle before a "
                   "scenario")  # fmt: skip
    p.add_argument("--api-workers", type=h.positive, default=1, help="tradeql api --workers")
    p.add_argument("--live-quotes", action="store_true",
                   help="run the simulated feed and the quote cache: every quote moves ~once a "
                   "second")  # fmt: skip
    internal = p.add_argument_group("internal (the benchmark runs itself with these)")
    internal.add_argument("--client", action="store_true", help="run the client half")
    internal.add_argument("--port", type=int, help="client: the API's port")
    internal.add_argument("--tokens", help="client: JSON list of bearer tokens")
    internal.add_argument("--client-max-seconds", type=float, default=3600.0)
    return p


def main() -> int:
    args = build_parser().parse_args()
    if args.client:
        reader = Reader(args)
        return run_client(serve(reader.check, {"RUN": reader.run}, args.client_max_seconds))
    if args.orders < args.positions:
        print("--orders must be at least --positions (each position has its orders)",
              file=sys.stderr)  # fmt: skip
        return 2
    run = h.Run("reads", args.log_dir)
    return h.execute(lambda: benchmark(args, run), run.stop_all)


if __name__ == "__main__":
    sys.exit(main())
