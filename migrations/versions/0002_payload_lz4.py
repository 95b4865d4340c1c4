"""Compress stored bodies and MIME with lz4 instead of pglz.

A stream batch of 500 spent about half of its commit compressing `delivery_payloads` with pglz
(the HTML body and the MIME message pass the 2 kB TOAST threshold); lz4 does it in about half
the time. Servers built without lz4 (or before PostgreSQL 14) keep pglz: the change is skipped.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def _set_compression(method: str) -> None:
    # EXECUTE: a server that cannot parse or provide the method raises at run time, where it is caught
    op.execute(
        f"""
        DO $$
        BEGIN
            EXECUTE 'ALTER TABLE delivery_payloads
                ALTER COLUMN mime SET COMPRESSION {method},
                ALTER COLUMN html_body SET COMPRESSION {method},
                ALTER COLUMN text_body SET COMPRESSION {method}';
        EXCEPTION WHEN feature_not_supported OR syntax_error THEN
            RAISE NOTICE 'delivery_payloads keeps the default TOAST compression';
        END
        $$
        """
    )


def upgrade() -> None:
    _set_compression("lz4")


def downgrade() -> None:
    _set_compression("default")
