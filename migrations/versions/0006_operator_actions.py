"""Operator actions (SPEC §14): the audit trail of every operator write.

Written in the same transaction as the write it audits (`adapters/postgres/operator_actions.py`).
No foreign key to `deliveries`: the trail outlives the deliveries it names (retention deletes
those), so targets are kept as JSON ids.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

UPGRADE = """
CREATE TABLE operator_actions (
    action_id   uuid PRIMARY KEY,
    kind        text NOT NULL CHECK (kind IN ('resend', 'cancel', 'redrive', 'replay', 'suppression_add',
                                              'suppression_remove', 'provider_resume')),
    -- what it acted on (ids), or the filter of a bulk action; the counts of what it did
    target      jsonb CHECK (target IS NULL OR jsonb_typeof(target) = 'object'),
    filter      jsonb CHECK (filter IS NULL OR jsonb_typeof(filter) = 'object'),
    counts      jsonb CHECK (counts IS NULL OR jsonb_typeof(counts) = 'object'),
    note        text CHECK (note IS NULL OR length(note) <= 1000),
    -- the first 12 hex digits of the SHA-256 of the bearer token, or 'trusted-network'; never a token
    actor       text NOT NULL CHECK (actor = 'trusted-network' OR actor ~ '^[0-9a-f]{12}$'),
    created_at  timestamptz NOT NULL DEFAULT now()
);
-- GET /operator-actions: newest first, keyset-paginated
CREATE INDEX operator_actions_created_idx ON operator_actions (created_at DESC, action_id DESC)
"""

DOWNGRADE = """
DROP TABLE operator_actions
"""


def _run(script: str) -> None:
    # one statement per call: asyncpg prepares each statement and refuses several at once
    for statement in script.split(";\n"):
        if statement.strip():
            op.execute(statement)


def upgrade() -> None:
    _run(UPGRADE)


def downgrade() -> None:
    _run(DOWNGRADE)
