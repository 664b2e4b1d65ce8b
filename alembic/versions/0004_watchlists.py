"""Watchlists: a user's named lists of symbols, kept in the order they were added.

Revision ID: 0004
Revises: 0003
"""

from alembic import op

from services.infra.sqlscript import execute_script

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

UPGRADE = r"""
-- Names are stored trimmed, 1-100 characters, without control characters, and unique per user
-- ignoring case (services/watchlists/lists.py answers a clash with INVALID_INPUT on `name`).
CREATE TABLE watchlists (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id     uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name        text NOT NULL CHECK (
                    name = btrim(name)
                    AND char_length(name) BETWEEN 1 AND 100
                    AND name !~ '[\u0001-\u001f\u007f-\u009f]'),
    created_at  timestamptz NOT NULL DEFAULT now()
);
-- Also the index that finds a user's lists.
CREATE UNIQUE INDEX watchlists_user_name_key ON watchlists (user_id, lower(name));

-- One row per symbol of a list: no duplicates (the primary key), insertion order by `position`
-- (the next one is computed under the list's row lock), gone with the list (ON DELETE CASCADE).
CREATE TABLE watchlist_items (
    watchlist_id  uuid NOT NULL REFERENCES watchlists (id) ON DELETE CASCADE,
    symbol        text NOT NULL REFERENCES securities (symbol),
    position      integer NOT NULL CHECK (position >= 0),
    added_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (watchlist_id, symbol),
    UNIQUE (watchlist_id, position)
);
"""

DOWNGRADE = r"""
DROP TABLE watchlist_items;
DROP TABLE watchlists;
"""


def upgrade() -> None:
    execute_script(op.execute, UPGRADE)


def downgrade() -> None:
    execute_script(op.execute, DOWNGRADE)
