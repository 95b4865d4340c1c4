"""The hand-built MIME bytes, checked by parsing them back with the stdlib's strict parser."""

from __future__ import annotations

import email
import email.policy
import random
import re
import time
from datetime import UTC, datetime, timedelta, timezone
from email.header import decode_header, make_header
from email.message import EmailMessage
from typing import Any

import pytest

from mailsvc.domain.mime import (
    BuiltMessage,
    Span,
    _lines_within,
    ascii_address,
    build_message,
    make_message_id,
)
from mailsvc.domain.model import Address

DATE = datetime(2025, 3, 4, 5, 6, 7, tzinfo=timezone(timedelta(hours=-3)))
MESSAGE_ID = "<0123456789abcdef@mail.example.com>"


def body_of(mime: bytes, span: Span) -> str:
    """What a reader of the stored row gets from a span (`payload_bodies.body_sql`): the slice with
    CRLF back to LF."""
    start, end = span
    return mime[start:end].replace(b"\r\n", b"\n").decode("ascii")


def build(**overrides: Any) -> bytes:
    fields: dict[str, Any] = {
        "from_addr": Address("noreply@example.com", "Example"),
        "to": [Address("ann@example.org", "Ann Lee")],
        "cc": [],
        "reply_to": None,
        "subject": "Your code",
        "text": "Hello,\nyour code is 123456.\n",
        "html": None,
        "headers": {},
        "message_id": MESSAGE_ID,
        "date": DATE,
    }
    fields.update(overrides)
    return build_message(**fields).mime


def parse(raw: bytes) -> EmailMessage:
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    assert not message.defects
    return message


def lines(raw: bytes) -> list[bytes]:
    assert raw.endswith(b"\r\n")
    return raw[:-2].split(b"\r\n")


def assert_wire_safe(raw: bytes) -> None:
    assert raw.isascii()
    assert b"\n" not in raw.replace(b"\r\n", b""), "bare LF"
    assert b"\r" not in raw.replace(b"\r\n", b""), "bare CR"
    assert all(len(line) <= 998 for line in lines(raw))
    head = raw.split(b"\r\n\r\n", 1)[0]
    assert all(len(line) <= 78 for line in head.split(b"\r\n"))


def decoded(part: EmailMessage) -> str:
    content = part.get_content()
    assert isinstance(content, str)
    return content.replace("\r\n", "\n")


def test_plain_ascii_message_has_every_header() -> None:
    raw = build(
        cc=[Address("bob@example.org"), Address("cy@example.net", "Cy")],
        reply_to=Address("support@example.com", "Support"),
        headers={"X-Mailsvc-Delivery": "d-1", "X-Campaign": "spring sale"},
    )
    assert_wire_safe(raw)
    message = parse(raw)
    assert message["From"].addresses[0].display_name == "Example"
    assert message["From"].addresses[0].addr_spec == "noreply@example.com"
    assert [(a.display_name, a.addr_spec) for a in message["To"].addresses] == [("Ann Lee", "ann@example.org")]
    assert [(a.display_name, a.addr_spec) for a in message["Cc"].addresses] == [
        ("", "bob@example.org"),
        ("Cy", "cy@example.net"),
    ]
    assert message["Reply-To"].addresses[0].addr_spec == "support@example.com"
    assert message["Subject"] == "Your code"
    assert message["Message-ID"] == MESSAGE_ID
    assert message["MIME-Version"] == "1.0"
    assert message["Date"].datetime == DATE
    assert message["X-Mailsvc-Delivery"] == "d-1"
    assert message["X-Campaign"] == "spring sale"
    assert message.get_content_type() == "text/plain"
    assert message.get_content_charset() == "utf-8"
    assert message["Content-Transfer-Encoding"] == "7bit"
    assert decoded(message) == "Hello,\nyour code is 123456.\n"
    assert "Bcc" not in message
    assert b"bcc" not in raw.lower()


def test_optional_headers_are_absent_when_not_given() -> None:
    message = parse(build())
    assert "Cc" not in message
    assert "Reply-To" not in message
    assert not [k for k in message if k.lower().startswith("x-")]


