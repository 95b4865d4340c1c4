"""Cursor-paginated lists (SPEC §3): `--limit`, `--cursor`, `--all`, and their tables."""

from __future__ import annotations

from argparse import Namespace
from collections.abc import Sequence

from mailsvc.ops.client import Api, Json, OpsError, Params
from mailsvc.ops.registry import Render, arg
from mailsvc.ops.tables import Column, render_table

MAX_PAGE = 500  # the API's largest `limit`
ALL_BOUND = 10_000  # `--all` stops here; the footer says how to go on

PAGE_ARGS = (
    arg("--limit", type=int, metavar="N", help=f"items per page (the API's default is 50, at most {MAX_PAGE})"),
    arg("--cursor", help="start after the page that printed this cursor"),
    arg(
        "--all",
        action="store_true",
        help=f"follow next_cursor page after page, up to {ALL_BOUND:,} items (--json: one page object of all of them)",
    ),
)


def _page(answer: Json) -> tuple[list[Json], str | None]:
    items = answer.get("items") if isinstance(answer, dict) else None
    if not isinstance(items, list):
        raise OpsError("the API's answer is not a page ({'items': [...], 'next_cursor': ...})")
    cursor = answer.get("next_cursor")
    return items, cursor if isinstance(cursor, str) else None


def fetch_list(api: Api, path: str, params: Params, args: Namespace) -> Json:
    """One page (`--limit`, `--cursor`), or with `--all` every page joined into one page object
    of at most `ALL_BOUND` items, whose `next_cursor` continues where it stopped."""
    if not args.all:
        query = list(params)
        if args.limit is not None:
            query.append(("limit", str(args.limit)))
        if args.cursor is not None:
            query.append(("cursor", args.cursor))
        return api.get(path, query)
    size = args.limit or MAX_PAGE
    items: list[Json] = []
    cursor: str | None = args.cursor
    while True:
        query = [*params, ("limit", str(min(size, ALL_BOUND - len(items))))]
        if cursor is not None:
            query.append(("cursor", cursor))
        page, cursor = _page(api.get(path, query))
        items.extend(page)
        if cursor is None or len(items) >= ALL_BOUND:
            return {"items": items, "next_cursor": cursor}


def page_table(columns: Sequence[Column], one: str, many: str) -> Render:
    """The items as a table, then a count and (when there is more) the cursor of the next page."""

    def render(answer: Json, args: Namespace) -> str:
        items, cursor = _page(answer)
        if not items:
            return f"no {many}"
        footer = f"{len(items)} {one if len(items) == 1 else many}"
        if cursor is not None:  # on a line of its own: a cursor is long, and cutting it breaks it
            footer += f"; the next page with\n  --cursor {cursor}"
        return f"{render_table(columns, items)}\n{footer}"

    return render
