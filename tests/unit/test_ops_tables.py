"""`mailsvc ops` text output: widths, truncation, hostile characters, timestamps, footers, detail."""

from __future__ import annotations

import unicodedata
from argparse import Namespace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailsvc.ops.commands import GROUPS, dead_letters, deliveries, malformed, templates
from mailsvc.ops.commands.delivery_detail import ATTEMPTS, RECIPIENTS, render_detail
from mailsvc.ops.lists import page_table
from mailsvc.ops.tables import (
    ELLIPSIS,
    LINE_WIDTH,
    Cell,
    Column,
    cells,
    cut,
    field,
    fit,
    full_time,
    printable,
    recipients,
    render_table,
    short_time,
    table_width,
)

UNSAFE = ("Cc", "Cs", "Cn", "Zl", "Zp")  # controls, lone surrogates, unassigned, line/paragraph separators
TABLES = {
    "deliveries": deliveries.COLUMNS,
    "dead-letters": dead_letters.COLUMNS,
    "malformed": malformed.COLUMNS,
    "templates": templates.COLUMNS,
    "recipients": RECIPIENTS,
    "attempts": ATTEMPTS,
}


def test_cut_keeps_what_fits_and_marks_what_it_removed() -> None:
    assert cut("abcdef", 6) == "abcdef"
    assert cut("abcdefg", 6) == "abcde" + ELLIPSIS
    assert cut("", 3) == ""
    assert cut("日本語のテキスト", 7) == "日本語…"  # two cells each: 6 + 1
    assert cells(cut("日本語のテキスト", 6)) <= 6
    assert cut("e\u0301e\u0301e\u0301", 3) == "e\u0301e\u0301e\u0301"  # combining accents take no cell


def test_a_tail_survives_cutting() -> None:
    assert fit(Cell("a-rather-long-address@example.com", " +2"), 20) == "a-rather-long-ad… +2"
    assert cells(fit(Cell("a-rather-long-address@example.com", " +2"), 20)) == 20
    assert fit(Cell("ann@example.com", " +1"), 20) == "ann@example.com +1"
    assert recipients({"to": ["ann@example.com"], "recipient_count": 3}) == Cell("ann@example.com", " +2")
    assert recipients({"to": ["ann@example.com"], "recipient_count": 1}) == Cell("ann@example.com", "")
    assert recipients({"to": [], "recipient_count": 2}) == Cell("—", " +2")  # only cc/bcc


def test_control_characters_never_reach_the_terminal() -> None:
    hostile = "line1\nline2\r\t\x1b[31mred\x07\u202egnp.exe\x00\udce9\u2028\u0c64"
    shown = printable(hostile)
    assert not any(ch in shown for ch in "\n\r\t\x1b\x07\u202e\x00\udce9\u2028\u0c64")
    shown.encode("utf-8")  # a lone surrogate (surrogateescape) could not even be printed
    assert shown.startswith("line1 line2  ")
    assert printable("a\nb\x1b", keep_newlines=True) == "a\nb\ufffd"
    _, line = render_table([Column("x", 30, field("x"))], [{"x": hostile}]).splitlines()
    assert line == cut(shown, 30)


@pytest.mark.parametrize("name", sorted(TABLES))
def test_every_table_fits_the_line(name: str) -> None:
    assert table_width(TABLES[name]) <= LINE_WIDTH


