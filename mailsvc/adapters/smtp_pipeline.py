"""SMTP PIPELINING (RFC 2920) over an aiosmtplib connection: a reply reader of our own.

aiosmtplib's `SMTPProtocol` parses one reply per awaited command and drops whatever arrives while
no command waits or while a parsed reply waits to be picked up (5.1.3), so the replies to a
pipelined group would be lost. `ReplyTap` sits between the transport and aiosmtplib's protocol for
the whole life of a connection: it forwards every byte to aiosmtplib (connect, TLS and AUTH are
done before it is attached; NOOP and QUIT go through it untouched), and only while a pipelined
transaction is open does it split the bytes into replies itself (`ReplyParser`).

Every byte is hostile: a malformed line, a line or reply over the limits, a reply nobody asked
for, all void the transaction (`SMTPResponseException` with code -1, as aiosmtplib reports a
malformed reply); a connection that closes fails the replies still owed (`SMTPServerDisconnected`)
but not the ones already received. After any of it `finish()` says the connection is out of step.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import cast

from aiosmtplib import SMTPException, SMTPResponse, SMTPResponseException, SMTPServerDisconnected, SMTPStatus
from aiosmtplib.protocol import SMTPProtocol

__all__ = ["MAX_LINE", "MAX_REPLY", "MalformedReply", "ReplyParser", "ReplyTap", "command_group"]

# aiosmtplib's own bounds (protocol.MAX_LINE_LENGTH, MAX_RESPONSE_LENGTH): generous over any real
# server (RFC 5321 allows 512 octets a line), small enough that no server can make us hoard memory.
MAX_LINE = 8192
MAX_REPLY = 4 * MAX_LINE

# RFC 5321 §4.2: Reply-code = %x32-35 %x30-35 %x30-39; one lookup checks a code and converts it.
_CODES = {f"{a}{b}{c}".encode(): int(f"{a}{b}{c}") for a in "2345" for b in "012345" for c in "0123456789"}
_BARE_CODE_ENDINGS = (b"\r\n", b"\n")  # "250\r\n": a code with no text


class MalformedReply(SMTPResponseException):
    """The server sent something that is not the next SMTP reply."""

    def __init__(self, message: str) -> None:
        super().__init__(SMTPStatus.invalid_response.value, message)


class ReplyParser:
    """Splits a server's byte stream into complete replies (`replies`, oldest first); raises
    `MalformedReply` for anything RFC 5321 does not allow or beyond `MAX_LINE` / `MAX_REPLY`."""

    __slots__ = ("_code", "_partial", "_size", "_texts", "replies")

    def __init__(self) -> None:
        self.replies: deque[SMTPResponse] = deque()
        self._partial = b""  # an incomplete last line
        self._code = b""  # the code of a multi-line reply in progress
        self._texts: list[bytes] = []
        self._size = 0

    @property
    def idle(self) -> bool:
        """No reply waiting to be taken and none begun."""
        return not (self.replies or self._partial or self._code)

    def feed(self, data: bytes) -> None:
        if self._partial:
            data = self._partial + data
            self._partial = b""
        start = 0
        while (end := data.find(b"\n", start)) >= 0:
            self._line(data, start, end + 1)
            start = end + 1
        if start < len(data):
            if len(data) - start > MAX_LINE:
                raise MalformedReply("reply line too long")
            self._partial = data[start:]

    def _line(self, data: bytes, start: int, stop: int) -> None:
        if stop - start > MAX_LINE:
            raise MalformedReply("reply line too long")
        code = data[start : start + 3]
        number = _CODES.get(code)
        if number is None or (self._code and code != self._code):
            raise MalformedReply("not an SMTP reply line")
        separator = data[start + 3 : start + 4]
        if separator in (b" ", b"-"):
            text = data[start + 4 : stop].strip(b" \t\r\n")
        elif data[start + 3 : stop] in _BARE_CODE_ENDINGS:
            text = b""
        else:
            raise MalformedReply("not an SMTP reply line")
        self._size += stop - start
        if self._size > MAX_REPLY:
            raise MalformedReply("reply too long")
        if separator == b"-":
            self._code = code
            self._texts.append(text)
            return
        if self._texts:
            self._texts.append(text)
            text = b"\n".join(self._texts)  # as aiosmtplib joins a multi-line reply
            self._texts = []
        self._code = b""
        self._size = 0
        self.replies.append(SMTPResponse(number, text.decode("utf-8", "surrogateescape")))


class ReplyTap(asyncio.Protocol):
    """The transport's protocol for one connection, in front of aiosmtplib's `SMTPProtocol`.

    `begin()` opens a pipelined transaction: from then on `send()` writes commands (counting the
    replies they owe) and `reply()` returns the replies in order. `finish()` closes it and tells
    whether the connection is still in step; forward everything to aiosmtplib again either way.
    """

    def __init__(self, inner: SMTPProtocol, transport: asyncio.WriteTransport) -> None:
        self._inner = inner
        self._transport = transport
        self._parser = ReplyParser()
        self._open = False
        self._owed = 0  # replies owed for commands sent, not yet taken by `reply()`
        self._error: SMTPException | None = None
        self._waiter: asyncio.Future[None] | None = None
        # asked once: on Python 3.11 every `get_running_loop()` is a getpid() system call
        self._loop = asyncio.get_running_loop()

    @classmethod
    def attach(cls, inner: SMTPProtocol) -> ReplyTap:
        """Put a tap in front of `inner` on its (current, i.e. post-STARTTLS) transport. Once per
        connection: `set_protocol` costs a stop/start of reading on uvloop."""
        if inner.transport is None or inner.transport.is_closing():
            raise SMTPServerDisconnected("Connection lost")
        transport = cast(asyncio.WriteTransport, inner.transport)
        tap = cls(inner, transport)
        transport.set_protocol(tap)
        return tap

    # ---- the transaction -------------------------------------------------------------------

    def begin(self) -> None:
        self._open = True

    def send(self, data: bytes, replies: int) -> None:
        """Write `data` (commands or the DATA payload, as they are: no copy) owing `replies`."""
        if self._error is not None:
            raise self._error
        if self._transport.is_closing():
            raise SMTPServerDisconnected("Connection lost")
        self._owed += replies
        self._transport.write(data)

    async def reply(self) -> SMTPResponse:
        """The next reply, in order. Raises what went wrong once no received reply is left."""
        replies = self._parser.replies
        while not replies:
            if self._error is not None:
                raise self._error
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        self._owed -= 1
        return replies.popleft()

    def finish(self) -> bool:
        """End the transaction. True when the connection can carry another one: every owed reply
        was taken, nothing else arrived and nothing went wrong."""
        self._open = False
        return self._error is None and self._owed == 0 and self._parser.idle and not self._transport.is_closing()

    def _fail(self, exc: SMTPException, *, void: bool) -> None:
        if self._error is None:
            self._error = exc
        if void:
            self._parser.replies.clear()  # out of step: no reply received can be trusted
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    # ---- asyncio.Protocol ------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if not self._open:
            self._inner.data_received(data)
            return
        if self._error is not None:
            return
        try:
            self._parser.feed(data)
        except MalformedReply as exc:
            self._fail(exc, void=True)
            return
        if len(self._parser.replies) > self._owed:
            self._fail(MalformedReply("unsolicited reply"), void=True)
        elif self._parser.replies:
            self._wake()

    def eof_received(self) -> bool:
        if self._open:
            self._fail(SMTPServerDisconnected("Unexpected EOF received"), void=False)
        return self._inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._open:
            lost = SMTPServerDisconnected("Connection lost")
            lost.__cause__ = exc
            self._fail(lost, void=False)
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()


def command_group(sender: str, options: list[bytes], recipients: list[str]) -> bytes:
    """`MAIL FROM`, one `RCPT TO` per recipient and `DATA`, as one write. The addresses are
    `ascii_address` output (no controls, no spaces), so nothing can inject a command."""
    parts = [b"MAIL FROM:<", sender.encode("ascii"), b">"]
    for option in options:
        parts += (b" ", option)
    parts.append(b"\r\n")
    for recipient in recipients:
        parts += (b"RCPT TO:<", recipient.encode("ascii"), b">\r\n")
    parts.append(b"DATA\r\n")
    return b"".join(parts)
