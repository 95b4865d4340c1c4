"""uvicorn with the read-header / read deadlines it lacks, and without its own signal handling.

uvicorn's keep-alive timer only runs between requests, so a client that connects and sends
nothing, or drips its headers, would hold a connection forever. These protocols arm a timer when
a request starts (and when the connection opens) and close the transport if the request head, or
the whole request, has not arrived in time.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Generator
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class DeadlineHttpProtocol(HttpToolsProtocol):
    read_header_timeout: float = 2.0
    read_timeout: float = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
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

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._header_timer = self.loop.call_later(self.read_header_timeout, self._close)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._cancel_timers()
        self._header_timer = self.loop.call_later(self.read_header_timeout, self._close)
        self._read_timer = self.loop.call_later(self.read_timeout, self._close)

    def on_headers_complete(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None
        super().on_message_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timers()
        super().connection_lost(exc)


def deadline_protocol(read_header_timeout: float, read_timeout: float) -> type[DeadlineHttpProtocol]:
    return type(
        "ConfiguredDeadlineHttpProtocol",
        (DeadlineHttpProtocol,),
        {"read_header_timeout": read_header_timeout, "read_timeout": read_timeout},
    )


class EmbeddedServer(uvicorn.Server):
    """A uvicorn server driven by our runtime: `should_exit` stops it, signals are ours."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield
