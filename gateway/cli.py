"""`tradeql`: one command line for every process of the platform (typer)."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Awaitable, Callable
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TextIO, TypeVar

import typer

from services.infra.settings import Settings, get_settings

if TYPE_CHECKING:
    from gateway.supervisor import Child
    from services.infra.container import Services

T = TypeVar("T")

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
    reuse_port: Annotated[
        bool, typer.Option(help="bind with SO_REUSEPORT (what each of --workers does)")
    ] = False,
) -> None:
    """Serve the GraphQL API (HTTP and WebSocket), health and metrics."""
    settings = _setup()
    _require_database(settings)
    if workers > 1:
        from gateway.supervisor import Supervisor, child_env

        children = api_children(host, port, workers)
        raise typer.Exit(
            Supervisor(children, child_env({}), settings.shutdown_grace_seconds + 5).run()
        )
    from gateway.server import serve

    serve(host, port, grace_seconds=settings.shutdown_grace_seconds, reuse_port=reuse_port)


@app.command()
def schema(
    out: Annotated[
        Path | None, typer.Option(help="write it here (the repository keeps schema.graphql)")
    ] = None,
) -> None:
    """Print the served GraphQL schema (SDL), or write it to a file."""
    from gateway.graphql_schema import build_schema

    sdl = build_schema().as_str() + "\n"
    if out is None:
        typer.echo(sdl, nl=False)
    else:
        out.write_text(sdl)


@app.command()
def demo() -> None:
    """Create the demo user and its cash (idempotent)."""
    settings = _setup()
    _require_database(settings)
    from gateway.demo import seed_demo_data
    from services.infra.container import Services

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
    demo_user: Annotated[
        bool | None,
        typer.Option(
            "--demo/--no-demo",
            help="create the demo user (its password is published): by default only on the "
            "embedded servers",
        ),
    ] = None,
) -> None:
    """Run the whole platform: migrate, then the API, every worker and the market simulator.

    Without DATABASE_URL/REDIS_URL, embedded PostgreSQL and Redis are started in the data folder.
    """
    settings = _setup()
    from gateway.embedded import EmbeddedServers
    from gateway.supervisor import Child, Supervisor, child_env, tradeql_argv

    embedded: EmbeddedServers | None = None
    env: dict[str, str] = {  # a demo: an always-open market, GraphiQL and introspection
        name: os.environ.get(name, "true")
        for name in ("TRADEQL_MARKET_ALWAYS_OPEN", "TRADEQL_GRAPHIQL", "TRADEQL_INTROSPECTION")
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
        securities_defaults(synthetic=0)
        if demo_user if demo_user is not None else embedded is not None:
            demo()
        children = api_children(host, port, settings.api_workers or os.cpu_count() or 1)
        children += [Child(name, tradeql_argv(*argv)) for name, argv in WORKERS]
        typer.echo(
            f"TradeQL is up: the app at http://{host}:{port}/, GraphiQL at "
            f"http://{host}:{port}/graphql  (Ctrl-C stops everything)"
        )
        code = Supervisor(children, child_env(env), settings.shutdown_grace_seconds + 5).run()
    finally:
        if embedded is not None:
            embedded.stop()
    raise typer.Exit(code)


def api_children(host: str, port: int, count: int) -> list[Child]:
    """`count` API processes on one port (SO_REUSEPORT when more than one)."""
    from gateway.supervisor import Child, tradeql_argv

    if count == 1:
        return [Child("api", tradeql_argv("api", "--host", host, "--port", str(port)))]
    argv = tradeql_argv("api", "--host", host, "--port", str(port), "--reuse-port")
    return [Child(f"api-{i}", argv) for i in range(count)]


MetricsPort = Annotated[int, typer.Option(help="serve Prometheus metrics on this port (0: off)")]

securities_app = typer.Typer(help="The securities universe.", no_args_is_help=True)
app.add_typer(securities_app, name="securities")


@securities_app.command("load")
def securities_load(
    files: Annotated[list[Path], typer.Argument(help="nasdaqlisted.txt / otherlisted.txt files")],
) -> None:
    """Load symbol directories in the NASDAQ Trader format (pipe-separated, with a footer)."""
    settings = _setup()
    _require_database(settings)
    from services.market_data.securities import DirectoryFormatError, parse_directory

    loaded: list[object] = []
    for file in files:
        try:
            loaded += parse_directory(file.read_text(encoding="utf-8"), source=str(file))
        except (OSError, DirectoryFormatError) as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from exc
    count = asyncio.run(_load_securities(settings, loaded))
    typer.echo(f"loaded {count} securities")


@securities_app.command("defaults")
def securities_defaults(
    synthetic: Annotated[int, typer.Option(help="also add this many synthetic symbols")] = 0,
) -> None:
    """Load the default universe (large caps and ETFs), plus synthetic symbols for benchmarks."""
    settings = _setup()
    _require_database(settings)
    from services.market_data.securities import DEFAULT_UNIVERSE, synthetic_universe

    count = asyncio.run(
        _load_securities(settings, [*DEFAULT_UNIVERSE, *synthetic_universe(synthetic)])
    )
    typer.echo(f"loaded {count} securities")


partners_app = typer.Typer(
    help="Partners: API keys that may run only their own trusted documents.", no_args_is_help=True
)
app.add_typer(partners_app, name="partners")


@partners_app.command("add")
def partners_add(
    name: Annotated[str, typer.Argument(help="the partner's name: letters, digits, '.', '_', '-'")],
    manifest: Annotated[
        Path, typer.Option(help="Apollo persisted query manifest, or a {sha256: document} map")
    ],
    rotate_key: Annotated[
        bool, typer.Option(help="for an existing partner: issue a new key; the old one stops")
    ] = False,
) -> None:
    """Register a partner with its trusted documents and print its API key as the last line.

    For an existing partner the manifest replaces its documents and the key stays as it was,
    unless --rotate-key. Only a hash of the key is kept: it is shown once.
    """
    settings = _setup()
    _require_database(settings)
    from services.partners.registry import PartnerError, check_against_schema, parse_manifest

    try:
        documents = parse_manifest(
            manifest.read_text(encoding="utf-8"),
            max_document_bytes=settings.persisted_document_max_bytes,
        )
        from gateway.graphql_schema import build_schema
        from services.infra.compat import graphql_core_schema

        check_against_schema(documents, graphql_core_schema(build_schema()))
        done = asyncio.run(
            _with_services(
                settings, lambda s: s.partners.register(name, documents, rotate_key=rotate_key)
            )
        )
    except (OSError, PartnerError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    verb = "registered partner" if done.created else "replaced the documents of partner"
    typer.echo(f"{verb} {done.partner.name}: {done.documents} documents")
    if done.api_key is None:
        typer.echo("its API key is unchanged (--rotate-key issues a new one)")
        return
    if not done.created:
        typer.echo("issued a new API key: the old one no longer works")
    typer.echo("API key (shown once, only its hash is kept):")
    typer.echo(done.api_key)


@partners_app.command("list")
def partners_list() -> None:
    """Every partner, active or revoked, with its number of documents (never a key)."""
    settings = _setup()
    _require_database(settings)
    rows = asyncio.run(_with_services(settings, lambda s: s.partners.summaries()))
    typer.echo(f"{'NAME':<24} {'STATUS':<8} {'DOCUMENTS':>9}  {'CREATED':<20} UPDATED")
    for row in rows:
        status = "active" if row.active else "revoked"
        typer.echo(
            f"{row.name:<24} {status:<8} {row.documents:>9}  "
            f"{row.created_at:%Y-%m-%d %H:%M:%S}  {row.updated_at:%Y-%m-%d %H:%M:%S}"
        )


@partners_app.command("revoke")
def partners_revoke(name: Annotated[str, typer.Argument(help="the partner's name")]) -> None:
    """End a partner's API key at once, on every API process."""
    settings = _setup()
    _require_database(settings)
    from services.partners.registry import PartnerError

    try:
        asyncio.run(_with_services(settings, lambda s: s.partners.revoke(name)))
    except PartnerError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(f"revoked partner {name}: its API key no longer works")


