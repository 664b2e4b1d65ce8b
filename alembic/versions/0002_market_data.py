"""Securities and one-minute price bars.

Revision ID: 0002
Revises: 0001
"""

from alembic import op

from services.infra.sqlscript import execute_script

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

UPGRADE = r"""
CREATE TABLE securities (
    symbol      text PRIMARY KEY CHECK (symbol ~ '^[A-Z0-9][A-Z0-9.$^=+-]{0,13}$'),
    name        text NOT NULL,
    exchange    text NOT NULL,
    is_etf      boolean NOT NULL DEFAULT false,
    round_lot   integer NOT NULL DEFAULT 100 CHECK (round_lot > 0),
    active      boolean NOT NULL DEFAULT true,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX securities_active_idx ON securities (symbol) WHERE active;

-- One-minute OHLCV. Volume is carried as the day's cumulative volume at the bar's edges, so a
-- replayed upsert (a worker restarted before it acknowledged) merges instead of double counting.
CREATE TABLE bars_1m (
    symbol        text NOT NULL,
    start         timestamptz NOT NULL,
    open          numeric(18, 4) NOT NULL,
    high          numeric(18, 4) NOT NULL,
    low           numeric(18, 4) NOT NULL,
    close         numeric(18, 4) NOT NULL,
    open_ns       bigint NOT NULL,
    close_ns      bigint NOT NULL,
    volume_start  bigint NOT NULL,
    volume_end    bigint NOT NULL,
    PRIMARY KEY (symbol, start),
    CHECK (low <= high AND volume_end >= volume_start)
);
"""

DOWNGRADE = r"""
DROP TABLE bars_1m;
DROP TABLE securities;
"""


def upgrade() -> None:
    execute_script(op.execute, UPGRADE)


def downgrade() -> None:
    execute_script(op.execute, DOWNGRADE)
