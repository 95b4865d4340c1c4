"""A broken template folder refuses `serve` and `templates check`; `mailsvc send` XADDs a command."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import sys
from pathlib import Path

import orjson
from redis.asyncio import Redis

from tests.support.intake import connect, wait_for_offset
from tests.support.process import running_service, start_service

REPO = Path(__file__).resolve().parents[2]


async def run_cli(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "mailsvc",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(60):
        out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def broken_catalog(root: Path) -> tuple[Path, list[str]]:
    """The shipped templates with three templates broken in four ways; what each problem names."""
    folder = root / "templates"
    shutil.copytree(REPO / "templates", folder)
    (folder / "auth.login_code" / "en" / "body.txt").write_text("Your code: {{ code \n")
    (folder / "notification.generic" / "pt-BR" / "subject.txt").write_text("{{ title }} {{ not_declared }}\n")
    (folder / "auth.password_reset" / "en" / "subject.txt").write_text("Reset\nyour password\n")
    (folder / "auth.email_verification" / "pt-BR" / "body.txt").unlink()
    expected = [
        "auth.login_code/en/body.txt",
        "notification.generic/pt-BR/subject.txt: uses undeclared variable(s): not_declared",
        "auth.password_reset/en/subject.txt: must be a single line",
        "auth.email_verification/pt-BR/body.txt: missing",
    ]
    return folder, expected


async def test_serve_refuses_a_broken_catalog_listing_every_problem(
    service_env: dict[str, str], tmp_path: Path
) -> None:
    folder, expected = broken_catalog(tmp_path)
    service = await start_service({**service_env, "MAIL_TEMPLATE_DIR": str(folder)})
    assert await service.wait_exit() != 0
    errors = "\n".join(service.stderr)
    for problem in expected:
        assert problem in errors, errors
    assert "4 problems" in errors
    assert not service.events("service_started")


async def test_templates_check_lists_every_problem(service_env: dict[str, str], tmp_path: Path) -> None:
    folder, expected = broken_catalog(tmp_path)
    code, out, err = await run_cli(service_env, "templates", "--dir", str(folder), "check")
    assert code == 1
    assert out == ""
    for problem in expected:
        assert problem in err, err
    assert len(err.strip().splitlines()) == len(expected)
    # the same folder named by MAIL_TEMPLATE_DIR
    code, _, err_from_env = await run_cli({**service_env, "MAIL_TEMPLATE_DIR": str(folder)}, "templates", "check")
    assert (code, err_from_env) == (1, err)
    # `--dir` after the subcommand names the same folder
    code, _, err_after = await run_cli(service_env, "templates", "check", "--dir", str(folder))
    assert (code, err_after) == (1, err)


async def test_templates_check_passes_the_shipped_catalog(service_env: dict[str, str]) -> None:
    code, out, err = await run_cli(service_env, "templates", "--dir", str(REPO / "templates"), "check")
    assert (code, err) == (0, "")
    assert out.startswith("ok: 4 templates")


# -- mailsvc send ----------------------------------------------------------------------------


async def test_send_xadds_a_raw_command(service_env: dict[str, str], redis_client: Redis, stream_key: str) -> None:
    code, out, err = await run_cli(
        service_env, "send", "--to", "a@example.com", "--subject", "s", "--text", "t", "--idempotency-key", "k"
    )
    assert code == 0, err
    entry_id = out.strip()
    ((found_id, fields),) = await redis_client.xrange(stream_key)
    assert found_id.decode() == entry_id
    assert set(fields) == {b"type", b"payload", b"idempotency_key"}
    assert fields[b"type"] == b"send_email"
    assert fields[b"idempotency_key"] == b"k"
    assert orjson.loads(fields[b"payload"]) == {"to": ["a@example.com"], "subject": "s", "text": "t"}


async def test_send_builds_a_template_command_from_a_file_and_flags(
    service_env: dict[str, str], redis_client: Redis, stream_key: str, tmp_path: Path
) -> None:
    base = tmp_path / "payload.json"
    base.write_text(json.dumps({"to": ["old@example.com"], "cc": ["c@example.com"], "tags": {"from": "file"}}))
    traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    code, _, err = await run_cli(
        service_env,
        "send",
        "--file",
        str(base),
        "--to",
        "a@example.com",
        "--to",
        "b@example.com",
        "--template",
        "auth.login_code",
        "--locale",
        "pt-BR",
        "--vars",
        '{"code": "481516", "expires_in_minutes": 10}',
        "--priority",
        "high",
        "--tag",
        "tenant=acme",
        "--tag",
        "team=a=b",
        "--traceparent",
        traceparent,
    )
    assert code == 0, err
    ((_, fields),) = await redis_client.xrange(stream_key)
    # no --idempotency-key: a fresh one, so the client's retry of a lost reply cannot send it twice
    key = fields[b"idempotency_key"].decode()
    assert re.fullmatch(r"send-[0-9a-f-]{36}", key)
    assert f"idempotency key: {key}" in err
    assert fields[b"traceparent"] == traceparent.encode()
    assert orjson.loads(fields[b"payload"]) == {
        "to": ["a@example.com", "b@example.com"],
        "cc": ["c@example.com"],
        "template": "auth.login_code",
        "locale": "pt-BR",
        "variables": {"code": "481516", "expires_in_minutes": 10},
        "priority": "high",
        "tags": {"tenant": "acme", "team": "a=b"},
    }


async def test_send_refuses_bad_vars_without_xadding(
    service_env: dict[str, str], redis_client: Redis, stream_key: str
) -> None:
    code, _, err = await run_cli(service_env, "send", "--to", "a@example.com", "--template", "x", "--vars", "{nope")
    assert code != 0
    assert err
    assert await redis_client.exists(stream_key) == 0


async def test_what_send_produces_is_accepted_by_the_consumer(
    service_env: dict[str, str], redis_client: Redis, stream_key: str, database_dsn: str
) -> None:
    code, out, err = await run_cli(
        service_env,
        "send",
        "--to",
        "ann@example.com",
        "--template",
        "notification.generic",
        "--vars",
        '{"title": "Export ready", "body": "Your export is ready."}',
        "--idempotency-key",
        "export-1",
    )
    assert code == 0, err
    async with connect(database_dsn) as db, running_service(service_env):
        await wait_for_offset(db, stream_key, out.strip())
        row = await db.fetchrow("SELECT source, template, locale FROM deliveries WHERE idempotency_key = 'export-1'")
        assert row is not None
        assert (row["source"], row["template"], row["locale"]) == ("notification", "notification.generic", "en")
        assert await db.fetchval("SELECT count(*) FROM malformed_commands") == 0
