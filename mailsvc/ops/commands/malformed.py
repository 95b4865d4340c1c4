"""`mailsvc ops malformed …`: stream commands that could never be accepted (SPEC §2, §3)."""

from __future__ import annotations

import json
from argparse import Namespace
from pathlib import Path

from mailsvc.ops.client import Api, Json, OpsError, segment
from mailsvc.ops.lists import PAGE_ARGS, fetch_list, page_table
from mailsvc.ops.registry import Group, arg
from mailsvc.ops.tables import Column, field, time_field

GROUP = Group("malformed", "list and replay malformed stream commands")

COLUMNS = (
    Column("id", 8, field("malformed_id"), right=True),
    Column("received (UTC)", 16, time_field("received_at")),
    Column("reason", 20, field("reason")),
    Column("stream entry", 17, field("stream_entry_id")),
    Column("idempotency key", 20, field("idempotency_key")),
    Column("message", 29, field("message")),
)


@GROUP.command(
    "list",
    summary="malformed commands, newest first",
    example="mailsvc ops malformed list --reason validation_failed",
    arguments=(arg("--reason", help="one reason code, e.g. invalid_json or validation_failed"), *PAGE_ARGS),
    render=page_table(COLUMNS, "malformed command", "malformed commands"),
)
def list_malformed(api: Api, args: Namespace) -> Json:
    params = [] if args.reason is None else [("reason", args.reason)]
    return fetch_list(api, "/malformed-commands", params, args)


def _replayed(answer: Json, args: Namespace) -> str:
    line = f"replayed malformed command {answer['malformed_id']} as {answer['delivery_id']} ({answer['status']})"
    if answer.get("idempotent_replay"):
        line += ": replayed before, nothing new was created"
    return line


def _payload(raw: str | None) -> Json:
    if raw is None:
        return None
    if raw.startswith("@"):
        try:
            raw = Path(raw[1:]).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise OpsError(f"--payload {raw}: cannot read it ({type(exc).__name__})") from None
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise OpsError(f"--payload is not JSON: {exc}") from None


@GROUP.command(
    "replay",
    summary="accept a malformed command again, as recorded or with a corrected payload",
    example="mailsvc ops malformed replay 42 --payload @fixed.json",
    arguments=(
        arg("malformed_id", metavar="ID", help="the malformed command's id (first column of `malformed list`)"),
        arg("--payload", metavar="JSON", help="a corrected send_email payload, or @FILE holding one"),
        arg("--key", metavar="K", help="accept it under this idempotency key instead of the recorded one"),
    ),
    render=_replayed,
)
def replay_malformed(api: Api, args: Namespace) -> Json:
    body: dict[str, Json] = {}
    payload = _payload(args.payload)
    if payload is not None:
        body["payload"] = payload
    if args.key is not None:
        body["idempotency_key"] = args.key
    return api.post(f"/malformed-commands/{segment(args.malformed_id)}/replay", body)
