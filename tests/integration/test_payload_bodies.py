"""Bodies stored once (migration 0012): a body the MIME message holds verbatim is stored as its span
of `delivery_payloads.mime`, any other as text, and every reader gives back exactly what was
submitted; redaction clears the spans too and keeps the sizes; the database refuses a payload row
with no text body in either form."""

from __future__ import annotations

import asyncio
import io
import json
import uuid
from datetime import timedelta
from typing import Any

import asyncpg
import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from mailsvc.adapters.postgres.intake_store import IntakeStore
from mailsvc.adapters.postgres.read_store import ReadStore
from mailsvc.adapters.postgres.redaction import redact
from mailsvc.cli import build_parser
from mailsvc.domain.commands import request_hash
from mailsvc.domain.intake import NewDelivery
from mailsvc.ops.cli import ops_command
from tests.smtp_servers import ScriptedHandler, SmtpServer
from tests.support.acceptance import acceptance_service
from tests.support.infra import wait_until
from tests.support.operator_api import API, in_process, operator_env, wait_for_status
from tests.support.stream import xadd_command

TTL = timedelta(hours=24)
STREAM = "payload-bodies"
# ASCII with LF line endings, every line within 998 octets: sent 7bit, stored as spans. Dots, `=`,
# tabs, trailing spaces and blank lines are sent as they are (7bit), so they come back as they are.
TEXT = "Hello Ann,\n\n.a line that starts with a dot\n=?not-a-word?= a=b\ttab  \n\nBye\n"
HTML = '<p class="x">Hello <b>Ann</b></p>\n<p>' + "y" * 990 + "</p>\n</body>"


async def stored_forms(dsn: str, delivery_id: Any) -> dict[str, Any]:
    conn = await asyncpg.connect(dsn)
    try:
        row = await conn.fetchrow(
            "SELECT text_body, html_body, text_span, html_span, mime, text_bytes, html_bytes, redacted_at, subject "
            "FROM delivery_payloads WHERE delivery_id = $1",
            uuid.UUID(str(delivery_id)),
        )
    finally:
        await conn.close()
    assert row is not None
    return dict(row)


def ops(env: dict[str, str], *argv: str) -> tuple[int, str, str]:
    """`mailsvc ops ARGV` through the real parser (blocking: run it in a thread)."""
    out, err = io.StringIO(), io.StringIO()
    code = ops_command(build_parser().parse_args(["ops", *argv]), env=env, out=out, err=err)
    return code, out.getvalue(), err.getvalue()


async def assert_bodies(api: httpx.AsyncClient, dsn: str, delivery_id: str, text: str, html: str | None) -> None:
    """Stored as spans, and read back as submitted by the detail's `?include=body`."""
    row = await stored_forms(dsn, delivery_id)
    assert (row["text_body"], row["html_body"]) == (None, None)
    assert row["text_span"] is not None
    assert (row["html_span"] is None) == (html is None)
    detail = (await api.get(f"{API}/deliveries/{delivery_id}", params={"include": "body"})).json()
    assert (detail["text_body"], detail["html_body"]) == (text, html)


