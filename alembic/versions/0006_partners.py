"""Partners and their trusted documents (persisted-query manifests).

Revision ID: 0006
Revises: 0005
"""

from alembic import op

from services.infra.sqlscript import execute_script

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

UPGRADE = r"""
CREATE TABLE partners (
    id                uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name              text NOT NULL CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$'),
    -- sha256 of the API key: the key itself is shown once and never stored
    key_hash          text NOT NULL UNIQUE CHECK (key_hash ~ '^[0-9a-f]{64}$'),
    -- bumped when the manifest is replaced, so cached lookups of old documents are never read
    documents_version integer NOT NULL DEFAULT 1 CHECK (documents_version > 0),
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    revoked_at        timestamptz
);
-- one active partner per name; a revoked name may be registered again (with a new key)
CREATE UNIQUE INDEX partners_active_name_key ON partners (lower(name)) WHERE revoked_at IS NULL;

CREATE TABLE partner_documents (
    partner_id     uuid NOT NULL REFERENCES partners (id) ON DELETE CASCADE,
    sha256         text NOT NULL CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    name           text,
    operation_type text CHECK (operation_type IN ('query', 'mutation', 'subscription')),
    body           text NOT NULL,
    PRIMARY KEY (partner_id, sha256)
);
"""

DOWNGRADE = r"""
DROP TABLE partner_documents;
DROP TABLE partners;
"""


def upgrade() -> None:
    execute_script(op.execute, UPGRADE)


def downgrade() -> None:
    execute_script(op.execute, DOWNGRADE)
