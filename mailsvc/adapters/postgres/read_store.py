"""Operator reads (SPEC §3): delivery lists and details, dead letters, malformed commands.

Every list is one statement, newest first with keyset pagination on the indexes of migrations
0001 and 0011; a detail is one statement too (children come back as arrays of rows). Reads go round-robin
over the engines given: the replicas when configured, else the primary.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any
from uuid import UUID

import orjson
from sqlalchemy import Row, text
from sqlalchemy.ext.asyncio import AsyncEngine

from mailsvc.adapters.postgres.db import unavailable_as_domain_error
from mailsvc.adapters.postgres.payload_bodies import HTML_BODY, TEXT_BODY
from mailsvc.domain.model import Address, Priority, Recipient, ResendSource
from mailsvc.domain.operator_actions import OperatorAction
from mailsvc.domain.operator_query import DeliveryFilter, Keyset, MalformedQuery, PageRequest
from mailsvc.domain.raw_fields import masked_raw_fields
from mailsvc.domain.views import (
    AttemptView,
    Body,
    DeadLetterItem,
    DeadLetterView,
    DeliveryDetail,
    DeliverySummary,
    MalformedItem,
    RecipientView,
    Redaction,
)

# Read from `delivery_states` (migration 0004): the delivery as the API shows it, `sending` while its
# queue row is claimed and the queue's scheduling state while it is not terminal.
_COLUMNS = """d.delivery_id, d.source, d.status, d.template, d.locale, d.template_digest, d.priority, d.send_at,
    d.expires_at, d.idempotency_key, d.message_id, d.tags, d.attempt_count, d.next_attempt_at, d.last_error,
    d.resend_of, d.created_at, d.updated_at, d.finished_at, d.collapse_key, d.superseded_by"""
_TO = """ARRAY(SELECT r.address FROM delivery_recipients r
               WHERE r.delivery_id = d.delivery_id AND r.kind = 'to' ORDER BY r.position)"""
_ATTEMPTS = """ARRAY(SELECT ROW(a.number, a.started_at, a.finished_at, a.outcome, a.ambiguous, a.smtp_code,
                            a.smtp_reply, a.error_class, a.provider, a.duration_ms)
               FROM attempts a WHERE a.delivery_id = d.delivery_id ORDER BY a.number, a.attempt_id)"""

# The page is chosen first (index order, LIMIT), then each of its rows gets its state and
# recipients. No index of `deliveries` names the status (the final write stays a HOT update,
# migration 0011), so a status filter walks a table that holds that status with the delivery's
# `created_at`, in the list's order, joined to `deliveries` for the other filters: `delivery_queue`
# for `queued` (its unclaimed rows, `delivery_queue_queued_idx`) and `sending` (the few claimed
# ones), `delivery_ends` for the rare ends; `sent`, the common end, and no status at all walk
# `deliveries_created_idx`.
_LIST_DELIVERIES = """
    WITH page AS (
        SELECT d.delivery_id FROM {source}
        {where}
        ORDER BY {at} DESC, {id} DESC
        LIMIT :limit
    )
    SELECT {columns}, {to} AS to_addresses,
           (SELECT count(*) FROM delivery_recipients r WHERE r.delivery_id = d.delivery_id) AS recipient_count
    FROM page JOIN delivery_states d ON d.delivery_id = page.delivery_id
    ORDER BY d.created_at DESC, d.delivery_id DESC
"""


DETAIL = text(
    f"""
    SELECT {_COLUMNS},
           p.subject, p.reply_to, p.headers, p.sensitive, p.redacted_at, p.mime_sha256, p.mime_bytes,
           p.subject_bytes, p.text_bytes, p.html_bytes,
           CASE WHEN CAST(:body AS boolean) THEN {TEXT_BODY} END AS text_body,
           CASE WHEN CAST(:body AS boolean) THEN {HTML_BODY} END AS html_body,
           dl.reason AS dead_reason, dl.last_error AS dead_error, dl.created_at AS dead_at,
           ARRAY(SELECT ROW(r.kind, r.address, r.display_name, r.outcome, r.smtp_code, r.smtp_reply)
                 FROM delivery_recipients r WHERE r.delivery_id = d.delivery_id ORDER BY r.position) AS recipients,
           {_ATTEMPTS} AS attempts,
           ARRAY(SELECT x.delivery_id FROM deliveries x
                 WHERE x.resend_of = d.delivery_id ORDER BY x.created_at, x.delivery_id) AS resends
    FROM delivery_states d
    LEFT JOIN delivery_payloads p ON p.delivery_id = d.delivery_id
    LEFT JOIN dead_letters dl ON dl.delivery_id = d.delivery_id
    WHERE d.delivery_id = :id
    """
)

_ATTEMPTS_OF = text(f"SELECT {_ATTEMPTS} AS attempts FROM deliveries d WHERE d.delivery_id = :id")

_DEAD_LETTERS = """
    WITH page AS (
        SELECT dl.delivery_id, dl.reason, dl.last_error, dl.created_at FROM dead_letters dl
        {where}
        ORDER BY dl.created_at DESC, dl.delivery_id DESC
        LIMIT :limit
    )
    SELECT page.*, d.source, d.status, d.template, d.attempt_count, {to} AS to_addresses
    FROM page JOIN deliveries d ON d.delivery_id = page.delivery_id  -- dead-lettered: terminal, no queue row
    ORDER BY page.created_at DESC, page.delivery_id DESC
