"""ReplyParser: a server's bytes become SMTP replies (RFC 5321 §4.2) however they are split, and
anything else is a `MalformedReply`, never another exception and never unbounded memory."""

from __future__ import annotations

import itertools

import pytest
from aiosmtplib import SMTPResponse
from hypothesis import given
from hypothesis import strategies as st

from mailsvc.adapters.smtp_pipeline import MAX_LINE, MAX_REPLY, MalformedReply, ReplyParser

STREAM = (
    b"250-mx.test greets you\r\n250-second line\r\n250 last\r\n"
    b"250 2.1.5 ok\r\n"
    b"550 5.1.1 no such user\r\n"
    b"354\r\n"
    b"251 bare LF\n"
    b"452 4.3.1 M\xfcller \x00 full\r\n"
)
EXPECTED = [
    SMTPResponse(250, "mx.test greets you\nsecond line\nlast"),
    SMTPResponse(250, "2.1.5 ok"),
    SMTPResponse(550, "5.1.1 no such user"),
    SMTPResponse(354, ""),
    SMTPResponse(251, "bare LF"),
    SMTPResponse(452, "4.3.1 M\udcfcller \x00 full"),  # as aiosmtplib decodes it: server_text's job next
]


def parse(*chunks: bytes) -> list[SMTPResponse]:
    parser = ReplyParser()
    for chunk in chunks:
        parser.feed(chunk)
    assert parser.idle == (not parser.replies)
    return list(parser.replies)


def test_a_stream_in_one_piece() -> None:
    assert parse(STREAM) == EXPECTED


@given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=12))
def test_the_same_replies_however_the_stream_is_split(cuts: list[int]) -> None:
    bounds = [0, *sorted(cuts), len(STREAM)]
    assert parse(*(STREAM[a:b] for a, b in itertools.pairwise(bounds))) == EXPECTED


def test_a_reply_begun_is_not_idle() -> None:
    parser = ReplyParser()
    parser.feed(b"250-first\r\n")
    assert not parser.idle
    assert not parser.replies
    parser.feed(b"250 done\r\n25")
    assert [r.message for r in parser.replies] == ["first\ndone"]
    parser.replies.clear()
    assert not parser.idle  # "25" waits for the rest of its line
    parser.feed(b"0 ok\r\n")
    assert parser.replies.popleft() == SMTPResponse(250, "ok")
    assert parser.idle


@pytest.mark.parametrize(
    "data",
    [
        b"HELLO\r\n",
        b"\r\n",
        b"25 OK\r\n",
        b"2x0 OK\r\n",
        b"650 out of range\r\n",
        b"160 out of range\r\n",
        b"260 second digit out of range\r\n",
        b"250x glued\r\n",
        b"250\rjunk\r\n",
        b"250-OK\r\n251 changed code\r\n",
        b"250 " + b"x" * MAX_LINE + b"\r\n",
        b"250 " + b"x" * MAX_LINE,  # no line end in sight
        b"250-x\r\n" * (MAX_REPLY // 7 + 1),
    ],
    ids=lambda data: repr(data[:24]),
)
def test_what_is_not_a_reply_is_malformed(data: bytes) -> None:
    with pytest.raises(MalformedReply) as raised:
        parse(data)
    assert raised.value.code == -1


@given(st.binary(max_size=200))
def test_arbitrary_bytes_raise_nothing_but_malformed_reply(data: bytes) -> None:
    parser = ReplyParser()
    try:
        parser.feed(data)
    except MalformedReply:
        return
    assert all(200 <= r.code <= 559 for r in parser.replies)
