"""Delivery events (SPEC §11): a transactional outbox, written with every status change.

`xid` is the writing transaction: readers (the publisher, `GET /events`) go in `(xid, seq)` order
and only below `pg_snapshot_xmin(pg_current_snapshot())`. A `seq` is taken before commit, so
event 101 may commit before event 100; below the horizon every transaction has ended, so nothing
can appear later before a reader's cursor (the outbox trap, PITFALLS), and each delivery's events
come in the order of its transactions.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

UPGRADE = """
CREATE TABLE delivery_events (
    seq          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- the CloudEvents `id`: the same on every re-publication
    event_id     uuid NOT NULL DEFAULT gen_random_uuid(),
    xid          xid8 NOT NULL DEFAULT pg_current_xact_id(),
    delivery_id  uuid NOT NULL REFERENCES deliveries (delivery_id) ON DELETE CASCADE,
    type         text NOT NULL CHECK (type IN ('delivery.queued', 'delivery.suppressed', 'delivery.deferred',
                                               'delivery.sent', 'delivery.dead_lettered', 'delivery.cancelled',
                                               'delivery.superseded')),
    data         jsonb NOT NULL CHECK (jsonb_typeof(data) = 'object'),
    created_at   timestamptz NOT NULL DEFAULT now()
);
-- the publisher and the feed: transaction order
CREATE INDEX delivery_events_order_idx ON delivery_events (xid, seq);
-- the feed filtered by delivery, and the cascade from deliveries
CREATE INDEX delivery_events_delivery_idx ON delivery_events (delivery_id, seq);

-- how far each event stream has been published: the last (xid, seq) written to it
CREATE TABLE event_cursors (
    stream_key  text PRIMARY KEY,
    xid         xid8 NOT NULL,
    seq         bigint NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
)
"""

DOWNGRADE = """
DROP TABLE event_cursors;
DROP TABLE delivery_events
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
