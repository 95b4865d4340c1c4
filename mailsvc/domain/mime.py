"""Hand-assembled RFC 5322 / RFC 2045 messages: the bytes every attempt of a delivery sends.

The stdlib `EmailMessage` + generator costs ~1 ms of CPU per message (SPEC §10); this builder
writes the few shapes we need directly, in tens of microseconds:

- headers: Date, From, To, Cc, Reply-To, Subject, Message-ID, MIME-Version, the caller's `X-*`
  headers, then Content-Type / Content-Transfer-Encoding; `Bcc` never appears;
- non-ASCII (or otherwise unsafe) subjects, header values and display names become RFC 2047
  base64 encoded-words of at most 64 characters, folded onto continuation lines, so no header
  line passes 998 octets and nearly all stay within 78;
- addresses must be ASCII in the local part (we do not use SMTPUTF8; callers validate addresses
  upstream and refuse non-ASCII local parts); non-ASCII domains are IDNA-encoded (punycode);
- bodies are `text/plain` (and `text/html` inside `multipart/alternative`), UTF-8, `7bit` when
  plain ASCII with every line within RFC 5322's 998-octet limit (templates' long HTML lines are
  sent as written, not inflated by quoted-printable's `=3D` for every attribute), else
  quoted-printable; line endings are normalised to CRLF;
- `build_message` also says where each body lies in the bytes when they hold it verbatim (7bit,
  and the submitted text had no CR: the part is the text with each LF written as CRLF), so the
  store can keep the message and not a second copy of the bodies (migration 0012).

A CR or LF in any header input raises `ValueError`: header injection is impossible by design.
"""

from __future__ import annotations

import binascii
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from email.utils import format_datetime
from functools import lru_cache

import idna

from mailsvc.domain.model import Address
from mailsvc.domain.randomness import random_bytes

__all__ = ["BuiltMessage", "Span", "ascii_address", "build_message", "make_message_id"]

# byte offsets [start, end) of a body within the message bytes
Span = tuple[int, int]


@dataclass(frozen=True, slots=True)
class BuiltMessage:
    """A message's bytes and, for each body they hold verbatim, its span: that slice with CRLF back
    to LF is exactly the text submitted (`adapters/postgres/payload_bodies.py`). None where the part
    is encoded (quoted-printable) or the text had a CR (normalised to CRLF, so not given back as
    submitted); `html_span` also without HTML."""

    mime: bytes
    text_span: Span | None
    html_span: Span | None


_FOLD_AT = 78  # preferred maximum header line length (RFC 5322 §2.1.1)
_MAX_PLAIN_WORD = 900  # a longer unbroken word is encoded (and so split) to stay under 998
_EW_BYTES = 39  # raw bytes per encoded-word: 52 base64 chars, 64 chars with the delimiters
_MAX_7BIT_LINE = 998  # RFC 5322 §2.1.1 and RFC 2045 §2.7: the hard limit for 7bit lines
_MAX_ADDRESS = 320

_LOCAL_PART = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+")
_ASCII_DOMAIN = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?|\[[A-Za-z0-9.:-]+\]")
_ATOM = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+")
_HEADER_NAME = re.compile(r"X-[A-Za-z0-9-]+", re.IGNORECASE)
# a plain ASCII dot-atom address with an LDH domain: what `ascii_address` returns unchanged
_WIRE_FORM = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?")


def _reject_line_breaks(what: str, value: str) -> None:
    if "\r" in value or "\n" in value:
        raise ValueError(f"{what} must not contain CR or LF")


@lru_cache(maxsize=4096)
def ascii_address(email: str) -> str:
    """`local@domain` as it may appear in headers and the SMTP envelope: ASCII, IDN domains in
    punycode. Raises `ValueError` for a line break, a non-ASCII or unusual local part (quoted
    local parts are not supported) or an invalid domain."""
    _reject_line_breaks("address", email)
    local, at, domain = email.rpartition("@")
    if not at or not _LOCAL_PART.fullmatch(local):
        raise ValueError("address has no valid ASCII local part")
    if not domain.isascii():
        try:
            domain = idna.encode(domain, uts46=True).decode("ascii")
        except idna.IDNAError as exc:
            raise ValueError("address has an invalid internationalised domain") from exc
    if not _ASCII_DOMAIN.fullmatch(domain):
        raise ValueError("address has an invalid domain")
    address = f"{local}@{domain}"
    if len(address) > _MAX_ADDRESS:
        raise ValueError("address is too long")
    return address


