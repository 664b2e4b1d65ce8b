"""The order's history as its events (event sourcing), extended hours, and the indexes of the
account views.

`order_events` (the outbox of 0008) becomes the event store: each row also says what happened
(`kind`, internal kinds such as SUBMITTED included), the order's status after it, the quantity,
price and venue of a fill (or the order's terms when it was accepted), the reason of a close, the
request that caused it and, for a fill, its execution. `seq` orders the events of one change; a
row without a `payload` is history only and is never published. Orders placed before the outbox
get their history back-filled from the order and its executions (`backfilled`), and an order
whose last change wrote no event (a stop's trigger) gets a row for it. The table stays
append-only (0008's triggers), and the back-fill runs with them briefly disabled.

`orders.extended_hours`: a LIMIT DAY order that may also work in the PRE and POST sessions.

Revision ID: 0010
Revises: 0008
"""

from alembic import op

from services.infra.sqlscript import execute_script

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

UPGRADE = r"""
ALTER TABLE orders ADD COLUMN extended_hours boolean NOT NULL DEFAULT false;

ALTER TABLE order_events
    ADD COLUMN seq          bigint GENERATED ALWAYS AS IDENTITY,
    ADD COLUMN kind         text,
    ADD COLUMN status       text,
    ADD COLUMN quantity     numeric(24, 6),
    ADD COLUMN price        numeric(18, 4),
    ADD COLUMN venue        text,
    ADD COLUMN reason       text,
    ADD COLUMN request_id   text,
    ADD COLUMN execution_id uuid,
    ADD COLUMN backfilled   boolean NOT NULL DEFAULT false,
    ALTER COLUMN event DROP NOT NULL,
    ALTER COLUMN payload DROP NOT NULL;

ALTER TABLE order_events DISABLE TRIGGER order_events_append_only;

-- The outbox's rows: what they already say, in columns.
UPDATE order_events e SET
    kind = CASE WHEN e.event = 'ACCEPTED' AND p.o ->> 'status' <> 'PENDING' THEN 'SUBMITTED'
                ELSE e.event END,
    status = p.o ->> 'status',
    quantity = CASE WHEN p.x IS NOT NULL THEN (p.x ->> 'quantity')::numeric
                    WHEN e.event = 'ACCEPTED' THEN (p.o ->> 'quantity')::numeric END,
    price = CASE WHEN p.x IS NOT NULL THEN (p.x ->> 'price')::numeric
                 WHEN e.event = 'ACCEPTED' THEN (p.o ->> 'limit')::numeric END,
    venue = p.x ->> 'venue',
    execution_id = (p.x ->> 'id')::uuid,
    reason = CASE WHEN e.event IN ('CANCELLED', 'EXPIRED', 'REJECTED')
                  THEN p.o ->> 'reject_reason' END,
    request_id = p.o ->> 'request_id'
  FROM (SELECT id, payload::jsonb -> 'order' AS o,
               nullif(payload::jsonb -> 'execution', 'null'::jsonb) AS x
          FROM order_events) p
 WHERE p.id = e.id;

-- Orders older than the outbox: accepted ...
INSERT INTO order_events (id, created_at, user_id, order_id, version, kind, status, quantity,
                          price, request_id, backfilled)
SELECT gen_random_uuid(), o.created_at, o.user_id, o.id, 0, 'ACCEPTED', 'PENDING', o.quantity,
       o.limit_price, o.request_id, true
  FROM orders o
 WHERE NOT EXISTS (SELECT 1 FROM order_events e WHERE e.order_id = o.id AND e.kind = 'ACCEPTED')
 ORDER BY o.created_at, o.id;

-- ... their fills that no event reports (before the first event that does) ...
INSERT INTO order_events (id, created_at, user_id, order_id, version, kind, status, quantity,
                          price, venue, execution_id, request_id, backfilled)
SELECT gen_random_uuid(), x.executed_at, o.user_id, o.id,
       coalesce((SELECT min(e.version) - 1 FROM order_events e
                  WHERE e.order_id = o.id AND NOT e.backfilled AND e.kind <> 'ACCEPTED'),
                o.version),
       CASE WHEN o.status = 'FILLED' AND x.cumulative >= o.filled_quantity THEN 'FILL'
            ELSE 'PARTIAL_FILL' END,
       CASE WHEN o.status = 'FILLED' AND x.cumulative >= o.filled_quantity THEN 'FILLED'
            ELSE 'PARTIALLY_FILLED' END,
       x.quantity, x.price, x.venue, x.id, o.request_id, true
  FROM (SELECT e.*, sum(e.quantity) OVER (PARTITION BY e.order_id
                                          ORDER BY e.executed_at, e.id) AS cumulative
          FROM executions e) x
  JOIN orders o ON o.id = x.order_id
 WHERE NOT EXISTS (SELECT 1 FROM order_events e WHERE e.execution_id = x.id)
 ORDER BY o.id, x.executed_at, x.id;

-- ... and how they ended, when no event says so.
INSERT INTO order_events (id, created_at, user_id, order_id, version, kind, status, quantity,
                          reason, request_id, backfilled)
SELECT gen_random_uuid(), o.updated_at, o.user_id, o.id, o.version, o.status, o.status,
       o.quantity - o.filled_quantity, o.reject_reason, o.request_id, true
  FROM orders o
 WHERE o.status IN ('CANCELLED', 'EXPIRED', 'REJECTED')
   AND NOT EXISTS (SELECT 1 FROM order_events e WHERE e.order_id = o.id AND e.kind = o.status)
 ORDER BY o.id;

-- A last change that wrote no event (a stop's trigger, the start of its work).
INSERT INTO order_events (id, created_at, user_id, order_id, version, kind, status, request_id,
                          backfilled)
SELECT gen_random_uuid(), o.updated_at, o.user_id, o.id, o.version,
       CASE WHEN o.triggered THEN 'TRIGGERED' ELSE 'UPDATED' END, o.status, o.request_id, true
  FROM orders o
 WHERE o.version > (SELECT max(e.version) FROM order_events e WHERE e.order_id = o.id)
 ORDER BY o.id;

ALTER TABLE order_events ENABLE TRIGGER order_events_append_only;

ALTER TABLE order_events ALTER COLUMN kind SET NOT NULL, ALTER COLUMN status SET NOT NULL;
CREATE INDEX order_events_history_idx ON order_events (order_id, version, seq);
CREATE INDEX order_events_day_idx ON order_events (created_at);

-- The account views: fills newest first, and the ledger transaction of each.
CREATE INDEX executions_user_idx ON executions (user_id, executed_at DESC, id DESC);
CREATE INDEX ledger_transactions_reference_idx ON ledger_transactions (reference);
-- Deposits since the last close (the day change), without reading an account's every fill.
CREATE INDEX ledger_transactions_deposits_idx ON ledger_transactions (created_at)
    WHERE kind = 'deposit';
"""

DOWNGRADE = r"""
DROP INDEX ledger_transactions_deposits_idx;
DROP INDEX ledger_transactions_reference_idx;
DROP INDEX executions_user_idx;
DROP INDEX order_events_day_idx;
DROP INDEX order_events_history_idx;
ALTER TABLE order_events DISABLE TRIGGER order_events_append_only;
DELETE FROM order_events WHERE backfilled OR payload IS NULL;
ALTER TABLE order_events ENABLE TRIGGER order_events_append_only;
ALTER TABLE order_events
    DROP COLUMN seq, DROP COLUMN kind, DROP COLUMN status, DROP COLUMN quantity,
    DROP COLUMN price, DROP COLUMN venue, DROP COLUMN reason, DROP COLUMN request_id,
    DROP COLUMN execution_id, DROP COLUMN backfilled,
    ALTER COLUMN event SET NOT NULL, ALTER COLUMN payload SET NOT NULL;
ALTER TABLE orders DROP COLUMN extended_hours;
"""


def upgrade() -> None:
    execute_script(op.execute, UPGRADE)


def downgrade() -> None:
    execute_script(op.execute, DOWNGRADE)
