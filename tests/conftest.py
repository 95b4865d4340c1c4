"""Session-wide servers and per-test isolation: a migrated database, unique stream keys."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from redis import Redis as SyncRedis
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from mailsvc.adapters.postgres.engine import create_engine
from mailsvc.adapters.postgres.migrations import upgrade
from tests.support.deliveries import Ledger
from tests.support.infra import PostgresServer, postgres_server, redis_host_port, redis_server, unique_name
from tests.support.otlp_receiver import OtlpReceiver

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def pg() -> Iterator[PostgresServer]:
    with postgres_server() as server:
        yield server


@pytest.fixture(scope="session")
def redis_addr() -> Iterator[str]:
    with redis_server() as addr:
        yield addr
        delete_session_keys(addr)


def delete_session_keys(addr: str) -> None:
    """The streams this session's tests named (`unique_name` carries the pid), on a shared Redis:
    services under test create them, and a test that fails or is killed cannot always delete its own."""
    host, port = redis_host_port(addr)
    client = SyncRedis(host=host, port=port)
    try:
        keys = list(client.scan_iter(match=f"mailsvc-test:*_{os.getpid()}_*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@pytest.fixture(scope="session")
async def template_database(pg: PostgresServer) -> AsyncIterator[str]:
    """A migrated database per test session, used as the template every test database clones."""
    name = unique_name("mailsvc_tpl")
    await pg.admin(f'CREATE DATABASE "{name}"')
    await upgrade(pg.dsn_for(name))
    yield name
    await pg.admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
async def database_dsn(pg: PostgresServer, template_database: str) -> AsyncIterator[str]:
    """A fresh, migrated database for one test (cloned from the template: milliseconds)."""
    name = unique_name("mailsvc_t")
    await pg.admin(f'CREATE DATABASE "{name}" TEMPLATE "{template_database}"')
    yield pg.dsn_for(name)
    await pg.admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
async def module_database(pg: PostgresServer, template_database: str) -> AsyncIterator[str]:
    """One migrated database shared by a module's tests (for a module-scoped service)."""
    name = unique_name("mailsvc_m")
    await pg.admin(f'CREATE DATABASE "{name}" TEMPLATE "{template_database}"')
    yield pg.dsn_for(name)
    await pg.admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
async def empty_database_dsn(pg: PostgresServer) -> AsyncIterator[str]:
    name = unique_name("mailsvc_e")
    await pg.admin(f'CREATE DATABASE "{name}"')
    yield pg.dsn_for(name)
    await pg.admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def stream_key() -> str:
    return f"mailsvc-test:{unique_name('s')}:commands"


@pytest.fixture
async def redis_client(redis_addr: str, stream_key: str) -> AsyncIterator[Redis]:
    host, port = redis_host_port(redis_addr)
    client = Redis(host=host, port=port)
    yield client
    await client.delete(stream_key, event_stream_key(stream_key))
    await client.aclose()


def event_stream_key(stream_key: str) -> str:
    """The event stream a test service publishes to: its own, beside its command stream."""
    return stream_key.removesuffix(":commands") + ":events"


@pytest.fixture
def service_env(database_dsn: str, redis_addr: str, stream_key: str, tmp_path: Path) -> dict[str, str]:
    """Environment for a `mailsvc serve` against this test's database and stream."""
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("MAIL_", "OTEL_"))}
    return {
        **keep,
        "MAIL_REDIS_MASTER_ADDR": redis_addr,
        "MAIL_REDIS_PASSWORD": "",
        "MAIL_POSTGRES_PRIMARY_DSN": database_dsn,
        "MAIL_REDIS_COMMAND_STREAM": stream_key,
        "MAIL_REDIS_EVENT_STREAM": event_stream_key(stream_key),
        "MAIL_INTERNAL_HTTP_ADDR": "127.0.0.1:0",
        "MAIL_TEMPLATE_DIR": str(REPO / "templates"),
        "MAIL_SHUTDOWN_TIMEOUT": "10s",
        "MAIL_STREAM_BLOCK_TIMEOUT": "500ms",
    }


@pytest.fixture
async def db(database_dsn: str) -> AsyncIterator[Ledger]:
    """The test database, read and seeded through plain SQL (`tests.support.deliveries.Ledger`)."""
    async with Ledger.open(database_dsn) as ledger:
        yield ledger


@pytest.fixture
async def engine(database_dsn: str) -> AsyncIterator[AsyncEngine]:
    """The service's engine on the test database, for driving a store directly."""
    engine = create_engine(database_dsn)
    try:
        yield engine
    finally:
        await engine.dispose()


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    """An OTLP/HTTP receiver on loopback, decoding what the service exports."""
    running = OtlpReceiver().start()
    yield running
    running.stop()
