"""The one JSON error shape of SPEC §3 and the exception that carries it out of a handler."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: list[Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.details = details
        self.headers = headers or {}


class JsonResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def error_document(error: ApiError) -> dict[str, Any]:
    """The JSON body of every error: `{"error": {"code", "message", "details"?}}`."""
    body: dict[str, Any] = {"code": error.code, "message": error.message}
    if error.details is not None:
        body["details"] = error.details
    return {"error": body}


def error_response(error: ApiError) -> Response:
    return JsonResponse(error_document(error), status_code=error.status, headers=error.headers)


def not_found(message: str = "no such route") -> ApiError:
    return ApiError(404, "not_found", message)


def unavailable(message: str = "the database is unavailable, retry later") -> ApiError:
    return ApiError(503, "unavailable", message, headers={"Retry-After": "1"})
