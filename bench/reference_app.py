"""The one-transaction reference for the orders benchmark: the simplest design that can place an
order, measured in the same run on the same machine as TradeQL.

One uvicorn process, strawberry with its parser and validation caches, a raw asyncpg pool of 10,
two tables of its own, no auth: `placeOrder` is one transaction that UPDATEs an account's cash
and INSERTs an order row. `--load` puts the closed-loop load on it instead (1-share orders for
random accounts) and prints `RESULT {json}`: accepted/s and p50/p95/p99 after the warm-up.

    python -m bench.reference_app --database-url postgresql://... --port 8100
    python -m bench.reference_app --load --port 8100 --concurrency 64 --duration 15 --warmup 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import Decimal

import asyncpg
import strawberry
import uvicorn
from starlette.applications import Starlette
from starlette.routing import Route
from strawberry.asgi import GraphQL
from strawberry.extensions import ParserCache, ValidationCache

from bench.client import Request, closed_loop

ACCOUNTS = 1000
SCHEMA_SQL = f"""
CREATE TABLE IF NOT EXISTS ref_accounts (id integer PRIMARY KEY, cash numeric NOT NULL);
CREATE TABLE IF NOT EXISTS ref_orders (
    id uuid PRIMARY KEY, account_id integer NOT NULL, symbol text NOT NULL,
    quantity numeric NOT NULL, price numeric NOT NULL, created_at timestamptz DEFAULT now()
);
INSERT INTO ref_accounts SELECT g, 1000000000 FROM generate_series(1, {ACCOUNTS}) g
ON CONFLICT DO NOTHING;
"""
LOAD = ("mutation P($a: Int!, $s: String!, $q: String!, $p: String!) "
        "{ placeOrder(account: $a, symbol: $s, quantity: $q, price: $p) { id status } }")  # fmt: skip
SYMBOLS = ("AAPL", "MSFT", "GOOGL", "AMZN", "NVDA", "META")
POOL: list[asyncpg.Pool] = []  # the app's one pool, made at startup


@strawberry.type
class PlacedOrder:
    id: strawberry.ID
    status: str


@strawberry.type
class Query:
    @strawberry.field
    def ok(self) -> bool:
        return True


@strawberry.type
class Mutation:
    @strawberry.mutation
    async def place_order(
        self, account: int, symbol: str, quantity: str, price: str
    ) -> PlacedOrder:
        qty, px = Decimal(quantity), Decimal(price)
        order_id = uuid.uuid4()
        async with POOL[0].acquire() as conn, conn.transaction():
            await conn.execute(
                "UPDATE ref_accounts SET cash = cash - $2 WHERE id = $1", account, qty * px
            )
            await conn.execute(
                "INSERT INTO ref_orders (id, account_id, symbol, quantity, price) "
                "VALUES ($1, $2, $3, $4, $5)", order_id, account, symbol, qty, px,
            )  # fmt: skip
        return PlacedOrder(id=strawberry.ID(str(order_id)), status="ACCEPTED")


def build(database_url: str) -> Starlette:
    extensions = [ParserCache, ValidationCache]
    graphql = GraphQL(strawberry.Schema(Query, Mutation, extensions=extensions), graphql_ide=None)

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        pool = await asyncpg.create_pool(database_url, min_size=10, max_size=10)
        POOL.append(pool)
        async with pool.acquire() as conn:
            await conn.execute(SCHEMA_SQL)
        yield
        await pool.close()

    routes = [Route("/graphql", graphql, methods=["GET", "POST"])]
    return Starlette(routes=routes, lifespan=lifespan)


def order(rng: random.Random) -> Request:
    variables = {"a": rng.randint(1, ACCOUNTS), "s": rng.choice(SYMBOLS), "q": "1", "p": "100.00"}
    return LOAD, variables, b""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--load", action="store_true", help="load the app on --port instead")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--duration", type=float, default=15.0)
    args = parser.parse_args()
    if args.load:  # the orders benchmark measures the app's processes itself: no cpu_ms here
        load = closed_loop(args.port, order, concurrency=args.concurrency, warmup=args.warmup,
                           duration=args.duration)  # fmt: skip
        print("RESULT " + json.dumps(asyncio.run(load)), flush=True)
    else:
        uvicorn.run(build(args.database_url), host="127.0.0.1", port=args.port,
                    log_level="warning", access_log=False)  # fmt: skip


if __name__ == "__main__":
    main()
