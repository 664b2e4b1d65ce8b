"""The client half of the reads benchmark: signed-in users asking for their portfolio and order
history over HTTP/1.1 keep-alive connections (a minimal client: much cheaper per request than
httpx, so the client is not what limits the rate).

    python -m bench.reads_client --port P --tokens FILE [--max-seconds S]

Control, one line each way on stdin/stdout:

* at start it checks what one user sees (positions and their quotes, every page of the order
  history and its executions) and prints `READY <json>`;
* `RUN <json spec>` runs one scenario: load for `warmup` seconds, prints `MEASURING`, load for
  `duration` seconds (requests *sent* in this window are the measured ones), prints `MEASURED`,
  waits (at most `timeout` seconds) for the requests in flight, then prints `RESULT <json>`;
* end of input (or `QUIT`) ends it; it also ends by itself after `--max-seconds`.

Scenarios: `kind` portfolio or orders; `mode` closed (`concurrency` workers, each with its own
connection and user, one request in flight each) or open (`rate` requests/s on a fixed schedule
whatever the answers do, users round robin, connections from a pool; latency is taken from the
*scheduled* send time, so a slow server is not hidden by a client that waits for it). An orders
request walks the user's history: `first: 50` then `after: endCursor` until `hasNextPage` is
false, then starts over.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from bench._client import emit, stdin_reader
from bench._metrics import BUCKETS_PER_MS

PORTFOLIO = (
    "query Portfolio { portfolio { cash buyingPower marketValue equity realizedPnl "
    "unrealizedPnl positions { symbol quantity averageCost marketValue unrealizedPnl "
    "quote { last } } } }"
)
ORDERS = (
    "query Orders($after: String) { orders(first: 50, after: $after) { edges { node { id "
    "status filledQuantity averageFillPrice executions { price } } } "
    "pageInfo { hasNextPage endCursor } } }"
)
HTTP_HEAD_LIMIT = 64 * 1024
MAX_REQUESTS_PER_RUN = 50_000_000  # bound of every load loop; never reached in practice
MAX_PAGES_CHECKED = 1000
MAX_COMMANDS = 1000
MAX_PAGE_DEPTH = 64  # page-depth histograms kept for the first 64 pages of a walk
IDLE_REUSE_SECONDS = 2.0  # pooled connections idle longer are closed, not reused


class HttpError(Exception):
    """A request that got no usable answer (connection lost, malformed response, not 200)."""


class HttpStatusError(HttpError):
    """An answer other than 200 (429 from the rate limits, 5xx...)."""

    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(f"HTTP {status}: {body[:200]!r}")
        self.status = status


class HttpConnection:
    """One keep-alive connection; one request at a time."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self.last_used = 0.0  # monotonic; the server closes keep-alive connections idle 5 s
        self._prefix = (
            f"POST /graphql HTTP/1.1\r\nHost: {host}:{port}\r\n"
            "Content-Type: application/json\r\nContent-Length: "
        ).encode()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None

    async def post(self, body: bytes, auth: bytes) -> bytes:
        """POST /graphql; the response body (status 200 only). Raises HttpError, drops the
        socket on any failure or cancellation (the stream would be out of step)."""
        try:
            if self._reader is None or self._writer is None:
                self._reader, self._writer = await asyncio.open_connection(
                    self.host, self.port, limit=HTTP_HEAD_LIMIT
                )
            reader, writer = self._reader, self._writer
            writer.write(self._prefix + str(len(body)).encode() + b"\r\n" + auth + b"\r\n" + body)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = -1
            close = False
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"transfer-encoding":
                    raise HttpError("chunked responses are not expected")
                elif name == b"connection" and b"close" in value.lower():
                    close = True
            if length < 0:
                raise HttpError("no Content-Length")
            data = await reader.readexactly(length)
            self.last_used = time.monotonic()
            if close:
                self.close()
            if status != 200:
                raise HttpStatusError(status, data)
            return data
        except HttpError:
            self.close()
            raise
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
            self.close()
            raise HttpError(type(exc).__name__) from exc
        except BaseException:
            self.close()
            raise


