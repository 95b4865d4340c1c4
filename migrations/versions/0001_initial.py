"""Initial schema: deliveries and their children, stream offsets and events, idempotency keys.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

UPGRADE = """
CREATE TABLE deliveries (
    delivery_id      uuid PRIMARY KEY,
    source           text NOT NULL CHECK (source IN ('notification', 'auth', 'resend')),
    status           text NOT NULL
                     CHECK (status IN ('queued', 'sending', 'sent', 'dead_lettered', 'suppressed')),
    template         text,
    locale           text,
    template_digest  text,
    -- 0 = high, 1 = normal, 2 = low: claimed in ascending order
    priority         smallint NOT NULL DEFAULT 1 CHECK (priority BETWEEN 0 AND 2),
    send_at          timestamptz NOT NULL,
    expires_at       timestamptz,
    idempotency_key  text NOT NULL,
    message_id       text NOT NULL UNIQUE,
    tags             jsonb NOT NULL DEFAULT '{}'::jsonb,
    attempt_count    integer NOT NULL DEFAULT 0 CHECK (attempt_count >= 0),
    next_attempt_at  timestamptz,
    last_error       text,
    resend_of        uuid REFERENCES deliveries (delivery_id) ON DELETE SET NULL,
    -- W3C traceparent of the span that accepted it: each attempt's span continues that trace
    traceparent      text,
    claim_token      uuid,
    claim_deadline   timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    finished_at      timestamptz,
    CONSTRAINT deliveries_expiry_after_send CHECK (expires_at IS NULL OR expires_at > send_at),
    CONSTRAINT deliveries_claim_only_when_sending
        CHECK ((status = 'sending') = (claim_token IS NOT NULL AND claim_deadline IS NOT NULL)),
    CONSTRAINT deliveries_queued_has_due_time
        CHECK (status <> 'queued' OR next_attempt_at IS NOT NULL),
    CONSTRAINT deliveries_finished_iff_terminal
        CHECK ((status IN ('sent', 'dead_lettered', 'suppressed')) = (finished_at IS NOT NULL)),
    CONSTRAINT deliveries_tags_object CHECK (jsonb_typeof(tags) = 'object')
);
-- the scheduler: due queued work, highest priority then oldest due time
CREATE INDEX deliveries_due_idx ON deliveries (priority, next_attempt_at) WHERE status = 'queued';
-- stale-claim recovery
CREATE INDEX deliveries_claim_deadline_idx ON deliveries (claim_deadline) WHERE status = 'sending';
-- operator lists, newest first with keyset pagination, alone or filtered
CREATE INDEX deliveries_created_idx ON deliveries (created_at DESC, delivery_id DESC);
CREATE INDEX deliveries_status_created_idx ON deliveries (status, created_at DESC, delivery_id DESC);
CREATE INDEX deliveries_source_created_idx ON deliveries (source, created_at DESC, delivery_id DESC);
CREATE INDEX deliveries_template_created_idx
    ON deliveries (template, created_at DESC, delivery_id DESC) WHERE template IS NOT NULL;
CREATE INDEX deliveries_tags_idx ON deliveries USING gin (tags jsonb_path_ops);
CREATE INDEX deliveries_resend_of_idx ON deliveries (resend_of) WHERE resend_of IS NOT NULL;
-- retention: terminal rows by age
CREATE INDEX deliveries_finished_idx ON deliveries (finished_at) WHERE finished_at IS NOT NULL;

CREATE TABLE delivery_recipients (
    delivery_id   uuid NOT NULL REFERENCES deliveries (delivery_id) ON DELETE CASCADE,
    position      smallint NOT NULL CHECK (position >= 0),
    kind          text NOT NULL CHECK (kind IN ('to', 'cc', 'bcc')),
    address       text NOT NULL CHECK (address <> ''),
    display_name  text,
    outcome       text CHECK (outcome IN ('accepted', 'refused')),
    smtp_code     integer,
    smtp_reply    text,
    PRIMARY KEY (delivery_id, position)
);
-- operator filter: case-insensitive exact address
CREATE INDEX delivery_recipients_address_idx ON delivery_recipients (lower(address), delivery_id);

