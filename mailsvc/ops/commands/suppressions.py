"""`mailsvc ops suppressions …`: the addresses mail is not sent to (SPEC §12)."""

from __future__ import annotations

from argparse import Namespace

from mailsvc.ops.client import Api, Json, segment
from mailsvc.ops.lists import PAGE_ARGS, fetch_list, page_table
from mailsvc.ops.registry import Group, arg
from mailsvc.ops.tables import Column, field, time_field

GROUP = Group("suppressions", "list, add and remove suppressed addresses")

COLUMNS = (
    Column("address", 34, field("address")),
    Column("reason", 11, field("reason")),
    Column("added (UTC)", 16, time_field("created_at")),
    Column("expires (UTC)", 16, time_field("expires_at")),
    Column("note", 20, field("note")),
)


@GROUP.command(
    "list",
    summary="suppressed addresses, newest first (expired entries are gone)",
    example="mailsvc ops suppressions list --reason hard_bounce --all",
    arguments=(
        arg("--reason", help="hard_bounce, complaint or manual"),
        arg("--address", help="one address (any case; an IDN domain in Unicode or punycode)"),
        *PAGE_ARGS,
    ),
    render=page_table(COLUMNS, "suppression", "suppressions"),
)
def list_suppressions(api: Api, args: Namespace) -> Json:
    params = [(name, getattr(args, name)) for name in ("reason", "address") if getattr(args, name) is not None]
    return fetch_list(api, "/suppressions", params, args)


def _added(answer: Json, args: Namespace) -> str:
    until = answer.get("expires_at") or "removed"
    return f"suppressed {answer['address']} ({answer['reason']}) until {until}"


@GROUP.command(
    "add",
    summary="stop sending to an address (or replace its entry)",
    example="mailsvc ops suppressions add ann@example.com --reason complaint --note 'ticket 4711'",
    arguments=(
        arg("address", metavar="ADDRESS", help="the address"),
        arg("--reason", default="manual", help="manual (the default) or complaint"),
        arg("--note", help="why, for the next operator"),
        arg("--expires-at", metavar="TIME", help="RFC 3339; without it the entry stays until removed"),
    ),
    render=_added,
)
def add_suppression(api: Api, args: Namespace) -> Json:
    body: dict[str, str] = {"reason": args.reason}
    if args.note is not None:
        body["note"] = args.note
    if args.expires_at is not None:
        body["expires_at"] = args.expires_at
    return api.put(f"/suppressions/{segment(args.address)}", body)


@GROUP.command(
    "remove",
    summary="send to an address again",
    example="mailsvc ops suppressions remove ann@example.com",
    arguments=(arg("address", metavar="ADDRESS", help="the address"),),
    render=lambda answer, args: f"removed {args.address} from the suppression list",
)
def remove_suppression(api: Api, args: Namespace) -> Json:
    return api.delete(f"/suppressions/{segment(args.address)}")
