"""The load side every benchmark shares: a minimal HTTP/1.1 client on keep-alive loopback
connections (much cheaper per request than httpx), graphql-transport-ws subscriptions, closed-
and open-loop drivers over a measured window, and the line protocol of a client process: it
prints `READY <json>` once set up, then answers commands, one line each: `RUN <json spec>` loads
for `warmup` s, prints `MEASURING`, loads for `duration` s (requests *sent* in this window are
the measured ones), prints `MEASURED`, waits for those in flight and prints `RESULT <json>`.
End of input or `QUIT` ends it, as does its time limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import psutil
from websockets.asyncio.client import ClientConnection, connect
from websockets.typing import Subprotocol

from bench.harness import observe, percentiles

HEAD_LIMIT = 64 * 1024
IDLE_REUSE_SECONDS = 2.0  # pooled connections idle longer are closed (uvicorn may be closing them)
MAX_REQUESTS = 50_000_000  # bound of every load loop; never reached in practice


class HttpError(Exception):
    """A request that got no usable answer (connection lost, timeout, malformed response)."""


class HttpConnection:
    """One keep-alive connection to 127.0.0.1:port; one request at a time."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.last_used = 0.0
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._prefix = (
            f"POST /graphql HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            "Content-Type: application/json\r\nContent-Length: "
        ).encode()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None

    async def post(self, body: bytes, headers: bytes = b"") -> tuple[int, bytes]:
        """POST /graphql with `body` (JSON) and extra header lines: (status, response body).
        Raises HttpError, and drops the socket on any failure or cancel (it is out of step)."""
        try:
            if self._reader is None or self._writer is None:
                opened = asyncio.open_connection("127.0.0.1", self.port, limit=HEAD_LIMIT)
                self._reader, self._writer = await opened
            reader, writer = self._reader, self._writer
            writer.write(b"%s%d\r\n%s\r\n%s" % (self._prefix, len(body), headers, body))
            head = await reader.readuntil(b"\r\n\r\n")
            length, chunked, close = -1, False, False
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                chunked |= name == b"transfer-encoding" and b"chunked" in value.lower()
                close |= name == b"connection" and b"close" in value.lower()
            if chunked:
                data = b""
                while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
                    data += (await reader.readexactly(size + 2))[:-2]
                await reader.readuntil(b"\r\n")
            elif length >= 0:
                data = await reader.readexactly(length)
            else:
                data, close = await reader.read(), True
            self.last_used = time.monotonic()
            if close:
                self.close()
            return int(head[9:12]), data
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
            self.close()
            raise HttpError(type(exc).__name__) from exc
        except BaseException:
            self.close()
            raise