@pytest.mark.parametrize("name", sorted(TABLES))
def test_long_values_are_cut_to_their_column(name: str) -> None:
    columns = TABLES[name]
    item: dict[str, Any] = {
        key: "W" * 300
        for key in ("delivery_id", "status", "template", "reason", "last_error", "message", "idempotency_key")
    }
    item |= {
        "created_at": "2026-11-22T10:00:05.123456Z",
        "received_at": "2026-11-22T10:00:05Z",
        "started_at": "2026-11-22T10:00:05Z",
        "to": ["x" * 300 + "@example.com"],
        "recipient_count": 12,
        "locales": ["pt-BR"] * 50,
        "required_variables": ["v" * 40] * 5,
        "id": "t" * 80,
        "malformed_id": 123456789012,
        "number": 12345,
        "address": "é" * 200,
        "smtp_reply": "日本" * 100,
        "description": "d" * 400,
    }
    table = render_table(columns, [item, item])
    lines = table.splitlines()
    assert len(lines) == 3
    for line in lines:
        assert cells(line) <= table_width(columns), line
        assert line == line.rstrip()
    assert ELLIPSIS in lines[1]


@given(st.lists(st.fixed_dictionaries({"a": st.text(), "b": st.text(), "n": st.integers()}), max_size=5))
def test_any_text_stays_within_the_widths(items: list[dict[str, Any]]) -> None:
    columns = [Column("a", 10, field("a")), Column("n", 6, field("n"), right=True), Column("b", 7, field("b"))]
    for line in render_table(columns, items).splitlines():
        assert cells(line) <= table_width(columns)
        assert not [ch for ch in line if unicodedata.category(ch) in UNSAFE or ch in "\u202e\u2066"], repr(line)


def test_columns_line_up_and_numbers_are_right_aligned() -> None:
    columns = [Column("name", 6, field("name")), Column("count", 5, field("count"), right=True)]
    table = render_table(columns, [{"name": "ab", "count": 7}, {"name": "abcdefgh", "count": None}])
    assert table.splitlines() == [
        "name    count",
        "ab          7",
        "abcde…      —",
    ]


def test_timestamps_are_short_and_in_utc() -> None:
    assert short_time("2026-11-22T10:00:05.123456Z") == "2026-11-22 10:00"
    assert short_time("2026-11-22T12:00:05+02:00") == "2026-11-22 10:00"
    assert short_time("2026-11-22T00:30:00-01:00") == "2026-11-22 01:30"
    assert short_time(None) == "—"
    assert short_time("not a time") == "not a time"  # shown as given rather than hidden
    assert full_time("2026-11-22T12:00:05.9+02:00") == "2026-11-22 10:00:05 UTC"
    assert full_time(None) == "—"


def _args(**values: Any) -> Namespace:
    return Namespace(**values)


def test_a_page_says_how_many_and_how_to_go_on() -> None:
    render = page_table(deliveries.COLUMNS, "delivery", "deliveries")
    item = {"delivery_id": "id-1", "status": "sent", "created_at": "2026-11-22T10:00:05Z", "to": ["a@b.c"]}
    cursor = "ZHwy" * 24
    one = render({"items": [item], "next_cursor": cursor}, _args()).splitlines()
    assert one[-2:] == ["1 delivery; the next page with", f"  --cursor {cursor}"]
    assert all(cells(line) <= LINE_WIDTH for line in one)
    last = render({"items": [item, item], "next_cursor": None}, _args()).splitlines()
    assert last[-1] == "2 deliveries"
    assert render({"items": [], "next_cursor": None}, _args()) == "no deliveries"


def test_every_command_declares_an_example_of_itself() -> None:
    for group in GROUPS:
        for command in group.commands:
            assert command.example.startswith(f"mailsvc ops {group.name} {command.name}"), command.example


