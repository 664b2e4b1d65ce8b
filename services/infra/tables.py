"""The database's tables as typed SQLModel models, in one metadata (`metadata`).

The migrations (alembic/versions) make the schema; these models describe it, and
tests/services/test_tables.py keeps the two equal: it migrates a fresh database to head and
compares it with `metadata` through alembic's autogenerate comparison (`alembic check` runs the
same comparison against DATABASE_URL), then builds a second database from `metadata` and compares
the two catalogs for what autogenerate does not look at (CHECK constraints, primary keys, partial
index predicates, partitioning). A migration that changes a table changes its model here in the
same commit.

What the models leave to the migrations: the triggers and their functions (the order and
price-alert state machines, the balanced ledger, the append-only `audit_log`, `ledger_entries`
and `order_events`), the monthly partitions of `orders` (made at run time by
`ensure_order_partition`), the revoked privileges and the rows of `order_transitions`.

Constraint names are PostgreSQL's own (what an unnamed constraint in the migrations was called),
so a later migration can drop or alter one by the name both sides agree on. Hot paths keep their
hand-written SQL; they name tables and columns through these models where that costs nothing at
run time (e.g. `ORDER_COLUMNS` in services/orders/order_store.py).
"""

from collections.abc import Sequence
from datetime import date, datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Date,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    Integer,
    MetaData,
    Numeric,
    PrimaryKeyConstraint,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.dialects.postgresql import UUID as PG_UUID
from sqlalchemy.dialects.postgresql.base import PGDialect
from sqlalchemy.orm import registry
from sqlalchemy.types import TypeEngine, UserDefinedType
from sqlmodel import Field, SQLModel

__all__ = [
    "ALERT_CONDITIONS",
    "ALERT_STATUSES",
    "ORDER_SIDES",
    "ORDER_STATUSES",
    "ORDER_TIMES_IN_FORCE",
    "ORDER_TYPES",
    "AccountRow",
    "AuditLogRow",
    "Bar1mRow",
    "EodRunRow",
    "EquitySnapshotRow",
    "ExecutionRow",
    "IdempotencyKeyRow",
    "LedgerEntryRow",
    "LedgerTransactionRow",
    "OrderEventRow",
    "OrderRow",
    "OrderTransitionRow",
    "OutboxCursorRow",
    "PartnerDocumentRow",
    "PartnerRow",
    "PositionRow",
    "PriceAlertRow",
    "SecurityRow",
    "SessionRow",
    "UserRow",
    "WatchlistItemRow",
    "WatchlistRow",
    "column_list",
    "metadata",
]


class Xid8(UserDefinedType[int]):
    """PostgreSQL's 64-bit transaction id (`pg_current_xact_id()`), which SQLAlchemy lacks."""

    cache_ok = True

    def get_col_spec(self, **kw: Any) -> str:
        return "xid8"


# Reflection (alembic's comparison) reads an `xid8` column as this type instead of warning that
# it does not know it and skipping the column.
PGDialect.ischema_names.setdefault("xid8", Xid8)

# PostgreSQL's names for constraints the migrations leave unnamed. CHECK constraints are named
# one by one: PostgreSQL names a one-column check `<table>_<column>_check` and a table check
# `<table>_check`, `<table>_check1`, ..., which a convention cannot tell apart.
NAMING_CONVENTION = {
    "pk": "%(table_name)s_pkey",
    "uq": "%(table_name)s_%(column_0_N_name)s_key",
    "fk": "%(table_name)s_%(column_0_N_name)s_fkey",
}
metadata = MetaData(naming_convention=NAMING_CONVENTION)

# Money and quantities: Decimal in Python, NUMERIC(p, s) exactly as the migrations declare them.
CASH = Numeric(20, 2)
PRICE = Numeric(18, 4)
QUANTITY = Numeric(24, 6)
LEDGER_AMOUNT = Numeric(28, 6)
FILLED_VALUE = Numeric(30, 10)
VALUATION = Numeric(24, 2)
PERCENT_OF_PRICE = Numeric(8, 4)
TIMESTAMP = DateTime(timezone=True)

