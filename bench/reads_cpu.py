"""CPU per request of the reads, measured in one process, for an A/B of candidate fixes.

The Starlette app (`gateway.app.create_app`, with its real lifespan: PostgreSQL and Redis pools)
is called directly as an ASGI application, one request at a time, so the figure is the API's own
work per request (everything but uvicorn's HTTP parsing) in CPU seconds of this process
(`time.process_time`): much less sensitive to a busy machine than wall-clock rates, which is
what makes an A/B readable on a shared box. It also counts, per request, the SQL statements
(SQLAlchemy `before_cursor_execute`), the Redis calls (commands and pipelines) and the
PostgreSQL transactions (pg_stat_database commits + rollbacks: a ping of a connection that sat
idle is one).

    python -m bench.reads_cpu --tokens FILE [--fix preping,autocommit] [--requests N]

(DATABASE_URL / REDIS_URL from the environment, as for the API.) Prints one `RESULT <json>` line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from bench.reads_client import ORDERS, PORTFOLIO

WARMUP_REQUESTS = 40


class Counts:
    def __init__(self) -> None:
        self.sql = 0
        self.redis = 0


async def _xacts(url: str, database: str) -> float:
    """Transactions of the database so far; waits out the statistics' flush interval (1 s)."""
    import asyncpg

    await asyncio.sleep(1.5)
    conn = await asyncpg.connect(url, timeout=10)
    try:
        row = await conn.fetchrow(
            "SELECT xact_commit + xact_rollback AS n FROM pg_stat_database WHERE datname = $1",
            database,
        )
        return float(row["n"]) if row else 0.0
    finally:
        await conn.close()


async def _call(app: Any, body: bytes, auth: bytes) -> bytes:
    """One POST /graphql through the whole ASGI stack (middleware, view, schema)."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/graphql",
        "raw_path": b"/graphql",
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"127.0.0.1"),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"authorization", auth),
        ],
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 80),
        "state": {},
    }
    delivered = False
    parts: list[bytes] = []
    status = 0

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.sleep(3600)  # never a disconnect: the request ends first
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = int(message["status"])
        elif message["type"] == "http.response.body":
            parts.append(message.get("body", b""))

    await app(scope, receive, send)
    data = b"".join(parts)
    if status != 200:
        raise RuntimeError(f"HTTP {status}: {data[:200]!r}")
    return data


async def measure(tokens: list[str], requests: int, database_url: str) -> dict[str, Any]:
    from redis.asyncio.client import Pipeline
    from sqlalchemy import event

    from gateway.app import create_app

    app = create_app()
    auths = [f"Bearer {t}".encode() for t in tokens]
    database = database_url.rsplit("/", 1)[1]
    out: dict[str, Any] = {}
    async with app.router.lifespan_context(app):
        services = app.state.services
        counts = Counts()

        def on_sql(*_args: Any) -> None:
            counts.sql += 1

        real_command = services.redis.execute_command
        real_pipeline = Pipeline.execute

        async def command(*args: Any, **kwargs: Any) -> Any:
            counts.redis += 1
            return await real_command(*args, **kwargs)

        async def pipeline(self: Pipeline, *args: Any, **kwargs: Any) -> Any:
            counts.redis += 1
            return await real_pipeline(self, *args, **kwargs)

        event.listen(services.engine.sync_engine, "before_cursor_execute", on_sql)
        services.redis.execute_command = command
        Pipeline.execute = pipeline  # type: ignore[method-assign]
        portfolio_body = orjson.dumps({"query": PORTFOLIO, "operationName": "Portfolio"})
        for kind in ("portfolio", "orders"):
            cursors: dict[int, str | None] = {}

            async def one(
                i: int, kind: str = kind, cursors: dict[int, str | None] = cursors
            ) -> None:
                user = i % len(auths)
                if kind == "portfolio":
                    await _call(app, portfolio_body, auths[user])
                    return
                body = orjson.dumps(
                    {
                        "query": ORDERS,
                        "operationName": "Orders",
                        "variables": {"after": cursors.get(user)},
                    }
                )
                answer = orjson.loads(await _call(app, body, auths[user]))
                info = answer["data"]["orders"]["pageInfo"]
                cursors[user] = info["endCursor"] if info["hasNextPage"] else None

            for i in range(WARMUP_REQUESTS):  # sessions cached, documents parsed, pool warm
                await one(i)
            counts.sql = counts.redis = 0
            xacts = await _xacts(database_url, database)
            cpu, wall = time.process_time(), time.perf_counter()
            for i in range(requests):
                await one(WARMUP_REQUESTS + i)
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
            xacts = await _xacts(database_url, database) - xacts
            out[kind] = {
                "cpu_ms": 1000 * cpu / requests,
                "wall_ms": 1000 * wall / requests,
                "sql_per_request": counts.sql / requests,
                "redis_per_request": counts.redis / requests,
                "pg_transactions_per_request": xacts / requests,
            }
        Pipeline.execute = real_pipeline  # type: ignore[method-assign]
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.reads_cpu")
    parser.add_argument("--tokens", type=Path, required=True)
    parser.add_argument("--fix", default="")
    parser.add_argument("--requests", type=int, default=300)
    args = parser.parse_args(argv)
    from bench.reads_whatif import apply
    from services.infra.settings import get_settings

    apply([f for f in args.fix.split(",") if f])
    tokens = json.loads(args.tokens.read_text())
    database_url = get_settings().database_url
    if not database_url:
        raise SystemExit("DATABASE_URL is not set")
    result = asyncio.run(measure(tokens, max(1, args.requests), database_url))
    sys.stdout.write("RESULT " + json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
