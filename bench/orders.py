"""Order placement and fills end to end: HTTP placeOrder -> batched placement -> matcher -> fills.

On a recreated database and a flushed Redis db: the quote cache, the simulated feed, the relay,
the API (`--api-workers`, else TRADEQL_API_WORKERS, else one per core) and `--matchers`. A client
process (`--client`) registers and funds users, holds an `orderUpdates` socket each and places
market and limit orders, closed loop (`--concurrency`) or open loop (`--rate`). Per scenario:
orders/s, accept and placement-to-FILL latency, executions/s, the matcher's backlog, PostgreSQL
work and CPU per order (py-spy with `--profile`), and the one-transaction reference
(bench/reference_app.py) at each concurrency; `--pgbench`; `tradeql check` at the end.

    python -m bench.orders --concurrency 64 --rate 300 --symbols 6 --market-share 1 \
        --sell-share 0 --max-quantity 1 --duration 15        # the figures in docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import random
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import orjson

from bench import harness as h
from bench.client import (
    HttpConnection,
    HttpError,
    Window,
    bearer,
    close_all,
    drive,
    emit,
    graphql,
    run_client,
    serve,
    subscribe,
)  # fmt: skip

TARGET_RATE, TARGET_ACCEPT_P95_MS, TARGET_FILL_P95_MS = 3000.0, 50.0, 150.0
QS = (0.5, 0.95, 0.99)
PROCESS_NAMES = ("api", "matcher", "postgres", "client", "redis", "quotes", "feed", "relay")
REFERENCE_DATABASE, PGBENCH_DATABASE = "tradeql_bench_reference", "tradeql_bench_pgbench"


# The client process: users placing orders, fills over WebSockets
PLACE = ("mutation PlaceOrder($i: PlaceOrderInput!) "
         "{ placeOrder(input: $i) { order { id status } errors { code } } }")  # fmt: skip
ORDER_UPDATES = ("subscription OrderUpdates "
                 "{ orderUpdates { event order { id status } execution { price quantity } } }")  # fmt: skip
QUOTES = "query Quotes($s: [String!]!) { quotes(symbols: $s) { symbol bid ask } }"
REGISTER = ("mutation Register($e: String!, $p: String!) "
            "{ register(email: $e, password: $p) { token errors { code message } } }")  # fmt: skip
DEPOSIT = ("mutation Deposit($a: Decimal!, $k: String!) "
           "{ deposit(amount: $a, idempotencyKey: $k) { portfolio { cash } errors { code message } } }")  # fmt: skip
TERMINAL_EVENTS = frozenset({"FILL", "CANCELLED", "EXPIRED", "REJECTED"})
FILL_EVENTS = frozenset({"FILL", "PARTIAL_FILL"})
MAX_TRACKED_ORDERS, MAX_EARLY_EVENTS = 5_000_000, 100_000


@dataclass
class User:
    index: int
    token: str = ""
    subscribed: bool = False
    shares: dict[str, float] = field(default_factory=dict)  # free shares, as this client sees it


@dataclass(slots=True)
class Placed:
    user: User
    symbol: str
    side: str
    kind: str
    quantity: int
    sent_ns: int
    measured: bool
    filled: float = 0.0


@dataclass
class OrdersWindow(Window):
    sent: int = 0
    accepted: int = 0
    accepted_market: int = 0
    accepted_by_kind: Counter[str] = field(default_factory=Counter)
    refused: Counter[str] = field(default_factory=Counter)
    failed: Counter[str] = field(default_factory=Counter)  # transport / HTTP / GraphQL errors
    accept_hist: dict[int, int] = field(default_factory=dict)
    fill_hist: dict[int, int] = field(default_factory=dict)  # market orders of the window
    market_filled: int = 0
    market_closed_unfilled: int = 0  # market orders of the window cancelled without a fill
    limit_filled: int = 0
    fill_events: int = 0  # FILL + PARTIAL_FILL received while measuring
    max_accept_ms: float = 0.0
    max_fill_ms: float = 0.0
    sample_errors: list[str] = field(default_factory=list)

    def error(self, kind: str, text: str) -> None:
        self.failed[kind] += 1
        if len(self.sample_errors) < 5:
            self.sample_errors.append(text[:300])


def on_tick(price: Decimal) -> Decimal:
    tick = Decimal("0.01") if price >= 1 else Decimal("0.0001")
    return max(tick, (price / tick).quantize(Decimal(1), rounding=ROUND_HALF_UP) * tick)


class OrdersClient:
    def __init__(self, args: argparse.Namespace, symbols: list[str]) -> None:
        self.args, self.port, self.symbols = args, int(args.port), symbols
        self.rng = random.Random(args.seed)
        self.users = [User(i) for i in range(args.users)]
        self.quotes: dict[str, tuple[Decimal, Decimal]] = {}
        self.orders: dict[str, Placed] = {}
        self.early: dict[str, list[tuple[str, float, int]]] = {}
        self.window = OrdersWindow()
        self.sockets: list[Any] = []
        self.receivers: list[asyncio.Task[None]] = []
        self.socket_errors: list[str] = []
        self.sockets_closed = self.sequence = 0

    async def setup(self) -> dict[str, Any]:
        started = time.monotonic()
        limiter, failures = asyncio.Semaphore(self.args.setup_concurrency), []

        async def prepare(user: User) -> None:
            conn = HttpConnection(self.port)
            try:
                async with limiter:
                    email = f"bench-orders-{self.args.run_id}-{user.index}@tradeql.dev"
                    variables = {"e": email, "p": "violet-harbor-lantern-42"}
                    reg = (await graphql(conn, REGISTER, variables))["register"]
                    if reg["errors"] or not reg["token"]:
                        raise HttpError(f"register: {reg['errors']}")
                    funds = {"a": self.args.deposit, "k": f"fund-{user.index}"}
                    data = await graphql(conn, DEPOSIT, funds, bearer(reg["token"]))
                    if data["deposit"]["errors"]:
                        raise HttpError(f"deposit: {data['deposit']['errors']}")
                    user.token = reg["token"]
            except (HttpError, TimeoutError, KeyError, TypeError) as exc:
                failures.append(f"user {user.index}: {type(exc).__name__}: {exc}")
            finally:
                conn.close()

        await asyncio.gather(*(prepare(u) for u in self.users))
        self.users = [u for u in self.users if u.token]
        if not self.users:
            raise RuntimeError(f"no user could register: {failures[:3]}")
        registered = time.monotonic() - started
        subscribers = self.users[: min(self.args.subscribers, len(self.users))]
        opened = await asyncio.gather(*(self._subscribe(u) for u in subscribers))
        for _ in range(120):  # the quotes of every symbol, for limit prices
            await self._refresh_quotes()
            if len(self.quotes) >= len(self.symbols):
                break
            await asyncio.sleep(0.25)
        return {
            "users": len(self.users), "user_failures": failures[:5],
            "subscribed": sum(opened), "subscribe_failed": len(opened) - sum(opened),
            "socket_errors": self.socket_errors[:5], "register_s": registered,
            "quotes": len(self.quotes),
        }  # fmt: skip

    async def _subscribe(self, user: User) -> bool:
        try:
            ws = await subscribe(f"ws://127.0.0.1:{self.port}/graphql", ORDER_UPDATES,
                                 token=user.token, max_queue=256)  # fmt: skip
        except Exception as exc:  # refused, timed out, closed: counted, never fatal
            self.socket_errors.append(f"user {user.index}: {type(exc).__name__}: {exc}")
            return False
        user.subscribed = True
        self.sockets.append(ws)
        self.receivers.append(asyncio.create_task(self._receive(ws)))
        return True

    async def _receive(self, ws: Any) -> None:
        try:
            async for raw in ws:
                now = time.perf_counter_ns()
                message = orjson.loads(raw)
                kind = message.get("type")
                if kind == "next":
                    payload = message.get("payload") or {}
                    if update := (payload.get("data") or {}).get("orderUpdates"):
                        self._on_update(update, now)
                    elif payload.get("errors"):
                        self.socket_errors.append(str(payload["errors"])[:300])
                elif kind == "ping":
                    await ws.send('{"type":"pong"}')
                elif kind in ("error", "complete"):
                    self.socket_errors.append(str(message)[:300])
                    return
        except Exception as exc:  # the socket closed or broke: say so in the result
            self.socket_errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            self.sockets_closed += 1

    def _on_update(self, update: dict[str, Any], now: int) -> None:
        event, order_id = update["event"], update["order"]["id"]
        quantity = float(update["execution"]["quantity"]) if update.get("execution") else 0.0
        if self.window.measuring and event in FILL_EVENTS:
            self.window.fill_events += 1
        placed = self.orders.get(order_id)
        if placed is None:  # the event beat the placeOrder answer
            if len(self.early) < MAX_EARLY_EVENTS:
                self.early.setdefault(order_id, []).append((event, quantity, now))
            return
        self._apply(order_id, placed, event, quantity, now)

    def _apply(self, order_id: str, placed: Placed, event: str, quantity: float, now: int) -> None:
        window, shares = self.window, placed.user.shares
        if event in FILL_EVENTS:
            placed.filled += quantity
            if placed.side == "BUY":
                shares[placed.symbol] = shares.get(placed.symbol, 0.0) + quantity
            if event == "FILL" and placed.measured and placed.kind == "MARKET":
                window.market_filled += 1
                ms = h.observe(window.fill_hist, (now - placed.sent_ns) / 1e6)
                window.max_fill_ms = max(window.max_fill_ms, ms)
            elif event == "FILL" and placed.measured:
                window.limit_filled += 1
        if event in TERMINAL_EVENTS:
            self.orders.pop(order_id, None)
            if event != "FILL" and placed.side == "SELL":
                left = placed.quantity - placed.filled
                shares[placed.symbol] = shares.get(placed.symbol, 0.0) + left
            unfilled = placed.measured and placed.kind == "MARKET" and not placed.filled
            if event != "FILL" and unfilled:
                window.market_closed_unfilled += 1

    async def _refresh_quotes(self) -> None:
        conn = HttpConnection(self.port)
        try:
            data = await graphql(conn, QUOTES, {"s": self.symbols}, b"", 10.0)
        except (HttpError, TimeoutError) as exc:
            self.socket_errors.append(f"quotes query: {type(exc).__name__} {exc}".strip())
            return
        finally:
            conn.close()
        for q in data["quotes"]:
            if q and Decimal(q["bid"]) > 0 and Decimal(q["ask"]) > 0:
                self.quotes[q["symbol"]] = (Decimal(q["bid"]), Decimal(q["ask"]))

    def _next_order(self, spec: dict[str, Any]) -> tuple[User, dict[str, Any], int]:
        rng = self.rng
        user = self.users[rng.randrange(len(self.users))]
        # only a subscribed user's fills are known here
        held = [s for s, q in user.shares.items() if q >= 1] if user.subscribed else []
        self.sequence += 1
        if held and rng.random() < spec["sell_share"]:
            side, symbol = "SELL", rng.choice(held)
            quantity = rng.randint(1, max(1, min(int(user.shares[symbol]), spec["max_quantity"])))
            user.shares[symbol] -= quantity  # reserved here until refused or closed unfilled
        else:
            side, symbol = "BUY", rng.choice(self.symbols)
            quantity = rng.randint(1, spec["max_quantity"])
        order: dict[str, Any] = {
            "symbol": symbol, "side": side, "quantity": str(quantity), "type": "MARKET",
            "idempotencyKey": f"o{self.args.run_id}-{self.sequence}",
        }  # fmt: skip
        quote = self.quotes.get(symbol)
        if rng.random() >= spec["market_share"] and quote is not None:
            bid, ask, spread = *quote, spec["limit_spread"]
            if side == "BUY":  # mostly at or just under the ask: some fill at once, some rest
                price = ask * (1 + Decimal(str(rng.uniform(-spread, spread / 3))))
            else:
                price = bid * (1 + Decimal(str(rng.uniform(-spread / 3, spread))))
            order["type"], order["limitPrice"] = "LIMIT", str(on_tick(price))
        return user, order, quantity

    async def place(self, conn: HttpConnection, spec: dict[str, Any]) -> None:
        user, order, quantity = self._next_order(spec)
        window, measured, kind = self.window, self.window.measuring, order["type"]
        body, auth = orjson.dumps({"query": PLACE, "variables": {"i": order}}), bearer(user.token)
        window.sent += measured
        sent = time.perf_counter_ns()
        answer: dict[str, Any] | None = None
        try:
            async with asyncio.timeout(self.args.request_timeout):
                try:
                    status, data = await conn.post(body, auth)
                except HttpError:
                    # A kept-alive connection the server closed meanwhile: once more on a new
                    # one, as HTTP clients do; the idempotency key makes a repeat harmless.
                    status, data = await conn.post(body, auth)
            if status == 200:
                answer = orjson.loads(data)
            elif measured:
                window.error(f"HTTP_{status}", data.decode(errors="replace"))
        except TimeoutError:
            if measured:
                window.error("TIMEOUT", f"no answer within {self.args.request_timeout:g}s")
        except HttpError as exc:
            if measured:
                window.error("CONNECTION", str(exc))
        done = time.perf_counter_ns()
        payload = None if answer is None else (answer.get("data") or {}).get("placeOrder")
        if answer is not None and payload is None and measured:
            window.error("GRAPHQL_ERROR", str(answer.get("errors"))[:300])
        if payload is not None and payload.get("order"):
            order_id = payload["order"]["id"]
            placed = Placed(user, order["symbol"], order["side"], kind, quantity, sent, measured)
            if len(self.orders) < MAX_TRACKED_ORDERS:
                self.orders[order_id] = placed
            if measured:
                window.accepted += 1
                window.accepted_market += kind == "MARKET"
                window.accepted_by_kind[f"{order['side']} {kind}"] += 1
                ms = h.observe(window.accept_hist, (done - sent) / 1e6)
                window.max_accept_ms = max(window.max_accept_ms, ms)
            for event, qty, at in self.early.pop(order_id, []):
                if order_id in self.orders:
                    self._apply(order_id, placed, event, qty, at)
            return
        if payload is not None and measured:
            codes = [e.get("code", "?") for e in payload.get("errors") or []] or ["NO_ORDER"]
            window.refused[",".join(codes)] += 1
            h.observe(window.accept_hist, (done - sent) / 1e6)
        if order["side"] == "SELL":  # not placed: the shares are free again
            user.shares[order["symbol"]] = user.shares.get(order["symbol"], 0.0) + quantity

    async def run(self, text: str) -> str:
        spec = json.loads(text)
        self.window = window = OrdersWindow()
        stop = asyncio.Event()

        async def refresh_quotes() -> None:
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 1.0)
                if not stop.is_set():
                    await self._refresh_quotes()

        async def one(conn: HttpConnection, due: float, worker: int, n: int) -> None:
            await self.place(conn, spec)

        quotes = asyncio.create_task(refresh_quotes())
        try:
            await drive(self.port, spec, one, window, emit, self.args.request_timeout + 5)
            if window.abandoned:
                window.error("CLIENT", "requests in flight past the timeout were abandoned")
            for _ in range(int(float(spec["drain"]) * 10)):  # the window's market orders fill
                if not self._open_market():
                    break
                await asyncio.sleep(0.1)
        finally:
            stop.set()
            await quotes
        result = {f.name: getattr(window, f.name) for f in dataclasses.fields(window)} | {
            "window_seconds": window.seconds, "market_unfilled_after_drain": self._open_market(),
            "sockets_open": len(self.sockets) - self.sockets_closed,
            "socket_errors": self.socket_errors[-5:],
        }  # fmt: skip
        return "RESULT " + json.dumps(result)

    def _open_market(self) -> int:
        return sum(1 for p in self.orders.values() if p.measured and p.kind == "MARKET")


async def client_main(args: argparse.Namespace) -> int:
    client = OrdersClient(args, json.loads(args.symbols_file.read_text()))
    try:
        return await serve(client.setup, {"RUN": client.run}, args.client_max_seconds)
    finally:
        await close_all(client.receivers, client.sockets)


# The system under test and one scenario


@dataclass
class Result:
    mode: str
    value: float
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
    pool_checked_out: float | None = None
    pg_active: float | None = None  # bench database backends active on average (sampled)
    pg_in_transaction: float | None = None  # ... active or idle in a transaction: connections held
    servers: dict[str, Any] = field(default_factory=dict)  # a ServerWindow's delta, if given
    cpu: dict[str, float] = field(default_factory=dict)
    load_average: float | None = None
    reference_rate: float | None = None
    activity: str = ""
    profiles: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        if self.mode == "closed":
            return f"closed loop, concurrency {self.value:g}"
        return f"open loop, rate {self.value:,.0f}/s"

    @property
    def short(self) -> str:
        return f"conc {self.value:g}" if self.mode == "closed" else f"rate {self.value:g}/s"

    @property
    def accepted_rate(self) -> float:
        return self.client.get("accepted", 0) / max(self.window_s, 1e-9)

    @property
    def sent_rate(self) -> float:
        return self.client.get("sent", 0) / max(self.window_s, 1e-9)


class System:
    """The processes under test, started in order (stopped by the run)."""

    def __init__(self, run: h.Run, env: dict[str, str], args: argparse.Namespace,
                 partitions: int) -> None:  # fmt: skip
        self.run, self.env, self.args, self.partitions = run, env, args, partitions
        self.api_port, self.quotes_port = h.free_port(), h.free_port()
        self.matcher_ports: list[int] = []
        self.postmaster: int | None = None  # the PostgreSQL server's, when a caller knows it
        self.redis = h.redis_client(env["REDIS_URL"])
        self.procs: dict[str, h.Managed] = {}

    @property
    def matchers(self) -> list[h.Managed]:
        return [p for name, p in self.procs.items() if name.startswith("matcher")]

    def scrape_matchers(self, notes: list[str]) -> list[h.Sample]:
        """Every matcher's metrics together (h.total sums over them)."""
        return [s for port in self.matcher_ports for s in h.scrape_or_empty(port, notes, "matcher")]

    def start_matchers(self, count: int) -> None:
        """`count` matcher processes, each given its share of the partitions
        (TRADEQL_MATCHER_PARTITIONS), until together they hold every one."""
        if count > self.partitions:
            raise h.BenchError(f"{count} matchers for {self.partitions} partitions")
        for i in range(count):
            first = i * self.partitions // count
            last = (i + 1) * self.partitions // count - 1
            split = {"TRADEQL_MATCHER_PARTITIONS": f"{first}-{last}"} if count > 1 else {}
            env = self.env | split
            port = h.free_port()
            self.matcher_ports.append(port)
            name = "matcher" if i == 0 else f"matcher{i + 1}"
            argv = h.tradeql_argv("matcher", "--metrics-port", str(port))
            self.procs[name] = self.run.start(name, argv, env)
        h.wait_until(
            f"{count} matcher(s) holding all {self.partitions} partitions", self.servers,
            lambda: h.total(self.scrape_matchers([]), "tradeql_matcher_partitions") >= self.partitions,
        )  # fmt: skip

    def start(self, symbols: list[str], api_workers: int, matchers: int = 1) -> None:
        a, start = self.args, self.run.start
        quotes = h.tradeql_argv("quotes", "--metrics-port", str(self.quotes_port))
        self.procs["quotes"] = start("quotes", quotes, self.env)
        h.wait_until("quote cache metrics", self.servers, h.answers(self.quotes_port, "/metrics"))
        feed = f"feed --source sim --symbols {a.symbols} --seed {a.feed_seed}"
        self.procs["feed"] = start("feed", h.tradeql_argv(*feed.split()), self.env)
        self.procs["relay"] = start("relay", h.tradeql_argv("relay"), self.env)
        api = f"api --host 127.0.0.1 --port {self.api_port} --workers {api_workers}"
        self.procs["api"] = start("api", h.tradeql_argv(*api.split()), self.env)
        h.wait_until("API /readyz", self.servers, h.answers(self.api_port))
        if api_workers > 1:  # every worker up, not just the first
            h.wait_until(f"{api_workers} API workers", self.servers,
                         lambda: len(h.process_tree(self.procs["api"].pid)) > api_workers)  # fmt: skip
        self.start_matchers(matchers)
        from services.market_data.quote_store import quote_key

        h.wait_until(f"quotes of all {len(symbols)} symbols in Redis", self.servers,
                     lambda: all(self.redis.exists(quote_key(s)) for s in symbols))  # fmt: skip

    @property
    def servers(self) -> list[h.Managed]:
        return list(self.procs.values())

    def backlog(self) -> int | None:
        """Orders handed off, not yet acknowledged by the matcher: lag + pending, all partitions."""
        from services.orders.order_store import order_stream

        streams = map(order_stream, range(self.partitions))
        lag, pending, _ = h.group_backlog(self.redis, streams, "matcher")
        return None if lag is None else lag + pending

    def wait_for_matcher(self, seconds: float) -> float | None:
        """Seconds until the matcher's backlog is empty (None: not within `seconds`)."""
        started = time.monotonic()
        while self.backlog() != 0:
            if time.monotonic() - started > seconds:
                return None
            time.sleep(0.2)
        return time.monotonic() - started


