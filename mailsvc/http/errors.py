"""The one JSON error shape of SPEC §3 and the exception that carries it out of a handler."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response

from mailsvc.domain.commands import Problem, ValidationFailed
from mailsvc.errors import (
    ContentRedacted,
    DataRefused,
    IdempotencyConflict,
    MailsvcError,
    NotCancellable,
    NotFound,
    NotResendable,
)


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


def validation_error(problems: list[Problem]) -> ApiError:
    """422 `validation_failed`, every problem in `details`."""
    return ApiError(
        422, "validation_failed", "; ".join(str(p) for p in problems), details=[p.as_dict() for p in problems]
    )


# The one place a domain error becomes an HTTP answer (SPEC §3); routes let them propagate.
# `StoreUnavailable` (503 with Retry-After) is answered by its own handler, which also logs it.
_DOMAIN_ERRORS: dict[type[MailsvcError], tuple[int, str]] = {
    NotFound: (404, "not_found"),
    IdempotencyConflict: (409, "idempotency_key_conflict"),
    NotResendable: (409, "not_resendable"),
    ContentRedacted: (409, "content_redacted"),
    NotCancellable: (409, "not_cancellable"),
}


def from_domain(error: MailsvcError) -> ApiError | None:
    """The answer for a domain error, or None when it is not the client's to hear (a bug)."""
    if isinstance(error, ValidationFailed):
        return validation_error(error.problems)
    if isinstance(error, DataRefused):
        # it passed our validation, yet PostgreSQL refused a value of it: still this request's problem
        return ApiError(422, "validation_failed", "a value of this request cannot be stored", details=[])
    for kind in type(error).__mro__:
        mapped = _DOMAIN_ERRORS.get(kind)
        if mapped is not None:
            return ApiError(mapped[0], mapped[1], str(error))
    return None
