"""`tradeql`: one command line for every process of the platform (typer)."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import Annotated

import typer

from services.settings import Settings, get_settings

app = typer.Typer(
    help="TradeQL: a stock-trading backend served as a GraphQL API.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
log = logging.getLogger("tradeql.cli")

Host = Annotated[str, typer.Option(help="interface to listen on")]
Port = Annotated[int, typer.Option(help="TCP port to listen on")]


def _setup() -> Settings:
    from gateway.logging import configure_logging

    settings = get_settings()
    configure_logging(settings.log_level, json_lines=settings.log_json)
    return settings


def _require_database(settings: Settings) -> None:
    if not settings.database_url or not settings.redis_url:
        typer.echo("DATABASE_URL and REDIS_URL must be set (or use `tradeql up`).", err=True)
        raise typer.Exit(2)


@app.command()
def migrate() -> None:
    """Bring the database schema up to date (alembic upgrade head)."""
    settings = _setup()
    _require_database(settings)
    from gateway.migrate import upgrade

    assert settings.database_url is not None
    upgrade(settings.database_url)
    typer.echo("database is at the latest revision")


@app.command()
def api(
    host: Host = "127.0.0.1",
    port: Port = 8000,
    workers: Annotated[int, typer.Option(help="API processes sharing the port")] = 1,
) -> None:
    """Serve the GraphQL API (HTTP and WebSocket), health and metrics."""
    settings = _setup()
    _require_database(settings)
    import uvicorn

    uvicorn.run(
        "gateway.app:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=int(settings.shutdown_grace_seconds),
        ws_ping_interval=20,
    )


@app.command()
def schema() -> None:
    """Print the served GraphQL schema (SDL)."""
    from gateway.graphql_schema import build_schema

    typer.echo(build_schema().as_str())


@app.command()
def demo() -> None:
    """Create the demo user and its cash (idempotent)."""
    settings = _setup()
    _require_database(settings)
    from gateway.demo import seed_demo_data
    from services.container import Services

    async def run() -> None:
        services = Services.from_settings(settings)
        try:
            await seed_demo_data(services)
        finally:
            await services.close()

    asyncio.run(run())


@app.command()
def up(
    host: Host = "127.0.0.1",
    port: Port = 8000,
    data_dir: Annotated[Path | None, typer.Option(help="embedded servers' data folder")] = None,
) -> None:
    """Run the whole platform: migrate, then the API, every worker and the market simulator.

    Without DATABASE_URL/REDIS_URL, embedded PostgreSQL and Redis are started in the data folder.
    """
    settings = _setup()
    from gateway.embedded import EmbeddedServers
    from gateway.supervisor import Child, Supervisor, child_env, tradeql_argv

    embedded: EmbeddedServers | None = None
    env: dict[str, str] = {
        "TRADEQL_MARKET_ALWAYS_OPEN": os.environ.get("TRADEQL_MARKET_ALWAYS_OPEN", "true")
    }
    code = 1
    try:
        if not settings.database_url or not settings.redis_url:
            embedded = EmbeddedServers(data_dir or settings.data_dir)
            database_url, redis_url = embedded.start()
            env["DATABASE_URL"] = settings.database_url or database_url
            env["REDIS_URL"] = settings.redis_url or redis_url
        else:
            env["DATABASE_URL"], env["REDIS_URL"] = settings.database_url, settings.redis_url
        os.environ.update(env)
        get_settings.cache_clear()
        settings = get_settings()
        from gateway.migrate import upgrade

        upgrade(env["DATABASE_URL"])
        demo()
        children = [Child("api", tradeql_argv("api", "--host", host, "--port", str(port)))]
        children += [Child(name, tradeql_argv(*argv)) for name, argv in WORKERS]
        typer.echo(f"TradeQL is up: http://{host}:{port}/graphql  (Ctrl-C stops everything)")
        code = Supervisor(children, child_env(env), settings.shutdown_grace_seconds + 5).run()
    finally:
        if embedded is not None:
            embedded.stop()
    raise typer.Exit(code)


# The worker processes `up` runs, each as `tradeql <argv...>`.
WORKERS: list[tuple[str, list[str]]] = []


if __name__ == "__main__":
    app()
