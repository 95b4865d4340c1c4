"""Scripted, in-process SMTP servers (aiosmtpd in its own thread) for provider and end-to-end tests.

handler = ScriptedHandler(rcpt_replies={"bad@example.com": "550 5.1.1 no such user"})
with SmtpServer(handler) as server:
    ...  # connect to server.host_port; inspect handler.received / handler.commands / server.reads

`RawSmtpServer` (in the test's own event loop) is for byte-level misbehaviour aiosmtpd cannot script.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import ssl
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult

from mailsvc.settings import HostPort

HOST = "127.0.0.1"


def free_port() -> int:
    """A TCP port nothing listens on right now (also: a port to get "connection refused")."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    content: bytes  # exactly the message bytes after dot-unstuffing, CRLF line endings


class Gate:
    """Holds server replies until the test opens it (thread-safe: the server runs in its own thread)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._opened = False
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []
        self.waiting = 0  # sessions held at the gate right now

    def open(self) -> None:
        with self._lock:
            self._opened = True
            waiters, self._waiters = self._waiters, []
        for loop, event in waiters:
            with contextlib.suppress(RuntimeError):  # that server's loop is already closed
                loop.call_soon_threadsafe(event.set)

    async def wait(self) -> None:
        event = asyncio.Event()
        with self._lock:
            if self._opened:
                return
            self._waiters.append((asyncio.get_running_loop(), event))
        self.waiting += 1
        try:
            await event.wait()
        finally:
            self.waiting -= 1


@dataclass
class ScriptedHandler:
    """Accepts everything unless told otherwise; records commands and received messages.

    - `mail_reply`: reply to every MAIL FROM instead of accepting it;
    - `mail_reply_once`: reply to the next MAIL FROM only (then cleared);
    - `rcpt_replies`: address → reply, for refused recipients (bytes go out exactly as given);
    - `mail_replies`: replies to the next MAIL FROMs, one each, in order (then accepted);
    - `data_reply`: reply after the final "." (the message is still recorded);
    - `data_replies`: replies after the next final "."s, one each, in order (still recorded; bytes
      go out exactly as given, e.g. a reply that is not UTF-8);
    - `delay`: seconds to wait before answering EHLO, MAIL, RCPT and DATA;
    - `data_delay`: seconds to wait before answering the final "." (after recording);
    - `hold_data`: a `Gate` the reply to the final "." waits for (after recording);
    - `drop_after_data`: close the connection after the final "." without replying;
    - `drop_after_data_count`: the same, for the next N messages only;
    - `drop_on_quit`: close the connection on QUIT without replying;
    - `accept_logins`: None → no authenticator; True/False → AUTH succeeds/fails;
    - `pipelining`: advertise PIPELINING in the EHLO reply (aiosmtpd does not by itself, every
      production MTA does; aiosmtpd reads pipelined commands correctly either way).
    """

    mail_reply: str | None = None
    mail_reply_once: str | None = None
    mail_replies: list[str] = field(default_factory=list)
    rcpt_replies: dict[str, str | bytes] = field(default_factory=dict)
    data_reply: str | None = None
    data_replies: list[str | bytes] = field(default_factory=list)
    delay: float = 0.0
    data_delay: float = 0.0
    hold_data: Gate | None = None
    drop_after_data: bool = False
    drop_after_data_count: int = 0
    drop_on_quit: bool = False
    accept_logins: bool | None = None
    pipelining: bool = True
    received: list[Received] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)
    logins: list[tuple[str, str]] = field(default_factory=list)

    async def _pause(self) -> None:
        if self.delay:
            await asyncio.sleep(self.delay)

    async def handle_EHLO(
        self, server: SMTP, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        self.commands.append("EHLO")
        await self._pause()
        session.host_name = hostname
        return _with_pipelining(responses) if self.pipelining else responses

    async def handle_NOOP(self, server: SMTP, session: Any, envelope: Any, arg: str) -> str:
        self.commands.append("NOOP")
        return "250 OK"

    async def handle_MAIL(self, server: SMTP, session: Any, envelope: Any, address: str, options: list[str]) -> str:
        self.commands.append("MAIL")
        await self._pause()
        if self.mail_reply_once is not None:
            reply, self.mail_reply_once = self.mail_reply_once, None
            return reply
        if self.mail_replies:
            return self.mail_replies.pop(0)
        if self.mail_reply is not None:
            return self.mail_reply
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_RCPT(
        self, server: SMTP, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str | bytes:
        self.commands.append("RCPT")
        await self._pause()
        reply = self.rcpt_replies.get(address)
        if reply is not None:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Any, envelope: Any) -> str | bytes:
        self.commands.append("DATA")
        await self._pause()
        self.received.append(Received(envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content))
        drop = self.drop_after_data or self.drop_after_data_count > 0
        if self.drop_after_data_count > 0:
            self.drop_after_data_count -= 1
        if drop:
            server.transport.close()
            await asyncio.sleep(3600)  # cancelled by connection_lost
        if self.data_delay:
            await asyncio.sleep(self.data_delay)
        if self.hold_data is not None:
            await self.hold_data.wait()
        if self.data_replies:
            return self.data_replies.pop(0)
        return self.data_reply or "250 2.0.0 OK queued"

    async def handle_QUIT(self, server: SMTP, session: Any, envelope: Any) -> str:
        self.commands.append("QUIT")
        if self.drop_on_quit:
            server.transport.close()
            await asyncio.sleep(3600)  # cancelled by connection_lost
        return "221 Bye"

    def authenticate(self, server: SMTP, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
        login = data.login.decode() if isinstance(data.login, bytes) else str(data.login)
        password = data.password.decode() if isinstance(data.password, bytes) else str(data.password)
        self.logins.append((login, password))
        return AuthResult(success=bool(self.accept_logins), handled=False)


def _with_pipelining(responses: list[str]) -> list[str]:
    return [*responses[:-1], "250-PIPELINING", *responses[-1:]]


_MESSAGE_ID = re.compile(rb"^Message-ID:[ \t]*(\S+)\r?$", re.MULTILINE | re.IGNORECASE)


def message_id_of(content: bytes) -> str:
    """The Message-ID header of a received message (`<…>`), or "" when it has none."""
    head = content.split(b"\r\n\r\n", 1)[0]
    match = _MESSAGE_ID.search(head)
    return match.group(1).decode() if match else ""


@dataclass
class SinkHandler:
    """Accepts everything and keeps only a count per Message-ID and the time of each message
    (monotonic), so it stays as cheap as aiosmtpd allows for bulk tests."""

    counts: Counter[str] = field(default_factory=Counter)
    times: list[float] = field(default_factory=list)
    pipelining: bool = True

    async def handle_EHLO(
        self, server: SMTP, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        return _with_pipelining(responses) if self.pipelining else responses

    @property
    def total(self) -> int:
        return len(self.times)

    async def handle_DATA(self, server: SMTP, session: Any, envelope: Any) -> str:
        self.counts[message_id_of(envelope.original_content)] += 1
        self.times.append(time.monotonic())
        return "250 2.0.0 OK"


class _RecordingSMTP(SMTP):
    """aiosmtpd's session, keeping every chunk it reads (after TLS: decrypted), so a test can tell
    commands that came in one write (pipelined) from commands that waited for their replies."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.reads: list[bytes] = []

    def data_received(self, data: bytes) -> None:
        self.reads.append(data)
        super().data_received(data)


