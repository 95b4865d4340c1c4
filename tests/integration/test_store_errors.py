"""Driver errors at the store boundary, classified by SQLSTATE (SPEC §4): a statement's refused data
is `DataRefused` (that item's failure) and keeps its pooled connection; only connection-level
failures are `StoreUnavailable`. Real errors from a real PostgreSQL, over both driver paths."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg.exceptions._base as asyncpg_base
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from mailsvc.adapters.postgres.db import driver_connection, driver_transaction, unavailable_as_domain_error
from mailsvc.adapters.postgres.engine import create_engine
from mailsvc.errors import DataRefused, StoreUnavailable
from tests.support.deliveries import Ledger


@pytest.fixture
async def engine(database_dsn: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(database_dsn, pool_size=1)  # one connection: the pool must keep it
    try:
        yield engine
    finally:
        await engine.dispose()


async def backend_pid(engine: AsyncEngine) -> int:
    async with driver_connection(engine) as raw:
        pid: int = await raw.fetchval("SELECT pg_backend_pid()")
        return pid


REFUSED_DATA = [
    pytest.param("SELECT $1::text", ["a\x00b"], "22021", id="nul-in-text"),
    pytest.param("SELECT $1::text", ["M\udcfcller"], "22000", id="lone-surrogate-refused-by-asyncpg"),
    pytest.param("SELECT $1::int", [2**31], "22000", id="integer-out-of-range"),
    pytest.param("SELECT 1 / $1::int", [0], "22012", id="division-by-zero"),
    pytest.param(
        "INSERT INTO attempts (delivery_id, number, outcome) VALUES (gen_random_uuid(), $1, 'sent')",
        [0],
        "23",  # the number check or the missing delivery: either way class 23
        id="constraint-violation",
    ),
]


@pytest.mark.parametrize(("sql", "args", "sqlstate"), REFUSED_DATA)
async def test_refused_data_is_data_refused_and_keeps_the_pooled_connection(
    engine: AsyncEngine, sql: str, args: list[Any], sqlstate: str
) -> None:
    before = await backend_pid(engine)
    with pytest.raises(DataRefused) as refused:
        async with unavailable_as_domain_error(), driver_connection(engine) as raw:
            await raw.execute(sql, *args)
    assert (refused.value.sqlstate or "").startswith(sqlstate)
    assert "\x00" not in str(refused.value)
    assert "ller" not in str(refused.value)  # the refused value is never quoted (logs, HTTP bodies)
    assert await backend_pid(engine) == before  # not invalidated: the same server session


async def test_rows_a_copy_cannot_encode_are_data_refused_on_a_connection_not_reused(
    engine: AsyncEngine, db: Ledger
) -> None:
    """A COPY asyncpg aborts (it cannot encode a value) leaves a cancel request on its way to the
    server, which could cancel whatever runs next there: the data is refused like a parameter
    asyncpg cannot encode, and the session goes. The rows before it are not written either."""
    before = await backend_pid(engine)
    columns = ("stream_key", "kind", "from_offset", "to_offset", "detail")
    rows = [("s", "gap", "1-0", "2-0", "fine"), ("s", "gap", "2-0", "3-0", "M\udcfcller")]
    with pytest.raises(DataRefused) as refused:
        async with unavailable_as_domain_error(), driver_transaction(engine) as conn:
            await conn.copy("stream_events", columns, rows)
    assert refused.value.sqlstate == "22000"
    assert "ller" not in str(refused.value)
    assert await backend_pid(engine) != before
    assert await db.conn.fetchval("SELECT count(*) FROM stream_events") == 0
    async with driver_transaction(engine) as conn:  # rows it can encode go in
        await conn.copy("stream_events", columns, rows[:1])
    assert await db.conn.fetchval("SELECT count(*) FROM stream_events") == 1


async def test_refused_data_through_sqlalchemy_is_data_refused_too(engine: AsyncEngine) -> None:
    with pytest.raises(DataRefused):
        async with unavailable_as_domain_error(), engine.connect() as conn:
            await conn.execute(text("SELECT CAST(:v AS text)"), {"v": "a\x00b"})


async def test_the_drivers_client_side_data_error_is_not_an_outage() -> None:
    # asyncpg's own DataError (an InterfaceError subclass) must not pass for "connection lost"
    with pytest.raises(DataRefused):
        async with unavailable_as_domain_error():
            raise asyncpg_base.DataError("invalid input for query argument $1")


async def test_a_terminated_session_is_unavailable_and_replaced(engine: AsyncEngine, db: Ledger) -> None:
    before = await backend_pid(engine)
    await db.conn.execute("SELECT pg_terminate_backend($1)", before)
    with pytest.raises(StoreUnavailable):
        async with unavailable_as_domain_error(), driver_connection(engine) as raw:
            await raw.fetchval("SELECT 1")
    assert await backend_pid(engine) != before  # the broken connection left the pool


async def test_an_unreachable_server_is_unavailable() -> None:
    unreachable = create_engine("postgresql://postgres@127.0.0.1:9/none", operation_timeout_s=2)
    try:
        with pytest.raises(StoreUnavailable):
            async with unavailable_as_domain_error(), driver_connection(unreachable) as raw:
                await raw.fetchval("SELECT 1")
    finally:
        await unreachable.dispose()


async def test_a_statement_timeout_is_unavailable(database_dsn: str) -> None:
    slow = create_engine(database_dsn, operation_timeout_s=0.2)
    try:
        with pytest.raises(StoreUnavailable):
            async with unavailable_as_domain_error(), driver_connection(slow) as raw:
                await raw.execute("SELECT pg_sleep(5)")
    finally:
        await slow.dispose()
