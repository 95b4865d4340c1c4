"""The PostgreSQL engine: an SQL error's text never carries the statement's parameters."""

from __future__ import annotations

import traceback

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from mailsvc.adapters.postgres.db import unavailable_as_domain_error
from mailsvc.adapters.postgres.engine import create_engine
from mailsvc.errors import StoreUnavailable

ADDRESS = "ann.lee+private@example.com"


def _everything_logged(exc: BaseException) -> str:
    """What a logged stack trace of `exc` would show: every exception of its chain."""
    return "".join(traceback.format_exception(exc))


async def test_sql_errors_never_echo_their_parameters(database_dsn: str) -> None:
    # 1 s, and a connection opened first: on a loaded machine a shorter bound could expire while
    # connecting, before any statement exists to leak
    engine = create_engine(database_dsn, operation_timeout_s=1.0)
    try:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
        # a statement past the statement timeout: the error the stores turn into StoreUnavailable
        with pytest.raises(StoreUnavailable) as timed_out:
            async with unavailable_as_domain_error(), engine.connect() as conn:
                await conn.execute(text("SELECT pg_sleep(5), CAST(:address AS text)"), {"address": ADDRESS})
        # a statement the database refuses
        with pytest.raises(DBAPIError) as refused:
            async with engine.connect() as conn:
                await conn.execute(text("SELECT CAST(:address AS text) FROM no_such_table"), {"address": ADDRESS})
    finally:
        await engine.dispose()
    for caught in (timed_out.value, refused.value):
        logged = _everything_logged(caught)
        assert "CAST(" in logged  # the statement is still there to diagnose
        assert ADDRESS not in logged
