"""A delivery's bodies as stored in `delivery_payloads` (migration 0012): the SQL every reader uses.

A body the MIME message holds verbatim (`domain.mime.BuiltMessage`) is stored once, as the span of
`mime` it occupies (`text_span` / `html_span`, byte offsets `[start, end)`), its text column NULL;
any other body is stored as text, no span. Readers (delivery detail with body, resend, redrive) and
redaction (the sizes it keeps) read `body_sql`: the text, or the slice with CRLF back to LF — exactly
the text submitted, as the builder gave a span only for text without CR. What the INSERT sends:
`stored_body`.
"""

from __future__ import annotations

from asyncpg import Range

from mailsvc.domain.mime import Span

__all__ = ["HTML_BODY", "TEXT_BODY", "body_sql", "stored_body"]


def body_sql(body: str, span: str, payload: str = "p") -> str:
    """The SQL expression of one body of the payload row aliased `payload`: the column `body`
    (`text_body` / `html_body`), else the slice of `mime` that `span` gives; NULL when neither is
    set (no HTML body, or redacted). The slice is ASCII (7bit): `convert_from` cannot fail."""
    at = f"{payload}.{span}"
    sliced = f"substring({payload}.mime FROM lower({at}) + 1 FOR upper({at}) - lower({at}))"
    return f"coalesce({payload}.{body}, replace(convert_from({sliced}, 'UTF8'), E'\\r\\n', E'\\n'))"


# the bodies of the payload row aliased `p`, as submitted
TEXT_BODY = body_sql("text_body", "text_span")
HTML_BODY = body_sql("html_body", "html_span")


def stored_body(content: str | None, span: Span | None) -> tuple[str | None, Range | None]:
    """(text column, span column) for one body: the span when there is one, else the text. An empty
    body stays text: its span would be an empty range, which keeps no position."""
    if span is None or span[0] == span[1]:
        return content, None
    return None, Range(span[0], span[1])
