"""`mailsvc ops dead-letters …`: deliveries that will not be attempted again (SPEC §3)."""

from __future__ import annotations

from argparse import Namespace

from mailsvc.ops.client import Api, Json
from mailsvc.ops.lists import PAGE_ARGS, fetch_list, page_table
from mailsvc.ops.registry import Group
from mailsvc.ops.tables import Column, field, recipients, template, time_field

GROUP = Group("dead-letters", "list dead letters (resend one with `deliveries resend`)")

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
