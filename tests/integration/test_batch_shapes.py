"""A batch is stored row for row as its deliveries say, whatever its shape: a column the whole
batch shares is sent once (`adapters/postgres/batch_rows.py`), so the batches here mix a usually
empty or shared value (reply-to, resend of, collapse key, traceparent, send_at, headers, names,
a suppressed recipient…) on one delivery only, on every one, and on none."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import orjson
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from mailsvc.adapters.postgres.batch_rows import SHARED_FROM_ROWS
from mailsvc.adapters.postgres.intake_store import IntakeStore
from mailsvc.domain.commands import request_hash
from mailsvc.domain.intake import NewDelivery
from mailsvc.services.acceptance import AcceptanceService
from tests.support.acceptance import acceptance_service

TTL = timedelta(hours=24, microseconds=7)
STREAM = "batch-shapes"
T0 = datetime(2026, 11, 22, 10, 0, 0, 123456, tzinfo=UTC)
SUPPRESSED = "gone@example.org"
DELIVERY_COLUMNS = [
    "source",
    "status",
    "template",
    "locale",
    "template_digest",
    "priority",
    "send_at",
    "expires_at",
    "idempotency_key",
    "message_id",
    "resend_of",
    "created_at",
    "updated_at",
    "finished_at",
    "traceparent",
    "collapse_key",
    "submitted_at",
]
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def builder(tick: list[int]) -> AcceptanceService:
    def clock() -> datetime:  # every delivery accepted at its own instant
        tick[0] += 1
        return T0 + timedelta(milliseconds=tick[0], microseconds=tick[0])

    return acceptance_service(idempotency_ttl=TTL, stream_key=STREAM, clock=clock)


def plain(n: int) -> dict[str, Any]:
    return {"to": [f"r{n}@example.com"], "subject": f"S{n}", "text": f"Hello {n}"}


def unusual(n: int) -> dict[str, Any]:
    """Everything a command may carry that most commands do not."""
    return {
        "to": [{"email": f"r{n}@example.com", "name": f"Reader {n}"}, SUPPRESSED],
        "cc": [f"c{n}@example.com"],
        "reply_to": {"email": "help@example.com", "name": "Help"},
        "template": "notification.generic",
        "locale": "pt-BR",
        "variables": {"title": f"T{n}", "body": "B"},
        "priority": "high",
        "send_at": (T0 + timedelta(hours=1)).isoformat(),
        "expires_at": (T0 + timedelta(hours=5)).isoformat(),
        "headers": {"X-Campaign": f"c{n}"},
        "tags": {"kind": "unusual"},
        "collapse_key": f"ck-{n}",
    }


def all_suppressed(n: int) -> dict[str, Any]:
    return {"to": [SUPPRESSED], "subject": f"S{n}", "text": "x"}


def sensitive(n: int) -> dict[str, Any]:
    return {"to": [f"r{n}@example.com"], "subject": f"S{n}", "text": "code 1234", "sensitive": True}


def prepare(acceptance: AcceptanceService, n: int, payload: dict[str, Any]) -> NewDelivery:
    return acceptance.prepare(
        source="notification", idempotency_key=f"k{n}", payload=payload, digest=request_hash(payload)
    )


def _span(stored: Any) -> tuple[int, int] | None:
    return None if stored is None else (stored.lower, stored.upper)


def _body(stored: str | None, span: Any, mime: bytes) -> str | None:
    """The body as submitted: its text column, or its span of the message with CRLF back to LF."""
    return stored if span is None else mime[span.lower : span.upper].replace(b"\r\n", b"\n").decode("ascii")


async def stored(pg_conn: Any, delivery: NewDelivery) -> dict[str, Any]:
    d = await pg_conn.fetchrow("SELECT * FROM deliveries WHERE delivery_id = $1", delivery.delivery_id)
    p = await pg_conn.fetchrow("SELECT * FROM delivery_payloads WHERE delivery_id = $1", delivery.delivery_id)
    k = await pg_conn.fetchrow(
        "SELECT * FROM idempotency_keys WHERE source = $1 AND key = $2", delivery.source, delivery.idempotency_key
    )
    q = await pg_conn.fetchrow("SELECT * FROM delivery_queue WHERE delivery_id = $1", delivery.delivery_id)
    e = await pg_conn.fetch("SELECT type, data FROM delivery_events WHERE delivery_id = $1", delivery.delivery_id)
    r = await pg_conn.fetch(
        "SELECT position, kind, address, display_name, outcome FROM delivery_recipients "
        "WHERE delivery_id = $1 ORDER BY position",
        delivery.delivery_id,
    )
    return {
        "delivery": {name: d[name] for name in DELIVERY_COLUMNS} | {"tags": orjson.loads(d["tags"])},
        "payload": {
            "subject": p["subject"],
            "text": _body(p["text_body"], p["text_span"], bytes(p["mime"])),
            "html": _body(p["html_body"], p["html_span"], bytes(p["mime"])),
            "spans": (_span(p["text_span"]), _span(p["html_span"])),
            "reply_to": None if p["reply_to"] is None else orjson.loads(p["reply_to"]),
            "headers": orjson.loads(p["headers"]),
            "mime": bytes(p["mime"]),
            "sensitive": p["sensitive"],
        },
        "key": (k["request_hash"], k["delivery_id"], k["created_at"], k["expires_at"]),
        "queue": None if q is None else (q["priority"], q["next_attempt_at"]),
        "events": [(row["type"], orjson.loads(row["data"])) for row in e],
        "recipients": [tuple(row) for row in r],
    }


def expected(delivery: NewDelivery) -> dict[str, Any]:
    """What the rows must hold, from the delivery alone (its recipient `SUPPRESSED` is on the list)."""
    request, content = delivery.request, delivery.content
    suppressed = frozenset(i for i, r in enumerate(request.recipients) if r.address.email == SUPPRESSED)
    d = delivery.checked_against({SUPPRESSED})
    event = d.event
    queued = d.status == "queued"
    return {
        "delivery": {
            "source": d.source,
            "status": d.status,
            "template": request.template,
            "locale": content.locale,
            "template_digest": content.template_digest,
            "priority": int(request.priority),
            "send_at": d.send_at,
            "expires_at": request.expires_at,
            "idempotency_key": d.idempotency_key,
            "message_id": d.message_id,
            "resend_of": d.resend_of,
            "created_at": d.accepted_at,
            "updated_at": d.accepted_at,
            "finished_at": None if queued else d.accepted_at,
            "traceparent": d.traceparent,
            "collapse_key": d.collapse_key,
            "submitted_at": d.submitted_at,
            "tags": dict(request.tags),
        },
        "payload": {
            "subject": content.subject,
            "text": content.text,
            "html": content.html,
            # a body is stored as its span of the MIME message when it has a (non-empty) one
            "spans": tuple(span if span and span[0] < span[1] else None for span in (d.text_span, d.html_span)),
            "reply_to": None
            if request.reply_to is None
            else {"email": request.reply_to.email, "name": request.reply_to.name},
            "headers": dict(request.headers),
            "mime": d.mime,
            "sensitive": content.sensitive,
        },
        "key": (d.request_hash, d.delivery_id, d.accepted_at, d.accepted_at + TTL),
        "queue": (int(request.priority), d.send_at) if queued else None,
        "events": [(event.type, orjson.loads(orjson.dumps(event.data)))],
        "recipients": [
            (i, r.kind, r.address.email, r.address.name, "suppressed" if i in suppressed else None)
            for i, r in enumerate(request.recipients)
        ],
    }


async def accept_and_check(engine: AsyncEngine, database_dsn: str, deliveries: Sequence[NewDelivery]) -> None:
    outcomes = await IntakeStore(engine).accept(deliveries, [], stream_key=STREAM, offset=None, idempotency_ttl=TTL)
    assert [o.kind for o in outcomes] == ["created"] * len(deliveries)
    conn = await asyncpg.connect(database_dsn)
    try:
        for delivery in deliveries:
            assert await stored(conn, delivery) == expected(delivery), delivery.idempotency_key
    finally:
        await conn.close()


async def seed(engine: AsyncEngine, database_dsn: str, acceptance: AcceptanceService) -> Any:
    """The suppression, and a stored delivery to resend."""
    conn = await asyncpg.connect(database_dsn)
    try:
        await conn.execute("INSERT INTO suppressions (address, reason) VALUES ($1, 'manual')", SUPPRESSED)
    finally:
        await conn.close()
    original = prepare(acceptance, 1000, plain(1000))
    await IntakeStore(engine).accept([original], [], stream_key=STREAM, offset=None, idempotency_ttl=TTL)
    return original.delivery_id


def odd_one(acceptance: AcceptanceService, n: int, resend_of: Any) -> NewDelivery:
    """A delivery unlike the rest of its batch in every column that may be shared."""
    d = prepare(acceptance, n, unusual(n))
    return replace(d, resend_of=resend_of, traceparent=TRACEPARENT, stream_entry_id=f"5-{n}", stream_fields={})


@pytest.mark.parametrize("where", ["first", "middle", "last"])
async def test_one_unusual_delivery_in_a_batch_is_stored_as_it_says(
    engine: AsyncEngine, database_dsn: str, where: str
) -> None:
    acceptance = builder([0])
    original = await seed(engine, database_dsn, acceptance)
    batch = [prepare(acceptance, n, plain(n)) for n in range(SHARED_FROM_ROWS)]
    odd = odd_one(acceptance, 99, original)
    batch.insert({"first": 0, "middle": 2, "last": len(batch)}[where], odd)
    await accept_and_check(engine, database_dsn, batch)


async def test_a_batch_of_unusual_deliveries_and_a_mixed_one_are_stored_as_they_say(
    engine: AsyncEngine, database_dsn: str
) -> None:
    acceptance = builder([0])
    original = await seed(engine, database_dsn, acceptance)
    # all alike in the usually empty columns
    alike = [odd_one(acceptance, n, original) for n in range(SHARED_FROM_ROWS)]
    await accept_and_check(engine, database_dsn, alike)
    # a mix: suppressed, sensitive, plain, unusual, each shape of recipient
    mixed = [
        prepare(acceptance, 10, all_suppressed(10)),
        prepare(acceptance, 11, sensitive(11)),
        prepare(acceptance, 12, plain(12)),
        odd_one(acceptance, 13, None),
        prepare(acceptance, 14, sensitive(14)),
        *[prepare(acceptance, n, plain(n)) for n in range(15, 15 + SHARED_FROM_ROWS)],
    ]
    await accept_and_check(engine, database_dsn, mixed)
    # one alone (sent as arrays: too few rows to look for shared columns)
    await accept_and_check(engine, database_dsn, [odd_one(acceptance, 50, original)])
