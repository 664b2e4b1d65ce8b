"""The local order book: an index of the resting limit orders by symbol, side, price and time, for
the internal cross (services/orders/internal_cross.py).

Only working orders are in it (SUBMITTED or PARTIALLY_FILLED, LIMIT or STOP_LIMIT), so it stays
as small as the book itself. `orders` is partitioned: the index is made on every partition.

Revision ID: 0012
Revises: 0011
"""

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        "CREATE INDEX orders_book_idx ON orders (symbol, side, limit_price, created_at, id) "
        "WHERE status IN ('SUBMITTED', 'PARTIALLY_FILLED') AND type IN ('LIMIT', 'STOP_LIMIT')"
    )


def downgrade() -> None:
    op.execute("DROP INDEX orders_book_idx")
