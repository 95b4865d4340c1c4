"""Index every foreign key a cascade follows: `idempotency_keys.delivery_id` had none.

Deleting a delivery cascades to its idempotency key; without an index on `delivery_id` PostgreSQL
scans the whole key table once per deleted delivery, so a 1,000-row retention batch over a table of
~500k keys ran past `statement_timeout` (SPEC §5). Every other cascaded column (recipients,
payloads, attempts, dead letters, `deliveries.resend_of`) already leads an index;
`tests/integration/test_migrations.py` checks that for every foreign key in the schema.

The index is built `CONCURRENTLY`, outside a transaction, so acceptance keeps inserting keys while a
large table is indexed. A concurrent build that was interrupted leaves an INVALID index behind;
dropping whatever is there first makes a re-run rebuild it rather than keep the broken one.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_DROP = "DROP INDEX CONCURRENTLY IF EXISTS idempotency_keys_delivery_idx"


def upgrade() -> None:
    with op.get_context().autocommit_block():
        op.execute(_DROP)
        op.execute("CREATE INDEX CONCURRENTLY idempotency_keys_delivery_idx ON idempotency_keys (delivery_id)")


def downgrade() -> None:
    with op.get_context().autocommit_block():
        op.execute(_DROP)
