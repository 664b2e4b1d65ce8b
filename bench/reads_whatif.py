"""The API with candidate fixes patched in at start, to put numbers on the reads benchmark's
suggestions without touching the project's files (measurement only, never for production).

    python -m bench.reads_whatif --port P --fix preping,autocommit

(A third one, the validation rules built once so that strawberry's ValidationCache hits, is in
gateway/graphql_schema.py since commit 53f6305.)

* `preping`: no ping at all (services/infra/db.py pings a connection only after it sat idle for
  TRADEQL_DB_PING_IDLE_SECONDS; this engine never does);
* `autocommit`: the engine in AUTOCOMMIT, so a read is one round trip, not BEGIN + query +
  ROLLBACK. Only sound for this read-only benchmark: writes would lose their transactions.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

FIXES = ("preping", "autocommit")


def _patch_engine(pre_ping: bool, autocommit: bool) -> None:
    from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

    import services.infra.container
    import services.infra.db
    from services.infra.settings import Settings

    def create_engine(settings: Settings, *, pool_size: int | None = None) -> AsyncEngine:
        assert settings.database_url
        options: dict[str, Any] = {}
        if autocommit:
            options["isolation_level"] = "AUTOCOMMIT"
        return create_async_engine(
            services.infra.db.asyncpg_url(settings.database_url),
            pool_size=pool_size or settings.db_pool_size,
            max_overflow=settings.db_max_overflow,
            pool_pre_ping=pre_ping,
            connect_args=services.infra.db.connect_args(settings),
            **options,
        )

    services.infra.db.create_engine = create_engine
    services.infra.container.create_engine = create_engine  # type: ignore[attr-defined]


def apply(fixes: Sequence[str]) -> None:
    unknown = set(fixes) - set(FIXES)
    if unknown:
        raise SystemExit(f"unknown --fix {sorted(unknown)}; known: {', '.join(FIXES)}")
    if "preping" in fixes or "autocommit" in fixes:
        _patch_engine(pre_ping="preping" not in fixes, autocommit="autocommit" in fixes)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.reads_whatif")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--fix", default="", help=f"comma-separated: {', '.join(FIXES)}")
    args = parser.parse_args(argv)
    apply([f for f in args.fix.split(",") if f])
    from gateway import cli

    cli.api(host="127.0.0.1", port=args.port, workers=1, reuse_port=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
