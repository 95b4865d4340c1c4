"""Execution tests' tools: the service in-process and the rows it wrote in PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
import orjson

from mailsvc.bootstrap import build_runtime
from mailsvc.runtime import Runtime
from mailsvc.settings import HostPort, load_settings
from tests.support.infra import wait_until

FROM_EMAIL = "noreply@mail.example.com"
FROM_NAME = "Example Mail"
TERMINAL = ("sent", "dead_lettered", "suppressed", "cancelled", "superseded")


def condition(check: Callable[[], object]) -> Callable[[], Awaitable[object]]:
    """A plain check (e.g. on a test server's counters) in the shape `wait_until` polls."""

    async def poll() -> object:
        return check()

    return poll


def smtp_env(service_env: Mapping[str, str], addr: HostPort, **overrides: str) -> dict[str, str]:
    """`service_env` in smtp mode against `addr`, with retries fast enough for tests."""
    return {
        **service_env,
        "MAIL_SMTP_MODE": "smtp",
        "MAIL_SMTP_ADDR": f"{addr.host}:{addr.port}",
        "MAIL_SMTP_FROM_EMAIL": FROM_EMAIL,
        "MAIL_SMTP_FROM_NAME": FROM_NAME,
        "MAIL_SMTP_TIMEOUT": "5s",
        "MAIL_RETRY_BASE_DELAY": "100ms",
        "MAIL_RETRY_MAX_DELAY": "400ms",
        "MAIL_PROVIDER_PROBE_INTERVAL": "200ms",
        **overrides,
    }


@dataclass
class InProcessService:
    runtime: Runtime
    task: asyncio.Task[int]

    @property
    def http_port(self) -> int:
        port: int = self.runtime.sockets[0].getsockname()[1]
        return port

    async def stop(self, timeout: float = 30.0) -> int:
        self.runtime.request_stop("test")
        return await asyncio.wait_for(asyncio.shield(self.task), timeout)


def api_of(service: InProcessService) -> httpx.AsyncClient:
    """A client of the service's HTTP listener (use it as a context manager)."""
    return httpx.AsyncClient(base_url=f"http://127.0.0.1:{service.http_port}", timeout=30)


@contextlib.asynccontextmanager
async def in_process_service(env: Mapping[str, str]) -> AsyncIterator[InProcessService]:
    """`mailsvc serve` built by `build_runtime` and run as a task of the test's event loop."""
    runtime = await build_runtime(load_settings(env, dotenv=None))
    service = InProcessService(runtime, asyncio.create_task(runtime.run(), name="mailsvc-under-test"))
    try:
        yield service
    finally:
        if not service.task.done():
            await service.stop()


class Ledger:
    """Reads what the service wrote: deliveries, attempts, dead letters, recipient outcomes."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, dsn: str) -> AsyncIterator[Ledger]:
        conn = await asyncpg.connect(dsn)
        try:
            yield cls(conn)
        finally:
            await conn.close()

    async def delivery(self, key: str, source: str = "notification") -> asyncpg.Record | None:
        return await self.conn.fetchrow(
            "SELECT * FROM delivery_states WHERE idempotency_key = $1 AND source = $2", key, source
        )

    async def attempts(self, delivery_id: uuid.UUID) -> list[asyncpg.Record]:
        return await self.conn.fetch(
            "SELECT * FROM attempts WHERE delivery_id = $1 ORDER BY number, attempt_id", delivery_id
        )

    async def dead_letter(self, delivery_id: uuid.UUID) -> asyncpg.Record | None:
        return await self.conn.fetchrow("SELECT * FROM dead_letters WHERE delivery_id = $1", delivery_id)

    async def events(self, delivery_id: uuid.UUID) -> list[tuple[str, Any]]:
        """The delivery's events (type, data), in the order readers see them: (xid, seq)."""
        rows = await self.conn.fetch(
            "SELECT type, data FROM delivery_events WHERE delivery_id = $1 ORDER BY xid, seq", delivery_id
        )
        return [(row["type"], orjson.loads(row["data"])) for row in rows]

    async def recipients(self, delivery_id: uuid.UUID) -> list[asyncpg.Record]:
        return await self.conn.fetch(
            "SELECT * FROM delivery_recipients WHERE delivery_id = $1 ORDER BY position", delivery_id
        )

    async def count(self, where: str = "true", *args: Any) -> int:
        value: int = await self.conn.fetchval(f"SELECT count(*) FROM delivery_states WHERE {where}", *args)
        return value

    async def wait_status(
        self, key: str, *statuses: str, timeout: float = 20.0, source: str = "notification"
    ) -> asyncpg.Record:
        """Wait until the delivery for `key` has one of `statuses` (any terminal one by default)."""
        wanted = statuses or TERMINAL

        async def reached() -> asyncpg.Record | None:
            row = await self.delivery(key, source)
            return row if row is not None and row["status"] in wanted else None

        row: asyncpg.Record = await wait_until(reached, timeout=timeout, what=f"delivery {key} in {wanted}")
        return row

    async def wait_attempts(
        self, key: str, at_least: int, *, timeout: float = 20.0, source: str = "notification"
    ) -> list[asyncpg.Record]:
        async def recorded() -> list[asyncpg.Record] | None:
            row = await self.delivery(key, source)
            if row is None:
                return None
            rows = await self.attempts(row["delivery_id"])
            return rows if len(rows) >= at_least else None

        rows: list[asyncpg.Record] = await wait_until(
            recorded, timeout=timeout, what=f"{at_least} attempts of delivery {key}"
        )
        return rows
