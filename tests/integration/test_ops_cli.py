"""`mailsvc ops` end to end: a `mailsvc serve` child (stub provider, operator token), deliveries
seeded through the real doors (XADD, POST), the CLI parsed by the real `mailsvc` parser.

Most commands run in a thread of the test (`ops_command` with its output captured); the entry
point itself (`python -m mailsvc ops`) runs where the environment and exit code matter.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import io
import json
import os
import re
import socket
import sys
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from mailsvc.cli import build_parser
from mailsvc.ops.cli import ops_command
from mailsvc.ops.tables import LINE_WIDTH, cells
from tests.support.infra import closed_port, wait_until
from tests.support.operator_api import API, collect, operator_env, wait_for_delivery
from tests.support.process import ServiceProcess, running_service
from tests.support.stream import xadd_command

TOKEN = "ops-cli-operator-token-0b6f4c1e"


@dataclass(frozen=True)
class Result:
    code: int
    out: str
    err: str

    @property
    def lines(self) -> list[str]:
        return self.out.splitlines()

    def json(self) -> Any:
        return json.loads(self.out)


def run_ops(env: Mapping[str, str], *argv: str) -> Result:
    """`mailsvc ops ARGV` through the real parser, with this environment."""
    args = build_parser().parse_args(["ops", *argv])
    out, err = io.StringIO(), io.StringIO()
    code = ops_command(args, env=env, out=out, err=err)
    return Result(code, out.getvalue(), err.getvalue())


async def ops(env: Mapping[str, str], *argv: str) -> Result:
    return await asyncio.to_thread(run_ops, env, *argv)


def child_env(extra: Mapping[str, str]) -> dict[str, str]:
    """This process's environment without any MAIL_/OTEL_ setting, plus `extra`."""
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("MAIL_", "OTEL_"))}
    return {**keep, **extra}