def run_scenario(result: Result, system: System, client: h.Managed, args: argparse.Namespace,
                 postmaster: int | None, profiler: h.Profiler,
                 servers: h.ServerWindow | None = None) -> None:  # fmt: skip
    """One scenario; with `servers`, also the WAL and Redis counters over the window."""
    if h.wait_idle(lambda: h.process_tree(system.procs["api"].pid), args.settle) is None:
        result.notes.append(f"the API was still placing earlier orders after {args.settle:g} s")
    if system.wait_for_matcher(args.settle) is None:
        result.notes.append(f"the matcher still had a backlog after {args.settle:g} s")
    closed = result.mode == "closed"
    spec = {
        "mode": result.mode, "concurrency": int(result.value) if closed else 0,
        "rate": 0 if closed else result.value, "warmup": args.warmup, "duration": args.duration,
        "drain": args.drain, "max_in_flight": max(args.max_inflight, int(result.value) if closed else 0),
        "market_share": args.market_share, "sell_share": args.sell_share,
        "max_quantity": args.max_quantity, "limit_spread": args.limit_spread,
    }  # fmt: skip
    p = system.procs
    groups: dict[str, Any] = {"api": lambda: h.process_tree(p["api"].pid), "client": [client.pid]}
    groups |= {name: [p[name].pid] for name in ("quotes", "feed", "relay")}
    groups["matcher"] = lambda: [m.pid for m in system.matchers]
    if (rpid := h.redis_pid(system.env["REDIS_URL"])) is not None:
        groups["redis"] = [rpid]
    database_url, database = system.env["DATABASE_URL"], args.database
    if postmaster:
        groups["postgres"] = h.pg_tree(postmaster)
        groups["postgres (bench db)"] = h.database_backends(database_url, database)
    cpu = h.CpuWindow(groups)
    activity = h.Activity(database_url, database)
    client.send_line("RUN " + json.dumps(spec))
    watch = system.servers
    try:
        client.read_tagged("MEASURING", args.warmup + 60, watch)
        cpu.start()
        if servers is not None:
            servers.start()
        measured_from = time.monotonic()
        matcher_before = system.scrape_matchers(result.notes)
        api_before = h.scrape_or_empty(system.api_port, result.notes, "API")
        pg_before = h.database_stats(database_url, database)
        result.backlog_start = system.backlog()
        activity.start()
        tag = f"{result.mode}{result.value:g}"
        targets = {"api": h.process_tree(p["api"].pid)[-1], "matcher": p["matcher"].pid}  # a worker
        profiler.start(targets, args.duration, tag)
        client.read_tagged("MEASURED", args.duration + 60, watch)
        result.cpu = cpu.stop()
        if servers is not None:
            result.servers = servers.stop()
        with contextlib.suppress(OSError):
            result.load_average = os.getloadavg()[0]
        window = time.monotonic() - measured_from
    finally:
        activity.stop()
    matcher_after = system.scrape_matchers(result.notes)
    api_after = h.scrape_or_empty(system.api_port, result.notes, "API")
    result.backlog_end = system.backlog()
    wait = args.request_timeout + args.drain + 120
    outcome = json.loads(client.read_tagged("RESULT", wait, watch))
    pg_after = h.database_stats(database_url, database)
    result.catch_up_s = system.wait_for_matcher(args.settle)
    result.client, result.window_s = outcome, float(outcome.get("window_seconds") or window)
    result.accept_ms = named(h.percentiles(outcome["accept_hist"], QS).get)
    result.accept_ms["max"] = outcome["max_accept_ms"]
    result.fill_ms = named(h.percentiles(outcome["fill_hist"], QS).get)
    result.fill_ms["max"] = outcome["max_fill_ms"] if outcome["market_filled"] else None
    name = "tradeql_graphql_operation_seconds"
    rows = h.histogram_delta(api_before, api_after, name, operation="PlaceOrder")
    result.server_accept_ms = named(lambda q: h.histogram_quantile(rows, q))
    name = "tradeql_matcher_executions_total"
    result.executions_rate = (h.total(matcher_after, name) - h.total(matcher_before, name)) / window
    if api_after:
        name = "tradeql_db_pool_connections"
        result.pool_checked_out = h.total(api_after, name, state="checkedout")
    if pg_before and pg_after:
        result.pg = {k: pg_after[k] - pg_before.get(k, 0.0) for k in pg_after} | {"seconds": window}
    result.activity = activity.summary()
    if activity.samples:
        result.pg_active = activity.active / activity.samples
        held = activity.active + activity.idle_in_transaction
        result.pg_in_transaction = held / activity.samples
    result.profiles = profiler.finish()
    add_notes(result, args)


