"""When a delivery was submitted: the producer's XADD (the stream entry id's milliseconds) or the
HTTP acceptance — where `mail.delivery.latency` starts (SPEC §8). NULL for deliveries accepted
before this revision (they are not measured).

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # nullable, no default: a catalog change only, no table rewrite
    op.execute("ALTER TABLE deliveries ADD COLUMN submitted_at timestamptz")


def downgrade() -> None:
    op.execute("ALTER TABLE deliveries DROP COLUMN submitted_at")
