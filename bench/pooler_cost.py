"""What running behind PgBouncer in transaction mode costs, per transaction and per read.

Three engines, each used by one client in turn (latency of one operation, not throughput):
* direct: DATABASE_URL is PostgreSQL, the default settings (statement cache, timeout at startup);
* pooler settings, direct: TRADEQL_DB_POOLER=transaction against PostgreSQL itself: the
  client-side cost alone (every statement parsed anew, one SET LOCAL round trip per transaction);
* through PgBouncer: the same settings with Debian's pgbouncer in between (its hop added);
  and again with TRADEQL_DB_STATEMENT_TIMEOUT_MS=0, as with the timeout set on the role (no
  SET LOCAL round trip).

A transaction is three parametrized statements in `db.transaction` (the shape of a small write);
a read is one statement in `db.single_read`. Needs `pgbouncer` (apt-get install pgbouncer) for the
last lines. Run: `.venv/bin/python -m bench.pooler_cost [--admin-url URL] [--n 1000]`.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable
from contextlib import ExitStack

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from services.infra import db
from services.infra.settings import Settings
from tests.engines.pgbouncer import pgbouncer, pgbouncer_binary

Operation = Callable[[int], Awaitable[None]]
STATEMENT = text("SELECT CAST(:i AS int) + oid::int FROM pg_class WHERE relname = 'pg_class'")


async def _per_op(n: int, op: Operation) -> float:
    started = time.perf_counter()
    for i in range(n):
        await op(i)
    return (time.perf_counter() - started) / n * 1e6


def _operations(engine: AsyncEngine) -> tuple[Operation, Operation]:
    async def transaction(i: int) -> None:
        async with db.transaction(engine) as conn:
            for k in range(3):
                await conn.execute(STATEMENT, {"i": i + k})

    async def read(i: int) -> None:
        async with db.single_read(engine) as conn:
            await conn.execute(STATEMENT, {"i": i})

    return transaction, read


async def _measure(engines: dict[str, AsyncEngine], n: int, rounds: int) -> dict[str, list[float]]:
    """The best of `rounds` interleaved rounds for each engine (the machine is shared: the best
    round is the one least disturbed), in µs per transaction and per read."""
    best: dict[str, list[float]] = {name: [float("inf"), float("inf")] for name in engines}
    try:
        for engine in engines.values():  # warm-up: connections opened, caches filled
            for op in _operations(engine):
                await _per_op(50, op)
        for _ in range(rounds):
            for name, engine in engines.items():
                for k, op in enumerate(_operations(engine)):
                    best[name][k] = min(best[name][k], await _per_op(n // rounds, op))
    finally:
        for engine in engines.values():
            await engine.dispose()
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--n", type=int, default=1000, help="operations timed per figure")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    def engine(url: str, pooler: str, timeout_ms: int = 10_000) -> AsyncEngine:
        settings = Settings(
            database_url=url, db_pooler=pooler, db_pool_size=2, db_statement_timeout_ms=timeout_ms
        )
        return db.create_engine(settings)

    with ExitStack() as stack:
        engines = {
            "direct": engine(args.admin_url, "none"),
            "pooler settings, direct": engine(args.admin_url, "transaction"),
        }
        if pgbouncer_binary():
            url = stack.enter_context(pgbouncer(args.admin_url, pool_size=2)).url_for(
                args.admin_url
            )
            engines["through PgBouncer"] = engine(url, "transaction")
            engines["  timeout on the role"] = engine(url, "transaction", timeout_ms=0)
        else:
            print("pgbouncer is not installed: its lines are left out")
        figures = asyncio.run(_measure(engines, args.n, args.rounds))
    base_txn, base_read = figures["direct"]
    print(f"{'':26}{'transaction (3 statements)':>30}{'single read':>24}")
    for name, (txn, read) in figures.items():
        print(
            f"{name:26}{txn:>17.0f} µs ({txn / base_txn:4.2f}x){read:>13.0f} µs "
            f"({read / base_read:4.2f}x)"
        )


if __name__ == "__main__":
    main()
