"""Price alerts: ACTIVE until the quote crosses them (TRIGGERED) or their owner cancels them.

Revision ID: 0005
Revises: 0004
"""

from alembic import op

from services.infra.sqlscript import execute_script

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

UPGRADE = r"""
CREATE TABLE price_alerts (
    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id          uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    symbol           text NOT NULL,
    condition        text NOT NULL CHECK (condition IN ('ABOVE', 'BELOW')),
    threshold        numeric(18, 4) NOT NULL CHECK (threshold > 0),
    status           text NOT NULL DEFAULT 'ACTIVE'
                     CHECK (status IN ('ACTIVE', 'TRIGGERED', 'CANCELLED')),
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    triggered_at     timestamptz,
    triggered_price  numeric(18, 4) CHECK (triggered_price > 0),
    cancelled_at     timestamptz,
    -- The transaction that last changed the row (set on insert, and by the trigger below on every
    -- update): the checkers re-read exactly what changed since their last look (see
    -- services/alerts/price_alerts.py changed_since).
    changed_xid      xid8 NOT NULL DEFAULT pg_current_xact_id(),
    CHECK ((status = 'TRIGGERED') = (triggered_at IS NOT NULL AND triggered_price IS NOT NULL)),
    CHECK ((status = 'CANCELLED') = (cancelled_at IS NOT NULL))
);
-- alerts(status): a user's alerts, newest first.
CREATE INDEX price_alerts_user_idx ON price_alerts (user_id, created_at DESC, id DESC);
-- The per-user limit counts these; the checker loads them all when it starts.
CREATE INDEX price_alerts_active_idx ON price_alerts (user_id) WHERE status = 'ACTIVE';
-- The checkers' periodic re-sync: alerts created or cancelled lately. A trigger takes the row out
-- of this index, so the re-sync never wades through triggered alerts.
CREATE INDEX price_alerts_changes_idx ON price_alerts (changed_xid) WHERE status <> 'TRIGGERED';

-- ACTIVE -> TRIGGERED and ACTIVE -> CANCELLED are the only changes of status; both are final.
CREATE FUNCTION price_alerts_check_transition() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.status <> 'ACTIVE' THEN
        RAISE EXCEPTION 'price alert % is % and can no longer change', OLD.id, OLD.status
            USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.id <> OLD.id OR NEW.user_id <> OLD.user_id OR NEW.symbol <> OLD.symbol
       OR NEW.condition <> OLD.condition OR NEW.threshold <> OLD.threshold
       OR NEW.created_at <> OLD.created_at THEN
        RAISE EXCEPTION 'price alert %: only its status changes', OLD.id
            USING ERRCODE = 'check_violation';
    END IF;
    NEW.changed_xid := pg_current_xact_id();
    RETURN NEW;
END $$;
CREATE TRIGGER price_alerts_state_machine BEFORE UPDATE ON price_alerts
    FOR EACH ROW EXECUTE FUNCTION price_alerts_check_transition();
"""

DOWNGRADE = r"""
DROP TABLE price_alerts;
DROP FUNCTION price_alerts_check_transition();
"""


def upgrade() -> None:
    execute_script(op.execute, UPGRADE)


def downgrade() -> None:
    execute_script(op.execute, DOWNGRADE)
