"""The HTTP door end to end: `POST /api/v1/internal/deliveries` on a real `mailsvc serve` (SPEC §3)."""

from __future__ import annotations

import asyncio
import email
import email.policy
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest
from redis.asyncio import Redis

from devtools.embedded import free_port
from tests.support.infra import redis_host_port, wait_until
from tests.support.intake import connect, wait_for_offset
from tests.support.payloads import numbered_payload
from tests.support.process import ServiceProcess, running_service, service_environment
from tests.support.stream import command

PATH = "/api/v1/internal/deliveries"
MIB = 1024 * 1024


@dataclass
class Intake:
    service: ServiceProcess
    client: httpx.AsyncClient
    dsn: str
    stream_key: str

    async def post(self, payload: Any, key: str | None = None, **kwargs: Any) -> httpx.Response:
        headers = dict(kwargs.pop("headers", {}))
        if key is not None:
            headers["Idempotency-Key"] = key
        if isinstance(payload, bytes):
            return await self.client.post(PATH, content=payload, headers=headers, **kwargs)
        return await self.client.post(PATH, json=payload, headers=headers, **kwargs)

    async def deliveries(self, key: str) -> list[dict[str, Any]]:
        async with connect(self.dsn) as db:
            rows = await db.fetch("SELECT * FROM deliveries WHERE idempotency_key = $1", key)
        return [dict(row) for row in rows]


@pytest.fixture(scope="module")
async def intake(module_database: str, redis_addr: str) -> AsyncIterator[Intake]:
    """One stub-mode service for the module; tests isolate themselves with fresh keys."""
    env = service_environment(module_database, redis_addr)
    async with running_service(env) as service:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{service.port}", timeout=30) as client:
            yield Intake(service, client, module_database, env["MAIL_REDIS_COMMAND_STREAM"])
        assert not service.events("http_unhandled_error"), service.output()


@pytest.fixture
def key() -> str:
    return f"k-{uuid.uuid4().hex}"


def payload(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "to": [{"email": "ann@example.com", "name": "Ann Lee"}],
        "template": "auth.login_code",
        "locale": "pt-BR",
        "variables": {"code": "481516", "expires_in_minutes": 10},
        "tags": {"tenant": "acme"},
    }
    body.update(overrides)
    return {k: v for k, v in body.items() if v is not None}


def error_of(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}
    assert body["error"]["code"] == code
    assert body["error"]["message"]
    return dict(body["error"])


# -- accept, replay, conflict ----------------------------------------------------------------


async def test_accept_then_replay_returns_the_same_delivery(intake: Intake, key: str) -> None:
    first = await intake.post(payload(), key)
    assert first.status_code == 202, first.text
    body = first.json()
    assert body["status"] == "suppressed"  # auth delivery in stub mode
    assert body["idempotent_replay"] is False
    uuid.UUID(body["delivery_id"])

    again = await intake.post(payload(), key)
    assert again.status_code == 200
    assert again.json() == {**body, "idempotent_replay": True}
    (row,) = await intake.deliveries(key)
    assert str(row["delivery_id"]) == body["delivery_id"]
    assert (row["source"], row["status"], row["locale"]) == ("auth", "suppressed", "pt-BR")
    assert row["finished_at"] is not None
    assert row["attempt_count"] == 0


async def test_key_order_and_whitespace_do_not_make_a_new_request(intake: Intake, key: str) -> None:
    first = await intake.post(b'{"to": ["bob@example.com"], "subject": "Hi", "text": "Hello"}', key)
    assert first.status_code == 202
    again = await intake.post(b'{\n  "text":"Hello",\n  "to":[ "bob@example.com" ],"subject" : "Hi"\n}', key)
    assert again.status_code == 200
    assert again.json()["delivery_id"] == first.json()["delivery_id"]


async def test_same_key_with_a_different_body_is_a_conflict(intake: Intake, key: str) -> None:
    first = await intake.post(payload(), key)
    assert first.status_code == 202
    error_of(
        await intake.post(payload(variables={"code": "999999", "expires_in_minutes": 10}), key),
        409,
        "idempotency_key_conflict",
    )
    (row,) = await intake.deliveries(key)
    assert str(row["delivery_id"]) == first.json()["delivery_id"]
    assert (await intake.post(payload(), key)).status_code == 200  # the original still replays


