"""Malformed commands and templates as operators see them; reads served by the replicas."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import httpx
import orjson
import pytest

from mailsvc.adapters.templates import TemplateCatalog
from tests.support.infra import PostgresServer, unique_name, wait_until
from tests.support.operator_api import API, REPO_TEMPLATES, collect, in_process, operator_env
from tests.support.stream import xadd_command


async def add_malformed(dsn: str, rows: list[tuple[str, bytes, datetime]]) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.executemany(
            "INSERT INTO malformed_commands (stream_key, stream_entry_id, idempotency_key, reason, message, "
            "raw_fields, received_at) VALUES ('mail:commands', $1, NULL, $2, 'why', $3, $4)",
            [(f"{n}-0", reason, raw, at) for n, (reason, raw, at) in enumerate(rows)],
        )
    finally:
        await conn.close()


async def test_malformed_commands_newest_first_filtered_by_reason(database_dsn: str, redis_addr: str) -> None:
    start = datetime.now(UTC) - timedelta(hours=1)
    rows = [
        (
            "invalid_json" if n % 3 else "invalid_encoding",
            b'{"payload": "\xff\xfe broken ' + str(n).encode() + b'"}',
            start + timedelta(seconds=n // 2),  # pairs share a timestamp: the id breaks the tie
        )
        for n in range(30)
    ]
    await add_malformed(database_dsn, rows)
    async with in_process(operator_env(database_dsn, redis_addr)) as api:
        everything = await collect(api, "/malformed-commands", limit=4)
        encoding = await collect(api, "/malformed-commands", [("reason", "invalid_encoding")], limit=3)
        nothing = await collect(api, "/malformed-commands", [("reason", "unknown_type")])
        with_raw = await collect(api, "/malformed-commands", [("include", "raw")], limit=7)
    assert [m["stream_entry_id"] for m in everything] == [f"{n}-0" for n in reversed(range(30))]
    assert [m["stream_entry_id"] for m in encoding] == [f"{n}-0" for n in reversed(range(30)) if n % 3 == 0]
    assert nothing == []
    assert not any("raw_fields" in m for m in everything)  # only when asked for (SPEC §13)
    assert [m["stream_entry_id"] for m in with_raw] == [m["stream_entry_id"] for m in everything]
    first = everything[-1]
    assert with_raw[-1]["raw_fields"] == '{"payload": "\ufffd\ufffd broken 0"}'
    assert first["reason"] == "invalid_encoding"
    assert first["message"] == "why"
    assert first["idempotency_key"] is None
    assert first["stream_key"] == "mail:commands"
    assert isinstance(first["malformed_id"], int)


async def test_templates_are_the_catalog(database_dsn: str, redis_addr: str) -> None:
    async with in_process(operator_env(database_dsn, redis_addr)) as api:
        body = (await api.get(f"{API}/templates")).json()
    catalog = TemplateCatalog.load(Path(REPO_TEMPLATES))
    assert [t["id"] for t in body["items"]] == [t.id for t in catalog.templates()]
    login = next(t for t in body["items"] if t["id"] == "auth.login_code")
    assert "code" in login["variables"]
    assert "code" in login["required_variables"]
    assert {"en", "pt-BR"} <= set(login["locales"])


@pytest.fixture
async def replicas(pg: PostgresServer, template_database: str) -> AsyncIterator[list[str]]:
    names = [unique_name("mailsvc_r") for _ in range(2)]
    for name in names:
        await pg.admin(f'CREATE DATABASE "{name}" TEMPLATE "{template_database}"')
    yield [pg.dsn_for(name) for name in names]
    for name in names:
        await pg.admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def test_reads_go_round_robin_to_the_replicas_and_writes_to_the_primary(
    database_dsn: str, redis_addr: str, replicas: list[str]
) -> None:
    # stand-in replicas: separate databases, each recognisable by what it holds
    now = datetime.now(UTC)
    for n, dsn in enumerate(replicas):
        await add_malformed(dsn, [(f"replica_{n}", b"{}", now)])
    env = operator_env(database_dsn, redis_addr, MAIL_POSTGRES_REPLICA_DSNS=",".join(replicas))
    async with in_process(env) as api:
        seen = []
        for _ in range(4):
            items = (await api.get(f"{API}/malformed-commands")).json()["items"]
            seen.append(items[0]["reason"])
        submitted = await api.post(
            f"{API}/deliveries",
            json={"to": ["ann@example.com"], "subject": "s", "text": "t"},
            headers={"Idempotency-Key": "primary-1"},
        )
        assert submitted.status_code == 202
        listed = (await api.get(f"{API}/deliveries")).json()["items"]
    assert sorted(seen) == ["replica_0", "replica_0", "replica_1", "replica_1"]
    assert seen[0] != seen[1]
    assert listed == []  # the new delivery is on the primary; these "replicas" never receive it
    conn = await asyncpg.connect(database_dsn)
    try:
        assert await conn.fetchval("SELECT count(*) FROM deliveries") == 1
    finally:
        await conn.close()


async def test_no_replicas_means_the_primary_serves_reads(database_dsn: str, redis_addr: str) -> None:
    async with in_process(operator_env(database_dsn, redis_addr)) as api:
        submitted = await api.post(
            f"{API}/deliveries",
            json={"to": ["ann@example.com"], "subject": "s", "text": "t"},
            headers={"Idempotency-Key": "primary-2"},
        )
        listed = (await api.get(f"{API}/deliveries")).json()["items"]
    assert [d["delivery_id"] for d in listed] == [submitted.json()["delivery_id"]]
    assert submitted.status_code == httpx.codes.ACCEPTED


async def test_operator_routes_need_an_operator_token_when_tokens_are_set(database_dsn: str, redis_addr: str) -> None:
    env = operator_env(
        database_dsn,
        redis_addr,
        MAIL_INTERNAL_HTTP_INTAKE_TOKENS="intake-secret",
        MAIL_INTERNAL_HTTP_OPERATOR_TOKENS="operator-secret",
    )
    async with in_process(env) as api:
        for path in ("/deliveries", "/dead-letters", "/malformed-commands", "/templates", "/openapi.json"):
            assert (await api.get(API + path)).status_code == 401
            intake = await api.get(API + path, headers={"Authorization": "Bearer intake-secret"})
            assert intake.status_code == 403
            assert intake.json()["error"]["code"] == "forbidden"
            operator = await api.get(API + path, headers={"Authorization": "Bearer operator-secret"})
            assert operator.status_code == 200, path


async def test_raw_fields_only_on_request_and_never_with_the_variables(database_dsn: str, redis_addr: str) -> None:
    code = f"{secrets.randbelow(10**9):09d}"
    env = operator_env(database_dsn, redis_addr)
    async with in_process(env) as api:
        payload = {"to": ["ann@example.com"], "template": "auth.login_code", "variables": {"code": code}}
        await xadd_command(redis_addr, env["MAIL_REDIS_COMMAND_STREAM"], payload, key="missing-one")
        await wait_until(lambda: _listed(api), what="the command recorded as malformed (expires_in_minutes is missing)")
        plain = await api.get(f"{API}/malformed-commands")
        raw = await api.get(f"{API}/malformed-commands", params={"include": "raw"})
        refused = await api.get(f"{API}/malformed-commands", params={"include": "body"})
    assert refused.status_code == 422
    (item,) = plain.json()["items"]
    assert "raw_fields" not in item
    assert item["reason"] == "missing_variables"
    assert code not in plain.text
    assert code not in raw.text
    (shown,) = raw.json()["items"]
    recorded = orjson.loads(shown["raw_fields"])
    assert recorded["idempotency_key"] == "missing-one"
    assert orjson.loads(recorded["payload"]) == {**payload, "variables": {"code": "***"}}


async def _listed(api: httpx.AsyncClient) -> bool:
    return bool((await api.get(f"{API}/malformed-commands")).json()["items"])