DETAIL: dict[str, Any] = {
    "delivery_id": "01a233ab-e822-786c-9282-7735c1b62c47",
    "source": "notification",
    "status": "dead_lettered",
    "template": None,
    "locale": None,
    "template_digest": None,
    "priority": "normal",
    "send_at": "2026-11-22T10:00:00Z",
    "expires_at": None,
    "idempotency_key": "k-1",
    "message_id": "<m1@mail.example.com>",
    "tags": {"run": "r1"},
    "attempt_count": 1,
    "next_attempt_at": None,
    "last_error": "550 mailbox unavailable\r\nInjected: header",
    "resend_of": None,
    "created_at": "2026-11-22T10:00:00Z",
    "updated_at": "2026-11-22T10:00:01Z",
    "finished_at": "2026-11-22T10:00:01Z",
    "to": ["Zoe+bounce@Example.org"],
    "recipient_count": 2,
    "subject": "\x1b]0;owned\x07Bounce",
    "reply_to": {"email": "support@example.com", "name": "Support"},
    "headers": {"X-Campaign": "winter"},
    "recipients": [
        {"kind": "to", "address": "Zoe+bounce@Example.org", "name": None, "outcome": "refused", "smtp_code": 550,
         "smtp_reply": "5.1.1 mailbox unavailable"},
        {"kind": "bcc", "address": "audit@example.com", "name": "Audit", "outcome": None, "smtp_code": None,
         "smtp_reply": None},
    ],
    "attempts": [
        {"number": 1, "started_at": "2026-11-22T10:00:00.5Z", "finished_at": "2026-11-22T10:00:01Z",
         "outcome": "permanent_failure", "ambiguous": False, "smtp_code": 550, "smtp_reply": "5.1.1 " + "x" * 200,
         "error_class": "recipients_refused", "provider": "smtp", "duration_ms": 512},
    ],
    "dead_letter": {"reason": "permanent_failure", "last_error": "550 mailbox unavailable",
                    "created_at": "2026-11-22T10:00:01Z"},
    "resends": ["01a233ab-0000-7000-8000-000000000001", "01a233ab-0000-7000-8000-000000000002"],
}  # fmt: skip


def test_the_detail_reads_as_sections() -> None:
    shown = render_detail(DETAIL)
    lines = shown.splitlines()
    assert lines[0] == "delivery      01a233ab-e822-786c-9282-7735c1b62c47"
    assert "template      (raw content)" in lines
    assert "subject       \ufffd]0;owned\ufffdBounce" in lines
    assert "reply-to      Support <support@example.com>" in lines
    assert "last error    550 mailbox unavailable  Injected: header" in lines
    assert "resends       01a233ab-0000-7000-8000-000000000001, 01a233ab-0000-7000-8000-000000000002" in lines
    assert "created       2026-11-22 10:00:00 UTC" in lines
    recipients_at = lines.index("recipients")
    assert lines[recipients_at + 2].split()[:5] == ["to", "Zoe+bounce@Example.org", "—", "refused", "550"]
    assert lines[recipients_at + 3].split()[:3] == ["bcc", "audit@example.com", "Audit"]
    attempts_at = lines.index("attempts")
    assert lines[attempts_at + 2].split()[:6] == ["1", "2026-11-22", "10:00:00", "permanent_failure", "550", "512"]
    assert lines[attempts_at + 2].endswith(ELLIPSIS)
    dead_at = lines.index("dead letter")
    assert lines[dead_at + 1 : dead_at + 3] == [
        "reason        permanent_failure",
        "since         2026-11-22 10:00:01 UTC",
    ]
    assert "text body" not in lines
    assert "redacted" not in shown
    for line in lines:
        assert cells(line) <= LINE_WIDTH, line
        assert "\x1b" not in line


def test_the_detail_shows_bodies_redaction_and_an_empty_attempt_list() -> None:
    detail = DETAIL | {
        "attempts": [],
        "dead_letter": None,
        "redacted": True,
        "subject": None,
        "text_body": "Hello\nsecond line\x1b[2J\n",
        "html_body": None,
    }
    lines = render_detail(detail).splitlines()
    assert "redacted      yes" in lines
    assert "subject       —" in lines
    assert lines[lines.index("attempts") + 1] == "none yet"
    assert "dead letter" not in lines
    body = lines.index("text body")
    assert lines[body + 1 : body + 3] == ["Hello", "second line\ufffd[2J"]
    assert lines[lines.index("html body") + 1] == "—"
