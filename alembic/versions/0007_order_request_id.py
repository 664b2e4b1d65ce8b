"""The request that placed an order, on the order itself, so that one id follows an order from
the request to its last fill (the matcher's audit rows and logs carry it).

Revision ID: 0007
Revises: 0006
"""

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE orders ADD COLUMN request_id text")


def downgrade() -> None:
    op.execute("ALTER TABLE orders DROP COLUMN request_id")
