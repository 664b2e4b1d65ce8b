"""The client half of the orders benchmark: K users placing orders over HTTP, fills over WebSockets.

One process, one event loop (uvloop when installed). HTTP is a minimal HTTP/1.1 client on
persistent loopback connections (much cheaper per request than httpx, so the client is not the
bottleneck); WebSockets speak graphql-transport-ws over `websockets`, one connection and one
`orderUpdates` subscription per subscribed user.

Control, one line each way on stdin/stdout:

* at start it registers and funds the users, subscribes, reads the quotes, then prints
  `READY <json>`;
* `RUN <json spec>` runs one scenario: load for `warmup` seconds, prints `MEASURING`, load for
  `duration` seconds (what is sent in this window is what is measured), prints `MEASURED`, stops
  sending, waits for the requests in flight and (at most `drain` seconds) for the fills of the
  market orders of the window, then prints `RESULT <json>`;
* end of input (or `QUIT`) ends it. It also ends by itself after `--client-max-seconds`.

Latencies are `time.perf_counter_ns()` in this one process: accept = the HTTP round trip of
`placeOrder` (from just before the request is written to the end of its response);
placement-to-fill = from that same instant to the arrival of the order's FILL event.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import WebSocketException
from websockets.typing import Subprotocol

from bench._client import emit, stdin_reader
from bench._metrics import BUCKETS_PER_MS

PLACE = (
    "mutation PlaceOrder($i: PlaceOrderInput!) "
    "{ placeOrder(input: $i) { order { id status } errors { code } } }"
)
ORDER_UPDATES = (
    "subscription OrderUpdates { orderUpdates "
    "{ event order { id status } execution { price quantity } } }"
)
QUOTES = "query Quotes($s: [String!]!) { quotes(symbols: $s) { symbol bid ask } }"
REGISTER = (
    "mutation Register($e: String!, $p: String!) "
    "{ register(email: $e, password: $p) { token errors { code message } } }"
)
DEPOSIT = (
    "mutation Deposit($a: Decimal!, $k: String!) "
    "{ deposit(amount: $a, idempotencyKey: $k) { portfolio { cash } errors { code message } } }"
)
PASSWORD = "violet-harbor-lantern-42"
SUBPROTOCOL = Subprotocol("graphql-transport-ws")
TERMINAL_EVENTS = frozenset({"FILL", "CANCELLED", "EXPIRED", "REJECTED"})
FILL_EVENTS = frozenset({"FILL", "PARTIAL_FILL"})
PENNY = Decimal("0.01")
SUB_PENNY = Decimal("0.0001")

MAX_MESSAGES_PER_SOCKET = 50_000_000  # bound of a receive loop; never reached in practice
MAX_TRACKED_ORDERS = 5_000_000  # orders kept for their fills (a run places far fewer)
MAX_EARLY_EVENTS = 100_000  # events that arrived before their placeOrder answer
MAX_ORDERS_PER_RUN = 10_000_000  # bound of a load loop
MAX_COMMANDS = 1000
HTTP_HEAD_LIMIT = 64 * 1024


class HttpError(Exception):
    """A request that got no usable answer (connection lost, timeout, malformed response)."""


# ------------------------------------------------------------------------------------------------
# HTTP/1.1 on persistent connections


class HttpConnection:
    """One keep-alive connection; one request at a time."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._host_header = f"Host: {host}:{port}\r\n".encode()

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._reader is None or self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(
                self.host, self.port, limit=HTTP_HEAD_LIMIT
            )
        return self._reader, self._writer

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None

    async def post(self, path: bytes, body: bytes, extra_headers: bytes) -> tuple[int, bytes]:
        """POST `body` (JSON); (status, response body). Raises HttpError (and drops the socket)."""
        try:
            reader, writer = await self._open()
            writer.write(
                b"POST "
                + path
                + b" HTTP/1.1\r\n"
                + self._host_header
                + b"Content-Type: application/json\r\nContent-Length: "
                + str(len(body)).encode()
                + b"\r\n"
                + extra_headers
                + b"\r\n"
                + body
            )
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = -1
            chunked = close = False
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"transfer-encoding" and b"chunked" in value.lower():
                    chunked = True
                elif name == b"connection" and b"close" in value.lower():
                    close = True
            if chunked:
                data = await _read_chunked(reader)
            elif length >= 0:
                data = await reader.readexactly(length)
            else:
                data = await reader.read()
                close = True
            if close:
                self.close()
            return status, data
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
            self.close()
            raise HttpError(type(exc).__name__) from exc
        except BaseException:  # a timeout or a cancel in the middle: the stream is out of step
            self.close()
            raise


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    parts: list[bytes] = []
    for _ in range(100_000):
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0].strip(), 16)
        if size == 0:
            await reader.readuntil(b"\r\n")
            return b"".join(parts)
        parts.append(await reader.readexactly(size))
        await reader.readexactly(2)
    raise ValueError("too many chunks")


