"""PostgreSQL engine and transactions (SQLAlchemy async on asyncpg)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit, urlunsplit

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from services.settings import Settings


def asyncpg_url(url: str) -> str:
    """`postgresql://...` (what users write) -> `postgresql+asyncpg://...` (what SQLAlchemy needs)."""
    parts = urlsplit(url)
    scheme = parts.scheme.split("+", 1)[0]
    if scheme not in ("postgresql", "postgres"):
        raise ValueError(f"DATABASE_URL must be a postgresql:// URL, not {parts.scheme}://")
    return urlunsplit(parts._replace(scheme="postgresql+asyncpg"))


def create_engine(settings: Settings, *, pool_size: int | None = None) -> AsyncEngine:
    if not settings.database_url:
        raise RuntimeError("DATABASE_URL is not set (tradeql up starts an embedded server)")
    return create_async_engine(
        asyncpg_url(settings.database_url),
        pool_size=pool_size or settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_pre_ping=True,
        connect_args={
            "server_settings": {
                "statement_timeout": str(settings.db_statement_timeout_ms),
                "application_name": "tradeql",
            }
        },
    )


@asynccontextmanager
async def transaction(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """One PostgreSQL transaction: committed when the block ends, rolled back if it raises."""
    async with engine.begin() as conn:
        yield conn