# The values of the text columns the migrations restrict with `IN (...)` checks; a test keeps
# them equal to the domain's enums (services/orders/order_model.py, services/alerts/).
ORDER_SIDES = ("BUY", "SELL")
ORDER_TYPES = ("MARKET", "LIMIT", "STOP", "STOP_LIMIT", "TRAILING_STOP")
ORDER_TIMES_IN_FORCE = ("DAY", "GTC", "IOC", "FOK")
ORDER_CLASSES = ("SIMPLE", "BRACKET", "OCO", "OTO")
ORDER_STATUSES = (
    "PENDING", "SUBMITTED", "PARTIALLY_FILLED", "FILLED", "CANCELLED", "REJECTED", "EXPIRED",
    "REPLACED",
)  # fmt: skip
ALERT_CONDITIONS = ("ABOVE", "BELOW")
ALERT_STATUSES = ("ACTIVE", "TRIGGERED", "CANCELLED")


def column(
    type_: TypeEngine[Any] | type[TypeEngine[Any]],
    *args: Any,
    nullable: bool = False,
    default: str | None = None,
    **kwargs: Any,
) -> Any:
    """A model field for one column: NOT NULL unless `nullable` (then its Python default is
    None), `default` the server default as SQL text, `args` its foreign key or checks."""
    sa_column = Column(
        type_,
        *args,
        nullable=nullable,
        server_default=text(default) if default is not None else None,
        **kwargs,
    )
    if nullable:
        return Field(default=None, sa_column=sa_column)
    return Field(sa_column=sa_column)


def check(table: str, name: str, condition: str) -> CheckConstraint:
    """A CHECK named as PostgreSQL named it in the migration (`<table>_<name>`)."""
    return CheckConstraint(condition, name=f"{table}_{name}")


def one_of(column_name: str, values: Sequence[str]) -> str:
    return f"{column_name} IN ({', '.join(repr(v) for v in values)})"


def column_list(model: type[SQLModel], *names: str, alias: str = "") -> str:
    """`a, b, c` for hand-written SQL: the model's columns in table order, or `names` (checked
    against the model, so a renamed or dropped column fails at import), each as `alias.a` if
    given."""
    table = model.__table__  # type: ignore[attr-defined]
    missing = [name for name in names if name not in table.c]
    if missing:
        raise ValueError(f"{table.name} has no column {', '.join(missing)}")
    prefix = f"{alias}." if alias else ""
    return ", ".join(prefix + name for name in names or table.c.keys())


class TableModel(SQLModel, registry=registry(metadata=metadata)):
    """The base of every table model here: their own metadata, apart from SQLModel's global one."""


# --- accounts: users, sessions, cash, the ledger, the audit log, idempotency keys (0001) ---


class UserRow(TableModel, table=True):
    __tablename__ = "users"
    __table_args__ = (Index("users_email_lower_key", text("lower(email)"), unique=True),)

    id: UUID = column(PG_UUID(as_uuid=True), primary_key=True, default="gen_random_uuid()")
    email: str = column(Text, check("users", "email_check", "length(email) BETWEEN 3 AND 320"))
    password_hash: str = column(Text)
    created_at: datetime = column(TIMESTAMP, default="now()")


class SessionRow(TableModel, table=True):
    __tablename__ = "sessions"
    __table_args__ = (
        UniqueConstraint("token_hash"),
        Index("sessions_user_id_idx", "user_id"),
    )

    id: UUID = column(PG_UUID(as_uuid=True), primary_key=True, default="gen_random_uuid()")
    user_id: UUID = column(PG_UUID(as_uuid=True), ForeignKey("users.id", ondelete="CASCADE"))
    token_hash: str = column(Text)
    created_at: datetime = column(TIMESTAMP, default="now()")
    expires_at: datetime = column(TIMESTAMP)
    revoked_at: datetime | None = column(TIMESTAMP, nullable=True)


class AccountRow(TableModel, table=True):
    __tablename__ = "accounts"
    __table_args__ = (UniqueConstraint("user_id"),)

    id: UUID = column(PG_UUID(as_uuid=True), primary_key=True, default="gen_random_uuid()")
    user_id: UUID = column(PG_UUID(as_uuid=True), ForeignKey("users.id", ondelete="RESTRICT"))
    cash: Decimal = column(CASH, check("accounts", "cash_check", "cash >= 0"), default="0")
    reserved_cash: Decimal = column(
        CASH, check("accounts", "reserved_cash_check", "reserved_cash >= 0"), default="0"
    )
    created_at: datetime = column(TIMESTAMP, default="now()")
    updated_at: datetime = column(TIMESTAMP, default="now()")