"""

_MALFORMED = """
    SELECT m.malformed_id, m.stream_key, m.stream_entry_id, m.idempotency_key, m.reason, m.message,
           CASE WHEN CAST(:raw AS boolean) THEN m.raw_fields END AS raw_fields, m.received_at, m.replayed_as,
           m.replayed_at
    FROM malformed_commands m
    {where}
    ORDER BY m.received_at DESC, m.malformed_id DESC
    LIMIT :limit
"""

_OPERATOR_ACTIONS = """
    SELECT a.action_id, a.kind, a.actor, a.target, a.filter, a.counts, a.note, a.created_at
    FROM operator_actions a
    {where}
    ORDER BY a.created_at DESC, a.action_id DESC
    LIMIT :limit
"""

# what a resend copies (a redrive reads the same, for many: `redrive_store.py`)
RESEND_SOURCE_COLUMNS = f"""d.delivery_id, d.status, d.template, d.locale, d.template_digest, d.priority, d.tags,
           p.subject, {TEXT_BODY} AS text_body, {HTML_BODY} AS html_body, p.reply_to, p.headers, p.redacted_at,
           ARRAY(SELECT ROW(r.kind, r.address, r.display_name)
                 FROM delivery_recipients r WHERE r.delivery_id = d.delivery_id ORDER BY r.position) AS recipients"""
_RESEND_SOURCE = text(
    f"""
    SELECT {RESEND_SOURCE_COLUMNS}
    FROM delivery_states d JOIN delivery_payloads p ON p.delivery_id = d.delivery_id
    WHERE d.delivery_id = :id
    """
)


# How many deliveries one address or tag matches varies by orders of magnitude (a user vs an audit
# mailbox), so the cached generic plan of a prepared statement is wrong for one of them: searches
# by recipient or tag are planned for the value at hand (generic: 70 ms, custom: 3 ms for an address
# on 10,000 of 100,000 deliveries). Transaction-scoped; the pool gets the connection back unchanged.
_PLAN_PER_VALUE = text("SET LOCAL plan_cache_mode = force_custom_plan")
# A page is at most 500 rows found by walking an index: parallel workers never pay for their start
# (a page of `status=dead_lettered&source=auth` took 20 ms under Gather Merge, 1.2 ms without).
_SERIAL = text("SET LOCAL max_parallel_workers_per_gather = 0")


def _where(conditions: list[str]) -> str:
    return f"WHERE {' AND '.join(conditions)}" if conditions else ""


_QUEUE = "delivery_queue x JOIN deliveries d ON d.delivery_id = x.delivery_id"
# the claimed rows are few (in flight): one key lookup each, never a hash of a whole `deliveries`
# index (OFFSET 0 keeps the planner from flattening the lookup into a join it may reorder)
_CLAIMED = (
    "delivery_queue x CROSS JOIN LATERAL (SELECT * FROM deliveries dd WHERE dd.delivery_id = x.delivery_id OFFSET 0) d"
)
_ENDS = "delivery_ends x JOIN deliveries d ON d.delivery_id = x.delivery_id"


def delivery_list_statement(query: DeliveryFilter, page: PageRequest) -> tuple[str, dict[str, Any]]:
    """The SQL and parameters of one page of `GET /deliveries` (public for EXPLAIN in tests)."""
    conditions: list[str] = []
    params: dict[str, Any] = {"limit": page.limit}
    source, at, key = "deliveries d", "d.created_at", "d.delivery_id"
    if query.status == "sent":
        conditions.append("d.status = 'sent'")
    elif query.status == "queued":
        source, at, key = _QUEUE, "x.created_at", "x.delivery_id"
        conditions.append("x.claim_token IS NULL")
    elif query.status == "sending":
        source, at, key = _CLAIMED, "x.created_at", "x.delivery_id"
        conditions.append("x.claim_token IS NOT NULL")
    elif query.status is not None:
        source, at, key = _ENDS, "x.created_at", "x.delivery_id"
        conditions.append("x.status = :status AND d.status = :status")
        params["status"] = query.status
    if query.source is not None:
        conditions.append("d.source = :source")
        params["source"] = query.source
    if query.template is not None:
        conditions.append("d.template = :template")
        params["template"] = query.template
    if query.recipient is not None:
        conditions.append(
            "d.delivery_id IN (SELECT r.delivery_id FROM delivery_recipients r "
            "WHERE lower(r.address) = lower(CAST(:recipient AS text)))"
        )
        params["recipient"] = query.recipient
    if query.tags:
        conditions.append("d.tags @> CAST(:tags AS jsonb)")
        params["tags"] = orjson.dumps(dict(query.tags)).decode()
    if query.created_after is not None:
        conditions.append(f"{at} >= :created_after")
        params["created_after"] = query.created_after
    if query.created_before is not None:
        conditions.append(f"{at} < :created_before")
        params["created_before"] = query.created_before
    if page.after is not None:
        conditions.append(f"({at}, {key}) < (CAST(:after_at AS timestamptz), CAST(:after_id AS uuid))")
        params["after_at"], params["after_id"] = page.after.at, UUID(page.after.key)
    sql = _LIST_DELIVERIES.format(columns=_COLUMNS, source=source, at=at, id=key, where=_where(conditions), to=_TO)
    return sql, params


class ReadStore:
    def __init__(self, engines: Sequence[AsyncEngine]) -> None:
        if not engines:
            raise ValueError("at least one engine is needed")
        self._engines = itertools.cycle(list(engines))

    async def _rows(
        self, statement: Any, params: Mapping[str, Any], *, plan_per_value: bool = False, serial: bool = False
    ) -> list[Row[Any]]:
        async with unavailable_as_domain_error(), next(self._engines).connect() as conn:
            if plan_per_value:
                await conn.execute(_PLAN_PER_VALUE)
            if serial:
                await conn.execute(_SERIAL)
            return list((await conn.execute(statement, params)).all())

    async def list_deliveries(self, query: DeliveryFilter, page: PageRequest) -> list[DeliverySummary]:
        """At most `page.limit` deliveries matching `query`, newest first, after `page.after`."""
        sql, params = delivery_list_statement(query, page)
        rows = await self._rows(text(sql), params, plan_per_value=bool(query.recipient or query.tags), serial=True)
        return [_summary(row, tuple(row.to_addresses), int(row.recipient_count)) for row in rows]

    async def get_delivery(self, delivery_id: UUID, *, include_body: bool) -> DeliveryDetail | None:
        rows = await self._rows(DETAIL, {"id": delivery_id, "body": include_body})
        if not rows:
            return None
        row = rows[0]
        recipients = tuple(RecipientView(*r) for r in row.recipients)
        dead = None if row.dead_reason is None else DeadLetterView(row.dead_reason, row.dead_error, row.dead_at)
        body = Body(row.text_body, row.html_body) if include_body and row.text_body is not None else None
        return DeliveryDetail(
            summary=_summary(row, tuple(r.address for r in recipients if r.kind == "to"), len(recipients)),
            subject=row.subject,
            reply_to=_address(row.reply_to),
            headers=_json(row.headers) or {},
            recipients=recipients,
            attempts=tuple(AttemptView(*a) for a in row.attempts),
            dead_letter=dead,
            resends=tuple(row.resends),
            body=body,
            sensitive=bool(row.sensitive),
            redaction=None
            if row.redacted_at is None
            else Redaction(
                redacted_at=row.redacted_at,
                mime_sha256=bytes(row.mime_sha256).hex(),
                mime_bytes=row.mime_bytes,
                subject_bytes=row.subject_bytes,
                text_bytes=row.text_bytes,
                html_bytes=row.html_bytes,
            ),
        )

    async def list_attempts(self, delivery_id: UUID) -> list[AttemptView] | None:
        """The delivery's attempts oldest first; None when there is no such delivery."""
        rows = await self._rows(_ATTEMPTS_OF, {"id": delivery_id})
        return None if not rows else [AttemptView(*a) for a in rows[0].attempts]

    async def list_dead_letters(self, page: PageRequest) -> list[DeadLetterItem]:
        conditions, params = _keyset("dl.created_at", "dl.delivery_id", "uuid", page)
        rows = await self._rows(text(_DEAD_LETTERS.format(where=_where(conditions), to=_TO)), params)
        return [
            DeadLetterItem(
                delivery_id=row.delivery_id,
                reason=row.reason,
                last_error=row.last_error,
                created_at=row.created_at,
                source=row.source,
                status=row.status,
                template=row.template,
                attempt_count=row.attempt_count,
                to=tuple(row.to_addresses),
            )
            for row in rows
        ]

    async def list_malformed(self, query: MalformedQuery, page: PageRequest) -> list[MalformedItem]:
        """Newest first; the raw fields only with `query.include_raw`, and then masked."""
        conditions, params = _keyset("m.received_at", "m.malformed_id", "bigint", page)
        params["raw"] = query.include_raw
        if query.reason is not None:
            conditions.append("m.reason = :reason")
            params["reason"] = query.reason
        rows = await self._rows(text(_MALFORMED.format(where=_where(conditions))), params)
        return [
            MalformedItem(
                malformed_id=row.malformed_id,
                stream_key=row.stream_key,
                stream_entry_id=row.stream_entry_id,
                idempotency_key=row.idempotency_key,
                reason=row.reason,
                message=row.message,
                raw_fields=None if row.raw_fields is None else masked_raw_fields(bytes(row.raw_fields)),
                received_at=row.received_at,
                replayed_as=row.replayed_as,
                replayed_at=row.replayed_at,
            )
            for row in rows
        ]

    async def list_operator_actions(self, kind: str | None, page: PageRequest) -> list[OperatorAction]:
        """The audit trail, newest first (`kind`: only actions of that kind)."""
        conditions, params = _keyset("a.created_at", "a.action_id", "uuid", page)
        if kind is not None:
            conditions.append("a.kind = :kind")
            params["kind"] = kind
        rows = await self._rows(text(_OPERATOR_ACTIONS.format(where=_where(conditions))), params)
        return [
            OperatorAction(
                kind=row.kind,
                actor=row.actor,
                target=_json(row.target),
                filter=_json(row.filter),
                counts=_json(row.counts),
                note=row.note,
                action_id=row.action_id,
                created_at=row.created_at,
            )
            for row in rows
        ]

    async def load_resend_source(self, delivery_id: UUID) -> ResendSource | None:
        """The stored rendered payload of a delivery (None when it or its payload is gone)."""
        rows = await self._rows(_RESEND_SOURCE, {"id": delivery_id})
        return resend_source_of(rows[0]) if rows else None