def named(quantile: Callable[[float], float | None]) -> dict[str, float | None]:
    """{"p50": quantile(0.5), "p95": ..., "p99": ...}"""
    return {f"p{round(q * 100)}": quantile(q) for q in QS}


def add_notes(result: Result, args: argparse.Namespace) -> None:
    c, notes = result.client, result.notes
    if c.get("skipped"):
        notes.append(f"{c['skipped']:,} orders due were not sent: {args.max_inflight} already "
                     "in flight (the open loop never queues beyond --max-inflight)")  # fmt: skip
    if result.mode == "open" and c.get("scheduled") and c["sent"] / c["scheduled"] < 0.98:
        notes.append(f"only {100 * c['sent'] / c['scheduled']:.0f}% of the orders due were sent")
    if c.get("market_unfilled_after_drain"):
        notes.append(f"{c['market_unfilled_after_drain']:,} market orders of the window had no "
                     f"FILL event {args.drain:g} s after it (left out of the fill percentiles)")  # fmt: skip
    if c.get("market_closed_unfilled"):
        notes.append(f"{c['market_closed_unfilled']:,} market orders were cancelled unfilled")
    if c.get("failed"):
        notes.append(f"failures: {c['failed']}, e.g. {c.get('sample_errors', [])[:2]}")
    if c.get("socket_errors"):
        notes.append(f"client-side errors (sockets, quote refresh): {c['socket_errors'][:2]}")
    if result.cpu.get("client", 0.0) > 90:
        notes.append("the client process was saturated: rates are bounded by it")
    if result.catch_up_s is None:
        notes.append(f"the matcher had not caught up {args.settle:g} s after the window")


