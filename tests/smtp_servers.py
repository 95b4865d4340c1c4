"""Scripted, in-process SMTP servers (aiosmtpd in its own thread) for provider and end-to-end tests.

handler = ScriptedHandler(rcpt_replies={"bad@example.com": "550 5.1.1 no such user"})
with SmtpServer(handler) as server:
    ...  # connect to server.host_port; inspect handler.received / handler.commands
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
    - `accept_logins`: None → no authenticator; True/False → AUTH succeeds/fails.
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
        return responses

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

    @property
    def total(self) -> int:
        return len(self.times)

    async def handle_DATA(self, server: SMTP, session: Any, envelope: Any) -> str:
        self.counts[message_id_of(envelope.original_content)] += 1
        self.times.append(time.monotonic())
        return "250 2.0.0 OK"


class _Controller(Controller):
    """Counts connections and keeps each session, so `stop()` can drop clients too."""

    def __init__(self, handler: Any, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.sessions: list[SMTP] = []

    def factory(self) -> SMTP:
        server = super().factory()
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