async def _with_services(settings: Settings, use: Callable[[Services], Awaitable[T]]) -> T:
    from services.infra.container import Services

    services = Services.from_settings(settings)
    try:
        return await use(services)
    finally:
        await services.close()


async def _load_securities(settings: Settings, securities: list[object]) -> int:
    from services.infra.container import Services

    services = Services.from_settings(settings)
    try:
        return await services.securities.load(securities)  # type: ignore[arg-type]
    finally:
        await services.close()


@app.command()
def feed(
    source: Annotated[str, typer.Option(help="sim, tcp or replay")] = "sim",
    address: Annotated[str | None, typer.Option(help="HOST:PORT of the tcp line feed")] = None,
    file: Annotated[
        Path | None, typer.Option(help="IEX TOPS capture (.pcap/.pcap.gz) to replay")
    ] = None,
    fast: Annotated[
        bool, typer.Option(help="replay as fast as possible, not at recorded pace")
    ] = False,
    seed: Annotated[int | None, typer.Option(help="simulator seed (deterministic)")] = None,
    symbols: Annotated[int, typer.Option(help="simulate only the first N symbols (0: all)")] = 0,
    metrics_port: MetricsPort = 0,
) -> None:
    """Feed handler: normalize quotes from a source and append them to the partitioned streams."""
    settings = _setup()
    _require_database(settings)
    if source not in ("sim", "tcp", "replay"):
        raise typer.BadParameter("source must be sim, tcp or replay", param_hint="--source")
    if source == "tcp" and not address:
        raise typer.BadParameter("--source tcp needs --address HOST:PORT")
    if source == "replay" and (file is None or not file.exists()):
        raise typer.BadParameter("--source replay needs --file pointing at a capture")
    from workers.feed import run_feed
    from workers.runner import run_worker

    run_worker(
        f"feed ({source})",
        settings,
        lambda services, stop: run_feed(
            services,
            stop,
            source=source,
            address=address,
            file=file,
            paced=not fast,
            seed=seed,
            limit=symbols,
        ),
        metrics_port=metrics_port,
    )


