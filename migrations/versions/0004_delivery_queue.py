"""The mutable scheduling state moves to a narrow queue table.

Every claim and every result used to update `deliveries`, and since `status` is indexed neither
update could be HOT: each rewrote all ten indexes of the widest table. Now a delivery that is not
terminal has one row in `delivery_queue` (due time, claim token and deadline, attempt count, last
error), inserted at acceptance, updated by claims and retries, deleted when the delivery finishes;
`deliveries` is written once at acceptance and once at the end. `deliveries.status` holds
`queued` until then — `sending` is a claimed queue row (the view `delivery_states` shows the
delivery as the API does).

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

UPGRADE = """
CREATE TABLE delivery_queue (
    delivery_id      uuid PRIMARY KEY REFERENCES deliveries (delivery_id) ON DELETE CASCADE,
    -- 0 = high, 1 = normal, 2 = low: claimed in ascending order
    priority         smallint NOT NULL CHECK (priority BETWEEN 0 AND 2),
    next_attempt_at  timestamptz NOT NULL,
    attempt_count    integer NOT NULL DEFAULT 0 CHECK (attempt_count >= 0),
    claim_token      uuid,
    claim_deadline   timestamptz,
    last_error       text,
    CONSTRAINT delivery_queue_claimed_with_deadline CHECK ((claim_token IS NULL) = (claim_deadline IS NULL))
);
-- the scheduler: due unclaimed work, highest priority then oldest due time
CREATE INDEX delivery_queue_due_idx ON delivery_queue (priority, next_attempt_at) WHERE claim_token IS NULL;
-- stale-claim recovery
CREATE INDEX delivery_queue_claims_idx ON delivery_queue (claim_deadline) WHERE claim_token IS NOT NULL;

INSERT INTO delivery_queue (
    delivery_id, priority, next_attempt_at, attempt_count, claim_token, claim_deadline, last_error)
SELECT delivery_id, priority, COALESCE(next_attempt_at, now()), attempt_count, claim_token, claim_deadline, last_error
FROM deliveries WHERE status IN ('queued', 'sending');

ALTER TABLE deliveries DROP CONSTRAINT deliveries_claim_only_when_sending;
ALTER TABLE deliveries DROP CONSTRAINT deliveries_queued_has_due_time;
DROP INDEX deliveries_due_idx;
DROP INDEX deliveries_claim_deadline_idx;
UPDATE deliveries SET status = 'queued' WHERE status = 'sending';
ALTER TABLE deliveries DROP COLUMN claim_token, DROP COLUMN claim_deadline, DROP COLUMN next_attempt_at;
-- `sending` is never stored in deliveries again
ALTER TABLE deliveries DROP CONSTRAINT deliveries_status_check,
    ADD CONSTRAINT deliveries_status_check CHECK (status IN ('queued', 'sent', 'dead_lettered', 'suppressed'));

-- the delivery as the API shows it: `sending` while claimed, the queue's state while not terminal
CREATE VIEW delivery_states AS
SELECT d.delivery_id, d.source,
       CASE WHEN q.claim_token IS NOT NULL THEN 'sending' ELSE d.status END AS status,
       d.template, d.locale, d.template_digest, d.priority, d.send_at, d.expires_at, d.idempotency_key,
       d.message_id, d.tags, COALESCE(q.attempt_count, d.attempt_count) AS attempt_count,
       q.next_attempt_at, COALESCE(q.last_error, d.last_error) AS last_error, q.claim_token, q.claim_deadline,
       d.resend_of, d.traceparent, d.created_at, d.updated_at, d.finished_at
FROM deliveries d LEFT JOIN delivery_queue q ON q.delivery_id = d.delivery_id
"""

DOWNGRADE = """
DROP VIEW delivery_states;
ALTER TABLE deliveries DROP CONSTRAINT deliveries_status_check,
    ADD CONSTRAINT deliveries_status_check
    CHECK (status IN ('queued', 'sending', 'sent', 'dead_lettered', 'suppressed'));
ALTER TABLE deliveries ADD COLUMN claim_token uuid, ADD COLUMN claim_deadline timestamptz,
    ADD COLUMN next_attempt_at timestamptz;
UPDATE deliveries d
SET status = CASE WHEN q.claim_token IS NOT NULL THEN 'sending' ELSE d.status END,
    claim_token = q.claim_token, claim_deadline = q.claim_deadline, next_attempt_at = q.next_attempt_at,
    attempt_count = q.attempt_count, last_error = q.last_error
FROM delivery_queue q WHERE q.delivery_id = d.delivery_id;
UPDATE deliveries SET next_attempt_at = NULL WHERE status = 'sending';
ALTER TABLE deliveries ADD CONSTRAINT deliveries_claim_only_when_sending
    CHECK ((status = 'sending') = (claim_token IS NOT NULL AND claim_deadline IS NOT NULL));
ALTER TABLE deliveries ADD CONSTRAINT deliveries_queued_has_due_time
    CHECK (status <> 'queued' OR next_attempt_at IS NOT NULL);
CREATE INDEX deliveries_due_idx ON deliveries (priority, next_attempt_at) WHERE status = 'queued';
CREATE INDEX deliveries_claim_deadline_idx ON deliveries (claim_deadline) WHERE status = 'sending';
DROP TABLE delivery_queue
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
