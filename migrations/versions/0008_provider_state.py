"""The provider's state, shared by every replica (SPEC §12): paused or sending, why and since when,
the next probe, the consecutive connection failures — and the rate limit's token bucket.

One row (`id = 1`), inserted here. The claim reads it in the same statement that claims (a paused
provider claims nothing but one probe per interval, decided by an `UPDATE … WHERE next_probe_at <=
now()` so replicas agree), and, when a rate limit is set, takes its tokens from it. The result
statement updates it only when an attempt says something about the provider, so the hot path
never locks it when sending without a rate limit.

`delivery_queue.provider_faults` counts the attempts of a delivery that failed because of the
provider (paused or pausing): they do not count toward MAIL_RETRY_MAX_ATTEMPTS.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

UPGRADE = """
CREATE TABLE provider_state (
    id                smallint PRIMARY KEY CHECK (id = 1),
    state             text NOT NULL DEFAULT 'sending' CHECK (state IN ('sending', 'paused')),
    reason            text,
    since             timestamptz NOT NULL DEFAULT now(),
    next_probe_at     timestamptz,
    connect_failures  integer NOT NULL DEFAULT 0 CHECK (connect_failures >= 0),
    -- the rate limit's bucket: tokens left at `refilled_at`, and what the last claim took
    tokens            double precision NOT NULL DEFAULT 0,
    refilled_at       timestamptz NOT NULL DEFAULT now(),
    granted           integer NOT NULL DEFAULT 0,
    CONSTRAINT provider_state_paused_has_probe CHECK ((state = 'paused') = (next_probe_at IS NOT NULL))
);
INSERT INTO provider_state (id) VALUES (1);
ALTER TABLE delivery_queue ADD COLUMN provider_faults integer NOT NULL DEFAULT 0 CHECK (provider_faults >= 0)
"""

DOWNGRADE = """
ALTER TABLE delivery_queue DROP COLUMN provider_faults;
DROP TABLE provider_state
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
