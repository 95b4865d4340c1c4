"""The Starlette application's error mapping, driven over ASGI without a socket."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from mailsvc.http.app import create_app
from mailsvc.http.bodies import read_json
from mailsvc.settings import HttpSettings


async def test_a_client_leaving_while_its_body_is_read_is_no_unhandled_error(caplog: pytest.LogCaptureFixture) -> None:
    async def submit(request: Request) -> Response:
        await read_json(request, 1024)
        return Response(status_code=204)

    app = create_app([Route("/submit", submit, methods=["POST"])], HttpSettings(), concurrency_limit=4)
    incoming: list[dict[str, Any]] = [
        {"type": "http.request", "body": b'{"to": ', "more_body": True},
        {"type": "http.disconnect"},
    ]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return incoming.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/submit",
        "raw_path": b"/submit",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"content-type", b"application/json")],
        "server": ("127.0.0.1", 8080),
        "client": ("127.0.0.1", 50000),
    }
    with caplog.at_level(logging.DEBUG):
        await app(scope, receive, send)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert sent[0]["status"] == 499  # recorded as "client closed the request", never a 500