async def test_a_replay_after_expires_at_passed_returns_the_original(intake: Intake, key: str) -> None:
    expires_at = datetime.now(UTC) + timedelta(seconds=2)
    body = payload(expires_at=expires_at.isoformat())
    first = await intake.post(body, key)
    assert first.status_code == 202, first.text

    async def passed() -> bool:
        return datetime.now(UTC) > expires_at

    await wait_until(passed, timeout=10, what="expires_at to pass")
    again = await intake.post(body, key)
    assert again.status_code == 200, again.text  # not 422: the same request answers with the original
    assert again.json() == {**first.json(), "idempotent_replay": True}
    # the key holding another request is still a conflict, a fresh key the usual validation error
    other = payload(expires_at=expires_at.isoformat(), variables={"code": "000000", "expires_in_minutes": 10})
    error_of(await intake.post(other, key), 409, "idempotency_key_conflict")
    fresh = f"{key}-fresh"
    error = error_of(await intake.post(body, fresh), 422, "validation_failed")
    assert error["details"] == [{"field": "expires_at", "message": "has already passed"}]
    assert len(await intake.deliveries(key)) == 1
    assert await intake.deliveries(fresh) == []


async def test_fifty_concurrent_requests_with_one_key_create_one_delivery(intake: Intake, key: str) -> None:
    responses = await asyncio.gather(*(intake.post(payload(), key) for _ in range(50)))
    assert sorted(r.status_code for r in responses) == [200] * 49 + [202]
    ids = {r.json()["delivery_id"] for r in responses}
    assert len(ids) == 1
    rows = await intake.deliveries(key)
    assert [str(row["delivery_id"]) for row in rows] == list(ids)


async def test_the_same_key_on_the_stream_is_a_different_scope(intake: Intake, key: str, redis_addr: str) -> None:
    assert (await intake.post(payload(), key)).status_code == 202
    host, port = redis_host_port(redis_addr)
    redis = Redis(host=host, port=port)
    try:
        entry_id = await redis.xadd(intake.stream_key, command(numbered_payload(1), key))  # type: ignore[arg-type]
        async with connect(intake.dsn) as db:
            await wait_for_offset(db, intake.stream_key, entry_id.decode())
    finally:
        await redis.delete(intake.stream_key)
        await redis.aclose()
    rows = await intake.deliveries(key)
    assert sorted(row["source"] for row in rows) == ["auth", "notification"]  # no conflict across doors


# -- the Idempotency-Key header --------------------------------------------------------------


async def test_missing_idempotency_key_is_422(intake: Intake) -> None:
    error = error_of(await intake.post(payload()), 422, "validation_failed")
    assert [d["field"] for d in error["details"]] == ["Idempotency-Key"]


@pytest.mark.parametrize("bad", ["", "has space", "k" * 201, "slash/es"])
async def test_invalid_idempotency_key_is_422(intake: Intake, bad: str) -> None:
    error = error_of(await intake.post(payload(), bad), 422, "validation_failed")
    assert [d["field"] for d in error["details"]] == ["Idempotency-Key"]


async def test_invalid_key_and_invalid_payload_are_reported_together(intake: Intake) -> None:
    error = error_of(await intake.post(payload(priority="urgent")), 422, "validation_failed")
    assert {d["field"] for d in error["details"]} == {"Idempotency-Key", "priority"}


# -- bodies: JSON, size --------------------------------------------------------------------------


@pytest.mark.parametrize("body", [b"", b"{", b"not json", b'{"to": ["a@example.com"],}', b"\xff\xfe"])
async def test_invalid_json_is_400(intake: Intake, key: str, body: bytes) -> None:
    error_of(await intake.post(body, key), 400, "invalid_json")
    assert await intake.deliveries(key) == []


async def test_body_over_one_mib_with_content_length_is_413(intake: Intake, key: str) -> None:
    body = orjson.dumps(payload(variables={"code": "1", "expires_in_minutes": 1, "pad": "x" * MIB}))
    assert len(body) > MIB
    error_of(await intake.post(body, key), 413, "payload_too_large")
    assert await intake.deliveries(key) == []


async def test_chunked_body_over_one_mib_is_413(intake: Intake, key: str) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"to": ["a@example.com"], "subject": "s", "text": "'
        for _ in range(17):
            yield b"x" * 65536
        yield b'"}'

    response = await intake.client.post(PATH, content=chunks(), headers={"Idempotency-Key": key})
    assert "content-length" not in response.request.headers
    error_of(response, 413, "payload_too_large")
    assert await intake.deliveries(key) == []


async def test_body_just_under_the_limit_is_accepted(intake: Intake, key: str) -> None:
    body = orjson.dumps({"to": ["a@example.com"], "subject": "s", "text": "x" * (MIB - 200)})
    assert len(body) < MIB
    response = await intake.post(body, key)
    assert response.status_code == 202, response.text


async def test_ten_megabyte_body_is_413(intake: Intake, key: str) -> None:
    body = b'{"to": ["a@example.com"], "subject": "s", "text": "' + b"x" * 10_000_000 + b'"}'
    error_of(await intake.post(body, key), 413, "payload_too_large")
    assert await intake.deliveries(key) == []


# -- validation: 422 with every problem ----------------------------------------------------------


async def test_validation_lists_every_problem(intake: Intake, key: str) -> None:
    body = {
        "to": ["nope", {"email": "ann@example.com", "name": "Ann\r\nBcc: x@evil.example"}],
        "bcc": [f"b{i}@example.com" for i in range(49)],
        "subject": "s",
        "text": "t",
        "priority": "urgent",
        "send_at": "2026-11-22T10:00:00",
        "headers": {"Bcc": "x@evil.example", "X-Ok": "a\r\nb"},
        "tags": {f"k{i}": "v" for i in range(17)},
        "extra": True,
    }
    error = error_of(await intake.post(body, key), 422, "validation_failed")
    fields = {d["field"] for d in error["details"]}
    assert fields == {
        "extra",
        "to",
        "to[0]",
        "to[1].name",
        "priority",
        "send_at",
        "headers.Bcc",
        "headers.X-Ok",
        "tags",
    }
    assert all(d["message"] for d in error["details"])
    assert await intake.deliveries(key) == []


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"to": []}, "to"),
        ({"to": [f"r{i}@example.com" for i in range(51)]}, "to"),
        ({"to": [f"r{i}@example.com" for i in range(1000)]}, "to"),
        ({"to": ["not-an-address"]}, "to[0]"),
        ({"subject": "also raw"}, "subject"),
        ({"template": None, "variables": None, "locale": None}, "subject"),
        ({"priority": "asap"}, "priority"),
        ({"send_at": "2026-11-22T10:00:00"}, "send_at"),
        ({"send_at": "2026-11-22T10:00:00Z", "expires_at": "2026-11-22T09:00:00Z"}, "expires_at"),
        ({"expires_at": "2020-01-01T00:00:00Z"}, "expires_at"),
        ({"send_at": "0001-01-01T00:00:00+01:00"}, "send_at"),
        ({"headers": {"Subject": "x"}}, "headers.Subject"),
        ({"headers": {f"X-H{i}": "v" for i in range(21)}}, "headers"),
        ({"tags": {f"t{i}": "v" for i in range(17)}}, "tags"),
        ({"surprise": 1}, "surprise"),
        ({"template": "auth.no_such_template"}, "template"),
        ({"variables": {"expires_in_minutes": 10}}, "template"),
        ({"variables": {"code": "1\u00002", "expires_in_minutes": 10}}, "variables.code"),
        ({"tags": {"k": "\u0000"}}, "tags.k"),
    ],
)
async def test_each_rule_is_a_422_naming_the_field(
    intake: Intake, key: str, overrides: dict[str, Any], field: str
) -> None:
    error = error_of(await intake.post(payload(**overrides), key), 422, "validation_failed")
    assert field in {d["field"] for d in error["details"]}, error
    assert await intake.deliveries(key) == []


