"""`mailsvc ops malformed …`: stream commands that could never be accepted (SPEC §2, §3)."""

from __future__ import annotations

from argparse import Namespace

from mailsvc.ops.client import Api, Json
from mailsvc.ops.lists import PAGE_ARGS, fetch_list, page_table
from mailsvc.ops.registry import Group, arg
from mailsvc.ops.tables import Column, field, time_field

GROUP = Group("malformed", "list malformed stream commands")

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
