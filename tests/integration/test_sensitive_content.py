"""Sensitive content (SPEC §13): readable while the worker needs it; once the delivery is terminal
no column of any table holds it, the API says `redacted`, a resend is refused, and the digest kept
is the SHA-256 of exactly what the SMTP server received."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from mailsvc.domain.commands import request_hash
from tests.smtp_servers import Gate, ScriptedHandler, SmtpServer
from tests.support.db_search import columns_holding
from tests.support.infra import wait_until
from tests.support.intake import connect
from tests.support.operator_api import API, in_process, operator_env, wait_for_status
from tests.support.stream import xadd_command

CONTENT_COLUMNS = [
    "delivery_payloads.html_body",
    "delivery_payloads.mime",
    "delivery_payloads.subject",
    "delivery_payloads.text_body",
]


def a_code() -> str:
    return f"{secrets.randbelow(10**9):09d}"


def smtp_overrides(server: SmtpServer) -> dict[str, str]:
    return {
        "MAIL_SMTP_MODE": "smtp",
        "MAIL_SMTP_ADDR": f"{server.host_port.host}:{server.host_port.port}",
        "MAIL_SMTP_TIMEOUT": "5s",
        "MAIL_RETRY_BASE_DELAY": "100ms",
        "MAIL_RETRY_MAX_DELAY": "400ms",
    }


async def login_code(api: httpx.AsyncClient, code: str, to: str = "ann@example.com") -> dict[str, Any]:
    response = await api.post(
        f"{API}/deliveries",
        json={"to": [to], "template": "auth.login_code", "variables": {"code": code, "expires_in_minutes": 10}},
        headers={"Idempotency-Key": f"login-{uuid.uuid4().hex}"},
    )
    assert response.status_code == 202, response.text
    body: dict[str, Any] = response.json()
    return body


async def assert_redacted(api: httpx.AsyncClient, dsn: str, delivery_id: str, code: str) -> dict[str, Any]:
    assert await columns_holding(dsn, code) == []
    detail: dict[str, Any] = (await api.get(f"{API}/deliveries/{delivery_id}")).json()
    assert detail["sensitive"] is True
    assert detail["redacted"] is True
    assert detail["subject"] is None
    assert detail["content_digest"]["redacted_at"] is not None
    with_body = (await api.get(f"{API}/deliveries/{delivery_id}", params={"include": "body"})).json()
    assert "text_body" not in with_body
    assert "html_body" not in with_body
    assert code not in str(with_body)
    resend = await api.post(f"{API}/deliveries/{delivery_id}/resend")
    assert resend.status_code == 409, resend.text
    assert resend.json()["error"]["code"] == "content_redacted"
    return detail


async def test_a_sent_login_code_is_readable_while_sending_and_gone_once_sent(
    database_dsn: str, redis_addr: str
) -> None:
    gate = Gate()
    handler = ScriptedHandler(hold_data=gate)
    code = a_code()
    with SmtpServer(handler) as server:
        async with in_process(operator_env(database_dsn, redis_addr, **smtp_overrides(server))) as api:
            accepted = await login_code(api, code)
            await wait_until(lambda: _true(gate.waiting == 1), what="the message held at the final '.'")
            # the worker needs the content until the delivery is terminal; the ASCII bodies are
            # stored once, in the MIME message (migration 0012)
            assert set(await columns_holding(database_dsn, code)) == {
                "delivery_payloads.subject",
                "delivery_payloads.mime",
            }
            gate.open()
            await wait_for_status(api, accepted["delivery_id"], "sent")
            detail = await assert_redacted(api, database_dsn, accepted["delivery_id"], code)
    (received,) = handler.received
    assert code.encode() in received.content
    digest = detail["content_digest"]
    assert digest["mime_sha256"] == hashlib.sha256(received.content).hexdigest()
    assert digest["mime_bytes"] == len(received.content)
    assert digest["subject_bytes"] > len(code)
    assert digest["text_bytes"] > 0
    assert digest["html_bytes"] > 0


async def test_a_dead_lettered_login_code_is_redacted(database_dsn: str, redis_addr: str) -> None:
    handler = ScriptedHandler(rcpt_replies={"gone@example.com": "550 5.1.1 no such user"})
    code = a_code()
    with SmtpServer(handler) as server:
        async with in_process(operator_env(database_dsn, redis_addr, **smtp_overrides(server))) as api:
            accepted = await login_code(api, code, to="gone@example.com")
            await wait_for_status(api, accepted["delivery_id"], "dead_lettered")
            await assert_redacted(api, database_dsn, accepted["delivery_id"], code)


async def test_suppressed_at_acceptance_is_redacted_in_the_same_transaction(database_dsn: str, redis_addr: str) -> None:
    code = a_code()
    async with in_process(operator_env(database_dsn, redis_addr)) as api:  # stub mode: auth is suppressed
        accepted = await login_code(api, code)
        assert accepted["status"] == "suppressed"
        await assert_redacted(api, database_dsn, accepted["delivery_id"], code)
        templates = {t["id"]: t["sensitive"] for t in (await api.get(f"{API}/templates")).json()["items"]}
    assert templates == {
        "auth.email_verification": True,
        "auth.login_code": True,
        "auth.password_reset": True,
        "notification.generic": False,
    }


async def test_raw_content_marked_sensitive_is_redacted_and_other_content_kept(
    database_dsn: str, redis_addr: str
) -> None:
    secret, plain = a_code(), a_code()
    env = operator_env(database_dsn, redis_addr)
    found: dict[str, dict[str, Any]] = {}
    async with in_process(env) as api:
        for value, sensitive in ((secret, True), (plain, False)):
            marker = uuid.uuid4().hex  # tags and keys are the producer's: never content
            payload = {
                "to": ["bob@example.com"],
                "subject": f"Code {value}",
                "text": f"Use {value}.",
                "tags": {"m": marker},
                "sensitive": sensitive,
            }
            await xadd_command(redis_addr, env["MAIL_REDIS_COMMAND_STREAM"], payload, key=f"raw-{marker}")
            found[value] = await wait_until(lambda m=marker: _sent(api, m), what=f"delivery {marker} sent")
        await assert_redacted(api, database_dsn, found[secret]["delivery_id"], secret)
        kept = (await api.get(f"{API}/deliveries/{found[plain]['delivery_id']}", params={"include": "body"})).json()
    assert (kept["sensitive"], kept["redacted"], kept["content_digest"]) == (False, False, None)
    assert kept["subject"] == f"Code {plain}"
    assert kept["text_body"] == f"Use {plain}."
    held = set(await columns_holding(database_dsn, plain))
    assert held >= {"delivery_payloads.subject", "delivery_payloads.mime"}
    assert "delivery_payloads.text_body" not in held  # ASCII: stored once, in the MIME message


async def test_a_command_cannot_turn_a_templates_redaction_off(database_dsn: str, redis_addr: str) -> None:
    code, marker = a_code(), uuid.uuid4().hex
    env = operator_env(database_dsn, redis_addr)
    async with in_process(env) as api:
        payload = {
            "to": ["cy@example.com"],
            "template": "auth.password_reset",
            "sensitive": False,
            "tags": {"m": marker},
            "variables": {"reset_url": f"https://example.com/reset/{code}", "expires_in_minutes": 30},
        }
        await xadd_command(redis_addr, env["MAIL_REDIS_COMMAND_STREAM"], payload, key=f"reset-{marker}")
        item = await wait_until(lambda: _sent(api, marker), what="the reset mail sent")
        await assert_redacted(api, database_dsn, item["delivery_id"], code)


async def _true(value: bool) -> bool:
    return value


async def _sent(api: httpx.AsyncClient, marker: str) -> dict[str, Any] | None:
    items = (await api.get(f"{API}/deliveries", params={"tag": f"m:{marker}"})).json()["items"]
    return dict(items[0]) if items and items[0]["status"] == "sent" else None


async def test_stub_mode_writes_a_suppressed_login_code_to_the_outbox(
    database_dsn: str, redis_addr: str, tmp_path: Path
) -> None:
    code = a_code()
    outbox = tmp_path / "outbox"
    env = operator_env(database_dsn, redis_addr, MAIL_STUB_OUTBOX_DIR=str(outbox))
    async with in_process(env) as api:
        accepted = await login_code(api, code)
        assert accepted["status"] == "suppressed"
        written = (outbox / f"{accepted['delivery_id']}.eml").read_bytes()  # before the 202 was sent
        assert code.encode() in written
        detail = await assert_redacted(api, database_dsn, accepted["delivery_id"], code)
    assert detail["status"] == "suppressed"
    assert detail["content_digest"]["mime_sha256"] == hashlib.sha256(written).hexdigest()


async def test_cancelled_and_superseded_sensitive_deliveries_are_redacted(database_dsn: str, redis_addr: str) -> None:
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    codes = [a_code() for _ in range(3)]
    markers = [uuid.uuid4().hex for _ in codes]
    env = operator_env(database_dsn, redis_addr)
    async with in_process(env) as api:
        for code, marker, collapse in zip(codes, markers, (None, "login:u1", "login:u1"), strict=True):
            payload: dict[str, Any] = {
                "to": ["dee@example.com"],
                "subject": f"Code {code}",
                "text": f"Use {code}.",
                "sensitive": True,
                "send_at": later,
                "tags": {"m": marker},
            }
            if collapse:
                payload["collapse_key"] = collapse
            await xadd_command(redis_addr, env["MAIL_REDIS_COMMAND_STREAM"], payload, key=f"later-{marker}")
        found = [await wait_until(lambda m=m: _listed(api, m), what=f"delivery {m}") for m in markers]
        superseded = await wait_for_status(api, found[1]["delivery_id"], "superseded")
        cancelled = await api.post(f"{API}/deliveries/{found[0]['delivery_id']}/cancel")
        assert cancelled.status_code == 200, cancelled.text
        await assert_redacted(api, database_dsn, found[0]["delivery_id"], codes[0])
        await assert_redacted(api, database_dsn, superseded["delivery_id"], codes[1])
        # the newest is still queued: the worker will need its content
        assert await columns_holding(database_dsn, codes[2]) != []


async def _listed(api: httpx.AsyncClient, marker: str) -> dict[str, Any] | None:
    items = (await api.get(f"{API}/deliveries", params={"tag": f"m:{marker}"})).json()["items"]
    return dict(items[0]) if items else None


async def test_the_kept_request_digest_cannot_be_checked_against_guesses_without_the_key(
    database_dsn: str, redis_addr: str
) -> None:
    """The idempotency key outlives the redaction (MAIL_IDEMPOTENCY_TTL); what it keeps of the
    request is an HMAC under MAIL_IDEMPOTENCY_HASH_KEY, not a SHA-256 anyone could recompute for
    each of a million codes. Retries still match it; a changed request still conflicts."""
    key = secrets.token_hex(16)
    code = a_code()
    variables = {"code": code, "expires_in_minutes": 10}
    payload = {"to": ["ann@example.com"], "template": "auth.login_code", "variables": variables}
    headers = {"Idempotency-Key": "login-hmac"}
    async with in_process(operator_env(database_dsn, redis_addr, MAIL_IDEMPOTENCY_HASH_KEY=key)) as api:
        first = await api.post(f"{API}/deliveries", json=payload, headers=headers)
        assert first.status_code == 202, first.text
        retry = await api.post(f"{API}/deliveries", json=payload, headers=headers)
        assert retry.json()["delivery_id"] == first.json()["delivery_id"], retry.text
        other = {**payload, "variables": {"code": a_code(), "expires_in_minutes": 10}}
        conflict = await api.post(f"{API}/deliveries", json=other, headers=headers)
        assert conflict.status_code == 409, conflict.text
    async with connect(database_dsn) as db:
        stored = bytes(await db.fetchval("SELECT request_hash FROM idempotency_keys WHERE key = 'login-hmac'"))
    plain = request_hash(payload)
    assert stored != plain
    assert stored == hmac.digest(key.encode(), plain, "sha256")
