"""`mailsvc ops deliveries …`: find, inspect, resend and cancel deliveries (SPEC §3, §12)."""

from __future__ import annotations

from argparse import Namespace

from mailsvc.ops.client import Api, Json, segment
from mailsvc.ops.commands.delivery_detail import render_detail
from mailsvc.ops.lists import PAGE_ARGS, fetch_list, page_table
from mailsvc.ops.registry import Group, arg
from mailsvc.ops.tables import Column, field, recipients, template, time_field

GROUP = Group("deliveries", "find, inspect, resend and cancel deliveries")

EXAMPLE_ID = "0b6f4c1e-5d2a-4f0e-9c1b-2a3d4e5f6a7b"


# what identifies a delivery at a glance; attempts, source and the rest are in `show` and --json
COLUMNS = (
    Column("delivery", 36, field("delivery_id")),
    Column("status", 13, field("status")),
    Column("created (UTC)", 16, time_field("created_at")),
    Column("template", 20, template),
    Column("to", 27, recipients),
)

# the API validates every value (and knows statuses this client may not): no `choices` here
_FILTERS = (
    arg("--status", help="one status: queued, sending, sent, dead_lettered, suppressed, …"),
    arg("--source", help="notification, auth or resend"),
    arg("--template", help="a template id, e.g. auth.login_code"),
    arg("--recipient", metavar="ADDRESS", help="an address in to, cc or bcc (exact, case-insensitive)"),
    arg("--tag", action="append", default=[], metavar="KEY:VALUE", help="a tag the delivery has; repeat for AND"),
    arg("--created-after", metavar="TIME", help="created at or after, RFC 3339 (2026-11-22T10:00:00Z)"),
    arg("--created-before", metavar="TIME", help="created before, RFC 3339"),
)
_FILTER_NAMES = ("status", "source", "template", "recipient", "created_after", "created_before")


@GROUP.command(
    "list",
    summary="find deliveries, newest first (the filters combine with AND)",
    example="mailsvc ops deliveries list --status dead_lettered --created-after 2026-11-22T00:00:00Z --all",
    arguments=(*_FILTERS, *PAGE_ARGS),
    render=page_table(COLUMNS, "delivery", "deliveries"),
)
def list_deliveries(api: Api, args: Namespace) -> Json:
    params = [(name, getattr(args, name)) for name in _FILTER_NAMES if getattr(args, name) is not None]
    params.extend(("tag", tag) for tag in args.tag)
    return fetch_list(api, "/deliveries", params, args)


@GROUP.command(
    "show",
    summary="one delivery: summary, recipients with outcomes, attempts, dead letter, resends",
    example=f"mailsvc ops deliveries show {EXAMPLE_ID} --body",
    arguments=(
        arg("delivery_id", metavar="ID", help="the delivery id"),
        arg("--body", action="store_true", help="add the rendered text and HTML bodies"),
    ),
    render=lambda answer, args: render_detail(answer),
)
def show_delivery(api: Api, args: Namespace) -> Json:
    return api.get(f"/deliveries/{segment(args.delivery_id)}", [("include", "body")] if args.body else [])


def _resent(answer: Json, args: Namespace) -> str:
    line = f"resent {answer['resend_of']} as {answer['delivery_id']} ({answer['status']})"
    if answer.get("idempotent_replay"):
        line += f": the resend made earlier with key {args.key}, nothing new was created"
    return line


@GROUP.command(
    "resend",
    summary="send a finished delivery again, as a new delivery (source resend, new Message-ID)",
    example=f"mailsvc ops deliveries resend {EXAMPLE_ID} --key incident-42",
    arguments=(
        arg("delivery_id", metavar="ID", help="the delivery to send again (it must be in a terminal status)"),
        arg("--key", metavar="K", help="Idempotency-Key: repeating the command with it creates nothing new"),
    ),
    render=_resent,
)
def resend_delivery(api: Api, args: Namespace) -> Json:
    headers = {} if args.key is None else {"Idempotency-Key": args.key}
    return api.post(f"/deliveries/{segment(args.delivery_id)}/resend", headers=headers)


@GROUP.command(
    "cancel",
    summary="take back a queued delivery: it becomes cancelled and is never sent (409 once it is being sent)",
    example=f"mailsvc ops deliveries cancel {EXAMPLE_ID}",
    arguments=(arg("delivery_id", metavar="ID", help="the delivery to cancel (it must still be queued)"),),
    render=lambda answer, args: f"cancelled {answer['delivery_id']}",
)
def cancel_delivery(api: Api, args: Namespace) -> Json:
    return api.post(f"/deliveries/{segment(args.delivery_id)}/cancel")
