"""The servers a bench runs against, and a fresh database and stream key for every run.

The configured PostgreSQL and Redis (flags, then `MAIL_BENCH_POSTGRES_DSN` /
`MAIL_BENCH_REDIS_ADDR`, then the local defaults), or embedded ones in a temporary folder. One
migrated template database per invocation; every scenario run clones it (`CREATE DATABASE …
TEMPLATE`, milliseconds) and drops its clone afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import shutil
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
from redis.asyncio import Redis
from redis.exceptions import RedisError

from bench.processes import BenchError
from devtools.embedded import EmbeddedPostgres, EmbeddedRedis
from mailsvc.adapters.postgres.migrations import upgrade
from mailsvc.settings import parse_host_port

DEFAULT_POSTGRES_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_REDIS_ADDR = "127.0.0.1:6379"


def dsn_for(admin_dsn: str, database: str) -> str:
    """The admin DSN pointed at another database (asyncpg's scheme, no `+asyncpg`)."""
    parts = urlsplit(admin_dsn.replace("+asyncpg", "", 1))
    return urlunsplit(parts._replace(path=f"/{database}"))


def unique_token() -> str:
    return secrets.token_hex(5)


@dataclass
class BenchEnv:
    admin_dsn: str
    redis_addr: str
    redis_password: str
    template_db: str
    redis: Redis
    embedded: bool

    async def admin(self, statement: str) -> None:
        conn = await asyncpg.connect(self.admin_dsn.replace("+asyncpg", "", 1))
        try:
            await conn.execute(statement)
        finally:
            await conn.close()

    @contextlib.asynccontextmanager
    async def run_resources(self) -> AsyncIterator[tuple[str, str]]:
        """A fresh migrated database (its DSN) and an unused stream key; both gone afterwards."""
        token = unique_token()
        name, stream = f"mailsvc_bench_{token}", f"mailsvc-bench:{token}:commands"
        await self.admin(f'CREATE DATABASE "{name}" TEMPLATE "{self.template_db}"')
        try:
            yield dsn_for(self.admin_dsn, name), stream
        finally:
            try:
                await self.admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            finally:
                await self.redis.delete(stream, events_stream_for(stream))

    async def server_versions(self) -> dict[str, str]:
        conn = await asyncpg.connect(dsn_for(self.admin_dsn, self.template_db))
        try:
            postgres = str(await conn.fetchval("SHOW server_version"))
        finally:
            await conn.close()
        info = await self.redis.info("server")
        return {"postgresql_server": postgres, "redis_server": str(info.get("redis_version", "unknown"))}


def events_stream_for(stream: str) -> str:
    """The event stream of a run: beside its command stream, deleted with it."""
    return stream.removesuffix(":commands") + ":events"


def _redis_client(addr: str, password: str) -> Redis:
    hp = parse_host_port(addr)
    return Redis(host=hp.host or "127.0.0.1", port=hp.port, password=password or None)


@contextlib.asynccontextmanager
async def _servers(postgres_dsn: str, redis_addr: str, embedded: bool) -> AsyncIterator[tuple[str, str]]:
    if not embedded:
        yield postgres_dsn, redis_addr
        return
    folder = Path(tempfile.mkdtemp(prefix="mailsvc-bench-embedded-"))
    pg: EmbeddedPostgres | None = None
    redis: EmbeddedRedis | None = None
    try:
        pg = await asyncio.to_thread(EmbeddedPostgres.start, folder / "pg")
        redis = await asyncio.to_thread(EmbeddedRedis.start, folder / "redis")
        yield pg.dsn(), redis.addr
    finally:
        if redis is not None:
            redis.stop()
        if pg is not None:
            await asyncio.to_thread(pg.stop)
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.asynccontextmanager
async def bench_env(
    postgres_dsn: str, redis_addr: str, redis_password: str = "", *, embedded: bool = False
) -> AsyncIterator[BenchEnv]:
    """Servers reachable, a migrated template database ready; everything removed at the end."""
    async with _servers(postgres_dsn, redis_addr, embedded) as (admin_dsn, addr):
        redis = _redis_client(addr, "" if embedded else redis_password)
        env = BenchEnv(admin_dsn, addr, "" if embedded else redis_password, "", redis, embedded)
        try:
            try:
                await redis.ping()
                await env.admin("SELECT 1")
            except (OSError, asyncpg.PostgresError, RedisError) as exc:
                raise BenchError(f"cannot reach PostgreSQL {admin_dsn!r} or Redis {addr!r}: {exc}") from None
            template = f"mailsvc_bench_tpl_{unique_token()}"
            await env.admin(f'CREATE DATABASE "{template}"')
            env.template_db = template
            try:
                await upgrade(dsn_for(admin_dsn, template))
                yield env
            finally:
                await env.admin(f'DROP DATABASE IF EXISTS "{template}" WITH (FORCE)')
        finally:
            await redis.aclose()