def test_multipart_alternative_with_both_parts() -> None:
    text = "Olá, João!\nSeu código é 123456.\nAção necessária: não responda.\n"
    html = "<p>Olá, <b>João</b>!</p>\n<p>Seu código é 123456 🎉</p>\n"
    raw = build(text=text, html=html)
    assert_wire_safe(raw)
    message = parse(raw)
    assert message.get_content_type() == "multipart/alternative"
    boundary = message.get_boundary()
    assert boundary is not None
    assert raw.count(f"--{boundary}".encode()) == 3
    plain, rich = message.iter_parts()
    assert plain.get_content_type() == "text/plain"
    assert rich.get_content_type() == "text/html"
    assert plain.get_content_charset() == rich.get_content_charset() == "utf-8"
    assert plain["Content-Transfer-Encoding"] == "quoted-printable"
    assert decoded(plain) == text
    assert decoded(rich) == html


def test_boundaries_differ_between_messages() -> None:
    first = parse(build(html="<p>x</p>")).get_boundary()
    second = parse(build(html="<p>x</p>")).get_boundary()
    assert first != second


@pytest.mark.parametrize(
    "text",
    [
        "plain ascii\n",
        "Português: ação, pão, coração, àéêíóõúç ÀÉÊÍÓÕÚÇ\n",
        "emoji 🚀🎉👍🏽 and a family 👨‍👩‍👧\n",
        "x" * 5000 + "\n",
        "é" * 3000,
        ".\n..\n.starts with a dot\n.\n",
        "trailing spaces   \nand\ttabs\t\n",
        "ends without newline",
        "windows\r\nline\r\nendings\r\n",
        "a=b ?= =?utf-8?b?x?= soft=\n",
        "",
    ],
)
def test_text_bodies_round_trip(text: str) -> None:
    raw = build(text=text, html=f"<pre>{text}</pre>")
    assert_wire_safe(raw)
    plain, rich = parse(raw).iter_parts()
    expected = text.replace("\r\n", "\n")
    assert decoded(plain) == expected
    assert decoded(rich) == f"<pre>{expected}</pre>"


def test_single_part_body_round_trips() -> None:
    text = "Olá 🚀\n" + "long line " * 300 + "\n.dot\n"
    raw = build(text=text)
    assert_wire_safe(raw)
    assert decoded(parse(raw)) == text


def test_ascii_within_the_998_octet_line_limit_stays_7bit_and_longer_lines_use_quoted_printable() -> None:
    assert parse(build(text="short\n"))["Content-Transfer-Encoding"] == "7bit"
    assert parse(build(text="y" * 998 + "\nz"))["Content-Transfer-Encoding"] == "7bit"
    raw = build(text="y" * 999 + "\n")
    assert parse(raw)["Content-Transfer-Encoding"] == "quoted-printable"
    assert_wire_safe(raw)
    assert decoded(parse(raw)) == "y" * 999 + "\n"
    assert parse(build(text="a NUL \x00 is never 7bit"))["Content-Transfer-Encoding"] == "quoted-printable"


@pytest.mark.parametrize(
    "subject",
    [
        "Seu código de acesso",
        "🎉 Parabéns! 🎉",
        "Ação " * 60,
        "word " * 100 + "end",
        "a" * 2000,
        "looks =?utf-8?q?encoded?= but is not",
        "  leading and trailing  ",
        "double  space",
        "tab\there",
        "",
    ],
)
def test_subjects_round_trip(subject: str) -> None:
    raw = build(subject=subject)
    assert_wire_safe(raw)
    assert parse(raw)["Subject"] == subject


def test_non_ascii_subject_uses_encoded_words() -> None:
    raw = build(subject="Olá " * 40)
    head = raw.split(b"\r\n\r\n", 1)[0].decode()
    subject_lines = re.search(r"^Subject:.*?(?=\r\n\S)", head, re.S | re.M)
    assert subject_lines is not None
    assert "=?utf-8?b?" in subject_lines.group(0)
    assert "\r\n " in subject_lines.group(0)  # folded