async def test_a_render_past_the_limit_is_422_and_stores_nothing(intake: Intake, key: str) -> None:
    # 256 KiB of short paragraphs: 4 MB of HTML if rendered in full (MAIL_MAX_RENDERED_BYTES is 1 MiB)
    variables = {"title": "T", "body": "a\n\n" * (256 * 1024 // 3)}
    response = await intake.post(payload(template="notification.generic", locale="en", variables=variables), key)
    error = error_of(response, 422, "validation_failed")
    (detail,) = error["details"]
    assert detail["field"] == "template"
    assert "HTML body is longer than 1048576 bytes" in detail["message"]
    assert await intake.deliveries(key) == []


@pytest.mark.parametrize("url", ["javascript:alert(1)", " JavaScript:alert(1)", "data:text/html,<script>x</script>"])
async def test_a_link_that_is_not_http_or_https_is_422(intake: Intake, key: str, url: str) -> None:
    variables = {"reset_url": url, "expires_in_minutes": 30}
    response = await intake.post(payload(template="auth.password_reset", locale="en", variables=variables), key)
    error = error_of(response, 422, "validation_failed")
    (detail,) = error["details"]
    assert detail["field"] == "variables.reset_url"
    assert url not in response.text  # a reset link carries a token: never echoed back
    assert await intake.deliveries(key) == []


async def test_idn_domain_is_stored_in_punycode(intake: Intake, key: str) -> None:
    assert (await intake.post(payload(to=["ann@bücher.example"]), key)).status_code == 202
    (row,) = await intake.deliveries(key)
    async with connect(intake.dsn) as db:
        address = await db.fetchval(
            "SELECT address FROM delivery_recipients WHERE delivery_id = $1", row["delivery_id"]
        )
    assert address == "ann@xn--bcher-kva.example"


async def test_payload_nested_too_deeply_is_refused_not_a_500(intake: Intake, key: str) -> None:
    body = b'{"to": ["a@example.com"], "subject": "s", "text": "t", "tags": ' + b"[" * 400 + b"]" * 400 + b"}"
    response = await intake.post(body, key)
    assert response.status_code in (400, 422), response.text


# -- header injection ------------------------------------------------------------------------


async def _stored_message(intake: Intake, key: str) -> tuple[bytes, email.message.EmailMessage]:
    (row,) = await intake.deliveries(key)
    async with connect(intake.dsn) as db:
        mime = bytes(await db.fetchval("SELECT mime FROM delivery_payloads WHERE delivery_id = $1", row["delivery_id"]))
    message = email.message_from_bytes(mime, policy=email.policy.default)
    assert isinstance(message, email.message.EmailMessage)
    return mime, message


def _header_names(mime: bytes) -> list[str]:
    head = mime.split(b"\r\n\r\n", 1)[0].decode("ascii")
    return [line.split(":", 1)[0].lower() for line in head.split("\r\n") if line and not line[0].isspace()]


@pytest.mark.parametrize(
    ("template", "variables"),
    [
        # (a login code's MIME is redacted once suppressed: the same subject line, non-sensitive)
        ("notification.generic", {"title": "123\r\nBcc: x@evil.example", "body": "b"}),
        ("notification.generic", {"title": "123\nBcc: x@evil.example\n\nbody", "body": "b"}),
        ("notification.generic", {"title": "Hi\r\nBcc: x@evil.example\r\nX-Evil: 1", "body": "b"}),
        ("notification.generic", {"title": "Hi\u2028Bcc: x@evil.example\x85X-Evil: 1", "body": "b"}),
    ],
)
async def test_line_breaks_in_template_variables_cannot_add_headers(
    intake: Intake, key: str, template: str, variables: dict[str, Any]
) -> None:
    response = await intake.post(payload(template=template, variables=variables, locale="en"), key)
    assert response.status_code == 202, response.text
    mime, message = await _stored_message(intake, key)
    names = _header_names(mime)
    assert "bcc" not in names
    assert "x-evil" not in names
    assert message["Bcc"] is None
    assert message["X-Evil"] is None
    assert names.count("subject") == 1
    subject = str(message["Subject"])
    assert "\r" not in subject
    assert "\n" not in subject
    assert "Bcc" in subject  # the text is kept, as text
    assert [str(a) for a in message["To"].addresses] == ["Ann Lee <ann@example.com>"]


@pytest.mark.parametrize(
    "overrides",
    [
        {"to": [{"email": "ann@example.com", "name": "Ann\r\nBcc: x@evil.example"}]},
        {"to": ["ann@example.com\r\nBcc: x@evil.example"]},
        {"cc": [{"email": "ann@example.com", "name": "Ann\nBcc: x@evil.example"}]},
        {"reply_to": "ann@example.com\nBcc: x@evil.example"},
        {"reply_to": {"email": "ann@example.com", "name": "A\rB"}},
        {"headers": {"X-Campaign": "winter\r\nBcc: x@evil.example"}},
        {"headers": {"X-Campaign": "winter\nBcc: x@evil.example"}},
        {"template": None, "variables": None, "locale": None, "subject": "Hi\r\nBcc: x@evil.example", "text": "t"},
    ],
)
async def test_line_breaks_in_addresses_names_and_headers_are_422(
    intake: Intake, key: str, overrides: dict[str, Any]
) -> None:
    error_of(await intake.post(payload(**overrides), key), 422, "validation_failed")
    assert await intake.deliveries(key) == []


# -- smtp mode, tokens -----------------------------------------------------------------------


async def test_auth_delivery_in_smtp_mode_is_queued(database_dsn: str, redis_addr: str, key: str) -> None:
    env = service_environment(
        database_dsn,
        redis_addr,
        MAIL_SMTP_MODE="smtp",
        MAIL_SMTP_ADDR=f"127.0.0.1:{free_port()}",
        MAIL_SMTP_FROM_EMAIL="noreply@example.com",
        MAIL_RETRY_BASE_DELAY="1h",
        MAIL_RETRY_MAX_DELAY="1h",
    )
    async with (
        running_service(env) as service,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{service.port}") as client,
    ):
        response = await client.post(PATH, json=payload(), headers={"Idempotency-Key": key})
    assert response.status_code == 202, response.text
    assert response.json()["status"] == "queued"
    async with connect(database_dsn) as db:
        row = await db.fetchrow("SELECT source, status, finished_at FROM deliveries WHERE idempotency_key = $1", key)
    assert row is not None
    assert row["source"] == "auth"
    assert row["status"] in ("queued", "sending")  # the SMTP server is down: never suppressed, never sent
    assert row["finished_at"] is None


@pytest.fixture(scope="module")
async def guarded(module_database: str, redis_addr: str) -> AsyncIterator[httpx.AsyncClient]:
    env = service_environment(
        module_database,
        redis_addr,
        MAIL_INTERNAL_HTTP_INTAKE_TOKENS="intake-token-1,intake-token-2",
        MAIL_INTERNAL_HTTP_OPERATOR_TOKENS="operator-token",
    )
    async with running_service(env) as service:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{service.port}") as client:
            yield client
        assert not service.events("http_unhandled_error"), service.output()
        logged = "\n".join(service.raw)
        assert "intake-token-1" not in logged
        assert "operator-token" not in logged


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "Bearer wrong-token",
        "Bearer",
        "Basic aW50YWtlLXRva2VuLTE6",
        "intake-token-1",
        "Bearer intake-token-1x",
        "Bearer intake-token-",
        "Bearer \xe9\xe8\xff-non-ascii",
        "\xe9\xe8\xff",
    ],
)
async def test_missing_or_wrong_tokens_are_401(guarded: httpx.AsyncClient, key: str, authorization: str | None) -> None:
    headers: dict[str, Any] = {"Idempotency-Key": key}
    if authorization is not None:
        headers["Authorization"] = authorization.encode("latin-1")
    response = await guarded.post(PATH, json=payload(), headers=headers)
    error_of(response, 401, "unauthorized")
    response = await guarded.get(PATH, headers={k: v for k, v in headers.items() if k == "Authorization"})
    error_of(response, 401, "unauthorized")


async def _raw_status(client: httpx.AsyncClient, authorization: bytes) -> int:
    """Send a request whose Authorization header no well-behaved client would send."""
    url = httpx.URL(str(client.base_url))
    reader, writer = await asyncio.open_connection(url.host, url.port)
    try:
        body = orjson.dumps(payload())
        writer.write(
            b"POST " + PATH.encode() + b" HTTP/1.1\r\nHost: x\r\nAuthorization: " + authorization + b"\r\n"
            b"Idempotency-Key: raw\r\nContent-Type: application/json\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body
        )
        await writer.drain()
        status_line = await reader.readline()
        return int(status_line.split()[1])
    finally:
        writer.close()


@pytest.mark.parametrize(
    "authorization",
    [b"Bearer ", b"Bearer  intake-token-1x", b"Bearer \x00intake-token-1", b"\x01\x02garbage", b"\xff" * 300],
)
async def test_malformed_authorization_headers_are_refused_never_a_500(
    guarded: httpx.AsyncClient, authorization: bytes
) -> None:
    status = await _raw_status(guarded, authorization)
    assert status in (400, 401), status  # h11 itself refuses control characters with a 400


@pytest.mark.parametrize("token", ["intake-token-1", "intake-token-2"])
async def test_intake_token_may_only_submit(guarded: httpx.AsyncClient, key: str, token: str) -> None:
    auth = {"Authorization": f"Bearer {token}"}
    response = await guarded.post(PATH, json=payload(), headers={**auth, "Idempotency-Key": key})
    assert response.status_code == 202, response.text
    error_of(await guarded.get(PATH, headers=auth), 403, "forbidden")
    error_of(await guarded.get(f"{PATH}/{response.json()['delivery_id']}", headers=auth), 403, "forbidden")


async def test_operator_token_may_use_every_route(guarded: httpx.AsyncClient, key: str) -> None:
    auth = {"Authorization": "Bearer operator-token"}
    response = await guarded.post(PATH, json=payload(), headers={**auth, "Idempotency-Key": key})
    assert response.status_code == 202, response.text
    assert (await guarded.get(PATH, headers=auth)).status_code not in (401, 403)
    lowercase = {"Authorization": "bearer operator-token"}
    assert (await guarded.get(PATH, headers=lowercase)).status_code not in (401, 403)
