"""Order classes: BRACKET and OTO entries with their exits, and OCO pairs.

`orders.order_class` (SIMPLE for every order before this revision), `parent_id` (a leg's parent:
a bracket's or OTO's entry, or an OCO's take-profit), and the exit terms an entry carries until
it ends and its legs are made (`take_profit_limit`, `stop_loss_stop`, `stop_loss_limit`). The
index on `parent_id` finds an order's legs (Order.legs, and the fills' unit of work locking a
leg's sibling).

Revision ID: 0011
Revises: 0010
"""

from alembic import op

from services.infra.sqlscript import execute_script

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

UPGRADE = r"""
ALTER TABLE orders
    ADD COLUMN order_class       text NOT NULL DEFAULT 'SIMPLE'
        CHECK (order_class IN ('SIMPLE', 'BRACKET', 'OCO', 'OTO')),
    ADD COLUMN parent_id         uuid,
    ADD COLUMN take_profit_limit numeric(18, 4) CHECK (take_profit_limit > 0),
    ADD COLUMN stop_loss_stop    numeric(18, 4) CHECK (stop_loss_stop > 0),
    ADD COLUMN stop_loss_limit   numeric(18, 4) CHECK (stop_loss_limit > 0);
ALTER TABLE orders ADD CONSTRAINT orders_simple_has_no_legs
    CHECK (order_class <> 'SIMPLE' OR (parent_id IS NULL AND num_nonnulls(
        take_profit_limit, stop_loss_stop, stop_loss_limit) = 0));
CREATE INDEX orders_parent_idx ON orders (parent_id) WHERE parent_id IS NOT NULL;
"""

DOWNGRADE = r"""
DROP INDEX orders_parent_idx;
ALTER TABLE orders DROP CONSTRAINT orders_simple_has_no_legs;
ALTER TABLE orders DROP COLUMN stop_loss_limit, DROP COLUMN stop_loss_stop,
    DROP COLUMN take_profit_limit, DROP COLUMN parent_id, DROP COLUMN order_class;
"""


def upgrade() -> None:
    execute_script(op.execute, UPGRADE)


def downgrade() -> None:
    execute_script(op.execute, DOWNGRADE)
