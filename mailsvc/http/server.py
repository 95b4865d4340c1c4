"""The HTTP listener: uvicorn with our deadlines and limits, bound from `MAIL_INTERNAL_HTTP_ADDR`."""

from __future__ import annotations

import logging
import socket

import uvicorn
from starlette.types import ASGIApp

from mailsvc.http.protocol import EmbeddedServer, deadline_protocol
from mailsvc.settings import HttpSettings

log = logging.getLogger("mailsvc.http")


def bind_socket(settings: HttpSettings) -> socket.socket:
    """Bind before startup completes so a taken port fails the start, not a loop later."""
    host = settings.addr.host
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host or ("::" if family == socket.AF_INET6 else "0.0.0.0"), settings.addr.port))
    sock.listen(2048)
    sock.setblocking(False)
    return sock


def build_server(app: ASGIApp, settings: HttpSettings) -> EmbeddedServer:
    config = uvicorn.Config(
        app,
        http=deadline_protocol(settings),  # the deadlines, the idle timer and the limits live there
        ws="none",  # no route speaks WebSocket: an upgrade must never leave our protocol
        lifespan="off",
        timeout_graceful_shutdown=None,
        log_config=None,
        access_log=False,
        server_header=False,
        date_header=True,
        loop="none",
    )
    return EmbeddedServer(config)
