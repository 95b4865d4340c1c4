"""`POST /deliveries/{id}/resend`: a new delivery from the stored payload, through normal scheduling."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from sqlalchemy import text

from mailsvc.adapters.postgres.engine import create_engine
from mailsvc.adapters.postgres.intake_store import IntakeStore
from mailsvc.adapters.postgres.read_store import ReadStore
from mailsvc.adapters.templates import TemplateCatalog
from mailsvc.domain.model import Address, ResendSource
from mailsvc.errors import NotFound
from mailsvc.services.acceptance import AcceptanceService
from mailsvc.services.resend import ResendService
from tests.conftest import REPO
from tests.support.operator_api import API, in_process, operator_env, wait_for_delivery, wait_for_status
from tests.support.stream import xadd_command


@pytest.fixture
def env(database_dsn: str, redis_addr: str) -> dict[str, str]:
    return operator_env(database_dsn, redis_addr)


@pytest.fixture
async def api(env: dict[str, str]) -> AsyncIterator[httpx.AsyncClient]:
    async with in_process(env) as client:
        yield client


async def sent_notification(api: httpx.AsyncClient, env: dict[str, str], redis_addr: str) -> dict[str, object]:
    """A notification delivery (stream → stub provider) that reached `sent`."""
    tag = uuid.uuid4().hex[:12]
    payload = {
        "to": [{"email": "ann@example.com", "name": "Ann Lee"}],
        "cc": ["carl@example.com"],
        "bcc": ["audit@example.com"],
        "reply_to": {"email": "support@example.com", "name": "Support"},
        "template": "notification.generic",
        "locale": "pt-BR",
        "variables": {"title": "Olá", "body": "Uma mensagem"},
        "headers": {"X-Campaign": "winter"},
        "tags": {"run": tag},
        "priority": "high",
    }
    await xadd_command(redis_addr, env["MAIL_REDIS_COMMAND_STREAM"], payload, key=f"n-{tag}")
    return await wait_for_delivery(api, [("tag", f"run:{tag}")], status="sent")


async def test_resend_creates_a_new_delivery_that_is_sent(
    api: httpx.AsyncClient, env: dict[str, str], redis_addr: str
) -> None:
    original = await sent_notification(api, env, redis_addr)
    response = await api.post(f"{API}/deliveries/{original['delivery_id']}/resend", headers={"Idempotency-Key": "r-1"})
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["resend_of"] == original["delivery_id"]
    assert body["status"] == "queued"
    assert body["idempotent_replay"] is False
    assert body["delivery_id"] != original["delivery_id"]

    resent = await wait_for_status(api, body["delivery_id"], "sent")
    assert resent["source"] == "resend"
    assert resent["resend_of"] == original["delivery_id"]
    assert resent["idempotency_key"] == "r-1"
    assert resent["message_id"] != original["message_id"]
    assert resent["expires_at"] is None
    assert [a["outcome"] for a in resent["attempts"]] == ["sent"]

    before = (await api.get(f"{API}/deliveries/{original['delivery_id']}", params={"include": "body"})).json()
    after = (await api.get(f"{API}/deliveries/{body['delivery_id']}", params={"include": "body"})).json()
    same = ("subject", "text_body", "html_body", "reply_to", "headers", "tags", "template", "locale", "priority")
    assert {k: after[k] for k in same} == {k: before[k] for k in same}
    assert after["template_digest"] == before["template_digest"] is not None
    assert [(r["kind"], r["address"], r["name"]) for r in after["recipients"]] == [
        (r["kind"], r["address"], r["name"]) for r in before["recipients"]
    ]
    assert before["resends"] == [body["delivery_id"]]


async def test_same_key_replays_and_another_original_conflicts(
    api: httpx.AsyncClient, env: dict[str, str], redis_addr: str
) -> None:
    first = await sent_notification(api, env, redis_addr)
    second = await sent_notification(api, env, redis_addr)
    url = f"{API}/deliveries/{first['delivery_id']}/resend"
    created = await api.post(url, headers={"Idempotency-Key": "same-key"})
    replay = await api.post(url, headers={"Idempotency-Key": "same-key"})
    assert created.status_code == 202
    assert replay.status_code == 200
    assert replay.json()["delivery_id"] == created.json()["delivery_id"]
    assert replay.json()["idempotent_replay"] is True
    assert replay.json()["resend_of"] == first["delivery_id"]

    conflict = await api.post(
        f"{API}/deliveries/{second['delivery_id']}/resend", headers={"Idempotency-Key": "same-key"}
    )
    assert conflict.status_code == 409
    assert conflict.json()["error"]["code"] == "idempotency_key_conflict"

    # without a key, every resend is a new delivery
    a = await api.post(url)
    b = await api.post(url)
    assert a.status_code == b.status_code == 202
    assert len({a.json()["delivery_id"], b.json()["delivery_id"], created.json()["delivery_id"]}) == 3
    detail = (await api.get(f"{API}/deliveries/{first['delivery_id']}")).json()
    assert len(detail["resends"]) == 3


async def test_suppressed_auth_delivery_can_be_resent_unless_sensitive(api: httpx.AsyncClient) -> None:
    submitted = await api.post(
        f"{API}/deliveries",
        json={"to": ["bob@example.com"], "subject": "Welcome", "text": "Glad you are here."},
        headers={"Idempotency-Key": "auth-1"},
    )
    assert submitted.status_code == 202
    assert submitted.json()["status"] == "suppressed"
    response = await api.post(f"{API}/deliveries/{submitted.json()['delivery_id']}/resend")
    assert response.status_code == 202
    resent = await wait_for_status(api, response.json()["delivery_id"], "sent")
    assert resent["subject"] == "Welcome"

    # a login code is sensitive: gone once suppressed, and never sent again (SPEC §13)
    code = await api.post(
        f"{API}/deliveries",
        json={
            "to": ["bob@example.com"],
            "template": "auth.login_code",
            "variables": {"code": "123456", "expires_in_minutes": 10},
        },
        headers={"Idempotency-Key": "auth-2"},
    )
    refused = await api.post(f"{API}/deliveries/{code.json()['delivery_id']}/resend")
    assert refused.status_code == 409
    assert refused.json()["error"]["code"] == "content_redacted"


async def test_only_terminal_deliveries_can_be_resent(
    api: httpx.AsyncClient, env: dict[str, str], redis_addr: str
) -> None:
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    payload = {"to": ["later@example.com"], "subject": "Later", "text": "Not yet", "send_at": later}
    await xadd_command(redis_addr, env["MAIL_REDIS_COMMAND_STREAM"], payload, key="later-1")
    queued = await wait_for_delivery(api, [("recipient", "later@example.com")], status="queued")
    response = await api.post(f"{API}/deliveries/{queued['delivery_id']}/resend")
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "not_resendable"
    listed = (await api.get(f"{API}/deliveries", params={"source": "resend"})).json()
    assert listed["items"] == []


@pytest.mark.parametrize("delivery_id", [str(uuid.uuid4()), "not-a-uuid", "0"])
async def test_unknown_delivery_is_404(api: httpx.AsyncClient, delivery_id: str) -> None:
    response = await api.post(f"{API}/deliveries/{delivery_id}/resend")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


async def test_invalid_idempotency_key_is_422(api: httpx.AsyncClient) -> None:
    submitted = await api.post(
        f"{API}/deliveries",
        json={"to": ["bob@example.com"], "subject": "s", "text": "t"},
        headers={"Idempotency-Key": "auth-2"},
    )
    response = await api.post(
        f"{API}/deliveries/{submitted.json()['delivery_id']}/resend", headers={"Idempotency-Key": "not ok!"}
    )
    assert response.status_code == 422
    assert response.json()["error"]["details"][0]["field"] == "Idempotency-Key"


async def test_resend_of_a_delivery_deleted_meanwhile_is_not_found(
    api: httpx.AsyncClient, env: dict[str, str], redis_addr: str, database_dsn: str
) -> None:
    """Retention may delete the original between the resend reading it and inserting the copy."""
    original = await sent_notification(api, env, redis_addr)
    engine = create_engine(database_dsn)

    class RetentionWinsTheRace(ReadStore):
        async def load_resend_source(self, delivery_id: uuid.UUID) -> ResendSource | None:
            source = await super().load_resend_source(delivery_id)
            async with engine.begin() as conn:
                await conn.execute(text("DELETE FROM deliveries WHERE delivery_id = :id"), {"id": delivery_id})
            return source

    acceptance = AcceptanceService(
        store=IntakeStore(engine),
        renderer=TemplateCatalog.load(REPO / "templates"),
        from_address=Address("mailer@example.com"),
        suppress_auth=False,
        idempotency_ttl=timedelta(hours=1),
        stream_key="unused",
    )
    resends = ResendService(sources=RetentionWinsTheRace([engine]), acceptance=acceptance)
    try:
        with pytest.raises(NotFound, match="deleted"):
            await resends.resend(uuid.UUID(str(original["delivery_id"])), "r-gone", actor="trusted-network")
        async with engine.connect() as conn:
            copies = (await conn.execute(text("SELECT count(*) FROM deliveries WHERE source = 'resend'"))).scalar()
            keys = (await conn.execute(text("SELECT count(*) FROM idempotency_keys WHERE key = 'r-gone'"))).scalar()
    finally:
        await engine.dispose()
    assert (copies, keys) == (0, 0)  # the whole transaction rolled back
