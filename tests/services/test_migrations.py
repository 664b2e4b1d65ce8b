"""Migrations run forward on a database that already holds data, and back down cleanly."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from alembic import command
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from gateway.migrate import alembic_config
from services.orders.order_history import history_differences


@pytest.fixture
def scratch_database(server_urls: tuple[str, str]) -> Iterator[str]:
    admin = server_urls[0]
    name = f"tradeql_migrations_{uuid.uuid4().hex[:8]}"

    async def run(sql: str) -> None:
        conn = await asyncpg.connect(admin)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run(f'CREATE DATABASE "{name}"'))
    try:
        yield urlunsplit(urlsplit(admin)._replace(path=f"/{name}"))
    finally:
        asyncio.run(run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def test_upgrading_a_database_with_data_keeps_it(scratch_database: str) -> None:
    config = alembic_config(scratch_database)
    command.upgrade(config, "0001")

    async def seed() -> None:
        conn = await asyncpg.connect(scratch_database)
        try:
            user = await conn.fetchval(
                "INSERT INTO users (email, password_hash) VALUES ('old@example.com', 'x') "
                "RETURNING id"
            )
            await conn.execute("INSERT INTO accounts (user_id, cash) VALUES ($1, 12.34)", user)
        finally:
            await conn.close()

    async def cash() -> object:
        conn = await asyncpg.connect(scratch_database)
        try:
            return await conn.fetchval("SELECT cash FROM accounts")
        finally:
            await conn.close()

    asyncio.run(seed())
    command.upgrade(config, "head")
    assert str(asyncio.run(cash())) == "12.34"
    command.downgrade(config, "0001")
    command.upgrade(config, "head")
    assert str(asyncio.run(cash())) == "12.34"


def test_orders_older_than_their_events_get_their_history_back_filled(
    scratch_database: str,
) -> None:
    """Migration 0010 back-fills the history of orders placed before the outbox (0008) and of
    orders whose last change wrote no event, so `tradeql check` rebuilds every one of them."""
    config = alembic_config(scratch_database)
    command.upgrade(config, "0007")

    async def run(sql: str, *args: object) -> object:
        conn = await asyncpg.connect(scratch_database)
        try:
            return await conn.fetchval(sql, *args)
        finally:
            await conn.close()

    async def seed_old() -> None:
        user = await run(
            "INSERT INTO users (email, password_hash) VALUES ('h@x.com', 'x') RETURNING id"
        )
        account = await run(
            "INSERT INTO accounts (user_id, cash) VALUES ($1, 0) RETURNING id", user
        )
        order = (
            "INSERT INTO orders (id, user_id, account_id, symbol, side, type, time_in_force, quantity, "
            "limit_price, status, filled_quantity, filled_value, idempotency_key, reject_reason, version) "
            "VALUES (gen_random_uuid(), $1, $2, 'OLD', 'BUY', 'LIMIT', 'GTC', 10, 5, $3, $4, $5, $6, $7, $8) "
            "RETURNING id"
        )
        filled = await run(order, user, account, "FILLED", 10, 48, "old-1", None, 3)
        cancelled = await run(
            order, user, account, "CANCELLED", 2, 9.8, "old-2", "cancelled by the user", 3
        )
        await run(order, user, account, "SUBMITTED", 0, 0, "old-3", None, 1)
        execution = (
            "INSERT INTO executions (order_id, user_id, symbol, side, quantity, price, venue, "
            "venue_execution_id) VALUES ($1, $2, 'OLD', 'BUY', $3, $4, 'EDGX', $5) RETURNING id"
        )
        await run(execution, filled, user, 6, 4.8, "x-1")
        await run(execution, filled, user, 4, 4.8, "x-2")
        await run(execution, cancelled, user, 2, 4.9, "x-3")

    asyncio.run(seed_old())
    command.upgrade(config, "0008")

    async def seed_outbox_era() -> None:
        # Accepted with its outbox row, then triggered (a change that wrote no event).
        user = await run("SELECT id FROM users")
        account = await run("SELECT id FROM accounts")
        order = await run(
            "INSERT INTO orders (id, user_id, account_id, symbol, side, type, time_in_force, "
            "quantity, stop_price, status, idempotency_key, triggered, version) VALUES "
            "(gen_random_uuid(), $1, $2, 'OLD', 'SELL', 'STOP', 'GTC', 1, 4, 'PENDING', 'new-1', "
            "true, 1) RETURNING id",
            user,
            account,
        )
        payload = json.dumps(
            {
                "event": "ACCEPTED",
                "order": {"status": "PENDING", "quantity": "1", "limit": None, "request_id": "r-1",
                          "reject_reason": None},
                "execution": None,
            }
        )  # fmt: skip
        await run(
            "INSERT INTO order_events (id, user_id, order_id, version, event, payload) "
            "VALUES (gen_random_uuid(), $1, $2, 0, 'ACCEPTED', $3)",
            user,
            order,
            payload,
        )

    asyncio.run(seed_outbox_era())
    command.upgrade(config, "head")

    async def check() -> tuple[list[str], list[str]]:
        url = scratch_database.replace("postgresql://", "postgresql+asyncpg://", 1)
        engine = create_async_engine(url)
        try:
            async with engine.connect() as conn:
                kinds = (
                    await conn.execute(
                        text(
                            "SELECT e.kind FROM order_events e JOIN orders o ON o.id = e.order_id "
                            "WHERE o.idempotency_key = 'old-2' ORDER BY e.version, e.seq"
                        )
                    )
                ).scalars()
                found = list(kinds)
            return found, await history_differences(engine)
        finally:
            await engine.dispose()

    kinds, problems = asyncio.run(check())
    assert kinds == ["ACCEPTED", "PARTIAL_FILL", "CANCELLED"]
    assert problems == []