CREATE TABLE delivery_payloads (
    delivery_id  uuid PRIMARY KEY REFERENCES deliveries (delivery_id) ON DELETE CASCADE,
    subject      text NOT NULL,
    text_body    text NOT NULL,
    html_body    text,
    reply_to     text,
    headers      jsonb NOT NULL DEFAULT '{}'::jsonb,
    -- the serialized MIME message, built once at acceptance and reused by every attempt
    mime         bytea NOT NULL
);

CREATE TABLE attempts (
    attempt_id   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    delivery_id  uuid NOT NULL REFERENCES deliveries (delivery_id) ON DELETE CASCADE,
    number       integer NOT NULL CHECK (number >= 1),
    started_at   timestamptz NOT NULL,
    finished_at  timestamptz NOT NULL,
    outcome      text NOT NULL
                 CHECK (outcome IN ('sent', 'transient_failure', 'permanent_failure', 'abandoned', 'expired')),
    ambiguous    boolean NOT NULL DEFAULT false,
    smtp_code    integer,
    smtp_reply   text,
    error_class  text,
    provider     text CHECK (provider IN ('smtp', 'stub')),
    duration_ms  integer NOT NULL DEFAULT 0 CHECK (duration_ms >= 0)
);
CREATE INDEX attempts_delivery_idx ON attempts (delivery_id, number);

CREATE TABLE dead_letters (
    delivery_id  uuid PRIMARY KEY REFERENCES deliveries (delivery_id) ON DELETE CASCADE,
    reason       text NOT NULL CHECK (reason IN ('permanent_failure', 'attempts_exhausted', 'expired')),
    last_error   text,
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX dead_letters_created_idx ON dead_letters (created_at DESC, delivery_id DESC);

CREATE TABLE malformed_commands (
    malformed_id     bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    stream_key       text NOT NULL,
    stream_entry_id  text NOT NULL,
    idempotency_key  text,
    reason           text NOT NULL,
    message          text NOT NULL,
    -- bytes as Redis gave them (may hold invalid UTF-8 or NUL), truncated to 64 KiB
    raw_fields       bytea NOT NULL,
    received_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX malformed_commands_received_idx ON malformed_commands (received_at DESC, malformed_id DESC);
CREATE INDEX malformed_commands_reason_idx
    ON malformed_commands (reason, received_at DESC, malformed_id DESC);

CREATE TABLE stream_offsets (
    stream_key  text PRIMARY KEY,
    last_id     text NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- gaps (entries trimmed before they were read) and resets (stream recreated), never silent
CREATE TABLE stream_events (
    event_id     bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    stream_key   text NOT NULL,
    kind         text NOT NULL CHECK (kind IN ('gap', 'reset')),
    from_offset  text NOT NULL,
    to_offset    text NOT NULL,
    detail       text NOT NULL,
    detected_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE idempotency_keys (
    source        text NOT NULL CHECK (source IN ('notification', 'auth', 'resend')),
    key           text NOT NULL,
    request_hash  bytea NOT NULL,
    -- deferred: acceptance claims the key first, then inserts the delivery, in one transaction
    delivery_id   uuid NOT NULL REFERENCES deliveries (delivery_id) ON DELETE CASCADE
                  DEFERRABLE INITIALLY DEFERRED,
    created_at    timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz NOT NULL,
    PRIMARY KEY (source, key)
);
CREATE INDEX idempotency_keys_expires_idx ON idempotency_keys (expires_at);
"""

DOWNGRADE = """
DROP TABLE IF EXISTS idempotency_keys;
DROP TABLE IF EXISTS stream_events;
DROP TABLE IF EXISTS stream_offsets;
DROP TABLE IF EXISTS malformed_commands;
DROP TABLE IF EXISTS dead_letters;
DROP TABLE IF EXISTS attempts;
DROP TABLE IF EXISTS delivery_payloads;
DROP TABLE IF EXISTS delivery_recipients;
DROP TABLE IF EXISTS deliveries;
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
