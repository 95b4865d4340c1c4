"""`mailsvc ops events tail`: follow the delivery event feed (`GET /events`, SPEC §3, §11)."""

from __future__ import annotations

import time
from argparse import Namespace

from mailsvc.ops.client import Api, Json, OpsError
from mailsvc.ops.registry import Emit, Group, arg
from mailsvc.ops.tables import short_time, text

GROUP = Group("events", "the delivery event feed (what became of each delivery)")
PAGE = 1000  # the API's largest `limit`


def _line(event: Json, _: Namespace) -> str:
    data = event.get("data") or {}
    shown = ("attempt", "smtp_code", "reason", "outcome")
    detail = " ".join(f"{k}={data[k]}" for k in shown if data.get(k) is not None)
    return (
        f"{short_time(event.get('time'))}  {text(event.get('type')):<24} {text(event.get('subject'))}"
        f"  key={text(event.get('idempotencykey'))}{'  ' + detail if detail else ''}"
    )


@GROUP.follower(
    "tail",
    summary="print delivery events as they happen, oldest first (Ctrl-C ends it)",
    example="mailsvc ops events tail --type delivery.dead_lettered --json",
    arguments=[
        arg("--after", metavar="CURSOR", help="start after this cursor (default: from the oldest event kept)"),
        arg("--delivery-id", metavar="ID", help="only this delivery's events"),
        arg("--type", action="append", metavar="TYPE", help="only events of this type (repeat for several)"),
        arg("--limit", type=int, metavar="N", help="stop after N events"),
        arg("--interval", type=float, default=1.0, metavar="SECONDS", help="poll this often when idle (default 1)"),
    ],
    render=_line,
)
def tail(api: Api, args: Namespace, emit: Emit) -> None:
    """Poll `GET /events` from `--after`, emitting each event once; end after `--limit` events, or
    when `--timeout` seconds pass without a new one (without `--timeout`: never)."""
    if args.limit is not None and args.limit < 1:
        raise OpsError("--limit must be at least 1")
    if not args.interval > 0:
        raise OpsError("--interval must be a positive number of seconds")
    idle_limit: float | None = getattr(args, "timeout", None)
    cursor: str | None = args.after
    printed = 0
    last_news = time.monotonic()
    while True:
        params: list[tuple[str, str]] = [("limit", str(PAGE))]
        params += [("after", cursor)] if cursor else []
        params += [("delivery_id", args.delivery_id)] if args.delivery_id else []
        params += [("type", kind) for kind in args.type or ()]
        page = api.get("/events", params)
        items, cursor = page["items"], page["next_cursor"]
        for event in items:
            emit(event)
            printed += 1
            if args.limit is not None and printed >= args.limit:
                return
        if items:
            last_news = time.monotonic()
            continue  # a full page may have more behind it
        if idle_limit is not None and time.monotonic() - last_news >= idle_limit:
            return
        time.sleep(args.interval)
