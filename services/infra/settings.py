"""The one settings object, read from the environment (and an optional `.env` file)."""

from __future__ import annotations

import ipaddress
from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Every knob of the platform. Each field is read from `TRADEQL_<NAME>` unless it says otherwise."""

    model_config = SettingsConfigDict(
        env_prefix="TRADEQL_", env_file=".env", extra="ignore", populate_by_name=True
    )

    database_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("DATABASE_URL", "TRADEQL_DATABASE_URL"),
        description="postgresql://user:pass@host:port/db; unset means the embedded server",
    )
    database_replica_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("DATABASE_REPLICA_URL", "TRADEQL_DATABASE_REPLICA_URL"),
        description="a streaming replica of DATABASE_URL for reads that tolerate its delay; "
        "unset: every read on DATABASE_URL",
    )
    redis_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("REDIS_URL", "TRADEQL_REDIS_URL"),
        description="redis://host:port/db; unset means the embedded server",
    )
    data_dir: Path = Field(default=Path(".tradeql"), description="embedded servers' data folder")

    graphiql: bool = Field(
        default=False, description="serve GraphiQL at GET /graphql (it needs introspection too)"
    )
    web_app: bool = Field(
        default=True, description="serve the trading web app at GET / (gateway/static/app)"
    )
    introspection: bool = Field(
        default=False, description="answer introspection queries (__schema, __type)"
    )
    log_level: str = "INFO"
    log_json: Literal["auto", "true", "false"] = Field(
        default="auto",
        description="JSON lines (true), readable lines (false), or JSON unless stderr is a "
        "terminal (auto)",
    )

    # All of a process's connections are kept open: past the pool, SQLAlchemy closes an
    # overflow connection as soon as it is returned, and a steady load opened ~16 a second.
    db_pool_size: int = 20
    db_max_overflow: int = 0
    db_statement_timeout_ms: int = Field(
        default=10_000,
        ge=0,
        description="longest statement; 0: none set by the platform (the role's or database's "
        "statement_timeout applies)",
    )
    db_pooler: Literal["none", "transaction"] = Field(
        default="none",
        description="transaction: DATABASE_URL names a pooler in transaction mode (PgBouncer "
        "pool_mode = transaction); no prepared statements kept, only application_name sent at "
        "startup, the statement timeout set per transaction",
    )
    db_replica_max_lag_seconds: float = Field(
        default=5.0,
        gt=0,
        description="a replica whose replay is further behind than this is skipped",
    )
    db_replica_wait_ms: float = Field(
        default=50.0,
        ge=0,
        description="how long a read waits for the replica to replay the user's last write "
        "before reading the primary instead",
    )
    db_ping_idle_seconds: float = Field(
        default=5.0,
        ge=0,
        description="ping a pooled connection before use only if it sat idle this long (0: always)",
    )

    quote_mirror_max_age_seconds: float = Field(
        default=2.0,
        ge=0,
        description="an API process values positions at the quotes it received over pub/sub "
        "while they are younger than this, else reads Redis (0: always Redis)",
    )
    holdings_cache_size: int = Field(
        default=10_000,
        ge=0,
        description="users whose balances and positions an API process keeps between requests, "
        "checked against a version in Redis on each use (0: none kept)",
    )
    holdings_cache_seconds: float = Field(
        default=10.0,
        gt=0,
        description="how long a kept copy lives at most (covers a writer that died between its "
        "commit and retiring the version)",
    )

    session_ttl_seconds: int = 30 * 24 * 3600
    session_cache_seconds: int = 300
    password_hash_time_cost: int = 3
    password_hash_memory_kib: int = 65_536
    password_hash_parallelism: int = 2
    password_min_length: int = 10
    password_min_score: int = 2

    deposit_max: Decimal = Decimal("1000000.00")
    idempotency_ttl_hours: int = 48

    max_query_depth: int = Field(default=12, ge=1, description="deepest nesting of a document")
    max_aliases: int = Field(default=30, ge=0, description="aliases in one document")
    max_tokens: int = Field(default=2000, ge=100, description="lexical tokens in one document")
    max_body_bytes: int = Field(
        default=256 * 1024,
        ge=1024,
        description="largest request body, query string or WebSocket message (413 above)",
    )
    rate_limit_enabled: bool = Field(default=True, description="apply the rate limits (in Redis)")
    rate_limit_session_per_second: float = Field(
        default=20.0, ge=0, description="requests per second per session token (0: no limit)"
    )
    rate_limit_session_burst: int = Field(default=60, ge=1, description="burst per session token")
    rate_limit_partner_per_second: float = Field(
        default=200.0, ge=0, description="requests per second per X-API-Key (0: no limit)"
    )
    rate_limit_partner_burst: int = Field(default=600, ge=1, description="burst per X-API-Key")
    rate_limit_ip_per_second: float = Field(
        default=100.0, ge=0, description="requests per second per client address (0: no limit)"
    )
    rate_limit_ip_burst: int = Field(default=300, ge=1, description="burst per client address")
    projection: bool = Field(
        default=True,
        description="read plain objects directly instead of field by field "
        "(gateway/event_execution.py); false: graphql-core's executor for everything",
    )
    redis_cluster: bool = Field(
        default=False,
        description="REDIS_URL names a node of a Redis Cluster (7.0+): the cluster client, "
        "sharded pub/sub, and every script and multi-key command kept to one hash slot",
    )
    redis_max_connections: int = Field(
        default=200,
        ge=1,
        description="Redis connections per process (per node in a cluster); past them a "
        "command waits for a free one up to redis_pool_timeout_seconds",
    )
    redis_pool_timeout_seconds: float = Field(
        default=5.0,
        gt=0,
        description="how long a command waits for a free Redis connection before it fails",
    )
    redis_namespace: str = Field(
        default="",
        description="prefix of every Redis key and channel of this deployment; empty: derived "
        "from DATABASE_URL's host, port and database",
    )
    cors_origins: str = Field(
        default="",
        description="origins (comma-separated, e.g. https://app.example.com) whose pages may "
        "call the API and open its WebSockets; empty: same origin only",
    )
    trusted_proxies: str = Field(
        default="",
        description="proxies (addresses or CIDRs, comma-separated) whose X-Forwarded-For is "
        "believed for the client address; empty: none",
    )

    apq_ttl_seconds: int = Field(
        default=7 * 24 * 3600, ge=60, description="APQ documents expire this long after last use"
    )
    persisted_document_max_bytes: int = Field(
        default=32_768, ge=1024, description="largest document APQ stores or a manifest may hold"
    )
    partner_cache_seconds: int = Field(
        default=5, ge=1, description="how long a partner key lookup is cached (revoke deletes it)"
    )

    ws_connection_init_timeout_seconds: float = 5.0
    ws_max_subscriptions: int = 100
    shutdown_grace_seconds: float = 10.0
    login_free_failures: int = Field(
        default=5, ge=1, description="consecutive failed sign-ins of an e-mail before waits begin"
    )
    login_max_wait_seconds: float = Field(
        default=900.0, gt=0, description="the longest wait between sign-ins of one e-mail"
    )
    login_address_failures: int = Field(
        default=100, ge=1, description="failed sign-ins from one address per window"
    )
    login_address_window_seconds: int = Field(default=600, ge=1)
    api_workers: int = Field(
        default=0,
        ge=0,
        description="API processes `tradeql up` starts on one port (0: one per core)",
    )

    market_always_open: bool = Field(
        default=False, description="treat the market as open at all hours (demos, tests)"
    )
    market_session: Literal["PRE", "REGULAR", "POST", "CLOSED"] | None = Field(
        default=None,
        description="force the market session at all hours (tests, demos); wins over "
        "market_always_open",
    )

    @field_validator("market_session", mode="before")
    @classmethod
    def _no_session(cls, value: object) -> object:
        return None if value == "" else value

    quote_partitions: int = Field(default=4, ge=1, le=1024)
    quote_stream_maxlen: int = Field(default=10_000, ge=100)
    feed_batch_ms: int = Field(default=10, ge=1)
    feed_sim_rate: float = Field(default=1.0, gt=0)
    feed_redis_breaker_threshold: int = Field(default=5, ge=1)
    feed_redis_breaker_reset_seconds: float = Field(default=5.0, gt=0)
    feed_reconnect_max_seconds: float = Field(default=30.0, gt=0)
    quote_window_ms: int = Field(default=50, ge=1)
    quote_subscription_max_symbols: int = Field(default=200, ge=1)
    bars_flush_ms: int = Field(default=1000, ge=10)

    market_order_collar: Decimal = Field(default=Decimal("0.05"), ge=0, le=1)
    order_max_quantity: Decimal = Decimal("1000000")
    order_max_price: Decimal = Decimal("1000000")
    order_min_notional: Decimal = Decimal("1.00")
    order_max_notional: Decimal = Decimal("10000000.00")
    order_batch_ms: float = Field(default=2.0, ge=0)
    order_batch_max: int = Field(default=256, ge=1)
    matcher_lease_seconds: float = Field(default=10.0, gt=0)
    matcher_partitions: str = Field(
        default="",
        description="the partitions a matcher process may lease, e.g. 0-1 or 0,2 (empty: all): "
        "several matchers on one machine split the symbols instead of one holding everything",
    )
    matcher_sweep_seconds: float = Field(default=5.0, gt=0)
    matcher_order_concurrency: int = Field(
        default=64,
        ge=1,
        description="symbols whose new orders a matcher process decides at once (all its "
        "partitions together); their changes commit in shared groups, one connection each",
    )
    outbox_grace_seconds: float = Field(
        default=2.0,
        gt=0,
        description="how long the relay leaves an order event to its writer before publishing it",
    )
    outbox_relay_interval_seconds: float = Field(
        default=0.5, gt=0, description="how often the relay looks for unpublished order events"
    )
    matcher_group_max: int = Field(
        default=500, ge=1, description="order changes the matcher commits in one transaction"
    )
    venue_faults: str = Field(default="", description="e.g. EDGX=1.0,ARCA=0.5 (failure rates)")
    venue_timeout_ms: float = Field(default=250.0, gt=0)
    venue_breaker_threshold: int = Field(default=5, ge=1)
    venue_breaker_reset_seconds: float = Field(default=10.0, gt=0)
    order_retention_months: int = Field(default=24, ge=1)
    watchlist_max_lists: int = Field(default=20, ge=1, description="watchlists per user")
    watchlist_max_symbols: int = Field(default=100, ge=1, description="symbols per watchlist")
    alert_max_active: int = Field(default=100, ge=1, description="ACTIVE price alerts per user")
    alert_resync_seconds: float = Field(
        default=5.0, gt=0, description="how often the alert checker re-reads alert changes"
    )

    @property
    def cors_origin_list(self) -> list[str]:
        return [o.strip().rstrip("/") for o in self.cors_origins.split(",") if o.strip()]

    @field_validator("log_json", mode="before")
    @classmethod
    def _log_json(cls, value: object) -> object:
        """Booleans as pydantic reads them (1/0, yes/no, on/off), plus auto."""
        text = str(value).strip().lower()
        if text in ("1", "yes", "on", "true"):
            return "true"
        if text in ("0", "no", "off", "false"):
            return "false"
        return text

    @field_validator("matcher_partitions")
    @classmethod
    def _partition_list(cls, value: str) -> str:
        parse_partitions(value)  # ValueError names the bad part
        return value

    @model_validator(mode="after")
    def _partitions_exist(self) -> Settings:
        beyond = [
            p for p in parse_partitions(self.matcher_partitions) if p >= self.quote_partitions
        ]
        if beyond:
            raise ValueError(
                f"TRADEQL_MATCHER_PARTITIONS names partition {beyond[0]}, but there are only "
                f"{self.quote_partitions} (TRADEQL_QUOTE_PARTITIONS: 0-{self.quote_partitions - 1})"
            )
        return self

    def matcher_partition_list(self) -> list[int]:
        """The partitions this matcher process may lease, in order."""
        return parse_partitions(self.matcher_partitions) or list(range(self.quote_partitions))

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: str) -> str:
        for part in value.split(","):
            if part.strip():
                ipaddress.ip_network(part.strip(), strict=False)  # ValueError names the bad one
        return value


def parse_partitions(text: str) -> list[int]:
    """`0-1`, `0,2`, `3` or `0-1,5`: sorted partition numbers without repeats; empty text: []."""
    found: set[int] = set()
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        low, dash, high = part.partition("-")
        try:
            first, last = int(low), int(high if dash else low)
        except ValueError:
            raise ValueError(f"partition range {part!r}: expected N or N-M") from None
        if first < 0 or last < first:
            raise ValueError(f"partition range {part!r}: expected 0 <= N <= M")
        found.update(range(first, last + 1))
    return sorted(found)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