async def test_ascii_lf_bodies_are_stored_as_spans_and_every_reader_gives_them_back(
    database_dsn: str, redis_addr: str
) -> None:
    handler = ScriptedHandler(rcpt_replies={"gone@example.com": "550 5.1.1 no such user"})
    with SmtpServer(handler) as server:
        env = operator_env(
            database_dsn,
            redis_addr,
            MAIL_SMTP_MODE="smtp",
            MAIL_SMTP_ADDR=f"{server.host_port.host}:{server.host_port.port}",
            MAIL_SMTP_TIMEOUT="5s",
        )
        async with in_process(env) as api:
            posted = []
            for to in ("ann@example.com", "gone@example.com"):
                response = await api.post(
                    f"{API}/deliveries",
                    json={"to": [to], "subject": "Bodies", "text": TEXT, "html": HTML},
                    headers={"Idempotency-Key": uuid.uuid4().hex},
                )
                assert response.status_code == 202, response.text
                posted.append(response.json()["delivery_id"])
            sent, bounced = posted
            await wait_for_status(api, sent, "sent")
            await wait_for_status(api, bounced, "dead_lettered")
            for delivery_id in posted:
                await assert_bodies(api, database_dsn, delivery_id, TEXT, HTML)
            # the message sent holds the bodies: CRLF on the wire, LF as submitted
            received = next(m for m in handler.received if b"ann@example.com" in m.content)
            assert TEXT.replace("\n", "\r\n").encode() in received.content

            # the operator CLI, as a table and as JSON (the API's answer)
            port = api.base_url.port
            cli = {"MAIL_API_URL": f"http://127.0.0.1:{port}"}
            code, out, err = await asyncio.to_thread(ops, cli, "deliveries", "show", sent, "--body", "--json")
            assert code == 0, err
            shown = json.loads(out)
            assert (shown["text_body"], shown["html_body"]) == (TEXT, HTML)
            code, out, err = await asyncio.to_thread(ops, cli, "deliveries", "show", sent, "--body")
            assert code == 0, err
            assert ".a line that starts with a dot\n=?not-a-word?= a=b" in out

            # a resend copies the bodies (and stores its own message's spans)
            resend = await api.post(f"{API}/deliveries/{sent}/resend")
            assert resend.status_code == 202, resend.text
            await assert_bodies(api, database_dsn, resend.json()["delivery_id"], TEXT, HTML)

            # a redrive reads them for many at once
            redriven = await api.post(f"{API}/dead-letters/redrive", json={"filter": {"reason": "permanent_failure"}})
            assert redriven.status_code == 200, redriven.text
            assert redriven.json()["redriven"] == 1
            items = (await api.get(f"{API}/deliveries", params={"source": "resend"})).json()["items"]
            (again,) = [d for d in items if d["resend_of"] == bounced]
            await assert_bodies(api, database_dsn, again["delivery_id"], TEXT, HTML)

            # a replayed malformed command, corrected into raw content
            key = f"n-{uuid.uuid4().hex[:8]}"
            broken = {"to": ["ann@example.com"], "template": "notification.generic", "variables": {"title": "Hi"}}
            await xadd_command(redis_addr, env["MAIL_REDIS_COMMAND_STREAM"], broken, key=key)

            async def recorded() -> dict[str, Any] | None:
                listed = (await api.get(f"{API}/malformed-commands")).json()["items"]
                return next((m for m in listed if m["idempotency_key"] == key), None)

            record = await wait_until(recorded, what="the malformed command")
            corrected = {"to": ["ann@example.com"], "subject": "Bodies", "text": TEXT}
            replayed = await api.post(
                f"{API}/malformed-commands/{record['malformed_id']}/replay", json={"payload": corrected}
            )
            assert replayed.status_code == 202, replayed.text
            await assert_bodies(api, database_dsn, replayed.json()["delivery_id"], TEXT, None)


async def accept(engine: AsyncEngine, **payload: Any) -> NewDelivery:
    payload = {"to": ["ann@example.com"], "subject": "S"} | {k: v for k, v in payload.items() if v is not None}
    delivery = acceptance_service().prepare(
        source="notification", idempotency_key=uuid.uuid4().hex, payload=payload, digest=request_hash(payload)
    )
    await IntakeStore(engine).accept([delivery], [], stream_key=STREAM, offset=None, idempotency_ttl=TTL)
    return delivery