class Pool:
    """Idle connections reused; a new one whenever none is idle (the caller bounds in-flight).
    A key keeps connections apart (one simulated user's, as a browser keeps its own): a shared
    pool reused from its top leaves the rest idle until they expire, and every burst then opens
    a hundred new connections at once, which the server pays for in the middle of the burst."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.idle: dict[int, list[HttpConnection]] = {}

    def take(self, key: int = 0) -> HttpConnection:
        stale = time.monotonic() - IDLE_REUSE_SECONDS
        idle = self.idle.get(key, [])
        while idle:
            conn = idle.pop()
            if conn.last_used >= stale:
                return conn
            conn.close()
        return HttpConnection(self.port)

    def give(self, conn: HttpConnection, key: int = 0) -> None:
        self.idle.setdefault(key, []).append(conn)

    def close(self) -> None:
        for conn in (c for idle in self.idle.values() for c in idle):
            conn.close()
        self.idle.clear()


def bearer(token: str) -> bytes:
    return f"Authorization: Bearer {token}\r\n".encode()


async def post_graphql(conn: HttpConnection, body: bytes,
                       headers: bytes = b"") -> tuple[dict[str, Any], int]:  # fmt: skip
    """The `data` of the answer to a GraphQL request body and the answer's size in bytes;
    HttpError (its text starting `HTTP <status>` or `GraphQL errors`) for anything else."""
    status, data = await conn.post(body, headers)
    if status != 200:
        raise HttpError(f"HTTP {status}: {data[:200]!r}")
    answer = orjson.loads(data)
    if answer.get("errors"):
        raise HttpError(f"GraphQL errors: {str(answer['errors'])[:300]}")
    return answer["data"], len(data)


async def graphql(conn: HttpConnection, query: str, variables: Mapping[str, Any] | None = None,
                  headers: bytes = b"", timeout: float = 60.0) -> dict[str, Any]:  # fmt: skip
    """The `data` of one GraphQL request; HttpError for anything else."""
    body = orjson.dumps({"query": query, "variables": variables or {}})
    async with asyncio.timeout(timeout):
        return (await post_graphql(conn, body, headers))[0]


async def subscribe(url: str, query: str, variables: Mapping[str, Any] | None = None, *,
                    token: str = "", max_queue: int = 64,
                    timeout: float = 30.0) -> ClientConnection:  # fmt: skip
    """One graphql-transport-ws connection with one subscription (id "1") on it."""
    async with asyncio.timeout(timeout):
        ws = await connect(
            url, subprotocols=[Subprotocol("graphql-transport-ws")], compression=None,
            open_timeout=timeout, close_timeout=1, ping_interval=None, max_queue=max_queue,
        )  # fmt: skip
        payload = {"Authorization": f"Bearer {token}"} if token else {}
        await ws.send(json.dumps({"type": "connection_init", "payload": payload}))
        ack = json.loads(await ws.recv())
        if ack.get("type") != "connection_ack":
            await ws.close()
            raise RuntimeError(f"expected connection_ack, got {ack}")
        subscription = {"query": query, "variables": dict(variables or {})}
        await ws.send(json.dumps({"id": "1", "type": "subscribe", "payload": subscription}))
    return ws


# Load over a measured window


@dataclass
class Window:
    """The measured window of one scenario; requests count when they are sent inside it."""

    measuring: bool = False
    started: float = 0.0
    ended: float = 0.0
    scheduled: int = 0  # open loop: requests due in the window
    skipped: int = 0  # open loop: due, but the in-flight cap was reached
    abandoned: int = 0  # still in flight past the timeout after the window

    @property
    def seconds(self) -> float:
        return max(self.ended - self.started, 1e-9)


One = Callable[[HttpConnection, float, int, int], Awaitable[None]]


async def drive(port: int, spec: Mapping[str, Any], one: One, window: Window,
                mark: Callable[[str], None], timeout: float) -> None:  # fmt: skip
    """Load for spec's `warmup` + `duration` seconds, calling `mark("MEASURING")` and
    `mark("MEASURED")` at the edges of the window. Closed loop (`mode` closed): `concurrency`
    workers, each on its own connection with one request in flight; `one(conn, now, worker, n)`
    for its n-th request. Open loop: `rate` requests/s on a fixed schedule whatever the answers
    do, never more than `max_in_flight` at once; `one(conn, due, n, n)` with its scheduled time,
    on a connection of client n % `clients` (each simulated user its own, as browsers keep
    theirs; default one pool for all). Then waits (at most `timeout` s) for the requests in flight."""
    start = time.perf_counter()
    measure_at = start + float(spec["warmup"])
    end_at = measure_at + float(spec["duration"])
    pool = Pool(port)
    tasks: set[asyncio.Task[None]] = set()

    async def marks() -> None:
        await asyncio.sleep(max(0.0, measure_at - time.perf_counter()))
        window.measuring, window.started = True, time.perf_counter()
        mark("MEASURING")
        await asyncio.sleep(max(0.0, end_at - time.perf_counter()))
        window.measuring, window.ended = False, time.perf_counter()
        mark("MEASURED")

    async def closed(worker: int) -> None:
        conn = pool.take()
        try:
            for n in range(MAX_REQUESTS):
                if (now := time.perf_counter()) >= end_at:
                    return
                await one(conn, now, worker, n)
        finally:
            conn.close()

    clients = int(spec.get("clients") or 1)  # open loop: request n is client n % clients

    async def scheduled(n: int, due: float) -> None:
        conn = pool.take(n % clients)
        try:
            await one(conn, due, n, n)
        finally:
            pool.give(conn, n % clients)

    marker = asyncio.create_task(marks())
    try:
        if spec["mode"] == "closed":
            tasks = {asyncio.create_task(closed(i)) for i in range(int(spec["concurrency"]))}
        else:
            rate, cap = float(spec["rate"]), int(spec["max_in_flight"])
            for n in range(MAX_REQUESTS):
                if (due := start + n / rate) >= end_at:
                    break
                if (delay := due - time.perf_counter()) > 0:
                    await asyncio.sleep(delay)
                window.scheduled += window.measuring
                if len(tasks) >= cap:
                    window.skipped += window.measuring
                    continue
                task = asyncio.create_task(scheduled(n, due))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
        if tasks:
            limit = max(0.0, end_at - time.perf_counter()) + timeout + 5
            _done, pending = await asyncio.wait(set(tasks), timeout=limit)
            window.abandoned = len(pending)
            for task in pending:
                task.cancel()
        await marker
    finally:
        marker.cancel()
        pool.close()


Request = tuple[str, dict[str, Any], bytes]


async def closed_loop(port: int, make: Callable[[random.Random], Request], *, concurrency: int,
                      warmup: float, duration: float,
                      pids: Sequence[int] = ()) -> dict[str, float]:  # fmt: skip
    """`concurrency` requests always in flight, each made by `make` (query, variables, header
    lines): answers/s, p50/p95/p99 ms, failures, and the CPU of `pids` (the server's processes)
    per answer, from the end of the warm-up to the last answer."""
    rng, window, failed = random.Random(1), Window(), 0
    hist: dict[int, int] = {}
    processes = [psutil.Process(p) for p in pids]
    cpu_at = [0.0]

    def cpu() -> float:
        return sum(sum(p.cpu_times()[:2]) for p in processes)

    def mark(what: str) -> None:
        if what == "MEASURING":
            cpu_at[0] = cpu()

    async def one(conn: HttpConnection, now: float, worker: int, n: int) -> None:
        nonlocal failed
        query, variables, headers = make(rng)
        measured = window.measuring
        try:
            await graphql(conn, query, variables, headers, 30.0)
        except (HttpError, TimeoutError):
            failed += measured
            return
        if measured:
            observe(hist, (time.perf_counter() - now) * 1000)

    spec = {"mode": "closed", "concurrency": concurrency, "warmup": warmup, "duration": duration}
    await drive(port, spec, one, window, mark, 30.0)
    count = sum(hist.values())
    p = percentiles(hist, (0.5, 0.95, 0.99))
    return {
        "accepted": count, "rate": count / duration, "failed": failed, "p50_ms": p[0.5] or 0.0,
        "p95_ms": p[0.95] or 0.0, "p99_ms": p[0.99] or 0.0,
        "cpu_ms": (cpu() - cpu_at[0]) * 1000 / max(count, 1),
    }  # fmt: skip


# The client process's side of the line protocol


def emit(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def serve(ready: Callable[[], Awaitable[dict[str, Any]]],
                commands: Mapping[str, Callable[[str], Awaitable[str | None]]],
                max_seconds: float) -> int:  # fmt: skip
    """Set up (`ready()`, printed as `READY <json>`; an exception prints `FAILED ...`), then
    answer each command line `NAME rest` with `await commands[NAME](rest)`, until the end."""
    loop = asyncio.get_running_loop()
    control = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(control), sys.stdin)
    try:
        async with asyncio.timeout(max_seconds):
            try:
                emit("READY " + json.dumps(await ready()))
            except (HttpError, RuntimeError, KeyError, TypeError, ValueError) as exc:
                emit("FAILED " + json.dumps(f"{type(exc).__name__}: {exc}"[:1000]))
                return 1
            for _ in range(1000):
                line = (await control.readline()).decode().strip()
                if not line or line == "QUIT":
                    break
                name, _, rest = line.partition(" ")
                if name in commands and (answer := await commands[name](rest)) is not None:
                    emit(answer)
    except TimeoutError:
        print(f"client: stopped after its {max_seconds:.0f}s limit", file=sys.stderr)
        return 1
    return 0


def run_client(main: Coroutine[Any, Any, int]) -> int:
    """The client's event loop: uvloop when installed."""
    with contextlib.suppress(ImportError):
        import uvloop

        return uvloop.run(main)
    return asyncio.run(main)


async def close_all(tasks: Sequence[asyncio.Task[Any]],
                    sockets: Sequence[ClientConnection]) -> None:  # fmt: skip
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(5):
            await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)