@pytest.mark.parametrize(
    "name",
    [
        "João da Silva",
        "Silva, João",
        'Ann "The Boss" Lee',
        "Dr. Ann Lee (admin)",
        "back\\slash",
        "🚀 Rocket Team",
        "O'Brien",
        "=?utf-8?b?Zm9v?=",
        ("Name " * 40).strip(),
        ("Ação de Graças " * 8).strip(),
        "Conceição Araújo",
        "山田太郎",
    ],
)
def test_display_names_round_trip(name: str) -> None:
    raw = build(to=[Address("ann@example.org", name), Address("bob@example.org", name)], cc=[])
    assert_wire_safe(raw)
    addresses = parse(raw)["To"].addresses
    assert [(a.display_name, a.addr_spec) for a in addresses] == [
        (name, "ann@example.org"),
        (name, "bob@example.org"),
    ]


@pytest.mark.parametrize("name", ["Conceição-Araújo-Pereira-Gonçalves-Magalhães-Vasconcelos", "  padded\tname " * 5])
def test_long_encoded_display_names_decode_per_rfc_2047(name: str) -> None:
    # Python's address parser keeps the folding space between two adjacent encoded-words (RFC
    # 2047 §6.2 says to drop it), so check these with the RFC-conforming decoder
    raw = build(to=[Address("ann@example.org", name)])
    assert_wire_safe(raw)
    value = parse(raw)["To"]
    assert value.addresses[0].addr_spec == "ann@example.org"
    field = raw.split(b"\r\nTo: ", 1)[1].split(b"\r\nSubject:", 1)[0].decode()
    phrase = field.replace("\r\n", "").rsplit(" <", 1)[0]
    assert phrase.count("=?utf-8?b?") > 1
    assert str(make_header(decode_header(phrase))) == name


def test_specials_in_display_name_are_quoted() -> None:
    raw = build(to=[Address("ann@example.org", "Lee, Ann")])
    assert b'To: "Lee, Ann" <ann@example.org>\r\n' in raw


def test_many_recipients_fold_the_address_header() -> None:
    to = [Address(f"user{i}@example.org", f"User Number {i}") for i in range(30)]
    raw = build(to=to)
    assert_wire_safe(raw)
    assert [a.addr_spec for a in parse(raw)["To"].addresses] == [a.email for a in to]


def test_idn_domains_are_punycode_in_headers() -> None:
    raw = build(to=[Address("ana@bücher.example", "Ana")], from_addr=Address("no@exämple.com"))
    assert_wire_safe(raw)
    message = parse(raw)
    assert message["To"].addresses[0].addr_spec == "ana@xn--bcher-kva.example"
    assert message["From"].addresses[0].addr_spec == "no@xn--exmple-cua.com"


def test_ascii_address_helper() -> None:
    assert ascii_address("a.b+tag@example.com") == "a.b+tag@example.com"
    assert ascii_address("x@straße.de") == "x@xn--strae-oqa.de"
    for bad in ("jõao@example.com", "no-at-sign", "a b@example.com", "a@exa mple.com", "a@b\r\nRCPT"):
        with pytest.raises(ValueError):
            ascii_address(bad)


