"""Shared helpers for the PostgreSQL stores: driver errors become `StoreUnavailable`; the asyncpg fast path."""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any, ClassVar

import asyncpg
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.sql.elements import TextClause

from mailsvc.errors import MailsvcError, StoreUnavailable

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
        raise


_NAMED_PARAMETER = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)")


class DriverStatement:
    """A `text()` statement for asyncpg directly: `:name` placeholders become `$1…` in order of
    first use (a `::cast` is left alone), and `args` orders the parameters to match."""

    def __init__(self, clause: TextClause) -> None:
        head = clause.text.lstrip().split(None, 1)[0].upper()
        self.returns_rows = head in ("SELECT", "WITH") or "RETURNING" in clause.text.upper()
        names: list[str] = []

        def number(match: re.Match[str]) -> str:
            if match.group(1) not in names:
                names.append(match.group(1))
            return f"${names.index(match.group(1)) + 1}"

        self.sql = _NAMED_PARAMETER.sub(number, clause.text)
        self.names = tuple(names)

    def args(self, params: Mapping[str, Any]) -> list[Any]:
        return [params[name] for name in self.names]


@contextlib.asynccontextmanager
async def driver_connection(engine: AsyncEngine) -> AsyncIterator[Any]:
    """A pooled connection's own asyncpg connection, for the hot statements (claims, results):
    SQLAlchemy's execution layer costs ~150 µs of CPU per statement, more than asyncpg itself.
    Anything but an SQL error or one of ours invalidates the connection: the pool would not notice."""
    async with engine.connect() as conn:
        fairy = await conn.get_raw_connection()
        try:
            yield fairy.driver_connection
        except BaseException as exc:
            if _is_unavailable(exc) or not isinstance(exc, asyncpg.PostgresError | MailsvcError):
                await conn.invalidate()
            raise


class Row(asyncpg.Record):  # type: ignore[misc]
    """An asyncpg record that also reads columns as attributes, like SQLAlchemy's rows."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


class DriverResult:
    def __init__(self, rows: list[Row], rowcount: int) -> None:
        self.rows, self.rowcount = rows, rowcount

    def __iter__(self) -> Iterator[Row]:
        return iter(self.rows)


class DriverConnection:
    """`execute(text(...), params)` as the stores call it on SQLAlchemy, straight on asyncpg."""

    _statements: ClassVar[dict[TextClause, DriverStatement]] = {}

    def __init__(self, raw: Any) -> None:
        self.raw = raw

    async def execute(self, clause: TextClause, params: Mapping[str, Any] | None = None) -> DriverResult:
        statement = self._statements.get(clause)
        if statement is None:
            statement = self._statements[clause] = DriverStatement(clause)
        args = statement.args(params or {})
        if statement.returns_rows:
            rows = await self.raw.fetch(statement.sql, *args, record_class=Row)
            return DriverResult(rows, len(rows))
        status = await self.raw.execute(statement.sql, *args)  # e.g. "UPDATE 1", "INSERT 0 3"
        return DriverResult([], int(status.rsplit(" ", 1)[-1]))


@contextlib.asynccontextmanager
async def driver_transaction(engine: AsyncEngine) -> AsyncIterator[DriverConnection]:
    """One asyncpg transaction on a pooled connection (see `driver_connection`)."""
    async with driver_connection(engine) as raw, raw.transaction():
        yield DriverConnection(raw)