class LedgerTransactionRow(TableModel, table=True):
    """A movement: its entries sum to zero per asset (a deferred trigger checks at commit)."""

    __tablename__ = "ledger_transactions"
    __table_args__ = (  # 0010: activities read deposits and fills by reference
        Index("ledger_transactions_reference_idx", "reference"),
        Index(
            "ledger_transactions_deposits_idx",
            "created_at",
            postgresql_where=text("kind = 'deposit'"),
        ),
    )

    id: int = column(BigInteger, Identity(always=True), primary_key=True)
    kind: str = column(Text)
    reference: str | None = column(Text, nullable=True)
    created_at: datetime = column(TIMESTAMP, default="now()")


class LedgerEntryRow(TableModel, table=True):
    """Append-only (triggers refuse UPDATE, DELETE and TRUNCATE)."""

    __tablename__ = "ledger_entries"
    __table_args__ = (
        check("ledger_entries", "check", "(account_id IS NULL) = (book LIKE 'external:%')"),
        Index("ledger_entries_transaction_idx", "transaction_id"),
        Index("ledger_entries_account_idx", "account_id", "book", "asset"),
    )

    id: int = column(BigInteger, Identity(always=True), primary_key=True)
    transaction_id: int = column(BigInteger, ForeignKey("ledger_transactions.id"))
    account_id: UUID | None = column(
        PG_UUID(as_uuid=True), ForeignKey("accounts.id"), nullable=True
    )
    book: str = column(Text)
    asset: str = column(Text)
    amount: Decimal = column(LEDGER_AMOUNT, check("ledger_entries", "amount_check", "amount <> 0"))


class AuditLogRow(TableModel, table=True):
    """Append-only (triggers refuse UPDATE, DELETE and TRUNCATE)."""

    __tablename__ = "audit_log"
    __table_args__ = (
        Index("audit_log_entity_idx", "entity_type", "entity_id"),
        Index("audit_log_user_idx", "user_id", "occurred_at"),
    )

    id: int = column(BigInteger, Identity(always=True), primary_key=True)
    occurred_at: datetime = column(TIMESTAMP, default="now()")
    user_id: UUID | None = column(PG_UUID(as_uuid=True), nullable=True)
    action: str = column(Text)
    entity_type: str = column(Text)
    entity_id: str = column(Text)
    details: dict[str, Any] = column(JSONB, default="'{}'::jsonb")
    request_id: str | None = column(Text, nullable=True)


