"""`POST /malformed-commands/{id}/replay` (SPEC §14): a malformed command accepted again, as
recorded or corrected, as the stream would; a second replay returns the same delivery."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tests.support.infra import wait_until
from tests.support.operator_api import API, in_process, operator_env, wait_for_status
from tests.support.stream import xadd_command


@pytest.fixture
def env(database_dsn: str, redis_addr: str) -> dict[str, str]:
    return operator_env(database_dsn, redis_addr)


@pytest.fixture
async def api(env: dict[str, str]) -> AsyncIterator[httpx.AsyncClient]:
    async with in_process(env) as client:
        yield client


async def malformed(api: httpx.AsyncClient, key: str) -> dict[str, Any]:
    async def found() -> dict[str, Any] | None:
        items = (await api.get(f"{API}/malformed-commands")).json()["items"]
        return next((dict(m) for m in items if m["idempotency_key"] == key), None)

    result: dict[str, Any] = await wait_until(found, what=f"malformed command {key}")
    return result


async def test_a_missing_variable_corrected_becomes_one_delivery(
    api: httpx.AsyncClient, env: dict[str, str], redis_addr: str
) -> None:
    key = f"n-{uuid.uuid4().hex[:8]}"
    payload = {"to": ["ann@example.com"], "template": "notification.generic", "variables": {"title": "Hi"}}
    await xadd_command(redis_addr, env["MAIL_REDIS_COMMAND_STREAM"], payload, key=key)
    record = await malformed(api, key)
    assert record["reason"] == "missing_variables"
    url = f"{API}/malformed-commands/{record['malformed_id']}/replay"

    as_recorded = await api.post(url)  # still missing: every problem, nothing written
    assert as_recorded.status_code == 422
    assert "body" in as_recorded.json()["error"]["message"]

    corrected = {**payload, "variables": {"title": "Hi", "body": "Now complete"}}
    first = await api.post(url, json={"payload": corrected})
    assert first.status_code == 202, first.text
    delivery_id = first.json()["delivery_id"]
    again = await api.post(url, json={"payload": {**corrected, "variables": {"title": "X", "body": "Y"}}})
    assert again.status_code == 200
    assert again.json() == {**first.json(), "idempotent_replay": True, "status": again.json()["status"]}

    sent = await wait_for_status(api, delivery_id, "sent")
    assert (sent["source"], sent["idempotency_key"], sent["subject"]) == ("notification", key, "Hi")
    listed = await malformed(api, key)
    assert listed["replayed_as"] == delivery_id
    assert listed["replayed_at"] is not None
    deliveries = (await api.get(f"{API}/deliveries", params={"source": "notification"})).json()["items"]
    assert [d["delivery_id"] for d in deliveries] == [delivery_id]
    (action,) = (await api.get(f"{API}/operator-actions", params={"kind": "replay"})).json()["items"]
    assert action["target"] == {"malformed_id": record["malformed_id"], "delivery_id": delivery_id}


async def test_a_conflicting_command_replays_as_recorded_under_another_key(
    api: httpx.AsyncClient, env: dict[str, str], redis_addr: str
) -> None:
    key = f"c-{uuid.uuid4().hex[:8]}"
    stream = env["MAIL_REDIS_COMMAND_STREAM"]
    await xadd_command(redis_addr, stream, {"to": ["a@example.com"], "subject": "One", "text": "1"}, key=key)
    await xadd_command(redis_addr, stream, {"to": ["b@example.com"], "subject": "Two", "text": "2"}, key=key)
    record = await malformed(api, key)
    assert record["reason"] == "idempotency_conflict"
    url = f"{API}/malformed-commands/{record['malformed_id']}/replay"
    same_key = await api.post(url)
    assert same_key.status_code == 409
    assert same_key.json()["error"]["code"] == "idempotency_key_conflict"
    replayed = await api.post(url, json={"idempotency_key": f"{key}-replayed"})
    assert replayed.status_code == 202, replayed.text
    sent = await wait_for_status(api, replayed.json()["delivery_id"], "sent")
    assert (sent["subject"], sent["to"]) == ("Two", ["b@example.com"])


async def test_unknown_ids_and_bad_bodies(api: httpx.AsyncClient) -> None:
    assert (await api.post(f"{API}/malformed-commands/999999/replay")).status_code == 404
    assert (await api.post(f"{API}/malformed-commands/abc/replay")).status_code == 404
    bad = await api.post(f"{API}/malformed-commands/1/replay", json={"payload": [], "extra": 1})
    assert bad.status_code == 422
    assert {p["field"] for p in bad.json()["error"]["details"]} == {"payload", "extra"}
