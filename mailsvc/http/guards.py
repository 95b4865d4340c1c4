"""ASGI middleware around every route: bearer tokens, bounded concurrency, errors in our shape."""

from __future__ import annotations

import hmac
import logging
from typing import Literal

from starlette.types import ASGIApp, Receive, Scope, Send

from mailsvc.domain.operator_actions import TRUSTED_NETWORK, token_fingerprint
from mailsvc.http.errors import ApiError, error_response, unavailable
from mailsvc.settings import Secret

log = logging.getLogger("mailsvc.http")
Access = Literal["intake", "operator"]
# the scope key under which the guard leaves who is asking (the operator-action `actor`)
ACTOR_KEY = "mailsvc.actor"


def request_actor(scope: Scope) -> str:
    """Who made this request: the fingerprint of its bearer token (set by `TokenGuard` once the token
    is checked), or `trusted-network` when no tokens are configured."""
    actor = scope.get(ACTOR_KEY)
    return actor if isinstance(actor, str) else TRUSTED_NETWORK


def required_access(method: str, path: str) -> Access:
    """Intake tokens may only submit deliveries; everything else needs an operator token."""
    if method == "POST" and path.rstrip("/") == "/api/v1/internal/deliveries":
        return "intake"
    return "operator"


class TokenGuard:
    """`Authorization: Bearer <token>` when tokens are configured; constant-time, bytes-wise."""

    def __init__(self, app: ASGIApp, intake: tuple[Secret, ...], operator: tuple[Secret, ...]) -> None:
        self.app = app
        self.intake = [t.reveal().encode() for t in intake]
        self.operator = [t.reveal().encode() for t in operator]
        self.enabled = bool(self.intake or self.operator)

    def _matches(self, presented: bytes, tokens: list[bytes]) -> bool:
        found = False
        for token in tokens:  # no early exit: every configured token is compared
            found |= hmac.compare_digest(presented, token)
        return found

    def check(self, scope: Scope) -> ApiError | None:
        header = next((v for k, v in scope["headers"] if k == b"authorization"), None)
        if header is None or header[:7].lower() != b"bearer " or len(header) <= 7:
            return ApiError(
                401,
                "unauthorized",
                "missing or malformed bearer token",
                headers={"WWW-Authenticate": "Bearer"},
            )
        presented = header[7:].strip()
        if self._matches(presented, self.operator):
            scope[ACTOR_KEY] = token_fingerprint(presented)
            return None
        if self._matches(presented, self.intake):
            if required_access(scope["method"], scope["path"]) == "intake":
                scope[ACTOR_KEY] = token_fingerprint(presented)
                return None
            return ApiError(403, "forbidden", "this token may only submit deliveries")
        return ApiError(401, "unauthorized", "unknown bearer token", headers={"WWW-Authenticate": "Bearer"})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.enabled:
            error = self.check(scope)
            if error is not None:
                await error_response(error)(scope, receive, send)
                return
        await self.app(scope, receive, send)


class ConcurrencyGuard:
    """Refuses requests beyond `limit` in flight with a quick 503 instead of an unbounded queue.

    The listener's protocol starts the application only once a request's body has fully arrived
    (`mailsvc/http/protocol.py`), so a slot is held by work, never by a client uploading slowly.
    """

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit, self.in_flight = app, limit, 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.limit:
            await error_response(unavailable("too many requests in flight, retry later"))(scope, receive, send)
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1
