"""`mailsvc ops actions …`: the audit trail of operator writes (SPEC §14)."""

from __future__ import annotations

from argparse import Namespace
from typing import Any

from mailsvc.ops.client import Api, Json
from mailsvc.ops.lists import PAGE_ARGS, fetch_list, page_table
from mailsvc.ops.registry import Group, arg
from mailsvc.ops.tables import Column, field, time_field

GROUP = Group("actions", "the audit trail of operator writes")


def _pairs(value: Any) -> str:
    if not isinstance(value, dict) or not value:
        return "-"
    return ", ".join(f"{k}={v}" for k, v in value.items())


def _what(item: Json) -> str:
    """The target of a single action, or the filter of a bulk one (its limit is in --json)."""
    if item.get("target"):
        return _pairs(item["target"])
    chosen = {k: v for k, v in (item.get("filter") or {}).items() if k != "limit"}
    return _pairs(chosen) if chosen else "every dead letter" if item.get("kind") == "redrive" else "-"


_COUNTS = ("resent", "replayed", "redriven", "matched", "skipped", "remaining")


def _counts(item: Json) -> str:
    counts = item.get("counts") or {}
    shown = {k: counts[k] for k in _COUNTS if k in counts}
    return _pairs(shown or counts)


COLUMNS = (
    Column("when (UTC)", 16, time_field("created_at")),
    Column("kind", 18, field("kind")),
    Column("actor", 15, field("actor")),
    Column("on", 32, _what),
    Column("did", 28, _counts),
)


@GROUP.command(
    "list",
    summary="operator actions, newest first: who did what, when, to what",
    example="mailsvc ops actions list --kind redrive",
    arguments=(arg("--kind", help="resend, cancel, redrive, replay, suppression_add, …"), *PAGE_ARGS),
    render=page_table(COLUMNS, "operator action", "operator actions"),
)
def list_actions(api: Api, args: Namespace) -> Json:
    params = [] if args.kind is None else [("kind", args.kind)]
    return fetch_list(api, "/operator-actions", params, args)
