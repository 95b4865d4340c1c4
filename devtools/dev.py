"""`mailsvc dev`: embedded PostgreSQL and Redis, migrations applied, stub mode, service on :8080."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable
from pathlib import Path

from devtools.embedded import EmbeddedPostgres, EmbeddedRedis
from mailsvc.adapters.postgres.migrations import upgrade


def _banner(http_addr: str, redis_addr: str, stream: str, dsn: str, outbox: Path) -> str:
    host, port = redis_addr.split(":")
    return f"""
mailsvc dev is starting (stub provider: nothing leaves this machine)

  HTTP API      http://{http_addr}/api/v1/internal/deliveries
  Redis         {redis_addr} (embedded; stream {stream})
  PostgreSQL    {dsn}
  Outbox        {outbox}/ (every message the stub "sends", as .eml)

Send one through the stream:
  redis-cli -h {host} -p {port} XADD {stream} '*' type send_email \\
    payload '{{"to":["ann@example.com"],"template":"notification.generic","variables":{{"title":"Hi","body":"Hello"}}}}'
or: mailsvc send --to ann@example.com --subject Hi --text Hello   (with the variables below)
Or through HTTP:
  curl -s -XPOST http://{http_addr}/api/v1/internal/deliveries -H 'Idempotency-Key: k1' \\
    -d '{{"to":["ann@example.com"],"subject":"Hi","text":"Hello"}}'
Then: curl -s http://{http_addr}/api/v1/internal/deliveries | python -m json.tool

Environment for other mailsvc commands against this instance:
  export MAIL_REDIS_MASTER_ADDR={redis_addr} MAIL_REDIS_PASSWORD= MAIL_POSTGRES_PRIMARY_DSN='{dsn}'
"""


def run_dev(data_dir: Path, http_addr: str, serve: Callable[[dict[str, str]], int]) -> int:
    """Start the embedded servers, migrate, then run `serve(env)` until it returns."""
    data_dir = data_dir.resolve()
    print(f"starting embedded PostgreSQL and Redis in {data_dir} ...", file=sys.stderr)
    postgres = EmbeddedPostgres.start(data_dir / "postgres")
    redis = EmbeddedRedis.start(data_dir / "redis")
    try:
        dsn = postgres.dsn()
        asyncio.run(upgrade(dsn))
        outbox = data_dir / "outbox"
        outbox.mkdir(exist_ok=True)
        env = {
            "MAIL_REDIS_MASTER_ADDR": redis.addr,
            "MAIL_REDIS_PASSWORD": "",
            "MAIL_POSTGRES_PRIMARY_DSN": dsn,
            "MAIL_SMTP_MODE": "stub",
            "MAIL_STUB_OUTBOX_DIR": str(outbox),
            "MAIL_INTERNAL_HTTP_ADDR": http_addr,
        }
        merged = {**os.environ, **env}
        stream = merged.get("MAIL_REDIS_COMMAND_STREAM", "mail:commands")
        print(_banner(http_addr, redis.addr, stream, dsn, outbox), file=sys.stderr)
        return serve(merged)
    finally:
        redis.stop()
        postgres.stop()
