"""Where the test servers are: the machine's own when reachable, embedded ones otherwise."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import tempfile
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

from devtools.embedded import EmbeddedPostgres, EmbeddedRedis
from mailsvc.settings import parse_host_port


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


@dataclass
class PostgresServer:
    admin_dsn: str  # a database we may CREATE/DROP other databases from
    embedded: EmbeddedPostgres | None = None

    def dsn_for(self, database: str) -> str:
        base, _, query = self.admin_dsn.partition("?")
        base = base.rsplit("/", 1)[0]
        return f"{base}/{database}" + (f"?{query}" if query else "")

    async def admin(self, statement: str) -> None:
        conn = await asyncpg.connect(self.admin_dsn)
        try:
            await conn.execute(statement)
        finally:
            await conn.close()


@contextlib.contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    dsn = os.environ.get("MAIL_TEST_POSTGRES_DSN")
    if dsn:
        yield PostgresServer(dsn)
    elif _reachable("127.0.0.1", 5432):
        yield PostgresServer("postgresql://postgres@127.0.0.1:5432/postgres")
    else:
        with tempfile.TemporaryDirectory(prefix="mailsvc-test-pg-") as folder:
            embedded = EmbeddedPostgres.start(Path(folder))
            try:
                yield PostgresServer(embedded.dsn(), embedded)
            finally:
                embedded.stop()


@contextlib.contextmanager
def redis_server() -> Iterator[str]:
    """Yield a `host:port` Redis address."""
    addr = os.environ.get("MAIL_TEST_REDIS_ADDR")
    if addr:
        yield addr
    elif _reachable("127.0.0.1", 6379):
        yield "127.0.0.1:6379"
    else:
        with tempfile.TemporaryDirectory(prefix="mailsvc-test-redis-") as folder:
            embedded = EmbeddedRedis.start(Path(folder))
            try:
                yield embedded.addr
            finally:
                embedded.stop()


def unique_name(prefix: str) -> str:
    return f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:10]}"


def redis_host_port(addr: str) -> tuple[str, int]:
    hp = parse_host_port(addr)
    return hp.host or "127.0.0.1", hp.port


async def wait_until(
    condition: Callable[[], Awaitable[Any]], *, timeout: float = 20.0, interval: float = 0.02, what: str = ""
) -> Any:
    """Poll `condition` until it returns a truthy value or the deadline passes (then fail)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = await condition()
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or condition}")
        await asyncio.sleep(interval)


def closed_port() -> int:
    """A loopback port nothing listens on (bound, read, released): a connection to it is refused."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