class Pool:
    """Idle connections reused; a new one whenever none is idle (the caller bounds in-flight)."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.idle: list[HttpConnection] = []
        self.created = 0

    def take(self) -> HttpConnection:
        stale = time.monotonic() - IDLE_REUSE_SECONDS
        for _ in range(len(self.idle)):
            conn = self.idle.pop()
            if conn.last_used >= stale:
                return conn
            conn.close()  # uvicorn may be closing it (timeout_keep_alive): a write would race
        self.created += 1
        return HttpConnection(self.host, self.port)

    def give(self, conn: HttpConnection) -> None:
        self.idle.append(conn)

    def close(self) -> None:
        for conn in self.idle:
            conn.close()
        self.idle.clear()


@dataclass
class User:
    index: int
    auth: bytes
    cursor: str | None = None  # the next page of the history walk (None: the first)
    page: int = 1


@dataclass
class Window:
    measuring: bool = False
    started: float = 0.0
    ended: float = 0.0
    scheduled: int = 0  # open loop: requests due in the window
    skipped: int = 0  # open loop: due, but the in-flight cap was reached
    sent: int = 0
    ok: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    sample_errors: list[str] = field(default_factory=list)
    hist: dict[int, int] = field(default_factory=dict)  # from the scheduled (or send) time
    service_hist: dict[int, int] = field(default_factory=dict)  # from the actual write
    page_hist: dict[int, dict[int, int]] = field(default_factory=dict)
    bytes_received: int = 0
    max_in_flight: int = 0
    walks_completed: int = 0
    missing_quotes: int = 0  # portfolio responses with a position without a quote

    def result(self) -> dict[str, Any]:
        return {
            "window_s": max(self.ended - self.started, 1e-9),
            "scheduled": self.scheduled,
            "skipped": self.skipped,
            "sent": self.sent,
            "ok": self.ok,
            "errors": dict(self.errors),
            "sample_errors": self.sample_errors[:5],
            "hist": self.hist,
            "service_hist": self.service_hist,
            "page_hist": self.page_hist,
            "bytes_received": self.bytes_received,
            "max_in_flight": self.max_in_flight,
            "walks_completed": self.walks_completed,
            "missing_quotes": self.missing_quotes,
        }


def _bucket(seconds: float) -> int:
    return int(seconds * 1000 * BUCKETS_PER_MS) if seconds > 0 else 0


class Runner:
    def __init__(self, host: str, port: int, tokens: Sequence[str], timeout: float) -> None:
        self.host = host
        self.port = port
        self.users = [
            User(i, f"Authorization: Bearer {t}\r\n".encode()) for i, t in enumerate(tokens)
        ]
        self.timeout = timeout
        self.portfolio_body = orjson.dumps({"query": PORTFOLIO, "operationName": "Portfolio"})
        self.window = Window()
        self.in_flight = 0
        self.expected_positions: int | None = None

    def orders_body(self, cursor: str | None) -> bytes:
        return orjson.dumps(
            {"query": ORDERS, "operationName": "Orders", "variables": {"after": cursor}}
        )

    async def one(self, conn: HttpConnection, kind: str, user: User, due: float) -> None:
        """One request, timed and counted if it was sent inside the measuring window."""
        window = self.window
        measured = window.measuring
        page = user.page
        body = self.portfolio_body if kind == "portfolio" else self.orders_body(user.cursor)
        sent_at = time.perf_counter()
        if measured:
            window.sent += 1
        self.in_flight += 1
        if measured and self.in_flight > window.max_in_flight:
            window.max_in_flight = self.in_flight
        try:
            async with asyncio.timeout(self.timeout):
                data = await conn.post(body, user.auth)
            answer = orjson.loads(data)
            if answer.get("errors"):
                raise HttpError("GraphQL errors: " + str(answer["errors"])[:300])
            payload = answer["data"]
            if kind == "portfolio":
                positions = payload["portfolio"]["positions"]
                if (
                    self.expected_positions is not None
                    and len(positions) != self.expected_positions
                ):
                    raise HttpError(
                        f"{len(positions)} positions, {self.expected_positions} expected"
                    )
                if measured and any(p["quote"] is None for p in positions):
                    window.missing_quotes += 1
            else:
                info = payload["orders"]["pageInfo"]
                if info["hasNextPage"]:
                    user.cursor, user.page = info["endCursor"], page + 1
                else:
                    user.cursor, user.page = None, 1
                    if measured:
                        window.walks_completed += 1
        except (HttpError, TimeoutError, KeyError, TypeError, orjson.JSONDecodeError) as exc:
            if measured:
                kind_of = (
                    f"HTTP {exc.status}" if isinstance(exc, HttpStatusError) else type(exc).__name__
                )
                if kind_of not in window.errors and len(window.sample_errors) < 5:
                    window.sample_errors.append(f"{kind_of}: {exc or 'no answer in time'}"[:300])
                window.errors[kind_of] += 1
            return
        finally:
            self.in_flight -= 1
        if measured:
            done = time.perf_counter()
            window.ok += 1
            window.bytes_received += len(data)
            b = _bucket(done - due)
            window.hist[b] = window.hist.get(b, 0) + 1
            s = _bucket(done - sent_at)
            window.service_hist[s] = window.service_hist.get(s, 0) + 1
            if kind == "orders" and page <= MAX_PAGE_DEPTH:
                ph = window.page_hist.setdefault(page, {})
                ph[b] = ph.get(b, 0) + 1

    async def closed_worker(self, kind: str, index: int, workers: int, deadline: float) -> None:
        """Worker `index` of `workers` takes turns among its own users (every `workers`-th one),
        so fewer workers than users still spread the load over every session (each has its
        own rate limit) and never share a history walk."""
        conn = HttpConnection(self.host, self.port)
        count = len(self.users)
        mine = [self.users[u] for u in range(index % count, count, workers)] or [
            self.users[index % count]
        ]
        try:
            for n in range(MAX_REQUESTS_PER_RUN):
                now = time.perf_counter()
                if now >= deadline:
                    return
                await self.one(conn, kind, mine[n % len(mine)], now)
        finally:
            conn.close()

    async def open_request(self, pool: Pool, kind: str, user: User, due: float) -> None:
        conn = pool.take()
        try:
            await self.one(conn, kind, user, due)
        finally:
            pool.give(conn)

    async def run(self, spec: dict[str, Any]) -> dict[str, Any]:
        kind = str(spec["kind"])
        warmup = float(spec["warmup"])
        duration = float(spec["duration"])
        self.window = Window()
        for user in self.users:
            user.cursor, user.page = None, 1
        start = time.perf_counter()
        measure_at = start + warmup
        end_at = measure_at + duration
        control = asyncio.create_task(self._window_marks(measure_at, end_at))
        try:
            if spec["mode"] == "closed":
                count = int(spec["concurrency"])
                workers = [
                    asyncio.create_task(self.closed_worker(kind, i, count, end_at))
                    for i in range(count)
                ]
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(warmup + duration + self.timeout + 5):
                        await asyncio.gather(*workers, return_exceptions=True)
                for task in workers:
                    task.cancel()
            else:
                await self._open_loop(
                    kind, float(spec["rate"]), int(spec["max_in_flight"]), start, end_at
                )
        finally:
            await control
        return self.window.result()

    async def _window_marks(self, measure_at: float, end_at: float) -> None:
        await asyncio.sleep(max(0.0, measure_at - time.perf_counter()))
        self.window.measuring = True
        self.window.started = time.perf_counter()
        emit("MEASURING")
        await asyncio.sleep(max(0.0, end_at - time.perf_counter()))
        self.window.measuring = False
        self.window.ended = time.perf_counter()
        emit("MEASURED")

    async def _open_loop(
        self, kind: str, rate: float, max_in_flight: int, start: float, end_at: float
    ) -> None:
        pool = Pool(self.host, self.port)
        tasks: set[asyncio.Task[None]] = set()
        interval = 1.0 / rate
        users = self.users
        try:
            for n in range(MAX_REQUESTS_PER_RUN):
                due = start + n * interval
                if due >= end_at:
                    break
                delay = due - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                if self.window.measuring:
                    self.window.scheduled += 1
                if self.in_flight >= max_in_flight:
                    if self.window.measuring:
                        self.window.skipped += 1
                    continue
                task = asyncio.create_task(
                    self.open_request(pool, kind, users[n % len(users)], due)
                )
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            if tasks:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.timeout + 5):
                        await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            for task in list(tasks):
                task.cancel()
            pool.close()

    async def check(self) -> dict[str, Any]:
        """What user 0 sees: positions with quotes, and every page of its order history."""
        conn = HttpConnection(self.host, self.port)
        user = self.users[0]
        try:
            answer = orjson.loads(await conn.post(self.portfolio_body, user.auth))
            if answer.get("errors"):
                raise HttpError(f"portfolio: {answer['errors']}")
            portfolio = answer["data"]["portfolio"]
            positions = portfolio["positions"]
            self.expected_positions = len(positions)
            quoted = sum(1 for p in positions if p["quote"] and p["quote"]["last"])
            orders = executions = pages = 0
            cursor: str | None = None
            for _ in range(MAX_PAGES_CHECKED):
                answer = orjson.loads(await conn.post(self.orders_body(cursor), user.auth))
                if answer.get("errors"):
                    raise HttpError(f"orders: {answer['errors']}")
                page = answer["data"]["orders"]
                pages += 1
                orders += len(page["edges"])
                executions += sum(len(e["node"]["executions"]) for e in page["edges"])
                if not page["pageInfo"]["hasNextPage"]:
                    break
                cursor = page["pageInfo"]["endCursor"]
            return {
                "positions": len(positions),
                "quoted_positions": quoted,
                "equity": portfolio["equity"],
                "realized_pnl": portfolio["realizedPnl"],
                "unrealized_pnl": portfolio["unrealizedPnl"],
                "portfolio_bytes": len(orjson.dumps(answer)),
                "orders": orders,
                "executions": executions,
                "pages": pages,
            }
        finally:
            conn.close()


async def main_async(args: argparse.Namespace, tokens: list[str]) -> int:
    runner = Runner("127.0.0.1", args.port, tokens, args.timeout)
    try:
        async with asyncio.timeout(args.max_seconds):
            control = await stdin_reader()
            try:
                facts = await runner.check()
            except (HttpError, KeyError, TypeError, orjson.JSONDecodeError) as exc:
                emit("FAILED " + json.dumps(f"{type(exc).__name__}: {exc}"[:1000]))
                return 1
            emit("READY " + json.dumps(facts))
            for _ in range(MAX_COMMANDS):
                line = (await control.readline()).decode().strip()
                if not line or line == "QUIT":
                    break
                if line.startswith("RUN "):
                    result = await runner.run(json.loads(line[4:]))
                    emit("RESULT " + json.dumps(result))
    except TimeoutError:
        print(f"reads client: stopped after its {args.max_seconds:.0f}s limit", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.reads_client")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--tokens", required=True, help="JSON list of bearer tokens")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per request")
    parser.add_argument("--max-seconds", type=float, default=3600.0, help="hard end of the client")
    args = parser.parse_args(argv)
    tokens = json.loads(Path(args.tokens).read_text())
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main_async(args, tokens))
    return uvloop.run(main_async(args, tokens))


if __name__ == "__main__":
    sys.exit(main())
