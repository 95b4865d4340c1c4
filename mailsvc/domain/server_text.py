"""Text that came from a server (SMTP replies), made safe to store anywhere (SPEC §1).

aiosmtplib decodes replies as UTF-8 with `surrogateescape`, so a server's Latin-1 byte arrives as
a lone surrogate and a NUL as `\\x00`: asyncpg cannot encode the first and PostgreSQL `text` cannot
hold the second. Whatever a server sends, the result of `server_text` can be stored.
"""

from __future__ import annotations

import re

__all__ = ["SERVER_TEXT_LIMIT", "server_text"]

SERVER_TEXT_LIMIT = 512  # characters

# A multi-line reply arrives joined by "\n": its line breaks become one space so the lines stay apart.
_LINE_BREAKS = re.compile(r"[\r\n]+")
_CONTROLS = re.compile(r"[\x00-\x08\x0a-\x1f]")  # C0 controls except tab
_SURROGATES = re.compile(r"[\ud800-\udfff]")  # never valid in UTF-8 (surrogateescape'd bytes, halves of pairs)
_UNSAFE = re.compile(r"[\x00-\x08\x0a-\x1f\ud800-\udfff]")


def server_text(text: str | bytes | None, limit: int = SERVER_TEXT_LIMIT) -> str | None:
    """`text` with line breaks turned into a space, every other C0 control but tab removed,
    anything that is not valid UTF-8 replaced by U+FFFD, cut to `limit` characters.

    Bytes are decoded as UTF-8 (invalid sequences → U+FFFD). None stays None."""
    if text is None:
        return None
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    if _UNSAFE.search(text) is None:  # the common case: one scan, no copies
        return text[:limit]
    text = _LINE_BREAKS.sub(" ", text)
    text = _CONTROLS.sub("", text)
    text = _SURROGATES.sub("\ufffd", text)
    return text[:limit]
