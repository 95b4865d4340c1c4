"""uvicorn's httptools protocol with the limits and deadlines of SPEC §3, and without its own
signal handling.

What uvicorn leaves open, and how this protocol closes it:

- **Deadlines.** A timer armed when a connection opens and when each request starts closes the
  transport if the request head has not arrived within the read-header timeout; another if the
  whole request has not arrived within the read timeout.
- **The idle timer** (uvicorn's keep-alive timer) runs from the end of each response until the
  next request's head is complete. uvicorn cancels it on *any* incoming bytes and llhttp skips a
  bare CRLF without starting a message, so a client that sent `\\r\\n` after a response and then
  nothing held the connection forever. Here stray bytes never touch it.
- **The head limit.** httptools has none. What arrives is counted until the head is complete;
  past 16 KiB the client gets 431 `headers_too_large` and the connection is closed, without the
  rest being buffered or parsed. (Bytes that arrive in the same read as the end of the previous
  request — pipelining — are not counted: the bound is then 16 KiB plus one read, never more.)
- **Slow bodies.** The application, and with it the concurrency guard, is started only once the
  whole body has arrived, or as soon as the body is known to exceed the body limit (so a 413 is
  never delayed). Until then the body waits here, bounded by that limit and the read deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Generator
from typing import Any

import httptools
import orjson
import uvicorn
from uvicorn._types import ASGI3Application
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from mailsvc.http.errors import ApiError, error_document
from mailsvc.settings import HttpSettings

log = logging.getLogger("mailsvc.http")

MAX_HEAD_BYTES = 16 * 1024
# After a 431 whatever the client still sends is read and dropped for a moment before the socket
# closes: closing with unread data makes the kernel answer with a reset, which can destroy the
# response before the client has read it.
LINGER_SECONDS = 1.0

_HEAD_TOO_LARGE = orjson.dumps(
    error_document(ApiError(431, "headers_too_large", f"request head exceeds {MAX_HEAD_BYTES} bytes"))
)
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class DeadlineHttpProtocol(HttpToolsProtocol):
    read_header_timeout: float = 2.0
    read_timeout: float = 10.0
    idle_timeout: float = 60.0
    max_body_bytes: int = 1024 * 1024

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.timeout_keep_alive = self.idle_timeout  # type: ignore[assignment]  # fractional seconds too
        self._header_timer: asyncio.TimerHandle | None = None
        self._read_timer: asyncio.TimerHandle | None = None
        self._head_open = True  # what arrives now belongs to a request head
        self._head_bytes = 0
        self._heads_completed = 0
        self._waiting: tuple[RequestResponseCycle, ASGI3Application] | None = None  # its body is arriving
        self._refused = False  # a 431 went out: what still arrives is dropped
        self._client_gone = False

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

    def eof_received(self) -> None:
        self._client_gone = True
        super().eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete and (exc is not None or self._client_gone):
            # nothing failed on our side: the client left before its answer
            log.info("http_client_disconnected", extra={"phase": "body" if cycle.more_body else "response"})
        self._waiting = None
        self._cancel_timers()
        self._unset_keepalive_if_required()
        super().connection_lost(exc)

    # -- bytes in

    def data_received(self, data: bytes) -> None:
        # Not uvicorn's version: that one starts by cancelling the idle timer on any bytes at all.
        self._receive(data)

    def _receive(self, data: bytes | memoryview) -> None:
        if self._refused:
            return
        if self._head_open:
            room = MAX_HEAD_BYTES - self._head_bytes
            if len(data) > room:
                self._receive_past_head_limit(memoryview(data), room)
                return
            self._head_bytes += len(data)
        self._feed(data)

    def _receive_past_head_limit(self, data: memoryview, room: int) -> None:
        """Feed what the head limit allows; refuse if the head is still incomplete, else go on."""
        completed = self._heads_completed
        if not self._feed(data[:room]):
            return
        if self._heads_completed == completed:
            self._refuse_head()
            return
        self._receive(data[room:])

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

    def _refuse_head(self) -> None:
        log.info("http_request_head_too_large", extra={"limit_bytes": MAX_HEAD_BYTES})
        self._refused = True
        self._cancel_timers()
        self._unset_keepalive_if_required()
        if self.cycle is not None and not self.cycle.response_complete:
            self._close()  # a pipelined head: the response before it is still being written
            return
        head = [b"HTTP/1.1 431 Request Header Fields Too Large\r\n"]
        for name, value in self.server_state.default_headers:
            head += [name, b": ", value, b"\r\n"]
        head.append(b"content-type: application/json\r\nconnection: close\r\n")
        head.append(b"content-length: %d\r\n\r\n" % len(_HEAD_TOO_LARGE))
        self.transport.write(b"".join(head) + _HEAD_TOO_LARGE)
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self._header_timer = self.loop.call_later(LINGER_SECONDS, self._close)

    # -- parser callbacks

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._cancel_timers()
        self._header_timer = self.loop.call_later(self.read_header_timeout, self._close)
        self._read_timer = self.loop.call_later(self.read_timeout, self._close)

    def on_headers_complete(self) -> None:
        self._head_open = False
        self._heads_completed += 1
        self._unset_keepalive_if_required()  # the idle timer ends with a complete head, not before
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if self._waiting is None:
            super().on_body(body)
            return
        cycle = self._waiting[0]
        cycle.body += body  # reading is never paused here: nobody consumes the body yet, and it is bounded
        if len(cycle.body) > self.max_body_bytes:
            self._start_waiting()  # the application refuses it (413) now, not once it has all arrived

    def on_message_complete(self) -> None:
        self._head_open, self._head_bytes = True, 0
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None
        super().on_message_complete()
        if self._waiting is not None:
            self._start_waiting()

    # -- starting the application

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: ASGI3Application) -> None:
        if cycle.more_body and not self._body_over_limit(cycle):
            self._waiting = (cycle, app)
            if cycle.waiting_for_100_continue and not self.transport.is_closing():
                self.transport.write(_CONTINUE)  # uvicorn would send it on the application's first read
                cycle.waiting_for_100_continue = False
            return
        super()._start_asgi_task(cycle, app)

    def _start_waiting(self) -> None:
        assert self._waiting is not None
        cycle, app = self._waiting
        self._waiting = None
        cycle.message_event.set()
        super()._start_asgi_task(cycle, app)

    def _body_over_limit(self, cycle: RequestResponseCycle) -> bool:
        if len(cycle.body) > self.max_body_bytes:
            return True
        for name, value in cycle.scope["headers"]:
            if name == b"content-length":  # llhttp has already checked that it is a number
                return int(value) > self.max_body_bytes
        return False


def deadline_protocol(settings: HttpSettings) -> type[DeadlineHttpProtocol]:
    return type(
        "ConfiguredDeadlineHttpProtocol",
        (DeadlineHttpProtocol,),
        {
            "read_header_timeout": settings.read_header_timeout.total_seconds(),
            "read_timeout": settings.read_timeout.total_seconds(),
            "idle_timeout": settings.idle_timeout.total_seconds(),
            "max_body_bytes": settings.max_body_bytes,
        },
    )


class EmbeddedServer(uvicorn.Server):
    """A uvicorn server driven by our runtime: `should_exit` stops it, signals are ours."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield
