"""The client half of the quotes benchmark: K WebSocket subscriptions, latency per quote.

It speaks graphql-transport-ws directly over `websockets` (much lighter per message than gql):
one connection per subscriber, one `quotes(symbols: [...])` subscription on each. For every quote
received it takes `receive time - quote timestamp` (the source time the simulator stamped, ISO-8601
UTC in milliseconds) into a histogram of 0.1 ms buckets.

Control, one line each way: it prints `READY <connected> <failed>` once every subscription is
open, then obeys `START` (zero the counters, begin measuring) and `STOP` (answer `RESULT <json>`);
end of input ends it. It also ends by itself after `--client-max-seconds`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import WebSocketException
from websockets.typing import Subprotocol

from bench._metrics import BUCKETS_PER_MS

QUERY = (
    "subscription Quotes($s: [String!]!) "
    "{ quotes(symbols: $s) { symbol bid ask last volume timestamp } }"
)
SUBPROTOCOL = Subprotocol("graphql-transport-ws")
MAX_MESSAGES_PER_SUBSCRIBER = 100_000_000  # a bound on the receive loop; never reached in practice
SECOND_CACHE_MAX = 100_000


@dataclass
class Stats:
    measuring: bool = False
    received: int = 0  # quotes received while measuring
    total: int = 0  # quotes received since the start (snapshots included)
    histogram: dict[int, int] = field(default_factory=dict)
    max_ms: float = 0.0
    min_ms: float = float("inf")
    errors: int = 0
    closed: int = 0
    closed_while_measuring: int = 0
    window_started: float = 0.0
    window_seconds: float = 0.0
    _seconds: dict[str, int] = field(default_factory=dict)  # "YYYY-MM-DDTHH:MM:SS" -> epoch ms

    def start(self) -> None:
        self.received = 0
        self.histogram = {}
        self.max_ms = 0.0
        self.min_ms = float("inf")
        self.closed_while_measuring = 0
        self.window_started = time.monotonic()
        self.measuring = True

    def stop(self) -> None:
        self.measuring = False
        self.window_seconds = time.monotonic() - self.window_started

    def epoch_ms(self, text: str) -> int:
        """'2024-06-03T14:30:01.234Z' -> milliseconds since the epoch (a cache per second)."""
        second = text[:19]
        base = self._seconds.get(second)
        if base is None:
            if len(self._seconds) > SECOND_CACHE_MAX:
                self._seconds.clear()
            base = int(datetime.fromisoformat(second).replace(tzinfo=UTC).timestamp()) * 1000
            self._seconds[second] = base
        return base + int(text[20:23])

    def result(self) -> dict[str, Any]:
        return {
            "received": self.received,
            "total": self.total,
            "histogram": self.histogram,
            "max_ms": self.max_ms,
            "min_ms": self.min_ms if self.received else None,
            "errors": self.errors,
            "closed": self.closed,
            "closed_while_measuring": self.closed_while_measuring,
            "window_seconds": self.window_seconds,
        }


class Progress:
    """Counts finished connection attempts; logs every 10% and sets `done` at the last one."""

    def __init__(self, count: int, started: float) -> None:
        self.count = count
        self.finished = 0
        self.started = started
        self.done = asyncio.Event()
        self._step = max(1, count // 10)

    def opened(self) -> None:
        self.finished += 1
        if self.finished % self._step == 0 or self.finished == self.count:
            print(
                f"{self.finished}/{self.count} connection attempts done after "
                f"{time.monotonic() - self.started:.1f}s",
                file=sys.stderr,
            )
        if self.finished >= self.count:
            self.done.set()


class Subscriber:
    def __init__(
        self,
        index: int,
        url: str,
        symbols: list[str],
        stats: Stats,
        *,
        compression: str | None,
    ) -> None:
        self.index = index
        self.url = url
        self.symbols = symbols
        self.stats = stats
        self.compression = compression
        self.ws: ClientConnection | None = None
        self.error: str | None = None

    async def open(self, limiter: asyncio.Semaphore, seconds: float) -> bool:
        async with limiter:
            try:
                async with asyncio.timeout(seconds):
                    ws = await connect(
                        self.url,
                        subprotocols=[SUBPROTOCOL],
                        compression=self.compression,
                        open_timeout=seconds,
                        close_timeout=1,
                        ping_interval=None,  # the server pings; the library answers
                        max_queue=64,
                    )
                    self.ws = ws
                    await ws.send(json.dumps({"type": "connection_init", "payload": {}}))
                    ack = json.loads(await ws.recv())
                    if ack.get("type") != "connection_ack":
                        raise RuntimeError(f"expected connection_ack, got {ack}")
                    await ws.send(
                        json.dumps(
                            {
                                "id": "1",
                                "type": "subscribe",
                                "payload": {"query": QUERY, "variables": {"s": self.symbols}},
                            }
                        )
                    )
                return True
            except (OSError, TimeoutError, RuntimeError, WebSocketException, ValueError) as exc:
                self.error = f"{type(exc).__name__}: {exc}"
                return False

    async def run(
        self, limiter: asyncio.Semaphore, connect_seconds: float, progress: Progress
    ) -> None:
        try:
            ok = await self.open(limiter, connect_seconds)
        finally:
            progress.opened()
        if ok:
            await self.receive()

    async def receive(self) -> None:
        """Time every quote; bounded by the message count here and the client deadline outside."""
        ws = self.ws
        assert ws is not None
        stats = self.stats
        epoch_ms = stats.epoch_ms
        time_ns = time.time_ns
        try:
            for _ in range(MAX_MESSAGES_PER_SUBSCRIBER):
                raw = await ws.recv()
                now_ns = time_ns()
                text = raw if isinstance(raw, str) else raw.decode()
                at = text.find('"timestamp"')
                if at >= 0:
                    stats.total += 1
                    if stats.measuring:
                        start = text.find('"', at + 11) + 1
                        latency = now_ns / 1e6 - epoch_ms(text[start : start + 24])
                        bucket = int(latency * BUCKETS_PER_MS) if latency > 0 else 0
                        histogram = stats.histogram  # START replaces it
                        histogram[bucket] = histogram.get(bucket, 0) + 1
                        stats.received += 1
                        if latency > stats.max_ms:
                            stats.max_ms = latency
                        if latency < stats.min_ms:
                            stats.min_ms = latency
                    continue
                message = json.loads(text)
                kind = message.get("type")
                if kind == "ping":
                    await ws.send(json.dumps({"type": "pong"}))
                elif kind in ("error", "complete") or (
                    kind == "next" and message.get("payload", {}).get("errors")
                ):
                    stats.errors += 1
                    self.error = text[:300]
                    if kind != "next":
                        return
        except (WebSocketException, OSError) as exc:
            self.error = self.error or f"{type(exc).__name__}: {exc}"
        finally:
            stats.closed += 1
            if stats.measuring:
                stats.closed_while_measuring += 1


def emit(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def stdin_reader() -> asyncio.StreamReader:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


async def run_client(
    *,
    url: str,
    symbols: list[str],
    subscribers: int,
    per_subscriber: int,
    seed: int,
    connect_concurrency: int,
    connect_timeout: float,
    compression: str | None,
    max_seconds: float,
) -> int:
    rng = random.Random(seed)
    stats = Stats()
    subs = [
        Subscriber(
            i,
            url,
            rng.sample(symbols, min(per_subscriber, len(symbols))),
            stats,
            compression=compression,
        )
        for i in range(subscribers)
    ]
    receivers: list[asyncio.Task[None]] = []
    try:
        async with asyncio.timeout(max_seconds):
            control = await stdin_reader()
            limiter = asyncio.Semaphore(connect_concurrency)
            started = time.monotonic()
            progress = Progress(len(subs), started)
            # Each subscriber reads as soon as it is subscribed: a socket nobody reads would
            # push back on the server while the others are still connecting.
            receivers = [
                asyncio.create_task(s.run(limiter, connect_timeout, progress), name=f"sub-{i}")
                for i, s in enumerate(subs)
            ]
            await progress.done.wait()
            failed = [s for s in subs if s.ws is None]
            for sub in failed[:5]:
                print(f"subscriber {sub.index} failed: {sub.error}", file=sys.stderr)
            print(
                f"{len(subs) - len(failed)} subscribed, {len(failed)} failed, in "
                f"{time.monotonic() - started:.1f}s",
                file=sys.stderr,
            )
            emit(f"READY {len(subs) - len(failed)} {len(failed)}")
            for _ in range(100):  # a handful of commands in a run
                line = (await control.readline()).decode().strip()
                if not line:
                    break
                if line == "START":
                    stats.start()
                    emit("STARTED")
                elif line == "STOP":
                    stats.stop()
                    errors = [s.error for s in subs if s.error][:5]
                    emit("RESULT " + json.dumps({**stats.result(), "sample_errors": errors}))
    except TimeoutError:
        print(f"client: stopped after its {max_seconds:.0f}s limit", file=sys.stderr)
        return 1
    finally:
        for task in receivers:
            task.cancel()
        await asyncio.gather(*receivers, return_exceptions=True)
        closing = [s.ws.close() for s in subs if s.ws is not None]
        if closing:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5):
                    await asyncio.gather(*closing, return_exceptions=True)
    return 0