class HttpPool:
    """Connections handed out one request at a time, at most `limit` of them."""

    def __init__(self, host: str, port: int, limit: int) -> None:
        self.host = host
        self.port = port
        self.limit = limit
        self.created = 0
        self._idle: list[HttpConnection] = []
        self._available = asyncio.Condition()

    @contextlib.asynccontextmanager
    async def connection(self) -> Any:
        conn = await self._acquire()
        try:
            yield conn
        finally:
            self._idle.append(conn)
            async with self._available:
                self._available.notify()

    async def _acquire(self) -> HttpConnection:
        if self._idle:
            return self._idle.pop()
        if self.created < self.limit:
            self.created += 1
            return HttpConnection(self.host, self.port)
        async with self._available:
            await self._available.wait_for(lambda: bool(self._idle))
        return self._idle.pop()

    def close(self) -> None:
        for conn in self._idle:
            conn.close()
        self._idle.clear()


async def graphql(
    conn: HttpConnection, query: str, variables: dict[str, Any], auth: bytes, timeout: float
) -> dict[str, Any]:
    body = orjson.dumps({"query": query, "variables": variables})
    async with asyncio.timeout(timeout):
        status, data = await conn.post(b"/graphql", body, auth)
    if status != 200:
        raise HttpError(f"HTTP {status}: {data[:200]!r}")
    answer: dict[str, Any] = orjson.loads(data)
    if answer.get("errors"):
        raise HttpError(f"GraphQL errors: {str(answer['errors'])[:300]}")
    return answer["data"]  # type: ignore[no-any-return]


# ------------------------------------------------------------------------------------------------
# Users, orders, statistics


@dataclass
class User:
    index: int
    email: str
    token: str = ""
    auth: bytes = b""
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
class Window:
    """What the orders sent in the measuring window did, and the events seen meanwhile."""

    measuring: bool = False
    started: float = 0.0
    seconds: float = 0.0
    scheduled: int = 0  # open loop: orders due in the window
    skipped: int = 0  # open loop: due, but max in-flight reached
    sent: int = 0
    sent_market: int = 0
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
    events: Counter[str] = field(default_factory=Counter)  # received while measuring
    fill_events: int = 0  # FILL + PARTIAL_FILL received while measuring
    max_accept_ms: float = 0.0
    max_fill_ms: float = 0.0
    sample_errors: list[str] = field(default_factory=list)

    def start(self) -> None:
        self.started = time.monotonic()
        self.measuring = True

    def stop(self) -> None:
        self.measuring = False
        self.seconds = time.monotonic() - self.started

    def error(self, kind: str, text: str) -> None:
        self.failed[kind] += 1
        if len(self.sample_errors) < 5:
            self.sample_errors.append(text[:300])


def _observe(histogram: dict[int, int], elapsed_ns: int) -> float:
    ms = elapsed_ns / 1e6
    bucket = int(ms * BUCKETS_PER_MS)
    histogram[bucket] = histogram.get(bucket, 0) + 1
    return ms


def _on_tick(price: Decimal) -> Decimal:
    tick = PENNY if price >= 1 else SUB_PENNY
    return max(tick, (price / tick).quantize(Decimal(1), rounding=ROUND_HALF_UP) * tick)


# ------------------------------------------------------------------------------------------------
# The load generator


