"""Redaction of sensitive content (SPEC §13): the one SQL fragment every terminal path runs.

When a `sensitive` delivery becomes terminal, the transaction that makes it so also removes its
rendered subject, bodies and MIME bytes from `delivery_payloads`, keeping the SHA-256 of the MIME
message, the sizes and `redacted_at` (migration 0010); the spans of the bodies go too (0012), the
sizes being those of the bodies as submitted however they were stored (`payload_bodies.py`). Every
path that ends a delivery must run this fragment in its own transaction:

- a finished attempt (`sent`, `dead_lettered`; also recovered stale claims): a CTE of
  `queue_store._FINISH`, so the batch stays one statement — `redacted AS (redact_sql("SELECT
  delivery_id FROM ended"))`;
- acceptance as `suppressed`: `IntakeStore.accept` calls `redact(conn, ids)` after inserting;
- cancel and supersede (and any later terminal path): the same — either `redact(conn, ids)` on the
  transaction's connection, or the fragment as a CTE of the statement that ends the deliveries:
  `redacted AS ({redact_sql("SELECT delivery_id FROM cancelled")})` (a data-modifying CTE runs
  even when nothing reads it).

The fragment only touches rows that are sensitive and not yet redacted, so calling it for every
ended delivery is right (and cheap) whatever its flag.
"""

from __future__ import annotations

from collections.abc import Sequence
from uuid import UUID

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from mailsvc.adapters.postgres.db import DriverConnection
from mailsvc.adapters.postgres.payload_bodies import HTML_BODY, TEXT_BODY


def redact_sql(ids: str) -> str:
    """An UPDATE redacting the sensitive payloads among the delivery ids that the SQL query `ids`
    selects (one column). The SET list reads the old values: digest and sizes are of the content
    removed by the same row write."""
    return f"""
        UPDATE delivery_payloads p
        SET subject = NULL, text_body = NULL, html_body = NULL, text_span = NULL, html_span = NULL, mime = NULL,
            redacted_at = now(), mime_sha256 = sha256(p.mime), mime_bytes = octet_length(p.mime),
            subject_bytes = octet_length(p.subject), text_bytes = octet_length({TEXT_BODY}),
            html_bytes = octet_length({HTML_BODY})
        WHERE p.sensitive AND p.redacted_at IS NULL AND p.delivery_id IN ({ids})
    """


_REDACT = text(redact_sql("SELECT unnest(CAST(:ids AS uuid[]))"))


async def redact(conn: DriverConnection | AsyncConnection, delivery_ids: Sequence[UUID]) -> None:
    """Redact, in the caller's transaction, the sensitive ones among `delivery_ids` (which the same
    transaction makes terminal). One statement, nothing when `delivery_ids` is empty."""
    if delivery_ids:
        await conn.execute(_REDACT, {"ids": list(delivery_ids)})
