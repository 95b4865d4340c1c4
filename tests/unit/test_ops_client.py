"""`mailsvc ops`'s client of the API: URLs, tokens, path segments, and every error as one line.

The answers come from `httpx.MockTransport` (httpx's own server stand-in); the real service is
`tests/integration/test_ops_cli.py`'s.
"""

from __future__ import annotations

import ast
import dataclasses
import io
import json
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from mailsvc.cli import build_parser
from mailsvc.ops.cli import connection, ops_command
from mailsvc.ops.client import Api, Connection, OpsError, check_token, parse_url, segment

OPS = Path(__file__).resolve().parents[2] / "mailsvc" / "ops"


@pytest.mark.parametrize(
    ("raw", "base"),
    [
        ("http://127.0.0.1:8080", "http://127.0.0.1:8080"),
        (" https://mail.internal/ ", "https://mail.internal"),
        ("http://127.0.0.1:8080/api/v1/internal/", "http://127.0.0.1:8080"),
        ("https://gw.example.com/mail", "https://gw.example.com/mail"),
    ],
)
def test_the_url_is_a_base_with_or_without_the_prefix(raw: str, base: str) -> None:
    assert parse_url(raw) == base


@pytest.mark.parametrize("raw", ["127.0.0.1:8080", "ftp://host", "http://", "", "mail.internal"])
def test_a_url_that_is_not_http_is_refused(raw: str) -> None:
    with pytest.raises(OpsError, match="must be http:// or https://"):
        parse_url(raw)


def test_the_token_is_checked_and_never_shown() -> None:
    assert check_token("abc.DEF-123_~+/=", "MAIL_API_TOKEN") == "abc.DEF-123_~+/="
    for bad in ("has space", "tab\there", "é-token", "line\nbreak", ""):
        with pytest.raises(OpsError) as raised:
            check_token(bad, "MAIL_API_TOKEN")
        assert bad not in str(raised.value) or not bad
    shown = repr(Connection("http://u:pw@host:1", "s3cret-token", 5))
    assert "s3cret-token" not in shown
    assert "pw" not in shown
    assert Connection("http://u:pw@host:1").where == "http://host:1"


def test_an_id_stays_one_path_segment() -> None:
    assert segment("../templates") == "..%2Ftemplates"
    assert segment("a b?c#d") == "a%20b%3Fc%23d"


def test_flags_win_over_the_environment(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("from-file\n")
    env = {"MAIL_API_URL": "http://env:1", "MAIL_API_TOKEN": "from-env"}
    parse = build_parser().parse_args
    assert connection(parse(["ops", "templates", "list"]), env) == Connection("http://env:1", "from-env")
    flagged = parse(["ops", "--url", "http://flag:2", "templates", "list", "--token-file", str(token_file)])
    assert connection(flagged, env) == Connection("http://flag:2", "from-file")
    assert connection(parse(["ops", "templates", "list"]), {}) == Connection("http://127.0.0.1:8080", None)
    with pytest.raises(OpsError, match="cannot read the token file"):
        connection(parse(["ops", "templates", "list", "--token-file", str(tmp_path / "none")]), env)
    with pytest.raises(OpsError, match="--timeout must be"):
        connection(parse(["ops", "templates", "list", "--timeout", "0"]), env)


def answering(handler: Callable[[httpx.Request], httpx.Response]) -> Api:
    return Api(Connection("http://api.test", "tok", 5), transport=httpx.MockTransport(handler))


def error(status: int, code: str, message: str, **extra: object) -> httpx.Response:
    return httpx.Response(status, json={"error": {"code": code, "message": message, **extra}})


def test_requests_carry_the_token_under_the_prefix() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"items": []})

    with answering(handler) as api:
        assert api.get("/deliveries", [("tag", "a:b"), ("tag", "c:d")]) == {"items": []}
        api.post("/deliveries/x/resend", headers={"Idempotency-Key": "k"})
    assert str(seen[0].url) == "http://api.test/api/v1/internal/deliveries?tag=a%3Ab&tag=c%3Ad"
    assert seen[0].headers["authorization"] == "Bearer tok"
    assert seen[1].method == "POST"
    assert seen[1].headers["idempotency-key"] == "k"


@pytest.mark.parametrize(
    ("response", "message", "details"),
    [
        (error(409, "not_resendable", "delivery x is queued"), "409 not_resendable: delivery x is queued", ()),
        (
            error(422, "validation_failed", "2 problems", details=[
                {"field": "limit", "message": "must be an integer from 1 to 500"},
                {"field": "status", "message": "must be one of queued, sent"},
            ]),
            "422 validation_failed: 2 problems",
            ("limit: must be an integer from 1 to 500", "status: must be one of queued, sent"),
        ),
        (
            httpx.Response(503, headers={"Retry-After": "1"}, json={"error": {"code": "unavailable", "message": "db"}}),
            "503 unavailable: db (retry after 1s)",
            (),
        ),
        (
            httpx.Response(502, headers={"Content-Type": "text/html"}, text="<h1>" + "x" * 300),
            "HTTP 502 from http://api.test is not JSON (text/html: '<h1>" + "x" * 55 + "…')",
            (),
        ),
        (httpx.Response(204), "HTTP 204 from http://api.test is not JSON (no content type)", ()),
        (httpx.Response(500, json=["not", "an", "error"]), "HTTP 500 from http://api.test is not an API error", ()),
    ],
    ids=["409", "422-details", "503-retry", "html", "empty", "json-not-error"],
)  # fmt: skip
def test_every_failure_is_one_line(response: httpx.Response, message: str, details: tuple[str, ...]) -> None:
    with answering(lambda request: response) as api, pytest.raises(OpsError) as raised:
        api.get("/dead-letters")
    assert str(raised.value).startswith(message)
    assert "\n" not in str(raised.value)
    assert raised.value.details == details


def test_a_header_that_is_not_ascii_is_an_error_not_a_traceback() -> None:
    with answering(lambda request: httpx.Response(200, json={})) as api, pytest.raises(OpsError, match="ASCII"):
        api.post("/deliveries/x/resend", headers={"Idempotency-Key": "clé"})


def test_json_output_survives_a_lone_surrogate() -> None:
    args = build_parser().parse_args(["ops", "templates", "list", "--json"])
    out, err = io.StringIO(), io.StringIO()
    body = {"items": [{"id": "t", "description": "bad \udce9 byte"}]}
    args.ops_command = dataclasses.replace(args.ops_command, run=lambda api, _: body)
    assert ops_command(args, env={}, out=out, err=err) == 0
    assert json.loads(out.getvalue()) == body
    out.getvalue().encode("utf-8")


def test_the_ops_package_imports_nothing_of_the_service() -> None:
    """It is a client of the public API: only `mailsvc.errors` and itself."""
    for path in OPS.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = (
                [alias.name for alias in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            for name in names:
                if name == "mailsvc" or name.startswith("mailsvc."):
                    assert name == "mailsvc.errors" or name.startswith("mailsvc.ops"), f"{path.name} imports {name}"
