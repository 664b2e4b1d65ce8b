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

from bench.closed_loop import Request, closed_loop

MUTATION = (
    "mutation P($a: Int!, $s: String!, $q: String!, $p: String!) "
    "{ placeOrder(account: $a, symbol: $s, quantity: $q, price: $p) { id status } }"
)
SYMBOLS = ("AAPL", "MSFT", "GOOGL", "AMZN", "NVDA", "META")


async def run(port: int, concurrency: int, warmup: float, duration: float) -> dict[str, object]:
    def order(rng: random.Random) -> Request:
        variables = {"a": rng.randint(1, 1000), "s": rng.choice(SYMBOLS), "q": "1", "p": "100.00"}
        return MUTATION, variables, b""

    result = await closed_loop(
        port, order, concurrency=concurrency, warmup=warmup, duration=duration
    )
    result.pop("cpu_ms")  # bench.orders measures the reference's processes itself
    return dict(result)


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
