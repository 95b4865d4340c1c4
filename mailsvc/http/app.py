"""The Starlette application: routes from the route modules, our guards and error mapping."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import BaseRoute

from mailsvc.errors import MailsvcError, StoreUnavailable
from mailsvc.http.errors import ApiError, error_response, from_domain, not_found, unavailable
from mailsvc.http.guards import ConcurrencyGuard, TokenGuard
from mailsvc.http.telemetry import HttpTelemetry
from mailsvc.instruments import NO_INSTRUMENTS, Instruments
from mailsvc.settings import HttpSettings

log = logging.getLogger("mailsvc.http")

_STATUS_CODES = {404: "not_found", 405: "method_not_allowed", 400: "invalid_request"}


async def _api_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(exc)


async def _http_exception(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        return error_response(not_found())
    code = _STATUS_CODES.get(exc.status_code, "http_error")
    return error_response(ApiError(exc.status_code, code, str(exc.detail), headers=dict(exc.headers or {})))


async def _store_unavailable(_: Request, exc: Exception) -> Response:
    log.warning("store_unavailable", extra={"error_class": type(exc).__name__})
    return error_response(unavailable())


async def _domain_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, MailsvcError)
    answer = from_domain(exc)
    if answer is None:
        return await _unexpected(request, exc)
    return error_response(answer)


async def _client_disconnected(_: Request, exc: Exception) -> Response:
    # The client left while its body was being read: no failure of ours, and nobody to answer
    # (the protocol logs `http_client_disconnected`). 499 is what the metrics record.
    return Response(status_code=499)


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.exception("http_unhandled_error", extra={"route": request.url.path})
    return error_response(ApiError(500, "internal", "internal error"))


def create_app(
    routes: Sequence[BaseRoute],
    settings: HttpSettings,
    *,
    concurrency_limit: int,
    instruments: Instruments = NO_INSTRUMENTS,
) -> Starlette:
    app = Starlette(
        routes=list(routes),
        exception_handlers={
            ApiError: _api_error,
            HTTPException: _http_exception,
            StoreUnavailable: _store_unavailable,
            MailsvcError: _domain_error,
            ClientDisconnect: _client_disconnected,
            Exception: _unexpected,
        },
    )
    app.add_middleware(ConcurrencyGuard, limit=concurrency_limit)
    app.add_middleware(TokenGuard, intake=settings.intake_tokens, operator=settings.operator_tokens)
    app.add_middleware(HttpTelemetry, instruments=instruments)  # outermost: sees every response
    return app
