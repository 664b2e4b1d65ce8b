"""Orders (partitioned by month), executions, positions, the order state machine, equity history.

Revision ID: 0003
Revises: 0002
"""

from alembic import op

from services.infra.sqlscript import execute_script

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

# The allowed changes of status: the same pairs as services/orders/order_model.py TRANSITIONS
# (tests/services/test_order_states.py keeps them equal).
TRANSITIONS = [
    ("PENDING", "SUBMITTED"),
    ("PENDING", "PARTIALLY_FILLED"),
    ("PENDING", "FILLED"),
    ("PENDING", "CANCELLED"),
    ("PENDING", "REJECTED"),
    ("PENDING", "EXPIRED"),
    ("SUBMITTED", "PARTIALLY_FILLED"),
    ("SUBMITTED", "FILLED"),
    ("SUBMITTED", "CANCELLED"),
    ("SUBMITTED", "REJECTED"),
    ("SUBMITTED", "EXPIRED"),
    ("PARTIALLY_FILLED", "FILLED"),
    ("PARTIALLY_FILLED", "CANCELLED"),
    ("PARTIALLY_FILLED", "EXPIRED"),
]

UPGRADE = r"""
CREATE TABLE order_transitions (
    from_status text NOT NULL,
    to_status   text NOT NULL,
    PRIMARY KEY (from_status, to_status)
);

CREATE TABLE orders (
    id                uuid NOT NULL,
    user_id           uuid NOT NULL,
    account_id        uuid NOT NULL,
    symbol            text NOT NULL,
    side              text NOT NULL CHECK (side IN ('BUY', 'SELL')),
    type              text NOT NULL CHECK (type IN ('MARKET', 'LIMIT', 'STOP', 'STOP_LIMIT')),
    time_in_force     text NOT NULL CHECK (time_in_force IN ('DAY', 'GTC', 'IOC', 'FOK')),
    quantity          numeric(24, 6) NOT NULL CHECK (quantity > 0),
    notional          numeric(20, 2) CHECK (notional > 0),
    limit_price       numeric(18, 4) CHECK (limit_price > 0),
    stop_price        numeric(18, 4) CHECK (stop_price > 0),
    status            text NOT NULL CHECK (status IN ('PENDING', 'SUBMITTED', 'PARTIALLY_FILLED',
                                                      'FILLED', 'CANCELLED', 'REJECTED', 'EXPIRED')),
    filled_quantity   numeric(24, 6) NOT NULL DEFAULT 0 CHECK (filled_quantity >= 0),
    filled_value      numeric(30, 10) NOT NULL DEFAULT 0 CHECK (filled_value >= 0),
    reserved_cash     numeric(20, 2) NOT NULL DEFAULT 0 CHECK (reserved_cash >= 0),
    reserved_quantity numeric(24, 6) NOT NULL DEFAULT 0 CHECK (reserved_quantity >= 0),
    triggered         boolean NOT NULL DEFAULT false,
    version           integer NOT NULL DEFAULT 0,
    idempotency_key   text NOT NULL,
    reject_reason     text,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    filled_at         timestamptz,
    PRIMARY KEY (id, created_at),
    CHECK (filled_quantity <= quantity),
    CHECK (status NOT IN ('FILLED', 'CANCELLED', 'REJECTED', 'EXPIRED')
           OR (reserved_cash = 0 AND reserved_quantity = 0))
) PARTITION BY RANGE (created_at);
CREATE INDEX orders_user_history_idx ON orders (user_id, created_at DESC, id DESC);
CREATE INDEX orders_open_idx ON orders (symbol)
    WHERE status IN ('PENDING', 'SUBMITTED', 'PARTIALLY_FILLED');
CREATE INDEX orders_id_idx ON orders (id);

-- One partition a month, named orders_YYYY_MM; end of day creates the coming ones.
CREATE FUNCTION ensure_order_partition(month_start date) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    name text := format('orders_%s', to_char(month_start, 'YYYY_MM'));
BEGIN
    IF to_regclass(name) IS NULL THEN
        EXECUTE format(
            'CREATE TABLE %I PARTITION OF orders FOR VALUES FROM (%L) TO (%L)',
            name, month_start, (month_start + interval '1 month')::date);
    END IF;
    RETURN name;
END $$;
SELECT ensure_order_partition((date_trunc('month', now()) - interval '1 month')::date);
SELECT ensure_order_partition(date_trunc('month', now())::date);
SELECT ensure_order_partition((date_trunc('month', now()) + interval '1 month')::date);
SELECT ensure_order_partition((date_trunc('month', now()) + interval '2 month')::date);

CREATE FUNCTION orders_check_transition() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.status IN ('FILLED', 'CANCELLED', 'REJECTED', 'EXPIRED') THEN
        RAISE EXCEPTION 'order % is % and can no longer change', OLD.id, OLD.status
            USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.status IS DISTINCT FROM OLD.status AND NOT EXISTS (
        SELECT 1 FROM order_transitions WHERE from_status = OLD.status AND to_status = NEW.status
    ) THEN
        RAISE EXCEPTION 'order % cannot go from % to %', OLD.id, OLD.status, NEW.status
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER orders_state_machine BEFORE UPDATE ON orders
    FOR EACH ROW EXECUTE FUNCTION orders_check_transition();

CREATE TABLE executions (
    id                  uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    order_id            uuid NOT NULL,
    user_id             uuid NOT NULL,
    symbol              text NOT NULL,
    side                text NOT NULL,
    quantity            numeric(24, 6) NOT NULL CHECK (quantity > 0),
    price               numeric(18, 4) NOT NULL CHECK (price > 0),
    venue               text NOT NULL,
    venue_execution_id  text NOT NULL UNIQUE,
    -- clock_timestamp, not now(): the fills of one transaction keep their order
    executed_at         timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX executions_order_idx ON executions (order_id, executed_at);

CREATE TABLE positions (
    account_id        uuid NOT NULL REFERENCES accounts (id),
    symbol            text NOT NULL,
    quantity          numeric(24, 6) NOT NULL DEFAULT 0 CHECK (quantity >= 0),
    reserved_quantity numeric(24, 6) NOT NULL DEFAULT 0 CHECK (reserved_quantity >= 0),
    cost_basis        numeric(24, 6) NOT NULL DEFAULT 0 CHECK (cost_basis >= 0),
    realized_pnl      numeric(20, 2) NOT NULL DEFAULT 0,
    updated_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account_id, symbol),
    CHECK (reserved_quantity <= quantity)
);

CREATE TABLE equity_snapshots (
    account_id    uuid NOT NULL REFERENCES accounts (id),
    taken_at      timestamptz NOT NULL,
    kind          text NOT NULL CHECK (kind IN ('intraday', 'close')),
    cash          numeric(20, 2) NOT NULL,
    market_value  numeric(24, 2) NOT NULL,
    equity        numeric(24, 2) NOT NULL,
    PRIMARY KEY (account_id, taken_at)
);

CREATE TABLE eod_runs (
    trading_day  date PRIMARY KEY,
    finished_at  timestamptz NOT NULL DEFAULT now(),
    summary      jsonb NOT NULL DEFAULT '{}'::jsonb
);
"""

DOWNGRADE = r"""
DROP TABLE eod_runs;
DROP TABLE equity_snapshots;
DROP TABLE positions;
DROP TABLE executions;
DROP TABLE orders;
DROP FUNCTION orders_check_transition();
DROP FUNCTION ensure_order_partition(date);
DROP TABLE order_transitions;
"""


def upgrade() -> None:
    execute_script(op.execute, UPGRADE)
    values = ", ".join(f"('{a}', '{b}')" for a, b in TRANSITIONS)
    op.execute(f"INSERT INTO order_transitions (from_status, to_status) VALUES {values}")


def downgrade() -> None:
    execute_script(op.execute, DOWNGRADE)
