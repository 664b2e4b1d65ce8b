"""Trailing stops (their trail and the best price seen) and replaced orders (REPLACED, a terminal
status reached from any open one, with the links between the old order and the new).

Revision ID: 0009
Revises: 0008
"""

from alembic import op

from services.infra.sqlscript import execute_script

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

# The transitions this revision adds to those of 0003 (services/orders/order_model.py TRANSITIONS
# holds both; tests/services/test_order_states.py keeps them equal).
ADDED_TRANSITIONS = [
    ("PENDING", "REPLACED"),
    ("SUBMITTED", "REPLACED"),
    ("PARTIALLY_FILLED", "REPLACED"),
]

_TERMINAL = "'FILLED', 'CANCELLED', 'REJECTED', 'EXPIRED'"

UPGRADE = rf"""
ALTER TABLE orders DROP CONSTRAINT orders_type_check;
ALTER TABLE orders ADD CONSTRAINT orders_type_check
    CHECK (type IN ('MARKET', 'LIMIT', 'STOP', 'STOP_LIMIT', 'TRAILING_STOP'));
ALTER TABLE orders DROP CONSTRAINT orders_status_check;
ALTER TABLE orders ADD CONSTRAINT orders_status_check
    CHECK (status IN ('PENDING', 'SUBMITTED', 'PARTIALLY_FILLED', 'FILLED', 'CANCELLED',
                      'REJECTED', 'EXPIRED', 'REPLACED'));
ALTER TABLE orders DROP CONSTRAINT orders_check1;
ALTER TABLE orders ADD CONSTRAINT orders_closed_holds_nothing
    CHECK (status NOT IN ({_TERMINAL}, 'REPLACED')
           OR (reserved_cash = 0 AND reserved_quantity = 0));

ALTER TABLE orders
    ADD COLUMN trail_price     numeric(18, 4) CHECK (trail_price > 0),
    ADD COLUMN trail_percent   numeric(8, 4) CHECK (trail_percent > 0 AND trail_percent < 100),
    ADD COLUMN high_water_mark numeric(18, 4) CHECK (high_water_mark > 0),
    ADD COLUMN replaces        uuid,
    ADD COLUMN replaced_by     uuid;
ALTER TABLE orders ADD CONSTRAINT orders_trailing_has_one_trail
    CHECK ((type = 'TRAILING_STOP') = (num_nonnulls(trail_price, trail_percent) = 1));
ALTER TABLE orders ADD CONSTRAINT orders_replaced_names_its_successor
    CHECK ((status = 'REPLACED') = (replaced_by IS NOT NULL));

CREATE OR REPLACE FUNCTION orders_check_transition() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.status IN ({_TERMINAL}, 'REPLACED') THEN
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
"""

DOWNGRADE = rf"""
DELETE FROM order_transitions WHERE to_status = 'REPLACED';
CREATE OR REPLACE FUNCTION orders_check_transition() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.status IN ({_TERMINAL}) THEN
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
ALTER TABLE orders DROP CONSTRAINT orders_replaced_names_its_successor;
ALTER TABLE orders DROP CONSTRAINT orders_trailing_has_one_trail;
ALTER TABLE orders DROP COLUMN replaced_by, DROP COLUMN replaces, DROP COLUMN high_water_mark,
    DROP COLUMN trail_percent, DROP COLUMN trail_price;
ALTER TABLE orders DROP CONSTRAINT orders_closed_holds_nothing;
ALTER TABLE orders ADD CONSTRAINT orders_check1
    CHECK (status NOT IN ({_TERMINAL}) OR (reserved_cash = 0 AND reserved_quantity = 0));
ALTER TABLE orders DROP CONSTRAINT orders_status_check;
ALTER TABLE orders ADD CONSTRAINT orders_status_check
    CHECK (status IN ('PENDING', 'SUBMITTED', 'PARTIALLY_FILLED', 'FILLED', 'CANCELLED',
                      'REJECTED', 'EXPIRED'));
ALTER TABLE orders DROP CONSTRAINT orders_type_check;
ALTER TABLE orders ADD CONSTRAINT orders_type_check
    CHECK (type IN ('MARKET', 'LIMIT', 'STOP', 'STOP_LIMIT'));
"""


def upgrade() -> None:
    execute_script(op.execute, UPGRADE)
    values = ", ".join(f"('{a}', '{b}')" for a, b in ADDED_TRANSITIONS)
    op.execute(f"INSERT INTO order_transitions (from_status, to_status) VALUES {values}")


def downgrade() -> None:
    execute_script(op.execute, DOWNGRADE)
