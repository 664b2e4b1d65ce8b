"""A closed-loop load on one GraphQL endpoint: `concurrency` requests always in flight, each made
by `make` (query, variables, extra header lines), over the orders benchmark's HTTP client.
Measured after a warm-up: answers/s, latency percentiles, failures, and the CPU of `pids` (the
server's processes) per answer."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Sequence
from typing import Any

import psutil

from bench.orders_client import HttpError, HttpPool, graphql

Request = tuple[str, dict[str, Any], bytes]


async def closed_loop(
    port: int,
    make: Callable[[random.Random], Request],
    *,
    concurrency: int,
    warmup: float,
    duration: float,
    pids: Sequence[int] = (),
) -> dict[str, float]:
    pool = HttpPool("127.0.0.1", port, concurrency)
    rng = random.Random(1)
    latencies: list[float] = []
    failed = 0
    start = time.monotonic()
    measure_from, end = start + warmup, start + warmup + duration
    processes = [psutil.Process(p) for p in pids]
    cpu_at_start = 0.0

    def cpu() -> float:
        return sum(sum(p.cpu_times()[:2]) for p in processes)

    async def worker() -> None:
        nonlocal failed
        while (now := time.monotonic()) < end:
            query, variables, auth = make(rng)
            async with pool.connection() as conn:
                try:
                    await graphql(conn, query, variables, auth, 30.0)
                except (HttpError, TimeoutError):
                    if now >= measure_from:
                        failed += 1
                    continue
            if now >= measure_from:
                latencies.append((time.monotonic() - now) * 1000)

    async def mark() -> None:
        nonlocal cpu_at_start
        await asyncio.sleep(warmup)
        cpu_at_start = cpu()

    await asyncio.gather(mark(), *(worker() for _ in range(concurrency)))
    used = cpu() - cpu_at_start
    pool.close()
    ordered = sorted(latencies)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0

    return {
        "accepted": len(ordered),
        "rate": len(ordered) / duration,
        "failed": failed,
        "p50_ms": at(0.5),
        "p95_ms": at(0.95),
        "p99_ms": at(0.99),
        "cpu_ms": used * 1000 / max(len(ordered), 1),
    }
