"""`GET /openapi.json` is kept true: schemathesis sends generated requests (valid and invalid) to a
running `mailsvc serve` holding deliveries of every kind; no response may be a 5xx and every one must
match the document (status code, content type, headers, body schema)."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.support.infra import wait_until
from tests.support.operator_api import API, operator_env, wait_for_delivery
from tests.support.process import running_service
from tests.support.stream import xadd_command

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
]
HELD = "held"
EXAMPLES = 25  # per operation and generation mode: bounded, the whole run stays well under a minute


async def populate(api: httpx.AsyncClient, stream_key: str, redis_addr: str) -> tuple[dict[str, str], dict[str, str]]:
    """Deliveries in every terminal and waiting state, a resend, dead letters and malformed commands;
    their ids, and a valid `cursor` of each list."""
    run = uuid.uuid4().hex[:8]
    auth = await api.post(
        f"{API}/deliveries",
        json={
            "to": ["ann@example.com"],
            "template": "auth.login_code",
            "variables": {"code": "1", "expires_in_minutes": 5},
        },
        headers={"Idempotency-Key": f"auth-{run}"},
    )
    raw = {
        "to": [{"email": "bob@example.com", "name": "Bob"}],
        "cc": ["carl@example.com"],
        "reply_to": "help@example.com",
        "subject": "Hello",
        "text": "Hi",
        "html": "<p>Hi</p>",
        "tags": {"run": run},
        "headers": {"X-Run": run},
    }
    await xadd_command(redis_addr, stream_key, raw, key=f"sent-{run}")
    for n in range(2):
        bounce = {"to": [f"dana{n}+bounce@example.com"], "subject": "No", "text": "Bounce", "tags": {"bounce": run}}
        await xadd_command(redis_addr, stream_key, bounce, key=f"bounce-{run}-{n}")
    later = {"to": ["eve@example.com"], "subject": "Later", "text": "x", "send_at": "2100-01-01T00:00:00Z"}
    await xadd_command(redis_addr, stream_key, later, key=f"later-{run}")
    held = {"to": ["fay@example.com"], "subject": "Held", "text": "x", "send_at": "2100-01-01T00:00:00Z"}
    await xadd_command(redis_addr, stream_key, held, key=f"held-{run}")
    await xadd_command(redis_addr, stream_key, b"{not json", key=f"bad-{run}")
    await xadd_command(redis_addr, stream_key, b'{"to": ["\xff\xfe"]}', key=f"bytes-{run}")
    sent = await wait_for_delivery(api, [("tag", f"run:{run}")], status="sent")
    queued = await wait_for_delivery(api, [("recipient", "eve@example.com")], status="queued")
    kept = await wait_for_delivery(api, [("recipient", "fay@example.com")], status="queued")

    async def listed(path: str, count: int) -> list[dict[str, Any]] | None:
        items: list[dict[str, Any]] = (await api.get(API + path)).json()["items"]
        return items if len(items) == count else None

    dead = (await wait_until(lambda: listed("/dead-letters", 2), what="two dead letters"))[0]
    await wait_until(lambda: listed("/malformed-commands", 2), what="two malformed commands")
    resent = await api.post(f"{API}/deliveries/{sent['delivery_id']}/resend")
    ids = {
        "suppressed": auth.json()["delivery_id"],
        "sent": sent["delivery_id"],
        "dead": dead["delivery_id"],
        "queued": queued["delivery_id"],
        "resent": resent.json()["delivery_id"],
        HELD: kept["delivery_id"],  # queued until the explicit calls: fuzzing never cancels it
    }
    cursors = {}
    for path in ("/deliveries", "/dead-letters", "/malformed-commands", "/events"):
        cursors[path] = (await api.get(API + path, params={"limit": "1"})).json()["next_cursor"]
        assert cursors[path]
    return ids, cursors


def run_schemathesis(
    schema: Any, base_url: str, ids: dict[str, str], cursors: dict[str, str], statuses: Counter[str]
) -> list[str]:
    """Every operation, positive and negative, plus explicit calls that must return real data."""
    failures: list[str] = []

    def attempt(label: str, test: Callable[[], None]) -> None:
        try:
            test()
        except Unsatisfiable:
            assert "negative" in label, label  # nothing to get wrong in a request without parameters
        except Exception as exc:
            failures.append(f"{label}: {exc}")

    def fuzz(operation: Any, mode: GenerationMode, examples: int, **fixed: Any) -> Callable[[], None]:
        @settings(
            max_examples=examples,
            deadline=None,
            database=None,
            derandomize=True,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy(generation_mode=mode, **fixed))
        def test(case: Any) -> None:
            response = case.call_and_validate(base_url=base_url, checks=CHECKS)
            statuses[f"{operation.label} {response.status_code}"] += 1

        return test

    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            attempt(f"{operation.label} [{mode.value}]", fuzz(operation, mode, EXAMPLES))
        path = operation.path.removeprefix(API)
        if path in cursors:  # random cursors are refused: page on with a real one, the filters generated
            fixed_query = {"query": {"after" if path == "/events" else "cursor": cursors[path]}}
            attempt(f"{operation.label} [cursor]", fuzz(operation, GenerationMode.POSITIVE, EXAMPLES, **fixed_query))
        if "{delivery_id}" in operation.path:
            for name, delivery_id in ids.items():
                if name == HELD:
                    continue
                fixed = {"path_parameters": {"delivery_id": delivery_id}}
                attempt(f"{operation.label} [{name}]", fuzz(operation, GenerationMode.POSITIVE, 5, **fixed))

    def call(method: str, path: str, status: int, **parts: Any) -> None:
        case = schema[API + path][method].Case(**parts)
        attempt(f"{method} {path} {parts} expecting {status}", lambda: _expect(case, base_url, status))

    for path in ("/deliveries", "/dead-letters", "/malformed-commands", "/events", "/templates", "/openapi.json"):
        call("GET", path, 200)
    for delivery_id in ids.values():
        one = {"delivery_id": delivery_id}
        call("GET", "/deliveries/{delivery_id}", 200, path_parameters=one, query={"include": "body"})
        call("GET", "/deliveries/{delivery_id}/attempts", 200, path_parameters=one)
    body = {"to": ["zed@example.com"], "subject": "s", "text": "t", "tags": {"a": "b"}, "priority": "low"}
    submit = {"headers": {"Idempotency-Key": "contract-1"}, "body": body, "media_type": "application/json"}
    call("POST", "/deliveries", 202, **submit)
    call("POST", "/deliveries", 200, **submit)
    resend = {"path_parameters": {"delivery_id": ids["dead"]}, "headers": {"Idempotency-Key": "contract-r"}}
    call("POST", "/deliveries/{delivery_id}/resend", 202, **resend)
    call("POST", "/deliveries/{delivery_id}/resend", 200, **resend)
    call("POST", "/deliveries/{delivery_id}/resend", 409, path_parameters={"delivery_id": ids[HELD]})
    call("POST", "/deliveries/{delivery_id}/cancel", 409, path_parameters={"delivery_id": ids["sent"]})
    call("POST", "/deliveries/{delivery_id}/cancel", 200, path_parameters={"delivery_id": ids[HELD]})
    entry = {"path_parameters": {"address": "Zed@Example.com"}, "media_type": "application/json"}
    call("PUT", "/suppressions/{address}", 201, body={"reason": "manual", "note": "contract"}, **entry)
    call("PUT", "/suppressions/{address}", 200, body={"reason": "complaint"}, **entry)
    call("GET", "/suppressions/{address}", 200, path_parameters={"address": "zed@example.com"})
    call("GET", "/suppressions", 200, query={"reason": "complaint"})
    call("DELETE", "/suppressions/{address}", 204, path_parameters={"address": "zed@example.com"})
    call("DELETE", "/suppressions/{address}", 404, path_parameters={"address": "zed@example.com"})
    return failures


def _expect(case: Any, base_url: str, status: int) -> None:
    response = case.call_and_validate(base_url=base_url, checks=CHECKS)
    assert response.status_code == status, response.text


async def test_every_response_matches_the_openapi_document(
    database_dsn: str, redis_addr: str, capsys: pytest.CaptureFixture[str]
) -> None:
    env = operator_env(database_dsn, redis_addr, MAIL_RETRY_BASE_DELAY="100ms")
    async with running_service(env) as service:
        base_url = f"http://127.0.0.1:{service.port}"
        async with httpx.AsyncClient(base_url=base_url, timeout=30) as api:
            ids, cursors = await populate(api, env["MAIL_REDIS_COMMAND_STREAM"], redis_addr)
        schema = await asyncio.to_thread(schemathesis.openapi.from_url, f"{base_url}{API}/openapi.json")
        statuses: Counter[str] = Counter()
        failures = await asyncio.to_thread(run_schemathesis, schema, base_url, ids, cursors, statuses)
        assert service.process.returncode is None
    with capsys.disabled():
        print(f"\nschemathesis: {sum(statuses.values())} generated requests", dict(sorted(statuses.items())))
    assert not failures, "\n\n".join(failures)
    answered = {label.rsplit(" ", 1)[0] for label in statuses}
    assert len(answered) == len(list(schema.get_all_operations())), answered
    assert any(label.endswith((" 200", " 202")) for label in statuses)
