"""Shared helpers for the PostgreSQL stores: driver errors classified into domain errors; the asyncpg fast path."""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from typing import Any, ClassVar, Literal

import asyncpg
import asyncpg.exceptions._base as asyncpg_base
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.sql.elements import TextClause

from mailsvc.errors import DataRefused, MailsvcError, StoreUnavailable

ErrorKind = Literal["unavailable", "data", "other"]

# By SQLSTATE, not by exception class (PITFALLS): the connection or the server itself — class 08
# (connection), 57P0x (shutting down, cannot connect now), 53 (out of connections, memory, disk),
# 58 (system / I/O error), a cancelled statement (57014: statement_timeout) and the two that a retry
# clears by definition (40001 serialization failure, 40P01 deadlock).
_UNAVAILABLE_CLASSES = ("08", "53", "57P", "58")
_UNAVAILABLE_STATES = frozenset({"57014", "40001", "40P01"})
# The statement's data: class 22 (data exception; also asyncpg's own "invalid input for query
# argument", raised before anything is sent) and class 23 (integrity constraint violation).
_DATA_CLASSES = ("22", "23")
_TRANSPORT = (OSError, TimeoutError, PoolTimeout)


def _driver_error(exc: BaseException) -> BaseException:
    """The asyncpg exception under SQLAlchemy's wrapping (its adapted error's cause), or `exc`."""
    if isinstance(exc, DBAPIError):
        orig = exc.orig
        return getattr(orig, "__cause__", None) or orig or exc
    return exc


def classify_error(exc: BaseException) -> ErrorKind:
    """`unavailable`: PostgreSQL or the way to it failed, retry later; `data`: this statement's
    data was refused, retrying it cannot help; `other`: neither (a bug, or not a driver error)."""
    if isinstance(exc, MailsvcError):
        return "other"
    if isinstance(exc, _TRANSPORT) or (isinstance(exc, DBAPIError) and exc.connection_invalidated):
        return "unavailable"
    driver = _driver_error(exc)
    if isinstance(driver, asyncpg_base.DataError):  # the client-side one: an InterfaceError subclass
        return "data"
    sqlstate = getattr(driver, "sqlstate", None)
    if isinstance(driver, asyncpg.PostgresError) and isinstance(sqlstate, str):
        if sqlstate in _UNAVAILABLE_STATES or sqlstate.startswith(_UNAVAILABLE_CLASSES):
            return "unavailable"
        return "data" if sqlstate.startswith(_DATA_CLASSES) else "other"
    if isinstance(driver, (*_TRANSPORT, asyncpg.InterfaceError)):  # e.g. "connection is closed"
        return "unavailable"
    if isinstance(driver, asyncpg_base.InternalClientError):
        # the connection's protocol state is broken, e.g. "another operation is in progress" on the
        # first statement after the server terminated an idle session: a new connection clears it
        return "unavailable"
    if isinstance(exc, OperationalError | InterfaceError):
        return "unavailable"
    return "other"


def _describe(exc: BaseException) -> str:
    """Class, SQLSTATE and constraint — never the message: asyncpg's quotes the refused values."""
    driver = _driver_error(exc)
    parts = [type(driver).__name__]
    if sqlstate := getattr(driver, "sqlstate", None):
        parts.append(f"SQLSTATE {sqlstate}")
    if constraint := getattr(driver, "constraint_name", None):
        parts.append(f"constraint {constraint}")
    return " ".join(parts)


@contextlib.asynccontextmanager
async def unavailable_as_domain_error() -> AsyncIterator[None]:
    """Driver errors become domain errors: connection loss, refusal and timeouts `StoreUnavailable`,
    a statement's refused data `DataRefused`; ours pass through, bugs stay bugs."""
    try:
        yield
    except MailsvcError:
        raise
    except Exception as exc:
        kind = classify_error(exc)
        if kind == "unavailable":
            raise StoreUnavailable(f"{type(exc).__name__}: {str(exc)[:200]}") from exc
        if kind == "data":
            driver = _driver_error(exc)
            raise DataRefused(
                f"PostgreSQL refused the data: {_describe(exc)}", getattr(driver, "sqlstate", None)
            ) from exc
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


class CopyAborted(asyncpg_base.DataError):  # type: ignore[misc]
    """A row `DriverConnection.copy` could not encode: its data is refused like a statement's
    parameter (`classify_error`: data), and the connection is not reused — asyncpg aborted the COPY
    with a cancel request that may still reach the server during a later statement."""

    sqlstate = "22000"  # data_exception: what asyncpg reports for a parameter it cannot encode


@contextlib.asynccontextmanager
async def driver_connection(engine: AsyncEngine) -> AsyncIterator[Any]:
    """A pooled connection's own asyncpg connection, for the hot statements (claims, results):
    SQLAlchemy's execution layer costs ~150 µs of CPU per statement, more than asyncpg itself.
    A connection-level failure, or anything that is not an SQL error, a refused item's data or one
    of ours, invalidates the connection: the pool would not notice. Refused data leaves it usable."""
    async with engine.connect() as conn:
        fairy = await conn.get_raw_connection()
        try:
            yield fairy.driver_connection
        except BaseException as exc:
            kind = classify_error(exc)
            if (
                kind == "unavailable"
                or isinstance(exc, CopyAborted)
                or (kind == "other" and not isinstance(exc, asyncpg.PostgresError | MailsvcError))
            ):
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

    async def copy(self, table: str, columns: Sequence[str], rows: Iterable[tuple[Any, ...]]) -> None:
        """Insert `rows` with `COPY … FROM STDIN` (binary), the cheapest way in for plain rows: no
        arrays to encode and unnest, one executor for all of them, several rows to a WAL record
        (README, "Plain rows are copied in", for what it saves). Defaults, constraints, foreign keys
        and row triggers apply as for an INSERT. Raises `CopyAborted` when the driver cannot encode a
        value (its type or content), PostgreSQL's errors as they are."""
        try:
            await self.raw.copy_records_to_table(table, columns=columns, records=rows)
        except (TypeError, ValueError, OverflowError) as exc:  # asyncpg's encoders, e.g. a lone surrogate
            raise CopyAborted(f"a row for {table} could not be encoded ({type(exc).__name__})") from exc


@contextlib.asynccontextmanager
async def driver_transaction(engine: AsyncEngine) -> AsyncIterator[DriverConnection]:
    """One asyncpg transaction on a pooled connection (see `driver_connection`)."""
    async with driver_connection(engine) as raw, raw.transaction():
        yield DriverConnection(raw)
