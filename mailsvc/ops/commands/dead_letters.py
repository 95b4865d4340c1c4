"""`mailsvc ops dead-letters …`: deliveries that will not be attempted again (SPEC §3)."""

from __future__ import annotations

from argparse import Namespace

from mailsvc.ops.client import Api, Json
from mailsvc.ops.lists import PAGE_ARGS, fetch_list, page_table
from mailsvc.ops.registry import Group, arg
from mailsvc.ops.tables import Column, field, recipients, template, time_field

GROUP = Group("dead-letters", "list and redrive dead letters (resend one with `deliveries resend`)")

COLUMNS = (
    Column("delivery", 36, field("delivery_id")),
    Column("reason", 18, field("reason")),
    Column("since (UTC)", 16, time_field("created_at")),
    Column("template", 20, template),
    Column("to", 22, recipients),
)


@GROUP.command(
    "list",
    summary="dead-lettered deliveries, newest first",
    example="mailsvc ops dead-letters list --limit 20",
    arguments=PAGE_ARGS,
    render=page_table(COLUMNS, "dead letter", "dead letters"),
)
def list_dead_letters(api: Api, args: Namespace) -> Json:
    return fetch_list(api, "/dead-letters", [], args)


_REDRIVE_FILTERS = (
    ("reason", arg("--reason", help="permanent_failure, attempts_exhausted or expired")),
    ("source", arg("--source", help="notification, auth or resend")),
    ("template", arg("--template", help="a template id, e.g. notification.generic")),
    ("created_after", arg("--created-after", metavar="TIME", help="dead-lettered at or after, RFC 3339")),
    ("created_before", arg("--created-before", metavar="TIME", help="dead-lettered before, RFC 3339")),
    ("recipient_domain", arg("--recipient-domain", metavar="DOMAIN", help="any recipient at this domain")),
)


def _redriven(answer: Json, args: Namespace) -> str:
    if answer.get("dry_run"):
        head = f"dry run: would redrive {answer['redriven']} of {answer['matched']} matching dead letters"
    elif answer.get("idempotent_replay"):
        head = f"redrive {answer['action_id']} (key {args.key}) ran before: it redrove {answer['redriven']}"
    else:
        head = (
            f"redrove {answer['redriven']} of {answer['matched']} matching dead letters (action {answer['action_id']})"
        )
    return (
        f"{head}\n"
        f"skipped {answer['skipped']}: {answer['skipped_already_redriven']} redriven before, "
        f"{answer['skipped_redacted']} redacted (sensitive)\n"
        f"remaining {answer['remaining']}"
    )


@GROUP.command(
    "redrive",
    summary="resend the dead letters a filter selects, each at most once across redrives (audited)",
    example="mailsvc ops dead-letters redrive --reason attempts_exhausted --dry-run",
    arguments=(
        *(a for _, a in _REDRIVE_FILTERS),
        arg("--limit", type=int, default=1000, help="resend at most this many (1-10000, default 1000)"),
        arg("--dry-run", action="store_true", help="only count what would be redriven"),
        arg("--note", help="why, for the audit trail (GET /operator-actions)"),
        arg("--key", metavar="K", help="Idempotency-Key: repeating the command with it answers the first answer"),
    ),
    render=_redriven,
)
def redrive_dead_letters(api: Api, args: Namespace) -> Json:
    chosen = {name: getattr(args, name) for name, _ in _REDRIVE_FILTERS if getattr(args, name) is not None}
    body: dict[str, Json] = {"filter": chosen, "limit": args.limit, "dry_run": args.dry_run}
    if args.note is not None:
        body["note"] = args.note
    headers = {} if args.key is None else {"Idempotency-Key": args.key}
    return api.post("/dead-letters/redrive", body, headers=headers)