@app.command()
def quotes(metrics_port: MetricsPort = 0) -> None:
    """Quote cache: keep quote:{SYMBOL} current and publish each window's changes."""
    settings = _setup()
    _require_database(settings)
    from workers.quotes import QuoteCache
    from workers.runner import run_worker

    run_worker(
        "quote cache",
        settings,
        lambda services, stop: QuoteCache(services.redis, settings).run(stop),
        metrics_port=metrics_port,
    )


@app.command()
def bars(metrics_port: MetricsPort = 0) -> None:
    """Bars worker: one-minute OHLCV bars from the quote streams, upserted into PostgreSQL."""
    settings = _setup()
    _require_database(settings)
    from workers.bars import BarsWorker
    from workers.runner import run_worker

    run_worker(
        "bars",
        settings,
        lambda services, stop: BarsWorker(services.engine, services.redis, settings).run(stop),
        metrics_port=metrics_port,
    )


@app.command()
def matcher(metrics_port: MetricsPort = 0) -> None:
    """Matcher: takes the order partitions it can lease, matches, routes and books fills."""
    settings = _setup()
    _require_database(settings)
    from workers.matcher import Matcher
    from workers.runner import run_worker

    run_worker(
        "matcher",
        settings,
        lambda services, stop: Matcher(services).run(stop),
        metrics_port=metrics_port,
    )


@app.command()
def relay(metrics_port: MetricsPort = 0) -> None:
    """Outbox relay: publishes the order events whose writers did not (crash, Redis outage)."""
    settings = _setup()
    _require_database(settings)
    from workers.relay import run_relay
    from workers.runner import run_worker

    run_worker("outbox relay", settings, run_relay, metrics_port=metrics_port)


@app.command()
def alerts(metrics_port: MetricsPort = 0) -> None:
    """Alert checker: triggers price alerts as the quote streams cross their thresholds."""
    settings = _setup()
    _require_database(settings)
    from workers.alerts import AlertChecker
    from workers.runner import run_worker

    run_worker(
        "alert checker",
        settings,
        lambda services, stop: AlertChecker(services).run(stop),
        metrics_port=metrics_port,
    )


