"""Migrations run forward on a database that already holds data, and back down cleanly."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from alembic import command

from gateway.migrate import alembic_config


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
