"""Run the Alembic migrations programmatically (`tradeql migrate`, `tradeql up`, the tests), and
compare a migrated database with the table models (services/infra/tables.py)."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

from alembic import command
from alembic.autogenerate import produce_migrations, render_python_code
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool
from sqlalchemy.schema import SchemaItem

from services.infra.db import asyncpg_url
from services.infra.tables import metadata

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def alembic_config(database_url: str) -> Config:
    config = Config(str(PROJECT_ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(PROJECT_ROOT / "alembic"))
    config.attributes["database_url"] = database_url
    config.attributes["configure_logger"] = False
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(database_url), revision)


# Run-time partitions of `orders` (ensure_order_partition makes one a month): not in the models.
_ORDER_PARTITION = re.compile(r"orders_\d{4}_\d{2}")


def include_object(
    obj: SchemaItem, name: str | None, type_: str, reflected: bool, compare_to: SchemaItem | None
) -> bool:
    """What the comparison of the migrated database with the models looks at: everything but
    - the monthly partitions of `orders` (and so their indexes and constraints), which
      end of day creates at run time, so no model can list them;
    - `alembic_version`, Alembic's own bookkeeping, which no migration creates.
    Triggers, functions and privileges are outside what autogenerate compares at all."""
    if type_ == "table" and reflected and compare_to is None:
        return name != "alembic_version" and not _ORDER_PARTITION.fullmatch(name or "")
    return True


# The comparison `alembic check` (alembic/env.py) and tests/services/test_tables.py make: column
# types (NUMERIC precision and scale included) and server defaults besides what autogenerate
# always compares (tables, columns, nullability, indexes, unique constraints, foreign keys).
COMPARE_OPTIONS: dict[str, Any] = {
    "compare_type": True,
    "compare_server_default": True,
    "include_object": include_object,
}


def model_drift(database_url: str) -> str:
    """What autogenerate finds between the database and the models (services/infra/tables.py),
    as the Alembic operations a migration would need to bring the database to the models; ""
    when they agree."""

    def compare(connection: Connection) -> str:
        context = MigrationContext.configure(connection, opts=COMPARE_OPTIONS)
        operations = produce_migrations(context, metadata).upgrade_ops
        if operations is None or operations.is_empty():
            return ""
        return render_python_code(operations)

    async def run() -> str:
        engine = create_async_engine(asyncpg_url(database_url), poolclass=NullPool)
        try:
            async with engine.connect() as connection:
                return await connection.run_sync(compare)
        finally:
            await engine.dispose()

    return asyncio.run(run())