@app.command()
def eod(
    day: Annotated[
        str | None, typer.Option(help="trading day YYYY-MM-DD (default: today, New York)")
    ] = None,
) -> None:
    """End of day: expire DAY orders, snapshot equity, roll partitions, purge old idempotency keys."""
    settings = _setup()
    _require_database(settings)
    from services.infra.container import Services
    from services.orders.eod import run_eod

    async def run() -> None:
        services = Services.from_settings(settings)
        try:
            summary = await run_eod(services, date.fromisoformat(day) if day else _today_new_york())
            typer.echo(
                f"expired {summary.expired} orders, {summary.snapshots} snapshots, partitions "
                f"created {summary.partitions_created or 'none'}, detached "
                f"{summary.partitions_detached or 'none'}, {summary.keys_purged} keys purged"
            )
        finally:
            await services.close()

    asyncio.run(run())


def _today_new_york() -> date:
    from datetime import datetime
    from zoneinfo import ZoneInfo

    return datetime.now(ZoneInfo("America/New_York")).date()


@app.command()
def scheduler() -> None:
    """Runs end of day at every market close (the real NYSE calendar)."""
    settings = _setup()
    _require_database(settings)
    from workers.runner import run_worker
    from workers.scheduler import run_scheduler

    run_worker("scheduler", settings, run_scheduler)


orders_app = typer.Typer(help="Order records.", no_args_is_help=True)
app.add_typer(orders_app, name="orders")


@orders_app.command("export")
def orders_export(
    day: Annotated[str, typer.Option(help="the New York calendar day, YYYY-MM-DD")],
    out: Annotated[
        Path | None, typer.Option(help="the CSV file to write (default: standard output)")
    ] = None,
    imid: Annotated[str, typer.Option(help="the CATReporterIMID column")] = "TRADEQL",
) -> None:
    """The day's order events as CSV shaped after the FINRA CAT order events (docs/orders.md)."""
    settings = _setup()
    _require_database(settings)
    from services.infra.db import create_engine
    from services.orders.cat_export import export_day

    try:
        wanted = date.fromisoformat(day)
    except ValueError:
        typer.echo(f"--day {day!r} is not a date (YYYY-MM-DD)", err=True)
        raise typer.Exit(2) from None

    async def run(stream: TextIO) -> int:
        engine = create_engine(settings)
        try:
            return await export_day(engine, wanted, stream, imid=imid)
        finally:
            await engine.dispose()

    if out is None:
        count = asyncio.run(run(sys.stdout))
    else:
        with out.open("w", newline="", encoding="utf-8") as stream:
            count = asyncio.run(run(stream))
    typer.echo(f"{count} order events of {wanted}", err=True)


@app.command()
def check() -> None:
    """Recompute balances and positions from the ledger and executions, and every order from its
    events; exit 1 on a difference."""
    settings = _setup()
    _require_database(settings)
    from services.accounts.reconcile import find_differences
    from services.infra.db import create_engine

    async def run() -> list[str]:
        engine = create_engine(settings)
        try:
            return await find_differences(engine)
        finally:
            await engine.dispose()

    problems = asyncio.run(run())
    for problem in problems:
        typer.echo(problem)
    if problems:
        typer.echo(f"{len(problems)} differences", err=True)
        raise typer.Exit(1)
    typer.echo(
        "books balance: every account, position and order agrees with the ledger, and every "
        "order with its events"
    )


# The worker processes `up` runs, each as `tradeql <argv...>`.
WORKERS: list[tuple[str, list[str]]] = [
    ("quotes", ["quotes"]),
    ("bars", ["bars"]),
    ("feed", ["feed", "--source", "sim"]),
    ("matcher", ["matcher"]),
    ("relay", ["relay"]),
    ("alerts", ["alerts"]),
    ("scheduler", ["scheduler"]),
]


if __name__ == "__main__":
    app()
