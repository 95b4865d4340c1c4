"""`deliveries show` as text: a summary, then recipients, attempts, dead letter and bodies."""

from __future__ import annotations

from collections.abc import Sequence

from mailsvc.ops.client import Json
from mailsvc.ops.tables import (
    LINE_WIDTH,
    NONE,
    Column,
    Item,
    cut,
    field,
    full_time,
    printable,
    render_table,
    text,
)

_LABEL = 14

RECIPIENTS = (
    Column("kind", 4, field("kind")),
    Column("address", 36, field("address")),
    Column("name", 18, field("name")),
    Column("outcome", 8, field("outcome")),
    Column("code", 4, field("smtp_code"), right=True),
    Column("reply", 40, field("smtp_reply")),
)


def _when(name: str) -> Column:
    return Column(f"{name.split('_', maxsplit=1)[0]} (UTC)", 19, lambda a: full_time(a.get(name)).removesuffix(" UTC"))


def _reply(attempt: Item) -> str:
    return text(attempt.get("smtp_reply") or attempt.get("error_class"))


ATTEMPTS = (
    Column("#", 3, field("number"), right=True),
    _when("started_at"),
    Column("outcome", 17, field("outcome")),
    Column("ambiguous", 9, lambda a: "yes" if a.get("ambiguous") else ""),
    Column("code", 4, field("smtp_code"), right=True),
    Column("ms", 6, field("duration_ms"), right=True),
    Column("provider", 8, field("provider")),
    Column("reply or error", 40, _reply),
)


def _pairs(rows: Sequence[tuple[str, str]]) -> list[str]:
    width = LINE_WIDTH - _LABEL
    return [f"{label:<{_LABEL}}{cut(printable(value), width)}".rstrip() for label, value in rows]


def _joined(values: Json) -> str:
    return ", ".join(str(v) for v in values) if values else NONE


def _tags(tags: Json) -> str:
    return ", ".join(f"{k}={v}" for k, v in tags.items()) if tags else NONE


def _summary(d: Item) -> list[str]:
    rows = [
        ("delivery", text(d.get("delivery_id"))),
        ("status", text(d.get("status"))),
        ("source", f"{text(d.get('source'))}, priority {text(d.get('priority'))}"),
        ("template", _template(d)),
        ("subject", text(d.get("subject"))),
    ]
    if "redacted" in d:  # sensitive content (SPEC §13) is removed once the delivery is terminal
        rows.append(("redacted", text(d.get("redacted"))))
    reply_to = d.get("reply_to")
    rows += [
        ("reply-to", NONE if not reply_to else _address(reply_to)),
        ("message-id", text(d.get("message_id"))),
        ("key", text(d.get("idempotency_key"))),
        ("tags", _tags(d.get("tags"))),
        ("headers", _tags(d.get("headers"))),
        ("created", full_time(d.get("created_at"))),
        ("send at", full_time(d.get("send_at"))),
        ("expires", full_time(d.get("expires_at"))),
        ("updated", full_time(d.get("updated_at"))),
        ("finished", full_time(d.get("finished_at"))),
        ("attempts", f"{text(d.get('attempt_count'))}, next {full_time(d.get('next_attempt_at'))}"),
        ("last error", text(d.get("last_error"))),
        ("resend of", text(d.get("resend_of"))),
        ("resends", _joined(d.get("resends"))),
    ]
    return _pairs(rows)


def _template(d: Item) -> str:
    if not d.get("template"):
        return "(raw content)"
    return f"{d['template']}, locale {text(d.get('locale'))}, digest {text(d.get('template_digest'))}"


def _address(a: Item) -> str:
    return f"{a['name']} <{a['email']}>" if a.get("name") else str(a.get("email"))


def _section(title: str, body: str) -> list[str]:
    return ["", title, body]


def render_detail(d: Json) -> str:
    """The detail answer of `GET /deliveries/{id}` (with or without `?include=body`) as text."""
    lines = _summary(d)
    lines += _section("recipients", render_table(RECIPIENTS, d.get("recipients") or []))
    attempts = d.get("attempts") or []
    lines += _section("attempts", render_table(ATTEMPTS, attempts) if attempts else "none yet")
    dead = d.get("dead_letter")
    if dead:
        lines += ["", "dead letter"]
        lines += _pairs(
            [
                ("reason", text(dead.get("reason"))),
                ("since", full_time(dead.get("created_at"))),
                ("last error", text(dead.get("last_error"))),
            ]
        )
    for key, title in (("text_body", "text body"), ("html_body", "html body")):
        if key in d:
            body = d[key]
            lines += _section(title, NONE if body is None else printable(body, keep_newlines=True).rstrip("\n"))
    return "\n".join(lines)