# Report


def _lat(values: dict[str, float | None]) -> str:
    return "  ".join(f"{k} {h.fmt(values.get(k))}" for k in ("p50", "p95", "p99", "max"))


def _le(value: float | None) -> str:
    return "-" if value is None else "inf" if value == float("inf") else f"{1000 * value:g}"


def format_result(r: Result, index: int, count: int, users: int) -> str:
    c, cpu, w, rate = r.client, r.cpu, r.window_s, max(r.accepted_rate, 1e-9)

    def counts(key: str) -> str:
        return ", ".join(f"{k} {v:,}" for k, v in sorted(c.get(key, {}).items())) or "none"

    sent = f"  orders sent                   {c.get('sent', 0):>9,}  ({r.sent_rate:,.0f}/s)"
    if r.mode == "open":
        sent += (f"; due {c.get('scheduled', 0):,} ({c.get('scheduled', 0) / max(w, 1e-9):,.0f}/s), "
                 f"skipped {c.get('skipped', 0):,}")  # fmt: skip
    backlog = f"{h.fmt(r.backlog_start, ',.0f')} -> {h.fmt(r.backlog_end, ',.0f')} orders"
    if r.backlog_start is not None and r.backlog_end is not None:
        backlog += f" ({(r.backlog_end - r.backlog_start) / max(w, 1e-9):+,.0f}/s)"
    caught_up = f"caught up {h.fmt(r.catch_up_s)} s after the results"
    backlog += f"; {caught_up if r.catch_up_s is not None else 'NOT caught up'}"
    pg_line = "  PostgreSQL                    (no pg_stat_database numbers)"
    if pg := r.pg:
        keys = ("xact_commit", "xact_rollback", "tup_inserted", "tup_updated")
        commits, rollbacks, ins, upd = (pg.get(k, 0.0) / max(pg["seconds"], 1e-9) for k in keys)
        pg_line = (
            f"  PostgreSQL                    {commits:>9,.0f} commits/s ({commits / rate:.2f} per "
            f"accepted order), {rollbacks:,.0f} rollbacks/s, {ins:,.0f} rows inserted/s "
            f"({ins / rate:.1f} per order), {upd:,.0f} updated/s ({upd / rate:.1f} per order), "
            f"deadlocks {pg.get('deadlocks', 0):,.0f}"
        )  # fmt: skip
    cpu_line = "  ".join(f"{n} {cpu[n]:.0f}" for n in PROCESS_NAMES if n in cpu)
    other = max(0.0, cpu.get("machine", 0.0) - sum(cpu.get(n, 0.0) for n in PROCESS_NAMES))
    per_order = "  ".join(f"{n} {10 * cpu[n] / rate:.2f}" for n in PROCESS_NAMES if n in cpu)
    srv = r.server_accept_ms
    lines = [
        f"== scenario {index}/{count}: {r.label}; {users} users; measured {w:.1f} s ==",
        sent,
        f"  accepted                      {c.get('accepted', 0):>9,}  ({r.accepted_rate:,.1f}/s): "
        f"{counts('accepted_by_kind')}",
        f"  refused (code)                {counts('refused')}",
        f"  failed                        {counts('failed')}",
        f"  accept latency (HTTP RTT)     {_lat(r.accept_ms)} ms   (server PlaceOrder p50 <= "
        f"{_le(srv.get('p50'))}, p95 <= {_le(srv.get('p95'))}, p99 <= {_le(srv.get('p99'))} ms)",
        f"  placement->FILL (market)      {_lat(r.fill_ms)} ms   (n={c.get('market_filled', 0):,} "
        f"of {c.get('accepted_market', 0):,} accepted market orders)",
        f"  fills                         {r.executions_rate:>9,.1f} executions/s booked by the "
        f"matcher; client saw {c.get('fill_events', 0) / max(w, 1e-9):,.1f} FILL/PARTIAL_FILL "
        f"events/s on {c.get('sockets_open', 0)} sockets; limit orders filled: {c.get('limit_filled', 0):,}",
        f"  matcher backlog (orders:*)    {backlog}",
        pg_line,
        f"  API DB pool checked out       {h.fmt(r.pool_checked_out, ',.0f')} at the end of the window",
        f"  CPU % of one core             {cpu_line}   | machine {cpu.get('machine', 0):.0f} of "
        f"{100 * (os.cpu_count() or 1)} (other processes ~{other:.0f}; load average "
        f"{h.fmt(r.load_average, '.2f')})",
        f"  CPU ms per accepted order     {per_order}   (matcher per execution "
        f"{10 * cpu.get('matcher', 0.0) / max(r.executions_rate, 1e-9):.2f} ms)",
        f"  {target_verdict(r)}",
        *(f"  note: {n}" for n in r.notes),
        *(f"  {line}" for line in r.activity.splitlines()),
        *(f"  {line}" for profile in r.profiles for line in ["", *profile.splitlines()]),
    ]  # fmt: skip
    return "\n".join(lines)


