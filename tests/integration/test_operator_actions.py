"""`operator_actions` (SPEC §14): every operator write leaves one row, written in its own
transaction, naming the actor by token fingerprint (never the token) or `trusted-network`."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest

from tests.integration.test_operator_resend import sent_notification
from tests.support.db_search import columns_holding
from tests.support.operator_api import API, collect, in_process, operator_env, wait_for_delivery
from tests.support.stream import xadd_command

OPERATOR_TOKEN = f"op-token-{uuid.uuid4().hex}"
FINGERPRINT = hashlib.sha256(OPERATOR_TOKEN.encode()).hexdigest()[:12]


@pytest.fixture
def env(database_dsn: str, redis_addr: str) -> dict[str, str]:
    return operator_env(database_dsn, redis_addr, MAIL_INTERNAL_HTTP_OPERATOR_TOKENS=f"other-token,{OPERATOR_TOKEN}")


@pytest.fixture
async def api(env: dict[str, str]) -> AsyncIterator[httpx.AsyncClient]:
    async with in_process(env) as client:
        client.headers["Authorization"] = f"Bearer {OPERATOR_TOKEN}"
        yield client


async def test_a_resend_is_recorded_with_the_token_fingerprint_and_never_the_token(
    api: httpx.AsyncClient, env: dict[str, str], redis_addr: str, database_dsn: str
) -> None:
    original = await sent_notification(api, env, redis_addr)
    url = f"{API}/deliveries/{original['delivery_id']}/resend"
    first = await api.post(url, headers={"Idempotency-Key": "audit-1"})
    assert first.status_code == 202, first.text
    replay = await api.post(url, headers={"Idempotency-Key": "audit-1"})
    assert replay.status_code == 200  # a replay writes nothing, so it records nothing
    second = await api.post(url)
    assert second.status_code == 202

    page = await api.get(f"{API}/operator-actions")
    assert page.status_code == 200, page.text
    items = page.json()["items"]
    assert [a["kind"] for a in items] == ["resend", "resend"]
    newest, oldest = items
    assert newest["target"] == {
        "delivery_id": original["delivery_id"],
        "resend_delivery_id": second.json()["delivery_id"],
    }
    assert oldest["target"]["resend_delivery_id"] == first.json()["delivery_id"]
    assert {a["actor"] for a in items} == {FINGERPRINT}
    assert {tuple(a["counts"].items()) for a in items} == {(("resent", 1),)}
    assert newest["created_at"] >= oldest["created_at"]
    assert await columns_holding(database_dsn, OPERATOR_TOKEN) == []


async def test_the_trail_pages_newest_first_and_filters_by_kind(
    api: httpx.AsyncClient, env: dict[str, str], redis_addr: str
) -> None:
    original = await sent_notification(api, env, redis_addr)
    created = []
    for _ in range(5):
        response = await api.post(f"{API}/deliveries/{original['delivery_id']}/resend")
        assert response.status_code == 202
        created.append(response.json()["delivery_id"])
    everything = await collect(api, "/operator-actions", limit=2)
    assert [a["target"]["resend_delivery_id"] for a in everything] == created[::-1]
    assert await collect(api, "/operator-actions", [("kind", "redrive")]) == []
    refused = await api.get(f"{API}/operator-actions", params={"kind": "nope", "cursor": "x"})
    assert refused.status_code == 422
    assert {p["field"] for p in refused.json()["error"]["details"]} == {"kind", "cursor"}


async def test_without_tokens_the_actor_is_the_trusted_network(database_dsn: str, redis_addr: str) -> None:
    env = operator_env(database_dsn, redis_addr)
    async with in_process(env) as api:
        original = await sent_notification(api, env, redis_addr)
        response = await api.post(f"{API}/deliveries/{original['delivery_id']}/resend")
        assert response.status_code == 202
        (action,) = (await api.get(f"{API}/operator-actions")).json()["items"]
    assert action["actor"] == "trusted-network"
    assert action["kind"] == "resend"


async def test_a_resend_that_fails_records_no_action(
    api: httpx.AsyncClient, env: dict[str, str], redis_addr: str
) -> None:
    first = await sent_notification(api, env, redis_addr)
    second = await sent_notification(api, env, redis_addr)
    assert (
        await api.post(f"{API}/deliveries/{first['delivery_id']}/resend", headers={"Idempotency-Key": "k"})
    ).status_code == 202
    conflict = await api.post(f"{API}/deliveries/{second['delivery_id']}/resend", headers={"Idempotency-Key": "k"})
    assert conflict.status_code == 409
    items = (await api.get(f"{API}/operator-actions")).json()["items"]
    assert [a["target"]["delivery_id"] for a in items] == [first["delivery_id"]]


async def test_cancels_and_suppression_changes_are_recorded_only_when_they_wrote(
    api: httpx.AsyncClient, env: dict[str, str], redis_addr: str
) -> None:
    later = {"to": ["held@example.com"], "subject": "s", "text": "t", "send_at": "2100-01-01T00:00:00Z"}
    await xadd_command(redis_addr, env["MAIL_REDIS_COMMAND_STREAM"], later, key=f"held-{uuid.uuid4().hex}")
    queued = await wait_for_delivery(api, [("recipient", "held@example.com")], status="queued")
    cancel = f"{API}/deliveries/{queued['delivery_id']}/cancel"
    assert (await api.post(cancel)).status_code == 200
    assert (await api.post(cancel)).status_code == 409  # wrote nothing: no action
    entry = f"{API}/suppressions/Ann@Example.com"
    assert (await api.put(entry, json={"reason": "manual", "note": "asked"})).status_code == 201
    assert (await api.put(entry, json={"reason": "complaint"})).status_code == 200
    assert (await api.put(entry, json={"reason": "bogus"})).status_code == 422
    assert (await api.delete(entry)).status_code == 204
    assert (await api.delete(entry)).status_code == 404

    items = await collect(api, "/operator-actions")
    assert [(a["kind"], a["target"]) for a in reversed(items)] == [
        ("cancel", {"delivery_id": queued["delivery_id"]}),
        ("suppression_add", {"address": "ann@example.com", "reason": "manual"}),
        ("suppression_add", {"address": "ann@example.com", "reason": "complaint"}),
        ("suppression_remove", {"address": "ann@example.com"}),
    ]
    assert {a["actor"] for a in items} == {FINGERPRINT}
    assert items[-2]["note"] == "asked"