class Bench:
    def __init__(self, args: Any, symbols: list[str]) -> None:
        self.args = args
        self.host, self.port = "127.0.0.1", int(args.port)
        self.symbols = symbols
        self.rng = random.Random(args.seed)
        self.users = [
            User(i, f"bench-orders-{args.run_id}-{i}@tradeql.dev") for i in range(args.users)
        ]
        self.quotes: dict[str, tuple[Decimal, Decimal]] = {}
        self.orders: dict[str, Placed] = {}
        self.early: dict[str, list[tuple[str, float, int]]] = {}
        self.window = Window()
        self.sockets: list[ClientConnection] = []
        self.receivers: list[asyncio.Task[None]] = []
        self.socket_errors: list[str] = []
        self.sockets_closed = 0
        self.sequence = 0
        self.inflight = 0
        self.timeout = float(args.request_timeout)

    # -- setup ---------------------------------------------------------------------------
    async def setup(self) -> dict[str, Any]:
        started = time.monotonic()
        pool = HttpPool(self.host, self.port, self.args.setup_concurrency)
        limiter = asyncio.Semaphore(self.args.setup_concurrency)
        failures: list[str] = []

        async def prepare(user: User) -> None:
            async with limiter, pool.connection() as conn:
                try:
                    data = await graphql(
                        conn, REGISTER, {"e": user.email, "p": PASSWORD}, b"", 60.0
                    )
                    reg = data["register"]
                    if reg["errors"] or not reg["token"]:
                        raise HttpError(f"register: {reg['errors']}")
                    user.token = reg["token"]
                    user.auth = f"Authorization: Bearer {user.token}\r\n".encode()
                    data = await graphql(
                        conn,
                        DEPOSIT,
                        {"a": self.args.deposit, "k": f"fund-{user.index}"},
                        user.auth,
                        60.0,
                    )
                    if data["deposit"]["errors"]:
                        raise HttpError(f"deposit: {data['deposit']['errors']}")
                except (HttpError, TimeoutError, KeyError, TypeError) as exc:
                    failures.append(f"user {user.index}: {type(exc).__name__}: {exc}")
                    user.token = ""

        await asyncio.gather(*(prepare(u) for u in self.users))
        pool.close()
        self.users = [u for u in self.users if u.token]
        if not self.users:
            raise RuntimeError(f"no user could register: {failures[:3]}")
        registered_s = time.monotonic() - started
        subscribers = self.users[: min(self.args.subscribers, len(self.users))]
        opened = await asyncio.gather(*(self._subscribe(u) for u in subscribers))
        await self._refresh_quotes_until_complete(30.0)
        return {
            "users": len(self.users),
            "user_failures": failures[:5],
            "user_failed": len(failures),
            "subscribed": sum(1 for ok in opened if ok),
            "subscribe_failed": sum(1 for ok in opened if not ok),
            "socket_errors": self.socket_errors[:5],
            "register_s": registered_s,
            "setup_s": time.monotonic() - started,
            "quotes": len(self.quotes),
        }

    async def _subscribe(self, user: User) -> bool:
        url = f"ws://{self.host}:{self.port}/graphql"
        try:
            async with asyncio.timeout(30):
                ws = await connect(
                    url,
                    subprotocols=[SUBPROTOCOL],
                    compression=None,
                    open_timeout=30,
                    close_timeout=1,
                    ping_interval=None,
                    max_queue=256,
                )
                await ws.send(
                    json.dumps(
                        {
                            "type": "connection_init",
                            "payload": {"Authorization": f"Bearer {user.token}"},
                        }
                    )
                )
                ack = json.loads(await ws.recv())
                if ack.get("type") != "connection_ack":
                    await ws.close()
                    raise RuntimeError(f"expected connection_ack, got {ack}")
                await ws.send(
                    json.dumps(
                        {"id": "1", "type": "subscribe", "payload": {"query": ORDER_UPDATES}}
                    )
                )
        except (OSError, TimeoutError, RuntimeError, WebSocketException, ValueError) as exc:
            self.socket_errors.append(f"user {user.index}: {type(exc).__name__}: {exc}")
            return False
        user.subscribed = True
        self.sockets.append(ws)
        self.receivers.append(asyncio.create_task(self._receive(ws), name=f"ws-{user.index}"))
        return True

    async def _receive(self, ws: ClientConnection) -> None:
        perf = time.perf_counter_ns
        try:
            for _ in range(MAX_MESSAGES_PER_SOCKET):
                raw = await ws.recv()
                now = perf()
                message = orjson.loads(raw)
                kind = message.get("type")
                if kind == "next":
                    payload = message.get("payload") or {}
                    update = (payload.get("data") or {}).get("orderUpdates")
                    if update:
                        self._on_update(update, now)
                    elif payload.get("errors"):
                        self.socket_errors.append(str(payload["errors"])[:300])
                elif kind == "ping":
                    await ws.send('{"type":"pong"}')
                elif kind in ("error", "complete"):
                    self.socket_errors.append(str(message)[:300])
                    return
        except (WebSocketException, OSError) as exc:
            self.socket_errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            self.sockets_closed += 1

    def _on_update(self, update: dict[str, Any], now: int) -> None:
        event = update["event"]
        order_id = update["order"]["id"]
        execution = update.get("execution")
        quantity = float(execution["quantity"]) if execution else 0.0
        window = self.window
        if window.measuring:
            window.events[event] += 1
            if event in FILL_EVENTS:
                window.fill_events += 1
        placed = self.orders.get(order_id)
        if placed is None:  # the event beat the placeOrder answer
            if len(self.early) < MAX_EARLY_EVENTS:
                self.early.setdefault(order_id, []).append((event, quantity, now))
            return
        self._apply(order_id, placed, event, quantity, now)

    def _apply(self, order_id: str, placed: Placed, event: str, quantity: float, now: int) -> None:
        window = self.window
        if event in FILL_EVENTS:
            placed.filled += quantity
            if placed.side == "BUY":
                shares = placed.user.shares
                shares[placed.symbol] = shares.get(placed.symbol, 0.0) + quantity
            if event == "FILL" and placed.measured:
                if placed.kind == "MARKET":
                    window.market_filled += 1
                    ms = _observe(window.fill_hist, now - placed.sent_ns)
                    window.max_fill_ms = max(window.max_fill_ms, ms)
                else:
                    window.limit_filled += 1
        if event in TERMINAL_EVENTS:
            self.orders.pop(order_id, None)
            if event != "FILL" and placed.side == "SELL":
                shares = placed.user.shares
                shares[placed.symbol] = (
                    shares.get(placed.symbol, 0.0) + placed.quantity - placed.filled
                )
            if event != "FILL" and placed.measured and placed.kind == "MARKET":
                if placed.filled == 0:
                    window.market_closed_unfilled += 1

    async def _refresh_quotes_until_complete(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        for _ in range(int(seconds / 0.25) + 1):
            await self._refresh_quotes()
            if len(self.quotes) >= len(self.symbols) or time.monotonic() > deadline:
                return
            await asyncio.sleep(0.25)

    async def _refresh_quotes(self) -> None:
        conn = HttpConnection(self.host, self.port)
        try:
            data = await graphql(conn, QUOTES, {"s": self.symbols}, b"", 10.0)
        except (HttpError, TimeoutError) as exc:
            self.socket_errors.append(f"quotes query: {type(exc).__name__} {exc}".strip())
            return
        finally:
            conn.close()
        for quote in data["quotes"]:
            if quote and Decimal(quote["bid"]) > 0 and Decimal(quote["ask"]) > 0:
                self.quotes[quote["symbol"]] = (Decimal(quote["bid"]), Decimal(quote["ask"]))

    async def _quote_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)
            if not stop.is_set():
                await self._refresh_quotes()

    # -- one order -----------------------------------------------------------------------
    def _next_order(self, spec: dict[str, Any]) -> tuple[User, dict[str, Any], int]:
        rng = self.rng
        user = self.users[rng.randrange(len(self.users))]
        held = (
            [s for s, q in user.shares.items() if q >= 1] if user.subscribed else []
        )  # only a subscribed user's fills are known here
        self.sequence += 1
        if held and rng.random() < spec["sell_share"]:
            side, symbol = "SELL", rng.choice(held)
            quantity = rng.randint(1, max(1, min(int(user.shares[symbol]), spec["max_quantity"])))
            user.shares[symbol] -= quantity  # reserved here until refused or closed unfilled
        else:
            side, symbol = "BUY", rng.choice(self.symbols)
            quantity = rng.randint(1, spec["max_quantity"])
        order: dict[str, Any] = {
            "symbol": symbol,
            "side": side,
            "quantity": str(quantity),
            "idempotencyKey": f"o{self.args.run_id}-{self.sequence}",
        }
        quote = self.quotes.get(symbol)
        if rng.random() >= spec["market_share"] and quote is not None:
            bid, ask = quote
            spread = spec["limit_spread"]
            if side == "BUY":  # mostly at or just under the ask: some fill at once, some rest
                price = ask * (1 + Decimal(str(rng.uniform(-spread, spread / 3))))
            else:
                price = bid * (1 + Decimal(str(rng.uniform(-spread / 3, spread))))
            order["type"] = "LIMIT"
            order["limitPrice"] = str(_on_tick(price))
        else:
            order["type"] = "MARKET"
        return user, order, quantity

    async def place(self, conn: HttpConnection, spec: dict[str, Any]) -> None:
        user, order, quantity = self._next_order(spec)
        window = self.window
        measured = window.measuring
        kind = order["type"]
        body = orjson.dumps({"query": PLACE, "variables": {"i": order}})
        if measured:
            window.sent += 1
            window.sent_market += kind == "MARKET"
        self.inflight += 1
        sent = time.perf_counter_ns()
        answer: dict[str, Any] | None = None
        try:
            async with asyncio.timeout(self.timeout):
                try:
                    status, data = await conn.post(b"/graphql", body, user.auth)
                except HttpError:
                    # A kept-alive connection the server closed meanwhile (its idle timeout):
                    # once more on a new one, as HTTP clients do; the idempotency key makes
                    # a repeat harmless.
                    status, data = await conn.post(b"/graphql", body, user.auth)
            if status == 200:
                answer = orjson.loads(data)
            elif measured:
                window.error(f"HTTP_{status}", data.decode(errors="replace"))
        except TimeoutError:
            if measured:
                window.error("TIMEOUT", f"no answer within {self.timeout:g}s")
        except HttpError as exc:
            if measured:
                window.error("CONNECTION", str(exc))
        finally:
            self.inflight -= 1
        done = time.perf_counter_ns()
        payload = None
        if answer is not None:
            payload = (answer.get("data") or {}).get("placeOrder")
            if payload is None and measured:
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
                ms = _observe(window.accept_hist, done - sent)
                window.max_accept_ms = max(window.max_accept_ms, ms)
            for event, qty, at in self.early.pop(order_id, []):
                if order_id in self.orders:
                    self._apply(order_id, placed, event, qty, at)
            return
        if payload is not None:
            codes = [e.get("code", "?") for e in payload.get("errors") or []] or ["NO_ORDER"]
            if measured:
                window.refused[",".join(codes)] += 1
                _observe(window.accept_hist, done - sent)
        if order["side"] == "SELL":  # not placed: the shares are free again
            user.shares[order["symbol"]] = user.shares.get(order["symbol"], 0.0) + quantity

    # -- scenarios -----------------------------------------------------------------------
    async def run(self, spec: dict[str, Any]) -> dict[str, Any]:
        self.window = Window()
        warmup, duration = float(spec["warmup"]), float(spec["duration"])
        started = time.monotonic()
        measure_at, end_at = started + warmup, started + warmup + duration
        stop_quotes = asyncio.Event()
        quote_task = asyncio.create_task(self._quote_loop(stop_quotes), name="quotes")
        pool = HttpPool(self.host, self.port, int(spec["max_inflight"]))
        if spec["mode"] == "closed":
            load = asyncio.create_task(self._closed(spec, pool, end_at), name="load")
        else:
            load = asyncio.create_task(self._open(spec, pool, end_at), name="load")
        try:
            await _sleep_until(measure_at)
            self.window.start()
            emit("MEASURING")
            await _sleep_until(end_at)
            self.window.stop()
            emit("MEASURED")
            try:
                async with asyncio.timeout(self.timeout + 10):
                    await load  # no new orders after the window; those in flight finish
            except TimeoutError:
                self.window.error("CLIENT", "requests in flight past the timeout were abandoned")
            await self._drain(float(spec["drain"]))
        finally:
            load.cancel()
            stop_quotes.set()
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await load
            with contextlib.suppress(asyncio.CancelledError):
                await quote_task
            pool.close()
        return self._result(pool)

    async def _closed(self, spec: dict[str, Any], pool: HttpPool, end_at: float) -> None:
        async def worker() -> None:
            async with pool.connection() as conn:
                for _ in range(MAX_ORDERS_PER_RUN):
                    if time.monotonic() >= end_at:
                        return
                    await self.place(conn, spec)

        await asyncio.gather(*(worker() for _ in range(int(spec["concurrency"]))))

    async def _open(self, spec: dict[str, Any], pool: HttpPool, end_at: float) -> None:
        """Orders at fixed intervals (1/rate), whatever the answers do; never more than
        max_inflight outstanding (those due beyond it are counted as skipped)."""
        rate = float(spec["rate"])
        limit = int(spec["max_inflight"])
        started = time.monotonic()
        tasks: set[asyncio.Task[None]] = set()

        async def one() -> None:
            async with pool.connection() as conn:
                await self.place(conn, spec)

        count = min(MAX_ORDERS_PER_RUN, int((end_at - started) * rate))
        for i in range(count):
            due = started + i / rate
            now = time.monotonic()
            if due > now + 0.001:
                await asyncio.sleep(due - now)
            if due >= end_at:
                break
            window = self.window
            if window.measuring:
                window.scheduled += 1
            if len(tasks) >= limit:
                if window.measuring:
                    window.skipped += 1
                continue
            task = asyncio.create_task(one())
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _drain(self, seconds: float) -> None:
        """Wait (bounded) for the market orders sent in the window to be filled or closed."""
        deadline = time.monotonic() + seconds
        for _ in range(int(seconds / 0.1) + 1):
            if not any(p.measured and p.kind == "MARKET" for p in self.orders.values()):
                return
            if time.monotonic() > deadline:
                return
            await asyncio.sleep(0.1)

    def _result(self, pool: HttpPool) -> dict[str, Any]:
        w = self.window
        open_market = sum(1 for p in self.orders.values() if p.measured and p.kind == "MARKET")
        return {
            "window_seconds": w.seconds,
            "scheduled": w.scheduled,
            "skipped": w.skipped,
            "sent": w.sent,
            "sent_market": w.sent_market,
            "accepted": w.accepted,
            "accepted_market": w.accepted_market,
            "accepted_by_kind": dict(w.accepted_by_kind),
            "refused": dict(w.refused),
            "failed": dict(w.failed),
            "accept_hist": w.accept_hist,
            "fill_hist": w.fill_hist,
            "max_accept_ms": w.max_accept_ms,
            "max_fill_ms": w.max_fill_ms,
            "market_filled": w.market_filled,
            "market_unfilled_after_drain": open_market,
            "market_closed_unfilled": w.market_closed_unfilled,
            "limit_filled": w.limit_filled,
            "events": dict(w.events),
            "fill_events": w.fill_events,
            "connections": pool.created,
            "sockets_open": len(self.sockets) - self.sockets_closed,
            "socket_errors": self.socket_errors[-5:],
            "sample_errors": w.sample_errors,
            "tracked_orders": len(self.orders),
        }

    async def close(self) -> None:
        for task in self.receivers:
            task.cancel()
        await asyncio.gather(*self.receivers, return_exceptions=True)
        closing = [ws.close() for ws in self.sockets]
        if closing:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5):
                    await asyncio.gather(*closing, return_exceptions=True)


async def _sleep_until(at: float) -> None:
    remaining = at - time.monotonic()
    if remaining > 0:
        await asyncio.sleep(remaining)


async def run_client(args: Any, symbols: list[str]) -> int:
    bench = Bench(args, symbols)
    try:
        async with asyncio.timeout(float(args.client_max_seconds)):
            control = await stdin_reader()
            ready = await bench.setup()
            emit("READY " + json.dumps(ready))
            for _ in range(MAX_COMMANDS):
                line = (await control.readline()).decode().strip()
                if not line or line == "QUIT":
                    break
                if line.startswith("RUN "):
                    result = await bench.run(json.loads(line[4:]))
                    emit("RESULT " + json.dumps(result))
    except TimeoutError:
        print(f"client: stopped after its {args.client_max_seconds}s limit", file=sys.stderr)
        return 1
    finally:
        await bench.close()
    return 0


def main(args: Any, symbols: list[str]) -> int:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(run_client(args, symbols))
    return uvloop.run(run_client(args, symbols))
