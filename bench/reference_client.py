"""Closed-loop load on the one-transaction reference (`bench/reference_app.py`), with the same HTTP
client the orders benchmark uses on TradeQL: C requests always in flight, each placing a 1-share
order for a random account. Prints one line, `RESULT {json}`: accepted/s and latency p50/p95/p99
over the measured window (after the warm-up).

    python -m bench.reference_client --port 8100 --concurrency 64 --duration 15 --warmup 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time

from bench.orders_client import HttpError, HttpPool, graphql

MUTATION = (
    "mutation P($a: Int!, $s: String!, $q: String!, $p: String!) "
    "{ placeOrder(account: $a, symbol: $s, quantity: $q, price: $p) { id status } }"
)
SYMBOLS = ("AAPL", "MSFT", "GOOGL", "AMZN", "NVDA", "META")


async def run(port: int, concurrency: int, warmup: float, duration: float) -> dict[str, object]:
    pool = HttpPool("127.0.0.1", port, concurrency)
    rng = random.Random(1)
    latencies: list[float] = []
    failed = 0
    start = time.monotonic()
    measure_from, end = start + warmup, start + warmup + duration

    async def worker() -> None:
        nonlocal failed
        while (now := time.monotonic()) < end:
            variables = {
                "a": rng.randint(1, 1000),
                "s": rng.choice(SYMBOLS),
                "q": "1",
                "p": "100.00",
            }
            async with pool.connection() as conn:
                try:
                    await graphql(conn, MUTATION, variables, b"", 30.0)
                except (HttpError, TimeoutError):
                    if now >= measure_from:
                        failed += 1
                    continue
            if now >= measure_from:
                latencies.append((time.monotonic() - now) * 1000)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    pool.close()
    ordered = sorted(latencies)

    def at(q: float) -> float | None:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else None

    return {
        "accepted": len(latencies),
        "rate": len(latencies) / duration,
        "failed": failed,
        "p50_ms": at(0.5),
        "p95_ms": at(0.95),
        "p99_ms": at(0.99),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--duration", type=float, default=15.0)
    args = parser.parse_args()
    result = asyncio.run(run(args.port, args.concurrency, args.warmup, args.duration))
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
