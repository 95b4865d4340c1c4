"""Operator actions (SPEC §14) and sensitive content (SPEC §13).

`operator_actions`: the audit trail of every operator write, written in the same transaction as
the write it audits (`adapters/postgres/operator_actions.py`). No foreign key to `deliveries`: the
trail outlives the deliveries it names (retention deletes those), so targets are kept as JSON ids.

`delivery_payloads` of a `sensitive` delivery lose subject, bodies and MIME in the transaction that
makes the delivery terminal (`adapters/postgres/redaction.py`); what stays is the SHA-256 of the
MIME message, the sizes and `redacted_at`. The flag lives on the payload row, next to what it
governs, so redaction touches one table.

Revision ID: 0008
Revises: 0005
"""

from __future__ import annotations

from alembic import op

revision = "0008"
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
    -- a bulk action asked for with `Idempotency-Key`: a retry finds it and answers with its counts
    idempotency_key  text,
    request_hash     bytea,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX operator_actions_key_idx ON operator_actions (kind, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
-- GET /operator-actions: newest first, keyset-paginated
CREATE INDEX operator_actions_created_idx ON operator_actions (created_at DESC, action_id DESC);

ALTER TABLE delivery_payloads ADD COLUMN sensitive boolean NOT NULL DEFAULT false;
ALTER TABLE delivery_payloads ADD COLUMN redacted_at timestamptz;
-- of the MIME message as built (and sent): an operator can match it to a copy the recipient holds
ALTER TABLE delivery_payloads ADD COLUMN mime_sha256 bytea;
ALTER TABLE delivery_payloads ADD COLUMN mime_bytes integer;
ALTER TABLE delivery_payloads ADD COLUMN subject_bytes integer;
ALTER TABLE delivery_payloads ADD COLUMN text_bytes integer;
ALTER TABLE delivery_payloads ADD COLUMN html_bytes integer;
ALTER TABLE delivery_payloads ALTER COLUMN subject DROP NOT NULL;
ALTER TABLE delivery_payloads ALTER COLUMN text_body DROP NOT NULL;
ALTER TABLE delivery_payloads ALTER COLUMN mime DROP NOT NULL;
-- content, or (only a sensitive one) its digest once redacted: never neither, never both
ALTER TABLE delivery_payloads ADD CONSTRAINT delivery_payloads_redaction_check CHECK (
    (redacted_at IS NULL AND subject IS NOT NULL AND text_body IS NOT NULL AND mime IS NOT NULL)
    OR (redacted_at IS NOT NULL AND sensitive AND subject IS NULL AND text_body IS NULL AND html_body IS NULL
        AND mime IS NULL AND mime_sha256 IS NOT NULL)) NOT VALID;
ALTER TABLE delivery_payloads VALIDATE CONSTRAINT delivery_payloads_redaction_check;

-- a dead letter is redriven at most once (SPEC §14): the redrive that resent it, when, and as what
ALTER TABLE dead_letters ADD COLUMN redriven_by uuid;
ALTER TABLE dead_letters ADD COLUMN redriven_at timestamptz;
ALTER TABLE dead_letters ADD COLUMN redriven_to uuid;
ALTER TABLE dead_letters ADD CONSTRAINT dead_letters_redriven_check
    CHECK ((redriven_by IS NULL) = (redriven_at IS NULL) AND (redriven_by IS NULL) = (redriven_to IS NULL));
-- what a redrive picks from: the dead letters not redriven yet, oldest first
CREATE INDEX dead_letters_redrivable_idx ON dead_letters (created_at, delivery_id) WHERE redriven_by IS NULL;

-- a malformed command replayed (SPEC §14): the delivery it became, when, by which action
ALTER TABLE malformed_commands ADD COLUMN replayed_as uuid;
ALTER TABLE malformed_commands ADD COLUMN replayed_at timestamptz;
ALTER TABLE malformed_commands ADD COLUMN replayed_by uuid
"""

DOWNGRADE = """
ALTER TABLE malformed_commands DROP COLUMN replayed_by;
ALTER TABLE malformed_commands DROP COLUMN replayed_at;
ALTER TABLE malformed_commands DROP COLUMN replayed_as;
DROP INDEX dead_letters_redrivable_idx;
ALTER TABLE dead_letters DROP CONSTRAINT dead_letters_redriven_check;
ALTER TABLE dead_letters DROP COLUMN redriven_to;
ALTER TABLE dead_letters DROP COLUMN redriven_at;
ALTER TABLE dead_letters DROP COLUMN redriven_by;
ALTER TABLE delivery_payloads DROP CONSTRAINT delivery_payloads_redaction_check;
UPDATE delivery_payloads SET subject = '', text_body = '', mime = '' WHERE redacted_at IS NOT NULL;
ALTER TABLE delivery_payloads ALTER COLUMN subject SET NOT NULL;
ALTER TABLE delivery_payloads ALTER COLUMN text_body SET NOT NULL;
ALTER TABLE delivery_payloads ALTER COLUMN mime SET NOT NULL;
ALTER TABLE delivery_payloads DROP COLUMN html_bytes;
ALTER TABLE delivery_payloads DROP COLUMN text_bytes;
ALTER TABLE delivery_payloads DROP COLUMN subject_bytes;
ALTER TABLE delivery_payloads DROP COLUMN mime_bytes;
ALTER TABLE delivery_payloads DROP COLUMN mime_sha256;
ALTER TABLE delivery_payloads DROP COLUMN redacted_at;
ALTER TABLE delivery_payloads DROP COLUMN sensitive;
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