async def ops_process(env: Mapping[str, str], *argv: str) -> Result:
    """`python -m mailsvc ops ARGV` as a child process."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "mailsvc",
        "ops",
        *argv,
        env=dict(env),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(60):
        out, err = await process.communicate()
    assert process.returncode is not None
    return Result(process.returncode, out.decode(), err.decode())


@dataclass
class Service:
    process: ServiceProcess
    api: httpx.AsyncClient  # the API directly, with the operator token
    env: dict[str, str]  # its own environment (stream key)
    cli: dict[str, str]  # the CLI's environment: MAIL_API_URL and MAIL_API_TOKEN
    redis_addr: str

    async def xadd(self, payload: Any, key: str) -> None:
        await xadd_command(self.redis_addr, self.env["MAIL_REDIS_COMMAND_STREAM"], payload, key=key)


@pytest.fixture(scope="module")
async def service(module_database: str, redis_addr: str) -> AsyncIterator[Service]:
    env = operator_env(module_database, redis_addr, MAIL_INTERNAL_HTTP_OPERATOR_TOKENS=TOKEN)
    async with running_service(env) as process:
        url = f"http://127.0.0.1:{process.port}"
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with httpx.AsyncClient(base_url=url, headers=headers, timeout=30) as api:
            yield Service(process, api, env, {"MAIL_API_URL": url, "MAIL_API_TOKEN": TOKEN}, redis_addr)
        logged = "\n".join(process.raw + process.stderr)
        assert TOKEN not in logged
        assert not process.events("http_unhandled_error"), process.output()


@dataclass(frozen=True)
class Seeded:
    run: str  # the `run` tag every seeded delivery carries
    sent: dict[str, Any]  # a templated notification to two recipients, sent
    bounced: dict[str, Any]  # dead-lettered by the stub's `+bounce` rule
    queued: dict[str, Any]  # due in an hour
    suppressed: dict[str, Any]  # an auth login code (stub mode suppresses them)
    malformed: dict[str, Any]  # a stream entry whose payload is not JSON


@pytest.fixture(scope="module")
async def seeded(service: Service) -> Seeded:
    run = uuid.uuid4().hex[:12]

    def tags(case: str) -> dict[str, str]:
        return {"run": run, "case": case}

    await service.xadd(
        {
            "to": [{"email": "ann@example.com", "name": "Ann Lee"}],
            "cc": ["carl@example.com"],
            "template": "notification.generic",
            "locale": "pt-BR",
            "variables": {"title": "Olá", "body": "Uma mensagem de teste"},
            "tags": tags("sent"),
        },
        key=f"ops-sent-{run}",
    )
    await service.xadd(
        {"to": ["Zoe+bounce@Example.org"], "subject": "Bounce", "text": "will bounce", "tags": tags("bounced")},
        key=f"ops-bounced-{run}",
    )
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    await service.xadd(
        {"to": ["later@example.com"], "subject": "Later", "text": "not yet", "send_at": later, "tags": tags("queued")},
        key=f"ops-queued-{run}",
    )
    await service.xadd(b"{not json " + run.encode(), key=f"ops-malformed-{run}")
    submitted = await service.api.post(
        f"{API}/deliveries",
        json={
            "to": ["bob@example.com"],
            "template": "auth.login_code",
            "variables": {"code": "481516", "expires_in_minutes": 10},
            "tags": tags("suppressed"),
        },
        headers={"Idempotency-Key": f"ops-auth-{run}"},
    )
    assert submitted.status_code == 202, submitted.text

    async def one(case: str, status: str) -> dict[str, Any]:
        return await wait_for_delivery(service.api, [("tag", f"run:{run}"), ("tag", f"case:{case}")], status)

    async def malformed() -> dict[str, Any] | None:
        items = await collect(service.api, "/malformed-commands", [("reason", "invalid_json")])
        return next((m for m in items if m["idempotency_key"] == f"ops-malformed-{run}"), None)

    return Seeded(
        run,
        sent=await one("sent", "sent"),
        bounced=await one("bounced", "dead_lettered"),
        queued=await one("queued", "queued"),
        suppressed=await one("suppressed", "suppressed"),
        malformed=await wait_until(malformed, what="the malformed command"),
    )


def table_rows(result: Result) -> list[str]:
    """The table's lines without header and footer, after checking the whole output's width."""
    assert result.code == 0, result.err
    assert result.err == ""
    for line in result.lines:
        assert cells(line) <= LINE_WIDTH, line
    if result.lines == [f"no {result.lines[0][3:]}"]:
        return []
    rows = result.lines[1:]
    if rows[-1].startswith("  --cursor "):
        rows.pop()
    assert re.fullmatch(r"[0-9]+ [a-z ]+(; the next page with)?", rows.pop())
    return rows


def ids_in(rows: list[str]) -> list[str]:
    return [row.split()[0] for row in rows]


async def test_deliveries_list_filters_pages_and_json(service: Service, seeded: Seeded) -> None:
    run = f"run:{seeded.run}"
    listed = await ops(service.cli, "deliveries", "list", "--tag", run)
    api_items = await collect(service.api, "/deliveries", [("tag", run)])
    newest_first = [d["delivery_id"] for d in api_items]
    assert ids_in(table_rows(listed)) == newest_first
    assert len(newest_first) == 4
    assert listed.lines[0].split() == ["delivery", "status", "created", "(UTC)", "template", "to"]
    assert listed.lines[-1] == "4 deliveries"
    print(listed.out)  # the README's "Operator CLI" table comes from here (pytest -rP)

    (bounced_row,) = table_rows(await ops(service.cli, "deliveries", "list", "--tag", run, "--status", "dead_lettered"))
    bounced_to = seeded.bounced["to"][0]
    assert bounced_row.split() == [
        seeded.bounced["delivery_id"],
        "dead_lettered",
        *seeded.bounced["created_at"][:16].split("T"),
        "(raw",
        "content)",
        bounced_to,  # as the API gives it
    ]
    by_recipient = await ops(service.cli, "deliveries", "list", "--tag", run, "--recipient", "ANN@example.com")
    (sent_row,) = table_rows(by_recipient)
    assert sent_row.split()[0] == seeded.sent["delivery_id"]
    assert sent_row.endswith("ann@example.com +1")
    pivot = api_items[1]["created_at"]  # the batches of the consumer and the POST decide the order

    def created(d: dict[str, Any]) -> datetime:
        return datetime.fromisoformat(d["created_at"])

    filters = {
        ("--template", "notification.generic"): [seeded.sent],
        ("--source", "auth"): [seeded.suppressed],
        ("--tag", "case:queued"): [seeded.queued],
        ("--created-after", pivot): [d for d in api_items if created(d) >= datetime.fromisoformat(pivot)],
        ("--created-before", pivot): [d for d in api_items if created(d) < datetime.fromisoformat(pivot)],
    }
    for flag, expected in filters.items():
        rows = table_rows(await ops(service.cli, "deliveries", "list", "--tag", run, *flag))
        assert ids_in(rows) == [d["delivery_id"] for d in expected], flag

    as_json = await ops(service.cli, "--json", "deliveries", "list", "--tag", run, "--status", "sent")
    direct = await service.api.get(f"{API}/deliveries", params=[("tag", run), ("status", "sent")])
    assert as_json.code == 0
    assert as_json.json() == direct.json()

    first = await ops(service.cli, "deliveries", "list", "--tag", run, "--limit", "1")
    assert ids_in(table_rows(first)) == newest_first[:1]
    assert first.lines[-2] == "1 delivery; the next page with"
    assert first.lines[-1].startswith("  --cursor ")
    cursor = first.lines[-1].split()[1]
    second = await ops(service.cli, "deliveries", "list", "--tag", run, "--limit", "1", "--cursor", cursor)
    assert ids_in(table_rows(second)) == newest_first[1:2]

    every = await ops(service.cli, "deliveries", "list", "--tag", run, "--limit", "1", "--all", "--json")
    assert every.json() == {"items": api_items, "next_cursor": None}


async def test_deliveries_show_reads_as_a_detail(service: Service, seeded: Seeded) -> None:
    bounced = await ops(service.cli, "deliveries", "show", seeded.bounced["delivery_id"])
    assert bounced.code == 0, bounced.err
    text = bounced.out
    assert all(cells(line) <= LINE_WIDTH for line in bounced.lines)
    assert f"delivery      {seeded.bounced['delivery_id']}" in text
    assert "status        dead_lettered" in text
    assert "subject       Bounce" in text
    recipients = bounced.lines.index("recipients")
    assert bounced.lines[recipients + 2].split()[:4] == ["to", seeded.bounced["to"][0], "—", "refused"]
    attempts = bounced.lines.index("attempts")
    assert bounced.lines[attempts + 2].split()[0] == "1"
    assert "permanent_failure" in bounced.lines[attempts + 2]
    assert "550" in bounced.lines[attempts + 2]
    dead = bounced.lines.index("dead letter")
    assert bounced.lines[dead + 1].split() == ["reason", "permanent_failure"]
    assert "text body" not in text

    sent = await ops(service.cli, "deliveries", "show", seeded.sent["delivery_id"], "--body")
    assert sent.code == 0, sent.err
    assert "template      notification.generic, locale pt-BR, digest " in sent.out
    (tags,) = [line for line in sent.lines if line.startswith("tags ")]
    assert set(tags.split(None, 1)[1].split(", ")) == {f"run={seeded.run}", "case=sent"}
    assert "dead letter" not in sent.lines
    kinds = [line.split()[:2] for line in sent.lines[sent.lines.index("recipients") + 2 :][:2]]
    assert kinds == [["to", "ann@example.com"], ["cc", "carl@example.com"]]
    body = sent.lines.index("text body")
    assert "Uma mensagem de teste" in "\n".join(sent.lines[body:])
    assert "html body" in sent.lines

    as_json = await ops(service.cli, "deliveries", "show", seeded.sent["delivery_id"], "--body", "--json")
    direct = await service.api.get(f"{API}/deliveries/{seeded.sent['delivery_id']}", params={"include": "body"})
    assert as_json.json() == direct.json()

    missing = await ops(service.cli, "deliveries", "show", str(uuid.uuid4()))
    assert missing.code == 1
    assert missing.err.startswith("mailsvc ops: 404 not_found: ")
    escaped = await ops(service.cli, "deliveries", "show", "../templates")  # one path segment, never a route
    assert escaped.code == 1
    assert escaped.err.startswith("mailsvc ops: 404 not_found: ")


async def test_deliveries_resend_and_its_409(service: Service, seeded: Seeded) -> None:
    original = seeded.bounced["delivery_id"]
    key = f"ops-resend-{seeded.run}"
    resent = await ops(service.cli, "deliveries", "resend", original, "--key", key)
    assert resent.code == 0, resent.err
    words = resent.out.split()
    assert words[:4] == ["resent", original, "as", words[3]]
    new_id = words[3]
    assert new_id != original
    # its one recipient bounced with 5.1.1 and is suppressed now: the resend is accepted suppressed
    assert resent.out.strip().endswith("(suppressed)")

    again = await ops(service.cli, "deliveries", "resend", original, "--key", key)
    assert again.code == 0, again.err
    assert again.out.split()[3] == new_id
    assert "nothing new was created" in again.out

    shown = await ops(service.cli, "deliveries", "show", original)
    assert f"resends       {new_id}" in shown.lines
    copy = await ops(service.cli, "deliveries", "show", new_id)
    assert f"resend of     {original}" in copy.lines
    assert "source        resend, priority normal" in copy.lines

    refused = await ops(service.cli, "deliveries", "resend", seeded.queued["delivery_id"])
    assert refused.code == 1
    assert refused.out == ""
    assert refused.err.count("\n") == 1
    assert refused.err.startswith("mailsvc ops: 409 not_resendable: ")
    direct = await service.api.post(f"{API}/deliveries/{seeded.queued['delivery_id']}/resend")
    assert refused.err == f"mailsvc ops: 409 not_resendable: {direct.json()['error']['message']}\n"

    refused_json = await ops(service.cli, "deliveries", "resend", seeded.queued["delivery_id"], "--json")
    assert refused_json.code == 1
    assert refused_json.json() == direct.json()
    assert refused_json.err == refused.err

    invalid = await ops(service.cli, "deliveries", "resend", original, "--key", "not a key!")
    assert invalid.code == 1
    assert invalid.err.startswith("mailsvc ops: 422 validation_failed: ")
    assert invalid.err.splitlines()[1].startswith("  Idempotency-Key: ")


async def test_dead_letters_malformed_and_templates_lists(service: Service, seeded: Seeded) -> None:
    dead = await ops(service.cli, "dead-letters", "list", "--all")
    rows = table_rows(dead)
    (row,) = [r for r in rows if r.startswith(seeded.bounced["delivery_id"])]
    assert row.split()[1] == "permanent_failure"
    dead_json = await ops(service.cli, "dead-letters", "list", "--json")
    assert dead_json.json() == (await service.api.get(f"{API}/dead-letters")).json()

    malformed = await ops(service.cli, "malformed", "list", "--reason", "invalid_json", "--all")
    rows = table_rows(malformed)
    assert all(r.split()[3] == "invalid_json" for r in rows)
    (row,) = [r for r in rows if r.split()[0] == str(seeded.malformed["malformed_id"])]
    assert seeded.malformed["stream_entry_id"] in row
    assert not table_rows(await ops(service.cli, "malformed", "list", "--reason", "idempotency_conflict"))
    assert (await ops(service.cli, "malformed", "list", "--reason", "idempotency_conflict")).out == (
        "no malformed commands\n"
    )
    bad_reason = await ops(service.cli, "malformed", "list", "--reason", "Not A Reason")
    assert bad_reason.code == 1
    assert bad_reason.err.splitlines()[1].startswith("  reason: ")

    templates = await ops(service.cli, "templates", "list")
    listed = {r.split()[0] for r in table_rows(templates)}
    assert {"auth.login_code", "auth.password_reset", "notification.generic"} <= listed
    templates_json = await ops(service.cli, "templates", "list", "--json")
    assert templates_json.json() == (await service.api.get(f"{API}/templates")).json()


async def test_provider_show_and_resume(service: Service, seeded: Seeded) -> None:
    shown = await ops(service.cli, "provider", "show")
    assert shown.code == 0
    assert [line.split()[:2] for line in shown.lines] == [
        ["mode", "stub"],
        ["state", "sending"],
        ["since", (await service.api.get(f"{API}/provider")).json()["since"]],
        ["rate", "limit"],
    ]
    assert shown.lines[-1].split() == ["rate", "limit", "none"]
    conn = await asyncpg.connect(service.env["MAIL_POSTGRES_PRIMARY_DSN"])
    try:  # paused as an AUTH failure would leave it, with no probe due for an hour
        await conn.execute(
            "UPDATE provider_state SET state = 'paused', reason = 'auth_failed 535', since = now(),"
            " next_probe_at = now() + interval '1 hour' WHERE id = 1"
        )
        paused = await ops(service.cli, "provider", "show", "--json")
        assert (paused.json()["state"], paused.json()["reason"]) == ("paused", "auth_failed 535")
        assert "reason         auth_failed 535" in (await ops(service.cli, "provider", "show")).lines
        resumed = await ops(service.cli, "provider", "resume")
        assert resumed.code == 0
        assert resumed.lines[1].split() == ["state", "sending"]
        assert await conn.fetchval("SELECT state FROM provider_state") == "sending"
        [action] = await conn.fetch("SELECT kind, actor FROM operator_actions WHERE kind = 'provider_resume'")
        assert action["actor"] != "trusted-network"  # the fingerprint of the CLI's token
    finally:
        await conn.execute("UPDATE provider_state SET state = 'sending', reason = NULL, next_probe_at = NULL")
        await conn.close()


async def test_events_tail_follows_the_feed_and_ends_at_its_limit_or_timeout(service: Service, seeded: Seeded) -> None:
    sent_id = seeded.sent["delivery_id"]

    async def both_published() -> bool:
        page = (await service.api.get(f"{API}/events", params={"delivery_id": sent_id})).json()
        return len(page["items"]) == 2

    await wait_until(both_published, what="the sent delivery's two events")
    lines = await ops(service.cli, "events", "tail", "--delivery-id", sent_id, "--json", "--timeout", "1")
    assert lines.code == 0, lines.err
    served = (await service.api.get(f"{API}/events", params={"delivery_id": sent_id})).json()["items"]
    assert [json.loads(line) for line in lines.lines] == served
    assert [e["type"] for e in served] == ["delivery.queued", "delivery.sent"]

    dead = await ops(
        service.cli, "events", "tail", "--delivery-id", seeded.bounced["delivery_id"], "--type",
        "delivery.dead_lettered", "--timeout", "1",
    )  # fmt: skip
    assert dead.code == 0, dead.err
    [line] = dead.lines
    assert "delivery.dead_lettered" in line
    assert seeded.bounced["delivery_id"] in line
    assert "reason=permanent_failure" in line
    assert len((await ops(service.cli, "events", "tail", "--limit", "2")).lines) == 2

    # following: started at the end of the feed, it prints what happens next, then ends at --limit
    end = (await service.api.get(f"{API}/events", params={"limit": "1000"})).json()["next_cursor"]
    while (page := (await service.api.get(f"{API}/events", params={"after": end})).json())["items"]:
        end = page["next_cursor"]
    args = ("events", "tail", "--after", end, "--type", "delivery.queued", "--limit", "1", "--interval", "0.1")
    follower = asyncio.create_task(ops(service.cli, *args, "--json"))
    await service.xadd({"to": ["tail@example.com"], "subject": "s", "text": "t"}, key=f"ops-tail-{seeded.run}")
    followed = await asyncio.wait_for(follower, 30)
    assert followed.code == 0, followed.err
    [event] = [json.loads(line) for line in followed.lines]
    assert (event["type"], event["idempotencykey"]) == ("delivery.queued", f"ops-tail-{seeded.run}")


async def test_suppressions_add_list_remove(service: Service, seeded: Seeded) -> None:
    address = f"ops-{seeded.run}@Example.org"
    added = await ops(service.cli, "suppressions", "add", address, "--reason", "complaint", "--note", "ticket 1")
    assert added.code == 0, added.err
    assert added.out == f"suppressed {address.lower()} (complaint) until removed\n"
    listed = table_rows(await ops(service.cli, "suppressions", "list", "--address", address))
    assert [row.split()[:2] for row in listed] == [[address.lower(), "complaint"]]
    bounced = table_rows(await ops(service.cli, "suppressions", "list", "--reason", "hard_bounce", "--all"))
    assert "zoe+bounce@example.org" in {row.split()[0] for row in bounced}  # the stub's +bounce: 550 5.1.1
    as_json = await ops(service.cli, "suppressions", "list", "--address", address, "--json")
    assert as_json.json()["items"][0]["note"] == "ticket 1"
    removed = await ops(service.cli, "suppressions", "remove", address)
    assert (removed.code, removed.out) == (0, f"removed {address} from the suppression list\n")
    again = await ops(service.cli, "suppressions", "remove", address)
    assert again.code == 1
    assert again.err.startswith("mailsvc ops: 404 not_found: ")
    refused = await ops(service.cli, "suppressions", "add", address, "--reason", "hard_bounce")
    assert refused.code == 1
    assert refused.err.splitlines()[1].startswith("  reason: ")


async def test_deliveries_cancel_and_its_409(service: Service, seeded: Seeded) -> None:
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    key = f"ops-cancel-{seeded.run}"
    await service.xadd({"to": ["held@example.com"], "subject": "Held", "text": "x", "send_at": later}, key=key)
    held = await wait_for_delivery(service.api, [("recipient", "held@example.com")], "queued")
    cancelled = await ops(service.cli, "deliveries", "cancel", held["delivery_id"])
    assert (cancelled.code, cancelled.out) == (0, f"cancelled {held['delivery_id']}\n")
    refused = await ops(service.cli, "deliveries", "cancel", seeded.sent["delivery_id"])
    assert refused.code == 1
    assert refused.err.startswith("mailsvc ops: 409 not_cancellable: ")


async def test_the_token_is_required_sent_and_never_shown(service: Service, seeded: Seeded, tmp_path: Path) -> None:
    url = service.cli["MAIL_API_URL"]
    without = await ops({"MAIL_API_URL": url}, "templates", "list")
    assert without.code == 1
    assert without.err == "mailsvc ops: 401 unauthorized: missing or malformed bearer token\n"

    wrong = tmp_path / "wrong-token"
    wrong.write_text("not-the-token\n")
    refused = await ops(service.cli, "--token-file", str(wrong), "templates", "list")  # the file wins over the env
    assert refused.code == 1
    assert refused.err == "mailsvc ops: 401 unauthorized: unknown bearer token\n"
    assert "not-the-token" not in refused.out + refused.err

    right = tmp_path / "token"
    right.write_text(TOKEN + "\n")
    with_file = await ops(
        {"MAIL_API_URL": url}, "deliveries", "list", "--tag", f"run:{seeded.run}", "--token-file", str(right)
    )
    assert with_file.code == 0, with_file.err
    assert len(table_rows(with_file)) >= 4

    listed = await ops_process(child_env(service.cli), "deliveries", "show", seeded.sent["delivery_id"])
    assert listed.code == 0, listed.err
    assert seeded.sent["delivery_id"] in listed.out
    failed = await ops_process(child_env({"MAIL_API_URL": url}), "--json", "templates", "list")
    assert failed.code == 1
    assert json.loads(failed.out)["error"]["code"] == "unauthorized"
    for result in (without, with_file, listed, failed):
        assert TOKEN not in result.out + result.err

    bad = await ops({"MAIL_API_URL": url, "MAIL_API_TOKEN": "tok en\u00e9"}, "templates", "list")
    assert bad.code == 1
    assert bad.err == "mailsvc ops: the API token from MAIL_API_TOKEN must be printable ASCII without spaces\n"


@contextlib.contextmanager
def silent_listener() -> Iterator[int]:
    """A port that accepts connections (the kernel's backlog) and never answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield listener.getsockname()[1]


@contextlib.asynccontextmanager
async def answering(raw: bytes) -> AsyncIterator[int]:
    """A server that reads a request head and answers these bytes, whatever was asked."""

    async def reply(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(raw)
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_server(reply, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


async def test_connection_refused_is_one_line_and_exit_1() -> None:
    port = closed_port()
    result = await ops_process(child_env({"MAIL_API_URL": f"http://127.0.0.1:{port}"}), "deliveries", "list")
    assert result.code == 1
    assert result.out == ""
    assert result.err == f"mailsvc ops: cannot connect to http://127.0.0.1:{port} (connection refused)\n"


async def test_no_answer_is_a_timeout_line() -> None:
    with silent_listener() as port:
        result = await ops({}, "--url", f"http://127.0.0.1:{port}", "--timeout", "1", "templates", "list")
    assert result.code == 1
    assert result.err == f"mailsvc ops: no answer from http://127.0.0.1:{port} within 1s\n"


@pytest.mark.parametrize(
    ("answer", "line"),
    [
        (
            b"HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/html\r\nContent-Length: 28\r\n\r\n"
            b"<html>bad gateway</html>\n\n\n\n",
            "HTTP 502 from {url} is not JSON (text/html: '<html>bad gateway</html>')",
        ),
        (
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello",
            "HTTP 200 from {url} is not JSON (text/plain: 'hello')",
        ),
        (
            b'HTTP/1.1 500 Oops\r\nContent-Type: application/json\r\nContent-Length: 15\r\n\r\n{"detail": "x"}',
            'HTTP 500 from {url} is not an API error (application/json: \'{"detail": "x"}\')',
        ),
    ],
    ids=["html-502", "text-200", "json-500"],
)
async def test_an_answer_that_is_not_the_api_is_one_line(answer: bytes, line: str) -> None:
    async with answering(answer) as port:
        url = f"http://127.0.0.1:{port}"
        result = await ops({"MAIL_API_URL": url}, "dead-letters", "list")
    assert result.code == 1
    assert result.out == ""
    assert result.err == f"mailsvc ops: {line.replace('{url}', url)}\n"


def subcommand_paths(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """Every parser under `parser`, as the words that reach it."""
    yield path
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from subcommand_paths(child, (*path, name))


def test_every_ops_subcommand_has_help_with_an_example(capsys: pytest.CaptureFixture[str]) -> None:
    (ops_parser,) = [
        child
        for action in build_parser()._actions
        if isinstance(action, argparse._SubParsersAction)
        for name, child in action.choices.items()
        if name == "ops"
    ]
    paths = list(subcommand_paths(ops_parser))
    leaves = {p for p in paths if len(p) == 2}
    assert {
        ("deliveries", "list"),
        ("deliveries", "show"),
        ("deliveries", "resend"),
        ("deliveries", "cancel"),
        ("dead-letters", "list"),
        ("malformed", "list"),
        ("events", "tail"),
        ("suppressions", "list"),
        ("suppressions", "add"),
        ("suppressions", "remove"),
        ("templates", "list"),
    } <= leaves
    for path in paths:
        with pytest.raises(SystemExit) as exited:
            build_parser().parse_args(["ops", *path, "--help"])
        assert exited.value.code == 0
        shown = capsys.readouterr().out
        assert f"usage: mailsvc ops {' '.join(path)}".rstrip() in shown, path
        assert "example" in shown, path
        examples = shown.split("example", 1)[1]
        assert f"mailsvc ops {' '.join(path)}".rstrip() in examples, path


async def test_redrive_replay_and_the_audit_trail(service: Service, seeded: Seeded, tmp_path: Path) -> None:
    dry = await ops(service.cli, "dead-letters", "redrive", "--reason", "permanent_failure", "--dry-run", "--json")
    assert dry.code == 0, dry.err
    counts = dry.json()
    assert counts["dry_run"] is True
    assert counts["action_id"] is None
    assert counts["matched"] >= 1
    text = await ops(service.cli, "dead-letters", "redrive", "--reason", "permanent_failure", "--dry-run")
    assert text.lines[0] == f"dry run: would redrive {counts['redriven']} of {counts['matched']} matching dead letters"

    key = f"ops-redrive-{seeded.run}"
    argv = ("dead-letters", "redrive", "--reason", "permanent_failure", "--note", "ops test", "--key", key)
    done = await ops(service.cli, *argv)
    assert done.code == 0, done.err
    assert done.lines[0].startswith(f"redrove {counts['redriven']} of {counts['matched']} matching dead letters")
    again = await ops(service.cli, *argv)
    assert "ran before" in again.lines[0]
    after = await ops(service.cli, "dead-letters", "redrive", "--reason", "permanent_failure", "--dry-run", "--json")
    # (the resend of a `+bounce` address bounces too: a new dead letter, which a later redrive may take)
    assert after.json()["skipped_already_redriven"] == counts["redriven"]

    malformed_id = str(seeded.malformed["malformed_id"])
    as_recorded = await ops(service.cli, "malformed", "replay", malformed_id)  # its payload is not JSON
    assert as_recorded.code == 1
    assert as_recorded.err.startswith("mailsvc ops: 422 validation_failed: ")
    fixed = tmp_path / "fixed.json"
    fixed.write_text(json.dumps({"to": ["fixed@example.com"], "subject": "Fixed", "text": "now JSON"}))
    replayed = await ops(service.cli, "malformed", "replay", malformed_id, "--payload", f"@{fixed}")
    assert replayed.code == 0, replayed.err
    words = replayed.out.split()
    assert words[:5] == ["replayed", "malformed", "command", malformed_id, "as"]
    second = await ops(service.cli, "malformed", "replay", malformed_id)
    assert second.out.split()[5] == words[5]
    assert "replayed before" in second.out
    bad = await ops(service.cli, "malformed", "replay", malformed_id, "--payload", "{nope")
    assert bad.code == 1
    assert bad.err.startswith("mailsvc ops: --payload is not JSON")

    trail = await ops(service.cli, "actions", "list")
    rows = table_rows(trail)
    print("\n".join(trail.lines))  # the table, as an operator reads it
    kinds = [row.split()[2] for row in rows]
    assert kinds[:2] == ["replay", "redrive"]
    assert rows[1].split()[3] == hashlib.sha256(TOKEN.encode()).hexdigest()[:12]
    assert "redriven=" in rows[1]
    listed = await ops(service.cli, "actions", "list", "--kind", "redrive", "--json")
    assert [a["note"] for a in listed.json()["items"]][:1] == ["ops test"]