def make_message_id(domain: str) -> str:
    """A fresh, globally unique `<hex@domain>` Message-ID: the millisecond it was made (48 bits) and
    80 random bits, as 32 hex digits."""
    # time first, like the delivery ids (UUIDv7): `deliveries.message_id` has a unique index, and
    # random keys would put every insert on a random leaf of an index that only grows (a page
    # read, dirtied and written in full after each checkpoint); random bytes + hex, not a UUID
    # object; the domain, always the configured one, is checked once
    return f"<{time.time_ns() // 1_000_000:012x}{random_bytes(10).hex()}@{_message_id_domain(domain)}>"


@lru_cache(maxsize=64)
def _message_id_domain(domain: str) -> str:
    _reject_line_breaks("message id domain", domain)
    if not domain.isascii():
        domain = idna.encode(domain, uts46=True).decode("ascii")
    if not _ASCII_DOMAIN.fullmatch(domain):
        raise ValueError("invalid message id domain")
    return domain


def _encoded_words(text: str) -> list[str]:
    """RFC 2047 B encoded-words, never splitting a UTF-8 sequence across two words."""
    data = text.encode("utf-8")
    words: list[str] = []
    start, end_of_data = 0, len(data)
    while start < end_of_data:
        end = min(start + _EW_BYTES, end_of_data)
        while end < end_of_data and (data[end] & 0xC0) == 0x80:
            end -= 1
        words.append(f"=?utf-8?b?{binascii.b2a_base64(data[start:end], newline=False).decode()}?=")
        start = end
    return words


def _is_plain(text: str) -> bool:
    """Printable ASCII that survives header unfolding unchanged and holds nothing a reader could
    mistake for an encoded-word."""
    return text.isascii() and text.isprintable() and "=?" not in text and "  " not in text and text == text.strip()


def _fold(name: str, tokens: Iterable[str]) -> str:
    """`Name: tok tok …` folded before a token that would pass the preferred line length."""
    lines: list[str] = []
    line = name + ":"
    bare = True
    for token in tokens:
        if not bare and len(line) + 1 + len(token) > _FOLD_AT:
            lines.append(line)
            line = " " + token
        else:
            line = f"{line} {token}"
            bare = False
    lines.append(line)
    return "\r\n".join(lines) + "\r\n"


def _unstructured(name: str, value: str) -> str:
    _reject_line_breaks(name, value)
    if _is_plain(value):
        if len(name) + 2 + len(value) <= _FOLD_AT:
            return f"{name}: {value}\r\n"
        words = value.split(" ")
        if max(map(len, words)) <= _MAX_PLAIN_WORD:
            return _fold(name, words)
    return _fold(name, _encoded_words(value))


@lru_cache(maxsize=4096)
def _mailbox_tokens(address: Address) -> tuple[str, ...]:
    """The foldable pieces of one mailbox: display-name words, then `<addr>` (or a bare addr).

    Validation hands over addresses in their wire form already (normalised once, there): only
    anything else — a configured sender, an IDN spelled in Unicode — is normalised here."""
    addr = address.email if _WIRE_FORM.fullmatch(address.email) else ascii_address(address.email)
    name = address.name
    if not name:
        return (addr,)
    _reject_line_breaks("display name", name)
    if _is_plain(name):
        words = name.split(" ")
        if all(_ATOM.fullmatch(word) for word in words):
            return (*words, f"<{addr}>")
        quoted = '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if len(quoted) <= _FOLD_AT - 12:
            return (quoted, f"<{addr}>")
    return (*_phrase(name), f"<{addr}>")


def _phrase(name: str) -> list[str]:
    """A display name as atoms and encoded-words: plain ASCII words stay literal and each run of
    other words becomes encoded-words, so that short runs are a single encoded-word. (Decoders
    that keep the space between two adjacent encoded-words, such as Python's address parser,
    then still read the name exactly; RFC 2047 decoders always do.)"""
    if not name.isprintable() or name != name.strip() or "  " in name:
        return _encoded_words(name)
    tokens: list[str] = []
    run: list[str] = []
    for word in name.split(" "):
        if _ATOM.fullmatch(word) and "=?" not in word:
            if run:
                tokens.extend(_encoded_words(" ".join(run)))
                run.clear()
            tokens.append(word)
        else:
            run.append(word)
    if run:
        tokens.extend(_encoded_words(" ".join(run)))
    return tokens