@pytest.mark.parametrize(
    "overrides",
    [
        {"subject": "hi\r\nBcc: evil@example.com"},
        {"subject": "hi\nthere"},
        {"headers": {"X-Tag": "a\rb"}},
        {"headers": {"X-Bad\r\nBcc": "x"}},
        {"headers": {"Bcc": "evil@example.com"}},
        {"headers": {"Subject": "second subject"}},
        {"to": [Address("ann@example.org", "Ann\r\nBcc: evil@example.com")]},
        {"to": [Address("ann@example.org\r\nBcc: evil@example.com")]},
        {"reply_to": Address("x@example.org\n")},
        {"message_id": "<a@b>\r\nBcc: evil@example.com"},
    ],
)
def test_line_breaks_and_foreign_headers_are_refused(overrides: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        build(**overrides)


def test_message_id_is_used_as_given_and_bracketed_when_bare() -> None:
    assert parse(build(message_id="abc@example.com"))["Message-ID"] == "<abc@example.com>"


def test_make_message_id() -> None:
    first, second = make_message_id("mail.example.com"), make_message_id("mail.example.com")
    assert first != second
    assert re.fullmatch(r"<[0-9a-f]{32}@mail\.example\.com>", first)
    assert make_message_id("bücher.example").endswith("@xn--bcher-kva.example>")
    with pytest.raises(ValueError):
        make_message_id("example.com>\r\nX: y")


def test_a_message_id_starts_with_the_millisecond_it_was_made() -> None:
    # so the unique index on deliveries.message_id grows at its end, not on a random leaf
    before = time.time_ns() // 1_000_000
    made = [make_message_id("mail.example.com") for _ in range(100)]
    after = time.time_ns() // 1_000_000
    stamps = [int(message_id[1:13], 16) for message_id in made]
    assert all(before <= stamp <= after for stamp in stamps)
    assert stamps == sorted(stamps)
    assert len(set(made)) == len(made)


def test_naive_and_utc_dates() -> None:
    utc = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert parse(build(date=utc))["Date"].datetime == utc


def test_the_line_length_check_agrees_with_splitting_into_lines() -> None:
    rng = random.Random(7)
    cases = ["", "\n", "x" * 998, "x" * 999, "\n" * 5, "x" * 998 + "\n" + "y" * 999, "\n" + "x" * 998 + "\n"]
    for _ in range(500):
        lines = [rng.choice("ab") * rng.choice([0, 1, 10, 500, 997, 998, 999, 1000, 3000]) for _ in range(6)]
        cases.append("\n".join(lines[: rng.randint(1, 6)]))
    for content in cases:
        for limit in (998, 10):
            assert _lines_within(content, limit) == (max(map(len, content.split("\n"))) <= limit), (content, limit)


def build_spans(text: str, html: str | None) -> BuiltMessage:
    return build_message(
        from_addr=Address("noreply@example.com", "Example"),
        to=[Address("ann@example.org", "Ann Lee")],
        cc=[],
        reply_to=None,
        subject="Your code",
        text=text,
        html=html,
        headers={"X-Campaign": "c"},
        message_id=MESSAGE_ID,
        date=DATE,
    )


@pytest.mark.parametrize("html", [None, "<p>Hi</p>\n<p>there</p>"])
@pytest.mark.parametrize("text", ["Hello,\nyour code is 123456.\n", "no newline", "", "\n\n", "x" * 998 + "\n."])
def test_a_body_sent_verbatim_has_the_span_where_the_message_holds_it(text: str, html: str | None) -> None:
    built = build_spans(text, html)
    assert built.text_span is not None
    start, end = built.text_span
    assert built.mime[start:end] == text.replace("\n", "\r\n").encode()
    assert body_of(built.mime, built.text_span) == text
    if html is None:
        assert built.html_span is None
    else:
        assert built.html_span is not None
        assert body_of(built.mime, built.html_span) == html
        # each span is its part's body, nothing more, nothing less: the delimiters follow
        assert built.mime[built.text_span[1] :].startswith(b"\r\n--=_")
        assert built.mime[built.html_span[1] :].startswith(b"\r\n--=_")
        plain, rich = parse(built.mime).iter_parts()
        assert (decoded(plain), decoded(rich)) == (text, html)


@pytest.mark.parametrize(
    "text",
    [
        "Olá\n",  # non-ASCII: quoted-printable
        "line\r\nends\r\n",  # CRLF: normalised, so not given back as submitted
        "a\rb",  # bare CR
        "x" * 999,  # a line past 998 octets: quoted-printable
        "nul\x00",  # NUL: quoted-printable
    ],
)
def test_a_body_not_sent_verbatim_has_no_span(text: str) -> None:
    built = build_spans(text, text)
    assert (built.text_span, built.html_span) == (None, None)
    plain, rich = parse(built.mime).iter_parts()
    assert decoded(plain) == decoded(rich) == text.replace("\r\n", "\n").replace("\r", "\n")
