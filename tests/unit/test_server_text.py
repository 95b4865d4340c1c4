"""server_text: whatever a server sends, what we store is valid UTF-8, holds no C0 control but tab,
and is at most 512 characters (SPEC §1)."""

from __future__ import annotations

import re

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from mailsvc.domain.server_text import SERVER_TEXT_LIMIT, server_text

_FORBIDDEN = re.compile(r"[\x00-\x08\x0a-\x1f\ud800-\udfff]")


def storable(text: str) -> bool:
    """What asyncpg can encode and PostgreSQL `text` can hold, within the limit."""
    text.encode("utf-8")  # raises on a lone surrogate
    return _FORBIDDEN.search(text) is None and len(text) <= SERVER_TEXT_LIMIT


def as_aiosmtplib_decodes(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


@pytest.mark.parametrize(
    ("raw", "stored"),
    [
        (b"5.1.1 M\xfcller unknown\x00", "5.1.1 M\ufffdller unknown"),
        (b"\xff", "\ufffd"),
        (b"4.2.0 greylisted,\ttry again", "4.2.0 greylisted,\ttry again"),  # tab stays
        (b"\x1b[31mred\x07\x7f", "[31mred\x7f"),  # ESC and BEL go; DEL is not a C0 control
        ("5.7.1 caf\u00e9 \u2603".encode(), "5.7.1 caf\u00e9 \u2603"),  # valid UTF-8 is kept
        (b"first line\nsecond line\r\nthird", "first line second line third"),  # lines stay apart
    ],
)
def test_server_bytes_as_aiosmtplib_decodes_them_become_storable_text(raw: bytes, stored: str) -> None:
    assert server_text(as_aiosmtplib_decodes(raw)) == stored
    assert server_text(raw) == stored  # the same from the bytes themselves


def test_text_is_cut_to_512_characters_after_cleaning() -> None:
    assert server_text("x" * 600) == "x" * 512
    assert server_text("\x00" * 100 + "y" * 600) == "y" * 512
    assert server_text("\udcfc" * 600) == "\ufffd" * 512
    assert server_text("abc", limit=2) == "ab"


def test_none_stays_none_and_ordinary_replies_are_unchanged() -> None:
    assert server_text(None) is None
    assert server_text("2.0.0 Ok: queued as 4BqKc62Hfgz1") == "2.0.0 Ok: queued as 4BqKc62Hfgz1"
    assert server_text("") == ""


@given(st.binary(max_size=2000))
@example(b"550 5.1.1 M\xfcller\x00")
@example(b"\xed\xa0\x80")  # an encoded surrogate: not valid UTF-8
def test_any_server_bytes_become_storable(raw: bytes) -> None:
    assert storable(server_text(as_aiosmtplib_decodes(raw)) or "")
    assert storable(server_text(raw) or "")


@given(st.text(max_size=2000))
@example("\ud83d\ude00")  # a surrogate pair as two code points is still not UTF-8
def test_any_text_becomes_storable_and_cleaning_twice_changes_nothing(text: str) -> None:
    once = server_text(text)
    assert once is not None
    assert storable(once)
    assert server_text(once) == once


@given(st.text(alphabet=st.characters(exclude_categories=("Cs", "Cc")) | st.just("\t"), max_size=SERVER_TEXT_LIMIT))
def test_text_that_is_already_storable_is_kept_as_it_is(text: str) -> None:
    assert server_text(text) == text
