"""What the bench sends: realistic `send_email` commands, XADDed as a backlog or at a fixed rate.

Each command renders a shipped template (`notification.generic`) or carries its own
subject/text/html (`raw`), goes to one or two distinct recipients and has an idempotency key,
like a real producer's. Latency runs stamp `X-Bench-Sent-Ns` (time.time_ns() at XADD).
"""

from __future__ import annotations

import asyncio
import email.policy
import time
from collections.abc import Callable
from email.message import EmailMessage
from typing import Any, Literal, TypeAlias

import orjson
from redis.asyncio import Redis

from mailsvc.producer import command_fields

PayloadKind = Literal["template", "raw"]
Build: TypeAlias = Callable[[int, int | None], dict[str, str]]  # (index, sent_ns) → XADD fields
FROM_EMAIL = "bench@mailsvc.example.com"
SENT_HEADER = "X-Bench-Sent-Ns"
_CHUNK = 1000
_BODY = (
    "Here is what happened in your projects this week.\n\n"
    "Three pull requests were merged, two issues were opened and one release was published. "
    "The build stayed green on every branch, and the average review time dropped to four hours.\n\n"
    "Thank you for keeping things moving."
)


def _recipients(index: int) -> dict[str, list[str]]:
    to = [f"reader{index}@example.com"]
    if index % 2:
        return {"to": to, "cc": [f"team{index}@example.org"]}
    return {"to": to}


def command_payload(index: int, kind: PayloadKind = "template", sent_ns: int | None = None) -> dict[str, Any]:
    title = f"Your weekly summary #{index}"
    payload: dict[str, Any] = {**_recipients(index), "tags": {"bench": "1"}}
    if kind == "template":
        payload["template"] = "notification.generic"
        payload["variables"] = {
            "title": title,
            "body": _BODY,
            "action_url": f"https://example.com/summary/{index}",
            "action_label": "Open the summary",
        }
    else:
        payload.update(subject=title, text=_BODY, html=f"<h1>{title}</h1><p>{_BODY}</p>")
    if sent_ns is not None:
        payload["headers"] = {SENT_HEADER: str(sent_ns)}
    return payload


def http_payload(index: int) -> dict[str, Any]:
    """What the auth service POSTs: a sign-in code."""
    return {
        **_recipients(index),
        "template": "auth.login_code",
        "variables": {"code": f"{index % 1_000_000:06d}", "expires_in_minutes": 10},
    }


def _content(payload: dict[str, Any]) -> tuple[str, str, str | None]:
    if "template" not in payload:
        return payload["subject"], payload["text"], payload["html"]
    from bench.service import template_dir
    from mailsvc.adapters.templates import TemplateCatalog

    rendered = TemplateCatalog.load(template_dir()).render(payload["template"], None, payload["variables"])
    return rendered.subject, rendered.text, rendered.html


def raw_message(kind: PayloadKind, index: int = 1) -> tuple[str, list[str], bytes]:
    """Envelope sender, recipients and pre-rendered bytes of a message like the service's (the raw
    ceiling): the same template rendered once, built once with the standard library."""
    payload = command_payload(index, kind)
    subject, text, html = _content(payload)
    message = EmailMessage()
    message["From"] = FROM_EMAIL
    message["To"] = ", ".join(payload["to"])
    if "cc" in payload:
        message["Cc"] = ", ".join(payload["cc"])
    message["Subject"] = subject
    message["Message-ID"] = f"<bench-raw-{index}@mailsvc.example.com>"
    message.set_content(text)
    if html is not None:
        message.add_alternative(html, subtype="html")
    recipients = [*payload["to"], *payload.get("cc", [])]
    return FROM_EMAIL, recipients, message.as_bytes(policy=email.policy.SMTP)


def large_payload(index: int, size: int, kind: PayloadKind = "template") -> dict[str, Any]:
    """A command of `size` bytes of JSON (within SPEC §2's 256 KiB), its bulk a long text body
    made of the usual paragraphs: it renders well within `MAIL_MAX_RENDERED_BYTES`, so the
    service does all the work of accepting it (render, MIME, store) rather than refusing it."""
    payload = command_payload(index, kind)
    bulk = "variables" if kind == "template" else None

    def with_body(body: str) -> dict[str, Any]:
        if bulk is not None:
            return {**payload, bulk: {**payload[bulk], "body": body}}
        half = body[: len(body) // 2]
        return {**payload, "text": half, "html": f"<p>{half}</p>"}

    paragraph = _BODY + "\n\n"
    body = paragraph * (size // len(paragraph) + 1)
    low, high = 0, len(body)  # the longest prefix of the body that keeps the JSON within `size`
    while low < high:
        middle = (low + high + 1) // 2
        if len(orjson.dumps(with_body(body[:middle]))) <= size:
            low = middle
        else:
            high = middle - 1
    return with_body(body[:low])


def large_fields_for(run: str, size: int, kind: PayloadKind) -> Build:
    def build(index: int, sent_ns: int | None) -> dict[str, str]:
        return command_fields(large_payload(index, size, kind), f"bench-{run}-big-{index}", None)

    return build


def fields_for(run: str, kind: PayloadKind) -> Build:
    def build(index: int, sent_ns: int | None) -> dict[str, str]:
        return command_fields(command_payload(index, kind, sent_ns), f"bench-{run}-{index}", None)

    return build


async def xadd_backlog(redis: Redis, stream: str, count: int, build: Build, *, chunk: int = _CHUNK) -> str:
    """XADD `count` commands, pipelined in chunks of `chunk`; the last entry id."""
    last = ""
    for start in range(0, count, chunk):
        pipe = redis.pipeline(transaction=False)
        for index in range(start, min(count, start + chunk)):
            pipe.xadd(stream, build(index, None))  # type: ignore[arg-type]
        ids = await pipe.execute()
        last = ids[-1].decode() if isinstance(ids[-1], bytes) else str(ids[-1])
    return last


async def xadd_paced(
    redis: Redis, stream: str, rate: float, seconds: float, build: Build, *, first_index: int = 0
) -> int:
    """XADD at `rate` commands/s for `seconds`, each stamped with its send time; how many were sent.

    Open loop: commands due while a pipeline was in flight go out together in the next one."""
    loop = asyncio.get_running_loop()
    total, sent, start = int(rate * seconds), 0, loop.time()
    while sent < total:
        due = min(total, int((loop.time() - start) * rate) + 1) - sent
        if due > 0:
            pipe = redis.pipeline(transaction=False)
            now = time.time_ns()
            for index in range(first_index + sent, first_index + sent + due):
                pipe.xadd(stream, build(index, now))  # type: ignore[arg-type]
            await pipe.execute()
            sent += due
        await asyncio.sleep(max(0.0, start + sent / rate - loop.time()))
    return sent
