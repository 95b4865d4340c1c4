"""`mailsvc send`: the producer's reference — builds a `send_email` command and XADDs it."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import uuid
from pathlib import Path
from typing import Any

from mailsvc.settings import SettingsError, load_settings


def add_send_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--file", help="a JSON file holding the whole payload (flags below override it)")
    parser.add_argument("--to", action="append", default=[], help="recipient (repeatable)")
    parser.add_argument("--cc", action="append", default=[])
    parser.add_argument("--bcc", action="append", default=[])
    parser.add_argument("--reply-to")
    parser.add_argument("--template", help="template id, e.g. auth.login_code")
    parser.add_argument("--locale")
    parser.add_argument("--vars", help="template variables as a JSON object")
    parser.add_argument("--subject")
    parser.add_argument("--text")
    parser.add_argument("--html")
    parser.add_argument("--priority", choices=["high", "normal", "low"])
    parser.add_argument("--send-at")
    parser.add_argument("--expires-at")
    parser.add_argument("--tag", action="append", default=[], help="key=value (repeatable)")
    parser.add_argument("--idempotency-key")
    parser.add_argument("--traceparent")


def build_payload(args: argparse.Namespace) -> dict[str, Any]:
    payload: dict[str, Any] = json.loads(Path(args.file).read_text()) if args.file else {}
    for kind in ("to", "cc", "bcc"):
        if getattr(args, kind):
            payload[kind] = list(getattr(args, kind))
    simple = {
        "reply_to": args.reply_to,
        "template": args.template,
        "locale": args.locale,
        "subject": args.subject,
        "text": args.text,
        "html": args.html,
        "priority": args.priority,
        "send_at": args.send_at,
        "expires_at": args.expires_at,
    }
    payload.update({key: value for key, value in simple.items() if value is not None})
    if args.vars:
        payload["variables"] = json.loads(args.vars)
    if args.tag:
        payload["tags"] = dict(tag.split("=", 1) for tag in args.tag)
    return payload


def command_fields(payload: dict[str, Any], idempotency_key: str | None, traceparent: str | None) -> dict[str, str]:
    """The command's fields. Without a caller's key it gets a fresh one: the Redis client retries
    a command whose reply it lost (a timeout, a dropped connection), so one `send` can XADD twice —
    with a key the second is a duplicate of the first (SPEC §4), without one it would be a second mail."""
    fields = {"type": "send_email", "payload": json.dumps(payload, separators=(",", ":"), ensure_ascii=False)}
    fields["idempotency_key"] = idempotency_key or f"send-{uuid.uuid4()}"
    if traceparent:
        fields["traceparent"] = traceparent
    return fields


async def _xadd(fields: dict[str, str]) -> str:
    from mailsvc.adapters.redis_clients import commands_client

    settings = load_settings()
    client = commands_client(settings.redis)
    try:
        entry_id = await client.xadd(settings.redis.command_stream, fields)  # type: ignore[arg-type]
    finally:
        await client.aclose()
    return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)


def send_command(args: argparse.Namespace) -> int:
    try:
        payload = build_payload(args)
    except (OSError, ValueError) as exc:
        print(f"mailsvc send: {exc}", file=sys.stderr)
        return 1
    try:
        fields = command_fields(payload, args.idempotency_key, args.traceparent)
        entry_id = asyncio.run(_xadd(fields))
    except SettingsError as error:
        for problem in error.problems:
            print(f"  {problem}", file=sys.stderr)
        return 2
    print(entry_id)
    if not args.idempotency_key:
        print(f"idempotency key: {fields['idempotency_key']}", file=sys.stderr)
    return 0