@pytest.mark.parametrize(
    ("text", "html", "text_stored", "html_stored"),
    [
        ("Olá, João\n", None, True, None),  # non-ASCII: quoted-printable
        ("windows\r\nline\r\nendings\r\n", "<p>\r\n</p>", True, True),  # CRLF: normalised on the wire
        ("a bare\rCR", "<p>plain</p>\n", True, False),  # CR: normalised; the HTML alone is a span
        ("x" * 999 + "\nshort\n", "<p>" + "é" * 10 + "</p>", True, True),  # a line past 998 octets
        ("ascii\n", "<p>naïve</p>\n", False, True),  # only the HTML is encoded
        ("", "", True, True),  # empty: a range cannot place it, so it stays text
    ],
)
async def test_bodies_that_cannot_be_sliced_are_stored_as_text_and_read_back_alike(
    engine: AsyncEngine,
    database_dsn: str,
    text: str,
    html: str | None,
    text_stored: bool,
    html_stored: bool | None,
) -> None:
    delivery = await accept(engine, text=text, html=html)
    row = await stored_forms(database_dsn, delivery.delivery_id)
    assert (row["text_body"] is not None, row["text_span"] is None) == (text_stored, text_stored)
    if html_stored is None:
        assert (row["html_body"], row["html_span"]) == (None, None)
    else:
        assert (row["html_body"] is not None, row["html_span"] is None) == (html_stored, html_stored)
    reads = ReadStore([engine])
    detail = await reads.get_delivery(delivery.delivery_id, include_body=True)
    assert detail is not None
    assert detail.body is not None
    assert (detail.body.text, detail.body.html) == (text, html)
    source = await reads.load_resend_source(delivery.delivery_id)
    assert source is not None
    assert (source.text, source.html) == (text, html)


async def test_redacting_a_sliced_delivery_clears_everything_and_keeps_the_sizes(
    engine: AsyncEngine, database_dsn: str
) -> None:
    text, html = "Your code is 123456.\nIt expires soon.\n", "<p>Your code is <b>123456</b>.</p>\n<p>Soon.</p>\n"
    delivery = await accept(engine, text=text, html=html, sensitive=True)
    before = await stored_forms(database_dsn, delivery.delivery_id)
    assert before["text_span"] is not None
    assert before["html_span"] is not None
    async with engine.connect() as conn:
        await redact(conn, [delivery.delivery_id])
        await conn.commit()
    row = await stored_forms(database_dsn, delivery.delivery_id)
    assert row["redacted_at"] is not None
    assert {
        k: row[k] for k in ("subject", "text_body", "html_body", "text_span", "html_span", "mime")
    } == dict.fromkeys(("subject", "text_body", "html_body", "text_span", "html_span", "mime"))
    # the sizes of the bodies as submitted (LF), not of their CRLF form in the message
    assert (row["text_bytes"], row["html_bytes"]) == (len(text.encode()), len(html.encode()))
    detail = await ReadStore([engine]).get_delivery(delivery.delivery_id, include_body=True)
    assert detail is not None
    assert detail.body is None
    assert detail.redaction is not None
    assert (detail.redaction.text_bytes, detail.redaction.html_bytes) == (len(text), len(html))


@pytest.mark.parametrize(
    ("change", "refused"),
    [
        ("text_span = NULL", True),  # neither text nor span
        ("text_body = 'again'", True),  # both
        ("html_body = 'again'", True),  # both, for the HTML
        ("text_span = 'empty'", True),  # a span that places nothing
        ("text_span = int4range(3, NULL)", True),  # unbounded
        ("text_body = 'as text', text_span = NULL", False),  # the other form: fine
        ("html_span = NULL", False),  # no HTML body: fine
    ],
)
async def test_the_database_refuses_a_body_in_neither_or_both_forms(
    engine: AsyncEngine, database_dsn: str, change: str, refused: bool
) -> None:
    delivery = await accept(engine, text="plain\n", html="<p>plain</p>\n")
    conn = await asyncpg.connect(database_dsn)
    try:
        statement = f"UPDATE delivery_payloads SET {change} WHERE delivery_id = $1"
        if refused:
            with pytest.raises(asyncpg.CheckViolationError, match="delivery_payloads_redaction_check"):
                await conn.execute(statement, delivery.delivery_id)
        else:
            await conn.execute(statement, delivery.delivery_id)
        # a redacted row keeps no span
        with pytest.raises(asyncpg.CheckViolationError, match="delivery_payloads_redaction_check"):
            await conn.execute(
                "UPDATE delivery_payloads SET subject = NULL, text_body = NULL, html_body = NULL, mime = NULL, "
                "sensitive = true, redacted_at = now(), mime_sha256 = sha256('x'), text_span = int4range(1, 2) "
                "WHERE delivery_id = $1",
                delivery.delivery_id,
            )
    finally:
        await conn.close()