def target_verdict(r: Result) -> str:
    accept, fill = r.accept_ms.get("p95"), r.fill_ms.get("p95")
    met = r.accepted_rate >= 0.98 * TARGET_RATE and (accept or 1e9) < TARGET_ACCEPT_P95_MS
    met = met and (fill or 1e9) < TARGET_FILL_P95_MS
    return (f"target ({TARGET_RATE:,.0f} orders/s, p95 accept < {TARGET_ACCEPT_P95_MS:.0f} ms, p95 placement-to-fill "
            f"< {TARGET_FILL_P95_MS:.0f} ms): {'MET' if met else 'MISSED'} - {r.accepted_rate:,.0f}/s, "
            f"p95 accept {h.fmt(accept)} ms, p95 fill {h.fmt(fill)} ms")  # fmt: skip


def format_summary(results: list[Result]) -> str:
    header = (
        f"{'scenario':<16} {'sent/s':>7} {'acc/s':>7} {'refused':>7} {'failed':>6} {'acc p50':>7} "
        f"{'p95':>6} {'p99':>6} {'fill p50':>8} {'p95':>6} {'p99':>6} {'exec/s':>7} {'backlog':>8} "
        f"{'api%':>5} {'match%':>6} {'pg%':>5} {'clnt%':>5} {'mach%':>5} {'ref/s':>6} {'ratio':>5}"
    )
    lines = [header, "-" * len(header)]
    for r in results:
        c, cpu, a, f = r.client, r.cpu, r.accept_ms, r.fill_ms
        ratio = r.accepted_rate / r.reference_rate if r.reference_rate else None
        lines.append(
            f"{r.short:<16} {r.sent_rate:>7,.0f} {r.accepted_rate:>7,.0f} "
            f"{sum(c.get('refused', {}).values()):>7,} {sum(c.get('failed', {}).values()):>6,} "
            f"{h.fmt(a.get('p50')):>7} {h.fmt(a.get('p95')):>6} {h.fmt(a.get('p99')):>6} "
            f"{h.fmt(f.get('p50')):>8} {h.fmt(f.get('p95')):>6} {h.fmt(f.get('p99')):>6} "
            f"{r.executions_rate:>7,.0f} {h.fmt(r.backlog_end, ',.0f'):>8} {cpu.get('api', 0):>5.0f} "
            f"{cpu.get('matcher', 0):>6.0f} {h.fmt(cpu.get('postgres'), '.0f'):>5} "
            f"{cpu.get('client', 0):>5.0f} {cpu.get('machine', 0):>5.0f} "
            f"{h.fmt(r.reference_rate, ',.0f'):>6} {h.fmt(ratio, '.2f'):>5}"
        )
    lines.append(
        "latencies in ms (accept: placeOrder HTTP round trip; fill: just before placeOrder -> "
        "FILL event, market orders); backlog: orders handed off, not yet acked by the matcher at "
        "the end of the window; CPU in % of one core, machine = all cores; ref/s: the "
        "one-transaction reference at the same concurrency, ratio = acc/s / ref/s"
    )
    return "\n".join(lines)


