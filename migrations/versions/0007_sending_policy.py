"""Sending policy (SPEC §12): the suppression list, cancelled and superseded deliveries, collapse keys.

`suppressions` holds one row per address, normalised as acceptance compares it: the wire form
(IDN domain in punycode) in lower case. `deliveries.collapse_key` names the delivery a newer one
with the same `(source, collapse_key)` supersedes while it is still queued; the partial index is
what acceptance searches (a claimed delivery is `queued` in `deliveries` too — its queue row says
it is sending, and the supersede statement leaves it alone).

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

UPGRADE = """
CREATE TABLE suppressions (
    address      text PRIMARY KEY CHECK (address <> '' AND address = lower(address)),
    reason       text NOT NULL CHECK (reason IN ('hard_bounce', 'complaint', 'manual')),
    -- the delivery whose refusal added it (automatic entries); kept when retention deletes it
    delivery_id  uuid REFERENCES deliveries (delivery_id) ON DELETE SET NULL,
    note         text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz,
    CONSTRAINT suppressions_expiry_after_creation CHECK (expires_at IS NULL OR expires_at > created_at)
);
-- the list, newest first, alone or by reason
CREATE INDEX suppressions_created_idx ON suppressions (created_at DESC, address DESC);
CREATE INDEX suppressions_reason_created_idx ON suppressions (reason, created_at DESC, address DESC);
-- retention: expired entries
CREATE INDEX suppressions_expires_idx ON suppressions (expires_at) WHERE expires_at IS NOT NULL;
-- the SET NULL that follows a delivery's deletion
CREATE INDEX suppressions_delivery_idx ON suppressions (delivery_id) WHERE delivery_id IS NOT NULL;

ALTER TABLE delivery_recipients DROP CONSTRAINT delivery_recipients_outcome_check;
ALTER TABLE delivery_recipients ADD CONSTRAINT delivery_recipients_outcome_check
    CHECK (outcome IN ('accepted', 'refused', 'suppressed'));

ALTER TABLE deliveries ADD COLUMN collapse_key text;
ALTER TABLE deliveries ADD COLUMN superseded_by uuid REFERENCES deliveries (delivery_id) ON DELETE SET NULL;
ALTER TABLE deliveries DROP CONSTRAINT deliveries_status_check;
ALTER TABLE deliveries ADD CONSTRAINT deliveries_status_check
    CHECK (status IN ('queued', 'sent', 'dead_lettered', 'suppressed', 'cancelled', 'superseded'));
ALTER TABLE deliveries DROP CONSTRAINT deliveries_finished_iff_terminal;
ALTER TABLE deliveries ADD CONSTRAINT deliveries_finished_iff_terminal
    CHECK ((status IN ('sent', 'dead_lettered', 'suppressed', 'cancelled', 'superseded')) = (finished_at IS NOT NULL));
ALTER TABLE deliveries ADD CONSTRAINT deliveries_superseded_by_iff_superseded
    CHECK (superseded_by IS NULL OR status = 'superseded');
-- acceptance with a collapse key: the queued deliveries of the same (source, key)
CREATE INDEX deliveries_collapse_idx ON deliveries (source, collapse_key)
    WHERE status = 'queued' AND collapse_key IS NOT NULL;
-- the SET NULL that follows the superseding delivery's deletion
CREATE INDEX deliveries_superseded_by_idx ON deliveries (superseded_by) WHERE superseded_by IS NOT NULL;

CREATE OR REPLACE VIEW delivery_states AS
SELECT d.delivery_id, d.source,
       CASE WHEN q.claim_token IS NOT NULL THEN 'sending' ELSE d.status END AS status,
       d.template, d.locale, d.template_digest, d.priority, d.send_at, d.expires_at, d.idempotency_key,
       d.message_id, d.tags, COALESCE(q.attempt_count, d.attempt_count) AS attempt_count,
       q.next_attempt_at, COALESCE(q.last_error, d.last_error) AS last_error, q.claim_token, q.claim_deadline,
       d.resend_of, d.traceparent, d.created_at, d.updated_at, d.finished_at, d.collapse_key, d.superseded_by
FROM deliveries d LEFT JOIN delivery_queue q ON q.delivery_id = d.delivery_id
"""

DOWNGRADE = """
DROP VIEW delivery_states;
CREATE VIEW delivery_states AS
SELECT d.delivery_id, d.source,
       CASE WHEN q.claim_token IS NOT NULL THEN 'sending' ELSE d.status END AS status,
       d.template, d.locale, d.template_digest, d.priority, d.send_at, d.expires_at, d.idempotency_key,
       d.message_id, d.tags, COALESCE(q.attempt_count, d.attempt_count) AS attempt_count,
       q.next_attempt_at, COALESCE(q.last_error, d.last_error) AS last_error, q.claim_token, q.claim_deadline,
       d.resend_of, d.traceparent, d.created_at, d.updated_at, d.finished_at
FROM deliveries d LEFT JOIN delivery_queue q ON q.delivery_id = d.delivery_id;
-- a cancelled or superseded delivery has no status before this revision: it ends as dead-lettered
UPDATE deliveries SET status = 'dead_lettered', last_error = status WHERE status IN ('cancelled', 'superseded');
DROP INDEX deliveries_superseded_by_idx;
DROP INDEX deliveries_collapse_idx;
ALTER TABLE deliveries DROP CONSTRAINT deliveries_superseded_by_iff_superseded;
ALTER TABLE deliveries DROP CONSTRAINT deliveries_finished_iff_terminal;
ALTER TABLE deliveries ADD CONSTRAINT deliveries_finished_iff_terminal
    CHECK ((status IN ('sent', 'dead_lettered', 'suppressed')) = (finished_at IS NOT NULL));
ALTER TABLE deliveries DROP CONSTRAINT deliveries_status_check;
ALTER TABLE deliveries ADD CONSTRAINT deliveries_status_check
    CHECK (status IN ('queued', 'sent', 'dead_lettered', 'suppressed'));
ALTER TABLE deliveries DROP COLUMN superseded_by;
ALTER TABLE deliveries DROP COLUMN collapse_key;
UPDATE delivery_recipients SET outcome = NULL WHERE outcome = 'suppressed';
ALTER TABLE delivery_recipients DROP CONSTRAINT delivery_recipients_outcome_check;
ALTER TABLE delivery_recipients ADD CONSTRAINT delivery_recipients_outcome_check
    CHECK (outcome IN ('accepted', 'refused'));
DROP TABLE suppressions
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
