"""uvicorn's httptools protocol with the deadlines of SPEC §3, and without its own signal handling.

What uvicorn leaves open, and how this protocol closes it:

- **Deadlines.** A timer armed when a connection opens and when each request starts closes the
  transport if the request head has not arrived within the read-header timeout; another if the
  whole request has not arrived within the read timeout.
- **The idle timer** (uvicorn's keep-alive timer) runs from the end of each response until the
  next request's head is complete. uvicorn cancels it on *any* incoming bytes and llhttp skips a
  bare CRLF without starting a message, so a client that sent `\\r\\n` after a response and then
  nothing held the connection forever. Here stray bytes never touch it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Generator
from typing import Any

import httptools
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from mailsvc.settings import HttpSettings


class DeadlineHttpProtocol(HttpToolsProtocol):
    read_header_timeout: float = 2.0
    read_timeout: float = 10.0
    idle_timeout: float = 60.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.timeout_keep_alive = self.idle_timeout  # type: ignore[assignment]  # fractional seconds too
        self._header_timer: asyncio.TimerHandle | None = None
        self._read_timer: asyncio.TimerHandle | None = None

    def _close(self) -> None:
        if not self.transport.is_closing():
            self.transport.close()

    def _cancel_timers(self) -> None:
        for timer in (self._header_timer, self._read_timer):
            if timer is not None:
                timer.cancel()
        self._header_timer = self._read_timer = None

    # -- the connection

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._header_timer = self.loop.call_later(self.read_header_timeout, self._close)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timers()
        self._unset_keepalive_if_required()
        super().connection_lost(exc)

    # -- bytes in

    def data_received(self, data: bytes) -> None:
        # Not uvicorn's version: that one starts by cancelling the idle timer on any bytes at all.
        self._feed(data)

    def _feed(self, data: bytes | memoryview) -> bool:
        """uvicorn's parsing step; False once the connection is being closed."""
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            msg = "Invalid HTTP request received."
            self.logger.warning(msg)
            self.send_400_response(msg)
            return False
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return False
        return not self.transport.is_closing()

    # -- parser callbacks

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._cancel_timers()
        self._header_timer = self.loop.call_later(self.read_header_timeout, self._close)
        self._read_timer = self.loop.call_later(self.read_timeout, self._close)

    def on_headers_complete(self) -> None:
        self._unset_keepalive_if_required()  # the idle timer ends with a complete head, not before
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None
        super().on_message_complete()


def deadline_protocol(settings: HttpSettings) -> type[DeadlineHttpProtocol]:
    return type(
        "ConfiguredDeadlineHttpProtocol",
        (DeadlineHttpProtocol,),
        {
            "read_header_timeout": settings.read_header_timeout.total_seconds(),
            "read_timeout": settings.read_timeout.total_seconds(),
            "idle_timeout": settings.idle_timeout.total_seconds(),
        },
    )


class EmbeddedServer(uvicorn.Server):
    """A uvicorn server driven by our runtime: `should_exit` stops it, signals are ours."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield
