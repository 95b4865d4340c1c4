"""A delivery's bodies are stored once: in its MIME message, where the message holds them verbatim.

`delivery_payloads.mime` (the message every attempt sends, built once at acceptance) holds each
body that `domain/mime.py` writes as `7bit`: ASCII, lines within 998 octets, the text's LF line
endings as CRLF. Storing `text_body` / `html_body` as well doubled the bodies in every payload row:
~3.5 KB of ~8 KB for the shipped template, through the socket, lz4 (TOAST) and the WAL; with
256 KiB bodies PostgreSQL's writing of twice the content was what made HTTP latency miss.
Now such a body is not stored as text: `text_span` / `html_span` give its byte offsets within
`mime` (`[start, end)`, 0-based), and every reader derives it — the slice, CRLF back to LF
(`adapters/postgres/payload_bodies.py`); that gives back exactly the submitted text because the
builder gives a span only when the text had no CR. Any other body (quoted-printable: non-ASCII, a
long line, NUL; CR in the text; an empty one, which a range cannot place) is stored as text, as
before, with no span. A body is the one or the other, never both, never neither (the text body).
Rows written before this keep their text: both forms are read alike.

Redaction (SPEC §13) clears the spans with the content; `text_bytes` / `html_bytes` stay the sizes
of the bodies as submitted (computed from the slice before it goes).

The downgrade writes the text back from the slices before dropping the spans, so the old invariant
(text stored, or redacted) holds again.

Revision ID: 0012
Revises: 0011
"""

from __future__ import annotations

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def _sliced(span: str) -> str:
    # the body a span names (the SQL of `adapters/postgres/payload_bodies.py`, repeated: a
    # migration must not change when the application's code does)
    return (
        f"replace(convert_from(substring(mime FROM lower({span}) + 1 FOR upper({span}) - lower({span})), 'UTF8'),"
        " E'\\r\\n', E'\\n')"
    )


UPGRADE = """
ALTER TABLE delivery_payloads ADD COLUMN text_span int4range;
ALTER TABLE delivery_payloads ADD COLUMN html_span int4range;
ALTER TABLE delivery_payloads DROP CONSTRAINT delivery_payloads_redaction_check;
-- content (each body as text or as a span of the MIME message, never both), or (only a sensitive
-- one) its digest once redacted
ALTER TABLE delivery_payloads ADD CONSTRAINT delivery_payloads_redaction_check CHECK (
    (redacted_at IS NULL AND subject IS NOT NULL AND mime IS NOT NULL
        AND (text_body IS NULL) <> (text_span IS NULL) AND (html_body IS NULL OR html_span IS NULL)
        AND NOT coalesce(isempty(text_span) OR lower_inf(text_span) OR upper_inf(text_span), false)
        AND NOT coalesce(isempty(html_span) OR lower_inf(html_span) OR upper_inf(html_span), false))
    OR (redacted_at IS NOT NULL AND sensitive AND subject IS NULL AND text_body IS NULL AND html_body IS NULL
        AND text_span IS NULL AND html_span IS NULL AND mime IS NULL AND mime_sha256 IS NOT NULL)) NOT VALID;
ALTER TABLE delivery_payloads VALIDATE CONSTRAINT delivery_payloads_redaction_check
"""

DOWNGRADE = f"""
UPDATE delivery_payloads SET text_body = {_sliced("text_span")}, text_span = NULL WHERE text_span IS NOT NULL;
UPDATE delivery_payloads SET html_body = {_sliced("html_span")}, html_span = NULL WHERE html_span IS NOT NULL;
ALTER TABLE delivery_payloads DROP CONSTRAINT delivery_payloads_redaction_check;
ALTER TABLE delivery_payloads DROP COLUMN html_span;
ALTER TABLE delivery_payloads DROP COLUMN text_span;
ALTER TABLE delivery_payloads ADD CONSTRAINT delivery_payloads_redaction_check CHECK (
    (redacted_at IS NULL AND subject IS NOT NULL AND text_body IS NOT NULL AND mime IS NOT NULL)
    OR (redacted_at IS NOT NULL AND sensitive AND subject IS NULL AND text_body IS NULL AND html_body IS NULL
        AND mime IS NULL AND mime_sha256 IS NOT NULL)) NOT VALID;
ALTER TABLE delivery_payloads VALIDATE CONSTRAINT delivery_payloads_redaction_check
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