def _address_header(name: str, addresses: Sequence[Address]) -> str:
    tokens: list[str] = []
    last = len(addresses) - 1
    for index, address in enumerate(addresses):
        mailbox = _mailbox_tokens(address)
        tokens.extend(mailbox[:-1])
        tokens.append(mailbox[-1] + ("," if index < last else ""))
    return _fold(name, tokens)


def _body(content: str) -> tuple[str, bytes, bool]:
    """(transfer encoding, encoded CRLF body, whether the body is `content` with each LF as CRLF)
    for one text part."""
    verbatim = "\r" not in content
    if not verbatim:
        content = content.replace("\r\n", "\n").replace("\r", "\n")
    if content.isascii() and "\x00" not in content and _lines_within(content, _MAX_7BIT_LINE):
        return "7bit", content.replace("\n", "\r\n").encode("ascii"), verbatim
    encoded = binascii.b2a_qp(content.encode("utf-8"), istext=True)
    return "quoted-printable", encoded.replace(b"\n", b"\r\n"), False


def _lines_within(content: str, limit: int) -> bool:
    """Whether no line of `content` (lines end at "\n") is longer than `limit` characters.

    One `rfind` per window of `limit` characters instead of a string per line (`split` was two
    thirds of an HTML body's encoding); linear still: the window after the last line break found
    must hold another one within `limit`, so every two windows move on by more than `limit`. (A
    regex for "limit + 1 non-newlines" would rescan each line from every position.)"""
    start = 0
    while len(content) - start > limit:
        newline = content.rfind("\n", start, start + limit + 1)
        if newline < 0:
            return False
        start = newline + 1
    return True


@lru_cache(maxsize=64)
def _date_header(date: datetime) -> str:
    """`format_datetime`, once per second: every message built in that second has the same Date."""
    return format_datetime(date)


def _part(subtype: str, content: str, at: int) -> tuple[bytes, Span | None]:
    """One text part, written at offset `at` of the message, and its body's span when verbatim."""
    cte, body, verbatim = _body(content)
    head = f"Content-Type: text/{subtype}; charset=utf-8\r\nContent-Transfer-Encoding: {cte}\r\n\r\n".encode("ascii")
    start = at + len(head)
    return head + body, (start, start + len(body)) if verbatim else None


def build_message(
    *,
    from_addr: Address,
    to: Sequence[Address],
    cc: Sequence[Address],
    reply_to: Address | None,
    subject: str,
    text: str,
    html: str | None,
    headers: Mapping[str, str],
    message_id: str,
    date: datetime,
) -> BuiltMessage:
    """The complete message as CRLF bytes, ready for `SMTP.sendmail`, and where its bodies lie in
    them. Raises `ValueError` on a line break in any header input, an unusable address, or an
    extra header not named `X-…`."""
    _reject_line_breaks("message id", message_id)
    if not message_id.isascii() or " " in message_id:
        raise ValueError("message id must be ASCII without spaces")
    if not message_id.startswith("<"):
        message_id = f"<{message_id}>"
    out = [
        f"Date: {_date_header(date.replace(microsecond=0))}\r\n",
        _address_header("From", (from_addr,)),
    ]
    if to:
        out.append(_address_header("To", to))
    if cc:
        out.append(_address_header("Cc", cc))
    if reply_to is not None:
        out.append(_address_header("Reply-To", (reply_to,)))
    out.append(_unstructured("Subject", subject))
    out.append(f"Message-ID: {message_id}\r\nMIME-Version: 1.0\r\n")
    for name, value in headers.items():
        if not _HEADER_NAME.fullmatch(name):
            raise ValueError(f"extra header {name[:40]!r} is not an X- header")
        out.append(_unstructured(name, value))
    html_span = None
    if html is None:
        head = "".join(out).encode("ascii")
        plain, text_span = _part("plain", text, len(head))
        message = head + plain
    else:
        # "=_" cannot occur in quoted-printable text, and the random part in 7bit text
        boundary = "=_" + random_bytes(16).hex()
        out.append(f'Content-Type: multipart/alternative;\r\n boundary="{boundary}"\r\n\r\n')
        head = "".join(out).encode("ascii")
        delimiter = f"\r\n--{boundary}\r\n".encode("ascii")
        at = len(head) + len(delimiter) - 2
        plain, text_span = _part("plain", text, at)
        rich, html_span = _part("html", html, at + len(plain) + len(delimiter))
        message = b"".join((head, delimiter[2:], plain, delimiter, rich, f"\r\n--{boundary}--\r\n".encode("ascii")))
    if not message.endswith(b"\r\n"):
        message += b"\r\n"
    return BuiltMessage(message, text_span, html_span)