# The references: the one-transaction app, and pgbench


def run_reference(run: h.Run, admin: str, args: argparse.Namespace, concurrency: int,
                  postmaster: int | None) -> str:  # fmt: skip
    """The reference app on a scratch database, loaded from a process of its own; its line, and
    its accepted/s in `args.references`."""
    h.recreate_database(admin, REFERENCE_DATABASE)
    port = h.free_port()
    url = h.with_path(admin, "/" + REFERENCE_DATABASE)
    argv = [sys.executable, "-m", "bench.reference_app", "--database-url", url, "--port", str(port)]
    app = run.start("reference", argv, {})
    try:
        h.wait_until("reference app", [app], h.answers(port, "/graphql?query=%7Bok%7D"))
        groups = {"app": lambda: h.process_tree(app.pid), "postgres": h.pg_tree(postmaster)}
        cpu = h.CpuWindow(groups).start()
        load = f"-m bench.reference_app --load --port {port} --concurrency {concurrency} --warmup {args.warmup} --duration {args.duration}"
        done = subprocess.run([sys.executable, *load.split()], cwd=h.ROOT, capture_output=True, text=True,
                              timeout=args.warmup + args.duration + 120, check=False)  # fmt: skip
        used = cpu.stop()
    finally:
        run.stop(app)
    line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        return f"  reference failed: {(done.stderr or done.stdout)[-500:]}"
    out = json.loads(line[len("RESULT ") :])
    args.references[concurrency] = rate = float(out["rate"])
    per = {k: 10 * used[k] / max(rate, 1e-9) for k in ("app", "postgres")}
    return (
        f"  reference: {rate:,.0f} mutations/s, p50/p95/p99 {h.fmt(out['p50_ms'])}/"
        f"{h.fmt(out['p95_ms'])}/{h.fmt(out['p99_ms'])} ms, {out['failed']:.0f} failed; CPU ms "
        f"per mutation: app {per['app']:.2f}, postgres {per['postgres']:.2f} (over warm-up and window)"
    )


