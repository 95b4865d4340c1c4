"""Shared helpers for the PostgreSQL stores: driver errors become domain errors (`StoreUnavailable`, `NotFound`)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import asyncpg
from sqlalchemy.exc import DBAPIError, IntegrityError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from mailsvc.errors import NotFound, StoreUnavailable

_UNAVAILABLE = (
    OSError,
    TimeoutError,
    PoolTimeout,
    OperationalError,
    InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.QueryCanceledError,
)


def _is_unavailable(exc: BaseException) -> bool:
    if isinstance(exc, _UNAVAILABLE):
        return True
    if isinstance(exc, DBAPIError):
        orig = getattr(exc, "orig", None)
        cause = getattr(orig, "__cause__", None)
        return bool(exc.connection_invalidated) or isinstance(cause, _UNAVAILABLE)
    return False


def _is_vanished_resend_original(exc: BaseException) -> bool:
    """A resend whose original was deleted (by retention) between reading it and inserting the copy."""
    if not isinstance(exc, IntegrityError):
        return False
    cause = getattr(exc.orig, "__cause__", None)
    return (
        isinstance(cause, asyncpg.ForeignKeyViolationError)
        and getattr(cause, "constraint_name", None) == "deliveries_resend_of_fkey"
    )


@contextlib.asynccontextmanager
async def unavailable_as_domain_error() -> AsyncIterator[None]:
    """Connection loss, refusal and timeouts surface as `StoreUnavailable`; bugs stay bugs."""
    try:
        yield
    except StoreUnavailable:
        raise
    except Exception as exc:
        if _is_unavailable(exc):
            raise StoreUnavailable(f"{type(exc).__name__}: {str(exc)[:200]}") from exc
        if _is_vanished_resend_original(exc):
            raise NotFound("the delivery to resend was deleted (retention) while it was being resent") from exc
        raise
