"""Sensitive content (SPEC §13), redrive and replay (SPEC §14).

`delivery_payloads` of a `sensitive` delivery lose subject, bodies and MIME in the transaction that
makes the delivery terminal (`adapters/postgres/redaction.py`); what stays is the SHA-256 of the
MIME message, the sizes and `redacted_at`. The flag lives on the payload row, next to what it
governs, so redaction touches one table. Dead letters remember the redrive that resent them (at
most one), malformed commands the delivery a replay made of them, and an operator action its
`Idempotency-Key`.

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

UPGRADE = """
-- a bulk action asked for with `Idempotency-Key`: a retry finds it and answers with its counts
ALTER TABLE operator_actions ADD COLUMN idempotency_key text;
ALTER TABLE operator_actions ADD COLUMN request_hash bytea;
CREATE UNIQUE INDEX operator_actions_key_idx ON operator_actions (kind, idempotency_key)
    WHERE idempotency_key IS NOT NULL;

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
DROP INDEX operator_actions_key_idx;
ALTER TABLE operator_actions DROP COLUMN request_hash;
ALTER TABLE operator_actions DROP COLUMN idempotency_key
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
