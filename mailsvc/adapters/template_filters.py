"""Filters every template environment shares (SPEC §6).

Each does its work in a few C-level string operations: a Jinja loop costs microseconds per
iteration, so a template that loops over the lines of a 256 KiB variable held the event loop for
half a second, while these take a few milliseconds at most.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from markupsafe import Markup, escape

from mailsvc.errors import MailsvcError

LINK_SCHEMES = frozenset({"https", "http"})
# a newline, then blank lines (whitespace only), then the whitespace before the next paragraph;
# it starts at a newline, so no run of spaces is scanned twice (linear, unlike a leading `\s*`)
_PARAGRAPH_BREAK = re.compile(r"\n[^\S\n]*\n\s*")
# what browsers strip or skip inside a URL (controls, space) or read as a path separator (`\`):
# refused outright rather than normalised, so `java\tscript:` or ` javascript:` never passes
_URL_UNSAFE = re.compile(r"[\x00-\x20\x7f-\x9f\\]")
# the plainest links (nearly all of them): http(s), an ASCII host name, maybe a port, then only
# printable ASCII but `\`. The full check (`urlsplit`, a few µs) could only accept such a link, so
# it is accepted without it; anything else takes the full check.
_PLAIN_URL = re.compile(r"[Hh][Tt][Tt][Pp][Ss]?://[A-Za-z0-9.-]+(?::[0-9]*)?(?:[/?#][!-\[\]-~]*)?")


class UnsafeUrl(MailsvcError):
    """A value given to `safe_url` that is not an absolute http(s) URL."""

    def __init__(self, value: str) -> None:
        super().__init__("a link must be an absolute https:// or http:// URL")
        self.value = value


def safe_url(value: object) -> str:
    """`value` unchanged when it is an absolute `https`/`http` URL with a host, else `UnsafeUrl`.

    Every URL variable a template puts in an `href` passes through it (the catalog refuses an
    `href="{{ … }}"` without it): `javascript:`, `data:` and relative links never render.
    """
    text = str(value)
    if _PLAIN_URL.fullmatch(text) is None:
        _check_url(text)
    return text


def _check_url(text: str) -> None:
    """`UnsafeUrl` unless `text` is an absolute http(s) URL with a host (the full check)."""
    if _URL_UNSAFE.search(text):
        raise UnsafeUrl(text)
    try:
        parts = urlsplit(text)
    except ValueError:  # e.g. an unbalanced "[" in the host
        raise UnsafeUrl(text) from None
    if parts.scheme.lower() not in LINK_SCHEMES or not parts.hostname:
        raise UnsafeUrl(text)


def paragraphs(value: object, style: str = "") -> Markup:
    """Plain text as HTML paragraphs, every character escaped: blank lines separate paragraphs,
    a single line break becomes `<br>`; `style` goes on each `<p>`. Empty text gives nothing."""
    text = str(value).replace("\r\n", "\n").replace("\r", "\n")
    text = str(escape(text)).strip()
    if not text:
        return Markup("")
    opening = f'<p style="{escape(style)}">' if style else "<p>"
    # "\r" cannot occur any more: it marks the paragraph breaks while the line breaks are replaced
    text = _PARAGRAPH_BREAK.sub("\r", text).replace("\n", "<br>").replace("\r", f"</p>\n{opening}")
    return Markup(f"{opening}{text}</p>")  # noqa: S704 - every piece of text was escaped above
