"""`mailsvc ops templates …`: the catalog the running service loaded (SPEC §6)."""

from __future__ import annotations

from argparse import Namespace

from mailsvc.ops.client import Api, Json
from mailsvc.ops.lists import page_table
from mailsvc.ops.registry import Group
from mailsvc.ops.tables import Column, field, list_field

GROUP = Group("templates", "the template catalog of the running service")

COLUMNS = (
    Column("template", 24, field("id")),
    Column("default", 7, field("default_locale")),
    Column("locales", 14, list_field("locales")),
    Column("required variables", 34, list_field("required_variables")),
    Column("description", 33, field("description")),
)


@GROUP.command(
    "list",
    summary="every template: locales, required variables, description",
    example="mailsvc ops templates list --json",
    render=page_table(COLUMNS, "template", "templates"),
)
def list_templates(api: Api, args: Namespace) -> Json:
    return api.get("/templates")
