"""The internal HTTP API as `mailsvc ops` sees it: one synchronous httpx client, and every way a
request can fail turned into one line an operator can act on.

A client of the public API only: nothing here knows how the service is built.
"""

from __future__ import annotations

import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any
from urllib.parse import quote

import httpx

from mailsvc.errors import MailsvcError

PREFIX = "/api/v1/internal"
DEFAULT_URL = "http://127.0.0.1:8080"
DEFAULT_TIMEOUT = 30.0
_TOKEN_CHARACTERS = frozenset(string.ascii_letters + string.digits + string.punctuation)

Json = Any
Params = Sequence[tuple[str, str]]


class OpsError(MailsvcError):
    """A request gave no answer the command can use. `str()` is the line to print; `details` are
    the API's per-field problems and `body` its error JSON, when it sent one."""

    def __init__(self, message: str, *, details: Sequence[str] = (), body: Json = None) -> None:
        super().__init__(message)
        self.details = tuple(details)
        self.body = body


@dataclass(frozen=True, slots=True)
class Connection:
    """Where the API is and how to authenticate; `repr` never shows the token."""

    url: str  # scheme://host[:port][/path], without the API prefix
    token: str | None = None
    timeout: float = DEFAULT_TIMEOUT

    def __repr__(self) -> str:
        return f"Connection(url={self.where!r}, token={'***' if self.token else None}, timeout={self.timeout})"

    @property
    def where(self) -> str:
        """The URL to name in messages: no user or password, even when MAIL_API_URL has them."""
        url = httpx.URL(self.url)
        return str(url.copy_with(userinfo=b"", query=None, fragment=None)).rstrip("/")


def parse_url(raw: str) -> str:
    """The API's base URL from MAIL_API_URL / `--url` (the `/api/v1/internal` prefix is optional);
    `OpsError` when it is not an http(s) URL with a host."""
    text = raw.strip().rstrip("/")
    try:
        url = httpx.URL(text)
    except httpx.InvalidURL:
        url = None
    if url is None or url.scheme not in ("http", "https") or not url.host:
        raise OpsError("the API URL must be http:// or https:// with a host, e.g. http://127.0.0.1:8080")
    return text.removesuffix(PREFIX)


def check_token(token: str, origin: str) -> str:
    """The token, when it can travel in an `Authorization` header (it is never shown)."""
    if not token or not set(token) <= _TOKEN_CHARACTERS:
        raise OpsError(f"the API token from {origin} must be printable ASCII without spaces")
    return token


def segment(value: str) -> str:
    """`value` as one path segment: an id can never reach another route (`../templates`)."""
    return quote(value, safe="")


def _reason(exc: BaseException) -> str:
    """The operating system's words for a connection failure (`connection refused`)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.strerror:
            return seen.strerror.lower()
        seen = seen.__cause__ or seen.__context__
    return " ".join(str(exc).split()) or type(exc).__name__


def _excerpt(response: httpx.Response) -> str:
    kind = response.headers.get("content-type", "no content type").split(";")[0]
    sample = " ".join(response.text[:200].split())
    if len(sample) > 60:
        sample = sample[:59] + "…"
    return f"{kind}: {sample!r}" if sample else kind


class Api:
    """Requests to the API under `PREFIX`; each answers the decoded JSON of a 2xx response or
    raises `OpsError`."""

    def __init__(self, connection: Connection, *, transport: httpx.BaseTransport | None = None) -> None:
        self.connection = connection
        headers = {"Accept": "application/json", "User-Agent": "mailsvc-ops"}
        if connection.token:
            headers["Authorization"] = f"Bearer {connection.token}"
        self._client = httpx.Client(
            base_url=connection.url + PREFIX, headers=headers, timeout=connection.timeout, transport=transport
        )

    def __enter__(self) -> Api:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self._client.close()

    def get(self, path: str, params: Params = ()) -> Json:
        return self._request("GET", path, params=list(params))

    def post(self, path: str, body: Json = None, *, headers: Mapping[str, str] | None = None) -> Json:
        return self._request("POST", path, json=body, headers=dict(headers or {}))

    def put(self, path: str, body: Json) -> Json:
        return self._request("PUT", path, json=body)

    def delete(self, path: str) -> Json:
        """None for the 204 of a removal (nothing to say)."""
        return self._request("DELETE", path, no_content=True)

    def _request(self, method: str, path: str, *, no_content: bool = False, **options: Any) -> Json:
        where, timeout = self.connection.where, f"{self.connection.timeout:g}s"
        try:
            response = self._client.request(method, path, **options)
        except httpx.ConnectTimeout as exc:
            raise OpsError(f"cannot connect to {where} (no connection within {timeout})") from exc
        except httpx.TimeoutException as exc:
            raise OpsError(f"no answer from {where} within {timeout}") from exc
        except httpx.ConnectError as exc:
            raise OpsError(f"cannot connect to {where} ({_reason(exc)})") from exc
        except httpx.TransportError as exc:
            raise OpsError(f"the connection to {where} failed ({_reason(exc)})") from exc
        except UnicodeEncodeError:  # a header value (the token is checked before) that is not ASCII
            raise OpsError("header values (e.g. --key) must be ASCII") from None
        if no_content and response.status_code == 204:
            return None
        return self._decode(response)

    def _decode(self, response: httpx.Response) -> Json:
        status, where = response.status_code, self.connection.where
        try:
            body = response.json()
        except ValueError:  # not JSON, or not UTF-8
            raise OpsError(f"HTTP {status} from {where} is not JSON ({_excerpt(response)})") from None
        if response.is_success:
            return body
        error = body.get("error") if isinstance(body, dict) else None
        if not isinstance(error, dict) or not isinstance(error.get("code"), str):
            raise OpsError(f"HTTP {status} from {where} is not an API error ({_excerpt(response)})")
        message = f"{status} {error['code']}: {error.get('message', '')}"
        retry = response.headers.get("retry-after")
        if status == 503 and retry:
            message += f" (retry after {retry}s)"
        details = [
            f"{d.get('field', '?')}: {d.get('message', '')}" for d in error.get("details") or () if isinstance(d, dict)
        ]
        raise OpsError(message, details=details, body=body)
