"""Order events as rows: every event an order's change announces is written in the transaction
that makes the change (a transactional outbox), append-only, and relayed to pub/sub by
`tradeql relay` for any its writer did not publish (it died between its commit and its publish,
or Redis failed). `outbox_cursor` keeps the relay's transaction-id watermark.

Revision ID: 0008
Revises: 0007
"""

from alembic import op

from services.infra.sqlscript import execute_script

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

UPGRADE = r"""
CREATE TABLE order_events (
    id          uuid PRIMARY KEY,
    xid         xid8 NOT NULL DEFAULT pg_current_xact_id(),
    created_at  timestamptz NOT NULL DEFAULT now(),
    user_id     uuid NOT NULL,
    order_id    uuid NOT NULL,
    version     integer NOT NULL CHECK (version >= 0),
    event       text NOT NULL,
    payload     text NOT NULL  -- the update exactly as it is published on user:{id}
);
CREATE INDEX order_events_xid_idx ON order_events (xid);
CREATE INDEX order_events_order_idx ON order_events (order_id, version);
CREATE TRIGGER order_events_append_only BEFORE UPDATE OR DELETE ON order_events
    FOR EACH ROW EXECUTE FUNCTION refuse_change();
CREATE TRIGGER order_events_no_truncate BEFORE TRUNCATE ON order_events
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();
REVOKE UPDATE, DELETE, TRUNCATE ON order_events FROM PUBLIC;

CREATE TABLE outbox_cursor (
    name       text PRIMARY KEY,
    watermark  bigint NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
"""


def upgrade() -> None:
    execute_script(op.execute, UPGRADE)


def downgrade() -> None:
    op.execute("DROP TABLE outbox_cursor")
    op.execute("DROP TABLE order_events")