def run_pgbench(admin: str, args: argparse.Namespace) -> str:
    """`pgbench -i -s SCALE` in a scratch database, then a tpcb-like run; the scratch dropped."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pgbench"), reverse=True)
    exe = shutil.which("pgbench") or next(iter(found), None)
    if exe is None:
        return "pgbench reference: failed: pgbench not found (PATH, /usr/lib/postgresql/*/bin)"
    parts = h.urlsplit(admin)
    conn = f"{exe} -h {parts.hostname} -p {parts.port or 5432} -U {parts.username or 'postgres'}"
    commands = [f"{conn} -i -q -s 10 {PGBENCH_DATABASE}",
                f"{conn} -c 8 -j 2 -T {args.pgbench_seconds} -b tpcb-like {PGBENCH_DATABASE}"]  # fmt: skip
    env = {"PATH": "/usr/bin:/bin", **({"PGPASSWORD": parts.password} if parts.password else {})}
    h.recreate_database(admin, PGBENCH_DATABASE)
    try:
        for command in commands:
            done = subprocess.run(command.split(), capture_output=True, text=True, env=env,
                                  timeout=args.pgbench_seconds + 600, check=False)  # fmt: skip
            if done.returncode:
                return f"pgbench reference: failed: {done.stderr.strip()[-500:]}"
    finally:
        h.pg_execute(admin, f'DROP DATABASE IF EXISTS "{PGBENCH_DATABASE}" WITH (FORCE)')
    tps = re.search(r"^tps = ([0-9.]+) \(without initial", done.stdout, re.MULTILINE)
    latency = re.search(r"^latency average = ([0-9.]+) ms", done.stdout, re.MULTILINE)
    return (
        f"pgbench reference (tpcb-like, same server, scratch database): "
        f"{h.fmt(float(tps[1]) if tps else None, ',.0f')} tps, latency average "
        f"{h.fmt(float(latency[1]) if latency else None, '.2f')} ms\n  "
        + "\n  ".join(f"$ {c}" for c in commands)
    )


# Run


def start_client(run: h.Run, system: System, args: argparse.Namespace, symbols_file: Path,
                 scenarios: int) -> tuple[h.Managed, dict[str, Any]]:  # fmt: skip
    """The client process, its users registered, funded and subscribed: (it, its READY line)."""
    budget = 600 + scenarios * (args.warmup + args.duration + args.drain + args.settle + 300)
    client_args = (
        f"-m bench.orders --client --port {system.api_port} --symbols-file {symbols_file} "
        f"--users {args.users} --subscribers {args.subscribers or args.users} --deposit "
        f"{args.deposit} --seed {args.seed} --run-id {args.run_id} --request-timeout "
        f"{args.request_timeout:g} --setup-concurrency {args.setup_concurrency} "
        f"--client-max-seconds {budget:.0f}"
    )
    client = run.start("client", [sys.executable, *client_args.split()], system.env, pipe=True)
    ready = json.loads(client.read_tagged("READY", 300 + args.users, system.servers))
    print(
        f"client ready: {ready['users']} users registered and funded in {ready['register_s']:.1f} "
        f"s, {ready['subscribed']} orderUpdates sockets ({ready['subscribe_failed']} failed), "
        f"quotes for {ready['quotes']} symbols",
        flush=True,
    )
    if ready.get("user_failures") or ready.get("socket_errors"):
        print(f"  setup errors: {ready['user_failures']} {ready['socket_errors']}", flush=True)
    return client, ready


def benchmark(args: argparse.Namespace, run: h.Run) -> int:
    env = h.bench_env(args) | {
        "TRADEQL_VENUE_FAULTS": "EDGX=0,ARCA=0,IEXG=0",
        "TRADEQL_PASSWORD_HASH_TIME_COST": "1",
        "TRADEQL_PASSWORD_HASH_MEMORY_KIB": "8192",
        "TRADEQL_FEED_SIM_RATE": f"{args.quote_rate:g}",
    }
    admin = h.server_urls()[0]
    partitions = h.settings_for(env).quote_partitions
    api_workers = args.api_workers or int(os.environ.get("TRADEQL_API_WORKERS") or 0)
    api_workers = api_workers or os.cpu_count() or 1
    scenarios = [Result("closed", float(c)) for c in args.concurrency or []]
    scenarios += [Result("open", float(r)) for r in args.rate or []]
    scenarios = scenarios or [Result("closed", 50.0)]
    shown = ("server_version", "synchronous_commit", "fsync", "shared_buffers")
    facts = {n: h.pg_fetch(admin, f"SHOW {n}")[0][0] for n in shown}
    postmaster = h.postmaster_pid(admin)
    print(
        f"orders benchmark: {len(scenarios)} scenario(s), {args.warmup:g} s warm-up + "
        f"{args.duration:g} s each; {os.cpu_count()} cores; {api_workers} API processes; "
        f"{args.users} users ({args.subscribers or args.users} with an orderUpdates socket), "
        f"{args.symbols} symbols, {args.market_share:.0%} market; order batch "
        f"{os.environ.get('TRADEQL_ORDER_BATCH_MS', 'default')} ms; PostgreSQL {facts['server_version']} "
        f"(synchronous_commit={facts['synchronous_commit']}, fsync={facts['fsync']}, "
        f"shared_buffers={facts['shared_buffers']}); db {args.database}, redis db "
        f"{args.redis_db}; logs in {run.log_dir}",
        flush=True,
    )
    profiler = h.Profiler(args, run.log_dir)
    args.references = {}
    if args.reference:
        for concurrency in sorted({int(s.value) for s in scenarios if s.mode == "closed"}):
            print(f"reference: one-transaction mutation, concurrency {concurrency} ...", flush=True)
            print(run_reference(run, admin, args, concurrency, postmaster), flush=True)
    if args.pgbench:
        print(f"pgbench: scale 10, -c 8 -j 2 -T {args.pgbench_seconds} ...", flush=True)
        print(run_pgbench(admin, args), flush=True)
    print(f"database {args.database}: dropped and created; migrating", flush=True)
    h.recreate_database(admin, args.database)
    h.migrate(env["DATABASE_URL"])
    symbols = h.load_securities(env, args.symbols)
    (symbols_file := run.log_dir / "symbols.json").write_text(json.dumps(symbols))
    h.redis_client(env["REDIS_URL"]).flushdb()
    system = System(run, env, args, partitions)
    system.start(symbols, api_workers, args.matchers)
    client, ready = start_client(run, system, args, symbols_file, len(scenarios))
    results: list[Result] = []
    started = time.monotonic()
    try:
        for index, result in enumerate(scenarios, start=1):
            print(f"\nrunning {result.label} ...", flush=True)
            run_scenario(result, system, client, args, postmaster, profiler)
            if result.mode == "closed":
                result.reference_rate = args.references.get(int(result.value))
            results.append(result)
            print(format_result(result, index, len(scenarios), ready["users"]), flush=True)
    finally:
        run.stop_all()
        if results:
            print(f"\nsummary ({time.monotonic() - started:.0f} s in all)")
            print(format_summary(results))
    code, text = h.run_tradeql(env, "check", check=False)
    lines = text.splitlines()
    lines[20:] = [f"... ({len(lines) - 20} more lines)"] if len(lines) > 20 else []
    print(f"\ntradeql check: {'books balance' if code == 0 else 'BOOKS DO NOT BALANCE'}")
    print("  " + "\n  ".join(lines))
    return 1 if code else 0


def build_parser() -> argparse.ArgumentParser:
    p = h.parser("orders", __doc__, database="tradeql_bench_orders", redis_db=13)
    add, count, seconds = p.add_argument, h.positive, h.positive_float
    add("--concurrency", type=count, nargs="+",
        help="closed loop: requests in flight (default, without --rate: 50)")  # fmt: skip
    add("--rate", type=seconds, nargs="+", help="open loop: orders/s offered")
    add("--drain", type=seconds, default=15.0, help="max wait for the window's fills")
    add("--settle", type=seconds, default=60.0, help="max wait for the matcher's backlog")
    add("--users", type=count, default=200, help="simulated users")
    add("--subscribers", type=int, default=0, help="users with an orderUpdates socket (0: all)")
    add("--symbols", type=count, default=28, help="symbols traded and simulated")
    add("--market-share", type=h.share, default=0.7, help="share of market orders")
    add("--sell-share", type=h.share, default=0.4, help="share of sells of shares held")
    add("--max-quantity", type=count, default=5, help="shares per order, at most")
    add("--limit-spread", type=h.share, default=0.003, help="limit prices within this of quotes")
    add("--deposit", default="1000000", help="cash each user deposits")
    add("--max-inflight", type=count, default=2000, help="open loop bound")
    add("--request-timeout", type=seconds, default=30.0, help="placeOrder timeout, s")
    add("--seed", type=int, default=1, help="seed of the order flow")
    add("--feed-seed", type=int, default=1, help="seed of the simulator")
    add("--quote-rate", type=seconds, default=5.0, help="quote updates/s per symbol")
    add("--api-workers", type=count,
        help="API processes (default: TRADEQL_API_WORKERS, else one per core)")  # fmt: skip
    add("--matchers", type=count, default=1, help="matchers, the partitions split between them")
    add("--setup-concurrency", type=count, default=8, help="registrations at once")
    add("--no-reference", dest="reference", action="store_false",
        help="skip the one-transaction reference")  # fmt: skip
    add("--pgbench", action="store_true", help="also pgbench tpcb-like: scale 10, -c 8 -j 2")
    add("--pgbench-seconds", type=count, default=15)
    internal = p.add_argument_group("internal (the benchmark runs itself with these)").add_argument
    internal("--client", action="store_true", help="run the client half")
    internal("--port", type=int, help="client: the API's port")
    internal("--symbols-file", type=Path, help="client: JSON list of symbols")
    internal("--run-id", type=int, default=int(time.time()), help="client: key prefix")
    internal("--client-max-seconds", type=seconds, default=3600.0)
    return p


def main() -> int:
    args = build_parser().parse_args()
    if args.client:
        h.raise_nofile_limit()
        return run_client(client_main(args))
    run = h.Run("orders", args.log_dir)
    return h.execute(lambda: benchmark(args, run), run.stop_all)


if __name__ == "__main__":
    sys.exit(main())