class _Controller(Controller):
    """Counts connections and keeps each session, so `stop()` can drop clients too."""

    def __init__(self, handler: Any, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.sessions: list[_RecordingSMTP] = []

    def factory(self) -> _RecordingSMTP:
        server = _RecordingSMTP(self.handler, **self.SMTP_kwargs)
        self.sessions.append(server)
        return server


class SmtpServer:
    """An aiosmtpd server on 127.0.0.1 (`port` or a free one). Use as a context manager, or
    `start()` / `stop()`; `stop()` also closes the clients' connections, like a real restart."""

    def __init__(
        self,
        handler: ScriptedHandler | SinkHandler | None = None,
        *,
        port: int | None = None,
        tls_context: ssl.SSLContext | None = None,
        require_starttls: bool = False,
    ) -> None:
        self.handler = handler or ScriptedHandler()
        self.port = port or free_port()
        kwargs: dict[str, Any] = {"hostname": HOST, "port": self.port, "server_hostname": "mx.test"}
        if tls_context is not None:
            kwargs.update(tls_context=tls_context, require_starttls=require_starttls)
        if isinstance(self.handler, ScriptedHandler) and self.handler.accept_logins is not None:
            kwargs.update(authenticator=self.handler.authenticate, auth_require_tls=False)
        self._controller = _Controller(self.handler, **kwargs)
        self._running = False

    @property
    def host_port(self) -> HostPort:
        return HostPort(HOST, self.port)

    @property
    def connections(self) -> int:
        """Client connections accepted since `start()` (the controller's own probe excluded)."""
        return len(self._controller.sessions)

    @property
    def reads(self) -> list[bytes]:
        """Every chunk the server read from its clients, connection after connection."""
        return [chunk for session in list(self._controller.sessions) for chunk in list(session.reads)]

    def start(self) -> SmtpServer:
        self._controller.start()
        self._controller.sessions.clear()  # start() opens one probe connection of its own
        self._running = True
        return self

    def stop(self) -> None:
        if not self._running:
            return
        self._running = False

        async def drop_clients() -> None:
            for session in self._controller.sessions:
                if session.transport is not None:
                    session.transport.close()
            await asyncio.sleep(0.05)

        asyncio.run_coroutine_threadsafe(drop_clients(), self._controller.loop).result(timeout=5)
        self._controller.stop()

    def __enter__(self) -> SmtpServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def command_reads(chunks: list[bytes]) -> list[list[str]]:
    """The SMTP verbs in each chunk a server read (chunks with none left out): `[["MAIL", "RCPT",
    "DATA"]]` is a pipelined group, `[["MAIL"], ["RCPT"], ["DATA"]]` lock-step."""
    verbs = (b"EHLO", b"HELO", b"MAIL", b"RCPT", b"DATA", b"RSET", b"NOOP", b"QUIT", b"AUTH", b"STARTTLS")
    found = [
        [line.split(b" ", 1)[0].decode() for line in chunk.split(b"\r\n") if line.startswith(verbs)] for chunk in chunks
    ]
    return [verbs_in_chunk for verbs_in_chunk in found if verbs_in_chunk]


@dataclass(frozen=True)
class Hangup:
    """A scripted `RawSmtpServer` reply: send `before` (maybe nothing), then close the connection."""

    before: bytes = b""


RawReply = bytes | Hangup


class RawSmtpServer:
    """A byte-level SMTP server in the test's own event loop, for what aiosmtpd cannot be made to do.

    It always advertises PIPELINING and answers a group (MAIL … DATA) only once the whole group has
    arrived — so a client that waits for each reply before the next command never gets one — with
    exactly the bytes it is given:

    - `group_replies`: the bytes answering the next groups, one per transaction, in order (default:
      MAIL and every RCPT accepted, DATA 354); the server reads a payload when they end with a 354;
    - `dot_replies`: the bytes answering the next final "."s (default: a 250);
    - `drip`: send every reply a byte at a time, each in its own write.

    Records `groups` (each group's command lines, all received before any reply to them),
    `messages` (each payload as received, dot-stuffed, with its final ".") and `connections`.
    """

    def __init__(
        self,
        *,
        group_replies: list[RawReply] | None = None,
        dot_replies: list[RawReply] | None = None,
        drip: bool = False,
    ) -> None:
        self.group_replies = group_replies or []
        self.dot_replies = dot_replies or []
        self.drip = drip
        self.groups: list[list[bytes]] = []
        self.messages: list[bytes] = []
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._sessions: set[asyncio.Task[Any]] = set()
        self.port = 0

    @property
    def host_port(self) -> HostPort:
        return HostPort(HOST, self.port)

    async def __aenter__(self) -> RawSmtpServer:
        self._server = await asyncio.start_server(self._session, HOST, 0, limit=1 << 20)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._sessions):
            task.cancel()
        await asyncio.gather(*self._sessions, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._sessions.add(task)
        self.connections += 1
        try:
            await self._send(writer, b"220 mx.test ESMTP raw\r\n")
            while line := await reader.readline():
                verb = line[:4].upper()
                if verb == b"EHLO":
                    await self._send(writer, b"250-mx.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SIZE 10240000\r\n")
                elif verb == b"MAIL":
                    if not await self._transaction(line, reader, writer):
                        break
                elif verb == b"QUIT":
                    await self._send(writer, b"221 bye\r\n")
                    break
                else:  # NOOP, RSET
                    await self._send(writer, b"250 OK\r\n")
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client went away: what a test looks at is already recorded
        finally:
            self._sessions.discard(task)
            writer.close()

    async def _transaction(self, line: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """One group and its payload; False once the connection is to be closed."""
        group = [line]
        while not group[-1].upper().startswith(b"DATA"):
            line = await reader.readline()
            if not line:
                return False
            group.append(line)
        self.groups.append(group)
        recipients = len(group) - 2
        reply = self.group_replies.pop(0) if self.group_replies else b"250 OK\r\n" * (1 + recipients) + b"354 go\r\n"
        if not await self._reply(writer, reply):
            return False
        assert isinstance(reply, bytes)
        if not reply.rstrip(b"\r\n").rpartition(b"\n")[2].startswith(b"354"):
            return True
        self.messages.append(await reader.readuntil(b"\r\n.\r\n"))
        return await self._reply(writer, self.dot_replies.pop(0) if self.dot_replies else b"250 2.0.0 OK\r\n")

    async def _reply(self, writer: asyncio.StreamWriter, reply: RawReply) -> bool:
        if isinstance(reply, Hangup):
            await self._send(writer, reply.before)
            return False
        await self._send(writer, reply)
        return True

    async def _send(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        if not self.drip:
            writer.write(data)
            await writer.drain()
            return
        for i in range(len(data)):
            writer.write(data[i : i + 1])
            await writer.drain()
            await asyncio.sleep(0)  # let the client read each byte on its own