class IdempotencyKeyRow(TableModel, table=True):
    __tablename__ = "idempotency_keys"
    __table_args__ = (Index("idempotency_keys_created_idx", "created_at"),)

    user_id: UUID = column(
        PG_UUID(as_uuid=True), ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    scope: str = column(Text, primary_key=True)
    key: str = column(
        Text,
        check("idempotency_keys", "key_check", "length(key) BETWEEN 1 AND 255"),
        primary_key=True,
    )
    request_hash: str = column(Text)
    resource_id: str | None = column(Text, nullable=True)
    created_at: datetime = column(TIMESTAMP, default="now()")


# --- market data: securities and one-minute bars (0002) ---


class SecurityRow(TableModel, table=True):
    __tablename__ = "securities"
    __table_args__ = (Index("securities_active_idx", "symbol", postgresql_where=text("active")),)

    symbol: str = column(
        Text,
        check("securities", "symbol_check", "symbol ~ '^[A-Z0-9][A-Z0-9.$^=+-]{0,13}$'"),
        primary_key=True,
    )
    name: str = column(Text)
    exchange: str = column(Text)
    is_etf: bool = column(Boolean, default="false")
    round_lot: int = column(
        Integer, check("securities", "round_lot_check", "round_lot > 0"), default="100"
    )
    active: bool = column(Boolean, default="true")
    updated_at: datetime = column(TIMESTAMP, default="now()")


class Bar1mRow(TableModel, table=True):
    """One-minute OHLCV; volume as the day's cumulative volume at the bar's edges."""

    __tablename__ = "bars_1m"
    __table_args__ = (
        PrimaryKeyConstraint("symbol", "start"),
        check("bars_1m", "check", "low <= high AND volume_end >= volume_start"),
    )

    symbol: str = column(Text)
    start: datetime = column(TIMESTAMP)
    open: Decimal = column(PRICE)
    high: Decimal = column(PRICE)
    low: Decimal = column(PRICE)
    close: Decimal = column(PRICE)
    open_ns: int = column(BigInteger)
    close_ns: int = column(BigInteger)
    volume_start: int = column(BigInteger)
    volume_end: int = column(BigInteger)


# --- orders: the state machine's pairs, orders by month, executions, positions, equity (0003,
# 0007, 0008, 0012) ---


class OrderTransitionRow(TableModel, table=True):
    """The allowed changes of status (rows loaded by migration 0003)."""

    __tablename__ = "order_transitions"
    __table_args__ = (PrimaryKeyConstraint("from_status", "to_status"),)

    from_status: str = column(Text)
    to_status: str = column(Text)


class OrderRow(TableModel, table=True):
    """Partitioned by month of `created_at` (partitions `orders_YYYY_MM`, made at run time); a
    trigger allows only the changes of status in `order_transitions`."""

    __tablename__ = "orders"
    __table_args__ = (
        PrimaryKeyConstraint("id", "created_at"),
        check("orders", "check", "filled_quantity <= quantity"),
        check(
            "orders",
            "closed_holds_nothing",
            "status NOT IN ('FILLED', 'CANCELLED', 'REJECTED', 'EXPIRED', 'REPLACED') "
            "OR (reserved_cash = 0 AND reserved_quantity = 0)",
        ),
        # 0009: a trailing stop has exactly one trail; a replaced order names its successor
        check(
            "orders",
            "trailing_has_one_trail",
            "(type = 'TRAILING_STOP') = (num_nonnulls(trail_price, trail_percent) = 1)",
        ),
        check(
            "orders",
            "replaced_names_its_successor",
            "(status = 'REPLACED') = (replaced_by IS NOT NULL)",
        ),
        Index("orders_user_history_idx", "user_id", text("created_at DESC"), text("id DESC")),
        Index(
            "orders_open_idx",
            "symbol",
            postgresql_where=text("status IN ('PENDING', 'SUBMITTED', 'PARTIALLY_FILLED')"),
        ),
        Index("orders_id_idx", "id"),
        # 0011: a simple order has no parent and no exit terms; an order's legs by parent
        check(
            "orders",
            "simple_has_no_legs",
            "order_class <> 'SIMPLE' OR (parent_id IS NULL AND num_nonnulls("
            "take_profit_limit, stop_loss_stop, stop_loss_limit) = 0)",
        ),
        Index("orders_parent_idx", "parent_id", postgresql_where=text("parent_id IS NOT NULL")),
        # 0012: the local order book (services/orders/internal_cross.py)
        Index(
            "orders_book_idx",
            "symbol",
            "side",
            "limit_price",
            "created_at",
            "id",
            postgresql_where=text(
                "status IN ('SUBMITTED', 'PARTIALLY_FILLED') AND type IN ('LIMIT', 'STOP_LIMIT')"
            ),
        ),
        {"postgresql_partition_by": "RANGE (created_at)"},
    )

    id: UUID = column(PG_UUID(as_uuid=True))
    user_id: UUID = column(PG_UUID(as_uuid=True))
    account_id: UUID = column(PG_UUID(as_uuid=True))
    symbol: str = column(Text)
    side: str = column(Text, check("orders", "side_check", one_of("side", ORDER_SIDES)))
    type: str = column(Text, check("orders", "type_check", one_of("type", ORDER_TYPES)))
    time_in_force: str = column(
        Text,
        check("orders", "time_in_force_check", one_of("time_in_force", ORDER_TIMES_IN_FORCE)),
    )
    quantity: Decimal = column(QUANTITY, check("orders", "quantity_check", "quantity > 0"))
    notional: Decimal | None = column(
        CASH, check("orders", "notional_check", "notional > 0"), nullable=True
    )
    limit_price: Decimal | None = column(
        PRICE, check("orders", "limit_price_check", "limit_price > 0"), nullable=True
    )
    stop_price: Decimal | None = column(
        PRICE, check("orders", "stop_price_check", "stop_price > 0"), nullable=True
    )
    status: str = column(Text, check("orders", "status_check", one_of("status", ORDER_STATUSES)))
    filled_quantity: Decimal = column(
        QUANTITY, check("orders", "filled_quantity_check", "filled_quantity >= 0"), default="0"
    )
    filled_value: Decimal = column(
        FILLED_VALUE, check("orders", "filled_value_check", "filled_value >= 0"), default="0"
    )
    reserved_cash: Decimal = column(
        CASH, check("orders", "reserved_cash_check", "reserved_cash >= 0"), default="0"
    )
    reserved_quantity: Decimal = column(
        QUANTITY,
        check("orders", "reserved_quantity_check", "reserved_quantity >= 0"),
        default="0",
    )
    triggered: bool = column(Boolean, default="false")
    version: int = column(Integer, default="0")
    idempotency_key: str = column(Text)
    reject_reason: str | None = column(Text, nullable=True)
    created_at: datetime = column(TIMESTAMP, default="now()")
    updated_at: datetime = column(TIMESTAMP, default="now()")
    filled_at: datetime | None = column(TIMESTAMP, nullable=True)
    # 0007: the request that placed the order
    request_id: str | None = column(Text, nullable=True)
    # 0009: trailing stops (the trail and the best price seen) and replacement
    trail_price: Decimal | None = column(
        PRICE, check("orders", "trail_price_check", "trail_price > 0"), nullable=True
    )
    trail_percent: Decimal | None = column(
        PERCENT_OF_PRICE,
        check("orders", "trail_percent_check", "trail_percent > 0 AND trail_percent < 100"),
        nullable=True,
    )
    high_water_mark: Decimal | None = column(
        PRICE, check("orders", "high_water_mark_check", "high_water_mark > 0"), nullable=True
    )
    replaces: UUID | None = column(PG_UUID(as_uuid=True), nullable=True)
    replaced_by: UUID | None = column(PG_UUID(as_uuid=True), nullable=True)
    # 0010: a LIMIT DAY order that also works in the PRE and POST sessions
    extended_hours: bool = column(Boolean, default="false")
    # 0011: order classes (BRACKET, OCO, OTO): the class, a leg's parent, an entry's exit terms
    order_class: str = column(
        Text,
        check("orders", "order_class_check", one_of("order_class", ORDER_CLASSES)),
        default="'SIMPLE'::text",
    )
    parent_id: UUID | None = column(PG_UUID(as_uuid=True), nullable=True)
    take_profit_limit: Decimal | None = column(
        PRICE, check("orders", "take_profit_limit_check", "take_profit_limit > 0"), nullable=True
    )
    stop_loss_stop: Decimal | None = column(
        PRICE, check("orders", "stop_loss_stop_check", "stop_loss_stop > 0"), nullable=True
    )
    stop_loss_limit: Decimal | None = column(
        PRICE, check("orders", "stop_loss_limit_check", "stop_loss_limit > 0"), nullable=True
    )


class ExecutionRow(TableModel, table=True):
    __tablename__ = "executions"
    __table_args__ = (
        UniqueConstraint("venue_execution_id"),
        Index("executions_order_idx", "order_id", "executed_at"),
        # 0010: a user's fills, newest first (activities)
        Index("executions_user_idx", "user_id", text("executed_at DESC"), text("id DESC")),
    )

    id: UUID = column(PG_UUID(as_uuid=True), primary_key=True, default="gen_random_uuid()")
    order_id: UUID = column(PG_UUID(as_uuid=True))
    user_id: UUID = column(PG_UUID(as_uuid=True))
    symbol: str = column(Text)
    side: str = column(Text)
    quantity: Decimal = column(QUANTITY, check("executions", "quantity_check", "quantity > 0"))
    price: Decimal = column(PRICE, check("executions", "price_check", "price > 0"))
    venue: str = column(Text)
    venue_execution_id: str = column(Text)
    # clock_timestamp, not now(): the fills of one transaction keep their order
    executed_at: datetime = column(TIMESTAMP, default="clock_timestamp()")


class PositionRow(TableModel, table=True):
    __tablename__ = "positions"
    __table_args__ = (
        PrimaryKeyConstraint("account_id", "symbol"),
        check("positions", "check", "reserved_quantity <= quantity"),
    )

    account_id: UUID = column(PG_UUID(as_uuid=True), ForeignKey("accounts.id"))
    symbol: str = column(Text)
    quantity: Decimal = column(
        QUANTITY, check("positions", "quantity_check", "quantity >= 0"), default="0"
    )
    reserved_quantity: Decimal = column(
        QUANTITY,
        check("positions", "reserved_quantity_check", "reserved_quantity >= 0"),
        default="0",
    )
    cost_basis: Decimal = column(
        QUANTITY, check("positions", "cost_basis_check", "cost_basis >= 0"), default="0"
    )
    realized_pnl: Decimal = column(CASH, default="0")
    updated_at: datetime = column(TIMESTAMP, default="now()")


class EquitySnapshotRow(TableModel, table=True):
    __tablename__ = "equity_snapshots"
    __table_args__ = (PrimaryKeyConstraint("account_id", "taken_at"),)

    account_id: UUID = column(PG_UUID(as_uuid=True), ForeignKey("accounts.id"))
    taken_at: datetime = column(TIMESTAMP)
    kind: str = column(
        Text, check("equity_snapshots", "kind_check", one_of("kind", ("intraday", "close")))
    )
    cash: Decimal = column(CASH)
    market_value: Decimal = column(VALUATION)
    equity: Decimal = column(VALUATION)


class EodRunRow(TableModel, table=True):
    __tablename__ = "eod_runs"

    trading_day: date = column(Date, primary_key=True)
    finished_at: datetime = column(TIMESTAMP, default="now()")
    summary: dict[str, Any] = column(JSONB, default="'{}'::jsonb")


class OrderEventRow(TableModel, table=True):
    """The transactional outbox (0008) and each order's history (0010): append-only (triggers
    refuse UPDATE, DELETE and TRUNCATE); `payload` is the update exactly as it is published on
    user:{id}, null for a change no subscriber is told about (kept for the history only)."""

    __tablename__ = "order_events"
    __table_args__ = (
        Index("order_events_xid_idx", "xid"),
        Index("order_events_order_idx", "order_id", "version"),
        Index("order_events_history_idx", "order_id", "version", "seq"),
        Index("order_events_day_idx", "created_at"),
    )

    id: UUID = column(PG_UUID(as_uuid=True), primary_key=True)
    xid: int = column(Xid8(), default="pg_current_xact_id()")
    created_at: datetime = column(TIMESTAMP, default="now()")
    user_id: UUID = column(PG_UUID(as_uuid=True))
    order_id: UUID = column(PG_UUID(as_uuid=True))
    version: int = column(Integer, check("order_events", "version_check", "version >= 0"))
    event: str | None = column(Text, nullable=True)
    payload: str | None = column(Text, nullable=True)
    # 0010: the history's columns
    seq: int = column(BigInteger, Identity(always=True))
    kind: str = column(Text)
    status: str = column(Text)
    quantity: Decimal | None = column(QUANTITY, nullable=True)
    price: Decimal | None = column(PRICE, nullable=True)
    venue: str | None = column(Text, nullable=True)
    reason: str | None = column(Text, nullable=True)
    request_id: str | None = column(Text, nullable=True)
    execution_id: UUID | None = column(PG_UUID(as_uuid=True), nullable=True)
    backfilled: bool = column(Boolean, default="false")


class OutboxCursorRow(TableModel, table=True):
    """The outbox relay's transaction-id watermark."""

    __tablename__ = "outbox_cursor"

    name: str = column(Text, primary_key=True)
    watermark: int = column(BigInteger)
    updated_at: datetime = column(TIMESTAMP, default="now()")


# --- watchlists (0004) ---


class WatchlistRow(TableModel, table=True):
    __tablename__ = "watchlists"
    __table_args__ = (
        Index("watchlists_user_name_key", "user_id", text("lower(name)"), unique=True),
    )

    id: UUID = column(PG_UUID(as_uuid=True), primary_key=True, default="gen_random_uuid()")
    user_id: UUID = column(PG_UUID(as_uuid=True), ForeignKey("users.id", ondelete="CASCADE"))
    name: str = column(
        Text,
        check(
            "watchlists",
            "name_check",
            r"name = btrim(name) AND char_length(name) BETWEEN 1 AND 100 "
            r"AND name !~ '[\u0001-\u001f\u007f-\u009f]'",
        ),
    )
    created_at: datetime = column(TIMESTAMP, default="now()")


class WatchlistItemRow(TableModel, table=True):
    __tablename__ = "watchlist_items"
    __table_args__ = (
        PrimaryKeyConstraint("watchlist_id", "symbol"),
        UniqueConstraint("watchlist_id", "position"),
    )

    watchlist_id: UUID = column(
        PG_UUID(as_uuid=True), ForeignKey("watchlists.id", ondelete="CASCADE")
    )
    symbol: str = column(Text, ForeignKey("securities.symbol"))
    position: int = column(Integer, check("watchlist_items", "position_check", "position >= 0"))
    added_at: datetime = column(TIMESTAMP, default="now()")


# --- price alerts (0005) ---


class PriceAlertRow(TableModel, table=True):
    """ACTIVE until triggered or cancelled, both final (a trigger enforces it and stamps
    `changed_xid` on every update)."""

    __tablename__ = "price_alerts"
    __table_args__ = (
        check(
            "price_alerts",
            "check",
            "(status = 'TRIGGERED') = (triggered_at IS NOT NULL AND triggered_price IS NOT NULL)",
        ),
        check("price_alerts", "check1", "(status = 'CANCELLED') = (cancelled_at IS NOT NULL)"),
        Index("price_alerts_user_idx", "user_id", text("created_at DESC"), text("id DESC")),
        Index("price_alerts_active_idx", "user_id", postgresql_where=text("status = 'ACTIVE'")),
        Index(
            "price_alerts_changes_idx",
            "changed_xid",
            postgresql_where=text("status <> 'TRIGGERED'"),
        ),
    )

    id: UUID = column(PG_UUID(as_uuid=True), primary_key=True, default="gen_random_uuid()")
    user_id: UUID = column(PG_UUID(as_uuid=True), ForeignKey("users.id", ondelete="CASCADE"))
    symbol: str = column(Text)
    condition: str = column(
        Text,
        check("price_alerts", "condition_check", one_of("condition", ALERT_CONDITIONS)),
    )
    threshold: Decimal = column(PRICE, check("price_alerts", "threshold_check", "threshold > 0"))
    status: str = column(
        Text,
        check("price_alerts", "status_check", one_of("status", ALERT_STATUSES)),
        default="'ACTIVE'::text",
    )
    created_at: datetime = column(TIMESTAMP, default="now()")
    updated_at: datetime = column(TIMESTAMP, default="now()")
    triggered_at: datetime | None = column(TIMESTAMP, nullable=True)
    triggered_price: Decimal | None = column(
        PRICE,
        check("price_alerts", "triggered_price_check", "triggered_price > 0"),
        nullable=True,
    )
    cancelled_at: datetime | None = column(TIMESTAMP, nullable=True)
    changed_xid: int = column(Xid8(), default="pg_current_xact_id()")


# --- partners and their trusted documents (0006) ---


class PartnerRow(TableModel, table=True):
    __tablename__ = "partners"
    __table_args__ = (
        UniqueConstraint("key_hash"),
        Index(
            "partners_active_name_key",
            text("lower(name)"),
            unique=True,
            postgresql_where=text("revoked_at IS NULL"),
        ),
    )

    id: UUID = column(PG_UUID(as_uuid=True), primary_key=True, default="gen_random_uuid()")
    name: str = column(
        Text, check("partners", "name_check", "name ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$'")
    )
    # sha256 of the API key: the key itself is shown once and never stored
    key_hash: str = column(Text, check("partners", "key_hash_check", "key_hash ~ '^[0-9a-f]{64}$'"))
    # bumped when the manifest is replaced, so cached lookups of old documents are never read
    documents_version: int = column(
        Integer,
        check("partners", "documents_version_check", "documents_version > 0"),
        default="1",
    )
    created_at: datetime = column(TIMESTAMP, default="now()")
    updated_at: datetime = column(TIMESTAMP, default="now()")
    revoked_at: datetime | None = column(TIMESTAMP, nullable=True)


class PartnerDocumentRow(TableModel, table=True):
    __tablename__ = "partner_documents"
    __table_args__ = (PrimaryKeyConstraint("partner_id", "sha256"),)

    partner_id: UUID = column(PG_UUID(as_uuid=True), ForeignKey("partners.id", ondelete="CASCADE"))
    sha256: str = column(
        Text, check("partner_documents", "sha256_check", "sha256 ~ '^[0-9a-f]{64}$'")
    )
    name: str | None = column(Text, nullable=True)
    operation_type: str | None = column(
        Text,
        check(
            "partner_documents",
            "operation_type_check",
            one_of("operation_type", ("query", "mutation", "subscription")),
        ),
        nullable=True,
    )
    body: str = column(Text)
