"""Plain-text tables for people: fixed columns that fit 120 characters, short UTC timestamps.

Every value comes from the API, which repeats what producers and mail servers sent: control
characters (a newline in an SMTP reply, an escape sequence in a subject) are replaced before they
reach the terminal, and widths are counted in terminal cells (a CJK character takes two).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple

LINE_WIDTH = 120
GAP = "  "
ELLIPSIS = "…"
NONE = "—"

Item = Mapping[str, Any]

# bidirectional overrides and isolates can make a line read differently from what it holds
_BIDI = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_BREAKS = frozenset("\t\n\r\v\f\x85\u2028\u2029")
_UNSAFE = frozenset({"Cc", "Cs", "Cn", "Zl", "Zp"})  # controls, lone surrogates, unassigned, separators


class Cell(NamedTuple):
    """A cell whose `tail` (e.g. "+2" after the first address) survives cutting."""

    text: str
    tail: str = ""


@dataclass(frozen=True, slots=True)
class Column:
    title: str
    width: int
    value: Callable[[Item], str | Cell]
    right: bool = False  # numbers line up on the right


def printable(text: str, *, keep_newlines: bool = False) -> str:
    """`text` safe for a terminal: tabs and (unless kept) line breaks become spaces; other control
    characters, lone surrogates, unassigned code points and bidi overrides become U+FFFD."""
    out = []
    for ch in text:
        if ch == "\n" and keep_newlines:
            out.append(ch)
        elif ch in _BREAKS:
            out.append(" ")
        elif ch in _BIDI or unicodedata.category(ch) in _UNSAFE:
            out.append("\ufffd")
        else:
            out.append(ch)
    return "".join(out)


def _cells(ch: str) -> int:
    if unicodedata.combining(ch):
        return 0
    return 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1


def cells(text: str) -> int:
    """How many terminal cells `text` takes."""
    return sum(_cells(ch) for ch in text)


def cut(text: str, width: int) -> str:
    """`text` in at most `width` cells; when it does not fit, its end is replaced by `…`."""
    if cells(text) <= width:
        return text
    kept, used = [], 0
    for ch in text:
        size = _cells(ch)
        if used + size > width - 1:
            break
        kept.append(ch)
        used += size
    return "".join(kept) + ELLIPSIS


def fit(value: str | Cell, width: int) -> str:
    cell = value if isinstance(value, Cell) else Cell(value)
    text, tail = printable(cell.text), printable(cell.tail)
    if not tail:
        return cut(text, width)
    if cells(text) + cells(tail) <= width:
        return text + tail
    return cut(text, max(width - cells(tail), 1)) + tail


def _pad(text: str, width: int, right: bool) -> str:
    space = " " * (width - cells(text))
    return space + text if right else text + space


def table_width(columns: Sequence[Column]) -> int:
    return sum(c.width for c in columns) + len(GAP) * (len(columns) - 1)


def _line(columns: Sequence[Column], values: Sequence[str | Cell]) -> str:
    padded = [_pad(fit(v, c.width), c.width, c.right) for v, c in zip(values, columns, strict=True)]
    return GAP.join(padded).rstrip()


def render_table(columns: Sequence[Column], items: Sequence[Item]) -> str:
    """A header line and one line per item; every line at most `table_width(columns)` cells, the
    last column not padded (no trailing blanks)."""
    lines = [_line(columns, [c.title for c in columns])]
    lines.extend(_line(columns, [c.value(item) for c in columns]) for item in items)
    return "\n".join(lines)


def parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed.astimezone(UTC) if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def short_time(value: str | None) -> str:
    """`2026-11-22 10:00` (UTC, to the minute) for a table; `—` for none."""
    parsed = parse_time(value)
    if parsed is None:
        return value or NONE
    return parsed.strftime("%Y-%m-%d %H:%M")


def full_time(value: str | None) -> str:
    """`2026-11-22 10:00:05 UTC` for a detail view; `—` for none."""
    parsed = parse_time(value)
    if parsed is None:
        return value or NONE
    return parsed.strftime("%Y-%m-%d %H:%M:%S UTC")


def text(value: Any) -> str:
    """A JSON scalar as a cell: `—` for null, numbers and strings as they are."""
    if value is None:
        return NONE
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def field(name: str) -> Callable[[Item], str]:
    return lambda item: text(item.get(name))


def time_field(name: str) -> Callable[[Item], str]:
    return lambda item: short_time(item.get(name))


def template(item: Item) -> str:
    """A delivery's template id, or `(raw content)` for a command that brought its own."""
    return str(item.get("template") or "(raw content)")


def recipients(item: Item) -> Cell:
    """The first `to` address as the API gives it, `+N` for the other recipients."""
    to = item.get("to") or []
    count = item.get("recipient_count", len(to))
    first = to[0] if to else NONE
    more = count - 1 if to else count
    return Cell(first, f" +{more}" if more > 0 else "")


def list_field(name: str) -> Callable[[Item], str]:
    """A JSON array of strings as `a, b, c` (`—` when empty)."""
    return lambda item: ", ".join(str(v) for v in item.get(name) or ()) or NONE