def resend_source_of(row: Any) -> ResendSource:
    """A row of `RESEND_SOURCE_COLUMNS` as the domain value."""
    return ResendSource(
        delivery_id=row.delivery_id,
        status=row.status,
        template=row.template,
        locale=row.locale,
        template_digest=row.template_digest,
        priority=Priority(row.priority),
        tags=_json(row.tags) or {},
        subject=row.subject,
        text=row.text_body,
        html=row.html_body,
        reply_to=_address(row.reply_to),
        headers=_json(row.headers) or {},
        recipients=tuple(Recipient(kind, Address(address, name)) for kind, address, name in row.recipients),
        redacted=row.redacted_at is not None,
    )


def _keyset(at_column: str, id_column: str, id_type: str, page: PageRequest) -> tuple[list[str], dict[str, Any]]:
    params: dict[str, Any] = {"limit": page.limit}
    if page.after is None:
        return [], params
    after: Keyset = page.after
    params["after_at"] = after.at
    params["after_id"] = int(after.key) if id_type == "bigint" else UUID(after.key)
    condition = f"({at_column}, {id_column}) < (CAST(:after_at AS timestamptz), CAST(:after_id AS {id_type}))"
    return [condition], params


def _json(value: Any) -> Any:
    return orjson.loads(value) if isinstance(value, str | bytes) else value


def _address(value: Any) -> Address | None:
    """`reply_to` is stored as the JSON text `{"email": …, "name": …}`."""
    if value is None:
        return None
    decoded = _json(value)
    return Address(decoded["email"], decoded.get("name"))


def _summary(row: Row[Any], to: tuple[str, ...], recipient_count: int) -> DeliverySummary:
    return DeliverySummary(
        delivery_id=row.delivery_id,
        source=row.source,
        status=row.status,
        template=row.template,
        locale=row.locale,
        template_digest=row.template_digest,
        priority=Priority(row.priority),
        send_at=row.send_at,
        expires_at=row.expires_at,
        idempotency_key=row.idempotency_key,
        message_id=row.message_id,
        tags=_json(row.tags) or {},
        attempt_count=row.attempt_count,
        next_attempt_at=row.next_attempt_at,
        last_error=row.last_error,
        resend_of=row.resend_of,
        created_at=row.created_at,
        updated_at=row.updated_at,
        finished_at=row.finished_at,
        to=to,
        recipient_count=recipient_count,
        collapse_key=row.collapse_key,
        superseded_by=row.superseded_by,
    )
